"""The receiver service: DICOM SCP in threads + the study-stability monitor.

Consumes nothing; produces `study.received`.
"""

from __future__ import annotations

import asyncio
import logging
import socket

from receiver.ingest import Ingestor
from receiver.pseudonymise import Pseudonymiser
from receiver.scp import ScpOptions, start_scp
from receiver.stability import StabilityMonitor, StudyTracker
from services.runner import Context, Service

log = logging.getLogger(__name__)


def make_ingestor(context: Context) -> Ingestor:
    return Ingestor(
        config=context.config,
        blobs=context.blobs,
        tracker=StudyTracker(context.state),
        pseudonymiser=Pseudonymiser(key=context.settings.resolved_pseudonym_key()),
    )


async def run(context: Context) -> None:
    settings = context.settings
    context.state.ping()
    options = ScpOptions(
        ae_title=settings.ae_title,
        host=settings.dicom_host,
        port=settings.dicom_port,
        tls_cert=settings.tls_cert,
        tls_key=settings.tls_key,
        tls_ca=settings.tls_ca,
        reuse_port=settings.receiver_workers > 1,
    )
    server = start_scp(options, config=context.config, ingestor=make_ingestor(context))
    monitor = StabilityMonitor(
        state=context.state,
        blobs=context.blobs,
        bus=context.bus,
        stable_seconds=settings.stable_seconds,
        source=f"harmonet/receiver/{socket.gethostname()}",
    )
    try:
        await monitor.run_forever()
    finally:
        await asyncio.to_thread(server.shutdown)
        server.server_close()


service = Service(name="receiver", run=run)
