"""ComBat's empirical Bayes step (Johnson et al. 2007): inverse-gamma hyperparameters and
the parametric (fixed point) and non-parametric (likelihood-weighted) posteriors of each
batch's location/scale, as neuroCombat / sva compute them. Pure float64 numpy."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]

# Johnson et al. 2007 / neuroCombat `it_sol`: relative change below which the EB solver stops.
CONVERGENCE = 1e-4
MAX_ITERATIONS = 10_000


class NotConverged(ValueError):
    """The parametric fixed point did not settle within MAX_ITERATIONS."""


def inverse_gamma_priors(delta_hat: Array) -> tuple[Array, Array]:
    """Method-of-moments inverse-gamma hyperparameters per batch (Johnson et al. 2007).
    A batch whose delta_hat has no spread gets inf, handled as a point-mass prior."""
    mean = delta_hat.mean(axis=1)
    spread = delta_hat.var(axis=1, ddof=1)
    with np.errstate(divide="ignore"):
        a = np.where(spread > 0, (2 * spread + mean**2) / spread, np.inf)
        b = np.where(spread > 0, (mean * spread + mean**3) / spread, np.inf)
    return a, b


def parametric(
    s_data: Array,
    index: NDArray[np.intp],
    gamma_hat: Array,
    delta_hat: Array,
    gamma_bar: Array,
    tau2: Array,
    a_prior: Array,
    b_prior: Array,
    mean_only: bool,
) -> tuple[Array, Array]:
    gamma_star, delta_star = np.empty_like(gamma_hat), np.ones_like(delta_hat)
    for b in range(gamma_hat.shape[0]):
        if mean_only:
            # sva/neuroCombat: the posterior mean with n = 1 and delta = 1.
            gamma_star[b] = _posterior_mean(gamma_hat[b], gamma_bar[b], 1.0, 1.0, tau2[b])
        else:
            gamma_star[b], delta_star[b] = _iterate_posteriors(
                s_data[index == b],
                gamma_hat[b],
                delta_hat[b],
                gamma_bar[b],
                tau2[b],
                a_prior[b],
                b_prior[b],
            )
    return gamma_star, delta_star


def _posterior_mean(
    g_hat: Array, g_bar: float, n: float | Array, d_star: float | Array, t2: float
) -> Array:
    result: Array = (t2 * n * g_hat + d_star * g_bar) / (t2 * n + d_star)
    return result


def _iterate_posteriors(
    batch_data: Array, g_hat: Array, d_hat: Array, g_bar: float, t2: float, a: float, b: float
) -> tuple[Array, Array]:
    """Johnson et al. 2007's fixed point for (gamma*, delta*), neuroCombat's `it_sol`: same
    update order and same stopping rule (relative change with a signed denominator, as in
    sva), so the iteration count, hence the result, agrees with the references."""
    n = float(batch_data.shape[0])
    g_old, d_old = g_hat.copy(), d_hat.copy()
    for _ in range(MAX_ITERATIONS):
        g_new = _posterior_mean(g_hat, g_bar, n, d_old, t2)
        sum2 = ((batch_data - g_new) ** 2).sum(axis=0)
        # a = inf is a point-mass prior: the limit of (sum2/2 + b) / (n/2 + a - 1) is d_hat.
        d_new = d_hat.copy() if math.isinf(a) else (0.5 * sum2 + b) / (n / 2.0 + a - 1.0)
        change = max(_relative_change(g_new, g_old), _relative_change(d_new, d_old))
        g_old, d_old = g_new, d_new
        if change <= CONVERGENCE:
            return g_new, d_new
    raise NotConverged(f"empirical Bayes did not converge in {MAX_ITERATIONS} iterations")


def _relative_change(new: Array, old: Array) -> float:
    step = np.abs(new - old)
    ratio = np.divide(step, old, out=np.where(step > 0, np.inf, 0.0), where=old != 0)
    return float(ratio.max())


def nonparametric(
    s_data: Array,
    index: NDArray[np.intp],
    gamma_hat: Array,
    delta_hat: Array,
    gamma_bar: Array,
    tau2: Array,
    a_prior: Array,
    b_prior: Array,
    mean_only: bool,
) -> tuple[Array, Array]:
    gamma_star, delta_star = np.empty_like(gamma_hat), np.empty_like(delta_hat)
    for b in range(gamma_hat.shape[0]):
        gamma_star[b], delta_star[b] = _integrate_prior(
            s_data[index == b], gamma_hat[b], delta_hat[b]
        )
    return gamma_star, delta_star


def _integrate_prior(batch_data: Array, g_hat: Array, d_hat: Array) -> tuple[Array, Array]:
    """Non-parametric EB (neuroCombat's `int_eprior`): each feature's estimate is the average
    of the other features' (gamma_hat, delta_hat) weighted by the likelihood of its data.
    Weights are normalised in log space, so large batches cannot underflow to 0/0."""
    n = batch_data.shape[0]
    sum_x, sum_x2 = batch_data.sum(axis=0), (batch_data**2).sum(axis=0)
    # sum_j (x_ij - g_k)^2 for every feature i (rows) and candidate k (columns)
    sum2 = sum_x2[:, None] - 2.0 * sum_x[:, None] * g_hat[None, :] + n * g_hat[None, :] ** 2
    log_lh = -0.5 * n * np.log(2 * np.pi * d_hat)[None, :] - sum2 / (2 * d_hat[None, :])
    np.fill_diagonal(log_lh, -np.inf)  # leave-one-out: a feature is not its own prior
    weights = np.exp(log_lh - log_lh.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    return weights @ g_hat, weights @ d_hat
