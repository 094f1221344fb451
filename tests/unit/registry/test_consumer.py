"""Events in → rows; every event twice → no duplicates; study.processed once per revision."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from registry import models
from tests.unit.registry import factories as f
from tests.unit.registry.conftest import Pipeline

COUNTED = (models.Study, models.StudyRevision, models.Series, models.Subject,
           models.ComplianceResult, models.QCResult, models.HarmonizedFeatures,
           models.PhantomMeasurement, models.StabilityAlert, models.ScannerChange,
           models.OutboxEvent, models.Scanner, models.Site)


def counts(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as session:
        return {m.__tablename__: int(session.scalar(select(func.count()).select_from(m)) or 0)
                for m in COUNTED}


async def test_study_events_become_rows_and_one_processed(
    pipeline: Pipeline, sessions: sessionmaker[Session]
) -> None:
    await pipeline.send(*f.study_events("1.2.3"))
    with sessions() as session:
        study = session.get(models.Study, "1.2.3")
        assert study is not None
        assert (study.site, study.scanner, study.subject_id) == ("milan", "milan-prisma",
                                                                 "subj001")
        assert (study.compliance_status, study.qc_status, study.harmonization_status) == (
            "compliant", "measured", "harmonized")
        assert study.processed
        scanner = session.get(models.Scanner, "milan-prisma")
        assert scanner is not None and scanner.software_version == "syngo MR XA30"
    assert counts(sessions)["series"] == 2
    assert len(pipeline.processed) == 1
    processed = pipeline.processed[0]
    assert processed.subject == "1.2.3"
    data: dict[str, Any] = processed.data
    assert data["stages"] == {"received": "recorded", "compliance": "compliant",
                              "qc": "measured", "harmonization": "harmonized"}
    assert data["subject_id"] == "subj001" and data["usable"] is True
    assert [s["series_type"] for s in data["summary"]["series"]] == ["t1w", "bold"]
    assert data["summary"]["harmonization"]["features"] == {"gm_volume": 640.0,
                                                           "wm_volume": 470.0}
    assert data["summary"]["series"][0]["qc_report"]["mosaic"].endswith("mosaic.png")


async def test_every_event_twice_changes_nothing(
    pipeline: Pipeline, sessions: sessionmaker[Session]
) -> None:
    events = [*f.study_events("1.2.4"), f.phantom("9.9.9"), f.alert("9.9.9"),
              f.configuration_changed("1.2.4")]
    await pipeline.send(*events)
    before = counts(sessions)
    await pipeline.send(*events)
    await pipeline.send(*reversed(events))
    assert counts(sessions) == before
    assert before["phantom_measurements"] == 1 and before["stability_alerts"] == 1
    assert len(pipeline.processed) == 1


async def test_processed_waits_for_every_stage_in_any_order(
    pipeline: Pipeline, sessions: sessionmaker[Session]
) -> None:
    received, checked, measured, harmonized = f.study_events("1.2.5")
    await pipeline.send(harmonized, measured)
    await pipeline.send(received)
    assert pipeline.processed == []
    await pipeline.send(checked)
    assert len(pipeline.processed) == 1


async def test_pending_then_harmonized_updates_features_not_processed(
    pipeline: Pipeline, sessions: sessionmaker[Session]
) -> None:
    uid = "1.2.6"
    await pipeline.send(f.received(uid), f.compliance(uid), f.qc(uid),
                        f.harmonized(uid, status="pending"))
    assert len(pipeline.processed) == 1
    assert pipeline.processed[0].data["stages"]["harmonization"] == "pending"
    await pipeline.send(f.harmonized(uid, features={"gm_volume": 1.0}))
    await pipeline.send(f.harmonized(uid, status="pending"))  # a stale one arriving late
    assert len(pipeline.processed) == 1
    with sessions() as session:
        row = session.get(models.HarmonizedFeatures, (uid, 1))
        assert row is not None and row.status == "harmonized"
        assert row.features == {"gm_volume": 1.0}
        study = session.get(models.Study, uid)
        assert study is not None and study.harmonization_status == "harmonized"


async def test_each_revision_processed_once(
    pipeline: Pipeline, sessions: sessionmaker[Session]
) -> None:
    uid = "1.2.7"
    await pipeline.send(*f.study_events(uid))
    second = [f.received(uid, revision=2), f.compliance(uid, revision=2, deviant="t1w"),
              f.qc(uid, revision=2), f.harmonized(uid, revision=2)]
    await pipeline.send(*second, *second)
    assert [e.data["revision"] for e in pipeline.processed] == [1, 2]
    assert pipeline.processed[1].data["usable"] is False
    assert pipeline.processed[1].data["stages"]["compliance"] == "excluded"
    with sessions() as session:
        study = session.get(models.Study, uid)
        assert study is not None and (study.revision, study.compliance_status) == (2, "excluded")


async def test_phantom_study_processed_when_not_applicable(
    pipeline: Pipeline, sessions: sessionmaker[Session]
) -> None:
    uid = "7.7.7"
    await pipeline.send(f.received(uid, subject="phantom", phantom=True, kinds=("bold",)),
                        f.compliance(uid, kinds=("bold",), phantom=True),
                        f.qc(uid, kinds=("bold",)), f.phantom(uid),
                        f.harmonized(uid, status="not_applicable"))
    assert len(pipeline.processed) == 1
    assert pipeline.processed[0].data["is_phantom"] is True
    assert pipeline.processed[0].data["stages"]["harmonization"] == "not_applicable"


async def test_configuration_change_is_scanner_history(
    pipeline: Pipeline, sessions: sessionmaker[Session]
) -> None:
    await pipeline.send(f.received("1.2.8"), f.configuration_changed("1.2.8"))
    with sessions() as session:
        scanner = session.get(models.Scanner, "milan-prisma")
        assert scanner is not None and scanner.software_version == "syngo MR XA31"
        changes = list(session.scalars(select(models.ScannerChange)))
        assert [(c.parameter, c.previous, c.current) for c in changes] == [
            ("SoftwareVersions", "syngo MR XA30", "syngo MR XA31")]


async def test_invalid_event_is_dead_lettered(pipeline: Pipeline) -> None:
    event = f.received("1.2.9")
    broken = event.model_copy(update={"data": {**event.data, "revision": 0}})
    await pipeline.send(broken)
    assert len(pipeline.dead) == 1 and "invalid study.received" in pipeline.dead[0].reason
    pipeline.dead.clear()
