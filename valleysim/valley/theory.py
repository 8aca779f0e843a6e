"""Closed forms for degenerate valleys L = 1/2 sum_i theta_i^2 lambda_i(theta_hat) (R3, R4, R5).

Derived in ``proofs.degenerate_valley``; ``tests/test_proofs_valley.py``
lambdifies the sympy expressions and compares them with these functions.
Every function broadcasts over leading batch axes (``...``) of its arguments.

Notation (shared with ``proofs/`` and ``valleysim.valley``): n non-degenerate
coordinates theta, m degenerate ones theta_hat; ``lam`` (n,) the curvatures
lambda_i(theta_hat); ``grad_lam`` (n, m) their gradients in theta_hat;
``hess_lam`` (n, m, m) their Hessians; ``C`` (n, n) the covariance of the
gradient noise in the theta block, ``C_hat`` (m, m) in the theta_hat block;
``W`` (n, n) the stationary second moments <theta_i theta_j> at frozen
theta_hat. SGD noise aligned with the Hessian is C = c diag(lam) with
c = ``valleysim.theory.variance_factor(S, M)``.
"""

from __future__ import annotations

import numpy as np

from valleysim.errors import UserInputError


def stationary_second_moments(lam, C, eta):
    """Exact W at frozen theta_hat: W = A W A + eta^2 C, A = I - eta diag(lam).

    The discrete Lyapunov equation of theta_{t+1} = (I - eta diag lam) theta_t
    - eta xi_t, Cov xi = C, solved entrywise:
    W_ij = eta C_ij / (lam_i + lam_j - eta lam_i lam_j). Needs
    0 < eta lam_i < 2 for every i (otherwise no stationary state exists).
    Shapes: lam (..., n), C (..., n, n) -> W (..., n, n).
    """
    lam = np.asarray(lam, dtype=float)
    C = np.asarray(C, dtype=float)
    if np.any(lam <= 0) or np.any(eta * lam >= 2):
        raise UserInputError(f"no stationary state: need 0 < eta * lambda_i < 2, got eta * lambda = {eta * lam}")
    li, lj = lam[..., :, None], lam[..., None, :]
    return eta * C / (li + lj - eta * li * lj)


def stationary_second_moments_leading(lam, C, eta):
    """Leading order in eta of ``stationary_second_moments``: W_ij = eta C_ij / (lam_i + lam_j)."""
    lam = np.asarray(lam, dtype=float)
    return eta * np.asarray(C, dtype=float) / (lam[..., :, None] + lam[..., None, :])


def spectral_drift(eta, W_diag, grad_lam, grad_f, hess_f=None, C_hat=None):
    """Expected one-step change of a spectral function f(lambda(theta_hat)) at stationarity.

    E[f_{t+1} - f_t] = -(eta / 2) sum_j W_jj grad f . grad lambda_j
                       + (eta^2 / 2) tr(C_hat hess f)          (noise in theta_hat)
    to leading order: the theta_hat step is -eta (1/2 sum_j theta_j^2 grad lambda_j
    + xi_hat). ``grad_f`` (m,) and ``hess_f`` (m, m) are derivatives of f in theta_hat.
    Theorem 1 is f = trace with W_jj = eta c / 2; Theorem 2 is W_jj = eta f_j / 2.
    """
    drift = -0.5 * eta * np.einsum("...j,...jk,...k->...", W_diag, grad_lam, grad_f)
    if C_hat is not None and hess_f is not None:
        drift = drift + 0.5 * eta**2 * np.einsum("...kl,...kl->...", C_hat, hess_f)
    return drift


def trace_drift_leading(eta, c, grad_lam):
    """Theorem 1, corrected: E[T_{t+1} - T_t] = -(eta^2 c / 4) |sum_i grad lambda_i|^2 + O(eta^3).

    SGD noise C = c diag(lam); the paper prints eta^2 / (2 S) (1 - S/M), a factor 2
    too large (``proofs/ERRATA.md``).
    """
    g = np.sum(np.asarray(grad_lam, dtype=float), axis=-2)
    return -0.25 * eta**2 * c * np.sum(g * g, axis=-1)


def designed_drift_leading(eta, scale, df_dlam, grad_lam):
    """Theorem 2: noise C_ii = scale lam_i df/dlam_i gives E[df] = -(eta^2 scale / 4) |grad f|^2.

    grad f = sum_i (df/dlam_i) grad lambda_i; ``df_dlam`` (n,), ``grad_lam`` (n, m).
    """
    g = np.einsum("...i,...ik->...k", df_dlam, grad_lam)
    return -0.25 * eta**2 * scale * np.sum(g * g, axis=-1)


def schur_blocks(lam, grad_lam, hess_lam):
    """A_i = hess lambda_i / 2 - grad lambda_i grad lambda_i^T / lambda_i, shape (n, m, m).

    The small (theta_hat) eigenvalues of the full Hessian at theta are those of
    the Schur complement sum_i theta_i^2 A_i + O(theta^4) (R5).
    """
    lam = np.asarray(lam, dtype=float)
    g = np.asarray(grad_lam, dtype=float)
    return 0.5 * np.asarray(hess_lam, dtype=float) - g[..., :, None] * g[..., None, :] / lam[..., None, None]


