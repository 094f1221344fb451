"""The durable half of the in-process bus of `harmonet up`: what RabbitMQ's durable queues
and persistent messages give a deployment.

`<data dir>/bus/bus.jsonl` is an append-only journal of three records: a queue's bindings
(`bind`), a message routed to queues (`route`, with its body) and a queue done with a
message (`done`: handled, or dead-lettered). On open it is replayed: the queues are declared
again with their bindings and every message some queue had not finished is queued for it
again, so a SIGKILL or a stop with work in flight loses nothing (consumers are idempotent,
as on RabbitMQ, where a delivery unacknowledged at a crash comes again). The journal is
then compacted to the bindings and the unfinished messages, as it is when it grows past
`compact_after` records. Like the embedded state journal it is not fsynced per record (a
process crash loses nothing; a power cut may lose the last records), and one process at a
time holds it (flock).
"""

from __future__ import annotations

import base64
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.appendlog import lock_exclusive, records, rewrite

COMPACT_AFTER = 20_000


class BusJournalInUse(RuntimeError):
    """Another process (`harmonet up`) holds the bus journal."""


@dataclass
class Unfinished:
    routing_key: str
    body: bytes
    queues: set[str] = field(default_factory=set)


class BusJournal:
    def __init__(self, path: Path, *, compact_after: int = COMPACT_AFTER) -> None:
        self._path = path
        self._compact_after = compact_after
        self._lock = threading.Lock()
        self._bindings: dict[str, set[str]] = {}
        self._unfinished: dict[int, Unfinished] = {}
        self._seq = 0
        self._writes = 0
        self._fd = -1
        guard = lock_exclusive(path)
        if guard is None:
            raise BusJournalInUse(f"bus journal {path} is in use by another process (is "
                                  "`harmonet up` running? or use HARMONET_AMQP_URL)")
        self._guard = guard
        for record in records(path):
            self._apply(record)
        self._compact()

    # --- what the bus asks -------------------------------------------------------------

    def bindings(self) -> dict[str, set[str]]:
        return {queue: set(patterns) for queue, patterns in self._bindings.items()}

    def backlog(self) -> dict[str, list[tuple[int, str, bytes]]]:
        """Per queue, the messages it has not finished, oldest first."""
        found: dict[str, list[tuple[int, str, bytes]]] = {}
        for seq in sorted(self._unfinished):
            message = self._unfinished[seq]
            for queue in sorted(message.queues):
                found.setdefault(queue, []).append((seq, message.routing_key, message.body))
        return found

    def bound(self, queue: str, patterns: set[str]) -> None:
        with self._lock:
            new = patterns - self._bindings.get(queue, set())
            if new:
                self._bindings.setdefault(queue, set()).update(new)
                self._append({"op": "bind", "q": queue, "p": sorted(new)})

    def routed(self, routing_key: str, body: bytes, queues: list[str]) -> int:
        with self._lock:
            self._seq += 1
            self._unfinished[self._seq] = Unfinished(routing_key, body, set(queues))
            self._append({"op": "route", "n": self._seq, "rk": routing_key, "q": queues,
                          "b": base64.b64encode(body).decode()})
            return self._seq

    def done(self, seq: int, queue: str) -> None:
        with self._lock:
            message = self._unfinished.get(seq)
            if message is None or queue not in message.queues:
                return
            message.queues.discard(queue)
            if not message.queues:
                del self._unfinished[seq]
            self._append({"op": "done", "n": seq, "q": queue})

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._guard >= 0:
                os.close(self._guard)  # releases the flock
                self._guard = -1

    # --- the file ----------------------------------------------------------------------

    def _append(self, record: dict[str, Any]) -> None:
        if self._fd < 0:
            raise RuntimeError(f"bus journal {self._path} is closed")
        os.write(self._fd, json.dumps(record, separators=(",", ":")).encode() + b"\n")
        self._writes += 1
        if self._writes >= self._compact_after:
            self._compact()

    def _apply(self, record: dict[str, Any]) -> None:
        op = record.get("op")
        if op == "bind":
            self._bindings.setdefault(str(record["q"]), set()).update(record["p"])
        elif op == "route":
            seq = int(record["n"])
            self._seq = max(self._seq, seq)
            self._unfinished[seq] = Unfinished(str(record["rk"]), base64.b64decode(record["b"]),
                                               set(record["q"]))
        elif op == "done":
            message = self._unfinished.get(int(record["n"]))
            if message is not None:
                message.queues.discard(str(record["q"]))
                if not message.queues:
                    del self._unfinished[int(record["n"])]

    def _compact(self) -> None:
        """Rewrite as the bindings and the unfinished messages (`appendlog.rewrite`)."""
        binds = [{"op": "bind", "q": queue, "p": sorted(patterns)}
                 for queue, patterns in sorted(self._bindings.items())]
        routes = [{"op": "route", "n": seq, "rk": message.routing_key,
                   "q": sorted(message.queues), "b": base64.b64encode(message.body).decode()}
                  for seq, message in sorted(self._unfinished.items())]
        self._fd = rewrite(self._path, [*binds, *routes], old_fd=self._fd)
        self._writes = 0
