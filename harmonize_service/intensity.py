"""Image-level intensity standardisation of T1w volumes.

Nyúl & Udupa (1999; Nyúl, Udupa & Zhang 2000): percentile landmarks of each reference
image, linearly mapped so its [p_min, p_max] spans a standard range, are averaged into a
standard scale; a new image is mapped piecewise-linearly from its own landmarks onto that
scale. WhiteStripe (Shinohara et al. 2014): z-scores against the intensities of
normal-appearing white matter, found around the last (T1w: brightest) mode of the smoothed
foreground histogram. Pure numpy/scipy on arrays; NIfTI bytes through nibabel.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
from numpy.typing import NDArray
from scipy.signal import argrelmax
from scipy.stats import gaussian_kde

from harmonize_service.model import content_digest

FORMAT = "harmonet.nyul/1"
Array = NDArray[Any]


class IntensityError(ValueError):
    """An image (or cohort) that cannot be standardised, with why."""


@dataclass(frozen=True)
class NyulModel:
    percentiles: tuple[float, ...]
    standard_scale: tuple[float, ...]
    output_min: float
    output_max: float
    cohort_size: int

    @property
    def version(self) -> str:
        return content_digest(self._content())

    def _content(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "percentiles": list(self.percentiles),
            "standard_scale": list(self.standard_scale),
            "output_min": self.output_min,
            "output_max": self.output_max,
            "cohort_size": self.cohort_size,
        }

    def to_json(self) -> str:
        return json.dumps({**self._content(), "version": self.version}, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> NyulModel:
        try:
            raw = json.loads(text)
            if raw.get("format") != FORMAT:
                raise IntensityError(f"not a {FORMAT} model: format {raw.get('format')!r}")
            model = cls(
                percentiles=tuple(float(p) for p in raw["percentiles"]),
                standard_scale=tuple(float(s) for s in raw["standard_scale"]),
                output_min=float(raw["output_min"]),
                output_max=float(raw["output_max"]),
                cohort_size=int(raw["cohort_size"]),
            )
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise IntensityError(f"malformed intensity model: {exc}") from exc
        values = [*model.percentiles, *model.standard_scale, model.output_min, model.output_max]
        if not np.isfinite(values).all():
            raise IntensityError("intensity model holds NaN or infinite values")
        if raw.get("version") not in (None, model.version):
            raise IntensityError("intensity model content does not match its version")
        return model


def default_percentiles(
    *, lowest: float = 1.0, highest: float = 99.0, step: float = 10.0
) -> tuple[float, ...]:
    """p1, the deciles p10..p90, p99: the landmark set of Nyúl et al. (2000)."""
    inner = np.arange(step, 100.0, step)
    return (lowest, *(float(p) for p in inner if lowest < p < highest), highest)


def foreground_mask(data: Array) -> Array:
    """Head voxels: above Otsu's threshold of the positive intensities (Otsu 1979)."""
    positive = data[np.isfinite(data) & (data > 0)]
    if positive.size == 0:
        raise IntensityError("the image has no positive voxels")
    counts, edges = np.histogram(positive, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    mass_low = np.cumsum(counts * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_low = mass_low / weight_low
        mean_high = (mass_low[-1] - mass_low) / weight_high
        between = weight_low * weight_high * (mean_low - mean_high) ** 2
    threshold = centres[int(np.nanargmax(between[:-1]))]
    return np.asarray(np.isfinite(data) & (data > threshold))


def fit_nyul(
    images: Sequence[Array],
    masks: Sequence[Array | None] | None = None,
    *,
    percentiles: Sequence[float] | None = None,
    output_min: float = 1.0,
    output_max: float = 100.0,
) -> NyulModel:
    """The standard scale: the mean over the cohort of each image's landmarks after mapping
    its [first, last] landmark onto [output_min, output_max]."""
    if not images:
        raise IntensityError("no reference images")
    if masks is not None and len(masks) != len(images):
        raise IntensityError(f"{len(images)} images but {len(masks)} masks")
    landmarks_at = np.asarray(percentiles or default_percentiles(), dtype=np.float64)
    if np.any(np.diff(landmarks_at) <= 0) or landmarks_at[0] < 0 or landmarks_at[-1] > 100:
        raise IntensityError("percentiles must increase strictly within [0, 100]")
    total = np.zeros(landmarks_at.size)
    for index, image in enumerate(images):
        voi = _voi(image, masks[index] if masks is not None else None, index)
        landmarks = np.percentile(voi, landmarks_at)
        low, high = landmarks[0], landmarks[-1]
        if high == low:
            raise IntensityError(f"image {index}: its lowest and highest landmarks are equal")
        total += output_min + (landmarks - low) * (output_max - output_min) / (high - low)
    return NyulModel(
        percentiles=tuple(float(p) for p in landmarks_at),
        standard_scale=tuple(float(s) for s in total / len(images)),
        output_min=output_min,
        output_max=output_max,
        cohort_size=len(images),
    )


def apply_nyul(model: NyulModel, image: Array, mask: Array | None = None) -> Array:
    """Every voxel mapped through the piecewise-linear function from this image's landmarks
    to the standard scale, extended linearly beyond the end landmarks."""
    voi = _voi(image, mask, 0)
    landmarks = np.percentile(voi, np.asarray(model.percentiles))
    if np.any(np.diff(landmarks) <= 0):
        raise IntensityError("the image's landmarks are not strictly increasing "
                             "(too few distinct intensities in the foreground)")
    return _piecewise_linear(np.asarray(image, dtype=np.float64), landmarks,
                             np.asarray(model.standard_scale))


@dataclass(frozen=True)
class WhiteStripe:
    mean: float
    std: float
    lower: float
    upper: float
    voxels: int


def fit_whitestripe(image: Array, mask: Array | None = None, *, width: float = 0.05,
                    tail_percentile: float = 96.0) -> WhiteStripe:
    """The white stripe of a T1w image: foreground voxels whose quantile lies within
    ±`width` of the quantile of the last mode of the smoothed histogram (the tail above
    `tail_percentile` removed first, as in Shinohara et al. 2014)."""
    data = np.asarray(image, dtype=np.float64)
    selected = np.asarray(mask, dtype=bool) if mask is not None else data > 0
    foreground = data[selected]
    if foreground.size < 2:
        raise IntensityError("no foreground voxels")
    body = foreground[foreground <= np.percentile(foreground, tail_percentile)]
    grid = np.linspace(body.min(), body.max(), 80)
    density = gaussian_kde(body)(grid)
    maxima = argrelmax(density)[0]
    mode = float(grid[maxima[-1]] if maxima.size else grid[np.argmax(density)])
    at = float(np.mean(foreground < mode))
    lower, upper = np.quantile(foreground, (max(at - width, 0.0), min(at + width, 1.0)))
    stripe = data[selected & (data > lower) & (data < upper)]
    if stripe.size == 0:
        raise IntensityError("the white stripe is empty")
    std = float(np.std(stripe))
    if std == 0:
        raise IntensityError("the white stripe has zero variance")
    return WhiteStripe(float(np.mean(stripe)), std, float(lower), float(upper), int(stripe.size))


def apply_whitestripe(stripe: WhiteStripe, image: Array) -> Array:
    return (np.asarray(image, dtype=np.float64) - stripe.mean) / stripe.std


def nifti_gz(data: Array, affine: Array) -> bytes:
    """A float32 NIfTI-1 image, gzip-compressed (deterministic: no timestamp in the header)."""
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine)  # type: ignore[no-untyped-call]
    image.header.set_xyzt_units("mm", "sec")  # type: ignore[no-untyped-call]
    return gzip.compress(image.to_bytes(), mtime=0)


def _voi(image: Array, mask: Array | None, index: int) -> Array:
    data = np.asarray(image, dtype=np.float64)
    if mask is not None:
        if mask.shape != data.shape:
            raise IntensityError(f"image {index}: mask shape {mask.shape} != {data.shape}")
        voi = data[np.asarray(mask, dtype=bool)]
    else:
        voi = data[data > 0]
    if voi.size == 0:
        raise IntensityError(f"image {index}: no foreground voxels")
    if not np.all(np.isfinite(voi)):
        raise IntensityError(f"image {index}: non-finite intensities in the foreground")
    return np.asarray(voi, dtype=np.float64)


def _piecewise_linear(values: Array, xs: Array, ys: Array) -> Array:
    out = np.interp(values, xs, ys)
    below, above = values < xs[0], values > xs[-1]
    out[below] = ys[0] + (values[below] - xs[0]) * (ys[1] - ys[0]) / (xs[1] - xs[0])
    out[above] = ys[-1] + (values[above] - xs[-1]) * (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return out
