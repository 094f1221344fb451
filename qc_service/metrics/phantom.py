"""Phantom stability metrics: fBIRN EPI stability (Friedman & Glover 2006) and ACR-style
uniformity, ghosting and SNR of structural phantoms, on numpy arrays.

References: Friedman L, Glover GH. Report on a multicenter fMRI quality assurance protocol.
J Magn Reson Imaging 2006;23:827-839 ("F&G" below). ACR Large Phantom Test Guidance (2018),
sections on percent integral uniformity and percent signal ghosting.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import ndimage

FloatArray = npt.NDArray[np.floating]
BoolArray = npt.NDArray[np.bool_]

FBIRN_METRICS = ("signal", "snr", "sfnr", "percent_fluctuation", "drift", "rdc")
ACR_METRICS = ("piu", "psg", "acr_snr")  # acr_snr: not the fBIRN snr, a different chart
FBIRN_ROI_WIDTH = 21  # F&G: 21 x 21 voxels in the centre of the central slice
ACR_INNER_DIAMETER_MM = 190.0  # ACR large phantom; sets the mm scale when spacing is unknown
RAYLEIGH_SD_FACTOR = math.sqrt(2 - math.pi / 2)  # background SD = 0.655 sigma (magnitude)


def _poly2_fit(series: FloatArray) -> FloatArray:
    """Second-order polynomial fit along the last axis (F&G detrend before noise estimates)."""
    time = np.linspace(-1, 1, series.shape[-1])
    design = np.stack([np.ones_like(time), time, time**2], axis=1)
    flat = series.reshape(-1, series.shape[-1]).T
    coefficients, *_ = np.linalg.lstsq(design, flat, rcond=None)
    return np.asarray((design @ coefficients).T.reshape(series.shape))


def _central_roi(image_shape: tuple[int, ...], width: int) -> tuple[slice, slice]:
    cx, cy = image_shape[0] // 2, image_shape[1] // 2
    half = min(width, image_shape[0], image_shape[1]) // 2
    return slice(cx - half, cx + half + 1), slice(cy - half, cy + half + 1)


def fbirn_metrics(
    data4d: FloatArray, *, repetition_time_s: float | None, discard_volumes: int = 2,
) -> dict[str, float]:
    """F&G 2006 summary values of one stability run (x, y, z, t).

    The first `discard_volumes` frames (not at steady state in the fBIRN protocol) are dropped.
    `repetition_time_s` does not enter the summary values (it would only label a spectrum).
    """
    if data4d.ndim != 4:
        raise ValueError(f"an fBIRN run must be 4D, got {data4d.ndim}D")
    run = np.asarray(data4d[:, :, data4d.shape[2] // 2, discard_volumes:], dtype=np.float64)
    frames = run.shape[-1] - run.shape[-1] % 2  # odd/even difference needs pairs
    run = run[..., :frames]
    if frames < 10:
        raise ValueError(f"an fBIRN run needs at least 10 frames after discarding, got {frames}")
    roi = _central_roi(run.shape, FBIRN_ROI_WIDTH)
    signal_image = run.mean(axis=-1)  # F&G "signal image": voxel-wise temporal mean
    signal = float(signal_image[roi].mean())
    # F&G temporal fluctuation noise image: SD of the residuals of a 2nd-order fit
    residuals = run - _poly2_fit(run)
    fluctuation_noise = residuals.std(axis=-1, ddof=1)
    sfnr = float((signal_image[roi] / fluctuation_noise[roi]).mean())
    # F&G static spatial noise image: sum of odd minus sum of even frames; its variance over
    # the ROI scales as T sigma^2, hence SNR = signal / sqrt(variance / T)
    static_noise = run[..., 1::2].sum(axis=-1) - run[..., 0::2].sum(axis=-1)
    snr = signal / math.sqrt(float(static_noise[roi].var(ddof=1)) / frames)
    roi_series = run[roi].mean(axis=(0, 1))
    trend = _poly2_fit(roi_series)
    roi_mean = float(roi_series.mean())
    return {
        "signal": signal,
        "snr": snr,
        "sfnr": sfnr,
        # F&G percent fluctuation: SD of the detrended ROI series over its mean, x 100
        "percent_fluctuation": float((roi_series - trend).std(ddof=1)) / roi_mean * 100,
        # F&G drift: range of the fitted 2nd-order trend over the mean, x 100
        "drift": float(trend.max() - trend.min()) / roi_mean * 100,
        "rdc": radius_of_decorrelation(run),
    }


def weisskoff_cv(run_slice: FloatArray, *, max_width: int = FBIRN_ROI_WIDTH) -> FloatArray:
    """Weisskoff 1996 / F&G: CV of the detrended mean time series of centred n x n ROIs."""
    widths = range(1, min(max_width, run_slice.shape[0], run_slice.shape[1]) + 1)
    cv = []
    cx, cy = run_slice.shape[0] // 2, run_slice.shape[1] // 2
    for width in widths:
        x0, y0 = cx - width // 2, cy - width // 2
        series = run_slice[x0:x0 + width, y0:y0 + width].mean(axis=(0, 1))
        residual = series - _poly2_fit(series)
        cv.append(residual.std(ddof=1) / series.mean())
    return np.asarray(cv)


def radius_of_decorrelation(run_slice: FloatArray) -> float:
    """F&G: RDC = CV(1) / CV(N_max). Uncorrelated noise gives N_max; spatially correlated
    (scanner-instability) noise makes CV level off and RDC fall."""
    cv = weisskoff_cv(run_slice)
    return float(cv[0] / cv[-1])


def _otsu_threshold(image: FloatArray, bins: int = 256) -> float:
    counts, edges = np.histogram(image, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    low = np.cumsum(counts)
    high = low[-1] - low
    cumulative = np.cumsum(counts * centres)
    mean_low = cumulative / np.maximum(low, 1)
    mean_high = (cumulative[-1] - cumulative) / np.maximum(high, 1)
    return float(centres[int(np.argmax((low * high * (mean_low - mean_high) ** 2)[:-1]))])


def _disk(shape: tuple[int, ...], centre: FloatArray, radius: float) -> BoolArray:
    xx, yy = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    return np.asarray((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius**2)


def acr_metrics(
    data3d: FloatArray, *, pixel_spacing_mm: tuple[float, float] | None = None,
) -> dict[str, float]:
    """PIU, PSG and single-image SNR on the central slice of a structural phantom (x, y, z).

    The phantom's centre is the centroid of the Otsu-thresholded slice and its radius comes
    from the thresholded area. Without `pixel_spacing_mm`, the mm scale is taken from the
    ACR phantom's 190 mm inner diameter. The phase-encoding direction is assumed along
    axis 0 ("top/bottom"), the frequency direction along axis 1.
    """
    if data3d.ndim != 3:
        raise ValueError(f"an ACR series must be 3D, got {data3d.ndim}D")
    image = np.asarray(data3d[:, :, _central_slice(data3d)], dtype=np.float64)
    phantom = image > _otsu_threshold(image)
    phantom = np.asarray(ndimage.binary_fill_holes(phantom), dtype=bool)
    centre = np.asarray(ndimage.center_of_mass(phantom))
    radius = math.sqrt(phantom.sum() / math.pi)
    mm_per_pixel = (math.sqrt(pixel_spacing_mm[0] * pixel_spacing_mm[1]) if pixel_spacing_mm
                    else ACR_INNER_DIAMETER_MM / (2 * radius))
    # ACR: a 200 cm^2 ROI in the 190 mm phantom, i.e. ~84% of its radius
    large_radius = radius * math.sqrt(200.0 / (math.pi * (ACR_INNER_DIAMETER_MM / 20) ** 2))
    large = _disk(image.shape, centre, large_radius)
    large_mean = float(image[large].mean())
    bands = _background_bands(image.shape, centre, radius)
    top_bottom = float(image[bands["top"]].mean() + image[bands["bottom"]].mean())
    left_right = float(image[bands["left"]].mean() + image[bands["right"]].mean())
    # Rayleigh background in the frequency-direction bands (free of phase-encoding ghosts)
    background_sd = float(image[bands["left"] | bands["right"]].std(ddof=1))
    return {
        "piu": percent_integral_uniformity(image, centre=centre, large_radius=large_radius,
                                           small_radius=math.sqrt(100 / math.pi) / mm_per_pixel),
        # ACR: ghosting ratio = |((top + bottom) - (left + right)) / (2 x large ROI mean)|
        "psg": 100 * abs((top_bottom - left_right) / (2 * large_mean)),
        "acr_snr": large_mean * RAYLEIGH_SD_FACTOR / background_sd,
    }


def _central_slice(data3d: FloatArray) -> int:
    """The middle of the slices that contain the phantom (above Otsu anywhere)."""
    above = data3d > _otsu_threshold(np.asarray(data3d, dtype=np.float64))
    occupied = np.flatnonzero(above.sum(axis=(0, 1)) > 0.5 * above.sum(axis=(0, 1)).max())
    return int((occupied[0] + occupied[-1]) // 2)


def percent_integral_uniformity(
    image: FloatArray, *, centre: FloatArray, large_radius: float, small_radius: float,
) -> float:
    """ACR PIU = 100 (1 - (high - low) / (high + low)), high/low the extreme means of a
    ~1 cm^2 disk anywhere wholly inside the large ROI."""
    small_radius = max(small_radius, 1.0)
    span = math.ceil(small_radius)
    kernel = _disk((2 * span + 1, 2 * span + 1), np.array([span, span]), small_radius)
    means = ndimage.correlate(image, kernel / kernel.sum(), mode="constant")
    centres = _disk(image.shape, centre, large_radius - small_radius)
    high, low = float(means[centres].max()), float(means[centres].min())
    return 100 * (1 - (high - low) / (high + low))


def _background_bands(
    shape: tuple[int, ...], centre: FloatArray, radius: float
) -> dict[str, BoolArray]:
    """Four rectangles between the phantom and the image edge, each centred on a side,
    spanning half the phantom's diameter across (ACR places four 10 cm^2 ellipses)."""
    bands = {}
    gap = max(1, round(0.05 * radius))
    for name, axis, sign in (("top", 0, -1), ("bottom", 0, 1), ("left", 1, -1), ("right", 1, 1)):
        mask = np.zeros(shape, dtype=bool)
        edge = centre[axis] + sign * (radius + gap)
        limit = 0 if sign < 0 else shape[axis] - 1
        start, stop = sorted((round(edge), limit))
        if stop <= start:
            raise ValueError("the phantom leaves no background for the ghosting ROIs")
        other = centre[1 - axis]
        across = slice(round(other - radius / 2), round(other + radius / 2) + 1)
        along = slice(start, stop + 1)
        index = (along, across) if axis == 0 else (across, along)
        mask[index] = True
        bands[name] = mask
    return bands


def acr_snr_two_images(first: FloatArray, second: FloatArray) -> float:
    """NEMA MS 1 difference method: mean of the sum over the large ROI, noise from the SD of
    the difference image / sqrt(2). Preferred over the single-image method when the series
    carries two identical acquisitions (no Rayleigh correction or background needed)."""
    image = (np.asarray(first, dtype=np.float64) + second) / 2
    phantom = image > _otsu_threshold(image)
    centre = np.asarray(ndimage.center_of_mass(phantom))
    radius = math.sqrt(phantom.sum() / math.pi) * 0.84
    roi = _disk(image.shape, centre, radius)
    difference = np.asarray(first, dtype=np.float64) - second
    return float(image[roi].mean() / (difference[roi].std(ddof=1) / math.sqrt(2)))
