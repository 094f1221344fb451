"""The issue's must-show: `harmonet up`, then `harmonet demo --quick --subjects 2` (two
subjects per site, so the demo can fit and install a harmonization model and send their
follow-up visits), then the registry page in a real headless browser (Debian's chromium
through playwright). A screenshot of the page is kept under `test-artifacts/` (or
`$HARMONET_TEST_ARTIFACTS`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from tests.support.ci import skip_or_fail
from tests.support.fakes import journal_events
from tests.support.processes import free_port, run_harmonet

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
SUBJECTS = 2
PER_SITE = 2 * SUBJECTS + 10  # two visits per subject + the phantom weeks of `--quick`
QUICK_STUDIES = 3 * PER_SITE


def artefact_dir() -> Path:
    folder = Path(os.environ.get("HARMONET_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer in {timeout}s")


@pytest.mark.timeout(1200)
def test_demo_ends_processed_alerted_flagged_and_on_the_registry_page(tmp_path: Path) -> None:
    if "registry" not in {e.name for e in entry_points(group="harmonet.services")}:
        skip_or_fail("the registry service is not installed in this build")
    if not CHROMIUM.exists():
        skip_or_fail("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    api_port = free_port()
    data = tmp_path / "data"
    with run_harmonet("up", data, stable_seconds=2,
                      env={"HARMONET_API_PORT": str(api_port)}) as harmonet:
        api = f"http://127.0.0.1:{api_port}"
        _wait_http(f"{api}/healthz")
        started = time.monotonic()
        demo = subprocess.run(
            [sys.executable, "-m", "services.cli", "demo", "--quick", "--subjects",
             str(SUBJECTS), "--host", "127.0.0.1",
             "--port", str(harmonet.dicom_port), "--api", api, "--data-dir", str(data),
             "--metrics-url", f"http://127.0.0.1:{harmonet.metrics_port}/metrics",
             "--timeout", "900"],
            capture_output=True, text=True, timeout=1100, check=False,
            env={**os.environ, "HARMONET_LOG_LEVEL": "WARNING"},
        )
        seconds = time.monotonic() - started
        (artefact_dir() / "demo-output.txt").write_text(
            f"{seconds:.0f} s\n{demo.stdout}\n{demo.stderr[-5000:]}")
        assert demo.returncode == 0, demo.stdout + demo.stderr[-3000:]
        assert "[ok] naples-signa" in demo.stdout and "[ok] leiden" in demo.stdout
        assert "[ok] harmonization" in demo.stdout

        # every demo study processed, the drift alerted, the deviation flagged: the events
        # (a study whose push was interrupted and resumed may have two revisions)
        processed = {(e.data["scanner"], e.data["study_uid"])
                     for e in journal_events(data, "study.processed")}
        assert Counter(scanner for scanner, _ in processed) == {
            "milan-prisma": PER_SITE, "naples-signa": PER_SITE, "leiden-ingenia": PER_SITE}
        # the follow-up visits, sent once the demo's model was installed, are harmonized
        # with it; the first wave arrived before any model
        harmonized = [e.data for e in journal_events(data, "study.harmonized")]
        done = [h for h in harmonized if h["status"] == "harmonized"]
        assert Counter(site for site, _ in {(h["site"], h["study_uid"]) for h in done}) == {
            "milan": SUBJECTS, "naples": SUBJECTS, "leiden": SUBJECTS}
        assert len({h["model_version"] for h in done}) == 1
        assert {h["reason"] for h in harmonized if h["status"] == "not_applicable"} == {
            "no_model", "phantom"}
        alerts = [e.data for e in journal_events(data, "scanner.stability.alert")]
        assert {a["scanner"] for a in alerts if a["state"] == "out_of_control"} == {
            "naples-signa"}
        deviant = [e.data for e in journal_events(data, "study.compliance.checked")
                   if any(s["verdict"] == "deviant" for s in e.data["series"])]
        assert {d["site"] for d in deviant} == {"leiden"}

        token = re.search(r"/ui/\?token=(\S+)", demo.stdout)
        assert token is not None, demo.stdout
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                                 args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"{api}/ui/?token={token.group(1)}")
                page.wait_for_selector("#studies")
                page.screenshot(path=str(artefact_dir() / "registry-page.png"), full_page=True)
                page.screenshot(path=str(tmp_path / "registry-page.png"), full_page=True)
                rows = page.locator("#studies tr.study")
                assert rows.count() == QUICK_STUDIES
                for site in ("milan", "naples", "leiden"):
                    assert page.locator("#studies tr.study", has_text=site).count() == PER_SITE
                flagged = page.locator("#studies tr.study.status-excluded")
                assert flagged.count() == 2 * SUBJECTS  # leiden's T1w TR, both visits
                assert all("leiden" in text for text in flagged.all_inner_texts())
                cells = page.locator("#studies td.harmonization").all_inner_texts()
                assert cells.count("harmonized") == 3 * SUBJECTS
                assert page.locator("#studies tr.study.status-pending").count() == 0
                trends = page.locator("#phantom-trends svg.trend[data-scanner='naples-signa']"
                                      "[data-metric='sfnr']")
                assert trends.count() == 1
                # the drifting scanner's alert: an element id="alerts" (or class "alert",
                # or a data-alert attribute) naming the scanner
                alerted = page.locator("#alerts, .alert, [data-alert]")
                assert alerted.count() >= 1, (
                    "the registry page shows no stability alert (expected an element "
                    "#alerts / .alert / [data-alert] naming naples-signa)")
                assert "naples-signa" in " ".join(alerted.all_inner_texts())
            finally:
                browser.close()
