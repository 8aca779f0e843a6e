"""The sharpening valley of R8: ``SharpValley`` (exact dense gradient and Hessian), ``make_valley``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from valleysim.errors import UserInputError, check_array, check_finite, check_int_range, check_positive, check_range
from valleysim.memory import F64, check_fits


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclass(frozen=True)
class SharpValley:
    """N per-example losses in D = Ks + Df dimensions (see module docstring)."""

    offsets: np.ndarray  # (N, D), centred over examples
    target: np.ndarray  # (D,), zeros on the sharp block
    c: np.ndarray  # (Ks,) sharp weights
    b: np.ndarray  # (Df,) flat curvatures (b[0] is z_1's)
    a_lo: float = 1.0
    a_hi: float = 100.0
    mid: float = 0.0
    width: float = 0.5

    def __post_init__(self):
        off = check_array(self.offsets, "offsets", finite=False)
        c, b = check_array(self.c, "c", finite=False), check_array(self.b, "b", finite=False)
        t = check_array(self.target, "target", finite=False)
        if c.ndim != 1 or b.ndim != 1 or c.size < 1 or b.size < 1:
            raise UserInputError(f"c and b must be non-empty vectors; got shapes {c.shape}, {b.shape}")
        D = c.size + b.size
        if off.ndim != 2 or off.shape[1] != D or off.shape[0] < 1:
            raise UserInputError(f"offsets must have shape (N, {D}); got {off.shape}")
        if t.shape != (D,):
            raise UserInputError(f"target must have shape ({D},); got {t.shape}")
        for name, arr in (("offsets", off), ("c", c), ("b", b), ("target", t)):
            if not np.all(np.isfinite(arr)):
                raise UserInputError(f"{name} must be finite")
        if np.any(c <= 0) or np.any(b <= 0):
            raise UserInputError("curvature weights c and b must be > 0")
        a_lo, width = check_positive(self.a_lo, "a_lo"), check_positive(self.width, "width")
        a_hi, mid = check_finite(self.a_hi, "a_hi"), check_finite(self.mid, "mid")
        if a_hi < a_lo:
            raise UserInputError(f"a_hi must be >= a_lo = {a_lo}; got {a_hi}")
        off = off - off.mean(axis=0)
        t = t.copy()
        t[: c.size] = 0.0
        object.__setattr__(self, "offsets", off)
        object.__setattr__(self, "c", c)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "target", t)
        for name, value in (("a_lo", a_lo), ("a_hi", a_hi), ("mid", mid), ("width", width)):
            object.__setattr__(self, name, value)

    @property
    def N(self) -> int:
        return self.offsets.shape[0]

    @property
    def Ks(self) -> int:
        return self.c.size

    @property
    def D(self) -> int:
        return self.c.size + self.b.size

    # --- the sharpness profile along z_1 ---------------------------------------------------------
    def sharpness(self, z1):
        """a(z1), a'(z1), a''(z1)."""
        s = _sigmoid((np.asarray(z1, dtype=np.float64) - self.mid) / self.width)
        amp = self.a_hi - self.a_lo
        d1 = s * (1 - s)
        return (self.a_lo + amp * s, amp * d1 / self.width, amp * d1 * (1 - 2 * s) / self.width**2)

    def curvatures(self, theta):
        """h_d(theta), shape (..., D)."""
        theta = np.asarray(theta, dtype=np.float64)
        a, _, _ = self.sharpness(theta[..., self.Ks])
        return np.concatenate([a[..., None] * self.c, np.broadcast_to(self.b, theta.shape[:-1] + self.b.shape)], -1)

    def loss(self, theta) -> np.ndarray:
        """Full loss L(theta), theta of shape (..., D)."""
        theta = np.asarray(theta, dtype=np.float64)
        return 0.5 * np.sum(self.curvatures(theta) * (theta - self.target) ** 2, axis=-1)

    def example_losses(self, theta) -> np.ndarray:
        """L_i(theta) for every example, theta (D,) -> (N,) (for tests: their mean is ``loss``)."""
        theta = np.asarray(theta, dtype=np.float64)
        h = self.curvatures(theta)
        return 0.5 * np.sum(h * ((theta - self.target - self.offsets) ** 2 - self.offsets**2), axis=-1)

    def _grad_from_mean_offset(self, theta, nbar):
        """Mini-batch gradient given the batch mean of the offsets nbar (..., D) (zeros: full gradient)."""
        Ks = self.Ks
        a, da, _ = self.sharpness(theta[..., Ks])
        h = self.curvatures(theta)
        g = h * (theta - self.target - nbar)
        u, nu = theta[..., :Ks], nbar[..., :Ks]
        g[..., Ks] += 0.5 * da * np.sum(self.c * (u * u - 2.0 * u * nu), axis=-1)
        return g

    def grad(self, theta) -> np.ndarray:
        theta = np.asarray(theta, dtype=np.float64)
        return self._grad_from_mean_offset(theta, np.zeros_like(theta))

    def batch_grad(self, theta, idx) -> np.ndarray:
        """Mean gradient of the examples idx (..., S) at theta (..., D)."""
        theta = np.asarray(theta, dtype=np.float64)
        return self._grad_from_mean_offset(theta, self.offsets[idx].mean(axis=-2))

    def example_grads(self, theta) -> np.ndarray:
        """Per-example gradients (N, D) at theta (D,)."""
        theta = np.asarray(theta, dtype=np.float64)
        return self._grad_from_mean_offset(np.broadcast_to(theta, (self.N, self.D)), self.offsets)

    def hessian(self, theta) -> np.ndarray:
        """Exact Hessian of the full loss, (..., D, D)."""
        theta = np.asarray(theta, dtype=np.float64)
        Ks = self.Ks
        _, da, d2a = self.sharpness(theta[..., Ks])
        h = self.curvatures(theta)
        H = np.zeros(theta.shape + (self.D,))
        idx = np.arange(self.D)
        H[..., idx, idx] = h
        u = theta[..., :Ks]
        cross = da[..., None] * self.c * u
        H[..., :Ks, Ks] = cross
        H[..., Ks, :Ks] = cross
        H[..., Ks, Ks] += 0.5 * d2a * np.sum(self.c * u * u, axis=-1)
        return H

    def start(self, z1: float | None = None) -> np.ndarray:
        """The default start: u = 0.1, z_1 = z1 (default: the flat side, mid - 3 width), other z = 0."""
        theta = np.zeros(self.D)
        theta[: self.Ks] = 0.1
        theta[self.Ks] = self.mid - 3 * self.width if z1 is None else z1
        return theta


