"""The registry's event consumer: records every HarmoNet event, idempotently.

Consumes every routing key (`#`); produces `study.processed` once per study
revision, when its receipt, compliance, QC and harmonization (any status) are
all recorded. Each event is one transaction: the inbox row (event id), the
rows it records and, when it completes a revision, the outbox row of
`study.processed`, which is published after the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.models import (
    ComplianceResult,
    ConsumedEvent,
    HarmonizedFeatures,
    OutboxEvent,
    PhantomMeasurement,
    QCResult,
    Scanner,
    ScannerChange,
    Series,
    StabilityAlert,
    Study,
    StudyRevision,
    utcnow,
)
from registry.store import ensure_scanner, ensure_subject, insert_ignore, lock_revision
from services.events import (
    CloudEvent,
    ScannerConfigurationChanged,
    ScannerPhantomMeasured,
    ScannerStabilityAlert,
    StudyComplianceChecked,
    StudyProcessed,
    StudyQCCompleted,
    StudyReceived,
    make_event,
)

log = logging.getLogger(__name__)
HARMONIZATION_STATUSES = ("harmonized", "pending", "not_applicable")


class InvalidEvent(ValueError):
    """The event's data does not fit its type: it can never be recorded."""


def record_event(session: Session, event: CloudEvent, *, source: str) -> bool:
    """Record `event` in `session` (not committed); False when it was already recorded."""
    recorder = _RECORDERS.get(event.routing_key)
    if recorder is None:
        return False  # study.processed (ours) and types of a later schema version
    try:
        recorder(session, event, source)
    except ValidationError as exc:
        raise InvalidEvent(f"invalid {event.routing_key}: {exc.error_count()} error(s): "
                           f"{exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from exc
    return True


def _first_time(session: Session, event: CloudEvent) -> bool:
    """Claim the event id in the inbox; False when another delivery already recorded it."""
    return insert_ignore(
        session,
        ConsumedEvent,
        {"event_id": event.id, "type": event.type, "consumed_at": utcnow()},
        ["event_id"],
    )


# --- study events -------------------------------------------------------------------


def _record_received(session: Session, event: CloudEvent, source: str) -> None:
    data = StudyReceived.model_validate(event.data)
    study, revision = lock_revision(session, study_uid=data.study_uid, revision=data.revision,
                                    site=data.site, scanner=data.scanner)
    if not _first_time(session, event):
        return
    subject = ensure_subject(session, site=data.site, subject_id=data.subject_id)
    subject.sex = data.patient_sex or subject.sex
    subject.age = data.patient_age or subject.age
    revision.received_at = revision.received_at or event.time
    if data.revision >= study.revision:
        study.subject_id = data.subject_id
        study.is_phantom = data.is_phantom
        study.study_date = data.study_date
        study.instance_count = data.instance_count
        study.updated_at = utcnow()
        if data.revision == 1 or study.received_at > event.time:
            study.received_at = event.time
    for manifest in data.series:
        row = session.get(Series, (data.study_uid, manifest.series_uid))
        if row is None:
            row = Series(study_uid=data.study_uid, series_uid=manifest.series_uid, site=data.site)
            session.add(row)
        row.revision = data.revision
        row.series_number = manifest.series_number
        row.series_description = manifest.series_description
        row.modality = manifest.modality
        row.instance_count = manifest.instance_count
        row.blob_prefix = manifest.blob_prefix
    _record_scanner_identity(session, data)
    _maybe_processed(session, study, revision, source=source)


def _record_scanner_identity(session: Session, data: StudyReceived) -> None:
    headers = next((s.headers for s in data.series if s.headers), {})
    scanner = session.get(Scanner, data.scanner)
    if scanner is None or not headers:
        return
    scanner.manufacturer = _text(headers.get("Manufacturer")) or scanner.manufacturer
    scanner.model = _text(headers.get("ManufacturerModelName")) or scanner.model
    scanner.software_version = _text(headers.get("SoftwareVersions")) or scanner.software_version


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, list):
        return "\\".join(str(v) for v in value)
    return str(value)


def _record_compliance(session: Session, event: CloudEvent, source: str) -> None:
    data = StudyComplianceChecked.model_validate(event.data)
    study, revision = lock_revision(session, study_uid=data.study_uid, revision=data.revision,
                                    site=data.site, scanner=data.scanner)
    if not _first_time(session, event):
        return
    for series in data.series:
        session.merge(ComplianceResult(
            study_uid=data.study_uid, revision=data.revision, series_uid=series.series_uid,
            site=data.site, scanner=data.scanner, series_type=series.series_type,
            verdict=series.verdict, severity=series.severity,
            deviations=[d.model_dump(mode="json") for d in series.deviations],
        ))
        row = session.get(Series, (data.study_uid, series.series_uid))
        if row is not None:
            row.series_type = series.series_type
    revision.compliance_at = revision.compliance_at or event.time
    if data.revision == study.revision:
        study.compliance_status = compliance_status(
            [(s.verdict, s.severity) for s in data.series]
        )
        study.is_phantom = study.is_phantom or data.is_phantom
        study.missing_series = None  # re-evaluated by the missing-scan check
        study.updated_at = utcnow()
    _maybe_processed(session, study, revision, source=source)


