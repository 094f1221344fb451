"""The embedded state store that survives a restart: the in-process store plus an
append-only journal of its writes in the data dir (Redis' AOF, in miniature).

`harmonet up` uses it, so a study stored but not yet stable when the process died is still
pending after a restart, and revisions keep counting (an event id is never reused for new
content). Every write is appended under the store's lock, so the journal's order is the
order the writes took effect; it reaches the OS before the call returns (survives a crash
of the process; not fsynced per write, so a power cut may lose the last writes - the
receiver's blobs themselves are fsynced). On open the journal is replayed (a torn last line
is dropped) and compacted to a snapshot of the live keys, as it is when it grows past
`compact_after` writes. TTLs are kept as wall-clock deadlines. One process at a time: the
journal is locked (flock); a second opener gets `StateError`.
"""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

from services.appendlog import CorruptJournal, lock_exclusive, records, rewrite
from services.state.base import StateError, StateInUse
from services.state.memory import InMemoryStateStore

COMPACT_AFTER = 50_000


class FileStateStore(InMemoryStateStore):
    def __init__(self, path: Path, prefix: str = "harmonet:", *,
                 compact_after: int = COMPACT_AFTER) -> None:
        super().__init__(prefix=prefix)
        self._path = path
        self._compact_after = compact_after
        self._writes = 0
        guard = lock_exclusive(path)
        if guard is None:
            raise StateInUse(f"state store {path} is in use by another process (is `harmonet "
                             "up` running? stop it, or use HARMONET_REDIS_URL)")
        self._guard = guard
        self._replay()
        self._fd = -1
        self._compact()

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._guard >= 0:
                os.close(self._guard)
                self._guard = -1

    # --- writes: applied, then journalled, under one lock -----------------------------------

    def set(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> None:
        with self._lock:
            super().set(key, value, ttl_seconds=ttl_seconds)
            self._append("set", key, v=_b64(value), at=_wall(ttl_seconds))

    def set_if_absent(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> bool:
        with self._lock:
            done = super().set_if_absent(key, value, ttl_seconds=ttl_seconds)
            if done:
                self._append("set", key, v=_b64(value), at=_wall(ttl_seconds))
            return done

    def delete_if_equal(self, key: str, value: bytes) -> bool:
        with self._lock:
            done = super().delete_if_equal(key, value)
            if done:
                self._append("del", key)
            return done

    def delete(self, key: str) -> None:
        with self._lock:
            super().delete(key)
            self._append("del", key)

    def incr(self, key: str, amount: int = 1) -> int:
        with self._lock:
            result = super().incr(key, amount)
            self._append("incr", key, n=amount)
            return result

    def hset(self, key: str, mapping: dict[str, bytes]) -> None:
        with self._lock:
            super().hset(key, mapping)
            if mapping:
                self._append("hset", key, f={k: _b64(v) for k, v in mapping.items()})

    def zadd(self, key: str, member: str, score: float) -> None:
        with self._lock:
            super().zadd(key, member, score)
            self._append("zadd", key, m=member, s=float(score))

    def zrem_if_score(self, key: str, member: str, score: float) -> bool:
        with self._lock:
            done = super().zrem_if_score(key, member, score)
            if done:
                self._append("zrem", key, m=member, s=float(score))
            return done

    # --- journal ----------------------------------------------------------------------------

    def _append(self, op: str, key: str, **fields: Any) -> None:
        line = json.dumps({"op": op, "k": key, **fields}, separators=(",", ":")) + "\n"
        try:
            os.write(self._fd, line.encode())
        except OSError as exc:
            raise StateError(f"cannot journal state write: {exc}") from exc
        self._writes += 1
        if self._writes >= self._compact_after:
            self._compact()

    def _replay(self) -> None:
        try:
            for record in records(self._path):
                self._apply(record)
        except CorruptJournal as exc:
            raise StateError(str(exc)) from None

    def _apply(self, record: dict[str, Any]) -> None:
        op, key = record["op"], record["k"]
        base = InMemoryStateStore
        if op == "set":
            remaining = None if record.get("at") is None else record["at"] - time.time()
            if remaining is None or remaining > 0:
                base.set(self, key, _raw(record["v"]), ttl_seconds=remaining)
            else:
                base.delete(self, key)
        elif op == "del":
            base.delete(self, key)
        elif op == "incr":
            base.incr(self, key, int(record["n"]))
        elif op == "hset":
            base.hset(self, key, {k: _raw(v) for k, v in record["f"].items()})
        elif op == "zadd":
            base.zadd(self, key, record["m"], float(record["s"]))
        elif op == "zrem":
            base.zrem_if_score(self, key, record["m"], float(record["s"]))

    def _compact(self) -> None:
        """Rewrite the journal as the live keys only (`appendlog.rewrite`)."""
        with self._lock:
            now_wall, now_mono = time.time(), time.monotonic()
            live: list[dict[str, Any]] = []
            for full_key, entry in list(self._entries.items()):
                key = full_key[len(self._prefix):]
                at = None if entry.expires_at is None else now_wall + entry.expires_at - now_mono
                if at is None or at > now_wall:
                    live += _records(key, entry.kind, entry, at)
            self._fd = rewrite(self._path, live, old_fd=self._fd)
            self._writes = 0


def _records(key: str, kind: str, entry: Any, at: float | None) -> list[dict[str, Any]]:
    if kind == "string":
        return [{"op": "set", "k": key, "v": _b64(entry.value), "at": at}]
    if kind == "hash":
        return [{"op": "hset", "k": key, "f": {k: _b64(v) for k, v in entry.fields.items()}}]
    return [{"op": "zadd", "k": key, "m": m, "s": s} for m, s in entry.scores.items()]


def _wall(ttl_seconds: float | None) -> float | None:
    return None if ttl_seconds is None else time.time() + ttl_seconds


def _b64(value: bytes) -> str:
    return base64.b64encode(bytes(value)).decode("ascii")


def _raw(text: str) -> bytes:
    return base64.b64decode(text)
