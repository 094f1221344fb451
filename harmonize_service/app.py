"""The harmonization service: applies the current model to each study's QC features.

Consumes `study.qc.completed` (and `study.received` for the covariates and software version
it carries, `scanner.configuration.changed` for software epochs); produces exactly one
`study.harmonized` per study revision and status: `harmonized`, `pending` (its batch is not in
the model yet) or `not_applicable` (with a reason). A pending batch is added to the model
(its own location/scale only, `newsite.add_batch`) once it has `min_batch_scans` scans, and
its pending studies are then published as harmonized; no earlier value changes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

from pydantic import ValidationError

from harmonize_service.combat import CombatError, CombatModel, apply
from harmonize_service.images import IntensityStore, standardise_study
from harmonize_service.install_requests import serve as serve_install_requests
from harmonize_service.newsite import add_batch
from harmonize_service.store import MODEL_LOCK, ModelStore
from harmonize_service.study import (
    BatchKind,
    Scan,
    StudyRecord,
    batch_of,
    covariates_of,
    is_phantom,
    record_of,
    study_features,
)
from services import metrics
from services.blobstore import BlobStoreError
from services.bus import Bus, Delivery, PermanentError, RetryableError
from services.events import (
    ScannerConfigurationChanged,
    StudyHarmonized,
    StudyQCCompleted,
    StudyReceived,
    make_event,
)
from services.runner import Context, Service
from services.state import StateError, StateStore
from services.state.lock import LockTimeout, state_lock

log = logging.getLogger(__name__)
QUEUE = "harmonize"
ROUTING_KEYS = ("study.received", "study.qc.completed", "scanner.configuration.changed")
STUDY_TTL_SECONDS = 90 * 24 * 3600.0


def study_key(study_uid: str, revision: int) -> str:
    return f"harmonize:study:{study_uid}:r{revision}"


def pending_key(batch: str) -> str:
    return f"harmonize:pending:{batch}"


def epochs_key(scanner: str) -> str:
    return f"harmonize:epochs:{scanner}"


@dataclass(frozen=True)
class HarmonizeHandler:
    store: ModelStore
    state: StateStore
    bus: Bus
    source: str
    batch_kind: BatchKind = "site"
    min_batch_scans: int = 25
    intensity: IntensityStore | None = None
    intensity_method: str = "nyul"

    async def __call__(self, delivery: Delivery) -> None:
        try:
            if delivery.routing_key == "study.received":
                await self._received(StudyReceived.model_validate(delivery.event.data))
            elif delivery.routing_key == "scanner.configuration.changed":
                changed = ScannerConfigurationChanged.model_validate(delivery.event.data)
                await self._configuration_changed(changed)
            else:
                await self._qc_completed(StudyQCCompleted.model_validate(delivery.event.data))
        except ValidationError as exc:
            raise PermanentError(
                f"invalid {delivery.routing_key}: {exc.error_count()} errors"
            ) from exc
        except (StateError, BlobStoreError, LockTimeout) as exc:
            raise RetryableError(str(exc)) from exc

    async def _received(self, received: StudyReceived) -> None:
        key = study_key(received.study_uid, received.revision)
        record = record_of(received).to_json()
        await asyncio.to_thread(self.state.set, key, record, ttl_seconds=STUDY_TTL_SECONDS)

    async def _configuration_changed(self, changed: ScannerConfigurationChanged) -> None:
        # The epoch label comes from each study's own SoftwareVersions (robust to studies
        # arriving out of order); the changes are kept as the epochs' first studies.
        starts = {
            str(c.current): changed.study_uid.encode()
            for c in changed.changes
            if c.parameter == "SoftwareVersions"
        }
        if starts:
            await asyncio.to_thread(self.state.hset, epochs_key(changed.scanner), starts)

    async def _qc_completed(self, completed: StudyQCCompleted) -> None:
        raw = await asyncio.to_thread(
            self.state.get, study_key(completed.study_uid, completed.revision)
        )
        record = StudyRecord.from_json(raw) if raw else None
        if is_phantom(completed, record):
            current = await asyncio.to_thread(self.store.current_version)
            return await self._not_applicable(completed, "phantom", version=current or "",
                                              batch=None)
        images = await asyncio.to_thread(self._standardise_images, completed)
        version = await asyncio.to_thread(self.store.current_version)
        if version is None:
            return await self._not_applicable(completed, "no_model", version="", batch=None,
                                              images=images)
        model = await asyncio.to_thread(self.store.load, version)
        scan = Scan(
            study_uid=completed.study_uid,
            revision=completed.revision,
            site=completed.site,
            scanner=completed.scanner,
            features=study_features(completed),
            covariates=covariates_of(record),
        )
        if not all(f in scan.features for f in model.feature_names):
            return await self._not_applicable(completed, "no_features", version=version,
                                              batch=None, images=images)
        if record is None and (model.covariate_names or self.batch_kind == "scanner_epoch"):
            # study.received is published long before QC ends; a redelivery will find it.
            raise RetryableError(f"study.received of {completed.study_uid} not recorded yet")
        batch = batch_of(self.batch_kind, completed, record)
        if not scan.has(model.feature_names, model.covariate_names):
            return await self._not_applicable(completed, "missing_covariates", version=version,
                                              batch=batch, images=images)
        if batch in model.batch_levels:
            await self._flush_pending(batch, model, version)
            await self._harmonize(scan, model, version, batch, images=images)
        else:
            await self._pending(scan, batch, images=images)

    def _standardise_images(self, completed: StudyQCCompleted) -> dict[str, str]:
        if self.intensity is None or self.intensity_method == "off":
            return {}
        model = self.intensity.current() if self.intensity_method == "nyul" else None
        return standardise_study(completed, blobs=self.intensity.blobs, model=model,
                                 method=self.intensity_method)

    async def _pending(self, scan: Scan, batch: str, *, images: dict[str, str]) -> None:
        async with state_lock(self.state, MODEL_LOCK):
            version = await asyncio.to_thread(self.store.current_version)
            assert version is not None  # only ever replaced, never deleted
            model = await asyncio.to_thread(self.store.load, version)
            if batch not in model.batch_levels:
                field = f"{scan.study_uid}:r{scan.revision}"
                await asyncio.to_thread(
                    self.state.hset, pending_key(batch), {field: scan.to_json()}
                )
                added = await asyncio.to_thread(self._add_batch_if_ready, model, batch)
                if added is None:
                    return await self._publish(scan, status="pending", version=version,
                                               batch=batch, images=images)
                model, version = added
        await self._flush_pending(batch, model, version)

    def _add_batch_if_ready(self, model: CombatModel, batch: str) -> tuple[CombatModel, str] | None:
        scans = self._pending_scans(batch, model)
        if len(scans) < self.min_batch_scans:
            return None
        try:
            extended = add_batch(
                model,
                [[s.features[f] for f in model.feature_names] for s in scans],
                {c: [s.covariates[c] for s in scans] for c in model.covariate_names},
                batch=batch,
            )
        except CombatError as exc:
            log.error("cannot add batch", extra={"batch": batch, "error": str(exc)})
            return None
        version = self.store.put_model(extended)
        self.store.make_current(version)
        log.info("batch added to the model",
                 extra={"batch": batch, "scans": len(scans), "model_version": version})
        return extended, version

    def _pending_scans(self, batch: str, model: CombatModel) -> list[Scan]:
        raw = self.state.hgetall(pending_key(batch))
        scans = [Scan.from_json(raw[k]) for k in sorted(raw)]
        return [s for s in scans if s.has(model.feature_names, model.covariate_names)]

    async def _flush_pending(self, batch: str, model: CombatModel, version: str) -> None:
        """Publish the pending studies of a batch that is now in the model, then forget them
        (a crash in between re-publishes the same facts under the same event ids)."""
        scans = await asyncio.to_thread(self._pending_scans, batch, model)
        for scan in scans:
            await self._harmonize(scan, model, version, batch)
        if scans:
            await asyncio.to_thread(self.state.delete, pending_key(batch))

    async def _harmonize(
        self, scan: Scan, model: CombatModel, version: str, batch: str,
        *, images: dict[str, str] | None = None,
    ) -> None:
        try:
            values = apply(
                model,
                [[scan.features[f] for f in model.feature_names]],
                [batch],
                {c: [scan.covariates[c]] for c in model.covariate_names},
            )
        except CombatError as exc:
            log.warning("study not harmonizable",
                        extra={"study_uid": scan.study_uid, "error": str(exc)})
            return await self._publish(scan, status="not_applicable", version=version,
                                       batch=batch, reason="invalid_covariates", images=images)
        harmonized = {n: float(v) for n, v in zip(model.feature_names, values[0], strict=True)}
        await self._publish(scan, status="harmonized", version=version, batch=batch,
                            features=harmonized, images=images)

    async def _not_applicable(
        self, completed: StudyQCCompleted, reason: str, *, version: str, batch: str | None,
        images: dict[str, str] | None = None,
    ) -> None:
        scan = Scan(completed.study_uid, completed.revision, completed.site, completed.scanner,
                    {}, {})
        await self._publish(scan, status="not_applicable", version=version, batch=batch,
                            reason=reason, images=images)

    async def _publish(
        self,
        scan: Scan,
        *,
        status: str,
        version: str,
        batch: str | None,
        reason: str | None = None,
        features: dict[str, float] | None = None,
        images: dict[str, str] | None = None,
    ) -> None:
        data = StudyHarmonized.model_validate(
            {
                "study_uid": scan.study_uid,
                "revision": scan.revision,
                "site": scan.site,
                "scanner": scan.scanner,
                "model_version": version,
                "features": features or {},
                "status": status,
                "reason": reason,
                "batch": batch,
                "images": images or {},
            }
        )
        await self.bus.publish(
            make_event(
                "study.harmonized",
                data,
                source=self.source,
                subject=scan.study_uid,
                id_parts=(scan.study_uid, scan.revision, status),
            )
        )
        metrics.HARMONIZE_STUDIES.labels(site=scan.site, status=status).inc()


async def run(context: Context) -> None:
    handler = HarmonizeHandler(
        store=ModelStore(blobs=context.blobs, state=context.state),
        state=context.state,
        bus=context.bus,
        source=f"harmonet/harmonize/{socket.gethostname()}",
        batch_kind=context.settings.harmonize_batch,
        min_batch_scans=context.settings.harmonize_min_site_scans,
        intensity=IntensityStore(blobs=context.blobs, state=context.state),
        intensity_method=context.settings.harmonize_intensity,
    )
    await context.bus.subscribe(QUEUE, list(ROUTING_KEYS), handler)
    # `harmonet harmonize install` beside a running `harmonet up` (install_requests)
    await serve_install_requests(context.settings.data_dir, state=context.state,
                                 blobs=context.blobs)


service = Service(name="harmonize", run=run)
