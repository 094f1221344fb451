"""The registry's SQL schema (SQLAlchemy 2 declarative); Alembic migrations mirror it.

Every row an API token may read carries its `site`, so site scoping is one
`WHERE site IN (...)` on every query. Event-derived rows are keyed by the fact
they record (study uid + revision + series uid, event id), which is what makes
the consumer idempotent.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """TIMESTAMP WITH TIME ZONE; SQLite, which keeps no zone, hands back UTC-aware values too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: UTCDateTime()}


# BigInteger autoincrement ids become INTEGER PRIMARY KEY (rowid) on SQLite.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Site(Base):
    __tablename__ = "sites"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)


class Scanner(Base):
    __tablename__ = "scanners"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    site: Mapped[str] = mapped_column(String(64), ForeignKey("sites.id"), index=True)
    manufacturer: Mapped[str | None] = mapped_column(String(128))
    model: Mapped[str | None] = mapped_column(String(128))
    software_version: Mapped[str | None] = mapped_column(String(256))
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)


class ScannerChange(Base):
    """Software version / serial / protocol parameter history of a scanner."""

    __tablename__ = "scanner_changes"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), index=True)
    site: Mapped[str] = mapped_column(String(64), index=True)
    scanner: Mapped[str] = mapped_column(String(64), ForeignKey("scanners.id"), index=True)
    study_uid: Mapped[str | None] = mapped_column(String(128))
    parameter: Mapped[str] = mapped_column(String(128))
    series_type: Mapped[str | None] = mapped_column(String(64))
    previous: Mapped[Any] = mapped_column(JSON, nullable=True)
    current: Mapped[Any] = mapped_column(JSON, nullable=True)
    changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("event_id", "parameter", "series_type", "scanner"),)


class Subject(Base):
    """A pseudonymised PatientID at one site, with its clinical variables."""

    __tablename__ = "subjects"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    site: Mapped[str] = mapped_column(String(64), ForeignKey("sites.id"), index=True)
    subject_id: Mapped[str] = mapped_column(String(128), index=True)
    clinical: Mapped[dict[str, Any]] = mapped_column(default=dict)
    sex: Mapped[str | None] = mapped_column(String(8))
    age: Mapped[str | None] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (UniqueConstraint("site", "subject_id"),)


class Study(Base):
    __tablename__ = "studies"
    study_uid: Mapped[str] = mapped_column(String(128), primary_key=True)
    site: Mapped[str] = mapped_column(String(64), ForeignKey("sites.id"))
    scanner: Mapped[str] = mapped_column(String(64))
    subject_id: Mapped[str | None] = mapped_column(String(128), index=True)
    is_phantom: Mapped[bool] = mapped_column(Boolean, default=False)
    study_date: Mapped[str | None] = mapped_column(String(8))
    revision: Mapped[int] = mapped_column(Integer, default=1)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    compliance_status: Mapped[str | None] = mapped_column(String(32))
    qc_status: Mapped[str | None] = mapped_column(String(32))
    harmonization_status: Mapped[str | None] = mapped_column(String(32))
    processed: Mapped[bool] = mapped_column(Boolean, default=False)
    missing_series: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    __table_args__ = (
        Index("ix_studies_site_received", "site", "received_at"),
        Index("ix_studies_received", "received_at"),
    )


class StudyRevision(Base):
    """One publish of a study; the stages recorded for it and when it was processed."""

    __tablename__ = "study_revisions"
    study_uid: Mapped[str] = mapped_column(
        String(128), ForeignKey("studies.study_uid"), primary_key=True
    )
    revision: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(String(64), index=True)
    received_at: Mapped[datetime | None] = mapped_column()
    compliance_at: Mapped[datetime | None] = mapped_column()
    qc_at: Mapped[datetime | None] = mapped_column()
    harmonized_at: Mapped[datetime | None] = mapped_column()
    processed_at: Mapped[datetime | None] = mapped_column()


