"""Nyúl and WhiteStripe intensity standardisation: known answers on a synthetic head with
site effects, and agreement with intensity-normalization (test-only reference)."""

from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np
import pytest

from harmonize_service.intensity import (
    IntensityError,
    NyulModel,
    apply_nyul,
    apply_whitestripe,
    fit_nyul,
    fit_whitestripe,
    foreground_mask,
    nifti_gz,
)
from tests.unit.qc.factories import LABELS, synthetic_head

pytest.importorskip("nilearn")


@pytest.fixture(scope="module")
def heads() -> list[tuple[np.ndarray, np.ndarray]]:
    """Four sites: each its own intensity scale, bias field and noise (image, truth)."""
    sites = [(1.0, 0.0, 15.0), (1.7, 0.15, 25.0), (0.6, 0.25, 10.0), (1.3, 0.1, 30.0)]
    out = []
    for seed, (scale, bias, sigma) in enumerate(sites):
        head = synthetic_head(step=3, sigma=sigma, bias_amplitude=bias, seed=seed)
        out.append((head.image * scale, head.truth))
    return out


def _wm_median(image: np.ndarray, truth: np.ndarray) -> float:
    return float(np.median(image[truth == LABELS["wm"]]))


def test_nyul_removes_a_linear_site_scaling_exactly(heads):
    image, _ = heads[0]
    mask = foreground_mask(image)
    model = fit_nyul([image], [mask])
    scaled = 2.5 * image.astype(np.float64) + 40.0  # another gain and offset, same anatomy
    reference = apply_nyul(model, image, mask)
    np.testing.assert_allclose(apply_nyul(model, scaled, mask), reference, rtol=0, atol=1e-9)
    # the reference image's own end landmarks land on the ends of the standard range
    p1, p99 = np.percentile(reference[mask], [1, 99])
    assert p1 == pytest.approx(1.0, abs=1e-9) and p99 == pytest.approx(100.0, abs=1e-9)


def test_nyul_brings_sites_wm_intensity_together(heads):
    masks = [foreground_mask(image) for image, _ in heads]
    model = fit_nyul([image for image, _ in heads[:3]], masks[:3])
    before = [_wm_median(image, truth) for image, truth in heads]
    after = [_wm_median(apply_nyul(model, image, mask), truth)
             for (image, truth), mask in zip(heads, masks, strict=True)]
    spread_before = np.std(before) / np.mean(before)
    spread_after = np.std(after) / np.mean(after)
    print(f"WM median CV across 4 sites: before {spread_before:.3f}, after {spread_after:.3f}")
    assert spread_after < spread_before / 4


def test_nyul_agrees_with_intensity_normalization(heads):
    reference = pytest.importorskip(
        "intensity_normalization.normalizers.population.nyul").NyulNormalizer
    adapters = pytest.importorskip("intensity_normalization.adapters.images")
    masks = [foreground_mask(image) for image, _ in heads]
    ours = fit_nyul([image for image, _ in heads[:3]], masks[:3])
    theirs = reference().fit_population(
        [adapters.NumpyImageAdapter(image.astype(np.float64)) for image, _ in heads[:3]],
        [adapters.NumpyImageAdapter(mask.astype(np.float64)) for mask in masks[:3]],
    )
    # the reference holds images as float32 (and, with numpy 2, its percentiles too):
    # agreement to 1e-6 of the standard range [1, 100]
    np.testing.assert_allclose(ours.standard_scale, theirs.standard_scale, rtol=0, atol=1e-4)
    image, mask = heads[3][0].astype(np.float64), masks[3]
    expected = theirs.transform(adapters.NumpyImageAdapter(image),
                                adapters.NumpyImageAdapter(mask.astype(np.float64))).get_data()
    # the reference returns float32: agreement to float32 rounding of the output
    difference = np.max(np.abs(apply_nyul(ours, image, mask) - expected) / np.abs(expected).max())
    print(f"Nyúl vs intensity-normalization: max difference {difference:.2e} of the range")
    assert difference <= 1e-6


def test_whitestripe_agrees_with_intensity_normalization_and_centres_wm(heads):
    module = pytest.importorskip("intensity_normalization.normalizers.individual.whitestripe")
    adapters = pytest.importorskip("intensity_normalization.adapters.images")
    image, truth = heads[1]
    mask = foreground_mask(image)
    stripe = fit_whitestripe(image, mask)
    theirs = module.WhiteStripeNormalizer().fit(
        adapters.NumpyImageAdapter(image.astype(np.float64)),
        adapters.NumpyImageAdapter(mask.astype(np.float64)),
    )
    # the reference averages in float32
    assert stripe.mean == pytest.approx(theirs.mean, rel=1e-6)
    assert stripe.std == pytest.approx(theirs.std, rel=1e-6)
    normalised = apply_whitestripe(stripe, image)
    wm = normalised[truth == LABELS["wm"]]
    gm = normalised[truth == LABELS["gm"]]
    # white matter ends up near 0 in stripe units, grey matter clearly below it
    assert abs(float(np.median(wm))) < 1.0
    assert float(np.median(gm)) < -3.0


def test_model_round_trips_and_refuses_tampering(heads):
    image, _ = heads[0]
    model = fit_nyul([image], [foreground_mask(image)])
    again = NyulModel.from_json(model.to_json())
    assert again == model and again.version == model.version
    tampered = model.to_json().replace(f"{model.standard_scale[3]!r}", "42.0", 1)
    with pytest.raises(IntensityError, match="does not match"):
        NyulModel.from_json(tampered)
    with pytest.raises(IntensityError, match="format"):
        NyulModel.from_json('{"format": "other"}')
    with_nan = model.to_json().replace(f"{model.standard_scale[3]!r}", "NaN", 1)
    with pytest.raises(IntensityError, match="NaN"):
        NyulModel.from_json(with_nan)


def test_degenerate_inputs_give_clear_errors():
    flat = np.full((8, 8, 8), 5.0)
    with pytest.raises(IntensityError, match="landmarks are equal"):
        fit_nyul([flat])
    with pytest.raises(IntensityError, match="no reference images"):
        fit_nyul([])
    with pytest.raises(IntensityError, match="no positive voxels"):
        foreground_mask(np.zeros((4, 4, 4)))
    model = NyulModel((1.0, 50.0, 99.0), (1.0, 50.0, 100.0), 1.0, 100.0, 1)
    with pytest.raises(IntensityError, match="strictly increasing"):
        apply_nyul(model, flat)
    with_nan = np.arange(512, dtype=np.float64).reshape(8, 8, 8) + 1
    with_nan[0, 0, 0] = np.nan
    with pytest.raises(IntensityError, match="non-finite"):
        apply_nyul(model, with_nan, np.ones_like(with_nan, dtype=bool))


def test_nifti_output_round_trips_and_is_deterministic(heads):
    image, _ = heads[0]
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    blob = nifti_gz(image, affine)
    assert blob == nifti_gz(image, affine)
    loaded = nib.Nifti1Image.from_bytes(gzip.decompress(blob))
    np.testing.assert_array_equal(np.asarray(loaded.dataobj), image.astype(np.float32))
    np.testing.assert_array_equal(loaded.affine, affine)
    assert io.BytesIO(blob).read(2) == b"\x1f\x8b"
