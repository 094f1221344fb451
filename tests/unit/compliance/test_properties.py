"""Property tests: checks never raise, and a value within tolerance is never a deviation."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from compliance_service.check import check_series
from compliance_service.reference import configuration_changes, infer_reference
from compliance_service.tolerance import tolerance_amount
from services.config import Expectation

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
values = scalars | st.lists(scalars, max_size=4)
tolerances = st.none() | st.floats(min_value=0, max_value=1e6) | st.sampled_from(
    ["0%", "1%", "12.5%", "100%"])
names = st.sampled_from(["RepetitionTime", "EchoTime", "PixelSpacing", "Rows",
                         "PhaseEncodingDirection", "ImageType", "Unknown"])
fingerprints = st.dictionaries(names, values, max_size=7)


@given(fingerprints, st.dictionaries(names, st.builds(Expectation, value=values,
                                                      tolerance=tolerances), max_size=7))
def test_check_series_never_raises(fingerprint: dict, expect: dict) -> None:
    deviations = check_series(fingerprint, expect)
    assert {d.parameter for d in deviations} <= set(expect)
    for d in deviations:
        assert d.actual == fingerprint.get(d.parameter) or d.actual != d.actual  # NaN


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(finite, tolerances, st.floats(min_value=-1.0, max_value=1.0))
def test_within_tolerance_is_never_a_deviation(expected: float, tolerance, fraction: float) -> None:
    actual = expected + fraction * tolerance_amount(expected, tolerance)
    expect = {"RepetitionTime": Expectation(value=expected, tolerance=tolerance)}
    assert check_series({"RepetitionTime": actual}, expect) == []


@given(st.lists(st.floats(min_value=-1e3, max_value=1e3, allow_nan=False), min_size=2,
                max_size=2), st.floats(min_value=0, max_value=10), st.floats(-1, 1))
def test_lists_within_tolerance_element_wise(expected: list, tolerance: float, f: float) -> None:
    actual = [value + f * tolerance for value in expected]
    expect = {"PixelSpacing": Expectation(value=expected, tolerance=tolerance)}
    assert check_series({"PixelSpacing": actual}, expect) == []


@given(finite, st.floats(min_value=0.001, max_value=1e3), st.floats(1.01, 100))
def test_outside_tolerance_is_a_deviation(expected: float, tolerance: float, k: float) -> None:
    expect = {"EchoTime": Expectation(value=expected, tolerance=tolerance)}
    [deviation] = check_series({"EchoTime": expected + k * tolerance}, expect)
    assert deviation.expected == expected


@given(st.lists(fingerprints, max_size=6), fingerprints)
def test_reference_functions_never_raise(history: list, current: dict) -> None:
    reference = infer_reference(history, min_support=2)
    configuration_changes(reference, current, series_type="t1w")
