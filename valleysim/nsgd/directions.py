"""Sharpest directions and the optimisers' step directions (R8); numba-free, shared with ``dnn``."""

from __future__ import annotations

import numpy as np

from valleysim.errors import UserInputError, check_array, check_int_range, check_positive

METHODS = ("sgd", "sgd_top", "sgd_no_top", "sgd_constant_top", "nsgd")
ALPHAS = (0.25, 0.5, 1.0, 2.0, 4.0)  # step multiples alpha of the loss change along e_1


# --- eigenvectors and step directions ----------------------------------------------------------------
def top_eigen(H, K: int):
    """Top-K eigenpairs of the symmetric H (..., D, D) in the project's convention (``dnn.eigen.Eigenpairs``):
    values (..., K) algebraically largest first, vectors (..., K, D) with row k the k-th eigenvector."""
    H = check_array(H, "H")
    if H.ndim < 2 or H.shape[-1] != H.shape[-2]:
        raise UserInputError(f"H must be square matrices (..., D, D); got shape {H.shape}")
    check_int_range(K, "K (top directions)", 1, H.shape[-1])
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
    if method not in METHODS:
        raise UserInputError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    g, gamma = check_array(g, "g", finite=False), check_positive(gamma, "gamma")
    if method == "sgd" or (method == "nsgd" and gamma == 1.0):
        return g.copy()
    E = check_array(E, f"E (the top eigenvectors (..., K, D) that {method} uses)", finite=False)
    if E.ndim < 2 or E.shape[-1] != g.shape[-1]:
        raise UserInputError(f"E must have shape (..., K, {g.shape[-1]}) (rows: eigenvectors); got {E.shape}")
    p = _project(E, g)
    if method in ("sgd_top", "sgd_constant_top"):
        return p
    if method == "sgd_no_top":
        return g - p
    return g - (1.0 - gamma) * p  # nsgd


def nsgd_direction(g, E, gamma: float):
    """NSGD's direction g - (1 - gamma) E^T E g."""
    return step_direction("nsgd", g, E, gamma)


# --- the loss change along e_1 of a quadratic model (proofs.nsgd: sample_loss_change, sample_alpha_cross) ---
def _moments(g_full, g_batch):
    g = check_array(g_batch, "g_batch", finite=False).ravel()
    if g.size == 0:
        raise UserInputError("g_batch needs at least one mini-batch projection")
    return float(check_array(g_full, "g_full", (), finite=False)), float(np.mean(g)), float(np.mean(g * g))


def loss_change_quadratic(alphas, eta: float, lam: float, g_full: float, g_batch) -> np.ndarray:
    """The mean over mini-batches b of L(theta - alpha eta g_b e_1) - L(theta) if L were quadratic along e_1
    with curvature lam: -alpha eta G m1 + lam alpha^2 eta^2 m2 / 2, G = <grad L, e_1>, g_b = <g_B, e_1>
    (g_batch (B,)), m1 = mean g_b, m2 = mean g_b^2. Returns (len(alphas),)."""
    G, m1, m2 = _moments(g_full, g_batch)
    a = np.asarray(alphas, dtype=np.float64)
    return -a * eta * G * m1 + 0.5 * lam * a**2 * eta**2 * m2


def alpha_cross_quadratic(eta: float, lam: float, g_full: float, g_batch) -> float:
    """The step multiple where that change turns from negative to positive, 2 G m1 / (eta lam m2)
    (= 2 G^2 / (eta lam (G^2 + s^2)) when m1 = G and m2 = G^2 + s^2); nan when lam <= 0 (no curvature to
    turn it) or m2 = 0. A value <= 0 means the change is positive for every alpha > 0."""
    G, m1, m2 = _moments(g_full, g_batch)
    if not (lam > 0 and m2 > 0):
        return float("nan")
    return 2.0 * G * m1 / (eta * lam * m2)