def compliance_status(verdicts: list[tuple[str, str | None]]) -> str:
    """excluded > deviant > compliant; a study of only unrecognized series is unrecognized."""
    if any(v == "deviant" and s == "exclude" for v, s in verdicts):
        return "excluded"
    if any(v == "deviant" for v, _ in verdicts):
        return "deviant"
    if verdicts and all(v == "unrecognized" for v, _ in verdicts):
        return "unrecognized"
    return "compliant"


def _record_qc(session: Session, event: CloudEvent, source: str) -> None:
    data = StudyQCCompleted.model_validate(event.data)
    study, revision = lock_revision(session, study_uid=data.study_uid, revision=data.revision,
                                    site=data.site, scanner=data.scanner)
    if not _first_time(session, event):
        return
    for series in data.series:
        session.merge(QCResult(
            study_uid=data.study_uid, revision=data.revision, series_uid=series.series_uid,
            site=data.site, scanner=data.scanner, series_type=series.series_type,
            kind=series.kind, status=series.status, reason=series.reason,
            metrics=dict(series.metrics), features=dict(series.features),
            report=dict(series.report),
        ))
    revision.qc_at = revision.qc_at or event.time
    if data.revision == study.revision:
        measured = [s.status == "measured" for s in data.series if s.kind != "none"]
        study.qc_status = ("measured" if all(measured) else
                           "partial" if any(measured) else "not_measured")
        study.updated_at = utcnow()
    _maybe_processed(session, study, revision, source=source)


