"""`harmonet reprocess` on the in-process adapters: new revisions, never duplicates."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest

from receiver.ingest import Ingestor
from receiver.pseudonymise import Pseudonymiser
from receiver.reprocess import (
    JournalIndex,
    Reprocessor,
    StoredStudy,
    run_request,
    select_studies,
    serve_requests,
    spool,
    stored_studies,
)
from receiver.stability import StabilityMonitor, StudyTracker
from services.blobstore import FileBlobStore
from services.config import load_config
from services.events import StudyReceived, deterministic_id
from services.runner import Context
from services.settings import Settings
from services.spool import write_json_atomically
from services.state import InMemoryStateStore
from services.synthetic import fbirn_phantom, iter_instances, small_study
from tests.support.fakes import RecordingBus


@dataclass
class Stored:
    blobs: FileBlobStore
    state: InMemoryStateStore
    bus: RecordingBus
    study: StoredStudy
    first: StudyReceived


async def _store_and_publish(tmp_path: Path, *, phantom: bool = False) -> Stored:
    """A study pushed by the Milan scanner and published once, as the receiver does."""
    config = load_config(None)
    blobs, state, bus = FileBlobStore(tmp_path / "data"), InMemoryStateStore(), RecordingBus()
    ingestor = Ingestor(config=config, blobs=blobs, tracker=StudyTracker(state, clock=lambda: 0),
                        pseudonymiser=Pseudonymiser(key=b"k" * 32))
    scanner = config.scanner_for_ae("MILANPRISMA")
    assert scanner is not None
    spec = fbirn_phantom(seed="rp", volumes=3) if phantom else small_study("rp")
    for ds in iter_instances(spec):
        ingestor.ingest(ds, scanner=scanner, context_sop_class=ds.SOPClassUID)
    monitor = StabilityMonitor(state=state, blobs=blobs, bus=bus, stable_seconds=1,
                               source="test", clock=lambda: 10.0)
    [event] = await monitor.tick()
    first = event.parsed_data()
    assert isinstance(first, StudyReceived) and first.revision == 1
    [study] = stored_studies(blobs)
    return Stored(blobs, state, bus, study, first)


def _reprocessor(stored: Stored, *, state: InMemoryStateStore | None = None,
                 journal: Path | None = None) -> Reprocessor:
    return Reprocessor(state=state or stored.state, blobs=stored.blobs, bus=stored.bus,
                       journal=JournalIndex(journal or Path("/nonexistent/events.jsonl")),
                       source="test/reprocess")


async def test_a_run_publishes_the_next_revision_and_a_retry_the_same_event(
    tmp_path: Path,
) -> None:
    stored = await _store_and_publish(tmp_path)
    reprocessor = _reprocessor(stored)
    done = await reprocessor.reprocess(stored.study, run_id="after-protocol-change")
    assert (done.revision, done.repeated) == (2, False)
    assert done.event_id == deterministic_id("study.received", stored.study.study_uid, 2)
    again = await reprocessor.reprocess(stored.study, run_id="after-protocol-change")
    assert (again.revision, again.event_id, again.repeated) == (2, done.event_id, True)
    later = await reprocessor.reprocess(stored.study, run_id="model-v2")
    assert later.revision == 3
    events = stored.bus.of("study.received")
    assert [e.id for e in events[1:]] == [done.event_id, done.event_id, later.event_id]
    republished = events[-1].parsed_data()
    assert isinstance(republished, StudyReceived)
    # the same study, the same manifest, only the revision differs
    assert republished.model_dump(exclude={"revision"}) == stored.first.model_dump(
        exclude={"revision"})
    assert events[-1].source == "test/reprocess"


async def test_new_instances_after_a_reprocess_continue_the_revisions(tmp_path: Path) -> None:
    stored = await _store_and_publish(tmp_path)
    await _reprocessor(stored).reprocess(stored.study, run_id="r1")
    config = load_config(None)
    scanner = config.scanner_for_ae("MILANPRISMA")
    assert scanner is not None
    ingestor = Ingestor(config=config, blobs=stored.blobs,
                        tracker=StudyTracker(stored.state, clock=lambda: 20.0),
                        pseudonymiser=Pseudonymiser(key=b"k" * 32))
    extra = small_study("rp", t1_slices=9)  # one more T1 slice of the same study
    for ds in iter_instances(extra):
        ingestor.ingest(ds, scanner=scanner, context_sop_class=ds.SOPClassUID)
    monitor = StabilityMonitor(state=stored.state, blobs=stored.blobs, bus=stored.bus,
                               stable_seconds=1, source="test", clock=lambda: 30.0)
    [event] = await monitor.tick()
    assert event.data["revision"] == 3


async def test_after_a_restart_the_journal_gives_scanner_subject_and_revision(
    tmp_path: Path,
) -> None:
    stored = await _store_and_publish(tmp_path, phantom=True)
    journal = tmp_path / "events.jsonl"
    journal.write_bytes(b"".join(e.to_json() + b"\n" for e in stored.bus.events))
    fresh_state = InMemoryStateStore()  # `harmonet up` restarted: the embedded state is gone
    done = await _reprocessor(stored, state=fresh_state, journal=journal).reprocess(
        stored.study, run_id="r")
    assert done.revision == 2
    data = stored.bus.of("study.received")[-1].parsed_data()
    assert isinstance(data, StudyReceived)
    assert (data.scanner, data.subject_id, data.is_phantom) == (
        "milan-prisma", stored.first.subject_id, True)


async def test_a_study_without_any_record_is_reported_not_guessed(tmp_path: Path) -> None:
    stored = await _store_and_publish(tmp_path)
    result = await run_request(_reprocessor(stored, state=InMemoryStateStore()),
                               [stored.study], run_id="r")
    assert result["published"] == []
    [error] = result["errors"]
    assert "no record of its scanner" in error["error"]


def test_select_by_uid_since_and_site(tmp_path: Path) -> None:
    now = time.time()
    studies = [StoredStudy("milan", "1.1", now - 3 * 86400), StoredStudy("naples", "1.2", now),
               StoredStudy("milan", "1.3", now)]
    today = date.fromtimestamp(now)
    assert [s.study_uid for s in select_studies(studies, study_uids=["1.1"])] == ["1.1"]
    assert [s.study_uid for s in select_studies(studies, since=today)] in (
        ["1.2", "1.3"], [])  # UTC midnight may be ahead of local midnight
    assert [s.study_uid for s in select_studies(studies, since=date(2000, 1, 1),
                                                 site="milan")] == ["1.1", "1.3"]


async def test_harmonet_up_publishes_a_spooled_request_once(tmp_path: Path) -> None:
    stored = await _store_and_publish(tmp_path)
    settings = Settings(data_dir=tmp_path / "data")
    context = Context(settings=settings, config=load_config(None), bus=stored.bus,
                      state=stored.state, blobs=stored.blobs)
    requests, done = spool(settings.data_dir)
    request = {"run_id": "r1", "studies": [stored.study.__dict__]}
    write_json_atomically(requests / "r1.json", request)
    await serve_requests(context, once=True)
    result = json.loads((done / "r1.json").read_text())
    assert [p["revision"] for p in result["published"]] == [2] and not result["errors"]
    assert not (requests / "r1.json").exists()
    write_json_atomically(requests / "r1.json", request)  # the same run dropped again
    await serve_requests(context, once=True)
    assert len(stored.bus.of("study.received")) == 2  # published once, by the first request


def test_the_command_needs_a_selection(capsys: pytest.CaptureFixture[str]) -> None:
    from services.cli import main

    assert main(["reprocess"]) == 2
    assert "--study" in capsys.readouterr().err


def test_the_command_queues_for_harmonet_up_and_reports_when_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    from services.cli import main

    data = tmp_path / "data"
    (data / "dicom" / "milan" / "1.2.3" / "4.5").mkdir(parents=True)
    monkeypatch.setenv("HARMONET_DATA_DIR", str(data))
    for key in ("HARMONET_AMQP_URL", "HARMONET_REDIS_URL", "HARMONET_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    assert main(["reprocess", "--study", "1.2.3", "--run-id", "q", "--wait", "0"]) == 0
    requests, done = spool(data)
    queued = json.loads((requests / "q.json").read_text())
    assert [s["study_uid"] for s in queued["studies"]] == ["1.2.3"]
    assert "queued" in capsys.readouterr().err
    write_json_atomically(done / "q.json", {"run_id": "q", "errors": [], "published": [
        {"study_uid": "1.2.3", "revision": 2, "event_id": "e", "repeated": False}]})
    os.remove(requests / "q.json")
    assert main(["reprocess", "--study", "1.2.3", "--run-id", "q", "--wait", "1"]) == 0
    assert "1.2.3\trevision 2" in capsys.readouterr().out
