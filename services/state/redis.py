"""The Redis state store (redis-py, sync, thread-safe connection pool).

Every redis-py error becomes `StateError`; short socket timeouts make a dead
server fail fast instead of stalling a DICOM association. The two
compare-and-delete operations are Lua scripts, so they are atomic on the server.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from redis.typing import EncodableT

from services.state.base import StateError

SOCKET_TIMEOUT_SECONDS = 2.0
_DELETE_BATCH = 500

_DELETE_IF_EQUAL = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""

# Compares numerically (Redis may format a score differently than Python's repr);
# falls back to the text for values Lua cannot parse (e.g. 'inf' on some builds).
_ZREM_IF_SCORE = """
local current = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not current then
    return 0
end
local actual, expected = tonumber(current), tonumber(ARGV[2])
if (actual ~= nil and actual == expected) or (actual == nil and current == ARGV[2]) then
    return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""


def _ttl_ms(ttl_seconds: float | None) -> int | None:
    if ttl_seconds is None:
        return None
    if ttl_seconds <= 0:
        raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds}")
    return max(1, math.ceil(ttl_seconds * 1000))


def _bytes(value: object) -> bytes:
    if not isinstance(value, bytes):
        raise StateError(f"unexpected reply from Redis: {type(value).__name__}")
    return value


def _text(value: object) -> str:
    return _bytes(value).decode()


def _glob_escape(text: str) -> str:
    return "".join("\\" + char if char in "*?[]\\" else char for char in text)


class RedisStateStore:
    """`StateStore` on Redis; keys are `prefix + key`."""

    def __init__(self, url: str, *, prefix: str = "harmonet:") -> None:
        self._prefix = prefix
        try:
            self._client = redis.Redis.from_url(
                url,
                socket_timeout=SOCKET_TIMEOUT_SECONDS,
                socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
                health_check_interval=30,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
                client_name="harmonet",
            )
        except ValueError as exc:
            raise StateError(f"invalid Redis URL: {exc}") from exc
        self._delete_if_equal = self._client.register_script(_DELETE_IF_EQUAL)
        self._zrem_if_score = self._client.register_script(_ZREM_IF_SCORE)

    @contextmanager
    def _errors(self, operation: str) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            raise StateError(f"redis {operation} failed: {exc}") from exc

    def _key(self, key: str) -> str:
        return self._prefix + key

    def ping(self) -> None:
        with self._errors("PING"):
            self._client.ping()

    def close(self) -> None:
        self._client.close()

    def get(self, key: str) -> bytes | None:
        with self._errors("GET"):
            value = self._client.get(self._key(key))
        return None if value is None else _bytes(value)

    def set(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> None:
        ttl = _ttl_ms(ttl_seconds)
        with self._errors("SET"):
            self._client.set(self._key(key), value, px=ttl)

    def set_if_absent(self, key: str, value: bytes, *, ttl_seconds: float | None = None) -> bool:
        ttl = _ttl_ms(ttl_seconds)
        with self._errors("SET NX"):
            return bool(self._client.set(self._key(key), value, px=ttl, nx=True))

    def delete_if_equal(self, key: str, value: bytes) -> bool:
        with self._errors("delete_if_equal"):
            return bool(self._delete_if_equal(keys=[self._key(key)], args=[value]))

    def delete(self, key: str) -> None:
        with self._errors("DEL"):
            self._client.delete(self._key(key))

    def incr(self, key: str, amount: int = 1) -> int:
        with self._errors("INCRBY"):
            return int(self._client.incrby(self._key(key), amount))

    def hset(self, key: str, mapping: dict[str, bytes]) -> None:
        if not mapping:  # Redis refuses an empty HSET; nothing to do either way
            return
        with self._errors("HSET"):
            fields: dict[EncodableT, EncodableT] = {name: value for name, value in mapping.items()}
            self._client.hset(self._key(key), mapping=fields)

    def hgetall(self, key: str) -> dict[str, bytes]:
        with self._errors("HGETALL"):
            raw = self._client.hgetall(self._key(key))
        return {_text(field): _bytes(value) for field, value in raw.items()}

    def zadd(self, key: str, member: str, score: float) -> None:
        with self._errors("ZADD"):
            self._client.zadd(self._key(key), {member: score})

    def zscore(self, key: str, member: str) -> float | None:
        with self._errors("ZSCORE"):
            score = self._client.zscore(self._key(key), member)
        return None if score is None else float(score)

    def zrange_by_score(self, key: str, max_score: float, *, limit: int = 100) -> list[str]:
        if limit <= 0:
            return []
        with self._errors("ZRANGEBYSCORE"):
            members = self._client.zrangebyscore(
                self._key(key), "-inf", max_score, start=0, num=limit
            )
        return [_text(member) for member in members]

    def zrem_if_score(self, key: str, member: str, score: float) -> bool:
        with self._errors("zrem_if_score"):
            removed = self._zrem_if_score(keys=[self._key(key)], args=[member, repr(float(score))])
        return bool(removed)

    def flush_prefix(self) -> None:
        """Delete every key under this store's prefix (SCAN + UNLINK; never FLUSHDB)."""
        with self._errors("flush_prefix"):
            batch: list[bytes] = []
            for key in self._client.scan_iter(match=_glob_escape(self._prefix) + "*", count=1000):
                batch.append(key)
                if len(batch) >= _DELETE_BATCH:
                    self._client.unlink(*batch)
                    batch.clear()
            if batch:
                self._client.unlink(*batch)
