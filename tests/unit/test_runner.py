"""The service runner keeps a process's other services up while one of them keeps failing."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from services import metrics
from services.blobstore import FileBlobStore
from services.bus import InMemoryBus
from services.config import load_config
from services.runner import Context, Service, run_services
from services.settings import Settings
from services.state import InMemoryStateStore


async def test_a_failing_service_is_restarted_and_the_others_keep_running(
    tmp_path: Path,
) -> None:
    context = Context(settings=Settings(data_dir=tmp_path), config=load_config(None),
                      bus=InMemoryBus(), state=InMemoryStateStore(), blobs=FileBlobStore(tmp_path))
    starts: list[str] = []
    steady_ticks = 0
    recovered = asyncio.Event()

    async def flaky(_: Context) -> None:
        starts.append("flaky")
        if len(starts) < 3:
            raise OSError("database or disk is full")
        recovered.set()
        await asyncio.Event().wait()

    async def steady(_: Context) -> None:
        nonlocal steady_ticks
        while True:
            steady_ticks += 1
            await asyncio.sleep(0.01)

    async def stop_when_recovered() -> None:
        await asyncio.wait_for(recovered.wait(), timeout=20)
        not_ready_meanwhile.update(metrics.not_ready())
        os.kill(os.getpid(), signal.SIGTERM)

    not_ready_meanwhile: dict[str, str] = {}
    stopper = asyncio.create_task(stop_when_recovered())
    await run_services([Service("flaky", flaky), Service("steady", steady)], context,
                       max_backoff_seconds=0.05)
    await stopper
    assert starts == ["flaky"] * 3
    assert steady_ticks > 10  # never stopped by its neighbour's failures
    assert "service_flaky" not in not_ready_meanwhile  # ready again once it runs
