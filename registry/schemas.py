"""Response models of the REST API (they are the OpenAPI document's schemas)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator

T = TypeVar("T")


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int = Field(description="rows matching the filters, before limit/offset")
    limit: int
    offset: int


class SiteOut(Out):
    id: str
    scanners: list[str] = Field(default_factory=list)
    studies: int = 0


class ScannerOut(Out):
    id: str
    site: str
    manufacturer: str | None = None
    model: str | None = None
    software_version: str | None = None


class ScannerChangeOut(Out):
    parameter: str
    series_type: str | None = None
    previous: Any = None
    current: Any = None
    study_uid: str | None = None
    changed_at: datetime

    _aware = field_validator("changed_at")(aware)


class ScannerDetail(ScannerOut):
    changes: list[ScannerChangeOut] = Field(
        default_factory=list, description="software version, serial and parameter history"
    )


class SubjectOut(Out):
    site: str
    subject_id: str
    clinical: dict[str, Any] = Field(default_factory=dict)
    studies: int = 0


class StudyOut(Out):
    study_uid: str
    site: str
    scanner: str
    subject_id: str | None = None
    is_phantom: bool
    study_date: str | None = None
    revision: int
    instance_count: int
    compliance_status: str | None = None
    qc_status: str | None = None
    harmonization_status: str | None = None
    processed: bool
    missing_series: list[str] | None = None
    received_at: datetime
    updated_at: datetime

    _aware = field_validator("received_at", "updated_at")(aware)


class RevisionOut(Out):
    revision: int
    received_at: datetime | None = None
    compliance_at: datetime | None = None
    qc_at: datetime | None = None
    harmonized_at: datetime | None = None
    processed_at: datetime | None = None

    _aware = field_validator(
        "received_at", "compliance_at", "qc_at", "harmonized_at", "processed_at"
    )(aware)


class SeriesOut(Out):
    study_uid: str
    series_uid: str
    site: str
    revision: int
    series_number: int | None = None
    series_description: str | None = None
    modality: str | None = None
    series_type: str | None = None
    instance_count: int


class ComplianceOut(Out):
    study_uid: str
    revision: int
    series_uid: str
    site: str
    scanner: str
    series_type: str
    verdict: str
    severity: str | None = None
    deviations: list[dict[str, Any]] = Field(default_factory=list)


class QCOut(Out):
    study_uid: str
    revision: int
    series_uid: str
    site: str
    scanner: str
    series_type: str
    kind: str
    status: str
    reason: str | None = None
    metrics: dict[str, float | None] = Field(default_factory=dict)
    features: dict[str, float | None] = Field(default_factory=dict)
    report: dict[str, str] = Field(default_factory=dict, description="blob keys; fetch with "
                                   "/api/v1/qc/reports/{key}")


class HarmonizedOut(Out):
    study_uid: str
    revision: int
    site: str
    scanner: str
    status: str
    reason: str | None = None
    batch: str | None = None
    model_version: str | None = None
    features: dict[str, float | None] = Field(default_factory=dict)
    updated_at: datetime

    _aware = field_validator("updated_at")(aware)


class StudyDetail(StudyOut):
    revisions: list[RevisionOut]
    series: list[SeriesOut]
    compliance: list[ComplianceOut]
    qc: list[QCOut]
    harmonized: list[HarmonizedOut]


class PhantomOut(Out):
    site: str
    scanner: str
    study_uid: str
    series_uid: str
    phantom_type: str
    acquired_at: str | None = None
    measured_at: datetime
    metrics: dict[str, float | None] = Field(default_factory=dict)
    zscores: dict[str, float | None] = Field(default_factory=dict)

    _aware = field_validator("measured_at")(aware)


class AlertOut(Out):
    site: str
    scanner: str
    metric: str
    state: str
    value: float
    zscore: float | None = None
    study_uid: str | None = None
    raised_at: datetime

    _aware = field_validator("raised_at")(aware)


class AuditOut(Out):
    id: int
    at: datetime
    token_id: int | None = None
    role: str | None = None
    action: str
    method: str
    path: str
    query: str | None = None
    status: int
    detail: str | None = None

    _aware = field_validator("at")(aware)


class VariableOut(BaseModel):
    variable: str
    type: str
    unit: str | None = None
    allowed: list[str] | None = None
    min: float | None = None
    max: float | None = None
    description: str | None = None


class CellErrorOut(BaseModel):
    row: int = Field(description="1 = the header row")
    column: str
    message: str


class ImportOut(BaseModel):
    subjects: int
    values: int


class ImportRejected(BaseModel):
    detail: str
    errors: list[CellErrorOut]


class Problem(BaseModel):
    detail: str


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
