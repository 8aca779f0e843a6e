"""Smoke tests of the valley figure scripts (figures/valley_*.py): each runs with --quick and writes PNG + JSON.

Runtimes with a warm kernel cache: 3-7 s each; with a cold one the exp-toy script compiles two kernels
(~25 s), hence marked slow.
"""

from __future__ import annotations

import math

import pytest


def finite(*xs) -> bool:
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def test_trace_eta2(figure):
    d = figure("valley_trace_eta2", "--seed", 3)
    f = d["fits"]
    assert finite(
        f["wls_eta2_eta3"]["a"],
        f["wls_eta2_eta3"]["a_se"],
        f["predicted_slope_leading_start"],
        f["wls_origin_corrected"]["slope"],
        f["wls_origin_corrected"]["slope_se"],
    )
    assert all(finite(p["dT"], p["dT_se"], p["dT_pred_exact"]) for p in d["points"])
    # loose: the slope has the predicted sign and size (the quick run has R = 256)
    assert 0.8 < f["wls_origin_corrected"]["slope"] / f["predicted_slope_leading_start"] < 1.2


@pytest.mark.slow
def test_trace_vs_logdet(figure):
    d = figure("valley_trace_vs_logdet", "--seed", 3)
    for entry in d["inits"].values():
        for noise in ("sgd", "isotropic"):
            e = entry["noises"][noise]
            assert e["completed"] > 0 and finite(*e["trace"]["mean"], *e["logdet"]["mean"])
        assert finite(entry["claim"]["dT_per_dlogdet"]["sgd"], entry["claim"]["dT_per_dlogdet"]["isotropic"])
    assert all(finite(r["dtrace"], r["dlogdet"], r["dtrace_pred_path"]) for r in d["table"])


def test_negative_eigenvalues(figure):
    d = figure("valley_negative_eigenvalues", "--seed", 3)
    for land in d["landscapes"].values():
        f = land["fit"]
        assert finite(
            f["wls_origin"]["slope"],
            f["wls_origin"]["slope_se"],
            f["predicted_slope_mean"],
            f["ratio_over_pred_vs_loss"]["a"],
            f["ratio_over_pred_vs_loss"]["a_se"],
        )
        for p in land["points"]:
            assert finite(p["loss"], p["neg"], p["ratio"], p["ratio_se"], p["pred"])
            assert p["neg"] < 0 < p["loss"]


def test_trace_eta2_on_worker_processes_equals_in_process(figure):
    """Every learning rate one task on 2 worker processes (``--executor local --workers 2``): the same
    points and fits as in this process, each point's seed fixed by its position."""
    here = figure("valley_trace_eta2", "--seed", 3)
    there = figure("valley_trace_eta2", "--seed", 3, "--executor", "local", "--workers", "2")
    assert there["points"] == here["points"] and there["fits"] == here["fits"]
