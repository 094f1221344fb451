"""The registry benchmarks' quick modes run end to end and print their figures."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ci import skip_or_fail

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
NUMBER = r"\d+(?:\.\d+)?"


def _run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--quick"], cwd=REPO, capture_output=True,
        text=True, timeout=600, check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_quick_registry_benchmark_prints_latencies() -> None:
    done = _run("registry.py")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    result = re.search(rf"^RESULT case=study_list backend=sqlite studies=1000 rate=50 "
                       rf"requests=150 p50_ms=(?P<p50>{NUMBER}) p99_ms=(?P<p99>{NUMBER}) ",
                       done.stdout, re.MULTILINE)
    assert result is not None, output[-6000:]
    assert 0 < float(result["p50"]) <= float(result["p99"])


def test_quick_e2e_benchmark_reaches_study_processed() -> None:
    for name, port in (("RabbitMQ", 5672), ("Redis", 6379)):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError as exc:
            skip_or_fail(f"{name} not available: {exc}")
    if shutil.which("rabbitmqctl") is None:
        skip_or_fail("rabbitmqctl not on PATH (the benchmark creates a private vhost)")
    done = _run("e2e.py")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    result = re.search(rf"^RESULT case=e2e instances=20 quiet_seconds=2 "
                       rf"seconds=(?P<seconds>{NUMBER}) target_seconds=32 ", done.stdout,
                       re.MULTILINE)
    assert result is not None, output[-6000:]
    assert 0 < float(result["seconds"]) <= 32
    assert '"received": "recorded"' in done.stdout
