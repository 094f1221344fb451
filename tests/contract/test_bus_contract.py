"""One contract for every bus adapter: the in-process bus and RabbitMQ (session vhost).

Each test uses its own queue names; the RabbitMQ vhost is shared by the whole
session, so assertions only look at events the test itself published.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from services.bus import (
    DeadLetter,
    Delivery,
    InMemoryBus,
    PermanentError,
    RetryableError,
    make_bus,
)
from services.bus.memory import topic_matches
from services.bus.rabbitmq import RabbitMQBus
from services.events import CloudEvent, schema_url

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("memory-journal", id="memory-journal"),  # what `harmonet up` runs
    pytest.param("rabbitmq", id="rabbitmq", marks=pytest.mark.integration),
]

BusFactory = Callable[..., Any]  # InMemoryBus | RabbitMQBus: both have publish_raw


def make_event(routing_key: str = "study.received", **extensions: Any) -> CloudEvent:
    return CloudEvent(
        id=str(uuid.uuid4()),
        source="tests/contract",
        type=f"org.harmonet.{routing_key}",
        time=datetime.now(UTC),
        subject="2.25.1234",
        dataschema=schema_url(routing_key),
        data={"study_uid": "2.25.1234", "nested": {"values": [1, 2.5, None, "x"]}},
        **extensions,
    )


def queue() -> str:
    return f"contract-{uuid.uuid4().hex[:10]}"


async def until(predicate: Callable[[], bool], *, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.02)


class Inbox:
    """A handler that records deliveries of the events this test published."""

    def __init__(self, wanted: set[str] | None = None) -> None:
        self.deliveries: list[Delivery] = []
        self.wanted = wanted

    async def __call__(self, delivery: Delivery) -> None:
        if self.wanted is None or delivery.event.id in self.wanted:
            self.deliveries.append(delivery)

    @property
    def ids(self) -> list[str]:
        return [d.event.id for d in self.deliveries]


async def collect_dead_letters(bus: Any, name: str, count: int) -> list[DeadLetter]:
    letters: list[DeadLetter] = []

    async def drained() -> bool:
        letters.extend(await bus.dead_letters(name))
        return len(letters) >= count

    deadline = time.monotonic() + 15.0
    while not await drained():
        assert time.monotonic() < deadline, f"only {len(letters)} dead letters"
        await asyncio.sleep(0.05)
    return letters


@pytest.fixture(params=BACKENDS)
async def bus_factory(request: pytest.FixtureRequest) -> AsyncIterator[BusFactory]:
    url = request.getfixturevalue("rabbitmq_url") if request.param == "rabbitmq" else None
    buses: list[Any] = []

    def factory(*, max_attempts: int = 3, prefetch: int = 16) -> Any:
        bus: Any
        if request.param == "memory-journal":
            path = request.getfixturevalue("tmp_path") / f"bus-{len(buses)}" / "bus.jsonl"
            bus = InMemoryBus(max_attempts=max_attempts, prefetch=prefetch, journal_path=path)
        elif url is None:
            bus = InMemoryBus(max_attempts=max_attempts, prefetch=prefetch)
        else:
            bus = RabbitMQBus(
                url,
                max_attempts=max_attempts,
                prefetch=prefetch,
                connection_name="harmonet-contract",
                retry_delay_seconds=0.0,
            )
        buses.append(bus)
        return bus

    yield factory
    for bus in buses:
        await bus.close()


@pytest.fixture
async def bus(bus_factory: BusFactory) -> Any:
    bus = bus_factory()
    await bus.connect()
    return bus


async def test_round_trip_keeps_the_envelope_exactly(bus: Any) -> None:
    name, inbox = queue(), Inbox()
    await bus.subscribe(name, ["study.received"], inbox)
    event = make_event(traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    await bus.publish(event)
    await until(lambda: len(inbox.deliveries) == 1)
    delivery = inbox.deliveries[0]
    assert delivery.event == event
    assert delivery.event.to_json() == event.to_json()
    assert delivery.event is not event
    assert delivery.attempt == 1
    assert delivery.routing_key == "study.received"


ROUTING_TABLE: dict[str, set[str]] = {
    "study.*": {"study.received", "study.processed"},
    "#": {
        "study.received",
        "study.compliance.checked",
        "study.processed",
        "scanner.phantom.measured",
        "scanner.stability.alert",
    },
    "scanner.#": {"scanner.phantom.measured", "scanner.stability.alert"},
    "study.#": {"study.received", "study.compliance.checked", "study.processed"},
    "*.received": {"study.received"},
    "study.#.checked": {"study.compliance.checked"},
    "#.alert": {"scanner.stability.alert"},
    "*.*.*": {"study.compliance.checked", "scanner.phantom.measured", "scanner.stability.alert"},
    "registry.#": set(),
}


async def test_topic_patterns_route_like_amqp(bus: Any) -> None:
    keys = sorted(set().union(*ROUTING_TABLE.values()))
    events = {key: make_event(key) for key in keys}
    wanted = {event.id for event in events.values()}
    inboxes = {pattern: Inbox(wanted) for pattern in ROUTING_TABLE}
    for pattern, inbox in inboxes.items():
        await bus.subscribe(queue(), [pattern], inbox)
    for event in events.values():
        await bus.publish(event)
    await until(
        lambda: all(
            len(inboxes[p].deliveries) >= len(expected) for p, expected in ROUTING_TABLE.items()
        )
    )
    await asyncio.sleep(0.3)  # a wrongly routed message would arrive by now
    for pattern, expected in ROUTING_TABLE.items():
        got = sorted(d.routing_key for d in inboxes[pattern].deliveries)
        assert got == sorted(expected), pattern


def test_topic_matcher_edge_cases() -> None:
    assert topic_matches("study.#", "study")  # '#' matches zero words
    assert topic_matches("#.study.#", "study")
    assert topic_matches("#", "")
    assert not topic_matches("study.*", "study")
    assert not topic_matches("*", "study.received")
    assert topic_matches("study.*.#.done", "study.qc.done")
    assert not topic_matches("study.received", "study.receivedx")


async def test_several_patterns_on_one_queue_deliver_once(bus: Any) -> None:
    name = queue()
    event = make_event("study.received")
    inbox = Inbox({event.id})
    await bus.subscribe(name, ["study.*", "#.received", "#"], inbox)
    await bus.publish(event)
    await until(lambda: len(inbox.deliveries) >= 1)
    await asyncio.sleep(0.3)
    assert inbox.ids == [event.id]


async def test_unbound_key_is_dropped_and_earlier_messages_never_arrive(bus: Any) -> None:
    before, unbound, after = make_event(), make_event("registry.nobody"), make_event()
    await bus.publish(before)  # the queue does not exist yet
    await bus.publish(unbound)  # no queue is bound to this key: dropped, no error
    inbox = Inbox({before.id, unbound.id, after.id})
    await bus.subscribe(queue(), ["study.received", "registry.other"], inbox)
    await bus.publish(after)
    await until(lambda: len(inbox.deliveries) >= 1)
    await asyncio.sleep(0.3)
    assert inbox.ids == [after.id]


async def test_competing_consumers_share_one_queue(bus: Any) -> None:
    events = [make_event() for _ in range(20)]
    wanted = {event.id for event in events}
    first, second = Inbox(wanted), Inbox(wanted)
    name = queue()
    await bus.subscribe(name, ["study.received"], first)
    await bus.subscribe(name, ["study.received"], second)
    for event in events:
        await bus.publish(event)
    await until(lambda: len(first.deliveries) + len(second.deliveries) >= len(events))
    await asyncio.sleep(0.3)
    handled = first.ids + second.ids
    assert sorted(handled) == sorted(wanted)  # each exactly once
    assert first.deliveries and second.deliveries


async def test_every_queue_gets_its_own_copy(bus: Any) -> None:
    event = make_event("study.qc.completed")
    inboxes = [Inbox({event.id}) for _ in range(2)]
    for inbox in inboxes:
        await bus.subscribe(queue(), ["study.qc.completed"], inbox)
    await bus.publish(event)
    await until(lambda: all(inbox.deliveries for inbox in inboxes))
    await asyncio.sleep(0.2)
    assert [inbox.ids for inbox in inboxes] == [[event.id], [event.id]]


async def test_retryable_error_is_retried_then_dead_lettered(bus_factory: BusFactory) -> None:
    bus = bus_factory(max_attempts=3)
    name, event, attempts = queue(), make_event(), []

    async def always_busy(delivery: Delivery) -> None:
        attempts.append((delivery.attempt, delivery.routing_key))
        raise RetryableError("store briefly down")

    await bus.subscribe(name, ["study.received"], always_busy)
    await bus.publish(event)
    [letter] = await collect_dead_letters(bus, name, 1)
    assert attempts == [(1, "study.received"), (2, "study.received"), (3, "study.received")]
    assert letter.queue == name and letter.attempts == 3
    assert letter.event == event and letter.body == event.to_json()
    assert "RetryableError" in letter.reason and "store briefly down" in letter.reason


async def test_retryable_error_then_success_is_not_dead_lettered(bus_factory: BusFactory) -> None:
    bus = bus_factory(max_attempts=3)
    name, attempts = queue(), []

    async def flaky(delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt < 3:
            raise RetryableError("not yet")

    await bus.subscribe(name, ["study.received"], flaky)
    await bus.publish(make_event())
    await until(lambda: attempts == [1, 2, 3])
    await asyncio.sleep(0.3)
    assert attempts == [1, 2, 3]
    assert await bus.dead_letters(name) == []


@pytest.mark.parametrize("error", [ValueError("boom: bad series"), PermanentError("boom: bad")])
async def test_other_errors_dead_letter_at_once(bus: Any, error: Exception) -> None:
    name, event, calls = queue(), make_event(), []

    async def broken(delivery: Delivery) -> None:
        calls.append(delivery.attempt)
        raise error

    await bus.subscribe(name, ["study.received"], broken)
    await bus.publish(event)
    [letter] = await collect_dead_letters(bus, name, 1)
    assert calls == [1]
    assert letter.attempts == 1 and letter.event == event
    assert type(error).__name__ in letter.reason and "boom" in letter.reason


async def test_invalid_body_is_dead_lettered_without_calling_the_handler(bus: Any) -> None:
    name, inbox = queue(), Inbox()
    await bus.subscribe(name, ["study.received"], inbox)
    await bus.publish_raw("study.received", b"{not a cloud event")
    [letter] = await collect_dead_letters(bus, name, 1)
    assert letter.event is None and letter.body == b"{not a cloud event"
    assert "invalid CloudEvent" in letter.reason
    assert inbox.deliveries == []


async def test_prefetch_bounds_concurrent_handlers(bus_factory: BusFactory) -> None:
    bus = bus_factory(prefetch=3)
    running, peak, done = 0, 0, []

    async def slow(delivery: Delivery) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.1)
        running -= 1
        done.append(delivery.event.id)

    await bus.subscribe(queue(), ["study.received"], slow)
    for _ in range(12):
        await bus.publish(make_event())
    await until(lambda: len(done) == 12)
    assert peak == 3


async def test_messages_wait_in_a_declared_queue_without_consumer(bus: Any) -> None:
    name, event = queue(), make_event()
    old = Inbox({event.id})
    await bus.subscribe(name, ["study.received"], old)  # declares the queue
    await bus.close()  # no consumer any more; the queue stays
    await bus.connect()
    await bus.publish(event)
    await asyncio.sleep(0.3)
    assert old.deliveries == []
    new = Inbox({event.id})
    await bus.subscribe(name, ["study.received"], new)
    await until(lambda: new.ids == [event.id])


async def test_close_waits_for_in_flight_handlers(bus: Any) -> None:
    name, started, release, finished = queue(), asyncio.Event(), asyncio.Event(), []

    async def blocking(delivery: Delivery) -> None:
        started.set()
        await release.wait()
        finished.append(delivery.event.id)

    await bus.subscribe(name, ["study.received"], blocking)
    event = make_event()
    await bus.publish(event)
    await asyncio.wait_for(started.wait(), 15)
    closing = asyncio.create_task(bus.close())
    await asyncio.sleep(0.2)
    assert not closing.done()
    release.set()
    await asyncio.wait_for(closing, 15)
    assert finished == [event.id]
    await bus.close()  # idempotent
    # The message was acked: nothing comes back and nothing was dead-lettered.
    await bus.connect()
    later = Inbox({event.id})
    await bus.subscribe(name, ["study.received"], later)
    await asyncio.sleep(0.3)
    assert later.deliveries == []
    assert await bus.dead_letters(name) == []


def test_make_bus_without_url_is_in_process() -> None:
    bus = make_bus(amqp_url=None, max_attempts=2, prefetch=4, name="t")
    assert isinstance(bus, InMemoryBus)
    rabbit = make_bus(
        amqp_url="amqp://guest:guest@127.0.0.1:1/", max_attempts=2, prefetch=4, name="t"
    )
    assert isinstance(rabbit, RabbitMQBus)
