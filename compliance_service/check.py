"""A study's series checked against its site's protocol: verdicts and deviations.

Tolerance semantics are in `compliance_service.tolerance`; classification in
`compliance_service.classify`; the inferred site reference in `compliance_service.reference`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from compliance_service.classify import classify_series
from compliance_service.fingerprint import Fingerprint
from compliance_service.reference import same_value
from compliance_service.tolerance import within_tolerance
from services.config import Expectation, ProtocolConfig, SeriesRule
from services.events import Deviation, SeriesCompliance

Severity = Literal["exclude", "warning"]


def effective_rule(
    rule: SeriesRule, protocol: ProtocolConfig, *, site: str, scanner: str
) -> tuple[dict[str, Expectation], Severity]:
    """The rule's expectations and severity after the overrides for this site and scanner.

    Site overrides apply over the rule, then scanner overrides over those (an override
    naming both a site and a scanner is a scanner override for that site), each replacing
    whole parameters in listed order; an override expectation with value null drops it.
    """
    expect = dict(rule.expect)
    severity: Severity = rule.severity
    mine = [o for o in protocol.overrides if o.type == rule.type]
    by_site = [o for o in mine if o.scanner is None and o.site == site]
    by_scanner = [o for o in mine if o.scanner == scanner and o.site in (None, site)]
    for override in (*by_site, *by_scanner):
        expect.update(override.expect)
        severity = override.severity or severity
    return {name: e for name, e in expect.items() if e.value is not None}, severity


def check_series(fingerprint: Fingerprint, expect: Mapping[str, Expectation]) -> list[Deviation]:
    """Every expectation the series misses; a parameter it does not carry has actual None."""
    deviations = []
    for name, expectation in expect.items():
        actual = fingerprint.get(name)
        if actual is None or not within_tolerance(actual, expectation.value,
                                                  expectation.tolerance):
            deviations.append(Deviation(parameter=name, expected=expectation.value,
                                        actual=actual, tolerance=expectation.tolerance))
    return deviations


def check_study(
    fingerprints: Mapping[str, Fingerprint],
    protocol: ProtocolConfig | None,
    *,
    site: str,
    scanner: str,
    references: Mapping[str, Fingerprint] | None = None,
) -> list[SeriesCompliance]:
    """Classify and check every series, ordered by series number.

    `references` maps a series type to its inferred site reference; a deviation whose
    actual value is the reference's is flagged `matches_site_reference` (a consistent
    site difference rather than a one-off).
    """
    rules = _effective_rules(protocol, site=site, scanner=scanner)
    assignments = classify_series(fingerprints, rules)
    by_type = {rule.type: rule for rule in rules}
    results = []
    for uid, fingerprint in fingerprints.items():
        series_type = assignments[uid].series_type
        rule = by_type.get(series_type) if series_type is not None else None
        reference = dict((references or {}).get(series_type or "", {}) or {})
        results.append(_series_result(uid, fingerprint, rule, reference))
    return sorted(results, key=_order)


def _effective_rules(protocol: ProtocolConfig | None, *, site: str, scanner: str) -> list[
    SeriesRule
]:
    if protocol is None:
        return []
    rules = []
    for rule in protocol.series:
        expect, severity = effective_rule(rule, protocol, site=site, scanner=scanner)
        rules.append(rule.model_copy(update={"expect": expect, "severity": severity}))
    return rules


def _series_result(
    uid: str, fingerprint: Fingerprint, rule: SeriesRule | None, reference: Fingerprint
) -> SeriesCompliance:
    number = fingerprint.get("SeriesNumber")
    common = {
        "series_uid": uid,
        "series_number": number if isinstance(number, int) else None,
        "series_description": _text_or_none(fingerprint.get("SeriesDescription")),
        "fingerprint": dict(fingerprint),
    }
    if rule is None:
        return SeriesCompliance(series_type="unrecognized", verdict="unrecognized", **common)
    deviations = [
        deviation.model_copy(update={"matches_site_reference": _matches(deviation, reference)})
        for deviation in check_series(fingerprint, rule.expect)
    ]
    return SeriesCompliance(
        series_type=rule.type, verdict="deviant" if deviations else "compliant",
        severity=rule.severity, deviations=deviations, site_reference=reference, **common,
    )


def _matches(deviation: Deviation, reference: Fingerprint) -> bool | None:
    if deviation.parameter not in reference:
        return None
    return same_value(deviation.actual, reference[deviation.parameter])


def _order(result: SeriesCompliance) -> tuple[int, int, str]:
    number = result.series_number
    return (0 if number is not None else 1, number or 0, result.series_uid)


def _text_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
