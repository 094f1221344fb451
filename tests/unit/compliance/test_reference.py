"""Inferred site references (modal values) and scanner configuration changes."""

from __future__ import annotations

from compliance_service.reference import configuration_changes, infer_reference


def fp(**values: object) -> dict[str, object]:
    base: dict[str, object] = {"RepetitionTime": 2300.0, "FlipAngle": 9.0,
                               "PixelSpacing": [1.0, 1.0], "SoftwareVersions": "syngo MR E11",
                               "SeriesNumber": 3, "EchoTime": None}
    return {**base, **values}


def test_two_studies_give_no_reference_three_do() -> None:
    assert infer_reference([fp(), fp()]) == {}
    reference = infer_reference([fp(), fp(), fp()])
    assert reference == {"RepetitionTime": 2300, "FlipAngle": 9, "PixelSpacing": [1, 1],
                         "SoftwareVersions": "syngo MR E11"}


def test_most_frequent_value_wins_and_support_is_per_parameter() -> None:
    history = [fp(RepetitionTime=2400.0), fp(), fp(RepetitionTime=2400.0, FlipAngle=8.0),
               fp(RepetitionTime=2400.0), fp()]
    reference = infer_reference(history)
    assert reference["RepetitionTime"] == 2400
    assert reference["FlipAngle"] == 9
    assert infer_reference(history, min_support=4).get("RepetitionTime") is None


def test_ties_go_to_the_most_recent_value() -> None:
    history = [fp(FlipAngle=8.0)] * 3 + [fp(FlipAngle=10.0)] * 3
    assert infer_reference(history)["FlipAngle"] == 10
    assert infer_reference(history[::-1])["FlipAngle"] == 8


def test_values_compare_after_rounding() -> None:
    history = [fp(EchoTime=2.98), fp(EchoTime=2.9800000001), fp(EchoTime=2.97999999999)]
    assert infer_reference(history)["EchoTime"] == 2.98


def test_software_upgrade_is_a_configuration_change() -> None:
    before = infer_reference([fp()] * 3)
    after = fp(SoftwareVersions="syngo MR XA30")
    [change] = configuration_changes(before, after, series_type="t1w")
    assert (change.parameter, change.previous, change.current, change.series_type) == (
        "SoftwareVersions", "syngo MR E11", "syngo MR XA30", None)


def test_modal_parameter_change_names_the_series_type() -> None:
    changes = configuration_changes(fp(), fp(RepetitionTime=2400.0, SeriesNumber=9),
                                    series_type="t1w")
    assert [(c.parameter, c.previous, c.current, c.series_type) for c in changes] == [
        ("RepetitionTime", 2300.0, 2400.0, "t1w")]


def test_no_previous_or_unknown_values_are_not_changes() -> None:
    assert configuration_changes(None, fp(), series_type="t1w") == []
    assert configuration_changes(fp(), fp(SoftwareVersions=None, FlipAngle=None),
                                 series_type="t1w") == []
    assert configuration_changes(fp(), fp(RepetitionTime=2300.0000001), series_type="x") == []
