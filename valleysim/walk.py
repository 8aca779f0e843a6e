"""A walk with SGD (R9, Xing et al. 2018, Secs. 3-4): a valley with walls, a rough floor and flat directions.

The landscape is a finite sum over N examples, theta = (x, y, z_1..z_m):

    l_i(theta) = k_i W(x - a_i) + V(x, y) - (s + e_i) y + kappa/2 |z|^2
    W(u)       = (w^2 / 2) log(1 + u^2 / w^2)       (-> u^2 / 2 for w = inf: a quadratic wall)
    V(x, y)    = b sin^2(pi y / p) exp(-x^2 / (2 h^2))
    L(theta)   = (1/N) sum_i l_i(theta)

x is the wall direction (curvature about k = mean k_i at the floor; the
per-example curvatures k_i and offsets a_i make mini-batch gradients noisy
mostly along x, i.e. along the sharp direction, as for SGD on a network), y
runs along the valley floor (mean slope s drives the progress, per-example
slopes s + e_i add a little noise along it), V puts periodic barriers of
height b on the floor that fade with the height above it (the floor is rough,
the walls high up are not), and z are m weakly curved (kappa) directions that
no example's gradient moves: SGD's noise never enters them, isotropic noise
does. sum a_i = sum e_i = 0.

The saturating wall W (curvature k at the floor, decaying beyond |u| ~ w)
makes GD *bounce*: for 2 < eta k < 4 (and no barrier or slope) GD has a stable
period-2 orbit x <-> -x with x*^2 = w^2 (eta k / 2 - 1), so the cosine of
consecutive gradients along x is exactly -1 for ever, at height
k w^2 / 2 log(eta k / 2) above the floor. On a quadratic wall (w = inf) GD's
x-gradients multiply by (1 - eta k) every step (R7): over-damped for
eta k < 1 (cos -> +1), under-damped for 1 < eta k < 2 (cos = -1, decaying),
divergent beyond 2.

Optimisers (``OPTIMIZERS``): ``gd`` (full gradient), ``sgd`` (mean over a
uniform S-subset of the N examples, drawn without replacement every step),
``gd-noise`` (full gradient + isotropic Gaussian noise sigma xi, xi ~ N(0, I_D)).
The isotropic noise has SGD's noise power at the start: D sigma^2 =
noise_factor * tr Cov[g_B(theta_0)] for batch size S, with
tr Cov[g_B] = c(S, N) tr Cov_i[grad l_i], c(S, N) = (N - S) / (S (N - 1)) (the
paper scales the largest gradient variance at initialisation instead; with
one noisy direction the two agree up to the factor).

Walk metrics (paper Sec. 3, 3.2), per step t (segment theta_t -> theta_{t+1}),
all on the FULL-batch loss L:

- interpolation: L at theta_t^alpha = (1 - alpha) theta_t + alpha theta_{t+1} for
  10 points alpha_j = j / 11, j = 1..10, strictly between the iterates, plus the
  endpoints alpha = 0, 1;
- floor: L(theta_t^min), the smallest of these 12 values (alpha in [0, 1]);
- height: (L(theta_t) + L(theta_{t+1}) - 2 L(theta_t^min)) / 2  (Table 2), >= 0;
- barrier crossed: some interpolated point has L above both L(theta_t) and
  L(theta_{t+1}) (Table 1); its size max_j L - max(L(theta_t), L(theta_{t+1}));
  "above" means by more than BARRIER_RTOL (1 + |L|), so that round-off on a
  segment of a converged run is not counted;
- floor rise: the floor of segment t is above that of segment t - 1 (same
  tolerance; the floor of GD descends, SGD's goes up and down);
- cos(g_{t-1}, g_t) of the gradients used by the updates (mini-batch for SGD,
  full + noise for gd-noise), skipped when one of them has norm < GRAD_ATOL;
- distance from initialisation ||theta_t - theta_0|| and progress y_t - y_0.

Per trajectory the run accumulates the per-step metrics in ``n_bins`` equal
windows of the run (the paper's "epochs" of Tables 1 and 2). A trajectory
whose parameters become non-finite or exceed ``div_threshold`` in absolute
value stops; its ``diverged_step`` (first bad step, else -1) is reported and
the summaries average over the others.

Implementation: one numba kernel, ``prange`` over trajectories, each with its
own counter-seeded generator (``valleysim.rng``): the numbers do not depend on
the thread count. Every trajectory starts at the same theta_0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange

from valleysim.errors import UserInputError, check_batch_size, check_int_range, check_learning_rate, check_positive
from valleysim.memory import F64, check_fits
from valleysim.rng import bounded, normal, seed_state
from valleysim.stats import mean_se

OPTIMIZERS = ("gd", "sgd", "gd-noise")
_OPT_CODE = {"gd": 0, "sgd": 1, "gd-noise": 2}
N_INTERP = 10
TRACE_FIELDS = ("loss", "floor", "height", "cos", "dist", "x", "y", "barrier")
BARRIER_RTOL = 1e-10   # "above" means above by more than BARRIER_RTOL (1 + |L|): round-off is not a barrier
GRAD_ATOL = 1e-12      # cos is skipped when a gradient's norm is below this (GD stopped at a minimum)
_BIN_FIELDS = 6  # height sum, cos sum, cos count, barriers, floor rises, barrier size sum


def batch_variance_factor(S: int, N: int) -> float:
    """c(S, N) = (N - S) / (S (N - 1)): Cov of a without-replacement batch mean / Cov of one example."""
    return 0.0 if N == 1 else (N - S) / (S * (N - 1))


@dataclass(frozen=True)
class WalkLandscape:
    """The finite-sum valley of the module docstring. Use ``WalkLandscape.make`` to build one."""

    k: np.ndarray               # (N,) wall curvatures k_i
    a: np.ndarray               # (N,) wall offsets a_i, sum 0
    e: np.ndarray               # (N,) slope offsets e_i, sum 0
    slope: float = 0.02         # s
    width: float = 2.0          # w (inf: quadratic wall)
    barrier: float = 0.02       # b
    period: float = 1.0         # p
    barrier_width: float = 0.2  # h (inf: barriers as high everywhere across the valley)
    kappa: float = 0.01         # curvature of the flat directions z
    n_flat: int = 8             # m
    x0: float = 1.0
    y0: float = 0.0
    params: dict = field(default_factory=dict, compare=False)

    @classmethod
    def make(cls, n_examples: int = 32, k: float = 1.0, k_spread: float = 0.2, offset_std: float = 0.4,
             slope: float = 0.02, slope_std: float = 0.005, width: float = 2.0, barrier: float = 0.02,
             period: float = 1.0, barrier_width: float = 0.2, kappa: float = 0.01, n_flat: int = 8,
             x0: float = 1.0, y0: float = 0.0, seed: int = 0) -> WalkLandscape:
        """Per-example k_i = k (1 + k_spread u_i), u_i uniform in [-1, 1]; a_i, e_i Gaussian (std
        offset_std, slope_std), centred so that they sum to zero. Fixed by ``seed``."""
        N = check_int_range(n_examples, "n_examples", 1, 2**31)
        check_fits(8.0 * N * F64, f"a walk landscape of {N} examples")
        k = check_positive(k, "wall curvature k")
        if not (0 <= k_spread < 1):
            raise UserInputError(f"k_spread must be in [0, 1) (all k_i > 0); got {k_spread!r}")
        for v, name in ((offset_std, "offset_std"), (slope_std, "slope_std"), (barrier, "barrier b")):
            if not (math.isfinite(v) and v >= 0):
                raise UserInputError(f"{name} must be a finite number >= 0; got {v!r}")
        if not math.isfinite(slope):
            raise UserInputError(f"slope s must be finite; got {slope!r}")
        width = _check_width(width, "wall width w")
        barrier_width = _check_width(barrier_width, "barrier width h")
        period = check_positive(period, "barrier period p")
        if not (math.isfinite(kappa) and kappa >= 0):
            raise UserInputError(f"kappa must be a finite number >= 0; got {kappa!r}")
        n_flat = check_int_range(n_flat, "n_flat", 0)
        if not (math.isfinite(x0) and math.isfinite(y0)):
            raise UserInputError("x0 and y0 must be finite")
        rng = np.random.default_rng(seed)
        ks = k * (1.0 + k_spread * rng.uniform(-1.0, 1.0, N))
        a = offset_std * rng.standard_normal(N)
        e = slope_std * rng.standard_normal(N)
        if N > 1:
            a -= a.mean()
            e -= e.mean()
        else:
            a[:] = 0.0
            e[:] = 0.0
        params = dict(n_examples=N, k=k, k_spread=k_spread, offset_std=offset_std, slope=slope,
                      slope_std=slope_std, width=width, barrier=barrier, period=period,
                      barrier_width=barrier_width, kappa=kappa, n_flat=n_flat, x0=x0, y0=y0, seed=seed)
        return cls(ks, a, e, float(slope), width, float(barrier), period, barrier_width, float(kappa),
                   n_flat, float(x0), float(y0), params)

    @property
    def N(self) -> int:
        return self.k.shape[0]

    @property
    def D(self) -> int:
        return 2 + self.n_flat

    @property
    def theta0(self) -> np.ndarray:
        t = np.zeros(self.D)
        t[0], t[1] = self.x0, self.y0
        return t

    def _scalars(self):
        inv_w2 = 0.0 if math.isinf(self.width) else 1.0 / self.width ** 2
        inv_h2 = 0.0 if math.isinf(self.barrier_width) else 1.0 / self.barrier_width ** 2
        return inv_w2, inv_h2

    # --- numpy reference implementations (independent of the kernel; used by tests and tables) -------

    def loss(self, theta) -> np.ndarray:
        """Full-batch loss L at theta (..., D)."""
        th = np.asarray(theta, dtype=float)
        x, y, z = th[..., 0], th[..., 1], th[..., 2:]
        u = x[..., None] - self.a
        wall = np.mean(self.k * _wall(u, self.width), axis=-1)
        return wall + self._floor_terms(x, y) - self.slope * y + 0.5 * self.kappa * np.sum(z * z, axis=-1)

    def example_losses(self, theta) -> np.ndarray:
        """(..., N) per-example losses l_i."""
        th = np.asarray(theta, dtype=float)
        x, y, z = th[..., 0:1], th[..., 1:2], th[..., 2:]
        return (self.k * _wall(x - self.a, self.width) + self._floor_terms(x, y) - (self.slope + self.e) * y
                + 0.5 * self.kappa * np.sum(z * z, axis=-1, keepdims=True))

    def example_grads(self, theta) -> np.ndarray:
        """(N, D) per-example gradients at one point theta (D,)."""
        th = np.asarray(theta, dtype=float)
        x, y = th[0], th[1]
        u = x - self.a
        w2 = self.width ** 2
        dW = u if math.isinf(self.width) else u / (1.0 + u * u / w2)
        env = 1.0 if math.isinf(self.barrier_width) else math.exp(-x * x / (2 * self.barrier_width ** 2))
        dVx = 0.0 if math.isinf(self.barrier_width) else \
            -self.barrier * math.sin(math.pi * y / self.period) ** 2 * env * x / self.barrier_width ** 2
        dVy = self.barrier * (math.pi / self.period) * math.sin(2 * math.pi * y / self.period) * env
        G = np.empty((self.N, self.D))
        G[:, 0] = self.k * dW + dVx
        G[:, 1] = dVy - (self.slope + self.e)
        G[:, 2:] = self.kappa * th[2:]
        return G

    def grad(self, theta) -> np.ndarray:
        """Full-batch gradient (D,)."""
        return self.example_grads(theta).mean(axis=0)

    def floor_curvature(self) -> float:
        """d^2 L / dx^2 at x = 0, y = 0 (no barrier there): mean k_i W''(-a_i), the k of eta k."""
        if math.isinf(self.width):
            return float(self.k.mean())
        q = self.a ** 2 / self.width ** 2
        return float(np.mean(self.k * (1 - q) / (1 + q) ** 2))

    def noise_power(self, theta, S: int) -> float:
        """tr Cov[g_B(theta)] of a without-replacement batch of S: c(S, N) tr Cov_i[grad l_i]."""
        G = self.example_grads(theta)
        return batch_variance_factor(S, self.N) * float(np.sum(G.var(axis=0)))

    def _floor_terms(self, x, y):
        env = 1.0 if math.isinf(self.barrier_width) else np.exp(-np.square(x) / (2 * self.barrier_width ** 2))
        return self.barrier * np.sin(np.pi * y / self.period) ** 2 * env


WIDTH_RANGE = (1e-3, 1e6)        # a finite width outside it is a quadratic or a cliff to float64: use inf


def _check_width(v, name):
    try:
        v = float(v)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isinf(v) and v > 0 or WIDTH_RANGE[0] <= v <= WIDTH_RANGE[1]):
        raise UserInputError(f"{name} must be in [{WIDTH_RANGE[0]:g}, {WIDTH_RANGE[1]:g}] or inf (quadratic); "
                             f"got {v!r}")
    return v


def _wall(u, width):
    u = np.asarray(u, dtype=float)
    if math.isinf(width):
        return 0.5 * u * u
    return 0.5 * width ** 2 * np.log1p(u * u / width ** 2)


# --- the metric definitions on one segment (numpy; the kernel does the same in numba) ------------------

def interpolation_alphas(n_interp: int = N_INTERP) -> np.ndarray:
    """alpha_0 = 0, alpha_j = j / (n + 1) for j = 1..n (the n points strictly between), alpha_{n+1} = 1."""
    return np.arange(n_interp + 2) / (n_interp + 1)


def segment_metrics(losses) -> dict:
    """Walk metrics of one segment from its losses at ``interpolation_alphas`` (endpoints first and last).

    floor = min over alpha in [0, 1]; height = (L_0 + L_1 - 2 floor) / 2; barrier = an interior point
    above both endpoints (by more than BARRIER_RTOL (1 + |L|)), barrier_size = max interior - max(L_0, L_1)
    (0 when none)."""
    L = np.asarray(losses, dtype=float)
    floor = float(L.min())
    top = max(L[0], L[-1])
    inner = float(L[1:-1].max()) if L.size > 2 else -np.inf
    crossed = inner > top + BARRIER_RTOL * (1.0 + abs(top))
    return dict(floor=floor, height=(L[0] + L[-1] - 2 * floor) / 2, barrier=bool(crossed),
                barrier_size=float(inner - top) if crossed else 0.0)


def cosine(g0, g1) -> float:
    """cos(g0, g1) = g0.g1 / (|g0| |g1|); nan when either norm is below GRAD_ATOL."""
    n0, n1 = float(np.linalg.norm(g0)), float(np.linalg.norm(g1))
    return float(np.dot(g0, g1) / (n0 * n1)) if n0 >= GRAD_ATOL and n1 >= GRAD_ATOL else float("nan")


# --- the ensemble kernel ----------------------------------------------------------------------------

@njit(inline="always")
def _full_loss(x, y, zsq, k, a, slope, inv_w2, barrier, period, inv_h2, kappa):
    N = k.shape[0]
    acc = 0.0
    for i in range(N):
        u = x - a[i]
        if inv_w2 == 0.0:
            acc += k[i] * 0.5 * u * u
        else:
            acc += k[i] * 0.5 * math.log1p(u * u * inv_w2) / inv_w2
    sy = math.sin(math.pi * y / period)
    return acc / N + barrier * sy * sy * math.exp(-0.5 * x * x * inv_h2) - slope * y + 0.5 * kappa * zsq


@njit(inline="always")
def _batch_grad(x, y, th, idx, nb, k, a, e, slope, inv_w2, barrier, period, inv_h2, kappa, g):
    """g = mean over the examples idx[:nb] of grad l_i at theta."""
    env = math.exp(-0.5 * x * x * inv_h2)
    sy = math.sin(math.pi * y / period)
    dvx = -barrier * sy * sy * env * x * inv_h2
    dvy = barrier * (math.pi / period) * math.sin(2.0 * math.pi * y / period) * env
    gx = 0.0
    ge = 0.0
    for j in range(nb):
        i = idx[j]
        u = x - a[i]
        gx += k[i] * u / (1.0 + u * u * inv_w2)
        ge += e[i]
    g[0] = gx / nb + dvx
    g[1] = dvy - slope - ge / nb
    for d in range(2, g.shape[0]):
        g[d] = kappa * th[d]


@njit(parallel=True, cache=True)
def _walk_kernel(k, a, e, slope, inv_w2, barrier, period, inv_h2, kappa, theta0, opt, eta, S, sigma,
                 n_steps, R, seed, n_interp, n_bins, n_rec, div_threshold,
                 bins, bin_steps, theta_end, dist_end, div_step, traces, interp):
    N = k.shape[0]
    D = theta0.shape[0]
    for r in prange(R):
        state = seed_state(seed, r)
        perm = np.arange(N)
        allidx = np.arange(N)
        th = theta0.copy()
        new = np.empty(D)
        g = np.empty(D)
        gprev = np.zeros(D)
        Ls = np.empty(n_interp + 2)
        have_prev = False
        prev_floor = 0.0
        div_step[r] = -1
        zsq0 = 0.0
        for d in range(2, D):
            zsq0 += th[d] * th[d]
        L0 = _full_loss(th[0], th[1], zsq0, k, a, slope, inv_w2, barrier, period, inv_h2, kappa)
        for t in range(n_steps):
            b = (t * n_bins) // n_steps
            # the step's gradient
            if opt == 1:
                for j in range(S):  # partial Fisher-Yates: perm[:S] is a uniform S-subset
                    jj = j + bounded(state, N - j)
                    tmp = perm[j]
                    perm[j] = perm[jj]
                    perm[jj] = tmp
                _batch_grad(th[0], th[1], th, perm, S, k, a, e, slope, inv_w2, barrier, period, inv_h2,
                            kappa, g)
            else:
                _batch_grad(th[0], th[1], th, allidx, N, k, a, e, slope, inv_w2, barrier, period, inv_h2,
                            kappa, g)
                if opt == 2:
                    for d in range(D):
                        g[d] += sigma * normal(state)
            bad = False
            for d in range(D):
                new[d] = th[d] - eta * g[d]
                if not (abs(new[d]) <= div_threshold):  # also catches nan
                    bad = True
            if bad:
                div_step[r] = t + 1
                break
            # interpolate the full loss along the segment
            Ls[0] = L0
            for j in range(1, n_interp + 2):
                al = j / (n_interp + 1.0)
                zsq = 0.0
                for d in range(2, D):
                    zd = th[d] + al * (new[d] - th[d])
                    zsq += zd * zd
                Ls[j] = _full_loss(th[0] + al * (new[0] - th[0]), th[1] + al * (new[1] - th[1]), zsq,
                                   k, a, slope, inv_w2, barrier, period, inv_h2, kappa)
            L1 = Ls[n_interp + 1]
            fl = Ls[0]
            inner = -np.inf
            for j in range(1, n_interp + 2):
                if Ls[j] < fl:
                    fl = Ls[j]
                if j <= n_interp and Ls[j] > inner:
                    inner = Ls[j]
            top = max(L0, L1)
            height = 0.5 * (L0 + L1 - 2.0 * fl)
            crossed = inner > top + BARRIER_RTOL * (1.0 + abs(top))
            # cosine of consecutive step gradients
            c = np.nan
            if have_prev:
                dot = 0.0
                n0 = 0.0
                n1 = 0.0
                for d in range(D):
                    dot += gprev[d] * g[d]
                    n0 += gprev[d] * gprev[d]
                    n1 += g[d] * g[d]
                if n0 >= GRAD_ATOL * GRAD_ATOL and n1 >= GRAD_ATOL * GRAD_ATOL:
                    c = dot / math.sqrt(n0 * n1)
            bins[r, b, 0] += height
            if not np.isnan(c):
                bins[r, b, 1] += c
                bins[r, b, 2] += 1.0
            if crossed:
                bins[r, b, 3] += 1.0
                bins[r, b, 5] += inner - top
            if t > 0 and fl > prev_floor + BARRIER_RTOL * (1.0 + abs(prev_floor)):
                bins[r, b, 4] += 1.0
            bin_steps[r, b] += 1
            if r < n_rec:
                dist = 0.0
                for d in range(D):
                    dist += (th[d] - theta0[d]) ** 2
                traces[r, t, 0] = L0
                traces[r, t, 1] = fl
                traces[r, t, 2] = height
                traces[r, t, 3] = c
                traces[r, t, 4] = math.sqrt(dist)
                traces[r, t, 5] = th[0]
                traces[r, t, 6] = th[1]
                traces[r, t, 7] = 1.0 if crossed else 0.0
                for j in range(n_interp + 2):
                    interp[r, t, j] = Ls[j]
            prev_floor = fl
            for d in range(D):
                gprev[d] = g[d]
                th[d] = new[d]
            have_prev = True
            L0 = L1
        dist = 0.0
        for d in range(D):
            theta_end[r, d] = th[d]
            dist += (th[d] - theta0[d]) ** 2
        dist_end[r] = math.sqrt(dist)


# --- the driver ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WalkRun:
    """An ensemble walk. R trajectories, T steps, n_bins windows of the run.

    bins:       (R, n_bins, 6) per window: sum of heights, sum of cosines, number of cosines,
                barriers crossed, floor rises, sum of barrier sizes
    bin_steps:  (R, n_bins) steps done in each window
    theta_end:  (R, D) last parameters (before a divergence: the last finite ones)
    dist_end:   (R,) ||theta_end - theta_0||
    diverged_step: (R,) first step whose parameters were non-finite or beyond div_threshold, -1 if none
    traces:     (n_rec, T, 8) per step of the first n_rec trajectories: TRACE_FIELDS at theta_t
                (height, floor, barrier of the segment t -> t+1; cos of g_{t-1}, g_t); nan after a divergence
    interp:     (n_rec, T, n_interp + 2) the full loss at interpolation_alphas along each segment
    """

    land: WalkLandscape
    optimizer: str
    eta: float
    batch: int | None
    sigma: float
    steps: int
    trajectories: int
    seed: int
    bins: np.ndarray
    bin_steps: np.ndarray
    theta_end: np.ndarray
    dist_end: np.ndarray
    diverged_step: np.ndarray
    traces: np.ndarray
    interp: np.ndarray


def isotropic_sigma(land: WalkLandscape, S: int, noise_factor: float = 1.0) -> float:
    """Per-coordinate std of gd-noise: D sigma^2 = noise_factor tr Cov[g_B(theta_0)] at batch size S."""
    return math.sqrt(noise_factor * land.noise_power(land.theta0, S) / land.D)


def simulate_walk(land: WalkLandscape, optimizer: str, eta: float, steps: int, trajectories: int = 64,
                  batch: int | None = None, seed: int = 0, n_bins: int = 4, n_rec: int = 4,
                  noise_factor: float = 1.0, n_interp: int = N_INTERP,
                  div_threshold: float = 1e8) -> WalkRun:
    """Run ``trajectories`` walks of ``steps`` steps from theta_0 (see the module docstring)."""
    if optimizer not in OPTIMIZERS:
        raise UserInputError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")
    eta = check_learning_rate(eta, "learning rate eta")
    steps = check_int_range(steps, "steps", 1, 10**8)
    R = check_int_range(trajectories, "trajectories", 1, 10**7)
    n_bins = check_int_range(n_bins, "n_bins", 1, steps)
    n_rec = check_int_range(n_rec, "n_rec", 0)
    n_interp = check_int_range(n_interp, "n_interp", 1, 1000)
    seed = check_int_range(seed, "seed", 0, 2**63 - 1)
    noise_factor = check_positive(noise_factor, "noise_factor")
    if optimizer == "gd":
        S = land.N
    else:
        if batch is None:
            raise UserInputError(f"optimizer {optimizer} needs a batch size S (gd-noise: its noise power is "
                                 "SGD's at batch S at the start)")
        S = check_batch_size(batch, land.N)
    sigma = isotropic_sigma(land, S, noise_factor) if optimizer == "gd-noise" else 0.0
    n_rec = min(n_rec, R)
    check_fits(float(R) * (n_bins * (_BIN_FIELDS + 1) + land.D + 4 + land.N) * F64
               + float(n_rec) * steps * (len(TRACE_FIELDS) + n_interp + 2) * F64,
               f"{R} trajectories of {steps} steps in {n_bins} windows ({n_rec} traced)")
    inv_w2, inv_h2 = land._scalars()
    bins = np.zeros((R, n_bins, _BIN_FIELDS))
    bin_steps = np.zeros((R, n_bins), dtype=np.int64)
    theta_end = np.empty((R, land.D))
    dist_end = np.empty(R)
    div_step = np.empty(R, dtype=np.int64)
    traces = np.full((n_rec, steps, len(TRACE_FIELDS)), np.nan)
    interp = np.full((n_rec, steps, n_interp + 2), np.nan)
    _walk_kernel(land.k, land.a, land.e, land.slope, inv_w2, land.barrier, land.period, inv_h2, land.kappa,
                 land.theta0, _OPT_CODE[optimizer], eta, S, sigma, steps, R, seed, n_interp, n_bins, n_rec,
                 float(div_threshold), bins, bin_steps, theta_end, dist_end, div_step, traces, interp)
    return WalkRun(land, optimizer, eta, None if optimizer == "gd" else S, sigma, steps, R, seed, bins,
                   bin_steps, theta_end, dist_end, div_step, traces, interp)


def per_bin(run: WalkRun) -> dict:
    """Per window (mean ± SE over the trajectories that did not diverge): average height, average cos,
    barriers crossed, fraction of floor rises. Lists of (mean, se) of length n_bins."""
    ok = run.diverged_step < 0
    b, n = run.bins[ok], run.bin_steps[ok].astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        cols = dict(height=b[..., 0] / n, cos=b[..., 1] / b[..., 2], barriers=b[..., 3],
                    floor_rise_fraction=b[..., 4] / n)
    return {k: [mean_se(v[:, j]) for j in range(v.shape[1])] for k, v in cols.items()}


def summarise(run: WalkRun, window: str = "second-half") -> dict:
    """Mean ± SE over the trajectories that did not diverge. Averages over the steps of ``window``:
    ``second-half`` (the last n_bins // 2 windows, all when n_bins = 1) or ``all``."""
    ok = run.diverged_step < 0
    nb = run.bins.shape[1]
    sel = slice(nb // 2, nb) if window == "second-half" and nb > 1 else slice(0, nb)
    b = run.bins[ok][:, sel].sum(axis=1)
    n = run.bin_steps[ok][:, sel].sum(axis=1).astype(float)
    ball = run.bins[ok].sum(axis=1)
    y0 = run.land.y0
    with np.errstate(invalid="ignore", divide="ignore"):
        metrics = dict(height=b[:, 0] / n, cos=b[:, 1] / b[:, 2], barriers_per_step=b[:, 3] / n,
                       barriers_total=ball[:, 3], floor_rise_fraction=b[:, 4] / n,
                       distance=run.dist_end[ok], progress=run.theta_end[ok, 1] - y0,
                       final_loss=run.land.loss(run.theta_end[ok]),
                       wall_amplitude=np.abs(run.theta_end[ok, 0]),
                       flat_norm=np.linalg.norm(run.theta_end[ok, 2:], axis=1))
    out = dict(optimizer=run.optimizer, eta=run.eta, batch=run.batch, eta_k=run.eta * run.land.floor_curvature(),
               sigma=run.sigma, steps=run.steps, trajectories=run.trajectories, seed=run.seed,
               window=window, completed=int(ok.sum()), diverged=int((~ok).sum()),
               first_divergence_step=int(run.diverged_step[~ok].min()) if (~ok).any() else None,
               landscape=run.land.params)
    for key, v in metrics.items():
        m, se = mean_se(v)
        out[key], out[f"{key}_se"] = m, se
    return out
