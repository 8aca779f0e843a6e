"""Sharpest directions and the optimisers' step directions (R8); numba-free, shared with ``dnn``."""

from __future__ import annotations

import numpy as np

from valleysim.errors import UserInputError

METHODS = ("sgd", "sgd_top", "sgd_no_top", "sgd_constant_top", "nsgd")
ALPHAS = (0.25, 0.5, 1.0, 2.0, 4.0)  # step multiples alpha of the loss change along e_1


# --- eigenvectors and step directions ----------------------------------------------------------------
def top_eigen(H, K: int):
    """Top-K eigenpairs of the symmetric H (..., D, D) in the project's convention (``dnn.eigen.Eigenpairs``):
    values (..., K) algebraically largest first, vectors (..., K, D) with row k the k-th eigenvector."""
    w, V = np.linalg.eigh(H)  # ascending, eigenvectors in columns
    return w[..., ::-1][..., :K], np.swapaxes(V[..., ::-1][..., :K], -1, -2)


def lambda_max(H) -> np.ndarray:
    """lambda_1 (...,): the algebraically largest eigenvalue of H (as ``lambda_max`` in ``dnn``)."""
    return top_eigen(H, 1)[0][..., 0]


def _project(E, g):
    """E^T E g for E (..., K, D) with orthonormal rows, g (..., D)."""
    return np.einsum("...kd,...k->...d", E, np.einsum("...kd,...d->...k", E, g))


def step_direction(method: str, g, E=None, gamma: float = 1.0):
    """The direction d (theta <- theta - eta d) of ``method`` given g and the eigenvectors it uses."""
    if method == "sgd" or (method == "nsgd" and gamma == 1.0):
        return np.array(g, dtype=np.float64, copy=True)
    p = _project(E, g)
    if method in ("sgd_top", "sgd_constant_top"):
        return p
    if method == "sgd_no_top":
        return g - p
    if method == "nsgd":
        return g - (1.0 - gamma) * p
    raise UserInputError(f"method must be one of {', '.join(METHODS)}; got {method!r}")


def nsgd_direction(g, E, gamma: float):
    """NSGD's direction g - (1 - gamma) E^T E g."""
    return step_direction("nsgd", g, E, gamma)
