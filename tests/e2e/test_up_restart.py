"""`harmonet up` killed (SIGKILL) with a study stored but not yet stable: after the restart the
study is still published, and later instances make revision 2 - never a reused event id."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from services.events import StudyReceived
from services.synthetic import small_study, write_study
from tests.support.fakes import journal_events, wait_for_journal
from tests.support.processes import require_tool, run_harmonet, storescu

pytestmark = pytest.mark.e2e


def test_pending_study_and_revisions_survive_a_sigkill(tmp_path: Path) -> None:
    require_tool("storescu")
    write_study(small_study("restart", t1_slices=20, epi_slices=4, epi_volumes=3),
                tmp_path / "study")
    files = sorted((tmp_path / "study").iterdir())
    first, rest = files[:20], files[20:]
    data_dir = tmp_path / "data"
    with run_harmonet("up", data_dir, stable_seconds=3600) as harmonet:
        assert storescu(harmonet.dicom_port, first, calling_ae="MILANPRISMA").returncode == 0
        harmonet.proc.send_signal(signal.SIGKILL)  # stored and acknowledged, never stable
        harmonet.proc.wait()
    assert journal_events(data_dir, "study.received") == []

    with run_harmonet("up", data_dir, stable_seconds=1) as harmonet:
        [event] = wait_for_journal(data_dir, "study.received", 1)
        received = StudyReceived.model_validate(event.data)
        assert (received.revision, received.instance_count) == (1, 20)
        assert storescu(harmonet.dicom_port, rest, calling_ae="MILANPRISMA").returncode == 0
        wait_for_journal(data_dir, "study.received", 2)
        harmonet.proc.send_signal(signal.SIGKILL)
        harmonet.proc.wait()

    with run_harmonet("up", data_dir, stable_seconds=1) as harmonet:
        assert storescu(harmonet.dicom_port, files[:1], calling_ae="MILANPRISMA").returncode == 0
        # a duplicate instance after a restart: nothing new, no third revision
        with pytest.raises(AssertionError):
            wait_for_journal(data_dir, "study.received", 3, timeout=4)
    events = journal_events(data_dir, "study.received")
    revisions = [StudyReceived.model_validate(e.data) for e in events]
    assert [(r.revision, r.instance_count) for r in revisions] == [(1, 20), (2, 32)]
    assert len({e.id for e in events}) == 2
