"""Numerical invariants of ComBat: covariate effects survive, fit/apply separation holds."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from harmonize_service.combat import CombatOptions, apply, fit

from .factories import site_table

OPTIONS = st.sampled_from(
    [
        CombatOptions(),
        CombatOptions(parametric=False),
        CombatOptions(mean_only=True),
        CombatOptions(ref_batch="oslo"),
    ]
)
SITE_SIZES = st.fixed_dictionaries({s: st.integers(20, 60) for s in ("milan", "oslo", "paris")})


def _age_slopes(
    features: np.ndarray, age: np.ndarray, sex: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """OLS age slope per feature and its standard error."""
    design = np.column_stack([np.ones_like(age), age, [x == "M" for x in sex]])
    betas, residual_ss = np.linalg.lstsq(design, features, rcond=None)[:2]
    sigma2 = residual_ss / (len(age) - design.shape[1])
    return betas[1], np.sqrt(sigma2 * np.linalg.inv(design.T @ design)[1, 1])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), sizes=SITE_SIZES)
def test_without_site_effects_the_age_slope_is_kept(seed: int, sizes: dict[str, int]) -> None:
    table = site_table(seed=seed, scans_per_site=sizes, n_features=12, site_effects=False)
    model = fit(table.features, table.site, table.covariates, categorical={"sex"})
    harmonized = apply(model, table.features, table.site, table.covariates)
    before, standard_error = _age_slopes(table.features, table.age, table.sex)
    after, _ = _age_slopes(harmonized, table.age, table.sex)
    # ComBat rescales residuals per site, so the slope moves, but by less than its own
    # sampling error when there is no site effect to remove.
    assert (np.abs(after - before) <= standard_error).all()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), sizes=SITE_SIZES, options=OPTIONS)
def test_one_scan_at_a_time_equals_all_at_once(
    seed: int, sizes: dict[str, int], options: CombatOptions
) -> None:
    table = site_table(seed=seed, scans_per_site=sizes, n_features=8)
    held_out = np.random.default_rng(seed).random(len(table.site)) < 0.3
    train = ~held_out
    model = fit(
        table.features[train],
        [s for s, t in zip(table.site, train, strict=True) if t],
        {k: [v for v, t in zip(vs, train, strict=True) if t] for k, vs in table.covariates.items()},
        categorical={"sex"},
        options=options,
    )
    together = apply(model, table.features, table.site, table.covariates)
    for i in range(len(table.site)):
        one = apply(
            model,
            table.features[i : i + 1],
            [table.site[i]],
            {"age": [table.age[i]], "sex": [table.sex[i]]},
        )
        assert np.array_equal(one[0], together[i])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), sizes=SITE_SIZES, options=OPTIONS)
def test_output_is_finite_and_reference_batch_unchanged(
    seed: int, sizes: dict[str, int], options: CombatOptions
) -> None:
    table = site_table(seed=seed, scans_per_site=sizes, n_features=6)
    model = fit(table.features, table.site, table.covariates, categorical={"sex"}, options=options)
    harmonized = apply(model, table.features, table.site, table.covariates)
    assert np.isfinite(harmonized).all()
    if options.ref_batch is not None:
        is_ref = np.array(table.site) == options.ref_batch
        assert np.array_equal(harmonized[is_ref], table.features[is_ref])
