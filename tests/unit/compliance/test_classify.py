"""Classification: every pattern must match, best overall match wins, rule order breaks ties."""

from __future__ import annotations

import pytest

from compliance_service.classify import classify_series, field_matches, snake_case
from services.config import Expectation, SeriesRule

T1_FP = {"SeriesDescription": "t1_mprage_sag", "RepetitionTime": 2300.0, "EchoTime": 2.98,
         "FlipAngle": 9.0, "NumberOfSlices": 176, "ImageType": "ORIGINAL\\PRIMARY\\M\\ND",
         "ScanningSequence": "GR\\IR", "PixelSpacing": [1.0, 1.0]}
ANAT = SeriesRule(type="anat", match={"series_description": ".*"})
T1W = SeriesRule(type="t1w", match={"series_description": "(?i)t1|mprage"},
                 expect={"RepetitionTime": Expectation(value=2300, tolerance="1%"),
                         "FlipAngle": Expectation(value=9, tolerance=1)})
T2W = SeriesRule(type="t2w", match={"series_description": "(?i)t[12]"},
                 expect={"RepetitionTime": Expectation(value=3200, tolerance="1%"),
                         "FlipAngle": Expectation(value=120, tolerance=5)})


def test_best_match_beats_first_match() -> None:
    [assignment] = classify_series({"a": T1_FP}, [ANAT, T2W, T1W]).values()
    assert assignment.series_type == "t1w"
    assert assignment.score == pytest.approx(2.0)


def test_several_series_may_share_a_type() -> None:
    result = classify_series({"run1": T1_FP, "run2": dict(T1_FP)}, [T1W, ANAT])
    assert {a.series_type for a in result.values()} == {"t1w"}


def test_no_matching_rule_is_unrecognized() -> None:
    [assignment] = classify_series({"a": {"SeriesDescription": "localizer"}}, [T1W]).values()
    assert assignment.series_type is None and assignment.score == 0.0


def test_ties_go_to_the_rule_listed_first() -> None:
    other = SeriesRule(type="other", match={"series_description": "mprage"})
    first = SeriesRule(type="first", match={"series_description": "t1"})
    assert classify_series({"a": T1_FP}, [first, other])["a"].series_type == "first"
    assert classify_series({"a": T1_FP}, [other, first])["a"].series_type == "other"


def test_more_criteria_is_a_better_match() -> None:
    specific = SeriesRule(type="mprage", match={"series_description": "t1",
                                                "scanning_sequence": "IR"})
    loose = SeriesRule(type="loose", match={"series_description": "t1"})
    assert classify_series({"a": T1_FP}, [loose, specific])["a"].series_type == "mprage"


@pytest.mark.parametrize(("match", "recognised"), [
    ({"repetition_time": "2000-2500"}, True),
    ({"repetition_time": "2400-2500"}, False),
    ({"slices": "150-200"}, True),
    ({"number_of_slices": "100-150"}, False),
    ({"RepetitionTime": "^2300$"}, True),
    ({"echo_time": "2.98"}, True),
    ({"image_type": "PRIMARY"}, True),
    ({"pixel_spacing": r"^1\\1$"}, True),
    ({"inversion_time": ".*"}, False),  # the series has no inversion time
    ({"series_description": "t1", "sequence_name": ".*"}, False),
    ({}, False),  # a rule without match never matches
])
def test_match_conventions(match: dict[str, str], recognised: bool) -> None:
    rule = SeriesRule(type="x", match=match)
    assert (classify_series({"a": T1_FP}, [rule])["a"].series_type == "x") is recognised


def test_range_on_text_is_a_regex() -> None:
    assert field_matches("scan 2000-2500 test", "2000-2500")
    assert not field_matches(None, ".*")
    assert not field_matches("x", "(")  # invalid regex never matches, never raises


@pytest.mark.parametrize(("keyword", "snake"), [
    ("SeriesDescription", "series_description"), ("MRAcquisitionType", "mr_acquisition_type"),
    ("InPlanePhaseEncodingDirection", "in_plane_phase_encoding_direction"),
    ("ParallelReductionFactorInPlane", "parallel_reduction_factor_in_plane"),
    ("NumberOfSlices", "number_of_slices"),
])
def test_snake_case(keyword: str, snake: str) -> None:
    assert snake_case(keyword) == snake
