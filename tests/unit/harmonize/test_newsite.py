"""Adding a site to a fitted model: existing sites' values bit-identical, the new site's
location/scale as ComBat's formulas give them (neuroCombat's `it_sol` as the reference; the
new-site path of neuroHarmonize 2.5.2 fails with more than one training site)."""

from __future__ import annotations

import numpy as np
import pytest

from harmonize_service.combat import CombatError, CombatOptions, apply, fit
from harmonize_service.gam import SmoothOptions, fit_gam
from harmonize_service.model import content_version
from harmonize_service.newsite import add_batch

from .factories import site_table

neuro_combat = pytest.importorskip("neuroCombat.neuroCombat")


def _split(new_site: str, seed: int = 0) -> tuple[dict[str, object], dict[str, object], object]:
    table = site_table(seed=seed)
    is_new = np.array(table.site) == new_site

    def part(mask: np.ndarray) -> dict[str, object]:
        return {
            "features": table.features[mask],
            "site": [s for s, m in zip(table.site, mask, strict=True) if m],
            "covariates": {
                "age": list(table.age[mask]),
                "sex": [s for s, m in zip(table.sex, mask, strict=True) if m],
            },
        }

    return part(~is_new), part(is_new), table


@pytest.mark.parametrize(
    "options", [CombatOptions(), CombatOptions(parametric=False), CombatOptions(mean_only=True)]
)
def test_existing_sites_stay_bit_identical(options: CombatOptions) -> None:
    old, new, _ = _split("porto")
    model = fit(old["features"], old["site"], old["covariates"], categorical={"sex"},
                options=options)
    before = apply(model, old["features"], old["site"], old["covariates"])
    extended = add_batch(model, new["features"], new["covariates"], batch="porto")
    after = apply(extended, old["features"], old["site"], old["covariates"])
    assert np.array_equal(before, after)
    assert extended.batch_levels == (*model.batch_levels, "porto")
    assert content_version(extended) != content_version(model)
    harmonized_new = apply(extended, new["features"], new["site"], new["covariates"])
    assert np.isfinite(harmonized_new).all()


def test_new_site_follows_the_combat_formulas() -> None:
    old, new, _ = _split("paris", seed=2)
    model = fit(old["features"], old["site"], old["covariates"], categorical={"sex"})
    extended = add_batch(model, new["features"], new["covariates"], batch="paris")
    ours = apply(extended, new["features"], new["site"], new["covariates"])

    age = np.array(new["covariates"]["age"])  # type: ignore[index]
    male = np.array([s == "M" for s in new["covariates"]["sex"]], dtype=float)  # type: ignore[index]
    mean = model.grand_mean + male[:, None] * model.covariate_betas[0] \
        + age[:, None] * model.covariate_betas[1]
    scale = np.sqrt(model.var_pooled)
    s_data = ((new["features"] - mean) / scale).T  # type: ignore[operator]
    g_hat, d_hat = s_data.mean(axis=1), s_data.var(axis=1, ddof=1)
    g_star, d_star = neuro_combat.it_sol(
        s_data, g_hat, d_hat, g_hat.mean(), g_hat.var(ddof=1),
        neuro_combat.aprior(d_hat), neuro_combat.bprior(d_hat),
    )
    reference = ((s_data.T - g_star) / np.sqrt(d_star)) * scale + mean
    assert np.abs(ours - reference).max() <= 1e-10


def test_new_site_removes_its_site_effect() -> None:
    old, new, table = _split("milan", seed=5)
    model = fit(old["features"], old["site"], old["covariates"], categorical={"sex"})
    extended = add_batch(model, new["features"], new["covariates"], batch="milan")
    everyone = apply(extended, table.features, table.site, table.covariates)
    sites = np.array(table.site)
    pooled_mean = everyone[sites != "milan"].mean(axis=0)
    shift_before = np.abs(table.features[sites == "milan"].mean(axis=0) - pooled_mean)
    shift_after = np.abs(everyone[sites == "milan"].mean(axis=0) - pooled_mean)
    assert np.median(shift_after) < 0.3 * np.median(shift_before)


def test_gam_model_takes_a_new_site_too() -> None:
    old, new, _ = _split("oslo", seed=3)
    model = fit_gam(old["features"], old["site"], old["covariates"], categorical={"sex"},
                    smooth=SmoothOptions("age", bounds=(0.0, 100.0)))
    before = apply(model, old["features"], old["site"], old["covariates"])
    extended = add_batch(model, new["features"], new["covariates"], batch="oslo")
    assert np.array_equal(apply(extended, old["features"], old["site"], old["covariates"]),
                          before)


def test_guards() -> None:
    old, new, _ = _split("porto")
    model = fit(old["features"], old["site"], old["covariates"], categorical={"sex"})
    with pytest.raises(CombatError, match="already in the model"):
        add_batch(model, new["features"], new["covariates"], batch="milan")
    one = {k: v[:1] for k, v in new["covariates"].items()}  # type: ignore[attr-defined]
    with pytest.raises(CombatError, match="at least 2 scans"):
        add_batch(model, new["features"][:1], one, batch="porto")  # type: ignore[index]
    bad = np.array(new["features"], copy=True)
    bad[0, 0] = np.nan
    with pytest.raises(CombatError, match="NaN"):
        add_batch(model, bad, new["covariates"], batch="porto")
