"""`harmonet qc reset-baseline` without Redis: the charts of `harmonet up` live in the embedded
state file, which the command edits while `up` is stopped (and refuses to touch while it runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from qc_service import control_chart
from qc_service.app import chart_key
from services.cli import main
from services.settings import Settings
from services.state.file import FileStateStore


def test_reset_baseline_on_the_embedded_state_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HARMONET_REDIS_URL", raising=False)
    monkeypatch.setenv("HARMONET_DATA_DIR", str(tmp_path))
    path = Settings().embedded_state_path
    key = chart_key("milan", "milan-prisma", "sfnr")
    chart = None
    for session in range(10):
        chart = control_chart.update(chart.state if chart else None, 200.0 + session % 2,
                                     baseline_sessions=4, session_id=f"s{session}")
    assert chart is not None
    up = FileStateStore(path)
    up.set(key, chart.state.to_json().encode())
    argv = ["qc", "reset-baseline", "--site", "milan", "--scanner", "milan-prisma"]
    assert main(argv) == 1  # `harmonet up` holds the file
    assert "in use by another process" in capsys.readouterr().err
    up.close()

    assert main(argv) == 0
    assert "milan/milan-prisma/sfnr" in capsys.readouterr().out
    restarted = FileStateStore(path)
    raw = restarted.get(key)
    restarted.close()
    assert raw is not None
    after = control_chart.update(control_chart.ChartState.from_json(raw.decode()), 150.0,
                                 baseline_sessions=4, session_id="after-visit")
    assert after.zscore is None and after.transition is None  # a new baseline is being built
