"""The in-process state store: Redis semantics (types, TTLs, ordering) behind one lock.

Used by `harmonet up` and by tests. Expiry runs on the monotonic clock, so a
wall-clock jump never expires or resurrects a key.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from services.state.base import StateError


@dataclass
class _Entry:
    kind: str  # "string" | "hash" | "zset", like Redis' TYPE
    expires_at: float | None = None
    value: bytes = b""
    fields: dict[str, bytes] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)


def ttl_to_deadline(ttl_seconds: float | None) -> float | None:
    if ttl_seconds is None:
        return None
    if ttl_seconds <= 0:
        raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
    return time.monotonic() + ttl_seconds


class InMemoryStateStore:
    """`StateStore` in one process; thread-safe, every operation atomic."""

    def __init__(self, prefix: str = "harmonet:") -> None:
        self._prefix = prefix
        self._entries: dict[str, _Entry] = {}
        # Re-entrant: the file-backed subclass journals inside the same critical section.
        self._lock = threading.RLock()

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None

    def get(self, key: str) -> bytes | None:
        with self._lock:
            entry = self._live(key, "string")
            return None if entry is None else entry.value

    def set(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> None:
        deadline = ttl_to_deadline(ttl_seconds)
        with self._lock:
            self._entries[self._prefix + key] = _Entry("string", deadline, bytes(value))

    def set_if_absent(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> bool:
        deadline = ttl_to_deadline(ttl_seconds)
        with self._lock:
            if self._live(key, None) is not None:
                return False
            self._entries[self._prefix + key] = _Entry("string", deadline, bytes(value))
            return True

    def delete_if_equal(self, key: str, value: bytes) -> bool:
        with self._lock:
            entry = self._live(key, "string")
            if entry is None or entry.value != value:
                return False
            del self._entries[self._prefix + key]
            return True

    def delete(self, key: str) -> None:
        with self._lock:
            self._entries.pop(self._prefix + key, None)

    def incr(self, key: str, amount: int = 1) -> int:
        with self._lock:
            entry = self._live(key, "string")
            current = 0 if entry is None else _as_int(entry.value)
            result = current + amount
            if entry is None:
                self._entries[self._prefix + key] = _Entry("string", value=b"%d" % result)
            else:  # like Redis INCR, keeps the key's TTL
                entry.value = b"%d" % result
            return result

    def hset(self, key: str, mapping: dict[str, bytes]) -> None:
        if not mapping:  # Redis refuses an empty HSET; nothing to do either way
            return
        with self._lock:
            entry = self._live(key, "hash")
            if entry is None:
                entry = self._entries[self._prefix + key] = _Entry("hash")
            entry.fields.update({name: bytes(value) for name, value in mapping.items()})

    def hgetall(self, key: str) -> dict[str, bytes]:
        with self._lock:
            entry = self._live(key, "hash")
            return {} if entry is None else dict(entry.fields)

    def zadd(self, key: str, member: str, score: float) -> None:
        with self._lock:
            entry = self._live(key, "zset")
            if entry is None:
                entry = self._entries[self._prefix + key] = _Entry("zset")
            entry.scores[member] = float(score)

    def zscore(self, key: str, member: str) -> float | None:
        with self._lock:
            entry = self._live(key, "zset")
            return None if entry is None else entry.scores.get(member)

    def zrange_by_score(self, key: str, max_score: float, *, limit: int = 100) -> list[str]:
        with self._lock:
            entry = self._live(key, "zset")
            if entry is None or limit <= 0:
                return []
            members = entry.scores
            # Redis orders equal scores by the member's bytes.
            ordered = sorted(members.items(), key=lambda item: (item[1], item[0].encode()))
            return [member for member, score in ordered if score <= max_score][:limit]

    def zrem_if_score(self, key: str, member: str, score: float) -> bool:
        with self._lock:
            entry = self._live(key, "zset")
            members = None if entry is None else entry.scores
            if members is None or members.get(member) != float(score):
                return False
            del members[member]
            if not members:  # Redis deletes an emptied sorted set
                del self._entries[self._prefix + key]
            return True

    def _live(self, key: str, kind: str | None) -> _Entry | None:
        """The unexpired entry at `key`; `StateError` if it holds another type."""
        full_key = self._prefix + key
        entry = self._entries.get(full_key)
        if entry is None:
            return None
        if entry.expires_at is not None and entry.expires_at <= time.monotonic():
            del self._entries[full_key]
            return None
        if kind is not None and entry.kind != kind:
            raise StateError(f"WRONGTYPE: {key!r} holds a {entry.kind}, not a {kind}")
        return entry


def _as_int(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:
        raise StateError("value is not an integer or out of range") from None
