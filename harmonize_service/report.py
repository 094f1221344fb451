"""The harmonization quality report written at fit time: how well a classifier still tells
the sites apart (cross-validated AUC, before vs after) and whether the biological covariate
effects survived (OLS slope per feature of each continuous covariate, before vs after)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from harmonize_service.combat import Array

FOLDS = 5


def quality_report(
    before: ArrayLike,
    after: ArrayLike,
    batch: Sequence[str],
    covariates: Mapping[str, Sequence[Any]],
    *,
    categorical: Sequence[str] = (),
    feature_names: Sequence[str],
    seed: int = 0,
) -> dict[str, Any]:
    raw, harmonized = np.asarray(before, dtype=np.float64), np.asarray(after, dtype=np.float64)
    labels = np.array([str(b) for b in batch])
    report: dict[str, Any] = {
        "scans": int(raw.shape[0]),
        "features": int(raw.shape[1]),
        "batches": sorted(set(labels.tolist())),
        "site_classifier": {
            "method": f"logistic regression on standardised features, {FOLDS}-fold "
            "stratified CV, macro one-vs-rest ROC AUC (0.5 = sites indistinguishable)",
            "auc_before": site_auc(raw, labels, seed=seed),
            "auc_after": site_auc(harmonized, labels, seed=seed),
        },
        "covariate_effects": {},
    }
    design, columns = _design(covariates, categorical, raw.shape[0])
    slopes_before, slopes_after = _slopes(design, raw), _slopes(design, harmonized)
    for k, name in enumerate(columns):
        report["covariate_effects"][name] = {
            "before": dict(zip(feature_names, slopes_before[k].tolist(), strict=True)),
            "after": dict(zip(feature_names, slopes_after[k].tolist(), strict=True)),
        }
    return report


def site_auc(features: Array, labels: np.ndarray[Any, Any], *, seed: int = 0) -> float | None:
    """Cross-validated macro one-vs-rest AUC of a site classifier; None if a site has fewer
    scans than folds."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    levels, counts = np.unique(labels, return_counts=True)
    if len(levels) < 2 or counts.min() < FOLDS:
        return None
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        proba = cross_val_predict(model, features, labels, cv=folds, method="predict_proba")
    if len(levels) == 2:
        return float(roc_auc_score(labels == levels[1], proba[:, 1]))
    return float(roc_auc_score(labels, proba, multi_class="ovr", average="macro", labels=levels))


def _design(
    covariates: Mapping[str, Sequence[Any]], categorical: Sequence[str], n_scans: int
) -> tuple[Array, list[str]]:
    """Intercept + continuous covariates + dummies; slopes are reported for the continuous."""
    continuous = [n for n in covariates if n not in categorical]
    columns: list[Array] = [np.ones(n_scans)]
    columns += [np.asarray(covariates[n], dtype=np.float64) for n in continuous]
    for name in categorical:
        values = [str(v) for v in covariates[name]]
        for level in sorted(set(values))[1:]:
            columns.append(np.array([v == level for v in values], dtype=np.float64))
    return np.column_stack(columns), continuous


def _slopes(design: Array, features: Array) -> Array:
    betas = np.asarray(np.linalg.lstsq(design, features, rcond=None)[0], dtype=np.float64)
    return betas[1:]
