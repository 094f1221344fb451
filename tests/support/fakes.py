"""Hand-written fakes of our own interfaces, and readers of what `harmonet up` leaves behind."""

from __future__ import annotations

import time
from pathlib import Path

from services.bus import InMemoryBus, PublishError
from services.events import CloudEvent


class RecordingBus(InMemoryBus):
    """Keeps what is published instead of routing it; `fail=True` plays a dead broker."""

    def __init__(self, *, fail: bool = False) -> None:
        super().__init__()
        self.events: list[CloudEvent] = []
        self.fail = fail

    async def publish(self, event: CloudEvent) -> None:
        if self.fail:
            raise PublishError("broker down")
        self.events.append(event)

    def of(self, routing_key: str) -> list[CloudEvent]:
        return [e for e in self.events if e.routing_key == routing_key]


def journal_events(data_dir: Path, routing_key: str) -> list[CloudEvent]:
    """The events of one routing key in `<data dir>/events/events.jsonl`, in order."""
    path = data_dir / "events" / "events.jsonl"
    lines = path.read_bytes().splitlines() if path.exists() else []
    events = [CloudEvent.from_json(line) for line in lines if line]
    return [e for e in events if e.routing_key == routing_key]


def wait_for_journal(
    data_dir: Path, routing_key: str, count: int = 1, timeout: float = 60
) -> list[CloudEvent]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = journal_events(data_dir, routing_key)
        if len(events) >= count:
            return events
        time.sleep(0.2)
    raise AssertionError(f"{count} {routing_key} events not journalled within {timeout}s")
