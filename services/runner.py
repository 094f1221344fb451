"""The service runner: wires adapters from settings and runs one or more services.

A service is a name and a coroutine that runs until cancelled; it receives a
`Context` with its dependencies. `harmonet up` runs every service registered in
the `harmonet.services` entry-point group in one process; `harmonet <name>` one.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from services.blobstore import FileBlobStore
from services.bus import Bus, make_bus
from services.config import HarmonetConfig
from services.settings import Settings
from services.state import StateStore, make_state

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "harmonet.services"


@dataclass(frozen=True)
class Context:
    settings: Settings
    config: HarmonetConfig
    bus: Bus
    state: StateStore
    blobs: FileBlobStore


@dataclass(frozen=True)
class Service:
    name: str
    run: Callable[[Context], Coroutine[Any, Any, None]]


def discover_services() -> dict[str, Service]:
    """Services installed under the entry-point group, by name."""
    found: dict[str, Service] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        service = entry.load()
        if not isinstance(service, Service):
            raise TypeError(f"entry point {entry.value} is not a harmonet Service")
        found[entry.name] = service
    return found


def build_context(settings: Settings, config: HarmonetConfig, *, bus_name: str) -> Context:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Context(
        settings=settings,
        config=config,
        bus=make_bus(
            amqp_url=settings.amqp_url,
            max_attempts=settings.bus_max_attempts,
            prefetch=settings.bus_prefetch,
            name=bus_name,
            journal_path=settings.embedded_bus_path,
        ),
        state=make_state(redis_url=settings.redis_url, prefix=settings.state_prefix,
                      path=settings.embedded_state_path),
        blobs=FileBlobStore(settings.data_dir),
    )


async def run_services(
    services: Sequence[Service], context: Context, *, max_backoff_seconds: float = 60.0
) -> None:
    """Run `services` until SIGINT/SIGTERM.

    A service that fails (or returns) is logged, reported not ready and started again after
    a growing pause, so one failing consumer - a full disk under the registry's database, a
    bug on one message type - never takes the receiver of the same process down with it.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await context.bus.connect()
    except ConnectionError as exc:
        # A dead broker must not stop the receiver from storing studies: publishes retry
        # (the study stays pending) and a consumer's subscribe fails, restarting it.
        log.error("bus unreachable at start; retrying on use", extra={"error": str(exc)})
    tasks = [asyncio.create_task(_supervised(s, context, max_backoff_seconds), name=s.name)
             for s in services]
    log.info("services started", extra={"services": [s.name for s in services]})
    try:
        await stop.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await context.bus.close()
        context.state.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        log.info("services stopped")


async def _supervised(service: Service, context: Context, max_backoff_seconds: float) -> None:
    from services import metrics

    component = f"service_{service.name}"
    first_pause = min(1.0, max_backoff_seconds)
    backoff = first_pause
    while True:
        started = loop_time()
        try:
            await service.run(context)
            reason = "returned"
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
            log.exception("service failed; restarting it", extra={
                "service": service.name, "retry_in_seconds": backoff})
        else:
            log.error("service returned; restarting it", extra={"service": service.name})
        metrics.set_ready(component, False, reason[:200])
        if loop_time() - started > 5 * max_backoff_seconds:
            backoff = first_pause  # it ran fine for a long while: this is a new failure
        await asyncio.sleep(backoff)
        backoff = min(max_backoff_seconds, backoff * 2)
        metrics.set_ready(component, True)


def loop_time() -> float:
    return asyncio.get_running_loop().time()
