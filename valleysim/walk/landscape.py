"""The rough-floor valley (R9): ``WalkLandscape`` and its compiled full loss and batch gradient."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from valleysim.errors import (
    UserInputError,
    check_array,
    check_finite,
    check_int_range,
    check_positive,
    check_range,
)
from valleysim.memory import F64, check_fits
from valleysim.theory import variance_factor


@dataclass(frozen=True)
class WalkLandscape:
    """The finite-sum valley of the module docstring. Use ``WalkLandscape.make`` to build one."""

    k: np.ndarray  # (N,) wall curvatures k_i
    a: np.ndarray  # (N,) wall offsets a_i, sum 0
    e: np.ndarray  # (N,) slope offsets e_i, sum 0
    slope: float = 0.02  # s
    width: float = 2.0  # w (inf: quadratic wall)
    barrier: float = 0.02  # b
    period: float = 1.0  # p
    barrier_width: float = 0.2  # h (inf: barriers as high everywhere across the valley)
    kappa: float = 0.01  # curvature of the flat directions z
    n_flat: int = 8  # m
    x0: float = 1.0
    y0: float = 0.0
    params: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        """Every field checked (the kernel reads k, a and e by example: one entry each per example)."""
        k = check_array(self.k, "k (wall curvatures k_i)", ("N",))
        if k.size < 1 or np.any(k <= 0):
            raise UserInputError(f"k (wall curvatures k_i) must be > 0, one per example (at least one); got {k}")
        fields = dict(
            k=k,
            a=check_array(self.a, "a (wall offsets a_i)", k.shape),
            e=check_array(self.e, "e (slope offsets e_i)", k.shape),
            slope=check_finite(self.slope, "slope s"),
            width=_check_width(self.width, "wall width w"),
            barrier=check_range(self.barrier, "barrier b", 0, math.inf),
            period=check_positive(self.period, "barrier period p"),
            barrier_width=_check_width(self.barrier_width, "barrier width h"),
            kappa=check_range(self.kappa, "kappa", 0, math.inf),
            n_flat=check_int_range(self.n_flat, "n_flat", 0),
            x0=check_finite(self.x0, "x0"),
            y0=check_finite(self.y0, "y0"),
        )
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    @classmethod
    def make(
        cls,
        n_examples: int = 32,
        k: float = 1.0,
        k_spread: float = 0.2,
        offset_std: float = 0.4,
        slope: float = 0.02,
        slope_std: float = 0.005,
        width: float = 2.0,
        barrier: float = 0.02,
        period: float = 1.0,
        barrier_width: float = 0.2,
        kappa: float = 0.01,
        n_flat: int = 8,
        x0: float = 1.0,
        y0: float = 0.0,
        seed: int = 0,
    ) -> WalkLandscape:
        """Per-example k_i = k (1 + k_spread u_i), u_i uniform in [-1, 1]; a_i, e_i Gaussian (std
        offset_std, slope_std), centred so that they sum to zero. Fixed by ``seed``."""
        N = check_int_range(n_examples, "n_examples", 1, 2**31)
        check_fits(8.0 * N * F64, f"a walk landscape of {N} examples")
        k = check_positive(k, "wall curvature k")
        if not (0 <= check_finite(k_spread, "k_spread") < 1):
            raise UserInputError(f"k_spread must be in [0, 1) (all k_i > 0); got {k_spread!r}")
        offset_std = check_range(offset_std, "offset_std", 0, math.inf)
        slope_std = check_range(slope_std, "slope_std", 0, math.inf)
        rng = np.random.default_rng(check_int_range(seed, "seed", 0, 2**63 - 1))
        ks = k * (1.0 + k_spread * rng.uniform(-1.0, 1.0, N))
        a = offset_std * rng.standard_normal(N)
        e = slope_std * rng.standard_normal(N)
        if N > 1:
            a -= a.mean()
            e -= e.mean()
        else:
            a[:] = 0.0
            e[:] = 0.0
        land = cls(ks, a, e, slope, width, barrier, period, barrier_width, kappa, n_flat, x0, y0)
        land.params.update(
            n_examples=N,
            k=k,
            k_spread=k_spread,
            offset_std=offset_std,
            slope=land.slope,
            slope_std=slope_std,
            width=land.width,
            barrier=land.barrier,
            period=land.period,
            barrier_width=land.barrier_width,
            kappa=land.kappa,
            n_flat=land.n_flat,
            x0=land.x0,
            y0=land.y0,
            seed=seed,
        )
        return land

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

    def _theta(self, theta) -> np.ndarray:
        """theta (..., D) as a float array; UserInputError when it is not D wide."""
        th = np.asarray(theta, dtype=float)
        if th.shape[-1:] != (self.D,):
            raise UserInputError(f"theta must have shape (..., {self.D}) (x, y, {self.n_flat} flat z); got {th.shape}")
        return th

    def _scalars(self):
        inv_w2 = 0.0 if math.isinf(self.width) else 1.0 / self.width**2
        inv_h2 = 0.0 if math.isinf(self.barrier_width) else 1.0 / self.barrier_width**2
        return inv_w2, inv_h2

    # --- numpy reference implementations (independent of the kernel; used by tests and tables) -------

    def loss(self, theta) -> np.ndarray:
        """Full-batch loss L at theta (..., D)."""
        th = self._theta(theta)
        x, y, z = th[..., 0], th[..., 1], th[..., 2:]
        u = x[..., None] - self.a
        wall = np.mean(self.k * _wall(u, self.width), axis=-1)
        return wall + self._floor_terms(x, y) - self.slope * y + 0.5 * self.kappa * np.sum(z * z, axis=-1)

    def example_losses(self, theta) -> np.ndarray:
        """(..., N) per-example losses l_i."""
        th = self._theta(theta)
        x, y, z = th[..., 0:1], th[..., 1:2], th[..., 2:]
        return (
            self.k * _wall(x - self.a, self.width)
            + self._floor_terms(x, y)
            - (self.slope + self.e) * y
            + 0.5 * self.kappa * np.sum(z * z, axis=-1, keepdims=True)
        )

    def example_grads(self, theta) -> np.ndarray:
        """(N, D) per-example gradients at one point theta (D,)."""
        th = check_array(theta, "theta", (self.D,))
        x, y = th[0], th[1]
        u = x - self.a
        w2 = self.width**2
        dW = u if math.isinf(self.width) else u / (1.0 + u * u / w2)
        env = 1.0 if math.isinf(self.barrier_width) else math.exp(-x * x / (2 * self.barrier_width**2))
        dVx = (
            0.0
            if math.isinf(self.barrier_width)
            else -self.barrier * math.sin(math.pi * y / self.period) ** 2 * env * x / self.barrier_width**2
        )
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
        q = self.a**2 / self.width**2
        return float(np.mean(self.k * (1 - q) / (1 + q) ** 2))

    def noise_power(self, theta, S: int) -> float:
        """tr Cov[g_B(theta)] of a without-replacement batch of S: c(S, N) tr Cov_i[grad l_i]."""
        G = self.example_grads(theta)
        return variance_factor(S, self.N) * float(np.sum(G.var(axis=0)))

    def _floor_terms(self, x, y):
        env = 1.0 if math.isinf(self.barrier_width) else np.exp(-np.square(x) / (2 * self.barrier_width**2))
        return self.barrier * np.sin(np.pi * y / self.period) ** 2 * env


WIDTH_RANGE = (1e-3, 1e6)  # a finite width outside it is a quadratic or a cliff to float64: use inf


def _check_width(v, name):
    try:
        v = float(v)
    except (TypeError, ValueError):
        v = math.nan
    if not (math.isinf(v) and v > 0 or WIDTH_RANGE[0] <= v <= WIDTH_RANGE[1]):
        raise UserInputError(
            f"{name} must be in [{WIDTH_RANGE[0]:g}, {WIDTH_RANGE[1]:g}] or inf (quadratic); got {v!r}"
        )
    return v


def _wall(u, width):
    u = np.asarray(u, dtype=float)
    if math.isinf(width):
        return 0.5 * u * u
    return 0.5 * width**2 * np.log1p(u * u / width**2)


# --- the metric definitions on one segment (numpy; the kernel does the same in numba) ------------------


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
