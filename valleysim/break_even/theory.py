"""Closed forms of the break-even toy (R2; ``proofs.break_even``): lambda*, the almost-sure edge, frozen-z moments."""

from __future__ import annotations

import math

import numpy as np

from valleysim.break_even.landscape import MAX_SPREAD, SharpeningLandscape, check_landscape
from valleysim.errors import (
    UserInputError,
    check_array,
    check_finite,
    check_int_range,
    check_learning_rate,
    check_range,
)
from valleysim.theory import break_even_curvature, eta_star_1d, stability_factor, variance_factor

# --------------------------------------------------------------------------------------------- theory


def predicted_break_even(eta: float, S: int, N: int, sigma: float) -> float:
    """lambda*(eta, S) = 2 / (eta (1 + c(S, N) sigma^2)): q = 1 with s^2 = sigma^2 lambda^2 (R1; ``proofs.break_even``).

    The same point as ``theory.eta_star_1d(lambda*, sigma^2 lambda*^2, c) = eta`` and as
    ``theory.break_even_curvature(eta, c, alpha)`` with alpha = sigma^2 lambda*; 2 / eta at S = N.
    """
    eta, sigma = check_learning_rate(eta), check_range(sigma, "sigma", 0, MAX_SPREAD)
    c = variance_factor(S, N)
    lam = 2.0 / (eta * (1.0 + c * sigma**2))
    # the same root through the project's closed forms (guards against drift between the two)
    assert math.isclose(float(eta_star_1d(lam, sigma**2 * lam**2, c)), eta, rel_tol=1e-9)
    assert math.isclose(float(break_even_curvature(eta, c, sigma**2 * lam)), lam, rel_tol=1e-9)
    return lam


def almost_sure_break_even(
    land: SharpeningLandscape, eta: float, S: int, j: int = 0, samples: int = 200_000, seed: int = 0
) -> float:
    """The curvature where the Lyapunov exponent gamma = E log|1 - eta a f_B| along x_j crosses 0 (Monte Carlo).

    f_B is the batch mean of f_ij over a uniform S-subset; its law does not depend on a, so one sample
    of batches gives gamma(a) for every a and a root in u = eta a. All C(N, S) batches (exact) when
    there are at most ``samples`` of them. Above the mean-square edge lambda*
    whenever S < N (Jensen); equal to 2 / eta at S = N. NaN if gamma stays < 0 up to u = 4.
    """
    from scipy.optimize import brentq

    check_landscape(land)
    eta, j = check_learning_rate(eta), land.direction(j)
    S = check_int_range(S, "batch size S", 1, land.N)
    samples, seed = check_int_range(samples, "samples", 1), check_int_range(seed, "seed", 0)
    if S == land.N:
        return 2.0 / eta
    f = land.f[:, j]
    log_batches = math.lgamma(land.N + 1) - math.lgamma(S + 1) - math.lgamma(land.N - S + 1)
    if log_batches < math.log(samples) + 1 and math.comb(land.N, S) <= samples:  # every batch once: exact
        from itertools import combinations

        idx = np.fromiter((i for c in combinations(range(land.N), S) for i in c), dtype=np.int64)
        fB = f[idx.reshape(-1, S)].mean(axis=1)
    else:
        rng = np.random.default_rng(seed)
        fB = np.empty(samples)
        rows = max(1, min(20_000, 2**22 // land.N))  # chunks of <= 32 MB
        for s0 in range(0, samples, rows):
            m = min(rows, samples - s0)
            idx = np.argpartition(rng.random((m, land.N)), S, axis=1)[:, :S]
            fB[s0 : s0 + m] = f[idx].mean(axis=1)
    gamma = lambda u: float(np.mean(np.log(np.abs(1.0 - u * fB))))  # noqa: E731
    lo = 2.0 / (1.0 + variance_factor(S, land.N) * land.sigma**2) * 0.999  # gamma < 0 here (Jensen)
    if gamma(4.0) <= 0:
        return math.nan
    return brentq(gamma, lo, 4.0, xtol=1e-10) / eta


def frozen_q(land: SharpeningLandscape, eta: float, S: int, z: float, j: int = 0) -> float:
    """q = (1 - eta a)^2 + eta^2 c sigma^2 a^2 along x_j at frozen z (``theory.stability_factor``)."""
    check_landscape(land)
    eta, j = check_learning_rate(eta), land.direction(j)
    a = float(land.curvatures(check_finite(z, "z"))[j])
    s2 = float(np.mean((a * land.f[:, j] - a) ** 2))  # = sigma^2 a^2
    return float(stability_factor(eta, a, s2, variance_factor(S, land.N)))


def frozen_second_moment(land: SharpeningLandscape, eta: float, S: int, z: float, t, j: int = 0) -> np.ndarray:
    """Exact E[x_j,t^2] at frozen z from x_0 = 0: eta^2 c V (1 - q^t) / (1 - q)  (t * eta^2 c V at q = 1)."""
    t = check_array(t, "t", finite=False)
    if not np.all(t >= 0):  # inf: the stationary limit
        raise UserInputError(f"t must be steps >= 0 from x_0 = 0 (inf: the limit); got {t[~(t >= 0)].ravel()[0]:g}")
    q = frozen_q(land, eta, S, z, j)
    src = eta**2 * variance_factor(S, land.N) * land.noise_source(z, j)
    if math.isclose(q, 1.0, rel_tol=0, abs_tol=1e-14):
        return src * t
    return src * (1.0 - q**t) / (1.0 - q)


def drift_steps(land: SharpeningLandscape, eta: float, S: int) -> float:
    """Steps the drift alone (z grows by eta beta per step from z = 0) takes to reach lambda*; inf without
    sharpening (beta = 0 or every rate 0)."""
    check_landscape(land)
    lam = predicted_break_even(eta, S, land.N, land.sigma)
    z_star = min(land.z_of_curvature(lam, j) if land.rates[j] > 0 else np.inf for j in range(land.k))
    if not np.isfinite(z_star) or land.beta <= 0:
        return math.inf
    return max(z_star, 0.0) / (eta * land.beta)


def steps_for_break_even(land: SharpeningLandscape, eta: float, S: int) -> int | None:
    """2.5 x ``drift_steps`` + 500: break-even by ~40% of the run, a plateau in the last half; None
    without sharpening."""
    t = drift_steps(land, eta, S)
    return None if not math.isfinite(t) else int(math.ceil(2.5 * t + 500))
