"""Run `harmonet` verbs and DCMTK tools as real processes on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from tests.support.ci import skip_or_fail


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, *, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"port {port} did not open in {timeout}s")


def dcmtk_tool(name: str) -> str | None:
    """The DCMTK binary `name` (pynetdicom installs Python apps with the same names)."""
    candidates = [f"/usr/bin/{name}", f"/usr/local/bin/{name}", shutil.which(name)]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            probe = subprocess.run(
                [candidate, "--version"], capture_output=True, text=True, check=False
            )
            if "dcmtk" in (probe.stdout + probe.stderr).lower():
                return candidate
    return None


def require_tool(name: str) -> str:
    path = dcmtk_tool(name)
    if path is None:
        skip_or_fail(f"DCMTK {name} not installed (apt-get install dcmtk)")
    assert path is not None
    return path


@dataclass
class HarmonetProcess:
    proc: subprocess.Popen[bytes]
    data_dir: Path
    dicom_port: int
    metrics_port: int
    log_path: Path

    def metrics(self) -> str:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as r:
            return str(r.read().decode())

    def metric_value(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when absent)."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] != name:
                continue
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
        return total

    def wait_metric(
        self, name: str, expected: float, *, timeout: float = 15.0, **labels: str
    ) -> float:
        """`metric_value` once it equals `expected`, or its last value after `timeout` s.

        A service may publish its event a moment before it counts what it did, and the
        subscriber of a test can see that event first: poll rather than read once.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = self.metric_value(name, **labels)
            if value == expected or time.monotonic() > deadline:
                return value
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def run_harmonet(
    verb: str,
    data_dir: Path,
    *,
    env: Mapping[str, str] | None = None,
    stable_seconds: float = 1.0,
) -> Iterator[HarmonetProcess]:
    dicom_port, metrics_port = free_port(), free_port()
    full_env = {
        **os.environ,
        "HARMONET_DATA_DIR": str(data_dir),
        "HARMONET_DICOM_PORT": str(dicom_port),
        "HARMONET_DICOM_HOST": "127.0.0.1",
        "HARMONET_METRICS_PORT": str(metrics_port),
        "HARMONET_API_PORT": str(free_port()),
        "HARMONET_STABLE_SECONDS": str(stable_seconds),
        **(env or {}),
    }
    log_path = data_dir.parent / f"harmonet-{verb}-{dicom_port}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", verb],
            env=full_env,
            stdout=log,
            stderr=log,
        )
    handle = HarmonetProcess(proc, data_dir, dicom_port, metrics_port, log_path)
    try:
        if verb in ("up", "receiver"):
            wait_for_port(dicom_port, proc=proc)
        wait_for_port(metrics_port, proc=proc)
        yield handle
    except Exception:
        print(handle.log()[-5000:], file=sys.stderr)
        raise
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def storescu(
    port: int,
    paths: list[Path] | Path,
    *,
    calling_ae: str,
    called_ae: str = "HARMONET",
    extra: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    tool = require_tool("storescu")
    targets = [str(p) for p in (paths if isinstance(paths, list) else [paths])]
    return subprocess.run(
        [
            tool,
            "-aet",
            calling_ae,
            "-aec",
            called_ae,
            "+sd",
            "+r",
            *(extra or []),
            "127.0.0.1",
            str(port),
            *targets,
        ],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
