"""The compliance service: every series of a received study classified and checked.

Consumes `study.received`; produces `study.compliance.checked` (one per study
revision) and `scanner.configuration.changed`. Reads a few headers per series
from the blob store, never pixel data. History per site x scanner x series type
(for the inferred site reference) and the last known device identity per
scanner live in the state store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydicom import dcmread
from pydicom.dataset import Dataset

from compliance_service.check import check_study
from compliance_service.fingerprint import Fingerprint, series_fingerprint
from compliance_service.reference import configuration_changes, infer_reference
from services import metrics
from services.blobstore import FileBlobStore
from services.bus import Bus, Delivery, PermanentError, RetryableError
from services.config import HarmonetConfig
from services.events import (
    ConfigurationChange,
    ScannerConfigurationChanged,
    SeriesManifest,
    StudyComplianceChecked,
    StudyReceived,
    make_event,
)
from services.runner import Context, Service
from services.state import StateError, StateStore
from services.state.lock import LockTimeout, state_lock

log = logging.getLogger(__name__)
QUEUE = "compliance"
HISTORY_LIMIT = 50  # studies kept per site x scanner x series type
DEVICE_KEYS = ("SoftwareVersions", "DeviceSerialNumber")


def read_series_headers(blobs: FileBlobStore, series: SeriesManifest) -> list[Dataset]:
    """First, middle and last instance of a series, without pixel data."""
    keys = series.blob_keys
    picks = sorted({0, len(keys) // 2, len(keys) - 1})
    return [dcmread(blobs.path(keys[i]), stop_before_pixels=True) for i in picks]


@dataclass(frozen=True)
class History:
    """Per site x scanner: fingerprints by series type and study, and the device identity."""

    state: StateStore
    site: str
    scanner: str

    def _key(self, series_type: str) -> str:
        return f"compliance:history:{self.site}:{self.scanner}:{series_type}"

    def fingerprints(self, series_type: str) -> dict[str, Fingerprint]:
        raw = self.state.get(self._key(series_type))
        loaded: dict[str, Fingerprint] = json.loads(raw) if raw else {}
        return loaded

    def record(self, series_type: str, study_uid: str, fingerprint: Fingerprint) -> None:
        history = self.fingerprints(series_type)
        history.pop(study_uid, None)  # a redelivered study replaces itself, never counts twice
        history[study_uid] = fingerprint
        kept = dict(list(history.items())[-HISTORY_LIMIT:])
        self.state.set(self._key(series_type), json.dumps(kept).encode())

    def swap_device(self, device: dict[str, Any]) -> dict[str, Any] | None:
        key = f"compliance:device:{self.site}:{self.scanner}"
        raw = self.state.get(key)
        self.state.set(key, json.dumps(device).encode())
        previous: dict[str, Any] | None = json.loads(raw) if raw else None
        return previous


async def handle_study_received(
    delivery: Delivery,
    *,
    config: HarmonetConfig,
    blobs: FileBlobStore,
    state: StateStore,
    bus: Bus,
    source: str,
) -> None:
    try:
        study = StudyReceived.model_validate(delivery.event.data)
    except ValidationError as exc:
        raise PermanentError(f"study.received data invalid: {exc.error_count()} errors") from exc
    try:
        fingerprints = await asyncio.to_thread(_fingerprints, blobs, study.series)
    except FileNotFoundError as exc:
        raise RetryableError(f"blob missing: {exc.filename}") from exc
    try:
        async with state_lock(state, f"lock:compliance:{study.site}:{study.scanner}"):
            await _check_and_publish(
                study, fingerprints, config=config, state=state, bus=bus, source=source
            )
    except (StateError, LockTimeout) as exc:
        raise RetryableError(str(exc)) from exc


def _fingerprints(blobs: FileBlobStore, series: Sequence[SeriesManifest]) -> dict[str, Fingerprint]:
    return {
        s.series_uid: series_fingerprint(
            read_series_headers(blobs, s), instance_count=s.instance_count
        )
        for s in series
    }


async def _check_and_publish(
    study: StudyReceived,
    fingerprints: dict[str, Fingerprint],
    *,
    config: HarmonetConfig,
    state: StateStore,
    bus: Bus,
    source: str,
) -> None:
    history = History(state, study.site, study.scanner)
    protocol = config.protocol_for_site(study.site)
    types = [rule.type for rule in protocol.series] if protocol else []
    before = {t: infer_reference(list(history.fingerprints(t).values())) for t in types}
    results = check_study(
        fingerprints, protocol, site=study.site, scanner=study.scanner, references=before
    )
    checked = StudyComplianceChecked(
        study_uid=study.study_uid,
        revision=study.revision,
        site=study.site,
        scanner=study.scanner,
        is_phantom=study.is_phantom,
        series=results,
    )
    await bus.publish(
        make_event(
            "study.compliance.checked",
            checked,
            source=source,
            subject=study.study_uid,
            id_parts=(study.study_uid, study.revision),
        )
    )
    for result in results:
        metrics.COMPLIANCE_SERIES.labels(
            site=study.site, scanner=study.scanner, result=result.verdict
        ).inc()
    changes = await asyncio.to_thread(_record, history, study, fingerprints, results, before)
    if changes:
        event = ScannerConfigurationChanged(
            site=study.site, scanner=study.scanner, study_uid=study.study_uid, changes=changes
        )
        await bus.publish(
            make_event(
                "scanner.configuration.changed",
                event,
                source=source,
                subject=study.scanner,
                id_parts=(study.site, study.scanner, study.study_uid, study.revision),
            )
        )
        log.info(
            "scanner configuration changed",
            extra={
                "site": study.site,
                "scanner": study.scanner,
                "parameters": [c.parameter for c in changes],
            },
        )


def _record(
    history: History,
    study: StudyReceived,
    fingerprints: dict[str, Fingerprint],
    results: Sequence[Any],
    before: dict[str, Fingerprint],
) -> list[ConfigurationChange]:
    """Add the study to the history; the changes of device identity and of modal values."""
    changes: list[ConfigurationChange] = []
    first = next(iter(fingerprints.values()), {})
    device = {key: first.get(key) for key in DEVICE_KEYS}
    previous = history.swap_device(device)
    if previous is not None:
        changes += [
            ConfigurationChange(parameter=k, previous=previous.get(k), current=v)
            for k, v in device.items()
            if v is not None and previous.get(k) != v
        ]
    for result in results:
        if result.series_type == "unrecognized":
            continue
        history.record(result.series_type, study.study_uid, fingerprints[result.series_uid])
        after = infer_reference(list(history.fingerprints(result.series_type).values()))
        if before.get(result.series_type):
            changes += [
                c
                for c in configuration_changes(
                    before[result.series_type], after, series_type=result.series_type
                )
                if c.parameter not in DEVICE_KEYS
            ]
    return changes


async def run(context: Context) -> None:
    source = f"harmonet/compliance/{socket.gethostname()}"

    async def handler(delivery: Delivery) -> None:
        await handle_study_received(
            delivery,
            config=context.config,
            blobs=context.blobs,
            state=context.state,
            bus=context.bus,
            source=source,
        )

    await context.bus.subscribe(QUEUE, ["study.received"], handler)
    await asyncio.Event().wait()


service = Service(name="compliance", run=run)
