"""The shared state store: interface and the adapter chosen from settings."""

from __future__ import annotations

from services.state.base import StateError, StateStore
from services.state.memory import InMemoryStateStore

__all__ = ["InMemoryStateStore", "StateError", "StateStore", "make_state"]


def make_state(*, redis_url: str | None, prefix: str = "harmonet:") -> StateStore:
    """Redis when `redis_url` is set (`HARMONET_REDIS_URL`), else the in-process store."""
    if redis_url is None:
        return InMemoryStateStore(prefix=prefix)
    # Imported here so `harmonet up` never loads redis-py.
    from services.state.redis import RedisStateStore

    return RedisStateStore(redis_url, prefix=prefix)
