"""`harmonet up` on a fresh data dir, DCMTK storescu pushing a generated 2-series study."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from pydicom import dcmread

from services.events import CloudEvent, StudyReceived
from services.synthetic import Subject, iter_instances, small_study, write_study
from tests.support.fakes import journal_events, wait_for_journal
from tests.support.processes import HarmonetProcess, require_tool, run_harmonet, storescu

pytestmark = pytest.mark.e2e

SUBJECT = Subject(patient_name="ROSSI^MARIA^LUISA", patient_id="MRN-77812", birth_date="19480512")


def _originals(study_dir: Path) -> list[bytes]:
    values = {SUBJECT.patient_name, SUBJECT.patient_id, SUBJECT.birth_date, "ROSSI", "MRN-77812"}
    for path in study_dir.iterdir():
        ds = dcmread(path, stop_before_pixels=True)
        values |= {
            ds.StudyInstanceUID,
            ds.SeriesInstanceUID,
            ds.SOPInstanceUID,
            ds.FrameOfReferenceUID,
            ds.AccessionNumber,
            ds.InstitutionName,
            str(ds.ReferringPhysicianName),
            ds.StudyDate,
        }
    return sorted(v.encode() for v in values)


@pytest.fixture
def study_files(tmp_path: Path) -> Path:
    spec = small_study("e2e-up", t1_slices=120, epi_slices=20, epi_volumes=10)
    spec = type(spec)(seed=spec.seed, subject=SUBJECT, series=spec.series)
    write_study(spec, tmp_path / "study")
    return tmp_path / "study"


def test_push_study_through_harmonet_up(tmp_path: Path, study_files: Path) -> None:
    require_tool("storescu")
    expected = {1: 120, 2: 200}
    with run_harmonet("up", tmp_path / "data") as harmonet:
        pushed = storescu(harmonet.dicom_port, study_files, calling_ae="MILANPRISMA")
        assert pushed.returncode == 0, pushed.stderr
        [event] = wait_for_journal(harmonet.data_dir, "study.received", 1)
        _check_study_received(event, expected)
        _check_stored_and_pseudonymised(harmonet, study_files, total=320)
        assert (
            harmonet.metric_value(
                "harmonet_receiver_instances_stored_total", site="milan", scanner="milan-prisma"
            )
            == 320
        )
        assert harmonet.metric_value("harmonet_studies_received_total", site="milan") == 1
        assert (
            harmonet.metric_value(
                "harmonet_events_published_total", type="org.harmonet.study.received"
            )
            == 1
        )

        # The same study again: duplicates, no second revision.
        again = storescu(harmonet.dicom_port, study_files, calling_ae="MILANPRISMA")
        assert again.returncode == 0, again.stderr
        time.sleep(3)  # > stable seconds + a monitor tick
        assert len(journal_events(harmonet.data_dir, "study.received")) == 1
        assert harmonet.metric_value("harmonet_receiver_duplicates_total") == 320
        assert harmonet.metric_value("harmonet_receiver_instances_stored_total") == 320


def test_late_instances_publish_a_new_revision(tmp_path: Path) -> None:
    require_tool("storescu")
    spec = small_study("e2e-late", t1_slices=6, epi_slices=3, epi_volumes=2)
    files = write_study(spec, tmp_path / "study")
    first, late = tmp_path / "first", tmp_path / "late"
    first.mkdir(), late.mkdir()
    for path in files:
        (late if path.name.startswith("002_") and path.name >= "002_00004" else first).joinpath(
            path.name
        ).write_bytes(path.read_bytes())
    with run_harmonet("up", tmp_path / "data") as harmonet:
        assert storescu(harmonet.dicom_port, first, calling_ae="MILANPRISMA").returncode == 0
        [one] = wait_for_journal(harmonet.data_dir, "study.received", 1)
        assert storescu(harmonet.dicom_port, late, calling_ae="MILANPRISMA").returncode == 0
        events = wait_for_journal(harmonet.data_dir, "study.received", 2)
    two = events[1]
    assert (one.parsed_data().revision, two.parsed_data().revision) == (1, 2)  # type: ignore[attr-defined]
    assert one.subject == two.subject and one.id != two.id
    assert two.parsed_data().instance_count == len(files)  # type: ignore[attr-defined]


def _check_study_received(event: CloudEvent, expected: dict[int, int]) -> None:
    data = event.parsed_data()
    assert isinstance(data, StudyReceived)
    assert event.type == "org.harmonet.study.received"
    assert event.subject == data.study_uid
    assert (data.site, data.scanner, data.revision) == ("milan", "milan-prisma", 1)
    assert data.instance_count == sum(expected.values())
    assert {s.series_number: s.instance_count for s in data.series} == expected
    assert data.patient_sex == "F" and data.patient_age == "070Y"
    assert data.subject_id.startswith("sub-")
    t1 = next(s for s in data.series if s.series_number == 1)
    assert t1.series_description == "t1_mprage_sag_1mm"
    assert t1.headers["RepetitionTime"] == 2300.0
    assert len(set(t1.blob_keys)) == 120
    assert all(k.startswith(f"dicom/milan/{data.study_uid}/{t1.series_uid}/") for k in t1.blob_keys)


def _check_stored_and_pseudonymised(
    harmonet: HarmonetProcess, study_files: Path, *, total: int
) -> None:
    stored = sorted((harmonet.data_dir / "dicom").rglob("*.dcm"))
    assert len(stored) == total
    originals = _originals(study_files)
    leaks = []
    for path in [*harmonet.data_dir.rglob("*")]:
        if path.is_file():
            content = path.read_bytes()
            leaks += [(path.name, v) for v in originals if v in content]
    assert not leaks, leaks[:5]
    sample = dcmread(stored[0])
    assert sample.PatientIdentityRemoved == "YES"
    assert sample.PatientSex == "F"


def test_synthetic_generator_is_deterministic() -> None:
    spec = small_study("determinism")
    first = [ds.SOPInstanceUID for ds in iter_instances(spec)]
    assert first == [ds.SOPInstanceUID for ds in iter_instances(spec)]
    assert json.dumps(first)  # plain strings
