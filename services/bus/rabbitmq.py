"""The RabbitMQ bus (aio-pika): robust connection, publisher confirms, bounded retries.

Topology, all durable: topic exchange `harmonet.events`; per consumer a queue
`harmonet.<queue>` bound to its patterns; direct exchange `harmonet.dead-letter`
routing `harmonet.<queue>` to `harmonet.<queue>.dlq`. The live queue also names
that exchange as `x-dead-letter-exchange`, so a message we have to `reject` still
lands in its DLQ (with the broker's `x-death` header instead of our reason).

Retries: the attempt counter travels in the `x-harmonet-attempt` header (absent =
1). On `RetryableError` the consumer waits a short exponential backoff (holding
its prefetch slot, which throttles a consumer whose dependency is down),
publishes a copy with the counter + 1 through the default exchange to the tail of
the same queue, waits for the broker's confirm, and only then acks the original;
a crash between the two steps duplicates the message, never loses it. Dead
letters work the same way: a confirmed copy carrying `x-harmonet-reason` goes to
the DLX, then the original is acked. A message redelivered after a lost
connection keeps its counter: the attempt counts handler outcomes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

import aio_pika
from aio_pika import DeliveryMode, ExchangeType, Message
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS
from pamqp.commands import Basic
from pamqp.common import FieldTable
from pydantic import ValidationError
from yarl import URL

from services import metrics
from services.bus.base import (
    DEAD_LETTER_EXCHANGE,
    EXCHANGE,
    DeadLetter,
    Delivery,
    Handler,
    PublishError,
    RetryableError,
)
from services.bus.memory import failure_reason, invalid_body_reason
from services.events import CloudEvent

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/cloudevents+json"
ATTEMPT_HEADER = "x-harmonet-attempt"
REASON_HEADER = "x-harmonet-reason"
ROUTING_KEY_HEADER = "x-harmonet-routing-key"
RECONNECT_INTERVAL_SECONDS = 1.0
MAX_RETRY_DELAY_SECONDS = 30.0
_MAX_REASON_CHARS = 2000


def _redacted(url: str) -> str:
    parsed = URL(url)
    return str(parsed.with_password("***")) if parsed.password else url


def queue_name(queue: str) -> str:
    return f"harmonet.{queue}"


def dead_letter_queue_name(queue: str) -> str:
    return f"harmonet.{queue}.dlq"


@dataclass(frozen=True)
class _Subscription:
    # A robust connection only holds its channels weakly: keep them alive here.
    channel: AbstractChannel
    queue: AbstractQueue
    consumer_tag: str


class RabbitMQBus:
    """`Bus` on RabbitMQ; one channel (and prefetch window) per `subscribe` call."""

    def __init__(
        self,
        url: str,
        *,
        max_attempts: int = 5,
        prefetch: int = 16,
        connection_name: str = "harmonet",
        retry_delay_seconds: float = 0.5,
        publish_timeout_seconds: float = 10.0,
        connect_timeout_seconds: float = 10.0,
    ) -> None:
        if max_attempts < 1 or prefetch < 1:
            raise ValueError("max_attempts and prefetch must be at least 1")
        self._url = url
        self._max_attempts = max_attempts
        self._prefetch = prefetch
        self._connection_name = connection_name
        self._retry_delay = retry_delay_seconds
        self._publish_timeout = publish_timeout_seconds
        self._connect_timeout = connect_timeout_seconds
        self._connect_lock = asyncio.Lock()
        self._connection: AbstractRobustConnection | None = None
        self._confirm_channel: AbstractRobustChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}
        self._subscriptions: list[_Subscription] = []
        self._in_flight: set[asyncio.Task[Any]] = set()

    # --- lifecycle -----------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection and the confirm channel; `ConnectionError` if unreachable."""
        async with self._connect_lock:
            if self._connection is None:
                self._connection, self._confirm_channel = await self._open()

    async def _open(self) -> tuple[AbstractRobustConnection, AbstractRobustChannel]:
        connection = aio_pika.RobustConnection(
            URL(self._url),
            client_properties={"connection_name": self._connection_name},
            reconnect_interval=RECONNECT_INTERVAL_SECONDS,
        )
        try:
            async with asyncio.timeout(self._connect_timeout):
                await connection.connect(timeout=self._connect_timeout)
                channel = await connection.channel(publisher_confirms=True)
                exchanges = await _declare_exchanges(channel)
        except CONNECTION_EXCEPTIONS as exc:  # includes TimeoutError
            await connection.close()  # also stops its background reconnect task
            raise ConnectionError(
                f"cannot open the bus on RabbitMQ at {_redacted(self._url)}: {exc!r}"
            ) from exc
        except BaseException:
            await connection.close()
            raise
        self._exchanges = {**exchanges, "": channel.default_exchange}
        log.info("bus connected", extra={"connection_name": self._connection_name})
        return connection, channel

    async def close(self) -> None:
        """Cancel the consumers, let in-flight handlers finish, then close the connection."""
        connection = self._connection
        if connection is None:
            return
        with suppress(TimeoutError):  # a broker that is down cannot stall shutdown
            async with asyncio.timeout(self._publish_timeout):
                for subscription in self._subscriptions:
                    with suppress(*CONNECTION_EXCEPTIONS):
                        await subscription.queue.cancel(subscription.consumer_tag)
        await asyncio.sleep(0)  # let deliveries that already arrived start their handlers
        # In-flight handlers may still publish retry / dead-letter copies and ack.
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        self._connection = self._confirm_channel = None
        self._subscriptions.clear()
        self._exchanges = {}
        await connection.close()

    async def _ready_connection(self) -> AbstractRobustConnection:
        await self.connect()
        if self._connection is None:
            raise ConnectionError("the bus was closed")
        return self._connection

    async def _ready_confirm_channel(self) -> AbstractRobustChannel:
        await self.connect()
        if self._confirm_channel is None:
            raise ConnectionError("the bus was closed")
        # During a reconnect this waits until the channel is restored.
        await self._confirm_channel.ready()
        return self._confirm_channel

    # --- publishing ----------------------------------------------------------------

    async def publish(self, event: CloudEvent) -> None:
        message = Message(
            event.to_json(),
            content_type=CONTENT_TYPE,
            delivery_mode=DeliveryMode.PERSISTENT,
            message_id=event.id,
            type=event.type,
        )
        await self._publish(EXCHANGE, event.routing_key, message)
        metrics.EVENTS_PUBLISHED.labels(type=event.type).inc()
        log.debug("event published", extra={"event_id": event.id, "event_type": event.type})

    async def publish_raw(self, routing_key: str, body: bytes) -> None:
        """Publish raw bytes to the events exchange (replaying dead letters, tests)."""
        message = Message(body, content_type=CONTENT_TYPE, delivery_mode=DeliveryMode.PERSISTENT)
        await self._publish(EXCHANGE, routing_key, message)

    async def _publish(self, exchange_name: str, routing_key: str, message: Message) -> None:
        """Publish and wait for the broker's confirm, at most `publish_timeout_seconds`."""
        try:
            async with asyncio.timeout(self._publish_timeout):
                await self._ready_confirm_channel()
                exchange = self._exchanges[exchange_name]
                confirmation = await exchange.publish(message, routing_key, mandatory=False)
        except TimeoutError as exc:
            raise PublishError(
                f"RabbitMQ did not confirm within {self._publish_timeout}s (broker down?)"
            ) from exc
        except CONNECTION_EXCEPTIONS as exc:  # includes nacks (DeliveryError)
            raise PublishError(f"not confirmed by the broker: {exc!r}") from exc
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            # aiormq cancels pending confirmations when the channel closes under them.
            raise PublishError("channel closed before the broker confirmed") from exc
        if not isinstance(confirmation, Basic.Ack):
            raise PublishError(f"not confirmed by the broker: {confirmation!r}")

    # --- consuming -----------------------------------------------------------------

    async def subscribe(self, queue: str, patterns: Sequence[str], handler: Handler) -> None:
        connection = await self._ready_connection()
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=self._prefetch)
        # Declared on this channel too, so a reconnect restores them before the bindings.
        await _declare_exchanges(channel)
        live = await _declare_queues(channel, queue)
        for pattern in patterns:
            await live.bind(EXCHANGE, routing_key=pattern)

        async def on_message(message: AbstractIncomingMessage) -> None:
            await self._track(self._consume(queue, handler, message))

        tag = await live.consume(on_message)
        self._subscriptions.append(_Subscription(channel, live, tag))
        log.info("subscribed", extra={"bus_queue": queue, "patterns": list(patterns)})

    async def _track(self, handling: Awaitable[None]) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._in_flight.add(task)
        try:
            await handling
        finally:
            if task is not None:
                self._in_flight.discard(task)

    async def _consume(
        self, queue: str, handler: Handler, message: AbstractIncomingMessage
    ) -> None:
        attempt = _attempt(message)
        routing_key = _original_routing_key(message)
        try:
            event = CloudEvent.from_json(message.body)
        except ValidationError as exc:
            await self._dead_letter(queue, message, attempt, invalid_body_reason(exc))
            return
        consumed = metrics.EVENTS_CONSUMED.labels
        started = time.perf_counter()
        try:
            await handler(Delivery(event=event, attempt=attempt, routing_key=routing_key))
        except RetryableError as exc:
            if attempt < self._max_attempts:
                consumed(service=queue, type=event.type, result="retried").inc()
                await self._retry(queue, message, attempt)
            else:
                consumed(service=queue, type=event.type, result="dead_lettered").inc()
                reason = f"gave up after {attempt} attempts: {failure_reason(exc)}"
                await self._dead_letter(queue, message, attempt, reason)
        except Exception as exc:
            consumed(service=queue, type=event.type, result="dead_lettered").inc()
            await self._dead_letter(queue, message, attempt, failure_reason(exc))
        else:
            consumed(service=queue, type=event.type, result="ok").inc()
            metrics.STAGE_DURATION.labels(stage=queue).observe(time.perf_counter() - started)
            await _settle(message.ack(), queue)

    async def _retry(self, queue: str, message: AbstractIncomingMessage, attempt: int) -> None:
        await asyncio.sleep(min(self._retry_delay * 2 ** (attempt - 1), MAX_RETRY_DELAY_SECONDS))
        retry = _copy(message, {ATTEMPT_HEADER: attempt + 1})
        fields = {"bus_queue": queue, "event_id": message.message_id, "attempt": attempt}
        try:
            await self._publish("", queue_name(queue), retry)
        except PublishError as exc:
            log.warning(
                "retry copy not confirmed; returning the message",
                extra={**fields, "error": str(exc)},
            )
            await _settle(message.nack(requeue=True), queue)
            return
        await _settle(message.ack(), queue)
        log.info("message scheduled for retry", extra=fields)

    async def _dead_letter(
        self, queue: str, message: AbstractIncomingMessage, attempt: int, reason: str
    ) -> None:
        fields = {
            "bus_queue": queue,
            "event_id": message.message_id,
            "attempt": attempt,
            "reason": reason,
        }
        copy = _copy(message, {ATTEMPT_HEADER: attempt, REASON_HEADER: reason[:_MAX_REASON_CHARS]})
        try:
            await self._publish(DEAD_LETTER_EXCHANGE, queue_name(queue), copy)
        except PublishError:
            # The queue's own x-dead-letter-exchange still routes it to the DLQ.
            log.exception("dead-letter copy not confirmed; rejecting instead", extra=fields)
            await _settle(message.reject(requeue=False), queue)
            return
        await _settle(message.ack(), queue)
        log.warning("message dead-lettered", extra=fields)

    # --- operations ----------------------------------------------------------------

    async def dead_letters(self, queue: str) -> list[DeadLetter]:
        connection = await self._ready_connection()
        channel = await connection.channel(publisher_confirms=False)
        try:
            dlq = await channel.declare_queue(dead_letter_queue_name(queue), durable=True)
            records: list[DeadLetter] = []
            while (message := await dlq.get(no_ack=False, fail=False)) is not None:
                records.append(_dead_letter_record(queue, message))
                await message.ack()
            return records
        finally:
            await channel.close()