def make_valley(
    D: int = 20,
    Ks: int = 2,
    N: int = 100,
    *,
    a_lo: float = 1.0,
    a_hi: float = 100.0,
    mid: float = 0.0,
    width: float = 0.5,
    z1_target: float = 1.5,
    sharp_noise: float = 0.3,
    flat_noise: float = 1.0,
    seed: int = 0,
) -> SharpValley:
    """A SharpValley with c = geometric 1 ... 0.5, b = geometric 0.5 ... 0.05 (b_z1 = 0.5), z* ~ N(0, 0.5^2).

    Offsets: N(0, sharp_noise^2) on the sharp block, N(0, flat_noise^2) on the flat block, centred.
    """
    check_int_range(Ks, "Ks (sharp directions)", 1)
    check_int_range(D, "D", Ks + 1)
    check_int_range(N, "N", 2, 2**31)
    check_fits(3.0 * N * D * F64 + 4.0 * D * D * F64, f"a sharpening valley of N = {N} examples in D = {D}")
    sharp_noise = check_range(sharp_noise, "sharp_noise", 0, np.inf)
    flat_noise = check_range(flat_noise, "flat_noise", 0, np.inf)
    z1_target = check_finite(z1_target, "z1_target")
    rng = np.random.default_rng(check_int_range(seed, "seed", 0, 2**63 - 1))
    Df = D - Ks
    c = 0.5 ** (np.arange(Ks) / max(Ks - 1, 1)) if Ks > 1 else np.ones(1)
    b = 0.5 * 0.1 ** (np.arange(Df) / max(Df - 1, 1))
    target = np.zeros(D)
    target[Ks] = z1_target
    target[Ks + 1 :] = 0.5 * rng.standard_normal(Df - 1)
    offsets = np.concatenate([sharp_noise * rng.standard_normal((N, Ks)), flat_noise * rng.standard_normal((N, Df))], 1)
    return SharpValley(offsets, target, c, b, a_lo, a_hi, mid, width)


def quadratic_valley(h, offsets, target=None) -> SharpValley:
    """A pure quadratic (a_lo = a_hi = 1): curvatures h = (sharp c..., flat b...), first coordinate sharp."""
    h = np.asarray(h, dtype=np.float64)
    return SharpValley(offsets, np.zeros(h.size) if target is None else target, h[:1], h[1:], 1.0, 1.0)
