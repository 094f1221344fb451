import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from services.events import (
    DATA_MODELS,
    CloudEvent,
    SeriesManifest,
    StudyReceived,
    asyncapi_document,
    json_schemas,
    make_event,
)

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "services" / "schemas"
uids = st.from_regex(r"2\.25\.[1-9][0-9]{0,37}", fullmatch=True)


def _received(study_uid: str, revision: int, count: int) -> StudyReceived:
    series = SeriesManifest(
        series_uid="2.25.1", sop_class_uids=["1.2.840.10008.5.1.4.1.1.4"],
        instance_count=count, blob_prefix="dicom/milan/x/2.25.1",
        blob_keys=[f"dicom/milan/x/2.25.1/{i}.dcm" for i in range(count)],
        headers={"RepetitionTime": 2300.0, "PixelSpacing": [1.0, 1.0]},
    )
    return StudyReceived(
        study_uid=study_uid, revision=revision, site="milan", scanner="milan-prisma",
        subject_id="sub-X", instance_count=count, series=[series],
    )


@given(study_uid=uids, revision=st.integers(1, 10_000), count=st.integers(1, 30))
def test_envelope_round_trips_through_json(study_uid: str, revision: int, count: int) -> None:
    data = _received(study_uid, revision, count)
    event = make_event("study.received", data, source="test", subject=study_uid,
                       id_parts=(study_uid, revision))
    again = CloudEvent.from_json(event.to_json())
    assert again == event
    assert again.parsed_data() == data
    assert again.routing_key == "study.received"
    assert again.type == "org.harmonet.study.received"


def test_ids_are_deterministic_per_fact() -> None:
    data = _received("2.25.7", 1, 2)
    make = lambda rev: make_event("study.received", data, source="a", subject="2.25.7",  # noqa: E731
                                  id_parts=("2.25.7", rev))
    assert make(1).id == make(1).id
    assert make(1).id != make(2).id


def test_envelope_has_every_required_attribute() -> None:
    event = make_event("study.received", _received("2.25.9", 1, 1), source="s",
                       subject="2.25.9", id_parts=("2.25.9", 1),
                       time=datetime(2026, 11, 24, tzinfo=UTC))
    body = json.loads(event.to_json())
    for attribute in ("specversion", "id", "source", "type", "time", "subject",
                      "datacontenttype", "dataschema", "data"):
        assert body[attribute], attribute
    assert body["specversion"] == "1.0"
    assert body["dataschema"].endswith("/study.received/v1.json")


def test_wrong_data_model_refused() -> None:
    with pytest.raises(TypeError):
        make_event("study.harmonized", _received("2.25.1", 1, 1), source="s", subject="x",
                   id_parts=())


def test_data_model_refuses_unknown_fields() -> None:
    body = _received("2.25.1", 1, 1).model_dump()
    body["patient_name"] = "DOE^JANE"
    with pytest.raises(ValidationError):
        StudyReceived.model_validate(body)


def test_committed_schemas_match_models() -> None:
    generated = json_schemas()
    assert set(generated) == set(DATA_MODELS)
    for key, schema in generated.items():
        committed = json.loads((SCHEMA_DIR / f"{key}.json").read_text())
        assert committed == schema, f"run `make schemas`: {key} changed"
    assert json.loads((SCHEMA_DIR / "asyncapi.json").read_text()) == asyncapi_document()
