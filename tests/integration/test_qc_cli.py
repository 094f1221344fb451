"""`harmonet qc run` offline and `harmonet qc reset-baseline` on the real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qc_service import control_chart
from qc_service.app import chart_key
from services.state.redis import RedisStateStore
from services.synthetic import fbirn_phantom, small_study, write_study
from tests.conftest import unique_name


def _harmonet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, **(env or {})},
    )


def test_qc_run_on_a_phantom_folder(tmp_path: Path) -> None:
    write_study(fbirn_phantom(seed="cli-qc", volumes=30), tmp_path / "phantom")
    done = _harmonet("qc", "run", str(tmp_path / "phantom"), "--type", "fbirn")
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout).values()
    assert result["kind"] == "fbirn" and result["reason"] is None
    assert 60 < result["metrics"]["sfnr"] < 140


def test_qc_run_reports_why_a_series_cannot_be_measured(tmp_path: Path) -> None:
    files = write_study(
        small_study("cli-qc-bad", t1_slices=6, epi_slices=2, epi_volumes=1), tmp_path / "study"
    )
    t1 = [p for p in files if p.name.startswith("001_")]
    t1[3].unlink()  # a hole in the stack
    done = _harmonet("qc", "run", str(tmp_path / "study"))
    assert done.returncode == 1
    results = json.loads(done.stdout)
    assert results["1 t1_mprage_sag_1mm"]["reason"] == "cannot build a volume: missing_slices"
    assert set(results) == {"1 t1_mprage_sag_1mm", "2 bold_rest"}  # every series reported


@pytest.mark.integration
def test_reset_baseline_starts_a_new_baseline(redis_url: str, redis_prefix: str) -> None:
    prefix = redis_prefix + unique_name("qc-") + ":"
    state = RedisStateStore(redis_url, prefix=prefix)
    key = chart_key("milan", "milan-prisma", "sfnr")
    chart = None
    for session in range(10):
        chart = control_chart.update(
            chart.state if chart else None,
            200.0 + session % 2,
            baseline_sessions=4,
            session_id=f"s{session}",
        )
    assert chart is not None
    state.set(key, chart.state.to_json().encode())
    done = _harmonet(
        "qc",
        "reset-baseline",
        "--site",
        "milan",
        "--scanner",
        "milan-prisma",
        env={"HARMONET_REDIS_URL": redis_url, "HARMONET_STATE_PREFIX": prefix},
    )
    assert done.returncode == 0, done.stderr
    assert "milan/milan-prisma/sfnr" in done.stdout
    raw = state.get(key)
    assert raw is not None
    fresh = control_chart.ChartState.from_json(raw.decode())
    after = control_chart.update(fresh, 150.0, baseline_sessions=4, session_id="after-visit")
    assert after.zscore is None and after.transition is None  # building a new baseline
    state.close()
