"""valleysim.stats against closed forms and Monte Carlo: one mean_se meaning, cluster-robust slope SEs."""

import math

import numpy as np
import pytest

from valleysim.stats import mean_se, slope_through_origin, t_interval


def test_mean_se_has_one_meaning():
    assert mean_se([1.0, 2.0, 3.0]) == (2.0, pytest.approx(1 / math.sqrt(3)))
    m, se = mean_se([5.0])
    assert m == 5.0 and math.isnan(se)  # one sample: no standard error (never 0)
    assert all(math.isnan(v) for v in mean_se([]))
    assert all(math.isnan(v) for v in mean_se([np.nan, np.inf]))
    assert mean_se([1.0, np.nan, 3.0, -np.inf]) == (2.0, 1.0)  # over the finite values
    assert mean_se(np.ones((2, 3)))[0] == 1.0


def test_mean_se_along_an_axis_is_the_same_meaning_per_slice():
    a = np.array([[1.0, 4.0, np.nan, 7.0], [3.0, np.inf, np.nan, 2.0], [5.0, 6.0, np.nan, np.nan]])
    mean, se = mean_se(a, axis=0)
    # by hand, column by column: (1, 3, 5) -> 3 +- 2/sqrt(3); (4, 6) -> 5 +- 1; () -> nan; (7, 2) -> 4.5 +- 2.5
    np.testing.assert_allclose(mean, [3.0, 5.0, np.nan, 4.5], rtol=1e-15)
    np.testing.assert_allclose(se, [2 / math.sqrt(3), 1.0, np.nan, 2.5], rtol=1e-12)
    m1, s1 = mean_se(a[:, :1], axis=1)  # one sample per row: no standard error
    assert list(m1) == [1.0, 3.0, 5.0] and np.all(np.isnan(s1))
    finite = np.random.default_rng(1).normal(size=(50, 3))
    m, s = mean_se(finite, axis=0)
    for j in range(3):
        assert (m[j], s[j]) == pytest.approx(mean_se(finite[:, j]), rel=1e-12)


def test_slope_matches_least_squares_and_naive_se_formula():
    rng = np.random.default_rng(0)
    x = rng.uniform(1, 2, 30)
    y = 3 * x + rng.normal(0, 0.1, 30)
    fit = slope_through_origin(x, y, np.arange(30))  # singleton clusters
    b, res, *_ = np.linalg.lstsq(x[:, None], y, rcond=None)
    assert fit["slope"] == pytest.approx(b[0], rel=1e-12)
    assert fit["slope_se_naive"] == pytest.approx(math.sqrt(res[0] / 29 / (x @ x)), rel=1e-12)
    assert fit["n_clusters"] == 30


def test_clustered_se_covers_the_spread_across_replications_where_the_naive_one_does_not():
    """Five runs of three probes each, with a per-run slope offset (correlated probes): over many
    replications the cluster-robust SE tracks the true sampling spread of the slope; the naive SE is
    several times too small."""
    rng = np.random.default_rng(1)
    G, m, reps = 5, 3, 4000
    labels = np.repeat(np.arange(G), m)
    slopes, robust, naive = [], [], []
    for _ in range(reps):
        x = rng.uniform(0.5, 1.5, G * m)
        run_effect = rng.normal(0, 0.5, G)[labels]  # each run has its own slope offset
        y = (-7.5 + run_effect) * x + rng.normal(0, 0.05, G * m)
        f = slope_through_origin(x, y, labels)
        slopes.append(f["slope"])
        robust.append(f["slope_se"])
        naive.append(f["slope_se_naive"])
    sd = float(np.std(slopes))
    rms_robust, rms_naive = float(np.sqrt(np.mean(np.square(robust)))), float(np.sqrt(np.mean(np.square(naive))))
    assert 0.85 < rms_robust / sd < 1.1  # CR1 with G = 5: nearly unbiased in variance
    assert rms_naive / sd < 0.75


def test_one_cluster_has_no_clustered_se():
    f = slope_through_origin([1.0, 2.0, 3.0], [1.0, 2.1, 2.9], ["a", "a", "a"])
    assert math.isnan(f["slope_se"]) and f["slope_se_naive"] > 0
    with pytest.raises(ValueError, match="one length"):
        slope_through_origin([1.0, 2.0], [1.0], ["a", "a"])


def test_t_interval_by_hand():
    ci = t_interval([1.0, 2.0, 6.0, np.nan])  # n = 3, mean 3, sd sqrt(7), t_{2, 0.975} = 4.302652729...
    assert ci["n"] == 3 and ci["mean"] == 3.0 and ci["se"] == pytest.approx(math.sqrt(7 / 3))
    assert ci["hi"] - 3.0 == pytest.approx(4.302652729911275 * math.sqrt(7 / 3), rel=1e-10)
    assert ci["lo"] == pytest.approx(6.0 - ci["hi"])
    one = t_interval([2.0])
    assert one["mean"] == 2.0 and math.isnan(one["se"]) and math.isnan(one["lo"]) and math.isnan(one["hi"])
