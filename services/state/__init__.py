"""The shared state store: interface and the adapter chosen from settings."""

from __future__ import annotations

from pathlib import Path

from services.state.base import StateError, StateInUse, StateStore
from services.state.memory import InMemoryStateStore

__all__ = ["InMemoryStateStore", "StateError", "StateInUse", "StateStore", "make_state"]


def make_state(
    *, redis_url: str | None, prefix: str = "harmonet:", path: Path | None = None
) -> StateStore:
    """Redis when `redis_url` is set (`HARMONET_REDIS_URL`); else the in-process store,
    journalled to `path` when one is given (what `harmonet up` does: it survives restarts)."""
    if redis_url is None:
        if path is not None:
            from services.state.file import FileStateStore

            return FileStateStore(path, prefix=prefix)
        return InMemoryStateStore(prefix=prefix)
    # Imported here so `harmonet up` never loads redis-py.
    from services.state.redis import RedisStateStore

    return RedisStateStore(redis_url, prefix=prefix)
