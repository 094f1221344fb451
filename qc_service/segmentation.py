"""Head mask, brain mask and 3-class tissue segmentation of a T1w volume without
registration (numpy / scipy / SimpleITK only), and the derived harmonization features.

Brain mask (intensity + morphology): inside the head, voxels brighter than the first of
three Otsu thresholds (dark bone and air below it) are eroded by `erode_mm` to cut the
thin bridges to scalp, the largest component is kept, grown back into the thresholded
voxels (conditional dilation), closed and hole-filled (ventricles). Tissues: a 3-class
Gaussian mixture fitted by EM on the intensity histogram of the brain; the hard labels
are the argmax of the posteriors smoothed in space (sigma `smooth_mm`), a light MRF-like
prior against isolated noise labels; the partial-volume maps are the unsmoothed posteriors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as _sitk
from scipy import ndimage

sitk: Any = _sitk  # SimpleITK's SWIG methods are untyped

CSF, GM, WM = 1, 2, 3  # FSL FAST's label order, as MRIQC uses it


@dataclass(frozen=True)
class Segmentation:
    labels: np.ndarray  # uint8: 0 outside the brain, CSF=1, GM=2, WM=3
    # "csf" / "gm" / "wm" -> float32 in [0, 1], 0 outside: the voxel-wise mixture
    # posteriors, used as partial-volume maps (as MRIQC uses FAST's)
    posteriors: dict[str, np.ndarray]
    means: tuple[float, float, float]  # fitted class means, CSF < GM < WM


def _ball(radius_vox: tuple[int, ...]) -> np.ndarray:
    grids = np.ogrid[tuple(slice(-r, r + 1) for r in radius_vox)]
    return np.asarray(sum((g / max(r, 1)) ** 2 for g, r in zip(grids, radius_vox, strict=True))
                      <= 1.0)


def _radius(mm: float, zooms: tuple[float, ...]) -> tuple[int, ...]:
    return tuple(max(1, round(mm / z)) for z in zooms[:3])


def bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, ...]:
    """The slices of `mask`'s bounding box grown by `margin` voxels (clipped to the grid);
    the whole grid when the mask is empty. Morphology on the crop equals morphology on the
    full grid when `margin` exceeds the structuring element's reach: the crop is ~40% of a
    typical 1 mm T1w field of view."""
    out = []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if present.size == 0:
            return tuple(slice(None) for _ in range(mask.ndim))
        out.append(slice(max(0, int(present[0]) - margin),
                         min(mask.shape[axis], int(present[-1]) + margin + 1)))
    return tuple(out)


def _paste(crop: np.ndarray, box: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
    full = np.zeros(shape, dtype=crop.dtype)
    full[box] = crop
    return full


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask.astype(bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return np.asarray(labels == int(sizes.argmax()))


def otsu_thresholds(values: np.ndarray, count: int, *, bins: int = 256) -> list[float]:
    image = sitk.GetImageFromArray(values.astype(np.float32).reshape(-1, 1, 1))
    otsu = sitk.OtsuMultipleThresholdsImageFilter()
    otsu.SetNumberOfThresholds(count)
    otsu.SetNumberOfHistogramBins(bins)
    otsu.Execute(image)
    return [float(t) for t in otsu.GetThresholds()]


def head_mask(image: np.ndarray, zooms: tuple[float, ...]) -> np.ndarray:
    """Otsu foreground, closed (3 mm), largest component, holes filled slice-wise and in 3D
    (the dark skull and sinuses are inside the head)."""
    sample = image[:: 2, :: 2, :: 2]
    threshold = otsu_thresholds(sample[np.isfinite(sample)], 1)[0]
    mask = image > threshold
    ball = _ball(_radius(3.0, zooms))
    box = bounding_box(mask, max(ball.shape) + 1)
    crop = ndimage.binary_closing(mask[box], ball, border_value=0)
    crop = np.asarray(ndimage.binary_fill_holes(largest_component(crop)), dtype=bool)
    return _paste(crop, box, image.shape)


def brain_mask(image: np.ndarray, head: np.ndarray, zooms: tuple[float, ...], *,
               erode_mm: float = 4.0) -> np.ndarray:
    low = otsu_thresholds(image[head], 3)[0]
    # everything below happens inside the head: work on its bounding box
    box = bounding_box(head, max(_radius(max(erode_mm, 2.0), zooms)) + 2)
    candidate = head[box] & (image[box] > low)
    core = ndimage.binary_erosion(candidate, _ball(_radius(erode_mm, zooms)))
    core = largest_component(core)
    grow = _ball((1, 1, 1))
    for _ in range(max(_radius(erode_mm, zooms)) + 1):
        core = ndimage.binary_dilation(core, grow) & candidate
    core = ndimage.binary_closing(core, _ball(_radius(2.0, zooms)), border_value=0)
    return _paste(np.asarray(ndimage.binary_fill_holes(core), dtype=bool), box, image.shape)


def _gmm_histogram(values: np.ndarray, *, iterations: int = 60, bins: int = 512
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM for a 3-component 1D Gaussian mixture on the histogram (weights = counts)."""
    low, high = np.percentile(values, [0.5, 99.5])
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    centres = (edges[:-1] + edges[1:]) / 2
    means = np.array(otsu_class_means(values, low, high))
    sigmas = np.full(3, (high - low) / 10)
    weights = np.full(3, 1 / 3)
    for _ in range(iterations):
        resp = _responsibilities(centres, means, sigmas, weights)
        mass = (resp * counts).sum(axis=1) + 1e-12
        means = (resp * counts * centres).sum(axis=1) / mass
        sigmas = np.sqrt((resp * counts * (centres - means[:, None]) ** 2).sum(axis=1) / mass)
        sigmas = np.maximum(sigmas, (high - low) / bins)
        weights = mass / mass.sum()
    order = np.argsort(means)
    return means[order], sigmas[order], weights[order]


