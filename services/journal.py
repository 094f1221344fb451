"""Event journal: every event on the bus appended to `<data dir>/events/events.jsonl`.

Consumes `#`; produces nothing. The audit trail of `harmonet up`, where the
in-process bus leaves no other trace; in a deployment the registry keeps events.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from services.bus import Delivery
from services.runner import Context, Service


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def append(self, line: bytes) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, line.rstrip(b"\n") + b"\n")
                os.fsync(fd)
            finally:
                os.close(fd)


async def attach(context: Context) -> None:
    """Subscribe the journal to every event on `context.bus`."""
    journal = Journal(context.settings.data_dir / "events" / "events.jsonl")

    async def record(delivery: Delivery) -> None:
        await asyncio.to_thread(journal.append, delivery.event.to_json())

    await context.bus.subscribe("journal", ["#"], record)


async def run(context: Context) -> None:
    await attach(context)
    await asyncio.Event().wait()


service = Service(name="journal", run=run)
