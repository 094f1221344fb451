"""Synthetic BOLD runs and phantoms with known ground truth (motion, noise, drift, ghosts)."""

from __future__ import annotations

import numpy as np

BOLD_SHAPE = (64, 64, 36)
BOLD_ZOOMS = (3.0, 3.0, 3.5)


def _grid_mm(shape: tuple[int, int, int], zooms: tuple[float, float, float]) -> np.ndarray:
    centre = (np.asarray(shape, dtype=np.float64) - 1) / 2
    axes = [(np.arange(n) - c) * z for n, c, z in zip(shape, centre, zooms, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)  # (x, y, z, 3) in mm


def _rotation(angles: np.ndarray) -> np.ndarray:
    rx, ry, rz = angles
    about_x = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    about_y = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    about_z = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    return about_z @ about_y @ about_x


class SyntheticHead:
    """An analytic head (soft-edged ellipsoid with smooth blobs inside), evaluated exactly at
    any rigid pose: volume(R x + t) == reference(x), so realignment has a known answer."""

    def __init__(self, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        self.semi_axes = np.array([70.0, 85.0, 55.0])
        self.blob_centres = rng.uniform(-45, 45, (14, 3)) * np.array([1.0, 1.0, 0.7])
        self.blob_sigmas = rng.uniform(6, 14, 14)
        self.blob_amplitudes = rng.uniform(-300, 300, 14)

    def value(self, points_mm: np.ndarray) -> np.ndarray:
        radius = np.sqrt(((points_mm / self.semi_axes) ** 2).sum(axis=-1))
        inside = 1 / (1 + np.exp((radius - 1) * 40))  # ~2 mm edge
        image = 800.0 * inside
        for centre, sigma, amplitude in zip(
            self.blob_centres, self.blob_sigmas, self.blob_amplitudes, strict=True
        ):
            image += inside * amplitude * np.exp(
                -((points_mm - centre) ** 2).sum(axis=-1) / (2 * sigma**2))
        return image

    def volume(self, translation_mm: np.ndarray, angles_rad: np.ndarray) -> np.ndarray:
        points = _grid_mm(BOLD_SHAPE, BOLD_ZOOMS)
        # volume(y) = reference(R^T (y - t))
        rotation = _rotation(np.asarray(angles_rad, dtype=np.float64))
        source = (points - np.asarray(translation_mm)) @ rotation  # row-vector form of R^T
        return self.value(source)


def bold_run(
    parameters: np.ndarray, *, noise_sigma: float = 0.0, seed: int = 0
) -> np.ndarray:
    """A 4D float32 run; `parameters` (T, 6): tx, ty, tz (mm), rx, ry, rz (rad) per volume."""
    head = SyntheticHead()
    rng = np.random.default_rng(seed)
    frames = [head.volume(p[:3], p[3:]) for p in parameters]
    data = np.stack(frames, axis=-1)
    if noise_sigma:
        data = data + rng.normal(0, noise_sigma, data.shape)
    return data.astype(np.float32)


def still_run_with_noise(
    *, frames: int, signal: float, noise_sigma: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A flat cylinder of known signal with white temporal noise of known sigma, and its mask."""
    rng = np.random.default_rng(seed)
    shape = (32, 32, 10)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    disk = ((xx - 15.5) ** 2 + (yy - 15.5) ** 2) <= 10**2
    mask = np.repeat(disk[:, :, None], shape[2], axis=2)
    data = rng.normal(0, noise_sigma, (*shape, frames)) + np.where(mask, signal, 0.0)[..., None]
    return data.astype(np.float32), mask


def ghosted_image(*, amplitude: float, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """A uniform disk of signal 1000 on a zero background plus a Nyquist ghost: the disk
    shifted by N/2 along `axis` at `amplitude` x signal, where it falls outside the object."""
    shape = (64, 64, 8)
    yy, xx = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    disk2d = ((yy - 31.5) ** 2 + (xx - 31.5) ** 2) <= 14**2
    mask = np.repeat(disk2d[:, :, None], shape[2], axis=2)
    ghost = np.roll(mask, shape[axis] // 2, axis=axis) & ~mask
    image = np.where(mask, 1000.0, 0.0) + np.where(ghost, amplitude * 1000.0, 0.0)
    return image, mask
