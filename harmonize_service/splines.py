"""Cubic B-spline terms for ComBat-GAM: the basis of one smooth covariate (e.g. age) and its
second-derivative penalty, laid out exactly as statsmodels' `BSplines` (which neuroHarmonize
uses): interior knots at quantiles of the data, boundary knots repeated, first basis function
dropped (the batch columns already carry the intercept)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.interpolate import BSpline

Array = NDArray[np.float64]


class SplineRangeError(ValueError):
    """A covariate value outside the spline's boundary knots (a spline does not extrapolate)."""


@dataclass(frozen=True)
class SplineTerm:
    """One smooth covariate: its name, the full knot vector and the spline degree."""

    name: str
    knots: Array  # boundary knots repeated degree + 1 times, sorted
    degree: int = 3

    def __post_init__(self) -> None:
        self.knots.setflags(write=False)

    @property
    def lower(self) -> float:
        return float(self.knots[0])

    @property
    def upper(self) -> float:
        return float(self.knots[-1])

    @property
    def n_columns(self) -> int:
        return len(self.knots) - self.degree - 2

    def column_names(self) -> tuple[str, ...]:
        return tuple(f"{self.name}:bs{j}" for j in range(self.n_columns))

    def basis(self, values: ArrayLike) -> Array:
        """(n, n_columns) basis at `values`; refuses values outside [lower, upper]."""
        x = np.asarray(values, dtype=np.float64).ravel()
        outside = (x < self.lower) | (x > self.upper)
        if outside.any():
            raise SplineRangeError(
                f"covariate {self.name!r} = {float(x[outside][0]):g} is outside the model's "
                f"spline range [{self.lower:g}, {self.upper:g}]; refit with wider bounds"
            )
        full = BSpline.design_matrix(x, self.knots, self.degree).toarray()
        return np.ascontiguousarray(full[:, 1:], dtype=np.float64)


def spline_term(
    name: str,
    values: ArrayLike,
    *,
    df: int = 10,
    degree: int = 3,
    bounds: tuple[float | None, float | None] = (None, None),
) -> tuple[SplineTerm, Array]:
    """The term (knots from `values`) and its penalty matrix: the integral of the product of
    the basis functions' second derivatives over the boundary range (statsmodels' `cov_der2`,
    computed here by Gauss-Legendre quadrature, exact for a piecewise polynomial)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    n_inner = df - degree - 1
    if n_inner < 0:
        raise ValueError(f"a degree-{degree} spline needs df >= {degree + 1}, got {df}")
    lower = float(x.min()) if bounds[0] is None else float(bounds[0])
    upper = float(x.max()) if bounds[1] is None else float(bounds[1])
    if not lower < upper:
        raise ValueError(f"smooth covariate {name!r} has no range ({lower:g} to {upper:g})")
    inner = _r_quantile(x, np.linspace(0.0, 1.0, n_inner + 2)[1:-1])
    knots = np.sort(np.concatenate([[lower, upper] * (degree + 1), inner]))
    term = SplineTerm(name=name, knots=knots, degree=degree)
    return term, _second_derivative_penalty(term)


def _r_quantile(x: Array, probabilities: Array) -> Array:
    # statsmodels' `_R_compat_quantile`: R's type-7 quantile, numpy's default "linear".
    return np.asarray(np.quantile(x, probabilities), dtype=np.float64)


def _second_derivative_penalty(term: SplineTerm) -> Array:
    breaks = np.unique(term.knots)
    nodes, weights = np.polynomial.legendre.leggauss(max(term.degree, 2))
    half = np.diff(breaks) / 2.0
    mid = (breaks[:-1] + breaks[1:]) / 2.0
    points = (mid[:, None] + half[:, None] * nodes[None, :]).ravel()
    w = (half[:, None] * weights[None, :]).ravel()
    n_full = len(term.knots) - term.degree - 1
    second = np.empty((len(points), n_full))
    for j in range(n_full):
        coefficients = np.zeros(n_full)
        coefficients[j] = 1.0
        second[:, j] = BSpline(term.knots, coefficients, term.degree)(points, nu=2)
    second = second[:, 1:]
    penalty: Array = (second * w[:, None]).T @ second
    return penalty
