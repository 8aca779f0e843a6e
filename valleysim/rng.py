"""Counter-seeded per-trajectory random numbers for numba kernels.

numba's own ``np.random`` keeps one state per thread, so results would depend
on the thread count. Instead every trajectory r owns a xoroshiro128+ state
seeded by splitmix64 from (seed, r): the same seed gives the same numbers for
any number of threads.
"""

from __future__ import annotations

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
