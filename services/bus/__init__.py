"""The event bus: interface, exceptions and the adapter chosen from settings."""

from __future__ import annotations

from pathlib import Path

from services.bus.base import (
    DEAD_LETTER_EXCHANGE,
    EXCHANGE,
    Bus,
    DeadLetter,
    Delivery,
    Handler,
    PermanentError,
    PublishError,
    RetryableError,
)
from services.bus.memory import InMemoryBus

__all__ = [
    "DEAD_LETTER_EXCHANGE",
    "EXCHANGE",
    "Bus",
    "DeadLetter",
    "Delivery",
    "Handler",
    "InMemoryBus",
    "PermanentError",
    "PublishError",
    "RetryableError",
    "make_bus",
]


def make_bus(*, amqp_url: str | None, max_attempts: int, prefetch: int, name: str,
             journal_path: Path | None = None) -> Bus:
    """RabbitMQ when `amqp_url` is set (`HARMONET_AMQP_URL`), else the in-process bus,
    journalled to `journal_path` when one is given (what `harmonet up` does)."""
    if amqp_url is None:
        return InMemoryBus(max_attempts=max_attempts, prefetch=prefetch,
                           journal_path=journal_path)
    # Imported here so `harmonet up` never loads aio-pika.
    from services.bus.rabbitmq import RabbitMQBus

    return RabbitMQBus(amqp_url, max_attempts=max_attempts, prefetch=prefetch, connection_name=name)
