"""The registry service: the event consumer and the HTTP API in one asyncio loop.

Consumes every event (queue `registry`, bound to `#`) and records it
(`registry/consumer.py`); produces `study.processed` from the outbox after each
commit. Serves the API with uvicorn on `HARMONET_API_PORT`. Database writes run
on one dedicated thread, so the loop stays responsive and SQLite sees one writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

import uvicorn
from sqlalchemy import Engine, update
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from registry.api import RegistryState, create_app
from registry.consumer import InvalidEvent, pending_outbox, record_event
from registry.db import database_url, make_engine, migrate, session_factory
from registry.missing import flag_missing_series
from registry.models import OutboxEvent, utcnow
from services import metrics
from services.bus import Bus, Delivery, PermanentError, PublishError, RetryableError
from services.config import HarmonetConfig
from services.events import CloudEvent
from services.runner import Context, Service

log = logging.getLogger(__name__)
QUEUE = "registry"
OUTBOX_INTERVAL_SECONDS = 5.0
T = TypeVar("T")


@dataclass
class RegistryConsumer:
    """The bus handler: one transaction per event, then the outbox is published."""

    sessions: sessionmaker[Session]
    bus: Bus
    source: str
    writer: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="registry-writer"))
    schema_ready: asyncio.Event | None = None  # deliveries wait until it is set (None: no wait)
    _publishing: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def write(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.writer, work)

    async def __call__(self, delivery: Delivery) -> None:
        if self.schema_ready is not None:
            await self.schema_ready.wait()
        try:
            recorded = await self.write(lambda: self._record(delivery.event))
        except InvalidEvent as exc:
            raise PermanentError(str(exc)) from exc
        except (IntegrityError, OperationalError) as exc:
            # A replica recorded a row of the same study at the same moment, or the
            # database is briefly unavailable: the next delivery finds it settled.
            raise RetryableError(f"{type(exc).__name__}: {exc.orig!r}") from exc
        except DBAPIError as exc:
            raise RetryableError(f"database error: {exc.orig!r}") from exc
        if recorded:
            await self.publish_outbox()

    def _record(self, event: CloudEvent) -> bool:
        with self.sessions.begin() as session:
            return record_event(session, event, source=self.source)

    async def publish_outbox(self) -> int:
        """Publish every pending `study.processed`; each row is claimed by one publisher."""
        published = 0
        async with self._publishing:
            pending = await self.write(self._pending)
            for event_id, body in pending:
                if not await self.write(functools.partial(self._claim, event_id, True)):
                    continue
                event = CloudEvent.from_json(body)
                try:
                    await self.bus.publish(event)
                except (PublishError, ConnectionError) as exc:
                    await self.write(functools.partial(self._claim, event_id, False))
                    log.warning("study.processed not published yet; will retry",
                                extra={"event_id": event_id, "error": str(exc)})
                    break
                metrics.REGISTRY_STUDIES_PROCESSED.labels(site=event.data.get("site", "")).inc()
                published += 1
        return published

    def _pending(self) -> list[tuple[str, str]]:
        with self.sessions() as session:
            return [(row.event_id, row.body) for row in pending_outbox(session)]

    def _claim(self, event_id: str, claim: bool) -> bool:
        with self.sessions.begin() as session:
            statement = update(OutboxEvent).where(OutboxEvent.event_id == event_id)
            if claim:
                statement = statement.where(OutboxEvent.published_at.is_(None)).values(
                    published_at=utcnow())
            else:
                statement = statement.values(published_at=None)
            return session.execute(statement.returning(OutboxEvent.event_id)).first() is not None


class EmbeddedServer(uvicorn.Server):
    """uvicorn inside the service runner's loop: the runner owns SIGINT/SIGTERM."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bus_probe(amqp_url: str | None) -> Callable[[], Awaitable[bool]]:
    """Readiness of the bus: the in-process bus always; RabbitMQ when its port answers."""

    async def probe() -> bool:
        if amqp_url is None:
            return True
        parts = urlsplit(amqp_url)
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection(parts.hostname or "127.0.0.1", parts.port or 5672), 2.0)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    return probe


