"""Spectral density and ``tr f(A)`` of a symmetric operator by stochastic Lanczos quadrature (SLQ).

``A (P, P)`` is given only as ``matvec(v) = A v`` (a Hessian-vector product; conventions of
:mod:`dnn.eigen`: vectors ``(P,)`` in the dtype/device of ``dim_or_like``, every matvec counted).
For a unit start vector ``q`` the spectral measure ``mu_q = sum_i (u_i^T q)^2 delta(lambda_i)``
(``A = sum_i lambda_i u_i u_i^T``) has ``int f d mu_q = q^T f(A) q``. ``m`` Lanczos steps from ``q``
give ``T_m = S diag(theta) S^T`` and its Gauss rule (Golub-Welsch)::

    q^T f(A) q  ~=  sum_j tau_j f(theta_j),      tau_j = S_{0j}^2,   sum_j tau_j = 1,

exact for polynomials of degree <= 2m - 1 (so ``f(x) = x`` is exact for every ``m``), and exact for
every ``f`` once the Krylov space is invariant (``m = P``, or an early breakdown ``beta_j ~ 0``).
Starts ``q_s = v_s / ||v_s||`` are seeded Rademacher (``v_s in {+-1}^P``, the default) or normalised
Gaussian ``v_s ~ N(0, I)``; ``E[P q q^T] = I`` for both, so ``P q_s^T f(A) q_s`` (for Rademacher
``= v_s^T f(A) v_s``) is an unbiased Hutchinson sample of ``tr f(A)``; the per-start value
``P sum_j tau_j f(theta_j)`` approximates it (up to the quadrature error below), and the estimate is
the mean over starts with SE = std(ddof 1) / sqrt(n_starts) (independent starts).

Discontinuous or non-smooth ``f``: the rule integrates ``f`` through its nodes only, so it converges
like the best polynomial approximation of ``f`` on ``[lambda_min, lambda_max]`` (the per-start
quadrature error is at most ``2 P E_{2m-1}(f)``, ``E_n`` the best uniform error of degree ``n``):

* ``min(x, 0)`` (kink at 0): ``E_n = O(L / n)`` (``L`` the spectral width; Bernstein: ``|x|`` on
  ``[-1, 1]`` has ``E_n ~ 0.28 / n``), so the negative mass of a spectrum crowded at 0 has a bias of
  order ``P L / m`` per start, far larger than the sum itself when ``m << P``.
* a step at ``c`` (the count above ``c``, the log above ``c``): ``E_n`` does not go to 0. By the
  Chebyshev-Markov-Stieltjes inequalities the Gauss distribution function brackets the true one:
  the per-start count is off by at most ``P max(tau_k, tau_{k+1})`` for the two nodes around ``c``
  (a node near ``c`` stands for the ``~ P tau_k`` eigenvalues of its neighbourhood). The log above
  ``c``, ``log c 1[x > c] + max(log x - log c, 0)``, has that error times ``|log c|`` plus the error
  of a kink of slope ``1 / c`` at ``c`` (``E_n = O(L / (c n))``).

Both are exact only as ``m -> P`` (or at breakdown); they are reliable when the spectrum has a gap
around the discontinuity (Ritz nodes do not settle in a gap). The smoothed density has no such
problem when ``sigma`` is large against ``L / m`` (Gaussian kernels are entire functions).

* :func:`lanczos_tridiagonal` -- ``m``-step Lanczos with full reorthogonalisation: ``(alpha, beta)``.
* :func:`slq` -- Ritz nodes and Gauss weights per start (:class:`SLQResult`).
* :func:`quadrature` / :func:`trace_function` -- per-start values / estimate and SE of ``tr f(A)``;
  :func:`slq_trace`, :func:`negative_mass`, :func:`logdet_above`, :func:`count_above`.
* :func:`density` -- the Gaussian-smoothed density (Ghorbani, Krishnan & Xiao 2019; PyHessian).
* :func:`plot_density` -- log-scale density with the top Lanczos eigenvalues marked (PNG).
* :func:`probe_metrics` -- the ``density`` probe's keys (:mod:`dnn.probes`).

Memory: ``m`` basis vectors of ``P`` entries (one start at a time).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from dnn.eigen import MatVec, _apply, _orth_against, _randn, _resolve
from valleysim.errors import UserInputError, check_int_range, check_positive, check_range
from valleysim.stats import mean_se

__all__ = [
    "DISTRIBUTIONS",
    "SLQResult",
    "Tridiagonal",
    "start_vector",
    "lanczos_tridiagonal",
    "slq",
    "quadrature",
    "trace_function",
    "slq_trace",
    "negative_mass",
    "logdet_above",
    "count_above",
    "density",
    "default_grid",
    "plot_density",
    "probe_metrics",
]

DISTRIBUTIONS = ("rademacher", "gaussian")


@dataclass
class Tridiagonal:
    """``T = tridiag(beta, alpha, beta)`` of ``k <= m`` Lanczos steps: ``Q A Q^T = T`` (``Q (k, P)``
    orthonormal rows, ``Q_0 = q``). alpha ``(k,)``, beta ``(k - 1,)`` numpy float64; ``breakdown``:
    stopped early at an invariant Krylov space (``beta_{k-1} ~ 0``: the Gauss rule is exact)."""

    alpha: np.ndarray
    beta: np.ndarray
    n_matvec: int
    breakdown: bool


@dataclass
class SLQResult:
    """Gauss rules of ``n_starts`` starts: ``nodes[s]`` ascending Ritz values ``theta (m_s,)`` and
    ``weights[s]`` ``tau (m_s,)`` (sum 1), numpy float64; ``m_s = steps`` unless start ``s`` broke
    down. ``dim`` is ``P``; ``n_matvec`` the matvecs of all starts."""

    nodes: list[np.ndarray]
    weights: list[np.ndarray]
    dim: int
    n_matvec: int
    steps: int
    seed: int
    distribution: str

    @property
    def n_starts(self) -> int:
        return len(self.nodes)

    def all_nodes(self) -> np.ndarray:
        return np.concatenate(self.nodes)

    def to_state(self) -> dict:
        """Plain dict of tensors and numbers (loadable with ``torch.load(weights_only=True)``)."""
        return {
            "nodes": [torch.as_tensor(t) for t in self.nodes],
            "weights": [torch.as_tensor(w) for w in self.weights],
            "dim": self.dim,
            "n_matvec": self.n_matvec,
            "steps": self.steps,
            "seed": self.seed,
            "distribution": self.distribution,
        }

    @classmethod
    def from_state(cls, d: dict) -> "SLQResult":
        return cls(
            nodes=[np.asarray(t, dtype=np.float64) for t in d["nodes"]],
            weights=[np.asarray(w, dtype=np.float64) for w in d["weights"]],
            **{k: d[k] for k in ("dim", "n_matvec", "steps", "seed", "distribution")},
        )


# --------------------------------------------------------------------------- Lanczos


def _check_distribution(distribution: str) -> str:
    if distribution not in DISTRIBUTIONS:
        raise UserInputError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}; got {distribution!r}")
    return distribution


def start_vector(
    P: int,
    seed: int,
    index: int = 0,
    distribution: str = "rademacher",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Unit start ``q = v / ||v||`` (``(P,)``) of start ``index``: ``v`` the row of
    :func:`dnn.eigen._randn` ``(seed, offset=index)``, or its signs (Rademacher, ``||v||^2 = P``)."""
    _check_distribution(distribution)
    g = _randn(1, P, seed, torch.float64, torch.device("cpu"), offset=index)[0]
    v = torch.where(g >= 0, 1.0, -1.0).to(torch.float64) if distribution == "rademacher" else g
    return (v / v.norm()).to(device=device, dtype=dtype)


