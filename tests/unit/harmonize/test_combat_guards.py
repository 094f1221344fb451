"""Degenerate input gives a clear error or the documented handling, never a silent NaN."""

from __future__ import annotations

import numpy as np
import pytest

from harmonize_service.combat import CombatError, CombatOptions, apply, fit

from .factories import site_table


def test_a_batch_with_one_scan_is_refused_by_name() -> None:
    table = site_table(scans_per_site={"milan": 20, "oslo": 1, "paris": 20})
    with pytest.raises(CombatError, match=r"fewer than 2 scans.*: oslo \(1 scan\)"):
        fit(table.features, table.site, table.covariates, categorical={"sex"})


def test_a_batch_with_one_scan_is_fine_for_mean_only() -> None:
    table = site_table(scans_per_site={"milan": 20, "oslo": 1, "paris": 20})
    options = CombatOptions(mean_only=True)
    model = fit(table.features, table.site, {"age": list(table.age)}, options=options)
    harmonized = apply(model, table.features, table.site, {"age": list(table.age)})
    assert np.isfinite(harmonized).all()


def test_nan_features_are_refused_with_their_position() -> None:
    table = site_table()
    features = table.features.copy()
    features[7, 3] = np.nan
    with pytest.raises(CombatError, match=r"NaN or infinite.*scan 7, feature 3"):
        fit(features, table.site, table.covariates, categorical={"sex"})


def test_nan_covariate_is_refused() -> None:
    table = site_table()
    age = table.age.copy()
    age[2] = np.nan
    with pytest.raises(CombatError, match="'age' contains NaN"):
        fit(table.features, table.site, {"age": list(age)})


def test_a_feature_constant_within_one_batch_stays_finite() -> None:
    table = site_table()
    features = table.features.copy()
    features[np.array(table.site) == "paris", 5] = 3.0
    for options in (CombatOptions(), CombatOptions(parametric=False)):
        model = fit(features, table.site, table.covariates, categorical={"sex"}, options=options)
        harmonized = apply(model, features, table.site, table.covariates)
        assert np.isfinite(harmonized).all()
        assert model.delta_star[model.batch_levels.index("paris"), 5] > 0


def test_a_feature_with_no_residual_variance_stays_finite() -> None:
    table = site_table()
    features = table.features.copy()
    features[:, 0] = 1.0 + 0.02 * table.age  # exactly explained by the design
    model = fit(features, table.site, table.covariates, categorical={"sex"})
    harmonized = apply(model, features, table.site, table.covariates)
    assert np.isfinite(harmonized).all()
    assert model.var_pooled[0] == 1.0


def test_all_features_constant_within_a_batch_stays_finite() -> None:
    table = site_table()
    features = table.features.copy()
    features[np.array(table.site) == "milan"] = 2.5
    model = fit(features, table.site, table.covariates, categorical={"sex"})
    assert np.isfinite(apply(model, features, table.site, table.covariates)).all()


def test_covariate_confounded_with_batch_is_refused() -> None:
    table = site_table()
    by_site = {"scanner": [s.upper() for s in table.site]}
    with pytest.raises(CombatError, match="rank deficient"):
        fit(table.features, table.site, by_site, categorical={"scanner"})


def test_empirical_bayes_needs_two_features() -> None:
    table = site_table()
    with pytest.raises(CombatError, match="at least 2 features"):
        fit(table.features[:, :1], table.site)
    model = fit(table.features[:, :1], table.site, options=CombatOptions(eb=False))
    assert np.isfinite(apply(model, table.features[:, :1], table.site)).all()


def test_apply_refuses_unknown_batches_and_levels() -> None:
    table = site_table()
    model = fit(table.features, table.site, table.covariates, categorical={"sex"})
    with pytest.raises(CombatError, match="batches not in the model: lyon"):
        apply(model, table.features[:1], ["lyon"], {"age": [50.0], "sex": ["F"]})
    with pytest.raises(CombatError, match="'sex' has levels unseen at fit: X"):
        apply(model, table.features[:1], ["oslo"], {"age": [50.0], "sex": ["X"]})
    with pytest.raises(CombatError, match="covariates missing: age"):
        apply(model, table.features[:1], ["oslo"], {"sex": ["F"]})
    with pytest.raises(CombatError, match="model has 30 features, the data 2"):
        apply(model, table.features[:1, :2], ["oslo"], table.covariates)


def test_unknown_reference_batch_is_refused() -> None:
    table = site_table()
    with pytest.raises(CombatError, match="reference batch 'lyon' has no scans"):
        fit(table.features, table.site, options=CombatOptions(ref_batch="lyon"))
