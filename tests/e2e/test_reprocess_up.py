"""`harmonet reprocess` against a running `harmonet up`: the request goes through the data
dir's spool, the running process publishes a new revision, and every stage follows it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from services.synthetic import fbirn_phantom, write_study
from tests.support.fakes import journal_events, wait_for_journal
from tests.support.processes import require_tool, run_harmonet, storescu

pytestmark = pytest.mark.e2e


def _reprocess(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HARMONET_DATA_DIR": str(data), "HARMONET_LOG_LEVEL": "WARNING"}
    for key in ("HARMONET_AMQP_URL", "HARMONET_REDIS_URL", "HARMONET_CONFIG"):
        env.pop(key, None)
    return subprocess.run([sys.executable, "-m", "services.cli", "reprocess", *args],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.timeout(600)
def test_reprocess_makes_a_new_revision_and_a_retry_adds_nothing(tmp_path: Path) -> None:
    require_tool("storescu")
    write_study(fbirn_phantom(seed="reprocess-up", volumes=12), tmp_path / "phantom")
    data = tmp_path / "data"
    with run_harmonet("up", data) as harmonet:
        pushed = storescu(harmonet.dicom_port, tmp_path / "phantom", calling_ae="NAPLESSIGNA")
        assert pushed.returncode == 0, pushed.stderr
        [first] = wait_for_journal(data, "study.qc.completed", timeout=120)
        study_uid = first.data["study_uid"]

        listed = _reprocess(data, "--since", "2000-01-01", "--dry-run")
        assert listed.returncode == 0 and study_uid in listed.stdout, listed.stderr

        done = _reprocess(data, "--study", study_uid, "--run-id", "protocol-v2")
        assert done.returncode == 0, done.stderr
        assert f"{study_uid}\trevision 2" in done.stdout
        qc = wait_for_journal(data, "study.qc.completed", count=2, timeout=120)
        assert [e.data["revision"] for e in qc] == [1, 2]
        compliance = journal_events(data, "study.compliance.checked")
        assert [e.data["revision"] for e in compliance] == [1, 2]
        received = journal_events(data, "study.received")
        assert received[1].source.startswith("harmonet/reprocess/")
        assert received[1].data["series"] == received[0].data["series"]
        assert (data / "qc" / "naples" / study_uid / "r2").is_dir()

        again = _reprocess(data, "--study", study_uid, "--run-id", "protocol-v2")
        assert again.returncode == 0 and "revision 2" in again.stdout, again.stderr
        later = _reprocess(data, "--study", study_uid)
        assert later.returncode == 0 and "revision 3" in later.stdout, later.stderr
        wait_for_journal(data, "study.qc.completed", count=3, timeout=120)
    revisions = [e.data["revision"] for e in journal_events(data, "study.received")]
    assert revisions == [1, 2, 3]  # the retried run published nothing new
