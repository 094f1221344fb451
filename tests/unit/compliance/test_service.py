"""The compliance handler on the in-process bus: receiver output in, compliance events out."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from compliance_service.app import handle_study_received
from receiver.ingest import Ingestor
from receiver.pseudonymise import Pseudonymiser
from receiver.stability import StabilityMonitor, StudyTracker
from services.blobstore import FileBlobStore
from services.bus import Delivery
from services.config import HarmonetConfig, parse_config
from services.events import (
    CloudEvent,
    ScannerConfigurationChanged,
    StudyComplianceChecked,
)
from services.state import InMemoryStateStore
from services.synthetic import (
    BOLD_EPI,
    T1_MPRAGE,
    ScannerSpec,
    SeriesSpec,
    StudySpec,
    Subject,
    iter_instances,
    write_study,
)
from tests.support.fakes import RecordingBus

CONFIG = """\
study: TEST
sites:
  - id: milan
    scanners:
      - id: milan-prisma
        ae_titles: [MILANPRISMA]
protocols:
  - id: core
    series:
      - type: t1w
        match: {series_description: "(?i)t1|mprage"}
        expect:
          RepetitionTime: {value: 2300, tolerance: "1%"}
          FlipAngle: {value: 9, tolerance: 1}
      - type: bold
        match: {series_description: "(?i)bold"}
        severity: warning
        expect:
          RepetitionTime: {value: 2000, tolerance: "1%"}
