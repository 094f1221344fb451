"""ComBat-GAM (Pomponio et al. 2020): ComBat whose covariate model has one smooth term (e.g.
age) as a penalised cubic B-spline, vectorised across features.

The model is neuroHarmonize's: design = batch columns + linear covariates + the spline basis
(statsmodels `BSplines`, df 10, degree 3), coefficients by penalised least squares
`(X'X + 2 alpha S) b = X'y` (statsmodels' `penalized_wls` doubles the penalty), one `alpha`
per feature chosen from `logspace(0, 7, 11)` by 5-fold cross-validation on the cost
`||y - y_hat|| / n_test` (statsmodels' `select_penweight_kfold`) or by GCV. neuroHarmonize
fits statsmodels' GLMGam 56 times per feature; here every feature shares each fold's Gram
matrix, so a fold x alpha costs one small solve for all features at once. Folds are a
seeded shuffle (neuroHarmonize draws fresh ones unless given a seed), so a fit is repeatable.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from harmonize_service.combat import (
    Array,
    CombatError,
    CombatModel,
    CombatOptions,
    fit_with_design,
)
from harmonize_service.splines import spline_term

ALPHA_GRID = tuple(float(a) for a in np.logspace(0, 7, 11))
Mask = NDArray[np.bool_]
DEFAULT_OPTIONS = CombatOptions()


@dataclass(frozen=True)
class SmoothOptions:
    """The smooth term and how its penalty is chosen."""

    covariate: str
    df: int = 10
    degree: int = 3
    bounds: tuple[float | None, float | None] = (None, None)
    selection: Literal["kfold", "gcv"] = "kfold"
    k_folds: int = 5
    seed: int = 0
    alphas: tuple[float, ...] = ALPHA_GRID


def fit_gam(
    features: ArrayLike,
    batch: Sequence[str],
    covariates: Mapping[str, Sequence[Any]],
    *,
    smooth: SmoothOptions,
    categorical: Collection[str] = (),
    feature_names: Sequence[str] | None = None,
    batch_column: str = "batch",
    options: CombatOptions = DEFAULT_OPTIONS,
    folds: Sequence[Mask] | None = None,
) -> CombatModel:
    """Fit ComBat-GAM. `folds` (test masks) overrides the seeded k-fold split."""
    if smooth.covariate not in covariates:
        raise CombatError(f"smooth covariate {smooth.covariate!r} has no values")
    if smooth.covariate in categorical:
        raise CombatError(f"smooth covariate {smooth.covariate!r} cannot be categorical")
    try:
        values = np.array(covariates[smooth.covariate], dtype=np.float64)
        term, penalty = spline_term(
            smooth.covariate, values, df=smooth.df, degree=smooth.degree, bounds=smooth.bounds
        )
    except ValueError as exc:
        raise CombatError(f"smooth covariate {smooth.covariate!r}: {exc}") from exc
    solver = _PenalisedSolver(penalty=penalty, smooth=smooth, folds=folds)
    return fit_with_design(
        features,
        batch,
        covariates,
        categorical=categorical,
        feature_names=feature_names,
        batch_column=batch_column,
        options=options,
        smooth_terms=(term,),
        solve_betas=solver,
        smooth_penalty=solver.chosen,
    )


class _PenalisedSolver:
    """The coefficient solver handed to the ComBat core; remembers each feature's alpha."""

    def __init__(self, *, penalty: Array, smooth: SmoothOptions, folds: Sequence[Mask] | None):
        self._penalty_block = penalty
        self._smooth = smooth
        self._folds = folds
        self._alphas = np.array(smooth.alphas, dtype=np.float64)
        self._chosen = np.zeros(0)

    def chosen(self) -> Array:
        return self._chosen

    def __call__(self, design: Array, data: Array) -> Array:
        penalty = np.zeros((design.shape[1], design.shape[1]))
        k = self._penalty_block.shape[0]
        penalty[-k:, -k:] = 2.0 * self._penalty_block  # statsmodels' penalized_wls doubling
        if self._smooth.selection == "gcv":
            scores = _gcv_scores(design, data, penalty, self._alphas)
        else:
            masks = self._folds or kfold_masks(
                design.shape[0], self._smooth.k_folds, seed=self._smooth.seed
            )
            scores = _cv_scores(design, data, penalty, self._alphas, masks)
        best = np.argmin(scores, axis=0)
        self._chosen = self._alphas[best]
        gram, moments = design.T @ design, design.T @ data
        betas = np.empty((design.shape[1], data.shape[1]))
        for i in np.unique(best):
            columns = best == i
            betas[:, columns] = _solve(gram + self._alphas[i] * penalty, moments[:, columns])
        return betas


def kfold_masks(n_scans: int, k_folds: int, *, seed: int) -> list[Mask]:
    """statsmodels' KFold(shuffle=True): one shuffled order split into k nearly equal folds."""
    if not 2 <= k_folds <= n_scans:
        raise CombatError(f"cannot make {k_folds} folds of {n_scans} scans")
    order = np.arange(n_scans)
    np.random.default_rng(seed).shuffle(order)
    masks = []
    for fold in np.array_split(order, k_folds):
        mask = np.zeros(n_scans, dtype=bool)
        mask[fold] = True
        masks.append(mask)
    return masks


def _cv_scores(
    design: Array, data: Array, penalty: Array, alphas: Array, test_masks: Sequence[Mask]
) -> Array:
    """Mean over folds of ||y_test - X_test b_train|| / n_test, per (alpha, feature)."""
    scores = np.zeros((len(alphas), data.shape[1]))
    for test in test_masks:
        train = ~test
        gram = design[train].T @ design[train]
        moments = design[train].T @ data[train]
        for i, alpha in enumerate(alphas):
            betas = _solve(gram + alpha * penalty, moments)
            residual = data[test] - design[test] @ betas
            scores[i] += np.sqrt((residual**2).sum(axis=0)) / test.sum()
    result: Array = scores / len(test_masks)
    return result


def _gcv_scores(design: Array, data: Array, penalty: Array, alphas: Array) -> Array:
    """Generalised cross-validation n * RSS / (n - tr H)^2 (Craven & Wahba 1979)."""
    n = design.shape[0]
    gram, moments = design.T @ design, design.T @ data
    scores = np.empty((len(alphas), data.shape[1]))
    for i, alpha in enumerate(alphas):
        system = gram + alpha * penalty
        betas = _solve(system, moments)
        trace = float(np.trace(_solve(system, gram)))
        rss = ((data - design @ betas) ** 2).sum(axis=0)
        scores[i] = n * rss / (n - trace) ** 2
    return scores


def _solve(system: Array, rhs: Array) -> Array:
    # Minimum-norm least squares: a fold missing a whole batch leaves `system` singular, and
    # statsmodels' WLS (pinv) then returns the minimum-norm solution too.
    solution = np.asarray(np.linalg.lstsq(system, rhs, rcond=None)[0], dtype=np.float64)
    return solution
