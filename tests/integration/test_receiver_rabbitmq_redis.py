"""`harmonet receiver` against the real RabbitMQ and Redis: a subscriber bound to
`harmonet.events` receives a valid `org.harmonet.study.received` CloudEvent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from urllib.parse import unquote

import aio_pika
import pytest

from services.events import CloudEvent, StudyReceived
from services.synthetic import small_study, write_study
from tests.conftest import unique_name
from tests.support.processes import require_tool, run_harmonet, storescu

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


async def _bind_subscriber(
    url: str, pattern: str = "study.#"
) -> tuple[aio_pika.abc.AbstractConnection, aio_pika.abc.AbstractQueue]:
    connection = await aio_pika.connect_robust(url)
    channel = await connection.channel()
    exchange = await channel.declare_exchange(
        "harmonet.events", aio_pika.ExchangeType.TOPIC, durable=True
    )
    queue = await channel.declare_queue(unique_name("test-subscriber-"), exclusive=True)
    await queue.bind(exchange, routing_key=pattern)
    return connection, queue


async def _next_message(
    queue: aio_pika.abc.AbstractQueue, seconds: float
) -> aio_pika.abc.AbstractIncomingMessage:
    async with asyncio.timeout(seconds):
        async with queue.iterator() as messages:
            async for message in messages:
                await message.ack()
                return message
    raise AssertionError("no message")


def _env(rabbitmq_url: str, redis_url: str, redis_prefix: str, **extra: str) -> dict[str, str]:
    return {
        "HARMONET_AMQP_URL": rabbitmq_url,
        "HARMONET_REDIS_URL": redis_url,
        "HARMONET_STATE_PREFIX": redis_prefix + unique_name("receiver-") + ":",
        **extra,
    }


async def test_receiver_publishes_study_received_on_rabbitmq(
    tmp_path: Path, rabbitmq_url: str, redis_url: str, redis_prefix: str
) -> None:
    require_tool("storescu")
    files = tmp_path / "study"
    write_study(
        small_study("integration-rabbit", t1_slices=30, epi_slices=10, epi_volumes=5), files
    )
    connection, queue = await _bind_subscriber(rabbitmq_url, "study.received")
    try:
        env = _env(rabbitmq_url, redis_url, redis_prefix)
        with run_harmonet("receiver", tmp_path / "data", env=env) as receiver:
            pushed = await asyncio.to_thread(
                storescu, receiver.dicom_port, files, calling_ae="MILANPRISMA"
            )
            assert pushed.returncode == 0, pushed.stderr
            message = await _next_message(queue, seconds=30)
            # A second push of the same study: no second revision on the exchange.
            await asyncio.to_thread(storescu, receiver.dicom_port, files, calling_ae="MILANPRISMA")
            await asyncio.sleep(3)
            assert await queue.get(fail=False) is None
    finally:
        await connection.close()
    assert message.routing_key == "study.received"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    body = json.loads(message.body)
    event = CloudEvent.model_validate(body)
    assert event.type == "org.harmonet.study.received"
    assert message.message_id == event.id
    data = event.parsed_data()
    assert isinstance(data, StudyReceived)
    assert data.instance_count == 80 and data.revision == 1
    assert sorted(s.instance_count for s in data.series) == [30, 50]


async def test_two_receiver_workers_share_one_port_and_one_study(
    tmp_path: Path, rabbitmq_url: str, redis_url: str, redis_prefix: str
) -> None:
    storescu_path = require_tool("storescu")
    files = write_study(
        small_study("integration-workers", t1_slices=40, epi_slices=10, epi_volumes=4),
        tmp_path / "study",
    )
    env = _env(rabbitmq_url, redis_url, redis_prefix, HARMONET_RECEIVER_WORKERS="2")
    connection, queue = await _bind_subscriber(rabbitmq_url)
    try:
        with run_harmonet("receiver", tmp_path / "data", env=env) as receiver:
            pushes = [
                await asyncio.create_subprocess_exec(
                    storescu_path,
                    "-aet",
                    "MILANPRISMA",
                    "-aec",
                    "HARMONET",
                    "127.0.0.1",
                    str(receiver.dicom_port),
                    *map(str, files[i::4]),
                    env={"TCP_NODELAY": "1"},
                )
                for i in range(4)
            ]
            assert [await p.wait() for p in pushes] == [0, 0, 0, 0]
            message = await _next_message(queue, seconds=30)
            await asyncio.sleep(3)
            assert await queue.get(fail=False) is None  # one study, one event, one worker
            assert receiver.metric_value("harmonet_receiver_instances_stored_total") == len(files)
            assert len(list((receiver.data_dir / "dicom").rglob("*.dcm"))) == len(files)
    finally:
        await connection.close()
    data = CloudEvent.from_json(message.body).parsed_data()
    assert isinstance(data, StudyReceived) and data.instance_count == len(files)


async def test_dead_broker_loses_nothing_and_publishes_when_back(
    tmp_path: Path, rabbitmq_url: str, redis_url: str, redis_prefix: str
) -> None:
    """The broker refuses the receiver (its user does not exist yet); the pushed study is
    stored all the same and published once the broker lets the receiver in."""
    from urllib.parse import urlsplit, urlunsplit

    from tests.conftest import rabbitmqctl

    require_tool("storescu")
    user, password = unique_name("harmonet-late-"), "late-password"
    parts = urlsplit(rabbitmq_url)
    netloc = f"{user}:{password}@{parts.hostname}:{parts.port or 5672}"
    late_url = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    vhost = unquote(parts.path.lstrip("/"))
    files = tmp_path / "study"
    write_study(small_study("integration-late", t1_slices=5, epi_slices=2, epi_volumes=2), files)
    env = _env(rabbitmq_url, redis_url, redis_prefix)
    env["HARMONET_AMQP_URL"] = late_url
    connection, queue = await _bind_subscriber(rabbitmq_url)
    try:
        with run_harmonet("receiver", tmp_path / "data", env=env) as receiver:
            pushed = await asyncio.to_thread(
                storescu, receiver.dicom_port, files, calling_ae="MILANPRISMA"
            )
            assert pushed.returncode == 0, pushed.stderr
            assert len(list((receiver.data_dir / "dicom").rglob("*.dcm"))) == 9
            await asyncio.sleep(3)  # stable, but the broker refuses: the study stays pending
            assert "not confirmed" in receiver.log()
            assert await queue.get(fail=False) is None
            rabbitmqctl("add_user", user, password)
            rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
            message = await _next_message(queue, seconds=60)
    finally:
        await connection.close()
        rabbitmqctl("delete_user", user)
    data = CloudEvent.from_json(message.body).parsed_data()
    assert isinstance(data, StudyReceived) and data.instance_count == 9
