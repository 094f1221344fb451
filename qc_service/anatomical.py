"""One pass over a T1w/T2w/FLAIR volume: N4 bias field, head and brain masks, tissue
segmentation, MRIQC's IQMs and the features harmonization consumes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as _sitk
from scipy import ndimage

from qc_service import segmentation as seg
from qc_service.metrics import anatomical as iqm
from services.volume import Volume

sitk: Any = _sitk  # SimpleITK's SWIG methods are untyped
N4_VOXEL_MM = 6.0  # N4 fits on a ~6 mm grid: the field is smooth (inu_range within 1% of 4 mm)


@dataclass(frozen=True)
class AnatomicalResult:
    metrics: dict[str, float | None]
    features: dict[str, float | None]
    head_mask: np.ndarray
    brain_mask: np.ndarray
    labels: np.ndarray  # 0 background, CSF=1, GM=2, WM=3
    bias_field: np.ndarray


def n4_bias_field(image: np.ndarray, mask: np.ndarray, zooms: tuple[float, ...], *,
                  iterations: tuple[int, ...] = (30, 20)) -> np.ndarray:
    """N4ITK (Tustison 2010) fitted on a shrunken copy, evaluated on the full grid."""
    full = sitk.GetImageFromArray(np.ascontiguousarray(image.T, dtype=np.float32))
    full.SetSpacing([float(z) for z in zooms[:3]])
    shrink = [max(1, round(N4_VOXEL_MM / z)) for z in zooms[:3]]
    small = sitk.Shrink(full, shrink)
    small_mask = sitk.Shrink(
        sitk.GetImageFromArray(np.ascontiguousarray(mask.T, dtype=np.uint8)), shrink)
    small_mask.CopyInformation(small)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(iterations))
    corrector.Execute(small, small_mask)
    log_field = corrector.GetLogBiasFieldAsImage(full)
    return np.asarray(np.exp(sitk.GetArrayFromImage(log_field).T), dtype=np.float32)


def air_masks(image: np.ndarray, head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(air without artifacts, artifacts). MRIQC's "hat" is the air above the
    nasion-inion plane, found by registration to MNI; without registration the hat
    here is all the air outside the head, artifacts detected as in Mortamet 2009."""
    outside = ~head
    # The distance only gates artifacts at >= 10% of its maximum: a 2x coarser grid is
    # plenty and 8x cheaper.
    coarse = np.asarray(ndimage.distance_transform_edt(outside[::2, ::2, ::2]), np.float32)
    distance = coarse.repeat(2, 0).repeat(2, 1).repeat(2, 2)[
        : image.shape[0], : image.shape[1], : image.shape[2]]
    if distance.max() > 0:
        distance /= distance.max()
    artifacts = iqm.artifact_mask(image, outside, distance)
    return outside & ~artifacts, artifacts


def measure_anatomical(volume: Volume) -> AnatomicalResult:
    data = volume.data if volume.data.ndim == 3 else volume.data.mean(axis=3)
    image = np.nan_to_num(data.astype(np.float32))
    image[image < 0] = 0
    zooms = volume.zooms[:3]
    head = seg.head_mask(image, zooms)
    bias = n4_bias_field(image, head, zooms)
    corrected = np.where(head, image / np.maximum(bias, 1e-6), image).astype(np.float32)
    brain = seg.brain_mask(corrected, head, zooms)
    tissues = seg.segment_tissues(corrected, brain, zooms)
    air, artifacts = air_masks(corrected, head)
    metrics: dict[str, float | None] = dict(iqm.anatomical_iqms(
        corrected, pvms=tissues.posteriors, air=air, artifacts=artifacts, head_mask=head))
    metrics.update(iqm.inu_summary(bias, tissues.labels))
    fwhm = iqm.fwhm_mm(corrected, head, zooms)
    metrics.update({f"fwhm_{axis}_mm": _finite(v) for axis, v in zip("xyz", fwhm, strict=True)})
    finite = [v for v in fwhm if math.isfinite(v)]
    metrics["fwhm_avg_mm"] = float(np.mean(finite)) if finite else None
    features = seg.tissue_features(corrected, tissues, brain, zooms)
    return AnatomicalResult(metrics=metrics, features=features, head_mask=head,
                            brain_mask=brain, labels=tissues.labels, bias_field=bias)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
