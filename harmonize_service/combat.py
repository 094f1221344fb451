"""ComBat (Johnson et al. 2007; Fortin et al. 2017/2018) as pure float64 numpy functions.

Owns fitting a location/scale harmonization model on a scans-by-features table and applying
it to any scans, one at a time or many, with each scan's own covariates.

Documented handling of degenerate data (never a silent NaN):

- NaN or infinite features or continuous covariates: `CombatError`.
- A batch with fewer than 2 scans: `CombatError`, except with `mean_only` (no variance to
  estimate). New sites with few scans are the job of the new-site path, not of `fit`.
- A feature with zero variance within one batch: its `delta_hat` is fixed at 1 for that
  batch (as neuroCombat and sva do) before the priors are estimated.
- A feature with zero pooled residual variance (exactly explained by the design): its
  `var_pooled` is set to 1, so the feature keeps its covariate fit and loses only batch shifts.
- Every batch's `delta_hat` equal across features (no spread for the inverse-gamma prior):
  the limit of the posterior as the prior variance goes to 0, `delta_star = delta_hat`.
- Empirical Bayes needs at least 2 features; a design of deficient rank (a covariate
  confounded with batch) is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from harmonize_service.empirical_bayes import (
    NotConverged,
    inverse_gamma_priors,
    nonparametric,
    parametric,
)
from harmonize_service.splines import SplineRangeError, SplineTerm

Array = NDArray[np.float64]
# (design, data) -> coefficients (n_design_columns, n_features): OLS, or penalised for GAM.
BetaSolver = Callable[[Array, Array], Array]



class CombatError(ValueError):
    """Input ComBat cannot harmonize; the message says what and where."""


@dataclass(frozen=True)
class CombatOptions:
    eb: bool = True
    parametric: bool = True
    mean_only: bool = False
    ref_batch: str | None = None


@dataclass(frozen=True)
class CombatModel:
    """A fitted ComBat model. Rows of `gamma_star`/`delta_star` follow `batch_levels`; rows of
    `covariate_betas` follow `design_columns` (continuous names, `name=level` for categories)."""

    feature_names: tuple[str, ...]
    batch_levels: tuple[str, ...]
    scans_per_batch: tuple[int, ...]
    continuous: tuple[str, ...]
    categorical: tuple[tuple[str, tuple[str, ...]], ...]  # (name, levels); levels[0] dropped
    options: CombatOptions
    grand_mean: Array  # (n_features,)
    var_pooled: Array  # (n_features,)
    covariate_betas: Array  # (n_design_covariate_columns, n_features)
    gamma_star: Array  # (n_batch, n_features)
    delta_star: Array  # (n_batch, n_features)
    gamma_bar: Array  # (n_batch,) EB hyperparameters, kept for the new-site path
    tau2: Array  # (n_batch,)
    a_prior: Array  # (n_batch,) nan when not estimated (mean_only / non-EB)
    b_prior: Array  # (n_batch,)
    batch_column: str = "batch"  # the table column that names the batch (CLI tables)
    # ComBat-GAM: smooth covariates (B-spline bases in the design) and each feature's
    # selected penalty weight; empty for linear ComBat.
    smooth_terms: tuple[SplineTerm, ...] = ()
    smooth_penalty: Array = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        # Frozen means frozen: a fitted model's arrays cannot be edited in place.
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, np.ndarray):
                value.setflags(write=False)

    @property
    def design_columns(self) -> tuple[str, ...]:
        columns = [f"{name}={level}" for name, levels in self.categorical for level in levels[1:]]
        splines = [c for term in self.smooth_terms for c in term.column_names()]
        return (*columns, *self.continuous, *splines)

    @property
    def covariate_names(self) -> tuple[str, ...]:
        """Every covariate a scan must come with (categorical, continuous, smooth)."""
        return (
            *(n for n, _ in self.categorical),
            *self.continuous,
            *(t.name for t in self.smooth_terms),
        )


@dataclass(frozen=True)
class _Fitted:
    """Standardised data and the location/scale estimates of one fit."""

    standardised: Array  # (n_scans, n_features)
    grand_mean: Array
    var_pooled: Array
    covariate_betas: Array
    batch_index: NDArray[np.intp]


def fit(
    features: ArrayLike,
    batch: Sequence[str],
    covariates: Mapping[str, Sequence[Any]] | None = None,
    *,
    categorical: Collection[str] = (),
    feature_names: Sequence[str] | None = None,
    batch_column: str = "batch",
    options: CombatOptions = CombatOptions(),
) -> CombatModel:
    """Fit ComBat on `features` (n_scans, n_features). `covariates` maps a name to one value
    per scan; names in `categorical` are one-hot coded with their first sorted level dropped."""
    return fit_with_design(
        features,
        batch,
        covariates,
        categorical=categorical,
        feature_names=feature_names,
        batch_column=batch_column,
        options=options,
    )


def fit_with_design(
    features: ArrayLike,
    batch: Sequence[str],
    covariates: Mapping[str, Sequence[Any]] | None = None,
    *,
    categorical: Collection[str] = (),
    feature_names: Sequence[str] | None = None,
    batch_column: str = "batch",
    options: CombatOptions = CombatOptions(),
    smooth_terms: tuple[SplineTerm, ...] = (),
    solve_betas: BetaSolver | None = None,
    smooth_penalty: Callable[[], Array] | None = None,
) -> CombatModel:
    """`fit` with smooth covariates (their spline bases appended to the design) and a custom
    coefficient solver: the extension point of ComBat-GAM (`harmonize_service.gam`)."""
    data = _checked_features(features)
    covariates = dict(covariates or {})
    names = _feature_names(feature_names, data.shape[1])
    levels, batch_index = _batch_levels(batch, data.shape[0], options)
    smooth = {t.name for t in smooth_terms}
    continuous = tuple(n for n in covariates if n not in categorical and n not in smooth)
    categories = tuple(
        (n, tuple(sorted({str(v) for v in covariates[n]}))) for n in covariates if n in categorical
    )
    _check_unknown(categorical, covariates)
    covariate_design = _covariate_design(
        covariates, continuous, categories, data.shape[0], smooth_terms
    )
    fitted = _standardise(
        data, batch_index, covariate_design, len(levels), options, levels, solve_betas
    )
    gamma_star, delta_star, hyper = _location_scale(fitted, len(levels), options, levels)
    return CombatModel(
        feature_names=names,
        batch_levels=levels,
        scans_per_batch=tuple(int(c) for c in np.bincount(batch_index, minlength=len(levels))),
        continuous=continuous,
        categorical=categories,
        options=options,
        grand_mean=fitted.grand_mean,
        var_pooled=fitted.var_pooled,
        covariate_betas=fitted.covariate_betas,
        gamma_star=gamma_star,
        delta_star=delta_star,
        gamma_bar=hyper[0],
        tau2=hyper[1],
        a_prior=hyper[2],
        b_prior=hyper[3],
        batch_column=batch_column,
        smooth_terms=smooth_terms,
        smooth_penalty=smooth_penalty() if smooth_penalty is not None else np.zeros(0),
    )


def apply(
    model: CombatModel,
    features: ArrayLike,
    batch: Sequence[str],
    covariates: Mapping[str, Sequence[Any]] | None = None,
) -> Array:
    """Harmonize scans (rows of `features`) with a fitted model. Row i depends only on row i,
    its batch and its covariates: one scan at a time gives bit-identical results."""
    data = _checked_features(features)
    if data.shape[1] != len(model.feature_names):
        raise CombatError(
            f"the model has {len(model.feature_names)} features, the data {data.shape[1]}"
        )
    if len(batch) != data.shape[0]:
        raise CombatError(f"{len(batch)} batch labels for {data.shape[0]} scans")
    known = {level: i for i, level in enumerate(model.batch_levels)}
    unknown = sorted({str(b) for b in batch} - known.keys())
    if unknown:
        raise CombatError(f"batches not in the model: {', '.join(unknown)}")
    index = np.array([known[str(b)] for b in batch], dtype=np.intp)
    design = _covariate_design(
        dict(covariates or {}), model.continuous, model.categorical, data.shape[0],
        model.smooth_terms,
    )
    covariate_mean = _covariate_effect(design, model.covariate_betas, model.grand_mean)
    scale = np.sqrt(model.var_pooled)
    # ((x - m) / s - gamma) / sqrt(delta) * s + m, element by element in place: the same
    # operations in the same order for every row, without a temporary per step.
    harmonized: Array = np.subtract(data, covariate_mean)
    harmonized /= scale
    per_scan = np.take(model.gamma_star, index, axis=0)
    harmonized -= per_scan
    np.take(np.sqrt(model.delta_star), index, axis=0, out=per_scan)
    harmonized /= per_scan
    harmonized *= scale
    harmonized += covariate_mean
    if model.options.ref_batch is not None:
        # The reference batch is the target scale: its scans pass through untouched.
        is_ref = index == known[model.options.ref_batch]
        harmonized[is_ref] = data[is_ref]
    return harmonized


def _checked_features(features: ArrayLike) -> Array:
    data = np.array(features, dtype=np.float64)
    if data.ndim != 2:
        raise CombatError(f"features must be a 2-D table (scans, features), got {data.ndim}-D")
    bad = ~np.isfinite(data)
    if bad.any():
        scans, cols = np.nonzero(bad)
        raise CombatError(
            f"features contain {int(bad.sum())} NaN or infinite values "
            f"(first at scan {int(scans[0])}, feature {int(cols[0])}); impute or drop them first"
        )
    return data


def _feature_names(names: Sequence[str] | None, n_features: int) -> tuple[str, ...]:
    if names is None:
        return tuple(f"feature_{i}" for i in range(n_features))
    if len(names) != n_features:
        raise CombatError(f"{len(names)} feature names for {n_features} features")
    return tuple(str(n) for n in names)


def _check_unknown(categorical: Collection[str], covariates: Mapping[str, Any]) -> None:
    missing = sorted(set(categorical) - covariates.keys())
    if missing:
        raise CombatError(f"categorical covariates without values: {', '.join(missing)}")


def _batch_levels(
    batch: Sequence[str], n_scans: int, options: CombatOptions
) -> tuple[tuple[str, ...], NDArray[np.intp]]:
    labels = [str(b) for b in batch]
    if len(labels) != n_scans:
        raise CombatError(f"{len(labels)} batch labels for {n_scans} scans")
    levels = tuple(sorted(set(labels)))
    if len(levels) < 2 and options.ref_batch is None:
        raise CombatError(f"ComBat needs at least 2 batches, got {len(levels)}")
    if options.ref_batch is not None and options.ref_batch not in levels:
        raise CombatError(f"reference batch {options.ref_batch!r} has no scans")
    index = np.array([levels.index(b) for b in labels], dtype=np.intp)
    counts = np.bincount(index, minlength=len(levels))
    small = [f"{levels[i]} ({int(c)} scan)" for i, c in enumerate(counts) if c < 2]
    if small and not options.mean_only:
        raise CombatError(
            "batches with fewer than 2 scans have no within-batch variance: "
            f"{', '.join(small)}; add scans, merge the batch, or fit with mean_only"
        )
    return levels, index


def _covariate_design(
    covariates: Mapping[str, Sequence[Any]],
    continuous: tuple[str, ...],
    categories: tuple[tuple[str, tuple[str, ...]], ...],
    n_scans: int,
    smooth_terms: tuple[SplineTerm, ...] = (),
) -> Array:
    """Covariate columns of the design, in `CombatModel.design_columns` order."""
    names = {*continuous, *(n for n, _ in categories), *(t.name for t in smooth_terms)}
    missing = sorted(names - covariates.keys())
    if missing:
        raise CombatError(f"covariates missing: {', '.join(missing)}")
    columns: list[Array] = []
    for name, levels in categories:
        values = [str(v) for v in covariates[name]]
        _check_length(name, len(values), n_scans)
        unseen = sorted(set(values) - set(levels))
        if unseen:
            raise CombatError(f"covariate {name!r} has levels unseen at fit: {', '.join(unseen)}")
        columns += [np.array([v == lv for v in values], dtype=np.float64) for lv in levels[1:]]
    for name in continuous:
        try:
            column = np.array(covariates[name], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise CombatError(f"covariate {name!r} is not numeric; mark it categorical") from exc
        _check_length(name, len(column), n_scans)
        if not np.isfinite(column).all():
            raise CombatError(f"covariate {name!r} contains NaN or infinite values")
        columns.append(column)
    for term in smooth_terms:
        smooth_values = _numeric(term.name, covariates[term.name], n_scans)
        try:
            columns += list(term.basis(smooth_values).T)
        except SplineRangeError as exc:
            raise CombatError(str(exc)) from exc
    if not columns:
        return np.zeros((n_scans, 0))
    return np.column_stack(columns)


def _numeric(name: str, values: Sequence[Any], n_scans: int) -> Array:
    try:
        column = np.array(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CombatError(f"covariate {name!r} is not numeric") from exc
    _check_length(name, len(column), n_scans)
    if not np.isfinite(column).all():
        raise CombatError(f"covariate {name!r} contains NaN or infinite values")
    return column


def _check_length(name: str, length: int, n_scans: int) -> None:
    if length != n_scans:
        raise CombatError(f"covariate {name!r} has {length} values for {n_scans} scans")


def _covariate_effect(design: Array, betas: Array, grand_mean: Array) -> Array:
    # An explicit per-column sum (not a matmul) so a row's result cannot depend on how many
    # rows are computed together (BLAS picks kernels by shape).
    total = np.broadcast_to(grand_mean, (design.shape[0], grand_mean.shape[0])).copy()
    term = np.empty_like(total)
    for k in range(design.shape[1]):
        np.multiply(design[:, k, None], betas[k], out=term)
        total += term
    return total


def _standardise(
    data: Array,
    batch_index: NDArray[np.intp],
    covariate_design: Array,
    n_batch: int,
    options: CombatOptions,
    levels: tuple[str, ...],
    solve_betas: BetaSolver | None = None,
) -> _Fitted:
    """OLS on batch one-hot + covariates, grand mean and pooled variance as in neuroCombat's
    `standardize_across_features`."""
    n_scans = data.shape[0]
    batch_onehot = np.eye(n_batch)[batch_index]
    ref = None if options.ref_batch is None else levels.index(options.ref_batch)
    if ref is not None:
        batch_onehot[:, ref] = 1.0  # the reference level becomes the intercept
    design = np.hstack([batch_onehot, covariate_design])
    if np.linalg.matrix_rank(design) < design.shape[1]:
        raise CombatError(
            "the design (batch + covariates) is rank deficient: a covariate is constant or "
            "confounded with batch"
        )
    if solve_betas is None:
        # The normal equations, as neuroCombat solves them; the rank was checked above.
        betas = np.linalg.solve(design.T @ design, design.T @ data)
    else:
        betas = solve_betas(design, data)
    counts = np.bincount(batch_index, minlength=n_batch).astype(np.float64)
    if ref is None:
        grand_mean = (counts / n_scans) @ betas[:n_batch]
        residuals = design @ betas
        np.subtract(data, residuals, out=residuals)
    else:
        grand_mean = betas[ref].copy()
        rows = batch_index == ref
        residuals = data[rows] - design[rows] @ betas
    np.square(residuals, out=residuals)
    var_pooled = residuals.mean(axis=0)
    # "Exactly explained" up to rounding: residuals at the level of float64 eps of the data.
    largest = np.maximum(data.max(axis=0), -data.min(axis=0))
    rounding = (64 * np.finfo(np.float64).eps * largest) ** 2
    var_pooled[var_pooled <= rounding] = 1.0
    covariate_betas = betas[n_batch:]
    covariate_mean = _covariate_effect(covariate_design, covariate_betas, grand_mean)
    np.subtract(data, covariate_mean, out=covariate_mean)
    covariate_mean /= np.sqrt(var_pooled)
    return _Fitted(
        standardised=covariate_mean,
        grand_mean=grand_mean,
        var_pooled=var_pooled,
        covariate_betas=covariate_betas,
        batch_index=batch_index,
    )


def _location_scale(
    fitted: _Fitted, n_batch: int, options: CombatOptions, levels: tuple[str, ...]
) -> tuple[Array, Array, tuple[Array, Array, Array, Array]]:
    """gamma_star, delta_star and the EB hyperparameters (gamma_bar, tau2, a, b) per batch."""
    s_data, index = fitted.standardised, fitted.batch_index
    n_features = s_data.shape[1]
    if options.eb and n_features < 2:
        raise CombatError("empirical Bayes needs at least 2 features; fit with eb=False")
    gamma_hat = np.stack([s_data[index == b].mean(axis=0) for b in range(n_batch)])
    ref = None if options.ref_batch is None else levels.index(options.ref_batch)
    if ref is not None:
        # With the reference level as intercept, OLS on the batch design gives the reference
        # mean for it and differences from it for the others (neuroCombat's gamma_hat).
        gamma_hat[np.arange(n_batch) != ref] -= gamma_hat[ref]
    delta_hat = np.ones_like(gamma_hat)
    if not options.mean_only:
        for b in range(n_batch):
            delta_hat[b] = np.var(s_data[index == b], axis=0, ddof=1)
        delta_hat[delta_hat == 0] = 1.0
    nan = np.full(n_batch, np.nan)
    gamma_bar, tau2 = gamma_hat.mean(axis=1), nan.copy()
    a_prior, b_prior = nan.copy(), nan.copy()
    if not options.eb:
        gamma_star, delta_star = gamma_hat, delta_hat
    else:
        tau2 = gamma_hat.var(axis=1, ddof=1)
        if not options.mean_only:
            a_prior, b_prior = inverse_gamma_priors(delta_hat)
        solve = parametric if options.parametric else nonparametric
        try:
            gamma_star, delta_star = solve(
                s_data, index, gamma_hat, delta_hat, gamma_bar, tau2, a_prior, b_prior,
                options.mean_only,
            )
        except NotConverged as exc:
            raise CombatError(str(exc)) from exc
    if ref is not None:
        gamma_star[ref], delta_star[ref] = 0.0, 1.0
    return gamma_star, delta_star, (gamma_bar, tau2, a_prior, b_prior)