async def _serve(server: uvicorn.Server, host: str, port: int) -> None:
    try:
        await server.serve()
    except SystemExit as exc:  # uvicorn exits the process when it cannot bind
        raise RuntimeError(f"registry API cannot listen on {host}:{port}") from exc


async def _every(seconds: float, work: Callable[[], Awaitable[Any]], name: str) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await work()
        except Exception:
            log.exception("periodic task failed", extra={"task": name})


def _check_missing(sessions: sessionmaker[Session], config: HarmonetConfig,
                   hours: float) -> None:
    with sessions.begin() as session:
        flag_missing_series(session, config, now=utcnow(), after_hours=hours)


async def _migrate(engine: Engine) -> None:
    """Migrate, retrying (database down, disk full) instead of failing the service: its
    consumer is subscribed already, and a restarted service would subscribe a second one."""
    pause = 1.0
    while True:
        try:
            await asyncio.to_thread(migrate, engine)
        except Exception as exc:
            metrics.set_ready("service_registry", False, f"migration failed: {exc}"[:200])
            log.exception("registry database not migrated; retrying",
                          extra={"retry_in_seconds": pause})
            await asyncio.sleep(pause)
            pause = min(60.0, pause * 2)
        else:
            metrics.set_ready("service_registry", True)
            return


async def run(context: Context) -> None:
    settings = context.settings
    engine = make_engine(database_url(settings))
    sessions = session_factory(engine)
    schema_ready = asyncio.Event()
    consumer = RegistryConsumer(sessions=sessions, bus=context.bus,
                                source=f"harmonet/registry/{socket.gethostname()}",
                                schema_ready=schema_ready)
    # Subscribed before migrating, deliveries waiting for the schema: the in-process bus of
    # `harmonet up` routes an event only to the queues declared so far, and a study left
    # pending by a crash is published as soon as the receiver starts - before a migration
    # ends, so the registry never recorded its receipt nor processed the revision.
    await context.bus.subscribe(QUEUE, ["#"], consumer)
    await _migrate(engine)
    schema_ready.set()
    state = RegistryState(
        sessions=sessions, blobs=context.blobs, bus_ready=bus_probe(settings.amqp_url),
        dictionary_path=settings.clinical_dictionary,
        known_sites=frozenset(site.id for site in context.config.sites),
    )
    server = EmbeddedServer(uvicorn.Config(
        create_app(state), host=settings.api_host, port=settings.api_port, log_config=None,
        access_log=False, lifespan="off", timeout_graceful_shutdown=5))
    hours = settings.missing_scan_hours
    check_seconds = min(60.0, max(1.0, hours * 3600 / 10))
    tasks = [
        asyncio.create_task(_serve(server, settings.api_host, settings.api_port),
                            name="registry-api"),
        asyncio.create_task(_every(OUTBOX_INTERVAL_SECONDS, consumer.publish_outbox,
                                   "outbox"), name="registry-outbox"),
        asyncio.create_task(_every(check_seconds, lambda: consumer.write(
            lambda: _check_missing(sessions, context.config, hours)), "missing-scan"),
            name="registry-missing"),
        asyncio.create_task(_every(state.audit.max_delay, lambda: asyncio.to_thread(
            state.audit.flush), "audit"), name="registry-audit"),
    ]
    try:
        await consumer.publish_outbox()
        log.info("registry ready", extra={"api_port": settings.api_port,
                                          "database": engine.url.render_as_string()})
        await asyncio.gather(*tasks)
    finally:
        server.should_exit = True
        for task in tasks[1:]:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True),
                                   timedelta(seconds=10).total_seconds())
        consumer.writer.shutdown(wait=True)
        await asyncio.to_thread(state.audit.flush)
        engine.dispose()


service = Service(name="registry", run=run)
