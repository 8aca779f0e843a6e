"""Estimates from noisy runs with their standard errors: one meaning everywhere.

``mean_se``: the mean of the finite values and its standard error. A value is
non-finite only where a run diverged or a quantity is undefined; callers
report those counts next to the estimate.

``slope_through_origin``: y = b x by least squares, with a standard error that
treats observations from one run (a cluster) as correlated: the cluster-robust
(CR1) sandwich
    Var(b) = G / (G - 1) * sum_g (sum_{i in g} x_i e_i)^2 / (sum_i x_i^2)^2,
e_i = y_i - b x_i, G clusters; the naive SE (every point independent) is
returned beside it.

``t_interval``: mean, SE and the Student-t confidence interval over independent runs (seeds).
"""

from __future__ import annotations

import math

import numpy as np


def mean_se(values, axis: int | None = None):
    """(mean, standard error std(ddof=1) / sqrt(n)) over the n finite values.

    axis None: over all values, as floats; (nan, nan) when no value is finite, (mean, nan) when one
    is (a single sample has no standard error). With ``axis``: arrays of both along that axis, each
    over the finite values of its slice (the same rules per slice).
    """
    v = np.asarray(values, dtype=float)
    if axis is None:
        v = v.ravel()
        v = v[np.isfinite(v)]
        if v.size == 0:
            return math.nan, math.nan
        if v.size == 1:
            return float(v[0]), math.nan
        return float(v.mean()), float(v.std(ddof=1) / math.sqrt(v.size))
    ok = np.isfinite(v)
    if ok.all():
        n = v.shape[axis]
        se = v.std(axis=axis, ddof=1) / np.sqrt(n) if n > 1 else np.full(np.delete(v.shape, axis), np.nan)
        return v.mean(axis=axis), se
    n = ok.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, v, 0.0).sum(axis=axis) / n
        dev2 = np.where(ok, (v - np.expand_dims(mean, axis)) ** 2, 0.0).sum(axis=axis)
        se = np.where(n > 1, np.sqrt(dev2 / np.maximum(n - 1, 1)) / np.sqrt(n), np.nan)
    return np.where(n > 0, mean, np.nan), se


def t_interval(values, level: float = 0.95) -> dict:
    """{n, mean, se, lo, hi} over the n finite values of independent runs: mean +- t_{n-1} SE, the
    two-sided ``level`` Student-t interval (lo = hi = nan below two values)."""
    from scipy.stats import t as student_t

    mean, se = mean_se(values)
    n = int(np.isfinite(np.asarray(values, dtype=float)).sum())
    half = float(student_t.ppf(0.5 + level / 2, n - 1)) * se if n >= 2 else math.nan
    return {"n": n, "mean": mean, "se": se, "lo": mean - half, "hi": mean + half}


def slope_through_origin(x, y, clusters) -> dict:
    """Least-squares b in y = b x with naive and cluster-robust SEs (see the module docstring).

    x, y: (n,) finite; clusters: (n,) labels (the run each point comes from).
    Returns {slope, slope_se (cluster-robust; nan with one cluster), slope_se_naive, n, n_clusters}.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    labels = np.asarray(clusters)
    if x.shape != y.shape or x.ndim != 1 or labels.shape != x.shape:
        raise ValueError(f"x, y, clusters must be (n,) arrays of one length; got {x.shape}, {y.shape}, {labels.shape}")
    n = x.size
    sxx = float(x @ x)
    if n < 2 or sxx == 0:
        return {
            "slope": math.nan,
            "slope_se": math.nan,
            "slope_se_naive": math.nan,
            "n": n,
            "n_clusters": int(np.unique(labels).size),
        }
    b = float(x @ y) / sxx
    e = y - b * x
    naive = math.sqrt(float(e @ e) / (n - 1) / sxx)
    groups = np.unique(labels)
    G = groups.size
    if G < 2:
        robust = math.nan
    else:
        score = np.array([float(x[labels == g] @ e[labels == g]) for g in groups])
        robust = math.sqrt(G / (G - 1) * float(score @ score)) / sxx
    return {"slope": b, "slope_se": robust, "slope_se_naive": naive, "n": n, "n_clusters": int(G)}
