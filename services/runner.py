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
        ),
        state=make_state(redis_url=settings.redis_url, prefix=settings.state_prefix),
        blobs=FileBlobStore(settings.data_dir),
    )


async def run_services(services: Sequence[Service], context: Context) -> None:
    """Run `services` until SIGINT/SIGTERM or until one of them fails."""
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
    tasks = [asyncio.create_task(s.run(context), name=s.name) for s in services]
    stopper = asyncio.create_task(stop.wait(), name="stop")
    log.info("services started", extra={"services": [s.name for s in services]})
    try:
        done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
        for task in done - {stopper}:
            failure = task.exception()
            if failure is not None:
                raise failure
            log.error("service returned", extra={"service": task.get_name()})
    finally:
        for task in [*tasks, stopper]:
            task.cancel()
        await asyncio.gather(*tasks, stopper, return_exceptions=True)
        await context.bus.close()
        context.state.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        log.info("services stopped")
