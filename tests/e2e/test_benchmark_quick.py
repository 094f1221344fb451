"""The ingest benchmark's quick mode runs end to end: every peer stores every instance."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.disk import skip_or_fail
from tests.support.processes import require_tool

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
PEERS = ("storescp", "bare", "bare-tuned", "harmonet")
RESULT = re.compile(
    r"^RESULT peer=(?P<peer>\S+) senders=(?P<senders>\d+) instances=(?P<instances>\d+) "
    r"stored=(?P<stored>-?\d+) seconds=\S+ rate=(?P<rate>[\d.]+)/s",
    re.MULTILINE,
)


def _can_unshare() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare (util-linux) not installed"
    probe = subprocess.run(
        ["unshare", "--net", "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return f"cannot create a network namespace: {probe.stderr.strip()}"
    return None


def test_quick_benchmark_stores_everything(tmp_path: Path) -> None:
    for tool in ("storescu", "storescp", "echoscu"):
        require_tool(tool)
    reason = _can_unshare()
    if reason is not None:
        skip_or_fail(reason)

    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/ingest.py",
            "--quick",
            "--senders",
            "2",
            "--peers",
            ",".join(PEERS),
            "--scratch",
            str(tmp_path),
            "--json",
            str(tmp_path / "results.json"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    results = [m.groupdict() for m in RESULT.finditer(done.stdout)]
    assert {(r["peer"], r["senders"]) for r in results} == {
        (peer, senders) for peer in PEERS for senders in ("1", "2")
    }, output[-6000:]
    for result in results:
        assert result["stored"] == result["instances"], result
        assert float(result["rate"]) > 0
    assert "instances/s" in done.stdout
