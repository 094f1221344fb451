"""Anatomical IQMs: known answers on synthetic heads, and MRIQC's own functions on the
same arrays and masks (rel. diff <= 1e-6 where the formula is the same)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from qc_service.anatomical import AnatomicalResult, air_masks, measure_anatomical
from qc_service.metrics import anatomical as iqm
from services.volume import Volume
from tests.unit.qc.factories import INTENSITY, SyntheticHead

REL = 1e-6


@pytest.fixture(scope="module")
def measured(head: SyntheticHead) -> AnatomicalResult:
    return measure_anatomical(Volume(head.image, head.affine, None))


@pytest.fixture(scope="module")
def measured_biased(biased_head: SyntheticHead) -> AnatomicalResult:
    return measure_anatomical(Volume(biased_head.image, biased_head.affine, None))


def test_wm_snr_is_signal_over_noise_sigma(head: SyntheticHead,
                                           measured: AnatomicalResult) -> None:
    expected = INTENSITY["wm"] / head.sigma  # high SNR: Rician ~ Gaussian of sigma
    assert measured.metrics["snr_wm"] == pytest.approx(expected, rel=0.05)
    assert measured.metrics["snrd_wm"] == pytest.approx(expected, rel=0.10)


def test_snr_halves_when_noise_doubles(head: SyntheticHead) -> None:
    noisy = head.image + np.random.default_rng(7).normal(0, head.sigma * math.sqrt(3),
                                                         head.image.shape)
    result = measure_anatomical(Volume(np.abs(noisy).astype(np.float32), head.affine, None))
    assert result.metrics["snr_wm"] == pytest.approx(INTENSITY["wm"] / (2 * head.sigma),
                                                     rel=0.07)


@pytest.mark.parametrize("tissue", ["csf", "gm", "wm"])
def test_tissue_volumes_within_5_percent(head: SyntheticHead, measured: AnatomicalResult,
                                         tissue: str) -> None:
    assert measured.features[f"{tissue}_volume_ml"] == pytest.approx(head.volume_ml(tissue),
                                                                     rel=0.05)


def test_icv_and_volumes_hold_under_a_bias_field(biased_head: SyntheticHead,
                                                 measured_biased: AnatomicalResult) -> None:
    assert measured_biased.features["icv_ml"] == pytest.approx(biased_head.icv_ml, rel=0.05)
    for tissue in ("csf", "gm", "wm"):
        assert measured_biased.features[f"{tissue}_volume_ml"] == pytest.approx(
            biased_head.volume_ml(tissue), rel=0.05)


def test_intensity_medians_normalised_by_wm(measured: AnatomicalResult) -> None:
    assert measured.features["gm_to_wm_median"] == pytest.approx(
        INTENSITY["gm"] / INTENSITY["wm"], rel=0.03)


def test_inu_range_follows_the_applied_bias(biased_head: SyntheticHead,
                                            measured: AnatomicalResult,
                                            measured_biased: AnatomicalResult) -> None:
    brain = np.isin(biased_head.truth, [1, 2, 3])
    true_range = float(np.percentile(biased_head.bias[brain], 95)
                       - np.percentile(biased_head.bias[brain], 5))
    assert measured_biased.metrics["inu_range"] == pytest.approx(true_range, rel=0.3)
    assert measured.metrics["inu_range"] is not None
    assert measured.metrics["inu_range"] < 0.2 * true_range


def test_fwhm_of_smoothed_white_noise() -> None:
    from scipy import ndimage

    sigma_vox, zoom = 1.5, 2.0
    noise = np.random.default_rng(3).normal(0, 1, (64, 64, 64))
    field = ndimage.gaussian_filter(noise, sigma_vox, mode="wrap")
    mask = np.ones(field.shape, dtype=bool)
    fwhm = iqm.fwhm_mm(field, mask, (zoom, zoom, zoom))
    assert fwhm == pytest.approx([iqm.FWHM_PER_SIGMA * sigma_vox * zoom] * 3, rel=0.08)


# --- MRIQC reference ------------------------------------------------------------------------


def _inputs(head: SyntheticHead, result: AnatomicalResult) -> dict[str, Any]:
    image = head.image.astype(np.float64)
    air, artifacts = air_masks(head.image, result.head_mask)
    pvms = {name: (result.labels == label).astype(np.float32)
            for name, label in (("csf", 1), ("gm", 2), ("wm", 3))}
    return {"image": image, "air": air, "artifacts": artifacts, "pvms": pvms,
            "head": result.head_mask}


def test_formulas_match_mriqc(mriqc_anatomical: Any) -> None:
    m = mriqc_anatomical
    cases = [
        (iqm.snr(850.0, 21.3, 12345.0), m.snr(850.0, 21.3, 12345.0)),
        (iqm.snr_dietrich(850.0, mad_air=14.2, sigma_air=13.0),
         m.snr_dietrich(850.0, mad_air=14.2, sigma_air=13.0)),
        (iqm.snr_dietrich(850.0, mad_air=0.5, sigma_air=13.0),
         m.snr_dietrich(850.0, mad_air=0.5, sigma_air=13.0)),
        (iqm.cnr(850.0, 550.0, 13.0, 21.0, 22.0), m.cnr(850.0, 550.0, 13.0, 21.0, 22.0)),
        (iqm.cjv(850.0, 550.0, 21.0, 22.0), m.cjv(850.0, 550.0, 21.0, 22.0)),
    ]
    for ours, theirs in cases:
        assert ours == pytest.approx(theirs, rel=REL)


def test_array_metrics_match_mriqc(head: SyntheticHead, measured: AnatomicalResult,
                                   mriqc_anatomical: Any) -> None:
    m, x = mriqc_anatomical, _inputs(head, measured)
    assert iqm.efc(x["image"]) == pytest.approx(m.efc(x["image"]), rel=REL)
    assert iqm.fber(x["image"], x["head"]) == pytest.approx(
        m.fber(x["image"], x["head"].astype(np.uint8)), rel=REL)
    assert iqm.wm2max(x["image"], 850.0) == pytest.approx(m.wm2max(x["image"], 850.0), rel=REL)
    assert iqm.art_qi1(x["air"], x["artifacts"]) == pytest.approx(
        m.art_qi1(x["air"], x["artifacts"]), rel=REL)


def test_artifact_mask_matches_mriqc_interface_function(head: SyntheticHead,
                                                        measured: AnatomicalResult) -> None:
    """MRIQC's `artifact_mask` lives in mriqc/interfaces/anatomical.py (nipype, statsmodels):
    reproduced here line by line on a background with a bright ghost."""
    statsmodels_scale = pytest.importorskip("statsmodels.robust.scale")
    from scipy import ndimage

    image = head.image.copy()
    outside = ~measured.head_mask
    image[outside & (np.indices(image.shape)[0] < 12)] += 600.0  # a ghost band
    distance = ndimage.distance_transform_edt(outside)
    distance = distance / distance.max()
    ours = iqm.artifact_mask(image, outside, distance)
    bg = image[outside].astype(np.float64)
    bg[bg > 0] = bg[bg > 0] / statsmodels_scale.mad(bg[bg > 0])
    theirs = np.zeros(image.shape, dtype=bool)
    theirs[outside] = bg > 10.0
    theirs[distance < 0.10] = False
    theirs = ndimage.binary_opening(theirs, ndimage.generate_binary_structure(3, 1))
    assert ours.sum() > 0
    np.testing.assert_array_equal(ours, theirs)


def test_summary_stats_match_mriqc(head: SyntheticHead, measured: AnatomicalResult,
                                   mriqc_anatomical: Any) -> None:
    pytest.importorskip("statsmodels")
    x = _inputs(head, measured)
    maps = {**x["pvms"], "bg": x["air"].astype(np.uint8)}
    theirs = mriqc_anatomical.summary_stats(x["image"], maps)
    for name, probmap in maps.items():
        ours = iqm.tissue_stats(x["image"], probmap)
        for key in ("mean", "median", "p95", "p05", "k", "stdv", "mad", "n"):
            assert getattr(ours, key) == pytest.approx(theirs[name][key], rel=REL, abs=1e-9), (
                name, key)


def test_soft_maps_summary_stats_match_mriqc(head: SyntheticHead, measured: AnatomicalResult,
                                             mriqc_anatomical: Any) -> None:
    """Probability maps (our posteriors), not binary masks: the weighted quantiles."""
    pytest.importorskip("statsmodels")
    from scipy import ndimage

    wm = ndimage.gaussian_filter((measured.labels == 3).astype(np.float32), 1.0)
    theirs = mriqc_anatomical.summary_stats(head.image.astype(np.float64), {"wm": wm})["wm"]
    ours = iqm.tissue_stats(head.image.astype(np.float64), wm)
    for key in ("mean", "median", "p95", "p05", "k", "stdv", "mad", "n"):
        assert getattr(ours, key) == pytest.approx(theirs[key], rel=REL, abs=1e-9), key


def test_composed_iqms_match_mriqc_composition(head: SyntheticHead, measured: AnatomicalResult,
                                               mriqc_anatomical: Any) -> None:
    """StructuralQC's composition (mriqc/interfaces/anatomical.py) from MRIQC's functions."""
    pytest.importorskip("statsmodels")
    m, x = mriqc_anatomical, _inputs(head, measured)
    ours = iqm.anatomical_iqms(x["image"], pvms=x["pvms"], air=x["air"],
                               artifacts=x["artifacts"], head_mask=x["head"])
    stats = m.summary_stats(x["image"], {**x["pvms"], "bg": x["air"].astype(np.uint8)})
    theirs = {f"snr_{t}": m.snr(stats[t]["median"], stats[t]["stdv"], stats[t]["n"])
              for t in ("csf", "wm", "gm")}
    theirs.update({f"snrd_{t}": m.snr_dietrich(stats[t]["median"], mad_air=stats["bg"]["mad"],
                                                sigma_air=stats["bg"]["stdv"])
                   for t in ("csf", "wm", "gm")})
    wm, gm, bg = stats["wm"], stats["gm"], stats["bg"]
    theirs["cnr"] = m.cnr(wm["median"], gm["median"], bg["stdv"], wm["stdv"], gm["stdv"])
    theirs["cjv"] = m.cjv(wm["median"], gm["median"], wm["mad"], gm["mad"])
    theirs["fber"] = m.fber(x["image"], x["head"].astype(np.uint8))
    theirs["efc"] = m.efc(x["image"])
    theirs["wm2max"] = m.wm2max(x["image"], wm["median"])
    theirs["qi_1"] = m.art_qi1(x["air"], x["artifacts"])
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value, rel=REL), key
