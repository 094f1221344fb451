"""`harmonet reprocess` with a broker: the command publishes itself on RabbitMQ, with the
revisions the receiver recorded in Redis."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import aio_pika
import pytest

from services.synthetic import small_study, write_study
from tests.conftest import unique_name
from tests.support.processes import require_tool, run_harmonet, storescu

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


async def _next(queue: aio_pika.abc.AbstractQueue, seconds: float = 30) -> dict[str, object]:
    async with asyncio.timeout(seconds):
        async with queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                body: dict[str, object] = json.loads(message.body)
                return body
    raise AssertionError("no message")


def _reprocess(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", "reprocess", *args],
                          env={**os.environ, "HARMONET_LOG_LEVEL": "WARNING", **env},
                          capture_output=True, text=True, timeout=120, check=False)


async def test_reprocess_publishes_the_next_revision_on_rabbitmq(
    tmp_path: Path, rabbitmq_url: str, redis_url: str, redis_prefix: str
) -> None:
    require_tool("storescu")
    write_study(small_study("reprocess-rabbit"), tmp_path / "study")
    data = tmp_path / "data"
    env = {"HARMONET_AMQP_URL": rabbitmq_url, "HARMONET_REDIS_URL": redis_url,
           "HARMONET_STATE_PREFIX": redis_prefix + unique_name("reprocess-") + ":",
           "HARMONET_DATA_DIR": str(data)}
    connection = await aio_pika.connect_robust(rabbitmq_url)
    try:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            "harmonet.events", aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(unique_name("test-reprocess-"), exclusive=True)
        await queue.bind(exchange, routing_key="study.received")
        with run_harmonet("receiver", data, env=env) as receiver:
            pushed = await asyncio.to_thread(storescu, receiver.dicom_port, tmp_path / "study",
                                             calling_ae="MILANPRISMA")
            assert pushed.returncode == 0, pushed.stderr
            first = await _next(queue)
            study_uid = str(first["subject"])
            done = await asyncio.to_thread(_reprocess, env, "--study", study_uid,
                                           "--run-id", "model-v2")
            assert done.returncode == 0, done.stderr
            second = await _next(queue)
            retried = await asyncio.to_thread(_reprocess, env, "--study", study_uid,
                                              "--run-id", "model-v2")
            assert retried.returncode == 0 and "same event id" in retried.stdout
            third = await _next(queue)
    finally:
        await connection.close()
    first_data, second_data = first["data"], second["data"]
    assert isinstance(first_data, dict) and isinstance(second_data, dict)
    assert (first_data["revision"], second_data["revision"]) == (1, 2)
    assert second_data["series"] == first_data["series"]
    assert str(second["source"]).startswith("harmonet/reprocess/")
    assert third["id"] == second["id"]  # a retried run: the same fact, consumers drop it
