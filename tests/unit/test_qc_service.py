"""The QC handler on the in-process bus: compliance output in, QC and phantom events out."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread

from qc_service.app import QCHandler
from receiver.ingest import Ingestor
from receiver.pseudonymise import Pseudonymiser
from receiver.stability import StabilityMonitor, StudyTracker
from services.blobstore import FileBlobStore
from services.bus import Delivery
from services.config import load_config
from services.events import (
    CloudEvent,
    SeriesCompliance,
    StudyComplianceChecked,
    StudyQCCompleted,
    StudyReceived,
    make_event,
)
from services.state import InMemoryStateStore
from services.synthetic import StudySpec, fbirn_phantom, iter_instances, small_study
from tests.support.fakes import RecordingBus


@pytest.fixture
def blobs(tmp_path: Path) -> FileBlobStore:
    return FileBlobStore(tmp_path)


async def _received(
    blobs: FileBlobStore, state: InMemoryStateStore, spec: StudySpec
) -> StudyReceived:
    config = load_config(None)
    ingestor = Ingestor(
        config=config,
        blobs=blobs,
        tracker=StudyTracker(state, clock=lambda: 0.0),
        pseudonymiser=Pseudonymiser(key=b"q" * 32),
    )
    scanner = config.scanner_for_ae("MILANPRISMA")
    assert scanner is not None
    for ds in iter_instances(spec):
        ingestor.ingest(ds, scanner=scanner, context_sop_class=ds.SOPClassUID)
    monitor = StabilityMonitor(
        state=state,
        blobs=blobs,
        bus=RecordingBus(),
        stable_seconds=1,
        source="test",
        clock=lambda: 10.0,
    )
    [event] = await monitor.tick()
    data = event.parsed_data()
    assert isinstance(data, StudyReceived)
    return data


def _checked(study: StudyReceived, series_type: str) -> CloudEvent:
    checked = StudyComplianceChecked(
        study_uid=study.study_uid,
        revision=study.revision,
        site=study.site,
        scanner=study.scanner,
        is_phantom=study.is_phantom,
        series=[
            SeriesCompliance(series_uid=s.series_uid, series_type=series_type, verdict="compliant")
            for s in study.series
        ],
    )
    return make_event(
        "study.compliance.checked",
        checked,
        source="test",
        subject=study.study_uid,
        id_parts=(study.study_uid, study.revision),
    )


async def test_fbirn_drop_raises_a_stability_alert(blobs: FileBlobStore) -> None:
    state, bus = InMemoryStateStore(), RecordingBus()
    handler = QCHandler(blobs=blobs, state=state, bus=bus, source="test", baseline_sessions=4)
    for session in range(7):
        signal = 1000.0 if session < 5 else 960.0  # -4% signal with the same noise: SFNR drops
        spec = fbirn_phantom(seed=f"fbirn-{session}", sessions_signal=signal, volumes=30)
        study = await _received(blobs, state, spec)
        assert study.is_phantom
        await handler(
            Delivery(
                event=_checked(study, "fbirn"), attempt=1, routing_key="study.compliance.checked"
            )
        )
    measured = bus.of("scanner.phantom.measured")
    assert len(measured) == 7
    first = measured[0].parsed_data()
    assert first.metrics["sfnr"] == pytest.approx(100, rel=0.15)  # type: ignore[attr-defined]
    alerts = [a.parsed_data() for a in bus.of("scanner.stability.alert")]
    assert any(a.metric == "sfnr" and a.state == "out_of_control" for a in alerts)  # type: ignore[attr-defined]
    completed = bus.of("study.qc.completed")[-1].parsed_data()
    assert isinstance(completed, StudyQCCompleted)
    [series] = completed.series
    assert series.kind == "fbirn" and series.status == "measured"
    assert {"mosaic", "metrics"} <= set(series.report)
    assert blobs.exists(series.report["mosaic"])


async def test_corrupt_series_is_reported_not_raised(blobs: FileBlobStore) -> None:
    state, bus = InMemoryStateStore(), RecordingBus()
    study = await _received(
        blobs, state, small_study("qc-corrupt", t1_slices=6, epi_slices=3, epi_volumes=2)
    )
    t1 = study.series[0]
    middle = next(
        k
        for k in t1.blob_keys  # a missing slice inside the stack, not at its edge
        if dcmread(blobs.path(k), stop_before_pixels=True).InstanceNumber == 3
    )
    blobs.path(middle).unlink()
    handler = QCHandler(blobs=blobs, state=state, bus=bus, source="test")
    await handler(
        Delivery(event=_checked(study, "t1w"), attempt=1, routing_key="study.compliance.checked")
    )
    completed = bus.of("study.qc.completed")[0].parsed_data()
    assert isinstance(completed, StudyQCCompleted)
    t1_qc = completed.series[0]
    assert t1_qc.status == "not_measured"
    assert t1_qc.reason is not None and "missing_slices" in t1_qc.reason