def otsu_class_means(values: np.ndarray, low: float, high: float) -> list[float]:
    t1, t2 = otsu_thresholds(values, 2)
    return [float(np.mean(values[values <= t1])) if np.any(values <= t1) else low,
            float(np.mean(values[(values > t1) & (values <= t2)])),
            float(np.mean(values[values > t2])) if np.any(values > t2) else high]


def _responsibilities(x: np.ndarray, means: np.ndarray, sigmas: np.ndarray,
                      weights: np.ndarray) -> np.ndarray:
    z = (x[None, :] - means[:, None]) / sigmas[:, None]
    log_p = np.log(weights[:, None]) - np.log(sigmas[:, None]) - 0.5 * z**2
    log_p -= log_p.max(axis=0, keepdims=True)
    p = np.exp(log_p)
    return np.asarray(p / p.sum(axis=0, keepdims=True))


def segment_tissues(image: np.ndarray, brain: np.ndarray, zooms: tuple[float, ...], *,
                    smooth_mm: float = 1.0) -> Segmentation:
    values = image[brain].astype(np.float64)
    means, sigmas, weights = _gmm_histogram(values)
    resp = _responsibilities(values, means, sigmas, weights).astype(np.float32)
    sigma_vox = [smooth_mm / z for z in zooms[:3]]
    # the fields are 0 outside the brain (mode="constant"): smoothing its bounding box grown
    # by the kernel's reach (truncate 4 sigma) gives the same values inside the brain
    box = bounding_box(brain, int(4.0 * max(sigma_vox) + 0.5) + 1)
    inside = brain[box]
    posteriors = []
    for k in range(3):
        field = np.zeros(inside.shape, dtype=np.float32)
        field[inside] = resp[k]
        posteriors.append(ndimage.gaussian_filter(field, sigma_vox, mode="constant"))
    labels = np.zeros(image.shape, dtype=np.uint8)
    labels[brain] = np.stack([p[inside] for p in posteriors]).argmax(axis=0).astype(np.uint8) + 1
    maps = []
    for k in range(3):
        field = np.zeros(image.shape, dtype=np.float32)
        field[brain] = resp[k]
        maps.append(field)
    return Segmentation(labels=labels, posteriors={"csf": maps[0], "gm": maps[1], "wm": maps[2]},
                        means=(float(means[0]), float(means[1]), float(means[2])))


def tissue_features(image: np.ndarray, segmentation: Segmentation, brain: np.ndarray,
                    zooms: tuple[float, ...]) -> dict[str, float | None]:
    """Volumes in mL from the posteriors (partial-volume aware), ICV = brain mask volume;
    tissue intensity medians (hard labels) divided by the WM median, which removes the
    arbitrary scanner scale (so the features compare across sites before harmonization)."""
    voxel_ml = math.prod(zooms[:3]) / 1000.0
    features: dict[str, float | None] = {
        f"{name}_volume_ml": float(p.sum(dtype=np.float64)) * voxel_ml
        for name, p in segmentation.posteriors.items()
    }
    features["icv_ml"] = float(brain.sum()) * voxel_ml
    medians = {name: float(np.median(image[segmentation.labels == label]))
               if np.any(segmentation.labels == label) else None
               for name, label in (("csf", CSF), ("gm", GM), ("wm", WM))}
    wm = medians["wm"]
    for name in ("csf", "gm"):
        value = medians[name]
        features[f"{name}_to_wm_median"] = value / wm if value is not None and wm else None
    return features
