"""The exact second-moment map of SGD on per-example quadratics.  [proofs.sgd_second_moment]

With u = w - w* and Sigma_t = E[u_t u_t^T], one step without or with
replacement maps

    T(eta) Sigma = Sigma - eta L(Sigma) + eta^2 Q(Sigma)
    L(Sigma) = H Sigma + Sigma H
    Q(Sigma) = (1 - c) H Sigma H + c (1/N) sum_i H_i Sigma H_i

(c = variance_factor(S, N, scheme)). T(eta) is a positive map; mean-square
stability is rho(T(eta)) <= 1, the stable set is [0, eta*], and
eta* = 1 / rho(L^{-1} Q). Everything works in the non-flat subspace
(``PerExampleQuadratic.reduced``), of dimension r.

Two implementations: ``MomentMap`` (matrix-free, O(r^4) or O(N r^3) per
application, scipy's Arnoldi for rho) and ``dense_transition`` /
``eta_star_dense`` (explicit Kronecker matrices, the reference for small r).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigs

from valleysim.errors import UserInputError, check_int_range, check_positive, check_range
from valleysim.memory import F64, check_fits
from valleysim.quadratic.landscape import PerExampleQuadratic, check_landscape
from valleysim.theory import necessary_eta_bounds, variance_factor

_DENSE_TENSOR_MAX_R = 80  # keep the (r^2, r^2) moment matrix under ~330 MB
_ARNOLDI_MIN_SIZE = 64  # below this, rho comes from a dense eigenvalue solve


def moment_map_bytes(kind: str, N: int, D: int) -> float:
    """Peak memory of a MomentMap and its Perron solves, in bytes: ~30 (D, D) matrices (means, eigenvectors,
    ARPACK's Krylov basis of D^2-vectors) and, for dense D <= 80, the (D^2, D^2) moment matrix."""
    dense4 = float(D) ** 4 if kind == "dense" and D <= _DENSE_TENSOR_MAX_R else 0.0
    return (30.0 * D * D + dense4) * F64


class MomentMap:
    """Matrix-free second-moment operators of one landscape (independent of eta and S).

    Methods take and return (r, r) matrices; ``q`` is reduced on construction. A landscape outside
    [1 / SCALE_LIMIT, SCALE_LIMIT] is held at unit scale (``PerExampleQuadratic.unit_scaled``, exact):
    ``self.q``, H, h, V and the matrix-level maps (L, Q, N, the congruence) are then those of the H_i
    over ``self.factor``; everything indexed by eta (transition, spectral_radius, mean_dist2, eta_star)
    and lambda_max, nonuniformity are in the units of the landscape given.
    """

    def __init__(self, q: PerExampleQuadratic):
        check_landscape(q)
        check_fits(moment_map_bytes(q.kind, q.N, q.D), f"the second-moment map of a {q.kind} landscape with D = {q.D}")
        unit, self.factor = q.unit_scaled()
        self.q = unit.reduced()
        self.r = self.q.D
        self.H = self.q.mean_hessian()
        self.h, self.V = np.linalg.eigh(self.H)
        self.lambda_max = float(self.h[-1]) * self.factor if self.r else 0.0
        kind, data = self.q.kind, self.q.data
        if kind == "diagonal":
            self._m2 = data.T @ data / self.q.N
        elif kind == "dense" and self.r <= _DENSE_TENSOR_MAX_R:
            flat = data.reshape(self.q.N, -1)
            g4 = (flat.T @ flat / self.q.N).reshape((self.r,) * 4)  # E[H_jk H_lm]
            self._m4 = np.ascontiguousarray(g4.transpose(0, 3, 1, 2).reshape(self.r**2, self.r**2))

    def mean_congruence(self, sigma: np.ndarray) -> np.ndarray:
        """(1/N) sum_i H_i Sigma H_i."""
        kind, data, N = self.q.kind, self.q.data, self.q.N
        if kind == "diagonal":
            return self._m2 * sigma
        if kind == "rank_one":
            proj = np.einsum("na,ab,nb->n", data, sigma, data)
            return (data * proj[:, None]).T @ data / N
        if hasattr(self, "_m4"):
            return (self._m4 @ sigma.reshape(-1)).reshape(self.r, self.r)
        out = np.zeros_like(sigma)
        for chunk in np.array_split(data, max(1, N // 256)):
            out += np.einsum("nab,bc,ncd->ad", chunk, sigma, chunk, optimize=True)
        return out / N

    def noise(self, sigma: np.ndarray) -> np.ndarray:
        """N(Sigma) = (1/N) sum (H_i - H) Sigma (H_i - H) = mean_congruence - H Sigma H."""
        return self.mean_congruence(sigma) - self.H @ sigma @ self.H

    def quadratic_part(self, sigma: np.ndarray, c: float) -> np.ndarray:
        """Q(Sigma) = H Sigma H + c N(Sigma)."""
        return self.H @ sigma @ self.H + c * self.noise(sigma)

    def transition(self, sigma: np.ndarray, eta: float, c: float) -> np.ndarray:
        """T(eta) Sigma: the expected u u^T after one step from second moment Sigma."""
        eta = eta * self.factor
        return sigma - eta * (self.H @ sigma + sigma @ self.H) + eta**2 * self.quadratic_part(sigma, c)

    def mean_dist2(self, eta: float, c: float, steps) -> np.ndarray:
        """E||u_t||^2 = tr(T(eta)^t I) at the given increasing steps t, for u_0 ~ N(0, P)."""
        eta, c = self._checked(eta, c)
        sigma, t, out = np.eye(self.r), 0, []
        for target in steps:
            target = check_int_range(target, "steps (increasing)", t)
            for _ in range(target - t):
                sigma = self.transition(sigma, eta, c)
            t = int(target)
            out.append(np.trace(sigma))
        return np.array(out)

    def _checked(self, eta: float, c: float) -> tuple[float, float]:
        """(eta, c) checked: eta > 0, c in [0, 1]."""
        return check_positive(eta, "eta"), _check_c(c)

    def lyapunov_solve(self, y: np.ndarray) -> np.ndarray:
        """L^{-1}(Y): the Sigma with H Sigma + Sigma H = Y (H > 0 on the reduced space)."""
        yt = self.V.T @ y @ self.V
        return self.V @ (yt / (self.h[:, None] + self.h[None, :])) @ self.V.T

    def nonuniformity(self) -> float:
        """s = sqrt(rho(N)): the spread of per-example curvature seen by the noise term."""
        return float(np.sqrt(max(_perron(self.noise, self.r), 0.0))) * self.factor

    def spectral_radius(self, eta: float, c: float) -> float:
        """rho(T(eta)): per-step growth factor of E||u||^2 in the long run."""
        eta, c = self._checked(eta, c)
        return _perron(lambda s: self.transition(s, eta, c), self.r)

    def eta_star(self, c: float) -> float:
        """Exact mean-square critical learning rate 1 / rho(L^{-1} Q); 0 if H is singular here (a direction
        with noise and no mean curvature). A tiny smallest curvature is no reason for 0: L^{-1} is then
        ill-conditioned, but its Perron root still gives eta* (checked against ``eta_star_dense`` at
        condition numbers 1e16)."""
        c = _check_c(c)
        if self.r == 0:
            return np.inf
        if self.h[0] <= 0.0:
            return 0.0
        mu = _perron(lambda s: self.lyapunov_solve(self.quadratic_part(s, c)), self.r)
        if not np.isfinite(mu):
            return 0.0
        return 1.0 / mu / self.factor


def _check_c(c: float) -> float:
    """The variance factor c of a mini-batch mean, in [0, 1] (``theory.variance_factor``)."""
    return check_range(c, "variance factor c", 0, 1)


def _perron(apply, r: int) -> float:
    """Spectral radius of a positive linear map on (r, r) matrices (its Perron root)."""
    n = r * r
    if n == 0:
        return 0.0
    if n < _ARNOLDI_MIN_SIZE:
        basis = np.eye(n).reshape(n, r, r)
        mat = np.stack([apply(b).reshape(-1) for b in basis], axis=1)
        # rho is homogeneous: solve at unit scale (LAPACK's geev here returns eigenvalues clamped at
        # ~1.49e138 for larger matrices instead of scaling them back)
        scale = float(np.abs(mat).max())
        if scale == 0 or not np.isfinite(scale):
            return scale
        return float(np.max(np.abs(np.linalg.eigvals(mat / scale)))) * scale
    op = LinearOperator((n, n), matvec=lambda v: apply(v.reshape(r, r)).reshape(-1), dtype=np.float64)
    v0 = np.eye(r).reshape(-1)  # inside the PSD cone, not orthogonal to the Perron vector
    try:
        vals = eigs(op, k=1, which="LM", v0=v0, tol=1e-12, maxiter=20 * n, return_eigenvectors=False)
    except ArpackNoConvergence as err:  # fall back to the best Ritz value
        vals = err.eigenvalues
        if len(vals) == 0:
            raise
    return float(np.max(np.abs(vals)))


def dense_transition(q: PerExampleQuadratic, eta: float, c: float) -> np.ndarray:
    """Reference: T(eta) as an explicit (r^2, r^2) matrix built from Kronecker products."""
    q, eta = q.unit_problem(eta)
    lin, quad = _dense_parts(q, c)
    return np.eye(lin.shape[0]) - eta * lin + eta**2 * quad


def eta_star_dense(q: PerExampleQuadratic, c: float) -> float:
    """Reference: eta* = 1 / (largest real generalized eigenvalue mu of Q x = mu L x)."""
    c = _check_c(c)
    q, factor = check_landscape(q).unit_scaled()
    lin, quad = _dense_parts(q, c)
    mu = scipy.linalg.eigvals(quad, lin)
    finite = mu[np.isfinite(mu) & (np.abs(mu.imag) <= 1e-9 * np.abs(mu).max())].real
    return 1.0 / finite.max() / factor


def _dense_parts(q: PerExampleQuadratic, c: float) -> tuple[np.ndarray, np.ndarray]:
    red = q.reduced()
    Hs = red.hessians()
    H = Hs.mean(axis=0)
    eye = np.eye(red.D)
    lin = np.kron(eye, H) + np.kron(H, eye)
    mean_kron = np.einsum("nab,ncd->acbd", Hs, Hs).reshape(red.D**2, red.D**2) / red.N
    quad = (1.0 - c) * np.kron(H, H) + c * mean_kron
    return lin, quad


def mean_square(
    q: PerExampleQuadratic, eta: float, S: int, scheme: str = "without_replacement", moments: MomentMap | None = None
) -> dict:
    """Mean-square stability at (eta, S) for one-step schemes.

    Returns eta_star, spectral_radius, mean_square_stable, lambda_max,
    nonuniformity and the necessary bounds. For 'reshuffle' see
    ``valleysim.quadratic.reshuffle``.
    """
    eta = check_landscape(q).check_eta(eta)
    if scheme == "reshuffle":
        raise UserInputError(
            "mean_square handles one-step schemes; use valleysim.quadratic.reshuffle for scheme='reshuffle'"
        )
    c = variance_factor(S, q.N, scheme)
    m = moments or MomentMap(q)
    rho = m.spectral_radius(eta, c)
    s = m.nonuniformity()
    sharp, noise = necessary_eta_bounds(m.lambda_max, s, c)
    es = m.eta_star(c)
    return {
        "eta_star": es,
        "spectral_radius": rho,
        "mean_square_stable": mean_square_verdict(eta, rho, es),
        "lambda_max": m.lambda_max,
        "nonuniformity": s,
        "variance_factor": c,
        "sharpness_bound": sharp,
        "noise_bound": noise,
    }


def mean_square_verdict(eta: float, rho: float, eta_star: float) -> bool:
    """Mean-square stability of a one-step scheme from rho(T(eta)) <= 1 (to 1e-12); where rho is within 1e-9
    of 1 (too close to decide: a curvature of 1e-13 moves it by that little), from eta <= eta*, the exact
    criterion (the stable set is [0, eta*]), so that the two are never reported in contradiction."""
    if abs(rho - 1.0) <= 1e-9:
        return bool(eta <= eta_star)
    return bool(rho <= 1.0 + 1e-12)
