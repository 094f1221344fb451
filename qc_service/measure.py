"""One series in, its QC out: which measurement a series gets and the report files.

Pure of the bus and the state store: used by the service and by `harmonet qc run`.
A series that cannot be measured (corrupt, incomplete, not a QC'd type) gets a
result that says why, never an exception.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from qc_service.report import carpet_png, mosaic_png
from services.volume import Volume, VolumeError, load_dicom_series

log = logging.getLogger(__name__)
Kind = Literal["anatomical", "functional", "fbirn", "acr", "none"]
ANATOMICAL_TYPES = frozenset({"t1w", "t2w", "flair", "pdw"})
FUNCTIONAL_TYPES = frozenset({"bold", "fmri", "rest"})
PHANTOM_TYPES = frozenset({"fbirn", "acr", "phantom"})


@dataclass(frozen=True)
class SeriesMeasurement:
    kind: Kind
    metrics: dict[str, float | None] = field(default_factory=dict)
    features: dict[str, float | None] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # report name -> content
    reason: str | None = None  # set when the series could not be measured

    @property
    def measured(self) -> bool:
        return self.reason is None


def choose_kind(series_type: str, *, is_phantom: bool, volume: Volume) -> Kind:
    if is_phantom or series_type in PHANTOM_TYPES:
        if series_type == "acr" or volume.data.ndim == 3:
            return "acr"
        return "fbirn"
    if series_type in ANATOMICAL_TYPES:
        return "anatomical"
    if series_type in FUNCTIONAL_TYPES and volume.data.ndim == 4:
        return "functional"
    return "none"


def measure_paths(
    paths: Sequence[Path], *, series_type: str, is_phantom: bool
) -> SeriesMeasurement:
    try:
        volume = load_dicom_series(paths)
    except VolumeError as exc:
        return SeriesMeasurement(kind="none", reason=f"cannot build a volume: {exc.reason}")
    return measure_volume(volume, series_type=series_type, is_phantom=is_phantom)


def measure_volume(volume: Volume, *, series_type: str, is_phantom: bool) -> SeriesMeasurement:
    kind = choose_kind(series_type, is_phantom=is_phantom, volume=volume)
    if kind == "none":
        return SeriesMeasurement(
            kind="none",
            reason=f"no QC defined for series type {series_type!r} ({volume.data.ndim}D)",
        )
    try:
        metrics, features, extra = _MEASURE[kind](volume)
    except Exception as exc:  # science on arbitrary input: report it, never a poison message
        log.warning("series could not be measured", extra={"kind": kind, "error": repr(exc)})
        return SeriesMeasurement(
            kind=kind, reason=f"measurement failed: {type(exc).__name__}: {exc}"
        )
    files = {"mosaic.png": mosaic_png(volume.data), **extra}
    files["metrics.json"] = json.dumps(
        {"kind": kind, "metrics": metrics, "features": features}, indent=2, sort_keys=True
    ).encode()
    return SeriesMeasurement(kind=kind, metrics=metrics, features=features, files=files)


Measured = tuple[dict[str, float | None], dict[str, float | None], dict[str, bytes]]


def _anatomical(volume: Volume) -> Measured:
    from qc_service.anatomical import measure_anatomical

    result = measure_anatomical(volume)
    return dict(result.metrics), dict(result.features), {}


def _functional(volume: Volume) -> Measured:
    from qc_service.metrics.functional import foreground_mask, functional_iqms

    metrics = functional_iqms(
        volume.data, zooms=volume.zooms[:3], repetition_time_s=volume.repetition_time_s
    )
    carpet = carpet_png(volume.data, foreground_mask(volume.data))
    return dict(metrics), {}, {"carpet.png": carpet}


def _fbirn(volume: Volume) -> Measured:
    from qc_service.metrics.phantom import fbirn_metrics

    metrics = fbirn_metrics(volume.data, repetition_time_s=volume.repetition_time_s)
    return {k: float(v) for k, v in metrics.items()}, {}, {}


def _acr(volume: Volume) -> Measured:
    from qc_service.metrics.phantom import acr_metrics

    data = volume.data.mean(axis=3) if volume.data.ndim == 4 else volume.data
    return {k: float(v) for k, v in acr_metrics(data).items()}, {}, {}


_MEASURE = {"anatomical": _anatomical, "functional": _functional, "fbirn": _fbirn, "acr": _acr}