async def _declare_exchanges(channel: AbstractChannel) -> dict[str, AbstractExchange]:
    events = await channel.declare_exchange(EXCHANGE, ExchangeType.TOPIC, durable=True)
    dead = await channel.declare_exchange(DEAD_LETTER_EXCHANGE, ExchangeType.DIRECT, durable=True)
    return {EXCHANGE: events, DEAD_LETTER_EXCHANGE: dead}


async def _declare_queues(channel: AbstractChannel, queue: str) -> AbstractQueue:
    dlq = await channel.declare_queue(dead_letter_queue_name(queue), durable=True)
    await dlq.bind(DEAD_LETTER_EXCHANGE, routing_key=queue_name(queue))
    arguments: FieldTable = {
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": queue_name(queue),
    }
    return await channel.declare_queue(queue_name(queue), durable=True, arguments=arguments)


async def _settle(settlement: Awaitable[None], queue: str) -> None:
    """Ack / nack / reject; on a lost channel the broker redelivers, so only log it."""
    try:
        await settlement
    except CONNECTION_EXCEPTIONS as exc:
        log.warning(
            "could not settle message; the broker will redeliver it",
            extra={"bus_queue": queue, "error": repr(exc)},
        )


def _attempt(message: AbstractIncomingMessage) -> int:
    value = (message.headers or {}).get(ATTEMPT_HEADER)
    return value if isinstance(value, int) and value >= 1 else 1


