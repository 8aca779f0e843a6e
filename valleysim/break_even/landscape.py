"""The break-even toy's landscape: k sharp coordinates with curvatures a0_j exp(r_j z), per-example spread sigma."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from valleysim.errors import (
    SCALE_LIMIT,
    UserInputError,
    check_array,
    check_finite,
    check_instance,
    check_int_range,
    check_positive,
    check_range,
)
from valleysim.memory import F64, check_fits

MAX_SPREAD = 1e3  # sigma, offset, rates at most 1e3 (sigma^2 c and exp(r z) stay finite)


# --------------------------------------------------------------------------------------------- landscape


def _parameters(a0, rates, sigma, offset, beta) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    """The landscape's parameters checked, as float arrays (k,) and floats; UserInputError naming the bad one."""
    a0, rates = check_array(a0, "a0"), check_array(rates, "rates")
    a0, rates = np.atleast_1d(a0), np.atleast_1d(rates)
    if a0.ndim != 1 or a0.size < 1 or a0.shape != rates.shape:
        raise UserInputError(
            f"a0 and rates must be lists of equal length >= 1; got shapes {a0.shape} and {rates.shape}"
        )
    for name, v, lo, hi in (("a0", a0, 1 / SCALE_LIMIT, SCALE_LIMIT), ("rates", rates, 0, MAX_SPREAD)):
        bad = np.flatnonzero((v < lo) | (v > hi))
        if bad.size:
            check_range(v[bad[0]], f"{name}[{bad[0]}]", lo, hi)  # raises, naming the first entry out of range
    sigma = check_range(sigma, "sigma", 0, MAX_SPREAD)
    offset = check_range(offset, "offset", 0, MAX_SPREAD)
    beta = check_range(beta, "beta", 0, MAX_SPREAD)
    if 0 < beta < 1 / SCALE_LIMIT:
        raise UserInputError(f"beta must be 0 or in [1e-100, {MAX_SPREAD:g}]; got {beta!r}")
    return a0, rates, sigma, offset, beta


@dataclass(frozen=True)
class SharpeningLandscape:
    """k sharp directions with curvatures a0_j exp(r_j z), per-example spread sigma, drive beta (see module doc)."""

    a0: np.ndarray  # (k,)
    rates: np.ndarray  # (k,)
    sigma: float
    offset: float
    beta: float
    f: np.ndarray = field(repr=False)  # (N, k)  1 + sigma xi_ij
    b: np.ndarray = field(repr=False)  # (N, k)  offsets, sum_i f_ij b_ij = 0

    def __post_init__(self):
        """Every field checked (a kernel indexes f and b by the length of a0: their shapes must agree)."""
        a0, rates, sigma, offset, beta = _parameters(self.a0, self.rates, self.sigma, self.offset, self.beta)
        k = a0.size
        f = check_array(self.f, "f", ("N", k))
        b = check_array(self.b, "b", (f.shape[0], k))
        check_int_range(f.shape[0], "the number of examples N (rows of f and b)", 2, 2**31)
        for name, value in (("a0", a0), ("rates", rates), ("f", f), ("b", b)):
            object.__setattr__(self, name, np.ascontiguousarray(value))
        for name, value in (("sigma", sigma), ("offset", offset), ("beta", beta)):
            object.__setattr__(self, name, value)

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
    def make(
        cls,
        n_examples: int = 64,
        sigma: float = 1.0,
        offset: float = 0.001,
        beta: float = 0.001,
        a0=(1.0,),
        rates=(1.0,),
        landscape_seed: int = 0,
    ) -> "SharpeningLandscape":
        N = check_int_range(n_examples, "n_examples N", 2, 2**31)
        a0, rates, sigma, offset, beta = _parameters(a0, rates, sigma, offset, beta)
        check_fits(4.0 * N * a0.size * F64, f"a landscape of {N} examples x {a0.size} directions")
        rng = np.random.default_rng(check_int_range(landscape_seed, "landscape_seed", 0))
        xi = rng.standard_normal((N, a0.size))
        xi -= xi.mean(axis=0)
        xi /= xi.std(axis=0)
        f = 1.0 + sigma * xi
        b = offset * rng.standard_normal((N, a0.size))
        b -= f * (np.sum(f * b, axis=0) / np.sum(f * f, axis=0))
        return cls(a0, rates, sigma, offset, beta, f, b)

    def curvatures(self, z) -> np.ndarray:
        """(..., k) a_j(z) = a0_j exp(r_j z): the x-block Hessian eigenvalues."""
        z = np.asarray(z, dtype=float)
        return self.a0 * np.exp(self.rates * z[..., None])

    def direction(self, j: int) -> int:
        """``j`` checked as the index of a sharp direction, 0..k-1."""
        return check_int_range(j, "direction j", 0, self.k - 1)

    def z_of_curvature(self, lam: float, j: int = 0) -> float:
        """z at which a_j(z) = lam (rates[j] > 0)."""
        j, lam = self.direction(j), check_positive(lam, "curvature lam")
        if self.rates[j] == 0:
            raise UserInputError(f"rates[{j}] is 0: a_{j}(z) = a0[{j}] for every z")
        return math.log(lam / self.a0[j]) / self.rates[j]

    def _state(self, x, z) -> tuple[np.ndarray, np.ndarray]:
        """(x (..., k), z (...)) as float arrays; UserInputError when x is not k wide."""
        x, z = np.asarray(x, float), np.asarray(z, float)
        if x.shape[-1:] != (self.k,):
            raise UserInputError(f"x must have shape (..., {self.k}) (one entry per sharp direction); got {x.shape}")
        return x, z

    def loss(self, x, z) -> np.ndarray:
        x, z = self._state(x, z)
        return np.sum(0.5 * self.curvatures(z) * (x**2 + self.B), axis=-1) - self.beta * z

    def hessian(self, x, z) -> np.ndarray:
        """(..., k+1, k+1) full-batch Hessian in (x_1..x_k, z)."""
        x, z = self._state(x, z)
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
        x, z = self._state(x, z)
        a = self.curvatures(z)[..., None, :]  # (..., 1, k)
        d = x[..., None, :] - self.b  # (..., N, k)
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
        j = self.direction(j)
        a = float(self.curvatures(check_finite(z, "z"))[j])
        return float(np.mean((a * self.f[:, j] * self.b[:, j]) ** 2))


def check_landscape(land) -> SharpeningLandscape:
    """``land`` must be a SharpeningLandscape."""
    check_instance(land, SharpeningLandscape, "land", "from SharpeningLandscape.make")
    return land
