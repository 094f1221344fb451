"""Idempotent writes shared by the consumer and the clinical import (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Session

from registry.models import Scanner, Site, Study, StudyRevision, Subject, utcnow


def insert_ignore(
    session: Session, model: type[DeclarativeBase], values: dict[str, Any], keys: list[str]
) -> bool:
    """INSERT ... ON CONFLICT (keys) DO NOTHING; True when a row was inserted.

    On PostgreSQL a concurrent insert of the same key waits for the other
    transaction, so the caller serialises on the row without a separate lock.
    """
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = (insert(model).values(**values).on_conflict_do_nothing(index_elements=keys)
                 .returning(getattr(model, keys[0])))
    # RETURNING, not rowcount: psycopg reports -1 for a conflict that inserted nothing.
    return session.execute(statement).first() is not None


def ensure_site(session: Session, site: str) -> None:
    insert_ignore(session, Site, {"id": site, "first_seen": utcnow()}, ["id"])


def ensure_scanner(session: Session, *, site: str, scanner: str) -> None:
    ensure_site(session, site)
    insert_ignore(session, Scanner, {"id": scanner, "site": site, "first_seen": utcnow()}, ["id"])


def ensure_subject(session: Session, *, site: str, subject_id: str) -> Subject:
    ensure_site(session, site)
    insert_ignore(
        session,
        Subject,
        {"site": site, "subject_id": subject_id, "clinical": {}, "created_at": utcnow()},
        ["site", "subject_id"],
    )
    found = session.scalars(
        select(Subject).where(Subject.site == site, Subject.subject_id == subject_id)
    ).one()
    return found


def lock_revision(
    session: Session, *, study_uid: str, revision: int, site: str, scanner: str
) -> tuple[Study, StudyRevision]:
    """The study and revision rows, created if new, the revision row locked for update.

    Every event of one study revision takes this lock first, so two stages
    recorded at once by two consumers see each other and `study.processed` is
    decided exactly once.
    """
    ensure_scanner(session, site=site, scanner=scanner)
    now = utcnow()
    insert_ignore(
        session,
        Study,
        {"study_uid": study_uid, "site": site, "scanner": scanner, "revision": revision,
         "received_at": now, "updated_at": now, "is_phantom": False, "instance_count": 0,
         "processed": False},
        ["study_uid"],
    )
    insert_ignore(
        session,
        StudyRevision,
        {"study_uid": study_uid, "revision": revision, "site": site},
        ["study_uid", "revision"],
    )
    locked = session.scalars(
        select(StudyRevision)
        .where(StudyRevision.study_uid == study_uid, StudyRevision.revision == revision)
        .with_for_update()
    ).one()
    study = session.scalars(
        select(Study).where(Study.study_uid == study_uid).with_for_update()
    ).one()
    if study.site != site:
        raise ValueError(f"study {study_uid} belongs to site {study.site}, event says {site}")
    if revision > study.revision:
        # A new revision restarts the pipeline: the study's stage summary follows it.
        study.revision = revision
        study.compliance_status = study.qc_status = study.harmonization_status = None
        study.processed = False
        study.updated_at = now
    return study, locked