"""
T1 = SeriesSpec(**{**T1_MPRAGE.__dict__, "slices": 4, "rows": 64, "columns": 64})
BOLD = SeriesSpec(**{**BOLD_EPI.__dict__, "slices": 3, "volumes": 2})


@dataclasses.dataclass
class Pipeline:
    config: HarmonetConfig
    blobs: FileBlobStore
    state: InMemoryStateStore
    bus: RecordingBus

    async def push(self, spec: StudySpec) -> CloudEvent:
        ingestor = Ingestor(
            config=self.config,
            blobs=self.blobs,
            tracker=StudyTracker(self.state, clock=lambda: 0.0),
            pseudonymiser=Pseudonymiser(key=b"k" * 32),
        )
        scanner = self.config.scanner_for_ae("MILANPRISMA")
        assert scanner is not None
        for ds in iter_instances(spec):
            assert (
                ingestor.ingest(ds, scanner=scanner, context_sop_class=ds.SOPClassUID).status == 0
            )
        receiver_bus = RecordingBus()
        monitor = StabilityMonitor(
            state=self.state,
            blobs=self.blobs,
            bus=receiver_bus,
            stable_seconds=1,
            source="test",
            clock=lambda: 10.0,
        )
        [received] = await monitor.tick()
        await handle_study_received(
            Delivery(event=received, attempt=1, routing_key="study.received"),
            config=self.config,
            blobs=self.blobs,
            state=self.state,
            bus=self.bus,
            source="test",
        )
        return received


@pytest.fixture
def pipeline(tmp_path: Path) -> Pipeline:
    return Pipeline(
        parse_config(CONFIG, source="test"),
        FileBlobStore(tmp_path),
        InMemoryStateStore(),
        RecordingBus(),
    )


def _study(n: int, *, software: str = "syngo MR XA30", t1: SeriesSpec = T1) -> StudySpec:
    return StudySpec(
        seed=f"svc-{n}",
        subject=Subject(patient_id=f"P{n}"),
        scanner=ScannerSpec(software=software),
        series=(t1, BOLD),
    )


async def test_verdicts_and_site_reference(pipeline: Pipeline) -> None:
    low_flip = SeriesSpec(**{**T1.__dict__, "flip_angle_deg": 7.0})
    for n in range(3):  # this site always acquires its T1 at 7 degrees
        await pipeline.push(_study(n, t1=low_flip))
    checked = [e.parsed_data() for e in pipeline.bus.of("study.compliance.checked")]
    assert all(isinstance(c, StudyComplianceChecked) for c in checked)
    first_t1 = checked[0].series[0]  # type: ignore[attr-defined]
    assert (first_t1.series_type, first_t1.verdict) == ("t1w", "deviant")
    [flip] = first_t1.deviations
    assert (flip.parameter, flip.expected, flip.actual) == ("FlipAngle", 9, 7.0)
    assert flip.matches_site_reference is None  # no reference before 3 studies
    await pipeline.push(_study(3, t1=low_flip))
    latest = pipeline.bus.of("study.compliance.checked")[-1].parsed_data()
    t1 = latest.series[0]  # type: ignore[attr-defined]
    assert t1.site_reference["FlipAngle"] == 7.0
    assert t1.deviations[0].matches_site_reference is True  # a site habit, not a one-off
    bold = latest.series[1]  # type: ignore[attr-defined]
    assert (bold.series_type, bold.verdict) == ("bold", "compliant")


async def test_software_upgrade_publishes_configuration_changed(pipeline: Pipeline) -> None:
    await pipeline.push(_study(0))
    await pipeline.push(_study(1))
    assert pipeline.bus.of("scanner.configuration.changed") == []
    await pipeline.push(_study(2, software="syngo MR XA50"))
    [event] = pipeline.bus.of("scanner.configuration.changed")
    changed = event.parsed_data()
    assert isinstance(changed, ScannerConfigurationChanged)
    assert event.subject == "milan-prisma"
    [change] = [c for c in changed.changes if c.parameter == "SoftwareVersions"]
    assert (change.previous, change.current) == ("syngo MR XA30", "syngo MR XA50")


async def test_redelivery_publishes_the_same_event_and_counts_once(pipeline: Pipeline) -> None:
    received = await pipeline.push(_study(0))
    delivery = Delivery(event=received, attempt=2, routing_key="study.received")
    await handle_study_received(
        delivery,
        config=pipeline.config,
        blobs=pipeline.blobs,
        state=pipeline.state,
        bus=pipeline.bus,
        source="test",
    )
    first, again = pipeline.bus.of("study.compliance.checked")
    assert first.id == again.id
    history = pipeline.state.get("compliance:history:milan:milan-prisma:t1w")
    assert history is not None and history.count(b'"RepetitionTime"') == 1


async def test_series_without_timing_attributes_is_reported_not_dead_lettered(
    pipeline: Pipeline,
) -> None:
    spec = _study(0)
    received = await pipeline.push(spec)
    t1 = received.parsed_data().series[0]  # type: ignore[attr-defined]
    for key in t1.blob_keys:  # strip timing from the stored T1 instances
        from pydicom import dcmread

        path = pipeline.blobs.path(key)
        ds = dcmread(path)
        for keyword in ("RepetitionTime", "EchoTime", "FlipAngle", "InversionTime"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(path)
    pipeline.bus.events.clear()
    await handle_study_received(
        Delivery(event=received, attempt=1, routing_key="study.received"),
        config=pipeline.config,
        blobs=pipeline.blobs,
        state=pipeline.state,
        bus=pipeline.bus,
        source="test",
    )
    checked = pipeline.bus.of("study.compliance.checked")[0].parsed_data()
    series = checked.series[0]  # type: ignore[attr-defined]
    assert series.verdict == "deviant"
    assert {d.parameter for d in series.deviations if d.actual is None} == {
        "RepetitionTime",
        "FlipAngle",
    }


def test_offline_check_prints_a_table(tmp_path: Path) -> None:
    write_study(
        _study(0, t1=SeriesSpec(**{**T1.__dict__, "repetition_time_ms": 2500.0})),
        tmp_path / "study",
    )
    (tmp_path / "h.yaml").write_text(CONFIG)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli",
            "compliance",
            "check",
            str(tmp_path / "study"),
            "--config",
            str(tmp_path / "h.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 3, done.stderr
    assert "RepetitionTime: expected 2300, got 2500.0" in done.stdout
    assert "bold_rest" in done.stdout and "compliant" in done.stdout
