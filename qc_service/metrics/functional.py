"""BOLD image-quality metrics with MRIQC's definitions (tsnr, DVARS, FD Power, gsr) on numpy arrays.

Definitions follow `mriqc/qc/functional.py`, `mriqc/interfaces/functional.py` (IQM
aggregation) and nipype's `algorithms/confounds.py` (compute_dvars, FramewiseDisplacement).
Differences from MRIQC: tsnr and DVARS are measured on the input series (MRIQC uses the
head-motion-corrected one) and the mask is our own simple foreground mask.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage

FloatArray = npt.NDArray[np.floating]
BoolArray = npt.NDArray[np.bool_]

FD_RADIUS_MM = 50.0  # Power et al. 2012: rotations as arc length on a 50 mm sphere
FD_THRESHOLD_MM = 0.2  # MRIQC's default fd_thres
_MAX_ITERATIONS = 30
_CONVERGED = 1e-4  # mm (rotations as arc length on the 50 mm sphere)


def foreground_mask(data: FloatArray) -> BoolArray:
    """Largest connected object above an Otsu threshold of the temporal mean, holes filled."""
    mean = data.mean(axis=3) if data.ndim == 4 else np.asarray(data)
    mean = np.asarray(mean, dtype=np.float64)
    above = mean > _otsu_threshold(mean)
    labels, count = ndimage.label(above)
    if count == 0:
        return above
    sizes = np.bincount(labels.ravel())[1:]
    largest = labels == (int(np.argmax(sizes)) + 1)
    return np.asarray(ndimage.binary_fill_holes(largest), dtype=bool)


def _otsu_threshold(image: FloatArray, bins: int = 256) -> float:
    counts, edges = np.histogram(image, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    mean_low = np.cumsum(counts * centres) / np.maximum(weight_low, 1)
    total = (counts * centres).sum()
    mean_high = (total - np.cumsum(counts * centres)) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def tsnr(data4d: FloatArray, mask: BoolArray) -> float:
    """Median over the mask of mean/std over time (nipype TSNR, std with ddof=0; MRIQC tsnr)."""
    series = np.asarray(data4d[mask], dtype=np.float64)
    mean, std = series.mean(axis=1), series.std(axis=1)
    # nipype TSNR sets the ratio to 0 where the std is below 1e-3
    ratio = np.where(std > 1e-3, mean / np.where(std > 1e-3, std, 1.0), 0.0)
    return float(np.median(ratio))


def dvars(
    data4d: FloatArray, mask: BoolArray, *, intensity_normalization: float = 1000.0
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """(standardised, raw, voxel-wise standardised) DVARS per frame, as nipype's compute_dvars.

    Nichols 2013 standardisation: the expected SD of a voxel's temporal difference is
    sqrt(2 (1 - ar1)) * robust SD, ar1 the Yule-Walker lag-1 coefficient. Kept in float32
    like nipype so results agree to float rounding.
    """
    series = np.asarray(data4d[mask], dtype=np.float32)
    if intensity_normalization != 0:
        series = (series / np.median(series)) * np.float32(intensity_normalization)
    # FSL's robust SD: IQR with "lower" percentiles / 1.349
    robust_sd = (np.percentile(series, 75, axis=1, method="lower")
                 - np.percentile(series, 25, axis=1, method="lower")) / 1.349
    centred = series - series.mean(axis=1, dtype=np.float64, keepdims=True)
    ar1 = _lag1_yule_walker(centred.astype(np.float32))
    diff_sd_hat = np.sqrt(2 * (1 - ar1)) * robust_sd
    frame_diff = np.diff(series, axis=1)
    raw = np.sqrt(np.square(frame_diff).mean(axis=0))
    standardised = raw / diff_sd_hat.mean()
    with np.errstate(divide="raise", invalid="raise"):
        voxelwise = np.sqrt(np.square(frame_diff / diff_sd_hat[:, None]).mean(axis=0))
    return standardised, raw, voxelwise


def _lag1_yule_walker(centred: FloatArray) -> FloatArray:
    # nitime AR_est_YW(x, 1): r(1)/r(0) with biased (1/N) autocorrelations
    x = centred.astype(np.float64)
    r0 = np.einsum("ij,ij->i", x, x)
    r1 = np.einsum("ij,ij->i", x[:, :-1], x[:, 1:])
    return np.asarray(r1 / np.where(r0 > 0, r0, 1.0))


def gsr(mean_image: FloatArray, mask: BoolArray, *, axis: int) -> float:
    """Ghost-to-signal ratio (Giannelli 2010; MRIQC gsr): the mask rolled by N/2 along the
    phase-encoding axis, minus the object, is the ghost region; the rest is background."""
    mask = np.asarray(mask, dtype=bool)
    ghost = np.roll(mask, mask.shape[axis] // 2, axis=axis) & ~mask
    background = ~ghost & ~mask
    ghost_level = mean_image[ghost].mean() - mean_image[background].mean()
    return float(ghost_level / np.median(mean_image[mask]))


def framewise_displacement(
    parameters: FloatArray, *, radius_mm: float = FD_RADIUS_MM
) -> FloatArray:
    """Power et al. 2012: sum of absolute frame-to-frame changes of the 3 translations (mm)
    and 3 rotations (rad, as arc length on a sphere of `radius_mm`). Length T-1."""
    scaled = np.array(parameters, dtype=np.float64)
    scaled[:, 3:] *= radius_mm
    return np.asarray(np.abs(np.diff(scaled, axis=0)).sum(axis=1))


def realignment_parameters(
    data4d: FloatArray, *, zooms: Sequence[float], mask: BoolArray | None = None,
    reference_index: int = 0,
) -> FloatArray:
    """Rigid parameters (tx, ty, tz mm; rx, ry, rz rad) of every volume relative to a reference.

    Gauss-Newton on the sum of squared differences with the Jacobian taken from the
    reference's gradient (as SPM's realign), on lightly smoothed cubic-spline images,
    sampled on every second voxel of the dilated foreground. Warm-started from the
    previous volume's parameters.
    """
    zooms_mm = np.asarray(zooms[:3], dtype=np.float64)
    if mask is None:
        mask = foreground_mask(data4d)
    sample = ndimage.binary_dilation(mask, iterations=2)
    stride = np.zeros(mask.shape, dtype=bool)
    stride[::2, ::2, ::2] = True
    indices = np.argwhere(sample & stride).astype(np.float64)
    centre = (np.asarray(mask.shape, dtype=np.float64) - 1) / 2
    points_mm = (indices - centre) * zooms_mm

    at_points = tuple(np.argwhere(sample & stride).T)
    reference = _smooth(data4d[..., reference_index], zooms_mm)
    reference_values = reference[at_points]
    gradients: list[FloatArray] = list(np.gradient(reference, *zooms_mm))
    gradient_mm = np.stack([g[at_points] for g in gradients], axis=1)
    jacobian = np.concatenate([gradient_mm, np.cross(points_mm, gradient_mm)], axis=1)
    normal_inverse = np.linalg.pinv(jacobian.T @ jacobian)

    parameters = np.zeros((data4d.shape[3], 6))
    current: FloatArray = np.zeros(6)
    for volume in range(data4d.shape[3]):
        moving = _prepare(data4d[..., volume], zooms_mm)
        current = _gauss_newton(moving, reference_values, jacobian, normal_inverse,
                                points_mm, centre, zooms_mm, current)
        parameters[volume] = current
    return parameters


def _smooth(volume: FloatArray, zooms_mm: FloatArray) -> FloatArray:
    # ~4 mm FWHM: suppresses noise and widens the capture range (SPM realign uses 5 mm)
    sigma_voxels = 4.0 / 2.3548 / zooms_mm
    return np.asarray(ndimage.gaussian_filter(np.asarray(volume, dtype=np.float64),
                                              sigma=sigma_voxels, mode="nearest"))


def _prepare(volume: FloatArray, zooms_mm: FloatArray) -> FloatArray:
    return np.asarray(ndimage.spline_filter(_smooth(volume, zooms_mm), order=3, mode="nearest"))


def _rotation(angles: FloatArray) -> FloatArray:
    rx, ry, rz = angles
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    about_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    about_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    about_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return np.asarray(about_z @ about_y @ about_x)


def _gauss_newton(
    moving: FloatArray, reference_values: FloatArray, jacobian: FloatArray,
    normal_inverse: FloatArray, points_mm: FloatArray, centre: FloatArray,
    zooms_mm: FloatArray, start: FloatArray,
) -> FloatArray:
    # Model: moving(R x + t) = reference(x), x in mm about the volume centre
    parameters = start.copy()
    for _ in range(_MAX_ITERATIONS):
        mapped = points_mm @ _rotation(parameters[3:]).T + parameters[:3]
        coordinates = (mapped / zooms_mm + centre).T
        residual = ndimage.map_coordinates(moving, coordinates, order=3, prefilter=False,
                                           mode="nearest") - reference_values
        step = normal_inverse @ (jacobian.T @ residual)
        parameters -= step
        if np.abs(step[:3]).max() + FD_RADIUS_MM * np.abs(step[3:]).max() < _CONVERGED:
            break
    return parameters


def functional_iqms(
    data4d: FloatArray, *, zooms: Sequence[float], repetition_time_s: float | None,
    phase_encoding_axis: int = 1,
) -> dict[str, float | None]:
    """MRIQC's functional IQMs of one BOLD run (x, y, z, t). Metrics that need more frames
    than the run has are None. `repetition_time_s` is reported, not used by the formulas;
    `phase_encoding_axis` (0 or 1) picks which gsr is also reported as `gsr_pe`."""
    if data4d.ndim != 4:
        raise ValueError(f"a BOLD run must be 4D, got {data4d.ndim}D")
    if phase_encoding_axis not in (0, 1):
        raise ValueError("phase_encoding_axis must be 0 (x) or 1 (y)")
    mask = foreground_mask(data4d)
    if not mask.any():
        raise ValueError("no foreground found in the BOLD run")
    frames = data4d.shape[3]
    mean_image = np.asarray(data4d.mean(axis=3), dtype=np.float64)
    result: dict[str, float | None] = {
        "tsnr": tsnr(data4d, mask) if frames >= 2 else None,
        "gsr_x": gsr(mean_image, mask, axis=0),
        "gsr_y": gsr(mean_image, mask, axis=1),
        "size_t": float(frames),
        "tr": repetition_time_s,
    }
    result["gsr_pe"] = result["gsr_x"] if phase_encoding_axis == 0 else result["gsr_y"]
    result.update(_motion_and_dvars(data4d, mask, zooms=zooms))
    return result


def _motion_and_dvars(
    data4d: FloatArray, mask: BoolArray, *, zooms: Sequence[float]
) -> dict[str, float | None]:
    if data4d.shape[3] < 3:
        return dict.fromkeys(
            ("dvars_std", "dvars_nstd", "dvars_vstd", "fd_mean", "fd_num", "fd_perc"))
    standardised, raw, voxelwise = dvars(data4d, mask)
    fd = framewise_displacement(realignment_parameters(data4d, zooms=zooms, mask=mask))
    fd_num = int((fd > FD_THRESHOLD_MM).sum())
    return {
        "dvars_std": float(standardised.mean()),
        "dvars_nstd": float(raw.mean()),
        "dvars_vstd": float(voxelwise.mean()),
        "fd_mean": float(fd.mean()),
        "fd_num": float(fd_num),
        # MRIQC divides by the number of frames (len(fd) + 1)
        "fd_perc": fd_num * 100.0 / (len(fd) + 1),
    }
