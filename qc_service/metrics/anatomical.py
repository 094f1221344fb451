"""MRIQC's anatomical IQMs (mriqc 24.0.2, `mriqc/qc/anatomical.py` and the
`StructuralQC` / `ArtifactMask` interfaces), as pure functions on arrays and masks.

Where MRIQC rounds (summary statistics and FBER/EFC to 4 decimals, data to integers
before the weighted statistics) we round the same way, so the same inputs give the same
numbers. `fwhm` is our own estimator (MRIQC calls AFNI's 3dFWHMx), see `fwhm_mm`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, stats

DIETRICH_FACTOR = 0.6551364  # 1 / sqrt(2 / (4 - pi)): Rayleigh sigma -> Gaussian sigma
GAUSSIAN_3_4 = 0.6744897501960817  # scipy.stats.norm.ppf(0.75), the MAD consistency constant
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
TISSUES = ("csf", "wm", "gm")


@dataclass(frozen=True)
class TissueStats:
    mean: float
    median: float
    p95: float
    p05: float
    k: float  # kurtosis (Fisher) of voxels with weight > half the maximum weight
    stdv: float
    mad: float
    n: float  # sum of weights


def _weighted_quantiles(values: np.ndarray, weights: np.ndarray, all_values: np.ndarray,
                        probs: tuple[float, ...]) -> list[float]:
    """statsmodels' DescrStatsW.quantile (SAS definition): weights summed over tied values;
    an exact hit of the cumulative weight averages with the next value of the *whole* data
    (zero-weight values included, as in MRIQC's call). `values` are integers (rounded);
    `all_values` is the unrounded data, rounded here only on such a hit."""
    low, high = float(values.min()), float(values.max())
    if high - low < 5e7:  # integer values: group ties by counting, O(n) instead of a sort
        offsets = (values - low).astype(np.int64)
        grouped = np.bincount(offsets, weights=weights)
        present = np.flatnonzero(np.bincount(offsets))
        unique, summed = present.astype(np.float64) + low, grouped[present]
    else:
        unique, inverse = np.unique(values, return_inverse=True)
        summed = np.bincount(inverse, weights=weights)
    cweights = np.cumsum(summed)
    out = []
    for prob in probs:
        target = prob * cweights[-1]
        index = min(int(np.searchsorted(cweights, target)), len(unique) - 1)
        result = float(unique[index])
        if abs(target - cweights[index]) < 1e-10:
            rounded = np.round(all_values, 0)
            above = rounded[rounded > unique[index]]
            if above.size:
                result = (result + float(above.min())) / 2
        out.append(result)
    return out


def tissue_stats(data: np.ndarray, weights: np.ndarray, *, decimals: int = 4) -> TissueStats:
    """MRIQC's `summary_stats` for one probability (or binary) map."""
    # Only voxels of nonzero weight count: select them before rounding (a tissue map
    # covers a few % of the grid); the whole rounded image is only needed on a tie.
    flat = data.reshape(-1)
    nonzero = np.flatnonzero(weights.reshape(-1))
    w = np.round(weights.reshape(-1)[nonzero].astype(np.float32), 3).astype(np.float64)
    keep = w > 0
    values, w_kept = np.round(flat[nonzero[keep]], 0), w[keep]
    total = float(w.sum())
    mean = float((w_kept * values).sum() / total)
    std = math.sqrt(float((w_kept * (values - mean) ** 2).sum()) / total)
    p05, median, p95 = _weighted_quantiles(values, w_kept, flat, (0.05, 0.5, 0.95))
    thresholded = data[weights > 0.5 * weights.max()]
    mad = float(np.median(np.abs(thresholded - median)) / GAUSSIAN_3_4)
    return TissueStats(
        mean=round(mean, decimals), median=round(median, decimals), p95=round(p95, decimals),
        p05=round(p05, decimals), k=round(float(stats.kurtosis(thresholded)), decimals),
        stdv=round(std, decimals), mad=round(mad, decimals), n=float(weights.sum()),
    )


def snr(mu_fg: float, sigma_fg: float, n: float) -> float:
    return float(mu_fg / (sigma_fg * math.sqrt(n / (n - 1))))


def snr_dietrich(mu_fg: float, *, mad_air: float = 0.0, sigma_air: float = 1.0) -> float:
    """Dietrich et al. 2007, eq. A.12 (Rayleigh-corrected air noise); MRIQC's fallbacks."""
    if mad_air > 1.0:
        return float(DIETRICH_FACTOR * mu_fg / mad_air)
    return float(DIETRICH_FACTOR * mu_fg / sigma_air) if sigma_air > 1e-3 else -1.0


def cnr(mu_wm: float, mu_gm: float, sigma_air: float, sigma_wm: float, sigma_gm: float) -> float:
    """Magnotta & Friedman 2006."""
    return float(abs(mu_wm - mu_gm) / math.sqrt(sigma_air**2 + sigma_gm**2 + sigma_wm**2))


def cjv(mu_wm: float, mu_gm: float, sigma_wm: float, sigma_gm: float) -> float:
    """Ganzetti et al. 2016."""
    return float((sigma_wm + sigma_gm) / abs(mu_wm - mu_gm))


def fber(image: np.ndarray, head_mask: np.ndarray, rot_mask: np.ndarray | None = None,
         *, decimals: int = 4) -> float:
    """Shehzad et al. 2015 (median energies, as MRIQC); -1 when there is no background."""
    fg = float(np.median(np.abs(image[head_mask > 0]) ** 2))
    air = head_mask <= 0
    if rot_mask is not None:
        air &= rot_mask <= 0
    bg = float(np.median(np.abs(image[air]) ** 2))
    if bg < 1.0e-3:
        return -1.0
    return round(fg / bg, decimals)


def efc(image: np.ndarray, frame_mask: np.ndarray | None = None, *, decimals: int = 4) -> float:
    """Atkinson et al. 1997, normalised by the maximum entropy (MRIQC)."""
    values = image.reshape(-1) if frame_mask is None else image[frame_mask == 0]
    values = values.astype(np.float64)
    n_vox = values.size
    efc_max = n_vox * (1.0 / math.sqrt(n_vox)) * math.log(1.0 / math.sqrt(n_vox))
    b_max = math.sqrt(float((values**2).sum()))
    entropy = float(np.sum((values / b_max) * np.log((values + 1e-16) / b_max)))
    return round(entropy / efc_max, decimals)


def wm2max(image: np.ndarray, mu_wm: float) -> float:
    return float(mu_wm / np.percentile(image.reshape(-1), 99.95))


def artifact_mask(image: np.ndarray, air: np.ndarray, distance: np.ndarray, *,
                  zscore: float = 10.0) -> np.ndarray:
    """Mortamet et al. 2009: air voxels more than `zscore` MADs bright, away from the head
    (normalised distance >= 0.1), cleaned by an opening (MRIQC's `artifact_mask`)."""
    mask = np.zeros(image.shape, dtype=bool)
    background = image[air].astype(np.float64)
    positive = background > 0
    if positive.sum() < 10:
        return mask
    spread = float(np.median(np.abs(background[positive] - np.median(background[positive]))))
    spread /= GAUSSIAN_3_4
    background[positive] = background[positive] / spread
    mask[air] = background > zscore
    mask[distance < 0.10] = False
    opened = ndimage.binary_opening(mask, ndimage.generate_binary_structure(3, 1))
    return np.asarray(opened, dtype=bool)


def art_qi1(air: np.ndarray, artifacts: np.ndarray) -> float:
    """Fraction of the background ("hat") voxels flagged as artifacts; -1 without air."""
    if air.sum() < 1:
        return -1.0
    return float(artifacts.sum() / (air.sum() + artifacts.sum()))


def inu_summary(bias: np.ndarray, brain: np.ndarray) -> dict[str, float]:
    """MRIQC's `inu_range` (|P95 - P5|) and `inu_med` of the N4 bias field in the brain."""
    values = bias[brain > 0]
    return {"inu_range": float(abs(np.percentile(values, 95.0) - np.percentile(values, 5.0))),
            "inu_med": float(np.median(values))}


def fwhm_mm(image: np.ndarray, mask: np.ndarray, zooms: tuple[float, ...]) -> tuple[float, ...]:
    """Per-axis FWHM (mm) by AFNI 3dFWHMx's classic first-difference estimator (Forman et al.
    1995): for a Gaussian-smoothed field the lag-1 autocorrelation is
    rho = 1 - var(first differences) / (2 var), and sigma^2 = -1 / (4 ln rho) voxels^2.
    Variances over voxels (and voxel pairs) inside `mask`, after removing the mean; no
    detrending. An axis with rho <= 0 or >= 1 gives nan."""
    values = image.astype(np.float64)
    inside = mask > 0
    variance = float(values[inside].var())
    out = []
    for axis, zoom in enumerate(zooms[:3]):
        lead = [slice(None)] * 3
        lag = [slice(None)] * 3
        lead[axis], lag[axis] = slice(1, None), slice(None, -1)
        both = inside[tuple(lead)] & inside[tuple(lag)]
        diff = (values[tuple(lead)] - values[tuple(lag)])[both]
        rho = 1.0 - float(diff.var()) / (2.0 * variance) if variance > 0 else float("nan")
        if not 0.0 < rho < 1.0:
            out.append(float("nan"))
            continue
        out.append(math.sqrt(-1.0 / (4.0 * math.log(rho))) * FWHM_PER_SIGMA * float(zoom))
    return tuple(out)


def anatomical_iqms(image: np.ndarray, *, pvms: Mapping[str, np.ndarray], air: np.ndarray,
                    artifacts: np.ndarray, head_mask: np.ndarray) -> dict[str, float]:
    """MRIQC's StructuralQC composition on an INU-corrected image: `pvms` are the csf/gm/wm
    probability maps, `air` the background without artifacts."""
    data = np.nan_to_num(image).astype(np.float64)
    data[data < 0] = 0
    summary = {name: tissue_stats(data, pvms[name]) for name in TISSUES}
    bg = tissue_stats(data, air.astype(np.uint8))
    out: dict[str, float] = {}
    for name in TISSUES:
        out[f"snr_{name}"] = snr(summary[name].median, summary[name].stdv, summary[name].n)
        out[f"snrd_{name}"] = snr_dietrich(summary[name].median, mad_air=bg.mad,
                                           sigma_air=bg.stdv)
    out["snr_total"] = float(np.mean([out[f"snr_{t}"] for t in TISSUES]))
    out["snrd_total"] = float(np.mean([out[f"snrd_{t}"] for t in TISSUES]))
    wm, gm = summary["wm"], summary["gm"]
    out["cnr"] = cnr(wm.median, gm.median, bg.stdv, wm.stdv, gm.stdv)
    out["cjv"] = cjv(wm.median, gm.median, wm.mad, gm.mad)
    out["fber"] = fber(data, head_mask)
    out["efc"] = efc(data)
    out["wm2max"] = wm2max(data, wm.median)
    out["qi_1"] = art_qi1(air, artifacts)
    return out
