"""A real Prometheus on loopback scrapes `harmonet up` after a study and an fBIRN phantom run
were pushed with DCMTK: every PromQL expression of the dashboards and the alert rules
evaluates, and the phantom gauge and ingest counters carry the pushed values."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.events import ScannerPhantomMeasured
from services.synthetic import fbirn_phantom, small_study, write_study
from tests.ops.k8s import (
    RULES_FILE,
    dashboard_expressions,
    rule_expressions,
    substitute_grafana_variables,
)
from tests.support.ci import skip_or_fail
from tests.support.fakes import wait_for_journal
from tests.support.processes import (
    HarmonetProcess,
    free_port,
    require_tool,
    run_harmonet,
    storescu,
    wait_for_port,
)

pytestmark = pytest.mark.e2e


class Prometheus:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as reply:
            body: dict[str, Any] = json.loads(reply.read())
        return body

    def query(self, expr: str) -> list[dict[str, Any]]:
        reply = self.get("/api/v1/query", query=expr)
        assert reply["status"] == "success", (expr, reply)
        result: list[dict[str, Any]] = reply["data"]["result"]
        return result

    def wait_for(self, expr: str, *, timeout: float = 60) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.5)
        raise AssertionError(f"{expr} returned nothing within {timeout}s")


@pytest.fixture
def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        skip_or_fail("prometheus not installed (apt-get install prometheus)")
    assert binary is not None
    return binary


@pytest.fixture
def pushed(tmp_path: Path) -> Iterator[tuple[HarmonetProcess, ScannerPhantomMeasured, int, int]]:
    require_tool("storescu")
    # distinct seeds: the seed makes the StudyInstanceUID
    study_spec = small_study("ops-scrape-study", t1_slices=6, epi_slices=3, epi_volumes=2)
    study = write_study(study_spec, tmp_path / "study")
    phantom = write_study(fbirn_phantom(seed="ops-scrape-phantom", volumes=20),
                          tmp_path / "phantom")
    with run_harmonet("up", tmp_path / "data") as harmonet:
        for folder, scanner_ae in (("study", "MILANPRISMA"), ("phantom", "NAPLESSIGNA")):
            sent = storescu(harmonet.dicom_port, tmp_path / folder, calling_ae=scanner_ae)
            assert sent.returncode == 0, sent.stderr
        [measured_event] = wait_for_journal(harmonet.data_dir, "scanner.phantom.measured",
                                            timeout=120)
        wait_for_journal(harmonet.data_dir, "study.qc.completed", 2, timeout=120)
        measured = measured_event.parsed_data()
        assert isinstance(measured, ScannerPhantomMeasured)
        yield harmonet, measured, len(study), len(phantom)


@pytest.fixture
def prometheus(
    tmp_path: Path, prometheus_binary: str, pushed: tuple[HarmonetProcess, Any, int, int]
) -> Iterator[Prometheus]:
    harmonet = pushed[0]
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES_FILE)],
        # `harmonet up` runs every service in one process: one target, the receiver's job
        "scrape_configs": [{"job_name": "harmonet-receiver", "static_configs": [
            {"targets": [f"127.0.0.1:{harmonet.metrics_port}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [prometheus_binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=log)
    try:
        wait_for_port(port, timeout=60, proc=proc)
        server = Prometheus(port)
        server.wait_for('up{job="harmonet-receiver"} == 1')
        yield server
    except Exception:
        print(log_path.read_text(errors="replace")[-5000:])
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_prometheus_scrapes_harmonet_and_every_expression_evaluates(
    prometheus: Prometheus, pushed: tuple[HarmonetProcess, ScannerPhantomMeasured, int, int]
) -> None:
    _, measured, study_instances, phantom_instances = pushed
    # the phantom gauge carries what the QC service published
    gauges = prometheus.wait_for('harmonet_phantom_metric{site="naples", scanner="naples-signa"}')
    scraped = {sample["metric"]["metric"]: float(sample["value"][1]) for sample in gauges}
    published = {k: v for k, v in measured.metrics.items() if v is not None}
    assert scraped.keys() == published.keys()
    for metric, value in published.items():
        assert scraped[metric] == pytest.approx(value, rel=1e-12), metric
    # the ingest counters carry the pushed instance counts, per scanner
    stored = prometheus.query(
        "sum by (site, scanner) (harmonet_receiver_instances_stored_total)")
    per_scanner = {(s["metric"]["site"], s["metric"]["scanner"]): float(s["value"][1])
                   for s in stored}
    assert per_scanner == {
        ("milan", "milan-prisma"): study_instances,
        ("naples", "naples-signa"): phantom_instances,
    }
    studies = prometheus.query("sum(harmonet_studies_received_total)")
    assert float(studies[0]["value"][1]) == 2
    assert prometheus.query("time() - harmonet_scanner_last_study_timestamp_seconds < 600")
    assert prometheus.query("harmonet_data_dir_free_bytes > 0")

    expressions = {f"alert {name}": expr for name, expr in rule_expressions().items()}
    expressions |= {f"dashboard {key}": substitute_grafana_variables(expr)
                    for key, expr in dashboard_expressions().items()}
    assert len(expressions) > 40
    failures = {}
    for key, expr in expressions.items():
        reply = prometheus.get("/api/v1/query", query=expr)
        if reply.get("status") != "success" or reply.get("warnings"):
            failures[key] = reply
    assert not failures, failures
    # the rules file loaded and its rules evaluate without error; with the receiver scraped,
    # HarmonetReceiverDown (pending before the first scrape) goes back to inactive
    deadline = time.monotonic() + 30
    while True:
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
        evaluated = {rule["name"]: rule for group in groups for rule in group["rules"]}
        if evaluated["HarmonetReceiverDown"]["state"] == "inactive":
            break
        assert time.monotonic() < deadline, evaluated["HarmonetReceiverDown"]
        time.sleep(0.5)
    assert evaluated.keys() == rule_expressions().keys()
    assert all(rule["health"] == "ok" for rule in evaluated.values()), evaluated
