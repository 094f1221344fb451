"""The QC service: image-quality metrics per series, phantom stability per scanner.

Consumes `study.compliance.checked`; produces `study.qc.completed`, and for
phantom series `scanner.phantom.measured` and `scanner.stability.alert`.
Control-chart state per scanner x metric lives in the state store (it survives
restarts and is shared by replicas; a scanner lock serialises updates).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from qc_service import control_chart
from qc_service.measure import SeriesMeasurement, measure_paths
from services import metrics
from services.blobstore import FileBlobStore, PutResult
from services.bus import Bus, Delivery, PermanentError, RetryableError
from services.events import (
    ScannerPhantomMeasured,
    ScannerStabilityAlert,
    SeriesCompliance,
    SeriesQC,
    StudyComplianceChecked,
    StudyQCCompleted,
    make_event,
)
from services.runner import Context, Service
from services.state import StateError, StateStore
from services.state.lock import LockTimeout, state_lock

log = logging.getLogger(__name__)
QUEUE = "qc"
BASELINE_SESSIONS = 8
MAX_PARALLEL_SERIES = 4


def chart_key(site: str, scanner: str, metric: str) -> str:
    return f"qc:chart:{site}:{scanner}:{metric}"


@dataclass(frozen=True)
class QCHandler:
    blobs: FileBlobStore
    state: StateStore
    bus: Bus
    source: str
    baseline_sessions: int = BASELINE_SESSIONS

    async def __call__(self, delivery: Delivery) -> None:
        try:
            checked = StudyComplianceChecked.model_validate(delivery.event.data)
        except ValidationError as exc:
            raise PermanentError(
                f"invalid study.compliance.checked: {exc.error_count()} errors"
            ) from exc
        results = []
        # Series are measured concurrently (numpy/SimpleITK release the GIL): a T1w and a BOLD
        # run side by side on two cores; results are then taken in the study's series order.
        slots = asyncio.Semaphore(max(1, min(MAX_PARALLEL_SERIES, os.cpu_count() or 1)))

        async def measured(series: SeriesCompliance) -> tuple[SeriesMeasurement, dict[str, str]]:
            async with slots:
                measurement = await asyncio.to_thread(self._measure, checked, series)
                report = await asyncio.to_thread(self._store_report, checked, series,
                                                 measurement)
                return measurement, report

        done = await asyncio.gather(*(measured(series) for series in checked.series))
        for series, (measurement, report) in zip(checked.series, done, strict=True):
            results.append(
                SeriesQC(
                    series_uid=series.series_uid,
                    series_type=series.series_type,
                    kind=measurement.kind,
                    status="measured" if measurement.measured else "not_measured",
                    reason=measurement.reason,
                    metrics=measurement.metrics,
                    features=measurement.features,
                    report=report,
                )
            )
            result = "measured" if measurement.measured else "not_measured"
            metrics.QC_SERIES.labels(
                site=checked.site, scanner=checked.scanner, result=result
            ).inc()
            if measurement.measured and measurement.kind in ("fbirn", "acr"):
                await self._phantom(checked, series, measurement)
        completed = StudyQCCompleted(
            study_uid=checked.study_uid,
            revision=checked.revision,
            site=checked.site,
            scanner=checked.scanner,
            series=results,
        )
        await self.bus.publish(
            make_event(
                "study.qc.completed",
                completed,
                source=self.source,
                subject=checked.study_uid,
                id_parts=(checked.study_uid, checked.revision),
            )
        )

    def _measure(
        self, checked: StudyComplianceChecked, series: SeriesCompliance
    ) -> SeriesMeasurement:
        prefix = f"dicom/{checked.site}/{checked.study_uid}/{series.series_uid}"
        paths = [self.blobs.path(key) for key in self.blobs.list(prefix)]
        if not paths:
            raise RetryableError(f"no instances under {prefix}")
        return measure_paths(paths, series_type=series.series_type, is_phantom=checked.is_phantom)

    def _store_report(
        self,
        checked: StudyComplianceChecked,
        series: SeriesCompliance,
        measurement: SeriesMeasurement,
    ) -> dict[str, str]:
        prefix = f"qc/{checked.site}/{checked.study_uid}/r{checked.revision}/{series.series_uid}"
        links = {}
        for name, content in measurement.files.items():
            key = f"{prefix}/{name}"
            if self.blobs.put_new(key, content) is PutResult.CONFLICT:
                log.info("report of a redelivered study kept as first written", extra={"key": key})
            links[Path(name).stem] = key
        return links

    async def _phantom(
        self,
        checked: StudyComplianceChecked,
        series: SeriesCompliance,
        measurement: SeriesMeasurement,
    ) -> None:
        site, scanner = checked.site, checked.scanner
        zscores: dict[str, float | None] = {}
        alerts: list[ScannerStabilityAlert] = []
        try:
            async with state_lock(self.state, f"lock:qc:{site}:{scanner}"):
                for metric, value in measurement.metrics.items():
                    if value is None:
                        continue
                    update = await asyncio.to_thread(
                        self._update_chart, site, scanner, metric, value, checked.study_uid
                    )
                    zscores[metric] = update.zscore
                    metrics.PHANTOM_METRIC.labels(site=site, scanner=scanner, metric=metric).set(
                        value
                    )
                    if update.zscore is not None:
                        metrics.SCANNER_STABILITY_ZSCORE.labels(
                            site=site, scanner=scanner, metric=metric
                        ).set(update.zscore)
                    _export_control_limits(site, scanner, metric, update.state)
                    if update.transition is not None:
                        alerts.append(
                            ScannerStabilityAlert(
                                site=site,
                                scanner=scanner,
                                metric=metric,
                                state=update.transition,
                                value=value,
                                zscore=update.zscore,
                                study_uid=checked.study_uid,
                            )
                        )
        except (StateError, LockTimeout) as exc:
            raise RetryableError(str(exc)) from exc
        measured = ScannerPhantomMeasured(
            site=site,
            scanner=scanner,
            study_uid=checked.study_uid,
            series_uid=series.series_uid,
            phantom_type="fbirn" if measurement.kind == "fbirn" else "acr",
            metrics=measurement.metrics,
            zscores=zscores,
        )
        await self.bus.publish(
            make_event(
                "scanner.phantom.measured",
                measured,
                source=self.source,
                subject=scanner,
                id_parts=(scanner, checked.study_uid, series.series_uid, checked.revision),
            )
        )
        for alert in alerts:
            log.warning(
                "scanner stability alert",
                extra={
                    "site": site,
                    "scanner": scanner,
                    "metric": alert.metric,
                    "state": alert.state,
                },
            )
            await self.bus.publish(
                make_event(
                    "scanner.stability.alert",
                    alert,
                    source=self.source,
                    subject=scanner,
                    id_parts=(scanner, alert.metric, alert.state, checked.study_uid),
                )
            )

    def _update_chart(
        self, site: str, scanner: str, metric: str, value: float, session_id: str
    ) -> control_chart.ChartUpdate:
        key = chart_key(site, scanner, metric)
        raw = self.state.get(key)
        previous = control_chart.ChartState.from_json(raw.decode()) if raw else None
        update = control_chart.update(
            previous, value, baseline_sessions=self.baseline_sessions, session_id=session_id
        )
        self.state.set(key, update.state.to_json().encode())
        return update


def _export_control_limits(
    site: str, scanner: str, metric: str, chart: control_chart.ChartState
) -> None:
    """Centre +- L sigma of a frozen baseline, for the scanner stability dashboard."""
    if chart.centre is None or chart.sigma is None:
        return
    half_width = chart.parameters.ewma_limit_sigmas * chart.sigma
    bounds = {"lower": chart.centre - half_width, "centre": chart.centre,
              "upper": chart.centre + half_width}
    for bound, value in bounds.items():
        metrics.PHANTOM_CONTROL_LIMIT.labels(
            site=site, scanner=scanner, metric=metric, bound=bound
        ).set(value)


async def run(context: Context) -> None:
    handler = QCHandler(
        blobs=context.blobs,
        state=context.state,
        bus=context.bus,
        source=f"harmonet/qc/{socket.gethostname()}",
    )
    await context.bus.subscribe(QUEUE, ["study.compliance.checked"], handler)
    await asyncio.Event().wait()


service = Service(name="qc", run=run)
