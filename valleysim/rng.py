"""Counter-seeded per-trajectory random numbers for numba kernels.

numba's own ``np.random`` keeps one state per thread, so results would depend
on the thread count. Instead every trajectory r owns a xoroshiro128+ state
seeded by splitmix64 from (seed, r): the same seed gives the same numbers for
any number of threads.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, uint64

_GOLDEN = uint64(0x9E3779B97F4A7C15)
_MASK32 = uint64(0xFFFFFFFF)


@njit(inline="always")
def _splitmix64(x):
    z = x + _GOLDEN
    z = (z ^ (z >> uint64(30))) * uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> uint64(27))) * uint64(0x94D049BB133111EB)
    return z ^ (z >> uint64(31))


@njit
def seed_state(seed, stream):
    """xoroshiro128+ state (2,) uint64 for trajectory ``stream`` of ``seed``."""
    state = np.empty(2, dtype=np.uint64)
    x = _splitmix64(uint64(seed) ^ (uint64(stream) * _GOLDEN))
    state[0] = _splitmix64(x)
    state[1] = _splitmix64(state[0])
    return state


@njit(inline="always")
def _rotl(x, k):
    return (x << uint64(k)) | (x >> uint64(64 - k))


@njit(inline="always")
def next_u64(state):
    """Advance xoroshiro128+ and return 64 random bits."""
    s0 = state[0]
    s1 = state[1]
    result = s0 + s1
    s1 ^= s0
    state[0] = _rotl(s0, 24) ^ s1 ^ (s1 << uint64(16))
    state[1] = _rotl(s1, 37)
    return result


@njit(inline="always")
def bounded(state, n):
    """Uniform integer in [0, n), n < 2**32, exact (Lemire's multiply-shift with rejection)."""
    n64 = uint64(n)
    threshold = (uint64(0x100000000) - n64) % n64
    while True:
        m = (next_u64(state) >> uint64(32)) * n64  # high 32 bits: xoroshiro128+'s strong ones
        if (m & _MASK32) >= threshold:
            return np.int64(m >> uint64(32))


@njit(inline="always")
def uniform(state):
    """Uniform double in [0, 1) from the top 53 bits."""
    return np.float64(next_u64(state) >> uint64(11)) * (1.0 / 9007199254740992.0)


# --- standard normals: the ziggurat of Marsaglia & Tsang (2000), 256 layers, in float64 -------------

_ZIG_LAYERS = 256


def _ziggurat_tables(n: int = _ZIG_LAYERS) -> tuple[np.ndarray, np.ndarray]:
    """Layer edges X (n + 1,) and heights F = exp(-X^2 / 2) (n + 1,) of the half-normal ziggurat.

    n layers of equal area v under f(x) = exp(-x^2/2): the base (the rectangle
    [0, r] x [0, f(r)] plus the tail beyond r) has virtual width X[0] = v / f(r);
    X[1] = r and X[i+1] = f^-1(f(X[i]) + v / X[i]); the top edge X[n] = 0. r is
    the root that makes the top layer's area come out as v.
    """
    from scipy.optimize import brentq
    from scipy.special import erfc

    f = lambda x: np.exp(-0.5 * x * x)  # noqa: E731

    def edges(r):
        v = r * f(r) + np.sqrt(np.pi / 2) * erfc(r / np.sqrt(2))
        X = [v / f(r), r]
        for _ in range(n - 2):
            y = f(X[-1]) + v / X[-1]
            if y >= 1.0:
                return X, v, -1.0  # r too small: the layers overshoot the peak
            X.append(np.sqrt(-2.0 * np.log(y)))
        return X, v, X[-1] * (1.0 - f(X[-1])) - v  # top layer area minus v

    r = brentq(lambda r: edges(r)[2], 3.0, 4.0, xtol=1e-15)
    X = np.array(edges(r)[0] + [0.0])
    return X, np.where(np.arange(n + 1) == 0, 0.0, f(X))


_ZIG_X, _ZIG_F = _ziggurat_tables()
_ZIG_R = float(_ZIG_X[1])


@njit(inline="always")
def normal(state):
    """One standard normal from the stream (ziggurat; one 64-bit draw 99% of the time).

    Bits 3-10 pick the layer, bit 11 the sign, bits 12-63 the position (the
    lowest bits of xoroshiro128+ are its weakest and are not used).
    """
    while True:
        bits = next_u64(state)
        i = np.int64((bits >> uint64(3)) & uint64(255))
        z = np.float64(bits >> uint64(12)) * (1.0 / 4503599627370496.0) * _ZIG_X[i]
        sign = 1.0 - 2.0 * np.float64((bits >> uint64(11)) & uint64(1))  # branch-free: the sign is a coin
        if z < _ZIG_X[i + 1]:
            return sign * z  # inside the layer's rectangle below the curve
        if i == 0:  # the tail beyond r (Marsaglia 1964)
            while True:
                x = -math.log(1.0 - uniform(state)) / _ZIG_R
                y = -math.log(1.0 - uniform(state))
                if 2.0 * y > x * x:
                    return sign * (_ZIG_R + x)
        if _ZIG_F[i] + uniform(state) * (_ZIG_F[i + 1] - _ZIG_F[i]) < math.exp(-0.5 * z * z):
            return sign * z  # in the wedge, under the curve