def _record_harmonized(session: Session, event: CloudEvent, source: str) -> None:
    # Read field by field: `status`, `reason` and `batch` are additive to StudyHarmonized.
    data = event.data
    try:
        study_uid, site, scanner = str(data["study_uid"]), str(data["site"]), str(data["scanner"])
        revision_number = int(data["revision"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidEvent(f"invalid study.harmonized: {exc!r}") from exc
    status = str(data.get("status") or "harmonized")
    if status not in HARMONIZATION_STATUSES:
        raise InvalidEvent(f"invalid study.harmonized: unknown status {status!r}")
    study, revision = lock_revision(session, study_uid=study_uid, revision=revision_number,
                                    site=site, scanner=scanner)
    if not _first_time(session, event):
        return
    row = session.get(HarmonizedFeatures, (study_uid, revision_number))
    if row is not None and status != "harmonized" and row.status == "harmonized":
        return  # a late `pending` never overwrites features already harmonized
    if row is None:
        row = HarmonizedFeatures(study_uid=study_uid, revision=revision_number, site=site)
        session.add(row)
    row.scanner = scanner
    row.status = status
    row.reason = _text(data.get("reason"))
    row.batch = _text(data.get("batch"))
    row.model_version = _text(data.get("model_version"))
    features = data.get("features") or {}
    row.features = dict(features) if isinstance(features, dict) else {}
    row.updated_at = utcnow()
    revision.harmonized_at = revision.harmonized_at or event.time
    if revision_number == study.revision:
        study.harmonization_status = status
        study.updated_at = utcnow()
    _maybe_processed(session, study, revision, source=source)


# --- scanner events -----------------------------------------------------------------


def _record_phantom(session: Session, event: CloudEvent, source: str) -> None:
    data = ScannerPhantomMeasured.model_validate(event.data)
    ensure_scanner(session, site=data.site, scanner=data.scanner)
    if not _first_time(session, event):
        return
    existing = session.scalars(select(PhantomMeasurement).where(
        PhantomMeasurement.scanner == data.scanner,
        PhantomMeasurement.study_uid == data.study_uid,
        PhantomMeasurement.series_uid == data.series_uid,
    )).first()
    row = existing or PhantomMeasurement(event_id=event.id, site=data.site, scanner=data.scanner,
                                         study_uid=data.study_uid, series_uid=data.series_uid)
    row.phantom_type = data.phantom_type
    row.acquired_at = data.acquired_at
    row.measured_at = event.time
    row.metrics = dict(data.metrics)
    row.zscores = dict(data.zscores)
    if existing is None:
        session.add(row)


def _record_alert(session: Session, event: CloudEvent, source: str) -> None:
    data = ScannerStabilityAlert.model_validate(event.data)
    ensure_scanner(session, site=data.site, scanner=data.scanner)
    if not _first_time(session, event):
        return
    session.add(StabilityAlert(
        event_id=event.id, site=data.site, scanner=data.scanner, metric=data.metric,
        state=data.state, value=data.value, zscore=data.zscore, study_uid=data.study_uid,
        raised_at=event.time,
    ))


def _record_configuration(session: Session, event: CloudEvent, source: str) -> None:
    data = ScannerConfigurationChanged.model_validate(event.data)
    ensure_scanner(session, site=data.site, scanner=data.scanner)
    if not _first_time(session, event):
        return
    for change in data.changes:
        session.add(ScannerChange(
            event_id=event.id, site=data.site, scanner=data.scanner, study_uid=data.study_uid,
            parameter=change.parameter, series_type=change.series_type,
            previous=change.previous, current=change.current, changed_at=event.time,
        ))
        scanner = session.get(Scanner, data.scanner)
        if scanner is not None and change.parameter == "SoftwareVersions":
            scanner.software_version = _text(change.current)


_RECORDERS: dict[str, Callable[[Session, CloudEvent, str], None]] = {
    "study.received": _record_received,
    "study.compliance.checked": _record_compliance,
    "study.qc.completed": _record_qc,
    "study.harmonized": _record_harmonized,
    "scanner.phantom.measured": _record_phantom,
    "scanner.stability.alert": _record_alert,
    "scanner.configuration.changed": _record_configuration,
}


# --- study.processed ----------------------------------------------------------------


def _maybe_processed(
    session: Session, study: Study, revision: StudyRevision, *, source: str
) -> None:
    """Queue `study.processed` in the outbox the first time the revision is complete."""
    stages = (revision.received_at, revision.compliance_at, revision.qc_at,
              revision.harmonized_at)
    if revision.processed_at is not None or any(at is None for at in stages):
        return
    session.flush()
    revision.processed_at = utcnow()
    if revision.revision == study.revision:
        study.processed = True
    processed = processed_summary(session, study, revision.revision)
    event = make_event("study.processed", processed, source=source, subject=study.study_uid,
                       id_parts=(study.study_uid, revision.revision))
    session.add(OutboxEvent(event_id=event.id, body=event.to_json().decode(),
                            created_at=utcnow()))
    log.info("study processed", extra={"study_uid": study.study_uid,
                                       "revision": revision.revision, "site": study.site})


def processed_summary(session: Session, study: Study, revision: int) -> StudyProcessed:
    """What a downstream system needs to act on the revision without calling back."""
    key = (ComplianceResult.study_uid == study.study_uid) & (ComplianceResult.revision == revision)
    compliance = list(session.scalars(select(ComplianceResult).where(key)))
    qc = {row.series_uid: row for row in session.scalars(select(QCResult).where(
        QCResult.study_uid == study.study_uid, QCResult.revision == revision))}
    series = {row.series_uid: row for row in session.scalars(select(Series).where(
        Series.study_uid == study.study_uid))}
    harmonized = session.get(HarmonizedFeatures, (study.study_uid, revision))
    rows = []
    for result in sorted(compliance, key=lambda r: (_number(series.get(r.series_uid)),
                                                     r.series_uid)):
        measured = qc.get(result.series_uid)
        manifest = series.get(result.series_uid)
        rows.append({
            "series_uid": result.series_uid,
            "series_number": manifest.series_number if manifest else None,
            "series_description": manifest.series_description if manifest else None,
            "series_type": result.series_type,
            "verdict": result.verdict,
            "severity": result.severity,
            "deviations": [d.get("parameter") for d in result.deviations],
            "qc_status": measured.status if measured else None,
            "qc_metrics": measured.metrics if measured else {},
            "qc_report": measured.report if measured else {},
        })
    status = compliance_status([(r.verdict, r.severity) for r in compliance])
    verdicts = [r.verdict for r in compliance]
    qc_states = [row.status for row in qc.values() if row.kind != "none"]
    qc_status = ("measured" if all(s == "measured" for s in qc_states) else
                 "partial" if "measured" in qc_states else "not_measured")
    harmonization = {
        "status": harmonized.status if harmonized else "pending",
        "model_version": harmonized.model_version if harmonized else None,
        "reason": harmonized.reason if harmonized else None,
        "batch": harmonized.batch if harmonized else None,
        "features": harmonized.features if harmonized else {},
    }
    return StudyProcessed(
        study_uid=study.study_uid,
        revision=revision,
        site=study.site,
        scanner=study.scanner,
        subject_id=study.subject_id,
        is_phantom=study.is_phantom,
        usable=status != "excluded",
        stages={"received": "recorded", "compliance": status, "qc": qc_status,
                "harmonization": str(harmonization["status"])},
        summary={
            "study_date": study.study_date,
            "counts": {"series": len(rows), **{v: verdicts.count(v) for v in
                                               ("compliant", "deviant", "unrecognized")}},
            "series": rows,
            "harmonization": harmonization,
        },
    )


def _number(series: Series | None) -> int:
    return series.series_number if series and series.series_number is not None else 1 << 30


def pending_outbox(session: Session, limit: int = 100) -> list[OutboxEvent]:
    return list(session.scalars(
        select(OutboxEvent).where(OutboxEvent.published_at.is_(None))
        .order_by(OutboxEvent.created_at).limit(limit)
    ))


def mark_published(session: Session, event_id: str, at: datetime) -> None:
    row = session.get(OutboxEvent, event_id)
    if row is not None and row.published_at is None:
        row.published_at = at
