"""The CloudEvents 1.0 envelope and the `data` model of every HarmoNet event type.

Event types are past-tense facts. The AMQP routing key is the part of `type`
after `org.harmonet.`; `dataschema` names the JSON Schema generated from the
model below (see `services/schemas/` and `harmonet schemas`).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

TYPE_PREFIX = "org.harmonet."
SCHEMA_BASE = "https://harmonet.org/schemas/"
_ID_NAMESPACE = uuid.UUID("6a0d3c36-6a7e-4d55-9a53-39f4a0a0c0de")


class EventData(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- study.received ----------------------------------------------------------------


class SeriesManifest(EventData):
    series_uid: str = Field(description="pseudonymised SeriesInstanceUID")
    series_number: int | None = None
    series_description: str | None = None
    protocol_name: str | None = None
    modality: str | None = None
    sop_class_uids: list[str]
    instance_count: int = Field(ge=1)
    blob_prefix: str = Field(description="blob store prefix holding the series' instances")
    blob_keys: list[str]
    headers: dict[str, Any] = Field(
        default_factory=dict,
        description="key acquisition headers (DICOM keyword -> JSON value) from one instance",
    )


class StudyReceived(EventData):
    study_uid: str = Field(description="pseudonymised StudyInstanceUID")
    revision: int = Field(ge=1, description="1 for the first publish, +1 for each later one")
    site: str
    scanner: str
    subject_id: str = Field(description="pseudonymised PatientID")
    is_phantom: bool = False
    study_date: str | None = Field(default=None, description="shifted StudyDate (YYYYMMDD)")
    patient_age: str | None = None
    patient_sex: str | None = None
    instance_count: int = Field(ge=1)
    series: list[SeriesManifest]


# --- later stages: their issues fill in the details ------------------------------------


class Deviation(EventData):
    parameter: str
    expected: Any
    actual: Any = Field(description="None when the series does not carry the parameter")
    tolerance: Any = None
    matches_site_reference: bool | None = Field(
        default=None,
        description="the actual value is what this site x scanner x series type usually "
        "acquires (a consistent site difference, not a one-off); None without a reference",
    )


class SeriesCompliance(EventData):
    series_uid: str
    series_number: int | None = None
    series_description: str | None = None
    series_type: str = Field(description="protocol series type, or 'unrecognized'")
    verdict: Literal["compliant", "deviant", "unrecognized"]
    severity: Literal["exclude", "warning"] | None = None
    deviations: list[Deviation] = Field(default_factory=list)
    fingerprint: dict[str, Any] = Field(
        default_factory=dict, description="vendor-neutral acquisition parameters; None = unknown"
    )
    site_reference: dict[str, Any] = Field(
        default_factory=dict,
        description="inferred reference of this site x scanner x series type: the most "
        "frequent value of each parameter once at least 3 studies support it",
    )


class StudyComplianceChecked(EventData):
    study_uid: str
    revision: int = Field(ge=1)
    site: str
    scanner: str
    is_phantom: bool = False
    series: list[SeriesCompliance]


class SeriesQC(EventData):
    series_uid: str
    series_type: str
    kind: Literal["anatomical", "functional", "fbirn", "acr", "none"] = "none"
    status: Literal["measured", "not_measured"] = "measured"
    reason: str | None = Field(default=None, description="why a series could not be measured")
    metrics: dict[str, float | None] = Field(default_factory=dict)
    features: dict[str, float | None] = Field(default_factory=dict)
    report: dict[str, str] = Field(
        default_factory=dict, description="blob keys of the report files (mosaic, carpet, json)"
    )


class StudyQCCompleted(EventData):
    study_uid: str
    revision: int = Field(ge=1)
    site: str
    scanner: str
    series: list[SeriesQC]


class ScannerPhantomMeasured(EventData):
    site: str
    scanner: str
    study_uid: str
    series_uid: str
    phantom_type: Literal["fbirn", "acr"]
    acquired_at: str | None = Field(default=None, description="shifted acquisition date")
    metrics: dict[str, float | None]
    zscores: dict[str, float | None] = Field(default_factory=dict)


class ScannerStabilityAlert(EventData):
    site: str
    scanner: str
    metric: str
    state: Literal["out_of_control", "back_in_control"]
    value: float
    zscore: float | None = None
    study_uid: str | None = None


class ConfigurationChange(EventData):
    parameter: str
    previous: Any
    current: Any
    series_type: str | None = Field(default=None, description="for modal acquisition parameters")


class ScannerConfigurationChanged(EventData):
    site: str
    scanner: str
    study_uid: str
    changes: list[ConfigurationChange]


class StudyHarmonized(EventData):
    study_uid: str
    revision: int = Field(ge=1)
    site: str
    scanner: str
    model_version: str = Field(
        description="sha256:<hex> of the model applied (or that the batch is pending for); "
        "empty when no model is installed"
    )
    features: dict[str, float | None] = Field(
        description="harmonized features (`<series_type>.<feature>`); empty unless harmonized"
    )
    status: Literal["harmonized", "pending", "not_applicable"] = Field(
        default="harmonized",
        description="pending: the study's batch is not in the model yet (study.harmonized "
        "follows with status harmonized once the batch has enough scans)",
    )
    reason: str | None = Field(
        default=None,
        description="why not harmonized: no_model, phantom, no_features, missing_covariates, "
        "invalid_covariates",
    )
    batch: str | None = Field(
        default=None, description="the study's harmonization batch (site, scanner or epoch)"
    )
    images: dict[str, str] = Field(
        default_factory=dict,
        description="series uid -> blob key of its intensity-standardised T1w NIfTI",
    )


class StudyProcessed(EventData):
    study_uid: str
    revision: int = Field(ge=1)
    site: str
    scanner: str
    stages: dict[str, str] = Field(
        default_factory=dict,
        description="received: recorded; compliance: compliant|deviant|excluded|unrecognized; "
        "qc: measured|partial|not_measured; harmonization: harmonized|pending|not_applicable",
    )
    summary: dict[str, Any] = Field(
        default_factory=dict,
        description="study_date, counts, per-series verdict/deviations/QC metrics/report "
        "blob keys, harmonization (status, model_version, reason, batch, features)",
    )
    subject_id: str | None = Field(default=None, description="pseudonymised PatientID")
    is_phantom: bool = False
    usable: bool = Field(
        default=True, description="no series was excluded by a protocol deviation"
    )


DATA_MODELS: dict[str, type[EventData]] = {
    "study.received": StudyReceived,
    "study.compliance.checked": StudyComplianceChecked,
    "study.qc.completed": StudyQCCompleted,
    "scanner.phantom.measured": ScannerPhantomMeasured,
    "scanner.stability.alert": ScannerStabilityAlert,
    "scanner.configuration.changed": ScannerConfigurationChanged,
    "study.harmonized": StudyHarmonized,
    "study.processed": StudyProcessed,
}
SCHEMA_VERSION = "v1"


class CloudEvent(BaseModel):
    """CloudEvents 1.0, JSON structured mode."""

    model_config = ConfigDict(extra="allow", frozen=True)

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1)
    source: str = Field(min_length=1)
    type: str = Field(pattern=r"^org\.harmonet\.[a-z]+(\.[a-z]+)+$")
    time: datetime
    subject: str = Field(min_length=1)
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str
    data: dict[str, Any]

    @property
    def routing_key(self) -> str:
        return self.type.removeprefix(TYPE_PREFIX)

    def to_json(self) -> bytes:
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def from_json(cls, body: bytes | str) -> CloudEvent:
        return cls.model_validate_json(body)

    def parsed_data(self) -> EventData:
        """The `data` validated against its type's model (raises `pydantic.ValidationError`)."""
        return DATA_MODELS[self.routing_key].model_validate(self.data)


