"""Agreement with the reference implementation, neuroCombat (Fortin), on a table with known
additive and multiplicative site effects plus age and sex effects."""

from __future__ import annotations

import contextlib
import io
from typing import Any

import numpy as np
import pytest

from harmonize_service.combat import CombatOptions, apply, fit

from .factories import SiteTable, site_table

neuro_combat = pytest.importorskip("neuroCombat")
pd = pytest.importorskip("pandas")

TOLERANCE = 1e-6


def _reference(table: SiteTable, **kwargs: Any) -> np.ndarray:
    covars = pd.DataFrame({"site": table.site, "age": table.age, "sex": table.sex})
    with contextlib.redirect_stdout(io.StringIO()):  # neuroCombat prints its progress
        result = neuro_combat.neuroCombat(
            table.features.T.copy(),
            covars,
            "site",
            categorical_cols=["sex"],
            continuous_cols=["age"],
            **kwargs,
        )
    return np.asarray(result["data"]).T


def _ours(table: SiteTable, options: CombatOptions) -> np.ndarray:
    model = fit(table.features, table.site, table.covariates, categorical={"sex"}, options=options)
    return apply(model, table.features, table.site, table.covariates)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"parametric": False},
        {"mean_only": True},
        {"mean_only": True, "parametric": False},
        {"eb": False},
    ],
    ids=["parametric", "nonparametric", "mean-only", "mean-only-nonparametric", "no-eb"],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_neurocombat(kwargs: dict[str, Any], seed: int) -> None:
    table = site_table(seed=seed)
    difference = np.abs(_ours(table, CombatOptions(**kwargs)) - _reference(table, **kwargs))
    assert difference.max() <= TOLERANCE


def test_matches_neurocombat_with_reference_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    # neuroCombat 0.2.12's ref_batch path calls np.int, removed in numpy 1.24.
    monkeypatch.setattr(np, "int", int, raising=False)
    table = site_table(seed=3)
    ours = _ours(table, CombatOptions(ref_batch="oslo"))
    difference = np.abs(ours - _reference(table, ref_batch="oslo"))
    assert difference.max() <= TOLERANCE
    is_ref = np.array(table.site) == "oslo"
    assert np.array_equal(ours[is_ref], table.features[is_ref])


def test_removes_the_known_site_effects() -> None:
    table = site_table(seed=4, n_features=40)
    harmonized = _ours(table, CombatOptions())
    sites = np.array(table.site)
    before = np.ptp([table.features[sites == s].mean(axis=0) for s in set(table.site)], axis=0)
    after = np.ptp([harmonized[sites == s].mean(axis=0) for s in set(table.site)], axis=0)
    assert np.median(after) < 0.2 * np.median(before)
