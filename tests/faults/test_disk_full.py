"""A full disk: the scanner gets 0xA700 (out of resources), nothing partial is left,
nothing is acknowledged that is not stored, /readyz goes false and comes back once
space is freed and an instance is stored again."""

from __future__ import annotations

import errno
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread

from services.synthetic import small_study, write_study
from tests.faults.kill_scenario import (
    ENV,
    acknowledged,
    expected_keys,
    storescu_command,
    wait_until_settled,
)
from tests.support.disk import mounted_tmpfs
from tests.support.processes import HarmonetProcess, require_tool, run_harmonet

pytestmark = pytest.mark.e2e


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs: room for `harmonet up` to start, then filled up by the test."""
    with mounted_tmpfs(tmp_path / "volume", "8m") as mount_point:
        yield mount_point


def _readyz(harmonet: HarmonetProcess) -> tuple[int, str]:
    url = f"http://127.0.0.1:{harmonet.metrics_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode()


def _fill(volume: Path, *, leave_bytes: int) -> Path:
    """Fill the volume to the last byte, then give back `leave_bytes`."""
    filler = volume / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as handle:
        try:
            while True:
                handle.write(chunk)
        except OSError as error:
            assert error.errno == errno.ENOSPC
        handle.truncate(max(0, handle.tell() - leave_bytes))
    return filler


def test_full_disk_answers_a700_leaves_nothing_partial_and_flips_readiness(
    tmp_path: Path, small_volume: Path
) -> None:
    require_tool("storescu")
    study = tmp_path / "study"
    files = write_study(small_study("faults-enospc", t1_slices=40, epi_slices=5, epi_volumes=4),
                        study)
    keys = expected_keys(files)
    # The registry's database lives elsewhere: the volume is the receiver's blob store.
    env = {**ENV, "HARMONET_DATABASE_URL": f"sqlite:///{tmp_path}/registry.sqlite3"}
    with run_harmonet("up", small_volume / "data", env=env) as harmonet:
        wait_until_settled(harmonet)
        assert _readyz(harmonet)[0] == 200
        filler = _fill(small_volume, leave_bytes=64 * 1024)
        full = subprocess.run(storescu_command(harmonet.dicom_port, study), capture_output=True,
                              text=True, timeout=120, check=False)
        output = full.stdout + full.stderr
        acked = acknowledged(output)
        refused = output.count("Received Store Response (Refused: OutOfResources)")
        stored = list((harmonet.data_dir / "dicom").rglob("*.dcm"))
        code, body = _readyz(harmonet)
        print(f"disk full: instances {len(files)}, acknowledged {len(acked)}, answered 0xA700 "
              f"{refused}, stored {len(stored)}, /readyz {code} {body.strip()!r}")
        # storescu stops at the first failure, as a scanner's queue does, and retries later
        assert refused >= 1 and full.returncode != 0
        assert sorted(str(p.relative_to(harmonet.data_dir)) for p in stored) == sorted(
            keys[p] for p in acked
        )  # every success is on disk, nothing else
        for path in stored:  # and whole: pixel data as long as the image attributes say
            ds = dcmread(path)
            assert len(ds.PixelData) == ds.Rows * ds.Columns * 2
        assert not list(small_volume.rglob(".tmp-*"))
        assert code == 503 and "receiver_storage" in body and "ENOSPC" in body
        assert harmonet.metric_value("harmonet_component_ready", component="receiver_storage") == 0

        filler.unlink()  # the operator frees space; the scanner retries
        again = subprocess.run(storescu_command(harmonet.dicom_port, study), capture_output=True,
                               text=True, timeout=120, check=False)
        assert again.returncode == 0, again.stdout[-3000:]
        assert len(acknowledged(again.stdout + again.stderr)) == len(files)
        assert len(list((harmonet.data_dir / "dicom").rglob("*.dcm"))) == len(files)
        code, body = _readyz(harmonet)
        print(f"after freeing space: stored {len(files)}, /readyz {code}")
        assert code == 200
        assert harmonet.proc.poll() is None