def _original_routing_key(message: AbstractIncomingMessage) -> str:
    # Retry copies travel through the default exchange (routing key = queue name).
    value = (message.headers or {}).get(ROUTING_KEY_HEADER)
    return value if isinstance(value, str) else message.routing_key or ""


def _copy(message: AbstractIncomingMessage, headers: dict[str, Any]) -> Message:
    merged: dict[str, Any] = {ROUTING_KEY_HEADER: _original_routing_key(message)}
    merged.update(message.headers or {})
    merged.update(headers)
    return Message(
        message.body,
        headers=merged,
        content_type=message.content_type or CONTENT_TYPE,
        delivery_mode=DeliveryMode.PERSISTENT,
        message_id=message.message_id,
        type=message.type,
    )


def _dead_letter_record(queue: str, message: AbstractIncomingMessage) -> DeadLetter:
    headers = message.headers or {}
    try:
        event: CloudEvent | None = CloudEvent.from_json(message.body)
    except ValidationError:
        event = None
    reason = headers.get(REASON_HEADER)
    if not isinstance(reason, str):  # rejected to the queue's DLX: only `x-death` says why
        deaths = headers.get("x-death")
        death = deaths[0] if isinstance(deaths, list) and deaths else None
        why = death.get("reason") if isinstance(death, dict) else None
        reason = f"dead-lettered by the broker: {why if isinstance(why, str) else 'unknown'}"
    return DeadLetter(
        queue=queue, event=event, body=message.body, reason=reason, attempts=_attempt(message)
    )
