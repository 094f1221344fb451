"""A lock shared by every replica, on the state store (set-if-absent with a TTL)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services.state.base import StateStore


class LockTimeout(Exception):
    """The lock stayed taken for longer than the caller would wait."""


@asynccontextmanager
async def state_lock(
    state: StateStore, key: str, *, ttl_seconds: float = 60, wait_seconds: float = 30
) -> AsyncIterator[None]:
    """Hold `key` while the block runs; the TTL frees it if the holder dies."""
    token = secrets.token_bytes(8)
    deadline = asyncio.get_running_loop().time() + wait_seconds
    while not await asyncio.to_thread(state.set_if_absent, key, token, ttl_seconds=ttl_seconds):
        if asyncio.get_running_loop().time() > deadline:
            raise LockTimeout(f"{key} stayed locked for {wait_seconds}s")
        await asyncio.sleep(0.05)
    try:
        yield
    finally:
        await asyncio.to_thread(state.delete_if_equal, key, token)
