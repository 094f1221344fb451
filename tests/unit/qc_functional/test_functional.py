"""BOLD IQMs: known answers on synthetic runs, and MRIQC / nipype on the same arrays."""

from __future__ import annotations

import ast
import importlib.util
import time
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest

from qc_service.metrics.functional import (
    dvars,
    foreground_mask,
    framewise_displacement,
    functional_iqms,
    gsr,
    realignment_parameters,
    tsnr,
)
from tests.unit.qc_functional.factories import (
    BOLD_ZOOMS,
    bold_run,
    ghosted_image,
    still_run_with_noise,
)


def _package_dir(name: str) -> Path:
    # find_spec of a top-level name does not import it (nipype's __init__ pulls in a lot)
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        pytest.skip(f"{name} (test-only reference) is not installed")
    return Path(spec.origin).parent


def _mriqc_functional() -> ModuleType:
    path = _package_dir("mriqc") / "qc" / "functional.py"
    spec = importlib.util.spec_from_file_location("mriqc_qc_functional", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nipype_compute_dvars() -> Any:
    """nipype's compute_dvars and regress_poly, lifted from confounds.py without importing
    the nipype package; AR(1) from nitime as nipype does."""
    pytest.importorskip("nitime")
    source = (_package_dir("nipype") / "algorithms" / "confounds.py").read_text()
    wanted = {"compute_dvars", "regress_poly", "_AR_est_YW"}
    tree = ast.parse(source)
    body = [node for node in tree.body
            if isinstance(node, ast.FunctionDef) and node.name in wanted]
    assert {node.name for node in body} == wanted
    namespace: dict[str, Any] = {
        "np": np, "Legendre": np.polynomial.Legendre,
        "IFLOGGER": SimpleNamespace(debug=lambda *args: None),
    }
    exec(compile(ast.Module(body=body, type_ignores=[]), "confounds.py", "exec"), namespace)
    return namespace["compute_dvars"]


def test_tsnr_of_a_still_run_is_signal_over_noise() -> None:
    data, mask = still_run_with_noise(frames=400, signal=1000.0, noise_sigma=20.0)
    # per voxel the estimate scatters by ~1/sqrt(2T); the median over ~3000 voxels is tight
    assert tsnr(data, mask) == pytest.approx(50.0, rel=0.01)


def test_foreground_mask_finds_the_object() -> None:
    data, mask = still_run_with_noise(frames=10, signal=1000.0, noise_sigma=20.0)
    assert np.array_equal(foreground_mask(data), mask)


def test_known_rigid_motion_gives_known_framewise_displacement() -> None:
    rng = np.random.default_rng(3)
    frames = 40
    truth = np.cumsum(rng.normal(0, 0.15, (frames, 6)), axis=0)
    truth[:, 3:] = np.deg2rad(truth[:, 3:] * 2)  # ~0.3 deg steps
    truth -= truth[0]
    data = bold_run(truth, noise_sigma=8.0, seed=1)  # tSNR ~100, typical of 3 mm EPI
    estimated = realignment_parameters(data, zooms=BOLD_ZOOMS)
    np.testing.assert_allclose(estimated[:, :3], truth[:, :3], atol=0.02)
    np.testing.assert_allclose(np.rad2deg(estimated[:, 3:]), np.rad2deg(truth[:, 3:]), atol=0.05)
    fd_error = framewise_displacement(estimated) - framewise_displacement(truth)
    assert np.abs(fd_error).max() < 0.05  # mm; FD threshold for scrubbing is 0.2 mm
    assert np.abs(fd_error).mean() < 0.02


def test_pure_translation_in_mm_is_recovered() -> None:
    truth = np.zeros((3, 6))
    truth[1, :3] = [1.0, 0.0, 0.0]
    truth[2, :3] = [1.0, -0.5, 0.7]
    estimated = realignment_parameters(bold_run(truth), zooms=BOLD_ZOOMS)
    np.testing.assert_allclose(estimated[:, :3], truth[:, :3], atol=0.01)
    fd = framewise_displacement(estimated)
    np.testing.assert_allclose(fd, [1.0, 1.2], atol=0.02)


def test_framewise_displacement_formula() -> None:
    parameters = np.array([[0, 0, 0, 0, 0, 0], [0.1, -0.2, 0.0, 0.001, 0, -0.002]])
    # 0.1 + 0.2 + 50 * (0.001 + 0.002)
    assert framewise_displacement(parameters) == pytest.approx([0.45])


def test_dvars_matches_nipype_compute_dvars(tmp_path: Path) -> None:
    import nibabel as nb

    compute_dvars = _nipype_compute_dvars()
    truth = np.zeros((30, 6))
    truth[15:, 0] = 0.8  # a jump gives DVARS structure beyond white noise
    data = bold_run(truth, noise_sigma=10.0, seed=4)
    mask = foreground_mask(data)
    nb.save(nb.Nifti1Image(data, np.eye(4)), tmp_path / "bold.nii.gz")
    nb.save(nb.Nifti1Image(mask.astype(np.uint8), np.eye(4)), tmp_path / "mask.nii.gz")
    expected = compute_dvars(str(tmp_path / "bold.nii.gz"), str(tmp_path / "mask.nii.gz"))
    ours = dvars(data, mask)
    for mine, theirs in zip(ours, expected, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-6)


def test_dvars_of_white_noise_standardises_to_one() -> None:
    data, mask = still_run_with_noise(frames=300, signal=1000.0, noise_sigma=10.0, seed=2)
    standardised, raw, voxelwise = dvars(data, mask)
    # white noise: E[diff^2] = 2 sigma^2; intensity normalised to median 1000 -> sigma ~ 10
    assert raw.mean() == pytest.approx(np.sqrt(2) * 10.0, rel=0.02)
    assert standardised.mean() == pytest.approx(1.0, abs=0.03)
    assert voxelwise.mean() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("axis", [0, 1])
def test_gsr_of_a_known_ghost(axis: int) -> None:
    image, mask = ghosted_image(amplitude=0.05, axis=axis)
    assert gsr(image, mask, axis=axis) == pytest.approx(0.05, rel=1e-9)
    assert gsr(image, mask, axis=1 - axis) == pytest.approx(0.0, abs=0.02)


@pytest.mark.parametrize("axis", [0, 1])
def test_gsr_matches_mriqc(axis: int) -> None:
    mriqc = _mriqc_functional()
    rng = np.random.default_rng(5)
    image, mask = ghosted_image(amplitude=0.03, axis=axis)
    image = image + rng.normal(0, 5, image.shape)
    expected = mriqc.gsr(image, mask.astype(np.uint8), direction="xy"[axis])
    assert gsr(image, mask, axis=axis) == pytest.approx(expected, rel=1e-12)


def test_functional_iqms_on_a_run_and_its_limits() -> None:
    truth = np.zeros((20, 6))
    truth[10:, 1] = 0.5
    metrics = functional_iqms(bold_run(truth, noise_sigma=8.0), zooms=BOLD_ZOOMS,
                              repetition_time_s=2.0, phase_encoding_axis=1)
    assert metrics["fd_num"] == 1.0
    assert metrics["fd_perc"] == pytest.approx(100 / 20)
    # one 0.5 mm step in 19 frame pairs, plus the estimation noise floor (~0.03 mm/frame)
    assert metrics["fd_mean"] == pytest.approx(0.5 / 19 + 0.03, abs=0.02)
    assert metrics["gsr_pe"] == metrics["gsr_y"]
    assert metrics["tsnr"] is not None and metrics["tsnr"] > 20
    short = functional_iqms(bold_run(np.zeros((2, 6)), noise_sigma=8.0), zooms=BOLD_ZOOMS,
                            repetition_time_s=None)
    assert short["fd_mean"] is None and short["dvars_std"] is None
    with pytest.raises(ValueError, match="4D"):
        functional_iqms(np.zeros((4, 4, 4)), zooms=BOLD_ZOOMS, repetition_time_s=2.0)


@pytest.mark.slow
def test_functional_iqms_of_a_64x64x36x200_run_within_budget() -> None:
    rng = np.random.default_rng(6)
    truth = np.cumsum(rng.normal(0, 0.05, (200, 6)), axis=0)
    truth[:, 3:] = np.deg2rad(truth[:, 3:])
    data = bold_run(truth, noise_sigma=8.0)
    start = time.process_time()  # CPU time: comparable to one core whatever the threads
    functional_iqms(data, zooms=BOLD_ZOOMS, repetition_time_s=2.0)
    assert time.process_time() - start < 30.0
