"""The QC benchmark's quick mode runs end to end and reports both cases with numbers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.ci import skip_or_fail
from tests.unit.qc.factories import nilearn_data_dir

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
NUMBER = r"\d+(?:\.\d+)?"
RESULT = re.compile(
    rf"^RESULT case=(?P<case>\w+) seconds=(?P<seconds>{NUMBER}) cpu_seconds={NUMBER} "
    rf"tracemalloc_peak_mb=(?P<traced>{NUMBER}) maxrss_delta_mb=(?P<rss>{NUMBER}) "
    rf"maxrss_mb={NUMBER} threads=1 ", re.MULTILINE)


def test_quick_qc_benchmark_prints_both_cases() -> None:
    data_dir = nilearn_data_dir()
    if data_dir is None or not (data_dir / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
                                ).exists():
        skip_or_fail("nilearn (MNI152 2009 template) not installed")
    done = subprocess.run(
        [sys.executable, "benchmarks/qc.py", "--quick"], cwd=REPO, capture_output=True,
        text=True, timeout=600, check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    results = {m["case"]: m.groupdict() for m in RESULT.finditer(done.stdout)}
    assert set(results) == {"anatomical", "functional"}, output[-6000:]
    for result in results.values():
        assert float(result["seconds"]) > 0
        assert float(result["traced"]) > 0
    for case in ("anatomical", "functional"):
        assert re.search(rf"^{case}\s+\S+\s+-\s+{NUMBER}\s", done.stdout, re.MULTILINE), output
    assert "MRIQC" in done.stdout  # says why there is no peer ratio
