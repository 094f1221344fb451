"""Protocol checks on all three vendors: tolerances, deviations, overrides, references."""

from __future__ import annotations

from typing import Any

import pytest

from compliance_service.check import check_series, check_study, effective_rule
from compliance_service.fingerprint import Fingerprint, series_fingerprint
from services.config import Expectation, ProtocolConfig, ProtocolOverride, SeriesRule
from tests.unit.compliance.factories import (
    BOLD,
    T1,
    Acquisition,
    ge,
    philips,
    series_headers,
    siemens,
)

VENDORS = {"siemens": siemens, "ge": ge, "philips": philips}
T1_EXPECT = {
    "RepetitionTime": Expectation(value=2300, tolerance="1%"),
    "EchoTime": Expectation(value=2.98, tolerance=0.1),
    "FlipAngle": Expectation(value=9, tolerance=1),
    "SliceThickness": Expectation(value=1.0, tolerance=0.05),
    "PixelSpacing": Expectation(value=[1.0, 1.0], tolerance=0.01),
    "Rows": Expectation(value=256),
    "InPlanePhaseEncodingDirection": Expectation(value="ROW"),
}
T1_RULE = SeriesRule(type="t1w", match={"series_description": "(?i)t1|mprage"},
                     expect=T1_EXPECT)
BOLD_RULE = SeriesRule(type="bold", match={"series_description": "(?i)bold"},
                       severity="warning",
                       expect={"RepetitionTime": Expectation(value=2000, tolerance="1%"),
                               "PhaseEncodingDirection": Expectation(value="j-")})
PROTOCOL = ProtocolConfig(id="core", series=[T1_RULE, BOLD_RULE])


def fingerprint(vendor: str, acq: Acquisition) -> Fingerprint:
    headers, count = series_headers(VENDORS[vendor], acq)
    return series_fingerprint(headers, instance_count=count)


def study(vendor: str, *acquisitions: Acquisition) -> dict[str, Fingerprint]:
    return {f"uid-{a.series_number}": fingerprint(vendor, a) for a in acquisitions}


@pytest.mark.parametrize("vendor", VENDORS)
def test_compliant_within_absolute_and_percent_tolerance(vendor: str) -> None:
    acq = T1.but(repetition_time=2322.0, echo_time=3.07, flip_angle=10.0,
                 slice_thickness=1.04, pixel_spacing=(1.009, 0.992))
    assert check_series(fingerprint(vendor, acq), T1_EXPECT) == []
    [result] = check_study(study(vendor, acq), PROTOCOL, site="s", scanner="x")
    assert (result.series_type, result.verdict, result.severity) == ("t1w", "compliant",
                                                                      "exclude")


DEVIATIONS: list[tuple[str, dict[str, Any], Any, Any]] = [
    ("RepetitionTime", {"repetition_time": 2330.0}, 2300, 2330.0),  # 1.3% > 1%
    ("EchoTime", {"echo_time": 3.2}, 2.98, 3.2),
    ("FlipAngle", {"flip_angle": 12.0}, 9, 12.0),
    ("SliceThickness", {"slice_thickness": 1.2}, 1.0, 1.2),
    ("PixelSpacing", {"pixel_spacing": (1.0, 1.1)}, [1.0, 1.0], [1.0, 1.1]),
    ("Rows", {"rows": 240}, 256, 240),
    ("InPlanePhaseEncodingDirection", {"phase_encoding": "COL"}, "ROW", "COL"),
]


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize(("parameter", "change", "expected", "actual"), DEVIATIONS)
def test_each_single_parameter_deviation_is_reported(
    vendor: str, parameter: str, change: dict[str, Any], expected: Any, actual: Any
) -> None:
    [result] = check_study(study(vendor, T1.but(**change)), PROTOCOL, site="s", scanner="x")
    assert result.verdict == "deviant"
    assert [(d.parameter, d.expected, d.actual) for d in result.deviations] == [
        (parameter, expected, actual)
    ]
    assert result.deviations[0].tolerance == T1_EXPECT[parameter].tolerance


@pytest.mark.parametrize("vendor", ["siemens", "ge"])
def test_phase_encoding_polarity_flip_is_detected(vendor: str) -> None:
    [result] = check_study(study(vendor, BOLD.but(polarity=-1)), PROTOCOL, site="s",
                           scanner="x")
    assert result.series_type == "bold" and result.severity == "warning"
    assert [(d.parameter, d.expected, d.actual) for d in result.deviations] == [
        ("PhaseEncodingDirection", "j-", "j")
    ]
    [ok] = check_study(study(vendor, BOLD), PROTOCOL, site="s", scanner="x")
    assert ok.verdict == "compliant"


def test_philips_polarity_is_reported_missing_not_guessed() -> None:
    [result] = check_study(study("philips", BOLD), PROTOCOL, site="s", scanner="x")
    assert result.verdict == "deviant"
    [deviation] = result.deviations
    assert (deviation.parameter, deviation.actual) == ("PhaseEncodingDirection", None)


