"""Random reshuffling: the exact per-epoch second-moment map by enumerating permutations.

An epoch draws a uniform permutation pi and applies the k = floor(N/S)
batches B_1..B_k (consecutive S-blocks of pi; the rest dropped):
u <- M u, M = (I - eta H_{B_k}) ... (I - eta H_{B_1}). The second moment
obeys Sigma <- E_pi[M Sigma M^T], a linear map on (r, r) matrices whose
spectral radius rho_epoch gives the per-step factor rho_epoch^(1/k).
Exact for N <= MAX_N (N! permutations); use Monte Carlo beyond.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.optimize import brentq

from valleysim.errors import UserInputError, check_batch_size
from valleysim.quadratic.landscape import PerExampleQuadratic

MAX_N = 8


def epoch_matrices(q: PerExampleQuadratic, eta: float, S: int) -> np.ndarray:
    """(N!, r, r): the epoch product M for every permutation (equally likely)."""
    q.check_eta(eta)
    check_batch_size(S, q.N)
    if q.N > MAX_N:
        raise UserInputError(f"exact reshuffling needs N <= {MAX_N} (N! permutations); got N = {q.N}")
    q, eta = q.unit_problem(eta)  # exact: the same products eta H_B
    red = q.reduced()
    Hs = red.hessians()
    eye = np.eye(red.D)
    k = q.N // S
    perms = np.array(list(itertools.permutations(range(q.N))))
    M = np.broadcast_to(eye, (len(perms), red.D, red.D)).copy()
    for b in range(k):
        Hb = Hs[perms[:, b * S : (b + 1) * S]].mean(axis=1)
        M = (eye - eta * Hb) @ M
    return M


def epoch_spectral_radius(q: PerExampleQuadratic, eta: float, S: int) -> float:
    """rho of Sigma -> E[M Sigma M^T] over one epoch."""
    M = epoch_matrices(q, eta, S)
    r = M.shape[1]
    op = np.einsum("pab,pcd->acbd", M, M).reshape(r * r, r * r) / len(M)
    return float(np.max(np.abs(np.linalg.eigvals(op))))


def per_step_spectral_radius(q: PerExampleQuadratic, eta: float, S: int) -> float:
    """rho_epoch^(1/k), k = floor(N/S) steps per epoch: comparable with rho(T(eta))."""
    return epoch_spectral_radius(q, eta, S) ** (1.0 / (q.N // S))


def eta_star(q: PerExampleQuadratic, S: int, eta_max: float | None = None, n_grid: int = 200) -> float:
    """First eta at which the epoch map's spectral radius reaches 1 (scan, then root-find).

    Unlike the one-step schemes the stable set need not be an interval; this
    returns its first boundary, searched on (0, eta_max], eta_max defaulting
    to 2.5 / lambda_max(H).
    """
    unit, factor = q.unit_scaled()
    if factor != 1.0:  # search the exactly rescaled problem; eta* scales as 1 / factor
        return eta_star(unit, S, None if eta_max is None else eta_max * factor, n_grid) / factor
    lam = np.linalg.eigvalsh(q.mean_hessian())[-1]
    hi = eta_max or 2.5 / lam
    grid = np.linspace(hi / n_grid, hi, n_grid)
    f = [epoch_spectral_radius(q, e, S) - 1.0 for e in grid]
    for a, b, fa, fb in zip(grid[:-1], grid[1:], f[:-1], f[1:]):
        if fa <= 0.0 < fb:
            return float(brentq(lambda e: epoch_spectral_radius(q, e, S) - 1.0, a, b, xtol=1e-13))
    return float("nan") if f[0] > 0 else float("inf")
