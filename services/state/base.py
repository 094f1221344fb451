"""The shared state-store interface: a small, Redis-shaped key/value API.

Several processes (receiver workers, replicas) coordinate through it, so every
operation is atomic on its own. Keys are namespaced by the adapter's `prefix`.
Synchronous on purpose: pynetdicom handlers run in threads; asyncio code calls
it through `asyncio.to_thread`.
"""

from __future__ import annotations

from typing import Protocol


class StateError(Exception):
    """The state store is unreachable or refused the operation."""


class StateInUse(StateError):
    """The embedded state file is held by another process (`harmonet up`)."""


class StateStore(Protocol):
    def ping(self) -> None:
        """Raise `StateError` if the store cannot be reached."""

    def close(self) -> None: ...

    def get(self, key: str) -> bytes | None: ...

    def set(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> None: ...

    def set_if_absent(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> bool:
        """Set only when `key` does not exist; True if this call set it (a lock / claim)."""

    def delete_if_equal(self, key: str, value: bytes) -> bool:
        """Delete `key` only while it holds `value` (release a lock you own)."""

    def delete(self, key: str) -> None: ...

    def incr(self, key: str, amount: int = 1) -> int: ...

    def hset(self, key: str, mapping: dict[str, bytes]) -> None: ...

    def hgetall(self, key: str) -> dict[str, bytes]: ...

    def zadd(self, key: str, member: str, score: float) -> None:
        """Set `member`'s score (insert or update)."""

    def zscore(self, key: str, member: str) -> float | None: ...

    def zrange_by_score(self, key: str, max_score: float, *, limit: int = 100) -> list[str]:
        """Members with score <= `max_score`, lowest score first."""

    def zrem_if_score(self, key: str, member: str, score: float) -> bool:
        """Remove `member` only if its score is still exactly `score` (compare-and-delete)."""