class Series(Base):
    __tablename__ = "series"
    study_uid: Mapped[str] = mapped_column(
        String(128), ForeignKey("studies.study_uid"), primary_key=True
    )
    series_uid: Mapped[str] = mapped_column(String(128), primary_key=True)
    site: Mapped[str] = mapped_column(String(64), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(256))
    modality: Mapped[str | None] = mapped_column(String(16))
    series_type: Mapped[str | None] = mapped_column(String(64))
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    blob_prefix: Mapped[str | None] = mapped_column(String(512))
    __table_args__ = (Index("ix_series_uid", "series_uid"),)


class ComplianceResult(Base):
    __tablename__ = "compliance_results"
    study_uid: Mapped[str] = mapped_column(String(128), primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(128), primary_key=True)
    site: Mapped[str] = mapped_column(String(64), index=True)
    scanner: Mapped[str] = mapped_column(String(64))
    series_type: Mapped[str] = mapped_column(String(64))
    verdict: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str | None] = mapped_column(String(16))
    deviations: Mapped[list[Any]] = mapped_column(default=list)


class QCResult(Base):
    __tablename__ = "qc_results"
    study_uid: Mapped[str] = mapped_column(String(128), primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(128), primary_key=True)
    site: Mapped[str] = mapped_column(String(64), index=True)
    scanner: Mapped[str] = mapped_column(String(64))
    series_type: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    features: Mapped[dict[str, Any]] = mapped_column(default=dict)
    report: Mapped[dict[str, Any]] = mapped_column(default=dict)


class PhantomMeasurement(Base):
    __tablename__ = "phantom_measurements"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    site: Mapped[str] = mapped_column(String(64), index=True)
    scanner: Mapped[str] = mapped_column(String(64), index=True)
    study_uid: Mapped[str] = mapped_column(String(128))
    series_uid: Mapped[str] = mapped_column(String(128))
    phantom_type: Mapped[str] = mapped_column(String(16))
    acquired_at: Mapped[str | None] = mapped_column(String(32))
    measured_at: Mapped[datetime] = mapped_column(default=utcnow)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    zscores: Mapped[dict[str, Any]] = mapped_column(default=dict)


class StabilityAlert(Base):
    __tablename__ = "stability_alerts"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), unique=True)
    site: Mapped[str] = mapped_column(String(64), index=True)
    scanner: Mapped[str] = mapped_column(String(64), index=True)
    metric: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(32))
    value: Mapped[float] = mapped_column(Float)
    zscore: Mapped[float | None] = mapped_column(Float)
    study_uid: Mapped[str | None] = mapped_column(String(128))
    raised_at: Mapped[datetime] = mapped_column(default=utcnow)


class HarmonizedFeatures(Base):
    """The latest harmonization of one study revision (a later event replaces it)."""

    __tablename__ = "harmonized_features"
    study_uid: Mapped[str] = mapped_column(String(128), primary_key=True)
    revision: Mapped[int] = mapped_column(Integer, primary_key=True)
    site: Mapped[str] = mapped_column(String(64), index=True)
    scanner: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)
    batch: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str | None] = mapped_column(String(128))
    features: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ConsumedEvent(Base):
    """Inbox: the id of every event already recorded (a redelivery changes nothing)."""

    __tablename__ = "consumed_events"
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    type: Mapped[str] = mapped_column(String(128))
    consumed_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutboxEvent(Base):
    """Events to publish, written in the transaction that decided them."""

    __tablename__ = "outbox"
    event_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(index=True)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(32))
    sites: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


class AuditEntry(Base):
    """Append-only (PostgreSQL refuses UPDATE and DELETE on it by trigger)."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    token_id: Mapped[int | None] = mapped_column(BigId)
    role: Mapped[str | None] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(1024))
    query: Mapped[str | None] = mapped_column(Text)
    status: Mapped[int] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(Text)


class DictionaryVariable(Base):
    """The clinical data dictionary in force (replaced whole by an upload)."""

    __tablename__ = "clinical_dictionary"
    variable: Mapped[str] = mapped_column(String(128), primary_key=True)
    type: Mapped[str] = mapped_column(String(16))
    unit: Mapped[str | None] = mapped_column(String(64))
    allowed: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    minimum: Mapped[float | None] = mapped_column(Float)
    maximum: Mapped[float | None] = mapped_column(Float)
    description: Mapped[str | None] = mapped_column(Text)
