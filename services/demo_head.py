"""A realistic head for the demo, and what each site's scanner does to it.

The anatomy is the MNI152 2009 grey/white-matter maps nilearn ships (read from its package
data; nilearn itself is not imported), with CSF, a 4 mm skull and a 4 mm scalp at 2 mm;
without nilearn, nested ellipsoids. Each site sees it with its own effects: an intensity
scale, a smooth multiplicative bias field and Rician noise.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import numpy.typing as npt
from scipy import ndimage

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class SiteEffects:
    intensity_scale: float  # receive-chain gain relative to the reference site
    bias_amplitude: float  # log-amplitude of the smooth multiplicative field
    noise_sigma: float  # Rician sigma, in image units (white matter is ~850 x scale)
    bias_direction: tuple[float, float, float] = (0.6, 0.3, -0.4)


T1_INTENSITY = {"csf": 250.0, "gm": 550.0, "wm": 850.0, "skull": 40.0, "scalp": 700.0}
T2STAR_INTENSITY = {"csf": 1100.0, "gm": 800.0, "wm": 620.0, "skull": 30.0, "scalp": 350.0}
LABELS = {"csf": 1, "gm": 2, "wm": 3, "skull": 4, "scalp": 5}
HEAD_STEP_MM = 2


def nilearn_data_dir() -> Path | None:
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "datasets" / "data"
    marker = folder / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
    return folder if marker.exists() else None


@lru_cache(maxsize=1)
def head_labels() -> tuple[Array, Array]:
    """(labels, voxel -> RAS mm affine) at 2 mm: CSF, GM, WM, a 4 mm skull and scalp."""
    data_dir = nilearn_data_dir()
    if data_dir is None:
        return _ellipsoid_labels()
    import nibabel as nib

    maps = [cast(nib.Nifti1Image, nib.load(
        data_dir / f"mni_icbm152_{name}_tal_nlin_sym_09a_converted.nii.gz"))
        for name in ("gm", "wm", "t1")]
    step = HEAD_STEP_MM
    gm, wm, t1 = (np.asarray(img.dataobj, dtype=np.float32)[::step, ::step, ::step] / 255.0
                  for img in maps)
    affine = np.asarray(maps[0].affine) @ np.diag([step, step, step, 1.0])
    pad = 16 // step + 1  # room for skull and scalp below the template's field of view
    gm, wm, t1 = (np.pad(a, pad) for a in (gm, wm, t1))
    affine = affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.full(3, pad)
    tissue = ((gm + wm) >= 0.5) & (t1 >= 0.45)  # dark on the template T1: sulcal CSF
    icv = ndimage.binary_closing((gm + wm) >= 0.1, _ball(2), border_value=0)
    icv = ndimage.binary_fill_holes(icv)
    labels = np.zeros(gm.shape, dtype=np.uint8)
    labels[icv] = LABELS["csf"]
    labels[icv & tissue & (gm >= wm)] = LABELS["gm"]
    labels[icv & tissue & (wm > gm)] = LABELS["wm"]
    return _add_shells(labels, icv), affine


def _ellipsoid_labels() -> tuple[Array, Array]:
    """Nested ellipsoids standing in for the head when the MNI maps are not installed."""
    shape = (100, 120, 100)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-100.0, -130.0, -90.0]
    grid = np.indices(shape).astype(np.float32)
    centre = np.array([50, 63, 50], dtype=np.float32)[:, None, None, None]
    radii = np.array([34, 42, 34], dtype=np.float32)[:, None, None, None]
    r = np.sqrt((((grid - centre) / radii) ** 2).sum(axis=0))
    icv = r <= 1.0
    labels = np.zeros(shape, dtype=np.uint8)
    labels[icv] = LABELS["csf"]
    labels[(r <= 0.93) & (np.cos(r * 40) > -0.6)] = LABELS["gm"]
    labels[r <= 0.7] = LABELS["wm"]
    labels[(r <= 0.18)] = LABELS["csf"]  # ventricles
    return _add_shells(labels, icv), affine


def _add_shells(labels: Array, icv: Array) -> Array:
    skull = ndimage.binary_dilation(icv, _ball(2)) & ~icv
    scalp = ndimage.binary_dilation(icv | skull, _ball(2)) & ~(icv | skull)
    labels[skull] = LABELS["skull"]
    labels[scalp] = LABELS["scalp"]
    return labels


def _ball(radius: int) -> Array:
    g = np.ogrid[tuple(slice(-radius, radius + 1) for _ in range(3))]
    return np.asarray(sum(x**2 for x in g) <= radius**2)


@lru_cache(maxsize=4)
def _contrast(kind: Literal["t1", "t2star"]) -> tuple[Array, Array]:
    labels, affine = head_labels()
    table = T1_INTENSITY if kind == "t1" else T2STAR_INTENSITY
    image = np.zeros(labels.shape, dtype=np.float32)
    for name, label in LABELS.items():
        image[labels == label] = table[name]
    # Partial volume: the 2 mm label image is smoothed a little before resampling.
    return ndimage.gaussian_filter(image, 0.6), affine


def sample_head(kind: Literal["t1", "t2star"], *, shape: tuple[int, int, int],
                voxel_mm: tuple[float, float, float], head_scale: float) -> Array:
    """The head resampled onto an axial grid centred on it: array[x (L->R), y (P->A), z (I->S)]."""
    image, affine = _contrast(kind)
    centre_mm = affine[:3, :3] @ (np.array(image.shape) / 2.0) + affine[:3, 3] + [0, 0, 10.0]
    # output index -> mm (centred on the head, shrunk or grown by head_scale) -> template
    # voxel: one affine map, so no coordinate arrays of the output's size are needed.
    step = np.array(voxel_mm) / head_scale
    to_template = np.linalg.inv(affine[:3, :3])
    matrix = to_template @ np.diag(step)
    offset = to_template @ (centre_mm - (np.array(shape) - 1) / 2 * step - affine[:3, 3])
    sampled = ndimage.affine_transform(image, matrix, offset=offset, output_shape=shape,
                                       order=1, mode="constant", cval=0.0)
    return np.asarray(sampled, dtype=np.float32)


def bias_field(shape: tuple[int, ...], amplitude: float,
               direction: tuple[float, float, float]) -> Array:
    """exp of a smooth linear + quadratic log field: about +-`amplitude` across the head."""
    # open grids: the sums broadcast to full size only at the end (a few arrays, not ten)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n, dtype=np.float32) for n in shape),
                          indexing="ij", sparse=True)
    a, b, c = (np.float32(v) for v in direction)
    in_plane = a * x + b * y + np.float32(0.3) * x**2
    through_plane = c * z - np.float32(0.3) * y * z
    log_field = in_plane + through_plane  # the one full-size array
    log_field *= np.float32(amplitude)
    field: Array = np.exp(log_field, out=log_field)
    return field


def scanned(clean: Array, effects: SiteEffects, rng: np.random.Generator,
            *, noise_scale: float = 1.0) -> Array:
    """The site's view of a clean image: gain, bias field, Rician magnitude noise."""
    sigma = np.float32(effects.noise_sigma * noise_scale)
    magnitude = bias_field(clean.shape, effects.bias_amplitude, effects.bias_direction)
    magnitude *= clean
    magnitude *= np.float32(effects.intensity_scale)
    magnitude += sigma * rng.standard_normal(clean.shape, dtype=np.float32)  # real part
    magnitude **= 2
    imaginary = sigma * rng.standard_normal(clean.shape, dtype=np.float32)
    magnitude += imaginary**2
    return np.sqrt(magnitude, out=magnitude)
