"""The in-process bus of `harmonet up` across a crash: queues, their bindings and every
message a queue had not finished come back; what was finished does not."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.bus import Delivery, InMemoryBus
from services.bus.journal import BusJournal, BusJournalInUse
from services.events import CloudEvent, schema_url


def _event(n: int) -> bytes:
    return CloudEvent(
        id=f"event-{n}", source="tests/bus-journal", type="org.harmonet.study.received",
        time=datetime.now(UTC), subject=f"1.2.3.{n}", data={"study_uid": f"1.2.3.{n}"},
        dataschema=schema_url("study.received"),
    ).to_json()


def _crash(bus: InMemoryBus) -> None:
    """What a SIGKILL leaves: the journal as written, no `close()`, the lock released."""
    journal = bus._journal
    assert journal is not None
    journal.close()
    bus._journal = None


async def test_unfinished_messages_come_back_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "bus" / "bus.jsonl"
    bus = InMemoryBus(journal_path=path)
    handled: list[str] = []
    stuck = asyncio.Event()

    async def qc(delivery: Delivery) -> None:
        if delivery.event.subject == "1.2.3.2":
            await stuck.wait()  # killed while working on it
        handled.append(delivery.event.subject or "")

    async def registry(delivery: Delivery) -> None:
        handled.append(f"registry {delivery.event.subject}")

    await bus.subscribe("qc", ["study.received"], qc)
    await bus.subscribe("registry", ["#"], registry)
    await bus.subscribe("idle", ["study.received"], qc)
    bus._queues["idle"].handlers.clear()  # a queue whose consumer is not running
    for n in (1, 2):
        await bus.publish_raw("study.received", _event(n))
    await asyncio.sleep(0.1)
    assert sorted(handled) == ["1.2.3.1", "registry 1.2.3.1", "registry 1.2.3.2"]
    _crash(bus)

    again = InMemoryBus(journal_path=path)
    assert set(again._queues) == {"qc", "registry", "idle"}  # declared again, bound again
    redelivered: list[tuple[str, str]] = []

    async def record(queue: str) -> None:
        async def handler(delivery: Delivery) -> None:
            redelivered.append((queue, delivery.event.subject or ""))
        await again.subscribe(queue, ["study.received"], handler)

    for queue in ("qc", "registry", "idle"):
        await record(queue)
    await again.drain()
    assert sorted(redelivered) == [("idle", "1.2.3.1"), ("idle", "1.2.3.2"), ("qc", "1.2.3.2")]
    await again.close()
    stuck.set()

    # finished everywhere now: a third start has nothing to deliver, and the journal was
    # compacted down to the bindings
    third = InMemoryBus(journal_path=path)
    assert all(q.pending.empty() for q in third._queues.values())
    assert {json.loads(line)["op"] for line in path.read_bytes().splitlines()} == {"bind"}
    await third.close()


async def test_a_message_for_a_queue_without_consumer_waits_across_restarts(
    tmp_path: Path,
) -> None:
    """`harmonet import` with `up` stopped: its events reach `up`'s services at the next
    start, because the queues were declared (bound) by an earlier `up`."""
    path = tmp_path / "bus.jsonl"
    up = InMemoryBus(journal_path=path)

    async def ignore(delivery: Delivery) -> None:
        return None

    await up.subscribe("compliance", ["study.received"], ignore)
    await up.close()
    importer = InMemoryBus(journal_path=path)
    await importer.publish_raw("study.received", _event(7))
    await importer.close()
    restarted = InMemoryBus(journal_path=path)
    seen: list[str] = []

    async def compliance(delivery: Delivery) -> None:
        seen.append(delivery.event.subject or "")

    await restarted.subscribe("compliance", ["study.received"], compliance)
    await restarted.drain()
    assert seen == ["1.2.3.7"]
    await restarted.close()


def test_one_process_at_a_time_and_a_torn_last_line_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "bus.jsonl"
    first = BusJournal(path)
    with pytest.raises(BusJournalInUse, match="in use by another process"):
        BusJournal(path)
    first.bound("qc", {"study.received"})
    first.routed("study.received", b"{}", ["qc"])
    first.close()
    with path.open("ab") as journal:
        journal.write(b'{"op":"done","n":1,"q":"q')  # the crash cut this write
    second = BusJournal(path)
    assert second.backlog() == {"qc": [(1, "study.received", b"{}")]}
    second.close()
