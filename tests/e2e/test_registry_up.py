"""`harmonet up` (SQLite registry, in-process bus): a pushed study ends up processed in the
registry API, `study.processed` is in the journal once, and the page shows it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from services.synthetic import small_study, write_study
from tests.support.fakes import wait_for_journal
from tests.support.processes import free_port, require_tool, run_harmonet, storescu

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _get(url: str, token: str) -> Any:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_pushed_study_is_processed_in_the_registry(tmp_path: Path) -> None:
    require_tool("storescu")
    write_study(small_study("registry-up"), tmp_path / "study")
    data = tmp_path / "data"
    created = subprocess.run(
        [sys.executable, "-m", "services.cli", "token", "create", "--site", "milan", "--role",
         "viewer"], env={**os.environ, "HARMONET_DATA_DIR": str(data)},
        capture_output=True, text=True, timeout=60, check=False)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    api_port = free_port()
    with run_harmonet("up", data, env={"HARMONET_API_PORT": str(api_port)}) as harmonet:
        pushed = storescu(harmonet.dicom_port, tmp_path / "study", calling_ae="MILANPRISMA")
        assert pushed.returncode == 0, pushed.stderr
        [processed] = wait_for_journal(data, "study.processed", timeout=120)
        api = f"http://127.0.0.1:{api_port}"
        studies = _get(f"{api}/api/v1/studies", token)
        assert studies["total"] == 1 and studies["items"][0]["processed"] is True
        assert studies["items"][0]["study_uid"] == processed.subject
        with pytest.raises(urllib.error.HTTPError) as denied:
            _get(f"{api}/api/v1/studies?site=naples", token)
        assert denied.value.code == 403
        denied.value.close()
        ready = _get(f"{api}/readyz", token)
        assert ready["status"] == "ready"
        time.sleep(1.0)
        assert len(wait_for_journal(data, "study.processed", timeout=5)) == 1
