"""`harmonet send` (pynetdicom SCU) and `harmonet import` take the same path as a scanner push."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.events import StudyReceived
from services.synthetic import small_study, write_study
from tests.support.fakes import journal_events
from tests.support.processes import run_harmonet

pytestmark = pytest.mark.e2e


def _harmonet(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_send_pushes_every_file_and_reports_failures(tmp_path: Path) -> None:
    files = write_study(
        small_study("cli-send", t1_slices=5, epi_slices=2, epi_volumes=2), tmp_path / "study"
    )
    (tmp_path / "study" / "README.txt").write_text("not DICOM")
    with run_harmonet("up", tmp_path / "data") as harmonet:
        sent = _harmonet(
            "send",
            str(tmp_path / "study"),
            "--port",
            str(harmonet.dicom_port),
            "--aet",
            "MILANPRISMA",
            env={},
        )
        assert sent.returncode == 0, sent.stderr
        assert f"sent {len(files)}/{len(files)} instances (0 failed, 1 not DICOM)" in sent.stderr
        refused = _harmonet(
            "send", str(files[0]), "--port", str(harmonet.dicom_port), "--aet", "STRANGER", env={}
        )
        assert refused.returncode != 0
        deadline = time.monotonic() + 20
        while (
            not journal_events(harmonet.data_dir, "study.received") and time.monotonic() < deadline
        ):
            time.sleep(0.2)
    [event] = journal_events(harmonet.data_dir, "study.received")
    assert event.parsed_data().instance_count == len(files)  # type: ignore[attr-defined]


def test_import_uses_the_same_pseudonyms_and_publishes(tmp_path: Path) -> None:
    files = write_study(
        small_study("cli-import", t1_slices=4, epi_slices=2, epi_volumes=1), tmp_path / "study"
    )
    data_dir = tmp_path / "data"
    env = {"HARMONET_DATA_DIR": str(data_dir), "HARMONET_LOG_JSON": "false"}
    imported = _harmonet("import", str(tmp_path / "study"), "--aet", "NAPLESSIGNA", env=env)
    assert imported.returncode == 0, imported.stderr
    assert f"imported: {len(files)} stored; 1 study.received published" in imported.stderr
    [event] = journal_events(data_dir, "study.received")
    data = event.parsed_data()
    assert isinstance(data, StudyReceived)
    assert (data.site, data.scanner, data.instance_count) == ("naples", "naples-signa", len(files))
    stored = sorted(p.relative_to(data_dir) for p in (data_dir / "dicom").rglob("*.dcm"))
    # A push of the same files later lands on exactly the same keys (same key file).
    with run_harmonet("up", data_dir) as harmonet:
        pushed = _harmonet(
            "send",
            str(tmp_path / "study"),
            "--port",
            str(harmonet.dicom_port),
            "--aet",
            "NAPLESSIGNA",
            env={},
        )
        assert pushed.returncode == 0, pushed.stderr
        assert harmonet.metric_value("harmonet_receiver_duplicates_total") == len(files)
    assert sorted(p.relative_to(data_dir) for p in (data_dir / "dicom").rglob("*.dcm")) == stored
    unknown = _harmonet("import", str(tmp_path / "study"), "--aet", "NOBODY", env=env)
    assert unknown.returncode == 2 and "NOBODY" in unknown.stderr
