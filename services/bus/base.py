"""The bus interface every service talks to; adapters live beside it.

Exceptions a handler raises are mapped to outcomes here and only here:

    Exception
    ├── RetryableError      → requeued, up to `max_attempts` deliveries, then dead-lettered
    ├── PermanentError      → dead-lettered at once, reason logged
    └── anything else       → treated as permanent (dead-lettered), reason logged
    PublishError            ← raised by `publish` when the broker did not confirm
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.events import CloudEvent

EXCHANGE = "harmonet.events"
DEAD_LETTER_EXCHANGE = "harmonet.dead-letter"


class RetryableError(Exception):
    """A transient failure (a store or a peer briefly down): try the message again."""


class PermanentError(Exception):
    """The message can never succeed (invalid payload, unknown reference): dead-letter it."""


class PublishError(Exception):
    """The event was not durably accepted by the bus (no confirm, nack, broker down)."""


@dataclass(frozen=True)
class Delivery:
    """What a handler receives: the event and how many times it has been delivered."""

    event: CloudEvent
    attempt: int  # 1 on first delivery
    routing_key: str


Handler = Callable[[Delivery], Awaitable[None]]


@dataclass(frozen=True)
class DeadLetter:
    """A message that left the live queue for good, with why."""

    queue: str
    event: CloudEvent | None
    body: bytes
    reason: str
    attempts: int


class Bus(Protocol):
    """One durable topic exchange; one durable queue per consumer service.

    `publish` returns only when the event is durably accepted (publisher confirm)
    and raises `PublishError` otherwise. `subscribe` declares the service's queue,
    bound to the given routing-key patterns (`*` one word, `#` zero or more), and
    consumes with manual acks and the configured prefetch until `close`.
    """

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def publish(self, event: CloudEvent) -> None: ...

    async def subscribe(
        self, queue: str, patterns: Sequence[str], handler: Handler
    ) -> None: ...

    async def dead_letters(self, queue: str) -> list[DeadLetter]:
        """Drain and return the dead-lettered messages of `queue` (ops and tests)."""
        ...