def schema_url(routing_key: str) -> str:
    return f"{SCHEMA_BASE}{routing_key}/{SCHEMA_VERSION}.json"


def deterministic_id(routing_key: str, *parts: object) -> str:
    """Same logical fact, same id: a UUIDv5 over the type and the identifying parts."""
    name = "\x1f".join([routing_key, *(str(part) for part in parts)])
    return str(uuid.uuid5(_ID_NAMESPACE, name))


def make_event(
    routing_key: str,
    data: BaseModel,
    *,
    source: str,
    subject: str,
    id_parts: tuple[object, ...],
    time: datetime | None = None,
) -> CloudEvent:
    """Build an envelope for `data`, whose model must be the one registered for the key."""
    expected = DATA_MODELS[routing_key]
    if not isinstance(data, expected):
        raise TypeError(f"{routing_key} carries {expected.__name__}, not {type(data).__name__}")
    return CloudEvent(
        id=deterministic_id(routing_key, *id_parts),
        source=source,
        type=TYPE_PREFIX + routing_key,
        time=time or datetime.now(UTC),
        subject=subject,
        dataschema=schema_url(routing_key),
        data=data.model_dump(mode="json"),
    )


def json_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema of every event's `data`, keyed by routing key."""
    return {key: model.model_json_schema() for key, model in DATA_MODELS.items()}


def asyncapi_document() -> dict[str, Any]:
    """An AsyncAPI 2.6 document describing the exchange, routing keys and payloads."""
    channels: dict[str, Any] = {}
    for key, model in DATA_MODELS.items():
        channels[key] = {
            "subscribe": {
                "operationId": key.replace(".", "_"),
                "message": {
                    "name": TYPE_PREFIX + key,
                    "contentType": "application/cloudevents+json",
                    "payload": {
                        "type": "object",
                        "required": [
                            "specversion", "id", "source", "type", "time",
                            "subject", "datacontenttype", "dataschema", "data",
                        ],
                        "properties": {
                            "type": {"const": TYPE_PREFIX + key},
                            "dataschema": {"const": schema_url(key)},
                            "data": model.model_json_schema(),
                        },
                    },
                },
            },
            "bindings": {
                "amqp": {
                    "is": "routingKey",
                    "exchange": {"name": "harmonet.events", "type": "topic", "durable": True},
                }
            },
        }
    return {
        "asyncapi": "2.6.0",
        "info": {"title": "HarmoNet events", "version": SCHEMA_VERSION},
        "defaultContentType": "application/json",
        "channels": channels,
    }

