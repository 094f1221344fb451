"""Ingest and study completion on the in-process bus and state store (no network)."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from receiver import status
from receiver.ingest import Ingestor
from receiver.pseudonymise import Pseudonymiser
from receiver.stability import PENDING, StabilityMonitor, StudyTracker
from services.blobstore import BlobStoreError, FileBlobStore, PutResult
from services.config import load_config
from services.events import StudyReceived
from services.state import InMemoryStateStore, StateError
from services.synthetic import StudySpec, Subject, iter_instances, small_study
from tests.support.fakes import RecordingBus

MR = "1.2.840.10008.5.1.4.1.1.4"
KEY = b"k" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state() -> InMemoryStateStore:
    return InMemoryStateStore()


@pytest.fixture
def ingestor(tmp_path: Path, state: InMemoryStateStore, clock: Clock) -> Ingestor:
    return Ingestor(
        config=load_config(None),
        blobs=FileBlobStore(tmp_path),
        tracker=StudyTracker(state, clock=clock),
        pseudonymiser=Pseudonymiser(key=KEY),
    )


def _push(ingestor: Ingestor, datasets: list[Dataset], ae: str = "MILANPRISMA") -> list[str]:
    scanner = ingestor.config.scanner_for_ae(ae)
    assert scanner is not None
    return [
        ingestor.ingest(copy.deepcopy(ds), scanner=scanner, context_sop_class=MR).outcome
        for ds in datasets
    ]


def _monitor(
    ingestor: Ingestor,
    state: InMemoryStateStore,
    bus: RecordingBus,
    clock: Clock,
    stable: float = 10.0,
) -> StabilityMonitor:
    return StabilityMonitor(
        state=state,
        blobs=ingestor.blobs,
        bus=bus,
        stable_seconds=stable,
        source="test",
        clock=clock,
    )


async def test_study_published_once_after_quiet_period(
    ingestor: Ingestor, state: InMemoryStateStore, clock: Clock
) -> None:
    instances = list(iter_instances(small_study("unit-stable")))
    assert _push(ingestor, instances) == ["stored"] * len(instances)
    bus = RecordingBus()
    monitor = _monitor(ingestor, state, bus, clock)
    clock.now += 5
    assert await monitor.tick() == []  # not quiet long enough
    clock.now += 6
    [event] = await monitor.tick()
    data = event.parsed_data()
    assert isinstance(data, StudyReceived)
    assert data.instance_count == len(instances) and data.revision == 1
    assert [s.instance_count for s in data.series] == [8, 12]
    assert state.zscore(PENDING, data.study_uid) is None
    clock.now += 100
    assert await monitor.tick() == []


async def test_duplicates_do_not_make_a_new_revision_but_new_instances_do(
    ingestor: Ingestor, state: InMemoryStateStore, clock: Clock
) -> None:
    instances = list(iter_instances(small_study("unit-rev")))
    bus = RecordingBus()
    monitor = _monitor(ingestor, state, bus, clock)
    _push(ingestor, instances[:-2])
    clock.now += 11
    [first] = await monitor.tick()
    assert _push(ingestor, instances[:-2]) == ["duplicate"] * (len(instances) - 2)
    clock.now += 11
    assert await monitor.tick() == []
    _push(ingestor, instances[-2:])
    clock.now += 11
    [second] = await monitor.tick()
    assert (first.parsed_data().revision, second.parsed_data().revision) == (1, 2)  # type: ignore[attr-defined]
    assert second.parsed_data().instance_count == len(instances)  # type: ignore[attr-defined]


async def test_unconfirmed_publish_keeps_the_study_pending(
    ingestor: Ingestor, state: InMemoryStateStore, clock: Clock
) -> None:
    _push(ingestor, list(iter_instances(small_study("unit-down"))))
    down = RecordingBus(fail=True)
    clock.now += 11
    assert await _monitor(ingestor, state, down, clock).tick() == []
    up = RecordingBus()
    [event] = await _monitor(ingestor, state, up, clock).tick()
    assert event.parsed_data().revision == 1  # type: ignore[attr-defined]


async def test_republish_after_crash_reuses_revision_and_id(
    ingestor: Ingestor, state: InMemoryStateStore, clock: Clock
) -> None:
    """A crash after publish but before the bookkeeping: same revision, same event id."""
    _push(ingestor, list(iter_instances(small_study("unit-crash"))))
    clock.now += 11
    bus = RecordingBus()
    [first] = await _monitor(ingestor, state, bus, clock).tick()
    # Undo the bookkeeping the crash would have lost.
    state.delete(f"study:{first.subject}:published")
    state.zadd(PENDING, first.subject, clock.now - 20)
    [again] = await _monitor(ingestor, state, bus, clock).tick()
    assert again.id == first.id


async def test_two_monitors_publish_a_study_once(
    ingestor: Ingestor, state: InMemoryStateStore, clock: Clock
) -> None:
    import asyncio

    _push(ingestor, list(iter_instances(small_study("unit-race"))))
    clock.now += 11
    bus = RecordingBus()
    results = await asyncio.gather(
        *[_monitor(ingestor, state, bus, clock).tick() for _ in range(4)]
    )
    assert sum(len(r) for r in results) == 1


def test_same_subject_same_pseudonyms_on_every_push(tmp_path: Path, clock: Clock) -> None:
    spec = small_study("unit-pseudo")
    first, second = InMemoryStateStore(), InMemoryStateStore()
    stores = []
    for index, state in enumerate((first, second)):
        ingestor = Ingestor(
            config=load_config(None),
            blobs=FileBlobStore(tmp_path / str(index)),
            tracker=StudyTracker(state, clock=clock),
            pseudonymiser=Pseudonymiser(key=KEY),
        )
        _push(ingestor, list(iter_instances(spec)))
        stores.append(
            sorted(
                p.relative_to(tmp_path / str(index)) for p in (tmp_path / str(index)).rglob("*.dcm")
            )
        )
    assert stores[0] == stores[1]
    one = dcmread(tmp_path / "0" / stores[0][0])
    two = dcmread(tmp_path / "1" / stores[1][0])
    assert one.PatientID == two.PatientID and one.PatientID.startswith("sub-")
    assert (tmp_path / "0" / stores[0][0]).read_bytes() == (
        tmp_path / "1" / stores[1][0]
    ).read_bytes()


def test_conflicting_content_is_quarantined_never_overwritten(ingestor: Ingestor) -> None:
    [original] = list(
        iter_instances(small_study("unit-conflict", t1_slices=1, epi_slices=1, epi_volumes=1))
    )[:1]
    changed = copy.deepcopy(original)
    changed.PixelData = bytes(len(original.PixelData))
    assert _push(ingestor, [original, changed]) == ["stored", "quarantined"]
    [stored] = list(ingestor.blobs.list("dicom"))
    [quarantined] = list(ingestor.blobs.list("quarantine"))
    assert dcmread(ingestor.blobs.path(stored)).PixelData == original.PixelData
    assert dcmread(ingestor.blobs.path(quarantined)).PixelData == changed.PixelData


def test_phantom_recognised_before_names_are_removed(
    ingestor: Ingestor, state: InMemoryStateStore
) -> None:
    spec = StudySpec(
        seed="unit-phantom",
        subject=Subject(patient_name="FBIRN^PHANTOM", patient_id="PHANTOM01"),
        series=small_study().series,
    )
    _push(ingestor, list(iter_instances(spec))[:1])
    [study_uid] = state.zrange_by_score(PENDING, float("inf"))
    assert state.hgetall(f"study:{study_uid}:meta")["is_phantom"] == b"1"


def test_storage_or_state_failure_is_out_of_resources(
    ingestor: Ingestor, monkeypatch: pytest.MonkeyPatch
) -> None:
    [ds] = list(iter_instances(small_study("unit-fail", t1_slices=1, epi_slices=1, epi_volumes=1)))[
        :1
    ]
    scanner = ingestor.config.scanner_for_ae("MILANPRISMA")
    assert scanner is not None

    def broken_touch(**_: object) -> None:
        raise StateError("redis down")

    monkeypatch.setattr(ingestor.tracker, "touch", broken_touch)
    result = ingestor.ingest(copy.deepcopy(ds), scanner=scanner, context_sop_class=MR)
    assert result.status == status.OUT_OF_RESOURCES
    monkeypatch.undo()

    class FullDisk(FileBlobStore):
        def put_new(self, key: str, data: bytes) -> PutResult:
            raise BlobStoreError("ENOSPC")

    full = dataclasses.replace(ingestor, blobs=FullDisk(ingestor.blobs.root))
    result = full.ingest(copy.deepcopy(ds), scanner=scanner, context_sop_class=MR)
    assert result.status == status.OUT_OF_RESOURCES


def test_sop_class_must_match_the_presentation_context(ingestor: Ingestor) -> None:
    [ds] = list(iter_instances(small_study("unit-ctx", t1_slices=1, epi_slices=1, epi_volumes=1)))[
        :1
    ]
    scanner = ingestor.config.scanner_for_ae("MILANPRISMA")
    assert scanner is not None
    result = ingestor.ingest(ds, scanner=scanner, context_sop_class="1.2.840.10008.5.1.4.1.1.7")
    assert result.status == status.DATASET_DOES_NOT_MATCH_SOP_CLASS
