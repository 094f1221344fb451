"""`harmonet demo --start`: nothing listens, so the demo starts `harmonet up` in the data dir,
pushes, waits, reports, and (without a terminal) stops it again."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.fakes import journal_events
from tests.support.processes import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.timeout(600)
def test_demo_starts_harmonet_up_when_nothing_listens_and_stops_it(tmp_path: Path) -> None:
    port, data = free_port(), tmp_path / "data"
    env = {**os.environ, "HARMONET_DICOM_PORT": str(port), "HARMONET_DICOM_HOST": "127.0.0.1",
           "HARMONET_METRICS_PORT": str(free_port()), "HARMONET_API_PORT": str(free_port()),
           "HARMONET_STABLE_SECONDS": "1", "HARMONET_LOG_LEVEL": "WARNING"}
    env.pop("HARMONET_CONFIG", None)
    demo = subprocess.run(
        [sys.executable, "-m", "services.cli", "demo", "--start", "--data-dir", str(data),
         "--sites", "1", "--subjects", "0", "--weeks", "9", "--quick", "--timeout", "300"],
        env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=500,
        check=False,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr[-3000:]
    assert "started `harmonet up`" in demo.stderr
    [row] = [line for line in demo.stdout.splitlines() if line.startswith("milan ")]
    assert row.split()[3:5] == ["9", "9"]  # studies sent, processed
    assert "naples" not in demo.stdout
    assert len({e.data["study_uid"] for e in journal_events(data, "study.qc.completed")}) == 9
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), 1):
        pass  # `harmonet up` was stopped with the demo
