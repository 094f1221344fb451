"""`promtool check rules` and `promtool test rules` on HarmoNet's alert rules; every alert has a
firing and a non-firing case; the PrometheusRule and dashboards are rendered from source."""

from __future__ import annotations

import shutil
import subprocess
import sys

import yaml

from tests.ops.k8s import K8S, RULES_FILE, RULES_TEST_FILE, rule_expressions
from tests.support.ci import skip_or_fail


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    if promtool is None:
        skip_or_fail("promtool not installed (apt-get install prometheus)")
    assert promtool is not None
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120,
                          check=False)


def test_promtool_check_rules() -> None:
    checked = _promtool("check", "rules", str(RULES_FILE))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rule_expressions())} rules found" in checked.stdout


def test_promtool_test_rules() -> None:
    tested = _promtool("test", "rules", str(RULES_TEST_FILE))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_firing_and_a_non_firing_case() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(RULES_TEST_FILE.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    alerts = set(rule_expressions())
    assert len(alerts) >= 11
    assert alerts - firing == set(), "alerts without a firing case"
    assert alerts - quiet == set(), "alerts without a non-firing case"


def test_the_alerts_the_issue_asks_for_exist() -> None:
    assert {
        "HarmonetReceiverDown", "HarmonetScannerSilent", "HarmonetComplianceDeviationRateHigh",
        "HarmonetScannerStabilityOutOfLimits", "HarmonetDeadLetterQueueNotEmpty",
        "HarmonetQueueBacklogGrowing", "HarmonetStageLatencyHigh", "HarmonetDataDirAlmostFull",
        "HarmonetDataDirFillingUp",
    } <= set(rule_expressions())


def test_rendered_monitoring_files_are_up_to_date() -> None:
    built = subprocess.run([sys.executable, str(K8S / "tools" / "build_monitoring.py"),
                            "--check"], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr + " (run python k8s/tools/build_monitoring.py)"
