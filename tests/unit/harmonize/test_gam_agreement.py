"""ComBat-GAM against neuroHarmonize (statsmodels GLMGam per feature) on a table whose age
effect is non-linear, plus the properties a smooth model must keep."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest

from harmonize_service.combat import CombatError, CombatOptions, apply, fit
from harmonize_service.gam import ALPHA_GRID, SmoothOptions, fit_gam, kfold_masks
from harmonize_service.model import from_json, to_json

from .factories import SiteTable, site_table

pd = pytest.importorskip("pandas")
neuro_harmonize = pytest.importorskip("neuroHarmonize")
glm_gam = pytest.importorskip("statsmodels.gam.api").GLMGam

# Our penalised solve is LAPACK least squares on the normal equations; statsmodels' is a
# pinv-based WLS on the augmented matrix: the same estimator, rounded differently.
TOLERANCE = 1e-6


def curved_table(seed: int, *, n_features: int = 8) -> SiteTable:
    """The factory's table plus a smooth non-linear age effect (peak near 45 years)."""
    table = site_table(
        seed=seed, n_features=n_features, scans_per_site={"a": 45, "b": 60, "c": 50}
    )
    rng = np.random.default_rng(seed + 100)
    curve = np.exp(-(((table.age - 45.0) / 12.0) ** 2))[:, None] * rng.uniform(0.2, 0.6, n_features)
    return SiteTable(
        table.features + curve, table.site, table.age, table.sex,
        table.age_slope, table.site_shift, table.site_scale,
    )


class _FixedFolds:
    """A statsmodels cross-validation iterator that yields given test masks."""

    def __init__(self, test_masks: Sequence[np.ndarray]):
        self._masks = test_masks

    def split(self, *_: Any, **__: Any) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for test in self._masks:
            yield ~test, test


def _reference(
    table: SiteTable, masks: Sequence[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> np.ndarray:
    original = glm_gam.select_penweight_kfold

    def same_folds(self: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs.pop("rng", None)
        return original(self, *args, cv_iterator=_FixedFolds(masks), **kwargs)

    monkeypatch.setattr(glm_gam, "select_penweight_kfold", same_folds)
    covars = pd.DataFrame(
        {"SITE": table.site, "age": table.age, "sex": [float(s == "M") for s in table.sex]}
    )
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # its np.matrix
        _, harmonized = neuro_harmonize.harmonizationLearn(
            table.features.copy(), covars, smooth_terms=["age"]
        )
    return np.asarray(harmonized)


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_neuroharmonize_gam(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    table = curved_table(seed)
    masks = kfold_masks(len(table.site), 5, seed=seed)
    model = fit_gam(
        table.features, table.site, table.covariates, categorical={"sex"},
        smooth=SmoothOptions("age"), folds=masks,
    )
    ours = apply(model, table.features, table.site, table.covariates)
    difference = np.abs(ours - _reference(table, masks, monkeypatch))
    assert difference.max() <= TOLERANCE
    # the penalty was chosen per feature, from the grid, and not always the same one
    assert set(model.smooth_penalty) <= set(ALPHA_GRID)


def test_the_smooth_term_explains_the_curve_linear_combat_leaves_in_the_residual() -> None:
    table = curved_table(3, n_features=12)
    gam = fit_gam(table.features, table.site, table.covariates, categorical={"sex"},
                  smooth=SmoothOptions("age"))
    linear = fit(table.features, table.site, table.covariates, categorical={"sex"})
    # the curve's amplitude (0.2-0.6) is large against the noise (0.15 x site scale)
    assert np.all(gam.var_pooled < linear.var_pooled)
    assert gam.smooth_terms[0].lower == table.age.min()
    assert gam.smooth_terms[0].upper == table.age.max()


@pytest.mark.parametrize("selection", ["kfold", "gcv"])
def test_one_scan_at_a_time_and_json_round_trip(selection: str) -> None:
    table = curved_table(4)
    model = fit_gam(table.features, table.site, table.covariates, categorical={"sex"},
                    smooth=SmoothOptions("age", selection=selection))  # type: ignore[arg-type]
    together = apply(model, table.features, table.site, table.covariates)
    for i in (0, 50, 120):
        alone = apply(model, table.features[i : i + 1], [table.site[i]],
                      {"age": [table.age[i]], "sex": [table.sex[i]]})
        assert np.array_equal(alone[0], together[i])
    restored = from_json(to_json(model))
    assert np.array_equal(apply(restored, table.features, table.site, table.covariates), together)


def test_age_outside_the_spline_range_is_refused() -> None:
    table = curved_table(5)
    model = fit_gam(table.features, table.site, table.covariates, categorical={"sex"},
                    smooth=SmoothOptions("age"))
    with pytest.raises(CombatError, match="outside the model's spline range"):
        apply(model, table.features[:1], [table.site[0]], {"age": [95.0], "sex": ["F"]})


def test_bounds_widen_the_range() -> None:
    table = curved_table(6)
    model = fit_gam(table.features, table.site, table.covariates, categorical={"sex"},
                    smooth=SmoothOptions("age", bounds=(0.0, 110.0)))
    harmonized = apply(model, table.features[:1], [table.site[0]], {"age": [95.0], "sex": ["F"]})
    assert np.isfinite(harmonized).all()
    assert CombatOptions() == model.options
