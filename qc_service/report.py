"""QC report images: a PNG mosaic of a volume and a carpet plot of a BOLD run."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image


def _to_uint8(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, [0.5, 99.5]) if image.size else (0.0, 1.0)
    scaled = (image - low) / (high - low if high > low else 1.0)
    return np.asarray(np.clip(scaled * 255, 0, 255), dtype=np.uint8)


def mosaic_png(volume: np.ndarray, *, slices: int = 16) -> bytes:
    """Axial slices of a 3D volume (the mean over time for 4D) tiled into one PNG."""
    data = volume.mean(axis=3) if volume.ndim == 4 else volume
    picks = np.linspace(0, data.shape[2] - 1, num=min(slices, data.shape[2])).round().astype(int)
    columns = math.ceil(math.sqrt(len(picks)))
    rows = math.ceil(len(picks) / columns)
    # Radiological display: rotate so anterior is up (RAS+ arrays have y = anterior).
    tiles = [np.rot90(data[:, :, z]) for z in picks]
    height, width = tiles[0].shape
    canvas = np.zeros((rows * height, columns * width), dtype=np.float32)
    for index, tile in enumerate(tiles):
        r, c = divmod(index, columns)
        canvas[r * height : (r + 1) * height, c * width : (c + 1) * width] = tile
    return _png(_to_uint8(canvas))


def carpet_png(data4d: np.ndarray, mask: np.ndarray, *, max_rows: int = 800) -> bytes:
    """Voxel time series in the mask, each z-scored, one row per voxel (Power 2017)."""
    series = data4d[mask.astype(bool)]
    if series.shape[0] > max_rows:
        series = series[np.linspace(0, series.shape[0] - 1, max_rows).astype(int)]
    mean = series.mean(axis=1, keepdims=True)
    std = series.std(axis=1, keepdims=True)
    z = (series - mean) / np.where(std > 0, std, 1.0)
    image = np.clip((z + 2.5) / 5.0 * 255, 0, 255).astype(np.uint8)
    return _png(image)


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")  # 2D uint8 -> 8-bit grayscale
    return buffer.getvalue()
