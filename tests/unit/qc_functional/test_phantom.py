"""fBIRN and ACR phantom metrics on synthetic phantoms with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from qc_service.metrics.phantom import (
    ACR_METRICS,
    FBIRN_METRICS,
    acr_metrics,
    acr_snr_two_images,
    fbirn_metrics,
    radius_of_decorrelation,
)

SIGNAL = 1000.0
SIGMA = 5.0  # per-voxel temporal noise: SFNR = SNR = 200


def fbirn_run(
    *, frames: int = 200, linear: float = 0.0, quadratic: float = 0.0, seed: int = 0,
    matrix: int = 64, slices: int = 9,
) -> tuple[np.ndarray, np.ndarray]:
    """An agar sphere-like cylinder; level(t) = S (1 + linear tau + quadratic tau^2),
    tau in [0, 1] over the run, plus white Gaussian noise of SIGMA. Returns (run, level)."""
    rng = np.random.default_rng(seed)
    xx, yy = np.meshgrid(np.arange(matrix), np.arange(matrix), indexing="ij")
    disk = (xx - matrix / 2) ** 2 + (yy - matrix / 2) ** 2 <= (0.4 * matrix) ** 2
    tau = np.linspace(0, 1, frames)
    level = SIGNAL * (1 + linear * tau + quadratic * tau**2)
    clean = np.where(disk[:, :, None, None], level, 0.0) * np.ones((1, 1, slices, 1))
    return clean + rng.normal(0, SIGMA, clean.shape), level


def test_fbirn_metrics_of_a_stable_run() -> None:
    run, _ = fbirn_run()
    metrics = fbirn_metrics(run, repetition_time_s=2.0)
    assert tuple(metrics) == FBIRN_METRICS
    assert metrics["signal"] == pytest.approx(SIGNAL, rel=1e-3)
    assert metrics["sfnr"] == pytest.approx(SIGNAL / SIGMA, rel=0.02)
    # SNR from one static-noise image over 441 voxels: relative SE ~ 1/sqrt(2 * 440)
    assert metrics["snr"] == pytest.approx(SIGNAL / SIGMA, rel=0.1)
    expected_fluctuation = SIGMA / math.sqrt(21 * 21) / SIGNAL * 100
    assert metrics["percent_fluctuation"] == pytest.approx(expected_fluctuation, rel=0.15)
    assert metrics["drift"] < 0.02
    assert metrics["rdc"] == pytest.approx(21, rel=0.2)  # white noise decorrelates at once


@pytest.mark.parametrize(("linear", "quadratic"), [(0.02, 0.0), (-0.01, 0.0), (0.0, 0.015),
                                                   (0.03, -0.02)])
def test_fbirn_drift_and_sfnr_with_known_drift(linear: float, quadratic: float) -> None:
    run, level = fbirn_run(linear=linear, quadratic=quadratic, seed=1)
    metrics = fbirn_metrics(run, repetition_time_s=2.0, discard_volumes=0)
    expected_drift = (level.max() - level.min()) / level.mean() * 100
    assert metrics["drift"] == pytest.approx(expected_drift, abs=0.02)
    # the 2nd-order detrend removes the drift from the fluctuation noise
    assert metrics["sfnr"] == pytest.approx(level.mean() / SIGMA, rel=0.02)
    # a drift shared by all voxels does not reach the static spatial noise image
    assert metrics["snr"] == pytest.approx(level.mean() / SIGMA, rel=0.1)


def test_correlated_noise_lowers_the_radius_of_decorrelation() -> None:
    run, _ = fbirn_run(seed=2)
    rng = np.random.default_rng(3)
    shared = rng.normal(0, SIGMA, run.shape[-1])  # scanner instability: whole-image noise
    central = run[:, :, run.shape[2] // 2, :] + shared
    assert radius_of_decorrelation(central) < 3
    assert radius_of_decorrelation(run[:, :, run.shape[2] // 2, :]) > 15


def test_fbirn_rejects_a_short_run() -> None:
    run, _ = fbirn_run(frames=8)
    with pytest.raises(ValueError, match="frames"):
        fbirn_metrics(run, repetition_time_s=2.0)


def acr_phantom(
    *, ramp: float = 0.0, ghost: float = 0.0, noise_sigma: float = 0.0, seed: int = 0,
    magnitude: bool = False,
) -> tuple[np.ndarray, float]:
    """A 190 mm disk (1 mm pixels, 256^2, 11 slices) of mean 1000 with a linear ramp of
    +-ramp across its radius along axis 1, and a uniform phase-encoding ghost of
    `ghost` x 1000 in the background above and below it (axis 0). Returns (image, radius)."""
    rng = np.random.default_rng(seed)
    size, radius = 256, 95.0
    xx, yy = np.meshgrid(np.arange(size) - 127.5, np.arange(size) - 127.5, indexing="ij")
    disk = xx**2 + yy**2 <= radius**2
    image = np.where(disk, 1000.0 * (1 + ramp * yy / radius), 0.0)
    image = image + np.where(~disk & (np.abs(yy) <= radius), ghost * 1000.0, 0.0)
    volume = np.repeat(image[:, :, None], 11, axis=2)
    volume[:, :, :2] = 0  # slices outside the phantom
    volume[:, :, -2:] = 0
    if magnitude:
        real = volume + rng.normal(0, noise_sigma, volume.shape)
        volume = np.hypot(real, rng.normal(0, noise_sigma, volume.shape))
    else:
        volume = volume + rng.normal(0, noise_sigma, volume.shape)
    return volume, radius


def test_acr_uniform_disk_is_fully_uniform_and_ghost_free() -> None:
    volume, _ = acr_phantom(noise_sigma=1.0)
    metrics = acr_metrics(volume)
    assert tuple(metrics) == ACR_METRICS
    assert metrics["piu"] == pytest.approx(100.0, abs=0.2)
    assert metrics["psg"] == pytest.approx(0.0, abs=0.05)


def test_acr_piu_of_a_known_ramp() -> None:
    ramp = 0.05
    volume, radius = acr_phantom(ramp=ramp, noise_sigma=1.0)
    metrics = acr_metrics(volume, pixel_spacing_mm=(1.0, 1.0))
    large = radius * math.sqrt(200 / (math.pi * 9.5**2))
    small = math.sqrt(100 / math.pi)
    # a linear ramp: a disk's mean is the centre value; the extreme centres sit at
    # +-(large - small) from the phantom centre
    expected = 100 * (1 - ramp * (large - small) / radius)
    assert metrics["piu"] == pytest.approx(expected, abs=0.3)


def test_acr_psg_of_a_known_ghost() -> None:
    volume, _ = acr_phantom(ghost=0.02, noise_sigma=1.0)
    # top and bottom carry 2 % of the signal, left and right none: 100 x (2 x 20) / (2 x 1000)
    assert acr_metrics(volume)["psg"] == pytest.approx(2.0, abs=0.05)


def test_acr_snr_single_image_with_rayleigh_background() -> None:
    volume, _ = acr_phantom(noise_sigma=20.0, magnitude=True, seed=4)
    assert acr_metrics(volume)["acr_snr"] == pytest.approx(1000 / 20, rel=0.05)


def test_acr_snr_two_image_difference_method() -> None:
    first, _ = acr_phantom(noise_sigma=20.0, seed=5)
    second, _ = acr_phantom(noise_sigma=20.0, seed=6)
    assert acr_snr_two_images(first[:, :, 5], second[:, :, 5]) == pytest.approx(50, rel=0.05)