def negative_eigenvalue_slope(lam, grad_lam, hess_lam, W_diag):
    """R5: <sum of negative Hessian eigenvalues> / <L - L*> at equilibrium, leading order.

    Exact to leading order when every A_i (``schur_blocks``) is negative
    semi-definite, so that the small block sum_i theta_i^2 A_i has no positive
    eigenvalue: slope = 2 sum_i W_ii tr A_i / sum_i W_ii lam_i. For SGD noise
    (W_ii equal) it is 2 sum_i tr A_i / T, independent of eta and S.
    Returns (slope (...), all_nsd (...) bool).
    """
    A = schur_blocks(lam, grad_lam, hess_lam)
    W = np.asarray(W_diag, dtype=float)
    tol = 1e-12 * np.maximum(1.0, np.abs(A).max(axis=(-1, -2)))[..., None]  # (..., n, 1)
    all_nsd = np.all(np.linalg.eigvalsh(A) <= tol, axis=(-2, -1))
    slope = 2.0 * np.sum(W * np.trace(A, axis1=-2, axis2=-1), axis=-1) / np.sum(W * lam, axis=-1)
    return slope, all_nsd


def manifold_drift(eta, H, dH, C, n):
    """Coordinate-free drift along a curved minimum manifold (valley form is a special case).

    At a point of the manifold with Hessian H (..., D, D), its derivatives
    dH[a, b, c] = d H_ab / d x_c (..., D, D, D) and gradient-noise covariance C
    (..., D, D): the normal space is spanned by the eigenvectors V_N of the n
    largest eigenvalues lam_N; the fluctuations there have the stationary
    covariance W = V_N W_N V_N^T, W_N the solution of the discrete Lyapunov
    equation with C_N = V_N^T C V_N (``stationary_second_moments``), and the
    expected step along the manifold is

        dx = -(eta / 2) P_T grad_x tr(H(x) W)|_W fixed,   P_T = I - V_N V_N^T.

    In valley coordinates (H = diag(lam) on theta, flat manifold) this is the
    theta_hat step -(eta / 2) sum_j W_jj grad lambda_j of ``spectral_drift``.
    Returns (dx (..., D), W (..., D, D)).
    """
    lam, V = np.linalg.eigh(H)
    lam_N, V_N = lam[..., -n:], V[..., :, -n:]
    C_N = np.einsum("...ai,...ab,...bj->...ij", V_N, C, V_N)
    W_N = stationary_second_moments(lam_N, C_N, eta)
    W = np.einsum("...ai,...ij,...bj->...ab", V_N, W_N, V_N)
    force = np.einsum("...ab,...abc->...c", W, dH)
    P_T = np.eye(H.shape[-1]) - np.einsum("...ai,...bi->...ab", V_N, V_N)
    return -0.5 * eta * np.einsum("...cd,...d->...c", P_T, force), W


def minibatch_noise_response(g0, J, T):
    """E over theta of the per-example gradient covariance, to first order in W = E[theta theta^T].

    Per-example gradients expanded in theta at the floor point,
    g_k(theta) = g0_k + J_k theta + 1/2 T_k[theta, theta]; with E theta = 0 and
    symmetric theta,

        E_theta Cov_k g_k(theta) = Cov_k(g0) + mean_k J_k W J_k^T - Jbar W Jbar^T
                                   + 1/2 (Cov_k(g0, T_k:W) + transpose) + O(W^2)
                                 = C0 + sum_ij W_ij K_ij.

    True mini-batch noise (c times this) is multiplicative: the K terms are a
    relative O(eta) correction. Derived in ``proofs.degenerate_valley`` (last step).
    Shapes: g0 (..., M, D), J (..., M, D, n), T (..., M, D, n, n) ->
    C0 (..., D, D), K (..., n, n, D, D).
    """
    M = g0.shape[-2]
    dg = g0 - g0.mean(axis=-2, keepdims=True)
    C0 = np.einsum("...ka,...kb->...ab", dg, dg) / M
    Jbar = J.mean(axis=-3)
    P = np.einsum("...kai,...kbj->...ijab", J, J) / M - np.einsum("...ai,...bj->...ijab", Jbar, Jbar)
    Q = np.einsum("...ka,...kbij->...ijab", dg, T) / M  # Cov_k(g0, T_k[:, i, j])
    return C0, P + 0.5 * (Q + np.swapaxes(Q, -1, -2))


def stationary_second_moments_minibatch(eta, c, C0, K, lam):
    """W = A W A + eta^2 c (C0 + sum_ij W_ij K_ij)_theta, A = I - eta diag(lam): the Lyapunov
    equation with multiplicative mini-batch noise (``minibatch_noise_response``), solved as a
    linear system in vec W. Exact in eta up to the O(W^2) terms of the noise.

    Shapes: C0 (..., D, D), K (..., n, n, D, D), lam (..., n) -> W (..., n, n).
    """
    n = lam.shape[-1]
    batch = lam.shape[:-1]
    a = 1.0 - eta * lam
    # vec index (i, j) -> (a, b): (W - A W A)_ab = (1 - a_a a_b) W_ab on the diagonal of the operator
    diag = (1.0 - a[..., :, None] * a[..., None, :]).reshape(batch + (n * n,))
    Kt = K[..., :n, :n].reshape(batch + (n * n, n * n))  # [(i, j), (a, b)]
    Lmat = np.eye(n * n) * diag[..., None, :] - eta**2 * c * np.swapaxes(Kt, -1, -2)
    rhs = eta**2 * c * C0[..., :n, :n].reshape(batch + (n * n, 1))
    return np.linalg.solve(Lmat, rhs)[..., 0].reshape(batch + (n, n))
