"""`benchmarks/faults.py --quick` runs end to end and reports its figures."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import require_tool

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_quick_fault_benchmark_reports_a_clean_round() -> None:
    require_tool("storescu")
    done = subprocess.run([sys.executable, "benchmarks/faults.py", "--quick"], cwd=REPO,
                          capture_output=True, text=True, timeout=580, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    result = re.search(r"^RESULT scenario=sigkill rounds=1 instances=100 acknowledged=(\d+) "
                       r"lost=0 failed_rounds=0 ", done.stdout, re.MULTILINE)
    assert result, output[-5000:]
    print(done.stdout.splitlines()[-2])
