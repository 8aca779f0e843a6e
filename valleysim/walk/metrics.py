"""The walk metrics (Xing et al. 2018, Sec. 3) on any loss: interpolation points, floor, height, barrier, cosine.

Numba-free: ``dnn.walk_metrics`` applies the same definitions to a network loss.
"""

from __future__ import annotations

import numpy as np

from valleysim.errors import UserInputError, check_array

N_INTERP = 10
BARRIER_RTOL = 1e-10  # "above" means above by more than BARRIER_RTOL (1 + |L|): round-off is not a barrier
GRAD_ATOL = 1e-12  # cos is skipped when a gradient's norm is below this (GD stopped at a minimum)


def interpolation_alphas(n_interp: int = N_INTERP) -> np.ndarray:
    """alpha_0 = 0, alpha_j = j / (n + 1) for j = 1..n (the n points strictly between), alpha_{n+1} = 1."""
    return np.arange(n_interp + 2) / (n_interp + 1)


def segment_metrics(losses) -> dict:
    """Walk metrics of one segment from its losses at ``interpolation_alphas`` (endpoints first and last).

    floor = min over alpha in [0, 1]; height = (L_0 + L_1 - 2 floor) / 2; barrier = an interior point
    above both endpoints (by more than BARRIER_RTOL (1 + |L|)), barrier_size = max interior - max(L_0, L_1)
    (0 when none)."""
    L = check_array(losses, "losses", ("n_interp + 2",), finite=False)
    if L.size < 2:
        raise UserInputError(f"losses must hold the segment's two endpoints at least; got {L.size} values")
    floor = float(L.min())
    top = max(L[0], L[-1])
    inner = float(L[1:-1].max()) if L.size > 2 else -np.inf
    crossed = inner > top + BARRIER_RTOL * (1.0 + abs(top))
    return dict(
        floor=floor,
        height=(L[0] + L[-1] - 2 * floor) / 2,
        barrier=bool(crossed),
        barrier_size=float(inner - top) if crossed else 0.0,
    )


def cosine(g0, g1) -> float:
    """cos(g0, g1) = g0.g1 / (|g0| |g1|); nan when either norm is below GRAD_ATOL."""
    g0 = check_array(g0, "g0", (None,), finite=False)
    g1 = check_array(g1, "g1", g0.shape, finite=False)
    n0, n1 = float(np.linalg.norm(g0)), float(np.linalg.norm(g1))
    return float(np.dot(g0, g1) / (n0 * n1)) if n0 >= GRAD_ATOL and n1 >= GRAD_ATOL else float("nan")


# --- the ensemble kernel ----------------------------------------------------------------------------
