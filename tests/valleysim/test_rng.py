"""valleysim.rng: per-stream reproducibility and the ziggurat normal's distribution.

Truths: the standard normal CDF (Kolmogorov-Smirnov), its moments within k
standard errors, the tail beyond the base layer's edge r (the slow path) against
1 - Phi(r), and the ziggurat's defining property (equal layer areas).
"""

import numpy as np
from numba import njit
from scipy import stats

from valleysim.rng import _ZIG_X, normal, seed_state

N = 2_000_000


@njit
def _draw(n, seed, stream):
    state = seed_state(seed, stream)
    out = np.empty(n)
    for k in range(n):
        out[k] = normal(state)
    return out


def test_ziggurat_layers_have_equal_areas():
    X = _ZIG_X
    f = np.exp(-0.5 * X**2)
    r, v = X[1], X[0] * f[1]
    tail = np.sqrt(2 * np.pi) * stats.norm.sf(r)  # integral of exp(-x^2/2) beyond r
    np.testing.assert_allclose(r * f[1] + tail, v, rtol=1e-12)  # base layer
    areas = X[1:-1] * (f[2:] - f[1:-1])  # layers 1 .. n-1
    np.testing.assert_allclose(areas, v, rtol=1e-9)
    assert X[-1] == 0.0 and np.all(np.diff(X) < 0)


def test_normal_matches_the_standard_normal():
    x = _draw(N, 3, 0)
    assert stats.kstest(x, "norm").pvalue > 1e-3
    k = 4.5
    assert abs(x.mean()) < k / np.sqrt(N)
    assert abs(x.var() - 1) < k * np.sqrt(2 / N)
    assert abs(np.mean(x**4) - 3) < k * np.sqrt(96 / N)  # Var x^4 = 105 - 9
    # the tail path: P(|x| > r) = 2 (1 - Phi(r))
    p = 2 * stats.norm.sf(_ZIG_X[1])
    assert abs(np.mean(np.abs(x) > _ZIG_X[1]) - p) < k * np.sqrt(p * (1 - p) / N)
    assert abs(np.mean(x > 0) - 0.5) < k * np.sqrt(0.25 / N)  # the sign bit


def test_streams_are_reproducible_and_distinct():
    a, b = _draw(1000, 5, 0), _draw(1000, 5, 0)
    assert np.array_equal(a, b)
    c, d = _draw(1000, 5, 1), _draw(1000, 6, 0)
    assert abs(np.corrcoef(a, c)[0, 1]) < 0.15 and abs(np.corrcoef(a, d)[0, 1]) < 0.15
