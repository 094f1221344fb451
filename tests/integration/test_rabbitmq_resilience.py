"""RabbitMQ adapter against a real broker: confirms, outages, reconnects, durable queues.

Outages are simulated inside the session's own vhost (closing its connections,
withdrawing its permissions), never by restarting the shared broker.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aio_pika
import pytest

from services.bus import Delivery, PublishError
from services.bus.rabbitmq import CONTENT_TYPE, RabbitMQBus, queue_name
from services.events import CloudEvent, schema_url

pytestmark = pytest.mark.integration

UNREACHABLE_URL = "amqp://guest:guest@127.0.0.1:1/"


def rabbitmqctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=False
    )


def make_event(routing_key: str = "study.received") -> CloudEvent:
    return CloudEvent(
        id=str(uuid.uuid4()),
        source="tests/integration",
        type=f"org.harmonet.{routing_key}",
        time=datetime.now(UTC),
        subject="2.25.99",
        dataschema=schema_url(routing_key),
        data={"study_uid": "2.25.99"},
    )


async def until(predicate: Callable[[], bool], *, within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"condition not met within {within}s"
        await asyncio.sleep(0.05)


async def publish_until_confirmed(bus: RabbitMQBus, event: CloudEvent) -> int:
    """Publish, retrying while the connection recovers; returns the failed attempts."""
    failures, deadline = 0, time.monotonic() + 30
    while True:
        try:
            await bus.publish(event)
            return failures
        except PublishError:
            failures += 1
            assert time.monotonic() < deadline, "broker never confirmed after recovery"
            await asyncio.sleep(0.2)


async def until_async(drain: Callable[[], Any], into: list[Any]) -> None:
    deadline = time.monotonic() + 20
    while not into:
        into.extend(await drain())
        assert into or time.monotonic() < deadline, "nothing arrived"
        await asyncio.sleep(0.05)


def close_vhost_connections(vhost: str) -> None:
    closed = rabbitmqctl("close_all_connections", "-p", vhost, "harmonet resilience test")
    assert closed.returncode == 0, closed.stderr


def queue() -> str:
    return f"resilience-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def buses(rabbitmq_url: str) -> AsyncIterator[Callable[..., RabbitMQBus]]:
    opened: list[RabbitMQBus] = []

    def factory(**options: Any) -> RabbitMQBus:
        options.setdefault("retry_delay_seconds", 0.0)
        bus = RabbitMQBus(rabbitmq_url, connection_name="harmonet-resilience", **options)
        opened.append(bus)
        return bus

    yield factory
    for bus in opened:
        await bus.close()


async def test_published_message_is_confirmed_persistent_and_typed(
    buses: Callable[..., RabbitMQBus], rabbitmq_url: str
) -> None:
    name, event = queue(), make_event()
    declaring = buses()

    async def ignore(delivery: Delivery) -> None:
        return None

    await declaring.subscribe(name, ["study.received"], ignore)
    await declaring.close()
    await buses().publish(event)  # returns only after the broker's confirm
    async with await aio_pika.connect(rabbitmq_url) as connection:
        channel = await connection.channel()
        live = await channel.get_queue(queue_name(name), ensure=True)
        message = await live.get(no_ack=True, timeout=5)
    assert message.body == event.to_json()
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert (message.content_type, message.message_id, message.type) == (
        CONTENT_TYPE,
        event.id,
        event.type,
    )
    assert message.routing_key == "study.received"


async def test_unreachable_broker_fails_fast() -> None:
    started = time.monotonic()
    with pytest.raises(PublishError):
        await RabbitMQBus(UNREACHABLE_URL, publish_timeout_seconds=3).publish(make_event())
    with pytest.raises(ConnectionError, match="cannot open the bus on RabbitMQ"):
        await RabbitMQBus(UNREACHABLE_URL, connect_timeout_seconds=3).connect()
    assert time.monotonic() - started < 8


async def test_silent_broker_times_out_without_leaking_tasks() -> None:
    """A peer that accepts TCP but never speaks AMQP must not hang `connect` or `publish`."""
    accepted: list[asyncio.StreamWriter] = []

    async def stay_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(stay_silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"amqp://guest:guest@127.0.0.1:{port}/"
    before = asyncio.all_tasks()
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionError):
            await RabbitMQBus(url, connect_timeout_seconds=1).connect()
        with pytest.raises(PublishError):
            await RabbitMQBus(url, connect_timeout_seconds=5, publish_timeout_seconds=1).publish(
                make_event()
            )
        assert time.monotonic() - started < 5
        await asyncio.sleep(0.1)
        assert asyncio.all_tasks() - before == set()
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_consumer_and_publisher_recover_after_connection_loss(
    buses: Callable[..., RabbitMQBus], rabbitmq_vhost: str
) -> None:
    bus, name, seen = buses(), queue(), []

    async def record(delivery: Delivery) -> None:
        seen.append(delivery.event.id)

    await bus.subscribe(name, ["study.received"], record)
    before, after = make_event(), make_event()
    await bus.publish(before)
    await until(lambda: seen == [before.id])
    close_vhost_connections(rabbitmq_vhost)
    await publish_until_confirmed(bus, after)
    await until(lambda: after.id in seen)  # the same subscription resumed consuming
    assert seen.count(after.id) == 1


async def test_in_flight_message_is_redelivered_after_connection_loss(
    buses: Callable[..., RabbitMQBus], rabbitmq_vhost: str
) -> None:
    bus, name, event = buses(), queue(), make_event()
    started, completed = asyncio.Event(), []

    async def stalls_first_time(delivery: Delivery) -> None:
        if not started.is_set():
            started.set()
            await asyncio.sleep(60)  # cut off by the connection loss
        completed.append(delivery.event.id)

    await bus.subscribe(name, ["study.received"], stalls_first_time)
    await bus.publish(event)
    await asyncio.wait_for(started.wait(), 10)
    close_vhost_connections(rabbitmq_vhost)
    await until(lambda: completed == [event.id])


async def test_publish_while_broker_refuses_raises_then_recovers(
    buses: Callable[..., RabbitMQBus], rabbitmq_vhost: str, rabbitmq_url: str
) -> None:
    bus, name, seen = buses(publish_timeout_seconds=2), queue(), []

    async def record(delivery: Delivery) -> None:
        seen.append(delivery.event.id)

    await bus.subscribe(name, ["study.received"], record)
    user = aio_pika.connection.make_url(rabbitmq_url).user or "guest"
    assert rabbitmqctl("clear_permissions", "-p", rabbitmq_vhost, user).returncode == 0
    try:
        close_vhost_connections(rabbitmq_vhost)
        await asyncio.sleep(1.5)  # reconnect attempts are being refused by now
        started = time.monotonic()
        with pytest.raises(PublishError, match="did not confirm within"):
            await bus.publish(make_event())
        assert time.monotonic() - started < 5
    finally:
        granted = rabbitmqctl("set_permissions", "-p", rabbitmq_vhost, user, ".*", ".*", ".*")
        assert granted.returncode == 0, granted.stderr
    event = make_event()
    await publish_until_confirmed(bus, event)
    await until(lambda: event.id in seen)


async def test_durable_queue_keeps_messages_while_consumer_is_down(
    buses: Callable[..., RabbitMQBus],
) -> None:
    name, events = queue(), [make_event() for _ in range(5)]

    async def ignore(delivery: Delivery) -> None:
        return None

    first_run = buses()
    await first_run.subscribe(name, ["study.received"], ignore)
    await first_run.close()  # the consuming service goes away
    publisher = buses()
    for event in events:
        await publisher.publish(event)
    await publisher.close()
    seen: list[str] = []

    async def record(delivery: Delivery) -> None:
        seen.append(delivery.event.id)

    await buses().subscribe(name, ["study.received"], record)  # a new replica starts
    await until(lambda: sorted(seen) == sorted(e.id for e in events))


async def test_message_rejected_outside_the_adapter_still_reaches_the_dlq(
    buses: Callable[..., RabbitMQBus], rabbitmq_url: str
) -> None:
    """The live queue's own x-dead-letter-exchange is the fallback path to the DLQ."""
    bus, name, event = buses(), queue(), make_event()

    async def ignore(delivery: Delivery) -> None:
        return None

    await bus.subscribe(name, ["study.received"], ignore)
    await bus.close()
    await bus.publish(event)
    async with await aio_pika.connect(rabbitmq_url) as connection:
        channel = await connection.channel()
        live = await channel.get_queue(queue_name(name), ensure=True)
        message = await live.get(timeout=5)
        await message.reject(requeue=False)
    letters: list[Any] = []
    await until_async(lambda: bus.dead_letters(name), letters)
    [letter] = letters
    assert letter.event == event and letter.attempts == 1
    assert letter.reason == "dead-lettered by the broker: rejected"
