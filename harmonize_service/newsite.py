"""Adding a batch (a new site or scanner epoch) to a fitted model without refitting it.

Only the new batch's own location and scale are estimated: its scans are standardised with
the model's fixed grand mean, covariate coefficients and pooled variance, and its gamma/delta
get ComBat's empirical-Bayes shrinkage with hyperparameters from its own features (as
neuroHarmonize's `harmonizationLearn(orig_model=...)` does for unseen sites). Every array row
of the existing batches is copied, so their harmonized values stay bit-identical.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from harmonize_service.combat import (
    CombatError,
    CombatModel,
    _checked_features,
    _covariate_design,
    _covariate_effect,
    _Fitted,
    _location_scale,
)


def add_batch(
    model: CombatModel,
    features: ArrayLike,
    covariates: Mapping[str, Sequence[Any]] | None,
    *,
    batch: str,
) -> CombatModel:
    """A new model: `model` plus batch `batch` estimated from its scans (rows of `features`)."""
    if batch in model.batch_levels:
        raise CombatError(f"batch {batch!r} is already in the model")
    data = _checked_features(features)
    if data.shape[1] != len(model.feature_names):
        raise CombatError(
            f"the model has {len(model.feature_names)} features, the data {data.shape[1]}"
        )
    n_scans = data.shape[0]
    if n_scans < 2 and not model.options.mean_only:
        raise CombatError(f"batch {batch!r} needs at least 2 scans to estimate its scale")
    design = _covariate_design(
        dict(covariates or {}), model.continuous, model.categorical, n_scans,
        model.smooth_terms,
    )
    covariate_mean = _covariate_effect(design, model.covariate_betas, model.grand_mean)
    standardised = (data - covariate_mean) / np.sqrt(model.var_pooled)
    fitted = _Fitted(
        standardised=standardised,
        grand_mean=model.grand_mean,
        var_pooled=model.var_pooled,
        covariate_betas=model.covariate_betas,
        batch_index=np.zeros(n_scans, dtype=np.intp),
    )
    # The new batch is never the reference: its own location/scale are always estimated.
    options = replace(model.options, ref_batch=None)
    gamma, delta, (gamma_bar, tau2, a_prior, b_prior) = _location_scale(
        fitted, 1, options, (batch,)
    )
    return replace(
        model,
        batch_levels=(*model.batch_levels, batch),
        scans_per_batch=(*model.scans_per_batch, n_scans),
        gamma_star=np.vstack([model.gamma_star, gamma]),
        delta_star=np.vstack([model.delta_star, delta]),
        gamma_bar=np.concatenate([model.gamma_bar, gamma_bar]),
        tau2=np.concatenate([model.tau2, tau2]),
        a_prior=np.concatenate([model.a_prior, a_prior]),
        b_prior=np.concatenate([model.b_prior, b_prior]),
    )
