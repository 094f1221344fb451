"""`harmonet import`: a retrospective archive in through the same path as a push.

Same validation, pseudonymisation, storage and `study.received` events as the
DICOM port; the studies it touched are published as soon as the import ends.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from tqdm import tqdm

from receiver.app import make_ingestor
from receiver.stability import StabilityMonitor
from services import journal
from services.bus import InMemoryBus
from services.config import HarmonetConfig
from services.runner import Context, build_context
from services.scu import iter_files
from services.settings import Settings


def import_paths(
    paths: list[Path], *, calling_ae: str, settings: Settings, config: HarmonetConfig
) -> int:
    scanner = config.scanner_for_ae(calling_ae)
    if scanner is None:
        print(f"no scanner in the configuration has AE title {calling_ae!r}", file=sys.stderr)
        return 2
    context = build_context(settings, config, bus_name="import")
    ingestor = make_ingestor(context)
    outcomes: dict[str, int] = {}
    studies: set[str] = set()
    for path in tqdm(list(iter_files(paths)), unit="file", disable=not sys.stderr.isatty()):
        try:
            ds = dcmread(path)
        except (InvalidDicomError, OSError):
            outcomes["not_dicom"] = outcomes.get("not_dicom", 0) + 1
            continue
        result = ingestor.ingest(ds, scanner=scanner, context_sop_class=str(ds.get("SOPClassUID")))
        outcomes[result.outcome] = outcomes.get(result.outcome, 0) + 1
        if result.outcome in ("stored", "duplicate"):
            studies.add(str(ds.StudyInstanceUID))
    published = asyncio.run(_publish(context, studies))
    summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items()))
    print(f"imported: {summary}; {published} study.received published", file=sys.stderr)
    return 0 if not outcomes.get("unavailable") and not outcomes.get("rejected") else 1


async def _publish(context: Context, study_uids: set[str]) -> int:
    await context.bus.connect()
    if context.settings.amqp_url is None:
        # The in-process bus reaches only this process: keep the events in the journal,
        # as `harmonet up` does, so the import leaves the same trace.
        await journal.attach(context)
    try:
        monitor = StabilityMonitor(
            state=context.state, blobs=context.blobs, bus=context.bus,
            stable_seconds=context.settings.stable_seconds,
            source=f"harmonet/import/{socket.gethostname()}",
        )
        published = await monitor.complete_now(study_uids)
        if isinstance(context.bus, InMemoryBus):
            await context.bus.drain()
        return len(published)
    finally:
        await context.bus.close()
        context.state.close()
