"""The whole embedded pipeline: storescu → receiver → compliance → QC in `harmonet up`."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.events import ScannerPhantomMeasured, StudyQCCompleted
from services.synthetic import fbirn_phantom, write_study
from tests.support.fakes import wait_for_journal
from tests.support.processes import require_tool, run_harmonet, storescu

pytestmark = pytest.mark.e2e


def test_phantom_push_flows_through_compliance_and_qc(tmp_path: Path) -> None:
    require_tool("storescu")
    write_study(fbirn_phantom(seed="up-pipeline", volumes=30), tmp_path / "phantom")
    with run_harmonet("up", tmp_path / "data") as harmonet:
        pushed = storescu(harmonet.dicom_port, tmp_path / "phantom", calling_ae="NAPLESSIGNA")
        assert pushed.returncode == 0, pushed.stderr
        qc = wait_for_journal(harmonet.data_dir, "study.qc.completed", timeout=90)[0].parsed_data()
        measured = wait_for_journal(harmonet.data_dir, "scanner.phantom.measured", timeout=90)[
            0
        ].parsed_data()
        sfnr = harmonet.metric_value(
            "harmonet_phantom_metric", site="naples", scanner="naples-signa", metric="sfnr"
        )
        qc_total = harmonet.metric_value("harmonet_qc_series_total", result="measured")
    assert wait_for_journal(harmonet.data_dir, "study.compliance.checked", timeout=90)[0]
    assert isinstance(qc, StudyQCCompleted)
    [series] = qc.series
    assert (series.kind, series.status) == ("fbirn", "measured")
    assert (harmonet.data_dir / series.report["mosaic"]).read_bytes().startswith(b"\x89PNG")
    assert isinstance(measured, ScannerPhantomMeasured)
    assert measured.phantom_type == "fbirn" and measured.scanner == "naples-signa"
    assert sfnr == pytest.approx(measured.metrics["sfnr"])
    assert 60 < sfnr < 140  # signal 1000, temporal noise 10: SFNR about 100
    assert qc_total == 1
