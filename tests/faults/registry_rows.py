"""What the registry's own rows say about each study revision: how many rows every table
holds for it, and which of them break "recorded once".

Read-only (SELECTs in a transaction that is rolled back), on SQLite (`harmonet up`,
`<data dir>/registry.sqlite3`) or PostgreSQL (`HARMONET_DATABASE_URL`); only the studies
asked for are read, so a database shared with other tests is fine. "Once", as
`registry/consumer.py` records it: one `study_revisions` row per (study, revision), one
`compliance_results` and one `qc_results` row per series of that revision's manifest, one
`harmonized_features` row per revision, and one `study.processed` event in the `outbox`
per revision, under one event id.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, func, select
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.pool import NullPool

from registry.models import (
    ComplianceResult,
    HarmonizedFeatures,
    OutboxEvent,
    QCResult,
    Series,
    Study,
    StudyRevision,
)
from services.events import CloudEvent, StudyReceived

StudyRevisionKey = tuple[str, int]  # (pseudonymised study uid, revision)


@dataclass
class RevisionRows:
    """The registry's rows for one (study, revision)."""

    study: int = 0  # `studies` rows of the study (not per revision: the same for each)
    series: int = 0  # `series` rows of the study (the last revision's manifest)
    revision: int = 0  # `study_revisions` rows
    processed: bool = False  # `study_revisions.processed_at` set
    compliance: Counter[str] = field(default_factory=Counter)  # series uid -> rows
    qc: Counter[str] = field(default_factory=Counter)  # series uid -> rows
    harmonized: int = 0  # `harmonized_features` rows
    harmonization_status: str | None = None
    processed_ids: Counter[str] = field(default_factory=Counter)  # outbox study.processed

    def _per_fact(self) -> list[int]:
        return [self.revision, self.harmonized, *self.compliance.values(), *self.qc.values(),
                *self.processed_ids.values(), len(self.processed_ids)]

    def most_rows_per_fact(self) -> int:
        return max(self._per_fact(), default=0)

    def duplicate_rows(self) -> int:
        """Rows (or `study.processed` ids) beyond the one each fact should have."""
        return sum(n - 1 for n in self._per_fact() if n > 1)


def sqlite_url(data_dir: Path) -> str:
    """The registry database `harmonet up` keeps in `data_dir` (`registry/db.py`)."""
    return f"sqlite:///{(data_dir / 'registry.sqlite3').resolve()}"


def _engine(url: str) -> Engine:
    if url.startswith(("postgresql://", "postgres://")):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    connect_args = {"timeout": 30} if url.startswith("sqlite") else {}
    return create_engine(url, poolclass=NullPool, connect_args=connect_args)


def registry_rows(url: str, study_uids: Iterable[str]) -> dict[StudyRevisionKey, RevisionRows]:
    """Row counts per (study, revision) of `study_uids`, for every revision any table holds.

    Counted with GROUP BY rather than assumed from the primary keys, so a schema change that
    drops a key would show here as a duplicate, not pass silently.
    """
    uids = sorted(set(study_uids))
    rows: dict[StudyRevisionKey, RevisionRows] = {}
    if not uids:
        return rows
    engine = _engine(url)
    try:
        with engine.connect() as connection:
            try:
                _read(connection, uids, rows)
            finally:
                connection.rollback()
    finally:
        engine.dispose()
    return rows


def _read(connection: Connection, uids: list[str], rows: dict[StudyRevisionKey, RevisionRows]
          ) -> None:
    def at(study_uid: str, revision: int) -> RevisionRows:
        return rows.setdefault((study_uid, int(revision)), RevisionRows())

    for uid, revision, processed_at in connection.execute(
            select(StudyRevision.study_uid, StudyRevision.revision, StudyRevision.processed_at)
            .where(StudyRevision.study_uid.in_(uids))):
        at(uid, revision).revision += 1
        at(uid, revision).processed = at(uid, revision).processed or processed_at is not None
    for model, attribute in ((ComplianceResult, "compliance"), (QCResult, "qc")):
        for uid, revision, series_uid, count in connection.execute(
                select(model.study_uid, model.revision, model.series_uid, func.count())
                .where(model.study_uid.in_(uids))
                .group_by(model.study_uid, model.revision, model.series_uid)):
            getattr(at(uid, revision), attribute)[series_uid] += count
    for uid, revision, status in connection.execute(
            select(HarmonizedFeatures.study_uid, HarmonizedFeatures.revision,
                   HarmonizedFeatures.status).where(HarmonizedFeatures.study_uid.in_(uids))):
        at(uid, revision).harmonized += 1
        at(uid, revision).harmonization_status = status
    wanted = set(uids)
    # The outbox is keyed by event id only; which revision a row is for is in its body.
    for event_id, body in connection.execute(select(OutboxEvent.event_id, OutboxEvent.body)):
        event = CloudEvent.from_json(body)
        if event.routing_key == "study.processed" and event.subject in wanted:
            at(event.subject, _revision_of(event)).processed_ids[event_id] += 1
    per_study = {uid: count for uid, count in connection.execute(
        select(Study.study_uid, func.count()).where(Study.study_uid.in_(uids))
        .group_by(Study.study_uid))}
    series = {uid: count for uid, count in connection.execute(
        select(Series.study_uid, func.count()).where(Series.study_uid.in_(uids))
        .group_by(Series.study_uid))}
    for (uid, _), found in rows.items():
        found.study, found.series = per_study.get(uid, 0), series.get(uid, 0)


