"""Break-even dynamics (R2): progressive sharpening that SGD stops at the mean-square stability edge.

The landscape
-------------
Parameters theta = (x_1 .. x_k, z): k sharp coordinates x_j and one slow
coordinate z that training drives forward. Per-example loss, i = 1..N,

    l_i(x, z) = sum_j 1/2 h_ij(z) (x_j - b_ij)^2 - beta z,
    h_ij(z)   = a_j(z) f_ij,   a_j(z) = a0_j exp(r_j z),   f_ij = 1 + sigma xi_ij,

with xi_ij fixed draws standardised exactly to mean 0 and population variance 1
(per direction), so along x_j the mean per-example curvature is a_j(z) and the
population variance of the curvatures is s_j^2 = sigma^2 a_j(z)^2 (spread
proportional to the mean). The offsets b_ij (scale ``offset``) are projected so
that sum_i f_ij b_ij = 0: the full-batch minimum along x is x = 0 for every z,
but the per-example gradients -h_ij b_ij differ there, so mini-batch gradient
noise exists at the minimum. The drive -beta z makes the loss fall as z grows,
and with it every curvature a_j grows (progressive sharpening; r_1 the fastest).

Why it self-stabilises (assumptions 3-4 of the paper emerge, none is imposed):
the full-batch z-gradient is

    dL/dz = sum_j 1/2 r_j a_j(z) (x_j^2 + B_j) - beta,   B_j = (1/N) sum_i f_ij b_ij^2,

so while SGD is stable along x, <x^2> stays at its small noise floor and z grows
(lambda_H^1 = max_j a_j rises); once SGD becomes mean-square unstable along x,
<x^2> grows geometrically until 1/2 r a x^2 exceeds beta and pushes z back,
lowering the curvature. At frozen z the x_j-recursion is (R1)

    x' = (1 - eta h_B) x + eta m_B,    h_B, m_B batch means of h_ij, h_ij b_ij,
    E[x'^2] = q E[x^2] + eta^2 c V,    q = (1 - eta a)^2 + eta^2 c sigma^2 a^2,  V = (1/N) sum_i h_ij^2 b_ij^2,

with c = c(S, N) (``theory.variance_factor``); from x_0 = 0 exactly
E[x_t^2] = eta^2 c V (1 - q^t) / (1 - q) (``frozen_second_moment``). q = 1 at the
break-even curvature

    lambda*(eta, S) = 2 / (eta (1 + c sigma^2))

(``predicted_break_even``; equal to ``theory.break_even_curvature`` with the
landscape's own alpha = s^2 / lambda = sigma^2 lambda*, and 2 / eta at S = N).

The Hessian and the gradient covariance
---------------------------------------
H_xjxj = a_j, H_xjz = r_j a_j x_j, H_zz = sum_j 1/2 r_j^2 a_j (x_j^2 + B_j): the
x-block is diag(a_j) exactly, so lambda_H^1 of the x-block is max_j a_j(z) (the
"curvature" recorded every step); the true top eigenvalue of the full (k+1)-square
Hessian and the top eigenvalue of K = (1/N) sum_i (g_i - g)(g_i - g)^T are computed
at the recorded states (``hessian``, ``gradient_covariance``). Near x = 0 the
variance of the per-example gradients along x_j is a_j^2 mean(f^2 b^2): lambda_K
grows like lambda_H^2 here (the paper's alpha is not constant in this toy).

The integrator
--------------
``simulate`` runs R trajectories in a numba kernel, one trajectory per prange
iteration with its own RNG stream ``rng.seed_state(seed, r)`` (results do not
depend on the thread count). A step draws a uniform S-subset without
replacement (partial Fisher-Yates on a per-trajectory permutation; S = N is
plain GD), computes the batch gradient in x and z and updates both. A
trajectory whose |x_j| passes ``DIVERGE_AT`` (or that turns non-finite) stops:
divergence is a result, with its step. ``frozen=True`` keeps z fixed (the R1
check at fixed curvature).

Break-even is reached, in a trajectory, when the curvature stops growing and
turns back: the first record at which max_j a_j falls ``TURN`` (1%) below its
running maximum (``growth_stops``; while SGD is stable z only grows, so this is
the push-back of the instability, read off the dynamics, not off lambda*). A
trajectory that turns in the first half of the run has a plateau in the last
half; only those count as having reached break-even, and the break-even
quantities average only them. When none has, the summary says so
(``reached`` false, the break-even fields None, ``note`` with the steps the
drift alone would need).

Measured per trajectory: ``max_curvature`` (max over every step of max_j a_j),
and, where break-even was reached, ``curvature_at_break_even`` (the median of
max_j a_j over the records of the last half of the run: the curvature where
growth stops; a median because rare catapults -- bursts of x that knock z far
back -- pull the mean down, reported as ``mean_late_curvature``, every step of
the last half), ``steps_to_break_even`` (first recorded step at which max_j a_j
reaches that level); at the recorded steps the full-Hessian top eigenvalue,
lambda_K^1, Tr(H), Tr(K), loss.
Next to lambda* the summary gives ``almost_sure_break_even``, where the
Lyapunov exponent of the frozen x-recursion crosses 0 (above lambda* for S < N):
the self-stabilised curvature follows the mean-square edge, because what pushes
z back is the time average of x^2 along a trajectory, which diverges at the
mean-square edge (the stationary law of x gets a heavy tail, infinite variance)
while the typical trajectory is still contracting.
``max_lambda_K`` is set by the largest catapult (a burst of x makes the
per-example gradients, and K, large), heavy-tailed across trajectories;
``median_late_lambda_K`` (the median over the last half) is lambda_K^1 at the
self-stabilised state.

What to expect: the self-stabilised curvature sits at lambda* (0.9-1.02 lambda*
over eta 0.05-0.4, S 1-64); the maximum overshoots it, because x needs time to
grow from its noise floor while z keeps sharpening: the overshoot shrinks with
the sharpening speed eta beta (S = 8, eta = 0.1: max / lambda* = 1.31, 1.15,
1.04 at beta = 1e-2, 1e-3, 1e-4). In full-batch GD there is no noise floor: x
collapses to rounding level between bursts, the curvature runs a sawtooth around
2 / eta (about 0.8-1.2 x 2 / eta) and the maximum stays ~1.2 x 2 / eta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange

from valleysim.errors import SCALE_LIMIT, UserInputError, check_int_range, check_learning_rate, check_range
from valleysim.memory import F64, check_fits
from valleysim.rng import bounded, seed_state
from valleysim.stats import mean_se
from valleysim.theory import break_even_curvature, eta_star_1d, stability_factor, variance_factor

DIVERGE_AT = 1e8
MAX_SPREAD = 1e3              # sigma, offset, rates at most 1e3 (sigma^2 c and exp(r z) stay finite)
TURN = 0.01                   # growth has stopped once the curvature falls 1% below its running maximum
MAX_DEFAULT_STEPS = 5_000_000  # default run length cap (a stated cap: the summary says when it binds)


# --------------------------------------------------------------------------------------------- landscape

@dataclass(frozen=True)
class SharpeningLandscape:
    """k sharp directions with curvatures a0_j exp(r_j z), per-example spread sigma, drive beta (see module doc)."""

    a0: np.ndarray        # (k,)
    rates: np.ndarray     # (k,)
    sigma: float
    offset: float
    beta: float
    f: np.ndarray = field(repr=False)   # (N, k)  1 + sigma xi_ij
    b: np.ndarray = field(repr=False)   # (N, k)  offsets, sum_i f_ij b_ij = 0

    @property
    def N(self) -> int:
        return int(self.f.shape[0])

    @property
    def k(self) -> int:
        return int(self.a0.size)

    @property
    def B(self) -> np.ndarray:
        """(k,) (1/N) sum_i f_ij b_ij^2: the x-independent part of mean f (x - b)^2."""
        return np.mean(self.f * self.b**2, axis=0)

    @classmethod
    def make(cls, n_examples: int = 64, sigma: float = 1.0, offset: float = 0.001, beta: float = 0.001,
             a0=(1.0,), rates=(1.0,), landscape_seed: int = 0) -> "SharpeningLandscape":
        N = check_int_range(n_examples, "n_examples N", 2, 2**31)
        sigma = check_range(sigma, "sigma", 0, MAX_SPREAD)
        offset = check_range(offset, "offset", 0, MAX_SPREAD)
        beta = check_range(beta, "beta", 0, MAX_SPREAD)
        if 0 < beta < 1 / SCALE_LIMIT:
            raise UserInputError(f"beta must be 0 or in [1e-100, {MAX_SPREAD:g}]; got {beta!r}")
        a0 = np.atleast_1d(np.asarray(a0, dtype=float))
        rates = np.atleast_1d(np.asarray(rates, dtype=float))
        if a0.ndim != 1 or a0.size < 1 or a0.shape != rates.shape:
            raise UserInputError(f"a0 and rates must be lists of equal length >= 1; got {a0.size} and {rates.size}")
        for j in range(a0.size):
            check_range(a0[j], f"a0[{j}]", 1 / SCALE_LIMIT, SCALE_LIMIT)
            check_range(rates[j], f"rates[{j}]", 0, MAX_SPREAD)
        check_fits(4.0 * N * a0.size * F64, f"a landscape of {N} examples x {a0.size} directions")
        rng = np.random.default_rng(check_int_range(landscape_seed, "landscape_seed", 0))
        xi = rng.standard_normal((N, a0.size))
        xi -= xi.mean(axis=0)
        xi /= xi.std(axis=0)
        f = 1.0 + sigma * xi
        b = offset * rng.standard_normal((N, a0.size))
        b -= f * (np.sum(f * b, axis=0) / np.sum(f * f, axis=0))
        return cls(a0, rates, float(sigma), float(offset), float(beta), f, b)

    def curvatures(self, z) -> np.ndarray:
        """(..., k) a_j(z) = a0_j exp(r_j z): the x-block Hessian eigenvalues."""
        z = np.asarray(z, dtype=float)
        return self.a0 * np.exp(self.rates * z[..., None])

    def z_of_curvature(self, lam: float, j: int = 0) -> float:
        """z at which a_j(z) = lam (rates[j] > 0)."""
        return math.log(lam / self.a0[j]) / self.rates[j]

    def loss(self, x, z) -> np.ndarray:
        x, z = np.asarray(x, float), np.asarray(z, float)
        return np.sum(0.5 * self.curvatures(z) * (x**2 + self.B), axis=-1) - self.beta * z

    def hessian(self, x, z) -> np.ndarray:
        """(..., k+1, k+1) full-batch Hessian in (x_1..x_k, z)."""
        x, z = np.asarray(x, float), np.asarray(z, float)
        a = self.curvatures(z)
        k = self.k
        H = np.zeros(x.shape[:-1] + (k + 1, k + 1))
        idx = np.arange(k)
        H[..., idx, idx] = a
        H[..., idx, k] = H[..., k, idx] = self.rates * a * x
        H[..., k, k] = np.sum(0.5 * self.rates**2 * a * (x**2 + self.B), axis=-1)
        return H

    def per_example_gradients(self, x, z) -> np.ndarray:
        """(..., N, k+1) gradients g_i of l_i in (x, z)."""
        x, z = np.asarray(x, float), np.asarray(z, float)
        a = self.curvatures(z)[..., None, :]                      # (..., 1, k)
        d = x[..., None, :] - self.b                              # (..., N, k)
        gx = a * self.f * d
        gz = np.sum(0.5 * self.rates * a * self.f * d * d, axis=-1) - self.beta
        return np.concatenate([gx, gz[..., None]], axis=-1)

    def gradient_covariance(self, x, z) -> np.ndarray:
        """(..., k+1, k+1) K = (1/N) sum_i (g_i - g)(g_i - g)^T."""
        G = self.per_example_gradients(x, z)
        G = G - G.mean(axis=-2, keepdims=True)
        return np.einsum("...ni,...nj->...ij", G, G) / self.N

    def noise_source(self, z, j: int = 0) -> float:
        """V_j(z) = (1/N) sum_i h_ij^2 b_ij^2: Var of the per-example gradients along x_j at x = 0."""
        a = float(self.curvatures(z)[j])
        return float(np.mean((a * self.f[:, j] * self.b[:, j]) ** 2))


# --------------------------------------------------------------------------------------------- theory

def predicted_break_even(eta: float, S: int, N: int, sigma: float) -> float:
    """lambda*(eta, S) = 2 / (eta (1 + c(S, N) sigma^2)): q = 1 with s^2 = sigma^2 lambda^2 (R1; ``proofs.break_even``).

    The same point as ``theory.eta_star_1d(lambda*, sigma^2 lambda*^2, c) = eta`` and as
    ``theory.break_even_curvature(eta, c, alpha)`` with alpha = sigma^2 lambda*; 2 / eta at S = N.
    """
    eta = check_learning_rate(eta)
    c = variance_factor(S, N)
    lam = 2.0 / (eta * (1.0 + c * sigma**2))
    # the same root through the project's closed forms (guards against drift between the two)
    assert math.isclose(float(eta_star_1d(lam, sigma**2 * lam**2, c)), eta, rel_tol=1e-9)
    assert math.isclose(float(break_even_curvature(eta, c, sigma**2 * lam)), lam, rel_tol=1e-9)
    return lam


def almost_sure_break_even(land: SharpeningLandscape, eta: float, S: int, j: int = 0, samples: int = 200_000,
                           seed: int = 0) -> float:
    """The curvature where the Lyapunov exponent gamma = E log|1 - eta a f_B| along x_j crosses 0 (Monte Carlo).

    f_B is the batch mean of f_ij over a uniform S-subset; its law does not depend on a, so one sample
    of batches gives gamma(a) for every a and a root in u = eta a. All C(N, S) batches (exact) when
    there are at most ``samples`` of them. Above the mean-square edge lambda*
    whenever S < N (Jensen); equal to 2 / eta at S = N. NaN if gamma stays < 0 up to u = 4.
    """
    from scipy.optimize import brentq

    eta = check_learning_rate(eta)
    S = check_int_range(S, "batch size S", 1, land.N)
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
        rows = max(1, min(20_000, 2**22 // land.N))                         # chunks of <= 32 MB
        for s0 in range(0, samples, rows):
            m = min(rows, samples - s0)
            idx = np.argpartition(rng.random((m, land.N)), S, axis=1)[:, :S]
            fB[s0:s0 + m] = f[idx].mean(axis=1)
    gamma = lambda u: float(np.mean(np.log(np.abs(1.0 - u * fB))))          # noqa: E731
    lo = 2.0 / (1.0 + variance_factor(S, land.N) * land.sigma**2) * 0.999     # gamma < 0 here (Jensen)
    if gamma(4.0) <= 0:
        return math.nan
    return brentq(gamma, lo, 4.0, xtol=1e-10) / eta


def frozen_q(land: SharpeningLandscape, eta: float, S: int, z: float, j: int = 0) -> float:
    """q = (1 - eta a)^2 + eta^2 c sigma^2 a^2 along x_j at frozen z (``theory.stability_factor``)."""
    a = float(land.curvatures(z)[j])
    s2 = float(np.mean((a * land.f[:, j] - a) ** 2))                       # = sigma^2 a^2
    return float(stability_factor(eta, a, s2, variance_factor(S, land.N)))


def frozen_second_moment(land: SharpeningLandscape, eta: float, S: int, z: float, t, j: int = 0) -> np.ndarray:
    """Exact E[x_j,t^2] at frozen z from x_0 = 0: eta^2 c V (1 - q^t) / (1 - q)  (t * eta^2 c V at q = 1)."""
    t = np.asarray(t, dtype=float)
    q = frozen_q(land, eta, S, z, j)
    src = eta**2 * variance_factor(S, land.N) * land.noise_source(z, j)
    if math.isclose(q, 1.0, rel_tol=0, abs_tol=1e-14):
        return src * t
    return src * (1.0 - q**t) / (1.0 - q)


# --------------------------------------------------------------------------------------------- kernel

@njit(parallel=True, cache=True)
def _kernel(a0, rates, f, b, beta, eta, S, n_steps, rec_every, seed, x0, z0, frozen, R, late_from):
    k = a0.size
    N = f.shape[0]
    n_rec = n_steps // rec_every + 1
    X = np.full((R, n_rec, k), np.nan)
    Z = np.full((R, n_rec), np.nan)
    amax = np.zeros(R)
    t_amax = np.zeros(R, dtype=np.int64)
    late = np.zeros(R)
    div = np.full(R, -1, dtype=np.int64)
    for r in prange(R):
        state = seed_state(seed, r)
        perm = np.arange(N)
        x = x0.copy()
        z = z0
        a = np.empty(k)
        gx = np.empty(k)
        m = -np.inf
        for j in range(k):
            m = max(m, a0[j] * math.exp(rates[j] * z))
        amax[r] = m
        for j in range(k):
            X[r, 0, j] = x[j]
        Z[r, 0] = z
        late_sum = 0.0
        for t in range(1, n_steps + 1):
            for j in range(k):
                a[j] = a0[j] * math.exp(rates[j] * z)
                gx[j] = 0.0
            gz = 0.0
            for p in range(S):
                if S < N:
                    q = p + bounded(state, N - p)
                    tmp = perm[p]
                    perm[p] = perm[q]
                    perm[q] = tmp
                i = perm[p]
                for j in range(k):
                    d = x[j] - b[i, j]
                    fd = f[i, j] * d
                    gx[j] += fd
                    gz += 0.5 * rates[j] * a[j] * fd * d
            bad = False
            for j in range(k):
                x[j] -= eta * a[j] * gx[j] / S
                if not (abs(x[j]) < 1e8):
                    bad = True
            if not frozen:
                z -= eta * (gz / S - beta)
                if not math.isfinite(z):
                    bad = True
            if bad:
                div[r] = t
                break
            m = -np.inf
            for j in range(k):
                m = max(m, a0[j] * math.exp(rates[j] * z))
            if m > amax[r]:
                amax[r] = m
                t_amax[r] = t
            if t > late_from:
                late_sum += m
            if t % rec_every == 0:
                jr = t // rec_every
                for j in range(k):
                    X[r, jr, j] = x[j]
                Z[r, jr] = z
        late[r] = late_sum / max(n_steps - late_from, 1)
    return X, Z, amax, t_amax, late, div


# --------------------------------------------------------------------------------------------- runs

@dataclass
class BreakEvenRun:
    """Raw output of ``simulate``: X (R, n_rec, k), Z (R, n_rec) at steps j * record_every (NaN after a
    divergence); max_curvature, step_of_max, plateau (R,: mean of max_j a_j over every step of the last
    half); diverged_step (R,) (-1: ran to the end)."""

    land: SharpeningLandscape
    eta: float
    S: int
    n_steps: int
    record_every: int
    seed: int
    X: np.ndarray
    Z: np.ndarray
    max_curvature: np.ndarray
    step_of_max: np.ndarray
    plateau: np.ndarray
    diverged_step: np.ndarray
    default_steps: bool = False      # the run length came from ``default_steps``

    @property
    def steps(self) -> np.ndarray:
        return np.arange(self.Z.shape[1]) * self.record_every

    @property
    def ok(self) -> np.ndarray:
        return self.diverged_step < 0

    def curvature(self) -> np.ndarray:
        """(R, n_rec) lambda_H^1 of the x-block, max_j a_j(z)."""
        return self.land.curvatures(self.Z).max(axis=-1)


def drift_steps(land: SharpeningLandscape, eta: float, S: int) -> float:
    """Steps the drift alone (z grows by eta beta per step from z = 0) takes to reach lambda*; inf without
    sharpening (beta = 0 or every rate 0)."""
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


def default_steps(land: SharpeningLandscape, eta: float, S: int) -> int:
    """``steps_for_break_even``, at most MAX_DEFAULT_STEPS (2000 without sharpening: nothing to reach)."""
    need = steps_for_break_even(land, eta, S)
    return 2000 if need is None else min(need, MAX_DEFAULT_STEPS)


def simulate(land: SharpeningLandscape, eta: float, S: int, *, steps: int | None = None, trajectories: int = 256,
             seed: int = 0, record_every: int | None = None, x0=None, z0: float = 0.0,
             frozen: bool = False) -> BreakEvenRun:
    """R trajectories of mini-batch SGD (S of N without replacement) on ``land`` from (x0, z0)."""
    eta = check_learning_rate(eta)
    S = check_int_range(S, "batch size S", 1, land.N)
    default = steps is None
    steps = default_steps(land, eta, S) if default else check_int_range(steps, "steps", 1)
    R = check_int_range(trajectories, "trajectories", 1)
    seed = check_int_range(seed, "seed", 0, 2**63 - 1)
    rec = max(1, steps // 500) if record_every is None else check_int_range(record_every, "record_every", 1, steps)
    n_rec = steps // rec + 1
    check_fits(float(R) * n_rec * (land.k + 1) * 12 * F64 + 2.0 * R * land.N * F64,
               f"{R} trajectories with {n_rec} records (k = {land.k}, N = {land.N})")
    x0 = np.zeros(land.k) if x0 is None else np.asarray(x0, dtype=float).reshape(land.k)
    if not np.all(np.isfinite(x0)) or not math.isfinite(z0):
        raise UserInputError("x0 and z0 must be finite")
    X, Z, amax, tmax, late, div = _kernel(land.a0, land.rates, land.f, land.b, land.beta, eta, S, steps, rec,
                                          seed, x0, float(z0), bool(frozen), R, steps // 2)
    return BreakEvenRun(land, eta, S, steps, rec, seed, X, Z, amax, tmax, late, div, default_steps=default)


def spectra(run: BreakEvenRun, chunk: int = 4096) -> dict[str, np.ndarray]:
    """(R, n_rec) at the records: top full-Hessian eigenvalue, Tr(H), lambda_K^1, Tr(K), loss, Tr(H)/lambda_max."""
    land = run.land
    x = run.X.reshape(-1, land.k)
    z = run.Z.reshape(-1)
    out = {k: np.full(z.shape, np.nan) for k in ("lambda_H", "trace_H", "lambda_K", "trace_K", "loss")}
    good = np.flatnonzero(np.isfinite(z))
    for s in range(0, good.size, chunk):
        g = good[s:s + chunk]
        H = land.hessian(x[g], z[g])
        K = land.gradient_covariance(x[g], z[g])
        out["lambda_H"][g] = np.linalg.eigvalsh(H)[:, -1]
        out["trace_H"][g] = np.trace(H, axis1=-2, axis2=-1)
        out["lambda_K"][g] = np.linalg.eigvalsh(K)[:, -1]
        out["trace_K"][g] = np.trace(K, axis1=-2, axis2=-1)
        out["loss"][g] = land.loss(x[g], z[g])
    out = {k: v.reshape(run.Z.shape) for k, v in out.items()}
    # the conditioning of the sharp block: Tr(H_xx) / lambda_max(H_xx)
    a = land.curvatures(run.Z)
    out["trace_ratio"] = a.sum(axis=-1) / a.max(axis=-1)
    out["trace_xx"] = a.sum(axis=-1)
    return out


def growth_stops(curv: np.ndarray) -> np.ndarray:
    """(R,) first record at which the curvature curv (R, n_rec) is TURN below its running maximum; -1 if never."""
    fell = curv < (1.0 - TURN) * np.maximum.accumulate(curv, axis=1)
    return np.where(fell.any(axis=1), fell.argmax(axis=1), -1)


def break_even_per_trajectory(curv: np.ndarray, record_every: int) -> dict[str, np.ndarray]:
    """Per trajectory of curv (R, n_rec): ``reached`` (growth stopped in the first half of the records),
    ``plateau`` (median of the last half) and ``steps`` (first recorded step at the plateau level); the
    last two NaN where not reached."""
    half = curv.shape[1] // 2
    turn = growth_stops(curv)
    reached = (turn >= 0) & (turn <= half)
    plateau = np.median(curv[:, half:], axis=1)
    at_level = curv >= plateau[:, None]
    steps = np.argmax(at_level, axis=1) * float(record_every)
    return {"reached": reached, "turned": turn >= 0, "plateau": np.where(reached, plateau, np.nan),
            "steps": np.where(reached, steps, np.nan)}


#: Quantities of the self-stabilised state: defined only where break-even was reached.
BREAK_EVEN_KEYS = ("curvature_at_break_even", "mean_late_curvature", "steps_to_break_even", "median_late_lambda_K")


def summarise(run: BreakEvenRun) -> dict:
    """Break-even quantities (mean ± SE over trajectories) next to lambda*; says when break-even was not reached.

    Maxima average every trajectory that did not diverge; the BREAK_EVEN_KEYS average the
    ``reached_trajectories`` that reached break-even in the first half of the run (None if none did,
    with the reason in ``note``).
    """
    land, ok = run.land, run.ok
    c = variance_factor(run.S, land.N)
    lam = predicted_break_even(run.eta, run.S, land.N, land.sigma)
    need = steps_for_break_even(land, run.eta, run.S)
    out = {"eta": run.eta, "batch": run.S, "n_examples": land.N, "sigma": land.sigma, "offset": land.offset,
           "beta": land.beta, "a0": land.a0.tolist(), "rates": land.rates.tolist(), "variance_factor": c,
           "steps": run.n_steps, "steps_for_break_even": need,
           "steps_capped": bool(run.default_steps and need is not None and run.n_steps < need),
           "trajectories": int(ok.size), "diverged": int((~ok).sum()),
           "predicted_break_even": lam, "full_batch_edge": 2.0 / run.eta,
           "almost_sure_break_even": almost_sure_break_even(land, run.eta, run.S, samples=50_000)}
    out["first_divergence_step"] = int(run.diverged_step[~ok].min()) if (~ok).any() else None
    if ok.sum() < 1:
        out.update(reached=False, reached_trajectories=0, error="every trajectory diverged; nothing to average")
        return out
    curv = run.curvature()[ok]
    be = break_even_per_trajectory(curv, run.record_every)
    hit = be["reached"]
    out["reached_trajectories"] = int(hit.sum())
    out["reached"] = bool(hit.all())
    half = curv.shape[1] // 2
    sp = {k: v[ok] for k, v in spectra(run).items()}
    for name, vals in (("max_curvature", run.max_curvature[ok]),
                       ("curvature_at_break_even", be["plateau"][hit]),
                       ("mean_late_curvature", run.plateau[ok][hit]),
                       ("steps_to_break_even", be["steps"][hit]),
                       ("max_lambda_H_full", np.nanmax(sp["lambda_H"], axis=1)),
                       ("max_lambda_K", np.nanmax(sp["lambda_K"], axis=1)),
                       ("median_late_lambda_K", np.nanmedian(sp["lambda_K"][hit, half:], axis=1)),
                       ("max_trace_H", np.nanmax(sp["trace_xx"], axis=1)),
                       ("max_trace_K", np.nanmax(sp["trace_K"], axis=1)),
                       ("min_trace_ratio", np.nanmin(sp["trace_ratio"], axis=1)),
                       ("final_trace_ratio", sp["trace_ratio"][:, -1]),
                       ("final_loss", sp["loss"][:, -1])):
        out[name], out[name + "_se"] = mean_se(vals)
    out["max_over_predicted"] = out["max_curvature"] / lam
    out["plateau_over_predicted"] = out["curvature_at_break_even"] / lam if hit.any() else None
    if not hit.any():
        out.update({k: None for k in BREAK_EVEN_KEYS}, **{k + "_se": None for k in BREAK_EVEN_KEYS})
    note = _reach_note(out, be, run)
    if note:
        out["note"] = note
    return out


def _reach_note(out: dict, be: dict, run: BreakEvenRun) -> str | None:
    """Why break-even quantities are missing or partial (None when every trajectory reached it)."""
    n_ok, n_hit = be["reached"].size, int(be["reached"].sum())
    need = out["steps_for_break_even"]
    if n_hit == n_ok:
        return None
    if need is None:
        return "break-even not reached: no sharpening (beta = 0 or every rate 0), the curvature cannot grow"
    late = int((be["turned"] & ~be["reached"]).sum())
    what = (f"{n_ok - n_hit} of {n_ok} trajectories did not reach break-even in the first half of the run"
            if n_hit else f"break-even not reached in {out['steps']} steps")
    why = (f"the curvature rose to {out['max_curvature']:.4g} (lambda* = {out['predicted_break_even']:.4g})"
           + (f"; {late} turned back only in the last half, leaving no plateau to measure" if late else
              " without turning back"))
    need_txt = (f"the drift alone reaches lambda* in about {drift_steps(run.land, run.eta, run.S):.3g} steps: "
                f"rerun with --steps {need}")
    partial = f"; the break-even quantities average the {n_hit} that did" if n_hit else ""
    capped = (f" (the default run length is capped at {MAX_DEFAULT_STEPS:,} steps)" if out["steps_capped"] else "")
    return f"{what}{partial}: {why}; {need_txt}{capped}"


def sweep(etas, batch_sizes, land: SharpeningLandscape | None = None, *, steps: int | None = None,
          trajectories: int = 128, seed: int = 0, keep_runs: bool = False) -> list[dict]:
    """``summarise`` at every (eta, S) of the grid (same seed: common random numbers); rows in grid order.

    With keep_runs, each row carries its BreakEvenRun under "run" (for plots).
    """
    land = SharpeningLandscape.make() if land is None else land
    rows = []
    for eta in etas:
        for S in batch_sizes:
            run = simulate(land, eta, S, steps=steps, trajectories=trajectories, seed=seed)
            row = summarise(run)
            if keep_runs:
                row["run"] = run
            rows.append(row)
    return rows
