"""The in-process bus: RabbitMQ's topic-exchange semantics inside one asyncio loop.

Used by `harmonet up` and by tests. Queues are declared by the first `subscribe`
and outlive `close()` (like durable queues on a broker): messages routed to a
declared queue while no consumer is attached wait for the next one. Every event
crosses the bus as bytes, so consumers never share objects with the publisher.
With a `journal_path` (what `harmonet up` passes) queues and unfinished messages also
outlive the process (`services/bus/journal.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from pydantic import ValidationError

from services import metrics
from services.bus.base import (
    DeadLetter,
    Delivery,
    Handler,
    RetryableError,
)
from services.bus.journal import BusJournal
from services.events import CloudEvent

log = logging.getLogger(__name__)


@lru_cache(maxsize=4096)
def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: words split on `.`, `*` is one word, `#` zero or more."""
    return _match(_words(pattern), _words(routing_key))


def _words(key: str) -> tuple[str, ...]:
    # RabbitMQ treats the empty key as zero words, not one empty word.
    return tuple(key.split(".")) if key else ()


def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return _match(rest, words) or (bool(words) and _match(pattern, words[1:]))
    if not words:
        return False
    return head in ("*", words[0]) and _match(rest, words[1:])


def invalid_body_reason(exc: ValidationError) -> str:
    """The reason recorded when a body is not a CloudEvent: the first validation error."""
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return f"invalid CloudEvent ({exc.error_count()} error(s)): {where}: {first['msg']}"


