"""Closed-form results, one function per formula.

Every function here is derived in ``proofs/`` (the module named in its
docstring); ``tests/test_proofs_agree.py`` lambdifies the sympy expressions
and compares them with these functions. Names are shared with ``proofs/`` and
``dnn/``.

Notation: eta learning rate, S batch size, N training-set size, lam the mean
curvature along a direction, s2 the population variance of the per-example
curvatures along it (``(1/N) sum (h_i - lam)^2``), c the variance factor of a
mini-batch mean.
"""

from __future__ import annotations

import numpy as np

from valleysim.errors import (
    UserInputError,
    check_array,
    check_batch_size,
    check_finite,
    check_int_range,
    check_positive,
)

SCHEMES = ("without_replacement", "with_replacement", "reshuffle")


def check_scheme(scheme: str) -> str:
    """Validate a sampling-scheme name (``scheme``)."""
    if scheme not in SCHEMES:
        raise UserInputError(f"scheme must be one of {', '.join(SCHEMES)}; got {scheme!r}")
    return scheme


def variance_factor(S: int, N: int, scheme: str = "without_replacement") -> float:
    """c(S, N): Var[mean of a batch] = c * population variance.  [proofs.sgd_second_moment]

    Without replacement (and, one step at a time, random reshuffling, whose
    batches are marginally uniform S-subsets): c = (N - S) / (S (N - 1)),
    0 at S = N. With replacement: c = 1 / S. N = 1 gives c = 0.
    """
    check_scheme(scheme)
    N = check_int_range(N, "N (training-set size)", 1)
    S = check_batch_size(S, N, allow_above_n=scheme == "with_replacement")
    if scheme == "with_replacement":
        return 1.0 / S
    if N == 1:
        return 0.0
    return (N - S) / (S * (N - 1))


def stability_factor(eta, lam, s2, c):
    """q = (1 - eta lam)^2 + eta^2 c s2: E[psi_{t+1}^2] = q E[psi_t^2] in 1-D.  [proofs.sgd_second_moment]

    Exact for 1-D per-example quadratics; the break-even point is q = 1.
    Broadcasts over array arguments (NaN entries give NaN: "missing" stays missing).
    """
    eta, lam, s2, c = (check_array(v, n, finite=False) for v, n in ((eta, "eta"), (lam, "lam"), (s2, "s2"), (c, "c")))
    return (1.0 - eta * lam) ** 2 + eta**2 * c * s2


def eta_star_1d(lam, s2, c):
    """Mean-square critical learning rate in 1-D: 2 lam / (lam^2 + c s2).  [proofs.sgd_second_moment]

    Root of stability_factor = 1 other than eta = 0; stable iff 0 < eta <= eta*.
    Returns 0 where lam <= 0 (no positive stable learning rate), NaN where an input is NaN.
    """
    lam, s2, c = (check_array(v, n, finite=False) for v, n in ((lam, "lam"), (s2, "s2"), (c, "c")))
    denom = lam**2 + c * s2
    out = np.where(lam > 0, 2.0 * lam / np.where(denom > 0, denom, 1.0), 0.0)
    out = np.where(np.isnan(denom), np.nan, out)
    return out[()] if out.ndim == 0 else out


def break_even_curvature(eta, c, alpha):
    """lambda*(eta, S) = 2 / eta - alpha c(S, N).  [proofs.break_even]

    The curvature lam_H at which stability_factor reaches 1 when the gradient
    variance along e_H^1 is lam_K = alpha lam_H at unit distance (psi = 1,
    s2 = alpha lam). Decreases with eta, increases with S (c decreases with S);
    the full-batch limit (c = 0) is 2 / eta.
    """
    eta, c, alpha = (check_array(v, n, finite=False) for v, n in ((eta, "eta"), (c, "c"), (alpha, "alpha")))
    return 2.0 / eta - alpha * c


def necessary_eta_bounds(lambda_max: float, nonuniformity: float, c: float) -> tuple[float, float]:
    """Necessary conditions for mean-square stability.  [proofs.sgd_second_moment]

    Returns (sharpness bound 2 / lambda_max, noise bound 1 / (sqrt(c) s)),
    with s = ``nonuniformity`` = sqrt(spectral radius of
    Sigma -> (1/N) sum (H_i - H) Sigma (H_i - H)). Each is an upper bound on
    eta* because the second-moment map dominates both its deterministic and
    its noise part (positive maps). An infinite bound means no constraint.
    """
    lambda_max, c = check_finite(lambda_max, "lambda_max"), check_finite(c, "c")
    nonuniformity = check_finite(nonuniformity, "nonuniformity")
    sharp = 2.0 / lambda_max if lambda_max > 0 else 0.0
    noise = np.inf if c <= 0 or nonuniformity <= 0 else 1.0 / (np.sqrt(c) * nonuniformity)  # no square: s ~ 1e-300
    return sharp, float(noise)


def gd_contraction(eta, lam):
    """|1 - eta lam|: GD's per-step factor on the distance along an eigen-direction.  [proofs.gd_damping]"""
    return np.abs(1.0 - np.asarray(eta, dtype=float) * lam)


def gd_damping_regime(eta: float, lam: float) -> str:
    """R7: GD along an eigen-direction of curvature lam > 0.  [proofs.gd_damping]

    'over-damped' (0 < eta lam < 1, monotone approach), 'critically damped'
    (eta lam = 1, one step), 'under-damped' (1 < eta lam < 2, oscillates
    across the valley while converging), 'marginal' (eta lam = 2, oscillates
    with constant amplitude), 'divergent' (eta lam > 2).
    """
    check_positive(eta, "eta")
    check_positive(lam, "lam")
    x = eta * lam
    if np.isclose(x, 1.0):
        return "critically damped"
    if np.isclose(x, 2.0):
        return "marginal"
    if x < 1.0:
        return "over-damped"
    if x < 2.0:
        return "under-damped"
    return "divergent"