def lanczos_tridiagonal(
    matvec: MatVec,
    dim_or_like: int | torch.Tensor,
    m: int,
    *,
    seed: int = 0,
    start_index: int = 0,
    distribution: str = "rademacher",
    start: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tridiagonal:
    """``m`` Lanczos steps from ``q`` (``start`` normalised, else :func:`start_vector`)::

        w = A q_j;  alpha_j = q_j^T w;  w -= Q^T (Q w) (twice: full reorthogonalisation)
        beta_j = ||w||;  q_{j+1} = w / beta_j

    (``alpha_j`` accumulates both Gram-Schmidt passes). Stops after ``m`` matvecs, or early
    (``breakdown``) when ``beta_j <= eps^(2/3) max_i (|alpha_i| + beta_i + beta_{i-1})``: the
    Krylov space is then invariant to working precision and ``T`` describes ``mu_q`` exactly.
    ``1 <= m <= P``. Memory: the ``(m, P)`` basis.
    """
    P, dt, dev = _resolve(dim_or_like, dtype, device)
    m = check_int_range(m, "m (Lanczos steps)", 1, P)
    if start is None:
        q = start_vector(P, seed, start_index, distribution, dt, dev)
    else:
        if not isinstance(start, torch.Tensor) or start.shape != (P,):
            raise UserInputError(f"start must be a tensor of shape ({P},)")
        q = start.detach().to(device=dev, dtype=dt)
        nq = float(q.norm())
        if not (math.isfinite(nq) and nq > 0):
            raise UserInputError("start must be finite and nonzero")
        q = q / nq
    eps = torch.finfo(dt).eps
    Q = torch.empty((m, P), dtype=dt, device=dev)
    Q[0] = q
    alpha, beta = np.zeros(m), np.zeros(max(m - 1, 0))
    scale, prev = 0.0, 0.0
    for j in range(m):
        w, C = _orth_against(_apply(matvec, Q[j])[None], Q[: j + 1])
        alpha[j] = float(C[j, 0])
        if not math.isfinite(alpha[j]):
            raise ValueError("matvec returned non-finite values")
        b = float(w.norm())
        scale = max(scale, abs(alpha[j]) + b + prev)
        if j == m - 1:
            return Tridiagonal(alpha, beta, m, breakdown=False)
        if b <= eps ** (2 / 3) * scale:
            return Tridiagonal(alpha[: j + 1], beta[:j], j + 1, breakdown=True)
        beta[j] = prev = b
        Q[j + 1] = w[0] / b
    raise AssertionError("unreachable")


def _gauss_rule(t: Tridiagonal) -> tuple[np.ndarray, np.ndarray]:
    """Golub-Welsch: ``T = S diag(theta) S^T``; nodes ``theta`` ascending, weights ``S_{0j}^2``."""
    if t.alpha.size == 1:
        return t.alpha.copy(), np.ones(1)
    theta, S = scipy.linalg.eigh_tridiagonal(t.alpha, t.beta)
    tau = S[0] ** 2
    return theta, tau / tau.sum()


def slq(
    matvec: MatVec,
    dim_or_like: int | torch.Tensor,
    *,
    n_starts: int,
    m: int,
    seed: int = 0,
    distribution: str = "rademacher",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> SLQResult:
    """Stochastic Lanczos quadrature: :func:`lanczos_tridiagonal` from starts ``0..n_starts-1`` of
    ``seed`` and the Gauss rule of each (``n_starts * m`` matvecs at most). ``1 <= m <= P``."""
    P, dt, dev = _resolve(dim_or_like, dtype, device)
    n_starts = check_int_range(n_starts, "n_starts", 1)
    m = check_int_range(m, "m (Lanczos steps)", 1, P)
    _check_distribution(distribution)
    nodes, weights, n_mv = [], [], 0
    for s in range(n_starts):
        t = lanczos_tridiagonal(matvec, P, m, seed=seed, start_index=s, distribution=distribution, dtype=dt, device=dev)
        theta, tau = _gauss_rule(t)
        nodes.append(theta)
        weights.append(tau)
        n_mv += t.n_matvec
    return SLQResult(nodes, weights, P, n_mv, m, int(seed), distribution)


# --------------------------------------------------------------------------- tr f(A)


def quadrature(result: SLQResult, f: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``(n_starts,)`` per-start values ``P sum_j tau_j f(theta_j)`` (``f`` vectorised on numpy)."""
    return np.array(
        [result.dim * float(w @ np.asarray(f(t), dtype=np.float64)) for t, w in zip(result.nodes, result.weights)]
    )


def trace_function(result: SLQResult, f: Callable[[np.ndarray], np.ndarray]) -> tuple[float, float]:
    """``(estimate, se)`` of ``tr f(A)``: mean and std(ddof 1) / sqrt(n_starts) of :func:`quadrature`
    (NaN SE for one start). Subject to the quadrature error of the module docstring for non-smooth f."""
    return mean_se(quadrature(result, f))


def slq_trace(result: SLQResult) -> tuple[float, float]:
    """``tr A`` (``f(x) = x``; exact per start for every ``m``: the Hutchinson sample ``P q^T A q``)."""
    return trace_function(result, lambda x: x)


def negative_mass(result: SLQResult) -> tuple[float, float]:
    """Sum of the negative eigenvalues, ``tr min(A, 0)`` (kink at 0: bias ``O(P L / m)`` per start)."""
    return trace_function(result, lambda x: np.minimum(x, 0.0))


def logdet_above(result: SLQResult, threshold: float) -> tuple[float, float]:
    """``sum_{lambda_i > threshold} log lambda_i`` (``threshold >= 0``): the log-determinant of the
    non-degenerate part; ``f(x) = log x`` above ``threshold``, 0 below (a step: see the module docstring)."""
    c = check_range(threshold, "threshold", 0.0, math.inf)
    return trace_function(result, lambda x: np.where(x > c, np.log(np.where(x > c, x, 1.0)), 0.0))


def count_above(result: SLQResult, threshold: float) -> tuple[float, float]:
    """Number of eigenvalues ``> threshold`` (``f = 1[x > threshold]``; per-start error at most
    ``P max(tau_k, tau_{k+1})`` of the nodes around ``threshold``)."""
    c = check_range(threshold, "threshold", -math.inf, math.inf)
    return trace_function(result, lambda x: (x > c).astype(np.float64))


# --------------------------------------------------------------------------- density


def density(result: SLQResult, grid, sigma: float) -> np.ndarray:
    """``phi(t) = (1/n_starts) sum_s sum_j tau_{s,j} N(t; theta_{s,j}, sigma^2)`` on ``grid (G,)``.

    Integrates to 1 over the real line (``P phi`` is the smoothed eigenvalue count per unit of ``t``);
    an unbiased estimate of ``(1/P) sum_i N(t; lambda_i, sigma^2)`` up to the quadrature error of the
    Gaussian kernel (small once ``sigma >> L / m``). Returns ``(G,)`` float64.
    """
    sigma = check_positive(sigma, "sigma")
    t = np.asarray(grid, dtype=np.float64)
    if t.ndim != 1 or t.size == 0 or not np.all(np.isfinite(t)):
        raise UserInputError(f"grid must be a non-empty 1-D array of finite numbers; got shape {t.shape}")
    out = np.zeros(t.size)
    for theta, tau in zip(result.nodes, result.weights):
        z = (t[:, None] - theta[None, :]) / sigma
        out += np.exp(-0.5 * z * z) @ tau
    return out / (result.n_starts * sigma * math.sqrt(2 * math.pi))


def default_grid(result: SLQResult, n: int = 2000, rel_sigma: float = 1e-2) -> tuple[np.ndarray, float]:
    """``(grid (n,), sigma)``: ``sigma = rel_sigma * (theta_max - theta_min)`` (``rel_sigma * max(|theta|, 1)``
    when all nodes coincide), the grid spanning the nodes +- 5 sigma."""
    n = check_int_range(n, "n (grid points)", 2)
    rel_sigma = check_positive(rel_sigma, "rel_sigma")
    th = result.all_nodes()
    lo, hi = float(th.min()), float(th.max())
    sigma = rel_sigma * (hi - lo) if hi > lo else rel_sigma * max(abs(hi), 1.0)
    return np.linspace(lo - 5 * sigma, hi + 5 * sigma, n), sigma


def plot_density(
    result: SLQResult,
    path,
    top_eigenvalues=None,
    *,
    grid=None,
    sigma: float | None = None,
    floor: float = 1e-8,
    title: str | None = None,
) -> Path:
    """PNG at ``path``: ``phi`` (log scale, clipped below at ``floor * max phi``) with the given top
    (Lanczos) eigenvalues as vertical lines. ``grid``/``sigma`` default to :func:`default_grid`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = check_range(floor, "floor", 0.0, 1.0)
    g0, s0 = default_grid(result)
    grid = g0 if grid is None else grid
    sigma = s0 if sigma is None else sigma
    phi = density(result, grid, sigma)
    lo = max(float(phi.max()) * floor, np.finfo(float).tiny)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), constrained_layout=True)
    ax.semilogy(np.asarray(grid, float), np.maximum(phi, lo), lw=1, label=f"SLQ density (sigma = {sigma:.3g})")
    if top_eigenvalues is not None:
        for i, lam in enumerate(np.asarray(top_eigenvalues, dtype=float).ravel()):
            ax.axvline(lam, color="C3", ls="--", lw=0.8, label="top Lanczos eigenvalues" if i == 0 else None)
    ax.set(
        xlabel="eigenvalue",
        ylabel="spectral density phi (integrates to 1)",
        ylim=(lo, 2 * float(phi.max())),
        title=title or f"P = {result.dim}, {result.n_starts} starts x {result.steps} Lanczos steps",
    )
    ax.legend(fontsize=7)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- probe


def probe_metrics(result: SLQResult, rel_threshold: float) -> dict:
    """The ``density`` probe's keys: slq_trace, slq_neg_mass, slq_logdet, slq_n_above (with SEs),
    slq_threshold and density_n_hvp. Threshold ``c = rel_threshold * max(theta_max, 0)``, ``theta_max``
    the largest Ritz value of all starts (a lower bound on lambda_max; extreme Ritz values converge first);
    ``c`` is shared by the starts, so their SE ignores its (small) sampling variation."""
    rel = check_range(rel_threshold, "rel_threshold", 0.0, math.inf)
    c = rel * max(float(result.all_nodes().max()), 0.0)
    out = {}
    for key, (est, se) in (
        ("slq_trace", slq_trace(result)),
        ("slq_neg_mass", negative_mass(result)),
        ("slq_logdet", logdet_above(result, c)),
        ("slq_n_above", count_above(result, c)),
    ):
        out[key], out[f"{key}_se"] = float(est), float(se)
    out["slq_threshold"] = c
    out["density_n_hvp"] = int(result.n_matvec)
    return out