def _revision_of(event: CloudEvent) -> int:
    data = event.data if isinstance(event.data, dict) else {}
    value = data.get("revision", 0)
    return int(value) if isinstance(value, int | str) else 0


def expected_revisions(events: Iterable[CloudEvent]) -> dict[StudyRevisionKey, frozenset[str]]:
    """The series of every published (study, revision), from its `study.received` events
    (a re-published copy under the same id carries the same manifest)."""
    expected: dict[StudyRevisionKey, frozenset[str]] = {}
    for event in events:
        if event.routing_key != "study.received":
            continue
        received = StudyReceived.model_validate(event.data)
        expected[(received.study_uid, received.revision)] = frozenset(
            s.series_uid for s in received.series)
    return expected


def registry_violations(
    rows: dict[StudyRevisionKey, RevisionRows],
    expected: dict[StudyRevisionKey, frozenset[str]],
) -> list[str]:
    """Every way the registry breaks "each revision recorded once"; empty when it holds."""
    problems: list[str] = []
    for key in sorted(set(rows) - set(expected)):
        problems.append(f"{_name(key)}: in the registry but never published")
    for key, series in sorted(expected.items()):
        found = rows.get(key)
        if found is None or found.revision == 0:
            problems.append(f"{_name(key)}: missing from the registry")
            continue
        problems += _revision_problems(_name(key), found, series)
    return problems


def _revision_problems(name: str, found: RevisionRows, series: frozenset[str]) -> list[str]:
    problems = []
    if found.study != 1:
        problems.append(f"{name}: {found.study} studies rows")
    if found.revision != 1:
        problems.append(f"{name}: {found.revision} study_revisions rows")
    for table, per_series in (("compliance_results", found.compliance), ("qc_results", found.qc)):
        for series_uid in sorted(series - set(per_series)):
            problems.append(f"{name}: no {table} row for series {series_uid}")
        for series_uid, count in sorted(per_series.items()):
            if series_uid not in series:
                problems.append(f"{name}: {table} row for series {series_uid}, not in the "
                                "revision's manifest")
            elif count != 1:
                problems.append(f"{name}: {count} {table} rows for series {series_uid}")
    if found.harmonized != 1:
        problems.append(f"{name}: {found.harmonized} harmonized_features rows")
    if not found.processed:
        problems.append(f"{name}: study_revisions.processed_at not set")
    if len(found.processed_ids) != 1 or set(found.processed_ids.values()) != {1}:
        problems.append(f"{name}: study.processed in the outbox "
                        f"{dict(found.processed_ids) or 'never'} (one id, once, expected)")
    return problems


def _name(key: StudyRevisionKey) -> str:
    return f"{key[0]}@r{key[1]}"


def unprocessed(rows: dict[StudyRevisionKey, RevisionRows],
                expected: Iterable[StudyRevisionKey]) -> list[StudyRevisionKey]:
    """Published revisions the registry has not yet recorded as processed."""
    return sorted(key for key in expected if not (key in rows and rows[key].processed_ids))


def wait_for_registry(
    url: str, expected: Iterable[StudyRevisionKey], *, timeout: float = 120
) -> dict[StudyRevisionKey, RevisionRows]:
    """The rows, once every expected revision has its `study.processed` in the outbox, or as
    they are after `timeout` seconds (the check then names what is missing)."""
    keys = sorted(set(expected))
    uids = {uid for uid, _ in keys}
    deadline = time.monotonic() + timeout
    while True:
        try:
            rows = registry_rows(url, uids)
        except (OperationalError, ProgrammingError):  # not migrated yet, or briefly locked
            rows = {}
        if not unprocessed(rows, keys) or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def registry_figures(rows: dict[StudyRevisionKey, RevisionRows]) -> dict[str, int]:
    """Totals for a print line: revisions, rows per table, the most rows for one fact."""
    return {
        "revisions": sum(r.revision for r in rows.values()),
        "compliance_rows": sum(sum(r.compliance.values()) for r in rows.values()),
        "qc_rows": sum(sum(r.qc.values()) for r in rows.values()),
        "harmonized_rows": sum(r.harmonized for r in rows.values()),
        "processed_events": sum(sum(r.processed_ids.values()) for r in rows.values()),
        "max_rows_per_fact": max((r.most_rows_per_fact() for r in rows.values()), default=0),
        "duplicate_rows": sum(r.duplicate_rows() for r in rows.values()),
    }


def dumps(rows: dict[StudyRevisionKey, RevisionRows]) -> str:
    """The rows as JSON, for an assertion message."""
    return json.dumps({_name(k): {
        "study": r.study, "series": r.series, "revision": r.revision, "processed": r.processed,
        "compliance": dict(r.compliance), "qc": dict(r.qc), "harmonized": r.harmonized,
        "harmonization_status": r.harmonization_status, "processed_ids": dict(r.processed_ids),
    } for k, r in sorted(rows.items())}, indent=1)