def failure_reason(exc: BaseException) -> str:
    """The reason recorded with a dead letter: exception type and message."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True)
class _Message:
    body: bytes
    routing_key: str
    attempt: int = 1
    seq: int | None = None  # its record in the bus journal, if there is one


@dataclass
class _Queue:
    name: str
    prefetch: int
    patterns: set[str] = field(default_factory=set)
    handlers: list[Handler] = field(default_factory=list)
    pending: asyncio.Queue[_Message] = field(default_factory=asyncio.Queue)
    dead: list[DeadLetter] = field(default_factory=list)
    dispatcher: asyncio.Task[None] | None = None
    turn: int = 0
    slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.slots = asyncio.Semaphore(self.prefetch)

    def bound_to(self, routing_key: str) -> bool:
        return any(topic_matches(pattern, routing_key) for pattern in self.patterns)

    def next_handler(self) -> Handler:
        # Competing consumers: round-robin, like RabbitMQ across a queue's consumers.
        handler = self.handlers[self.turn % len(self.handlers)]
        self.turn += 1
        return handler


class InMemoryBus:
    """`Bus` in one process; prefetch bounds the concurrent handlers of each queue."""

    def __init__(self, max_attempts: int = 5, prefetch: int = 16, *,
                 journal_path: Path | None = None) -> None:
        if max_attempts < 1 or prefetch < 1:
            raise ValueError("max_attempts and prefetch must be at least 1")
        self._max_attempts = max_attempts
        self._prefetch = prefetch
        self._queues: dict[str, _Queue] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        self._journal = BusJournal(journal_path) if journal_path is not None else None
        if self._journal is not None:  # the queues and what they had not finished
            backlog = self._journal.backlog()
            for name, patterns in self._journal.bindings().items():
                queue = self._queues[name] = _Queue(name, prefetch, set(patterns))
                for seq, routing_key, body in backlog.get(name, []):
                    queue.pending.put_nowait(_Message(body, routing_key, seq=seq))

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        """Detach every consumer and wait for the handlers already running."""
        dispatchers = [q.dispatcher for q in self._queues.values() if q.dispatcher is not None]
        for queue in self._queues.values():
            queue.handlers.clear()
            queue.dispatcher = None
        for task in dispatchers:
            task.cancel()
        await asyncio.gather(*dispatchers, return_exceptions=True)
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        if self._journal is not None:  # what is still queued is delivered at the next start
            self._journal.close()
            self._journal = None

    async def drain(self) -> None:
        """Wait until every queue with a consumer is empty and no handler is running."""
        while any(  # noqa: ASYNC110 - polling two independent conditions, test/CLI use only
            q.dispatcher is not None and not q.pending.empty() for q in self._queues.values()
        ) or self._in_flight:
            await asyncio.sleep(0.01)

    async def publish(self, event: CloudEvent) -> None:
        await self.publish_raw(event.routing_key, event.to_json())
        metrics.EVENTS_PUBLISHED.labels(type=event.type).inc()

    async def publish_raw(self, routing_key: str, body: bytes) -> None:
        """Route raw bytes as if a peer had published them (replaying dead letters, tests)."""
        targets = [queue for queue in self._queues.values() if queue.bound_to(routing_key)]
        seq = None
        if self._journal is not None and targets:
            seq = self._journal.routed(routing_key, bytes(body), [q.name for q in targets])
        for queue in targets:
            queue.pending.put_nowait(_Message(bytes(body), routing_key, seq=seq))

    async def subscribe(self, queue: str, patterns: Sequence[str], handler: Handler) -> None:
        declared = self._queues.get(queue)
        if declared is None:
            declared = self._queues[queue] = _Queue(queue, self._prefetch)
        declared.patterns.update(patterns)
        if self._journal is not None:
            self._journal.bound(queue, set(patterns))
        declared.handlers.append(handler)
        if declared.dispatcher is None:
            declared.dispatcher = asyncio.create_task(
                self._dispatch(declared), name=f"harmonet-bus-{queue}"
            )

    async def dead_letters(self, queue: str) -> list[DeadLetter]:
        declared = self._queues.get(queue)
        if declared is None:
            return []
        drained, declared.dead = declared.dead, []
        return drained

    async def _dispatch(self, queue: _Queue) -> None:
        while True:
            await queue.slots.acquire()
            try:
                message = await queue.pending.get()
            except asyncio.CancelledError:
                queue.slots.release()
                raise
            # No await between taking the message and starting its task: a
            # cancellation can never drop a message on the floor.
            task = asyncio.create_task(self._deliver(queue, queue.next_handler(), message))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

    async def _deliver(self, queue: _Queue, handler: Handler, message: _Message) -> None:
        try:
            finished = await self._handle(queue, handler, message)
        finally:
            queue.slots.release()
        if finished and message.seq is not None and self._journal is not None:
            self._journal.done(message.seq, queue.name)

    async def _handle(self, queue: _Queue, handler: Handler, message: _Message) -> bool:
        """Deliver once; False when the message went back on the queue for another try."""
        try:
            event = CloudEvent.from_json(message.body)
        except ValidationError as exc:
            self._dead_letter(queue, message, None, invalid_body_reason(exc))
            return True
        delivery = Delivery(event=event, attempt=message.attempt, routing_key=message.routing_key)
        consumed = metrics.EVENTS_CONSUMED.labels
        started = time.perf_counter()
        try:
            await handler(delivery)
        except RetryableError as exc:
            if message.attempt >= self._max_attempts:
                consumed(service=queue.name, type=event.type, result="dead_lettered").inc()
                reason = f"gave up after {message.attempt} attempts: {failure_reason(exc)}"
                self._dead_letter(queue, message, event, reason)
            else:
                consumed(service=queue.name, type=event.type, result="retried").inc()
                queue.pending.put_nowait(replace(message, attempt=message.attempt + 1))
                return False
        except Exception as exc:
            consumed(service=queue.name, type=event.type, result="dead_lettered").inc()
            self._dead_letter(queue, message, event, failure_reason(exc))
        else:
            consumed(service=queue.name, type=event.type, result="ok").inc()
            metrics.STAGE_DURATION.labels(stage=queue.name).observe(time.perf_counter() - started)
        return True

    def _dead_letter(
        self, queue: _Queue, message: _Message, event: CloudEvent | None, reason: str
    ) -> None:
        log.warning(
            "message dead-lettered",
            extra={
                "bus_queue": queue.name,
                "routing_key": message.routing_key,
                "event_id": event.id if event else None,
                "attempt": message.attempt,
                "reason": reason,
            },
        )
        queue.dead.append(
            DeadLetter(
                queue=queue.name,
                event=event,
                body=message.body,
                reason=reason,
                attempts=message.attempt,
            )
        )
