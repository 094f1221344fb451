"""The metrics HTTP server of every service: /metrics, /healthz (alive), /readyz (set_ready)."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services import metrics
from tests.support.processes import free_port


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.fixture
def served_port() -> Iterator[int]:
    port = free_port()
    server = metrics.serve_metrics(port, host="127.0.0.1")
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()


def test_healthz_and_metrics(served_port: int) -> None:
    assert _get(served_port, "/healthz") == (200, "ok\n")
    status, body = _get(served_port, "/metrics")
    assert status == 200 and "harmonet_receiver_instances_stored_total" in body


def test_readyz_follows_set_ready(served_port: int) -> None:
    component = "ops_test_storage"
    try:
        assert _get(served_port, "/readyz")[0] == 200
        metrics.set_ready(component, False, "data dir full")
        assert _get(served_port, "/readyz") == (503, f"{component}: data dir full\n")
        assert _get(served_port, "/healthz")[0] == 200  # liveness never follows readiness
        _, body = _get(served_port, "/metrics")
        assert f'harmonet_component_ready{{component="{component}"}} 0.0' in body
    finally:
        metrics.set_ready(component, True)
    assert _get(served_port, "/readyz") == (200, "ready\n")


def test_data_dir_collector_reports_the_file_system(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    registry.register(metrics.DataDirCollector(tmp_path))
    free = registry.get_sample_value("harmonet_data_dir_free_bytes")
    size = registry.get_sample_value("harmonet_data_dir_size_bytes")
    assert free is not None and size is not None and 0 < free <= size


def test_data_dir_collector_is_silent_when_the_dir_is_missing(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    registry.register(metrics.DataDirCollector(tmp_path / "missing"))
    assert b"harmonet_data_dir" not in generate_latest(registry)
