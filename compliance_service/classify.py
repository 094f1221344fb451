"""Which protocol series type each series is: LORIS mri_protocol-style rules, best match wins.

A rule's `match` maps a fingerprint field to a pattern, and every pattern must hold:

- the field is named in snake_case (`series_description`, `protocol_name`, `sequence_name`,
  `image_type`, `scanning_sequence`, `repetition_time`, `number_of_slices`, ...) or by its
  keyword (`SeriesDescription`); `slices` and `volumes` are short for `number_of_slices`
  and `number_of_volumes`;
- on a numeric field, `"lo-hi"` (`repetition_time: "2000-2500"`, `slices: "150-200"`) is an
  inclusive range; any other pattern is a regular expression searched (`re.search`) in the
  value's text (2300.0 reads "2300"; lists and multi-valued strings joined by a backslash);
- a field the series does not carry (None) fails the rule. A rule without `match` never
  matches: a series type is recognised by what the rule says, not by default.

Score = number of match criteria + the fraction of the rule's expectations met within
tolerance (0 for a rule without expectations): a "t1_mprage" series matching both a loose
`anat` rule and a `t1w` rule whose TR/TE/flip angle it meets goes to `t1w`, whatever the
rule order. Each series takes its best-scoring rule; ties go to the rule listed first.

Types are not exclusive (a session may hold two T1w runs, several BOLD runs), so this is
an argmax per series, not a one-to-one assignment: scipy's `linear_sum_assignment` would
force all but one run of a repeated type to another type or to unrecognized.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from compliance_service.fingerprint import Fingerprint
from compliance_service.tolerance import is_number, within_tolerance
from services.config import Expectation, SeriesRule

_RANGE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*-\s*(-?\d+(?:\.\d+)?)\s*$")
_ALIASES = {"slices": "NumberOfSlices", "volumes": "NumberOfVolumes"}


@dataclass(frozen=True)
class Assignment:
    series_uid: str
    series_type: str | None
    score: float


def classify_series(
    fingerprints: Mapping[str, Fingerprint], rules: Sequence[SeriesRule]
) -> dict[str, Assignment]:
    """The best-matching rule type of every series (None: no rule matches)."""
    return {uid: _best(uid, fingerprint, rules) for uid, fingerprint in fingerprints.items()}


def rule_score(fingerprint: Fingerprint, rule: SeriesRule) -> float | None:
    """The rule's score for this series, or None when one of its patterns fails."""
    if not rule.match:
        return None
    fields = _field_names(fingerprint)
    for field, pattern in rule.match.items():
        keyword = fields.get(field) or fields.get(_ALIASES.get(field, ""), None)
        if keyword is None or not field_matches(fingerprint.get(keyword), pattern):
            return None
    return len(rule.match) + expectation_fraction(fingerprint, rule.expect)


def field_matches(value: Any, pattern: str) -> bool:
    """A numeric range on a number, else a regular expression searched in the value's text."""
    if value is None:
        return False
    bounds = _RANGE.match(pattern)
    if bounds is not None and is_number(value):
        return float(bounds.group(1)) <= float(value) <= float(bounds.group(2))
    try:
        return re.search(pattern, _text(value)) is not None
    except re.error:
        return False


def expectation_fraction(fingerprint: Fingerprint, expect: Mapping[str, Expectation]) -> float:
    if not expect:
        return 0.0
    met = sum(
        within_tolerance(fingerprint.get(name), expectation.value, expectation.tolerance)
        for name, expectation in expect.items()
    )
    return met / len(expect)


def snake_case(keyword: str) -> str:
    """`MRAcquisitionType` -> `mr_acquisition_type`."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", keyword)
    return spaced.lower()


def _best(uid: str, fingerprint: Fingerprint, rules: Sequence[SeriesRule]) -> Assignment:
    best = Assignment(series_uid=uid, series_type=None, score=0.0)
    for rule in rules:
        score = rule_score(fingerprint, rule)
        if score is not None and (best.series_type is None or score > best.score):
            best = Assignment(series_uid=uid, series_type=rule.type, score=score)
    return best


def _field_names(fingerprint: Fingerprint) -> dict[str, str]:
    names = {snake_case(key): key for key in fingerprint}
    names.update({key: key for key in fingerprint})
    return names


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "\\".join(_text(item) for item in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