@pytest.mark.parametrize("vendor", VENDORS)
def test_series_missing_every_timing_attribute_is_deviant_with_the_list(vendor: str) -> None:
    acq = T1.but(repetition_time=None, echo_time=None, inversion_time=None, flip_angle=None)
    expect = {**T1_EXPECT, "InversionTime": Expectation(value=900, tolerance=10)}
    protocol = ProtocolConfig(id="p", series=[T1_RULE.model_copy(update={"expect": expect})])
    [result] = check_study(study(vendor, acq), protocol, site="s", scanner="x")
    assert result.verdict == "deviant"
    missing = {d.parameter: d.actual for d in result.deviations}
    assert missing == dict.fromkeys(
        ["RepetitionTime", "EchoTime", "FlipAngle", "InversionTime"], None)


def test_unrecognized_series_and_series_number_order() -> None:
    localizer = T1.but(description="localizer", series_number=1)
    fps = study("siemens", BOLD.but(series_number=3), localizer, T1.but(series_number=2))
    results = check_study(fps, PROTOCOL, site="s", scanner="x")
    assert [(r.series_number, r.series_type, r.verdict) for r in results] == [
        (1, "unrecognized", "unrecognized"), (2, "t1w", "compliant"), (3, "bold", "compliant"),
    ]
    assert results[0].severity is None and results[0].deviations == []
    assert results[0].fingerprint["SeriesDescription"] == "localizer"


def test_no_protocol_leaves_everything_unrecognized() -> None:
    results = check_study(study("ge", T1), None, site="s", scanner="x")
    assert [r.verdict for r in results] == ["unrecognized"]


def overridden_protocol() -> ProtocolConfig:
    return ProtocolConfig(id="core", series=[T1_RULE, BOLD_RULE], overrides=[
        ProtocolOverride(type="t1w", site="naples", severity="warning",
                         expect={"RepetitionTime": Expectation(value=2400, tolerance="1%")}),
        ProtocolOverride(type="t1w", scanner="naples-signa",
                         expect={"RepetitionTime": Expectation(value=2500, tolerance=5),
                                 "Rows": Expectation(value=None)}),
        ProtocolOverride(type="bold", site="milan", severity="exclude"),
    ])


def test_site_override_beats_the_rule_and_scanner_override_beats_the_site() -> None:
    protocol = overridden_protocol()
    base, severity = effective_rule(T1_RULE, protocol, site="milan", scanner="milan-prisma")
    assert base["RepetitionTime"].value == 2300 and severity == "exclude"
    site, severity = effective_rule(T1_RULE, protocol, site="naples", scanner="naples-ingenia")
    assert site["RepetitionTime"].value == 2400 and severity == "warning"
    assert site["Rows"].value == 256
    scanner, severity = effective_rule(T1_RULE, protocol, site="naples", scanner="naples-signa")
    assert scanner["RepetitionTime"].value == 2500 and severity == "warning"
    assert "Rows" not in scanner  # a null value drops the expectation
    assert effective_rule(BOLD_RULE, protocol, site="milan", scanner="m")[1] == "exclude"


def test_overrides_change_verdicts_per_site_and_scanner() -> None:
    fps = study("ge", T1.but(repetition_time=2500.0, rows=240))
    protocol = overridden_protocol()

    def verdict(site: str, scanner: str) -> tuple[str, str | None]:
        [r] = check_study(fps, protocol, site=site, scanner=scanner)
        return r.verdict, r.severity

    assert verdict("milan", "milan-prisma") == ("deviant", "exclude")
    assert verdict("naples", "naples-ingenia") == ("deviant", "warning")
    assert verdict("naples", "naples-signa") == ("compliant", "warning")


def test_site_reference_tells_a_consistent_site_difference_from_a_one_off() -> None:
    fps = study("siemens", T1.but(repetition_time=2400.0, flip_angle=12.0))
    reference = {"RepetitionTime": 2400, "Rows": 256}
    [result] = check_study(fps, PROTOCOL, site="s", scanner="x", references={"t1w": reference})
    flags = {d.parameter: d.matches_site_reference for d in result.deviations}
    assert flags == {"RepetitionTime": True, "FlipAngle": None}
    assert result.site_reference == reference
    [plain] = check_study(fps, PROTOCOL, site="s", scanner="x", references={"t1w": {}})
    assert all(d.matches_site_reference is None for d in plain.deviations)


def test_reference_mismatch_is_false() -> None:
    fps = study("siemens", T1.but(repetition_time=2400.0))
    [result] = check_study(fps, PROTOCOL, site="s", scanner="x",
                           references={"t1w": {"RepetitionTime": 2300}})
    assert result.deviations[0].matches_site_reference is False
