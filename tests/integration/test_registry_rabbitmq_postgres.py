"""`harmonet registry` on the real RabbitMQ and PostgreSQL: events in (each delivered
twice) → rows and API answers, no duplicates, `study.processed` once per revision."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from services.bus.rabbitmq import RabbitMQBus
from tests.integration.test_receiver_rabbitmq_redis import _bind_subscriber
from tests.support.processes import free_port, run_harmonet, wait_for_port
from tests.unit.registry import factories as f

pytestmark = [pytest.mark.integration]


def _get(port: int, path: str, token: str) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


async def _collect(queue: aio_pika.abc.AbstractQueue, seconds: float) -> list[dict[str, Any]]:
    bodies: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(seconds), queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                bodies.append(json.loads(message.body))
    except TimeoutError:
        pass
    return bodies


async def test_registry_records_events_once_and_serves_them(
    tmp_path: Path, rabbitmq_url: str, own_postgres_url: str
) -> None:
    api_port = free_port()
    env = {"HARMONET_AMQP_URL": rabbitmq_url, "HARMONET_DATABASE_URL": own_postgres_url,
           "HARMONET_API_PORT": str(api_port), "HARMONET_API_HOST": "127.0.0.1"}
    created = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "services.cli", "token", "create", "--site", "milan",
         "--role", "viewer"], env={**os.environ, **env,
                                   "HARMONET_DATA_DIR": str(tmp_path / "data")},
        capture_output=True, text=True, timeout=60, check=False)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    connection, queue = await _bind_subscriber(rabbitmq_url, "study.processed")
    publisher = RabbitMQBus(rabbitmq_url, max_attempts=3, prefetch=8, connection_name="test")
    await publisher.connect()
    try:
        with run_harmonet("registry", tmp_path / "data", env=env):
            wait_for_port(api_port, timeout=30)
            uid = "5.5.5"
            events = [*f.study_events(uid), f.phantom("5.5.9"), f.alert("5.5.9"),
                      f.configuration_changed(uid)]
            for event in [*events, *events]:
                await publisher.publish(event)
            first = await _collect(queue, seconds=8)
            assert [(e["subject"], e["data"]["revision"]) for e in first] == [(uid, 1)]
            second = [f.received(uid, revision=2), f.compliance(uid, revision=2),
                      f.qc(uid, revision=2), f.harmonized(uid, revision=2)]
            for event in [*second, *reversed(second)]:
                await publisher.publish(event)
            later = await _collect(queue, seconds=8)
            assert [(e["subject"], e["data"]["revision"]) for e in later] == [(uid, 2)]

            studies = await asyncio.to_thread(_get, api_port, "/api/v1/studies", token)
            assert studies["total"] == 1 and studies["items"][0]["revision"] == 2
            assert studies["items"][0]["processed"] is True
            series = await asyncio.to_thread(_get, api_port, f"/api/v1/series?study_uid={uid}",
                                             token)
            assert series["total"] == 2
            detail = await asyncio.to_thread(_get, api_port, f"/api/v1/studies/{uid}", token)
            assert len(detail["compliance"]) == 4 and len(detail["qc"]) == 4
            assert [r["revision"] for r in detail["revisions"]] == [1, 2]
            phantom = await asyncio.to_thread(_get, api_port, "/api/v1/phantom", token)
            alerts = await asyncio.to_thread(_get, api_port, "/api/v1/alerts", token)
            assert phantom["total"] == 1 and alerts["total"] == 1
            scanner = await asyncio.to_thread(_get, api_port, "/api/v1/scanners/milan-prisma",
                                              token)
            assert len(scanner["changes"]) == 1
            ready = await asyncio.to_thread(_get, api_port, "/readyz", token)
            assert ready["checks"] == {"database": "ok", "bus": "ok"}
    finally:
        await publisher.close()
        await connection.close()
