"""Smoke tests of the valley figure scripts (figures/valley_*.py): each runs with --quick and writes PNG + JSON.

Runtimes with a warm kernel cache: 3-7 s each; with a cold one the exp-toy script compiles two kernels
(~25 s), hence marked slow.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

FIGURES = Path(__file__).resolve().parents[1] / "figures"


def run_script(name: str, out: Path) -> dict:
    res = subprocess.run([sys.executable, str(FIGURES / f"{name}.py"), "--quick", "--out", str(out), "--seed", "3"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    png, js = out / f"{name}.png", out / f"{name}.json"
    assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return json.loads(js.read_text())


def finite(*xs) -> bool:
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def test_trace_eta2(tmp_path):
    d = run_script("valley_trace_eta2", tmp_path)
    f = d["fits"]
    assert finite(f["wls_eta2_eta3"]["a"], f["wls_eta2_eta3"]["a_se"], f["predicted_slope_leading_start"],
                  f["wls_origin_corrected"]["slope"], f["wls_origin_corrected"]["slope_se"])
    assert all(finite(p["dT"], p["dT_se"], p["dT_pred_exact"]) for p in d["points"])
    # loose: the slope has the predicted sign and size (the quick run has R = 256)
    assert 0.8 < f["wls_origin_corrected"]["slope"] / f["predicted_slope_leading_start"] < 1.2


@pytest.mark.slow
def test_trace_vs_logdet(tmp_path):
    d = run_script("valley_trace_vs_logdet", tmp_path)
    for entry in d["inits"].values():
        for noise in ("sgd", "isotropic"):
            e = entry["noises"][noise]
            assert e["completed"] > 0 and finite(*e["trace"]["mean"], *e["logdet"]["mean"])
        assert finite(entry["claim"]["dT_per_dlogdet"]["sgd"], entry["claim"]["dT_per_dlogdet"]["isotropic"])
    assert all(finite(r["dtrace"], r["dlogdet"], r["dtrace_pred_path"]) for r in d["table"])


def test_negative_eigenvalues(tmp_path):
    d = run_script("valley_negative_eigenvalues", tmp_path)
    for land in d["landscapes"].values():
        f = land["fit"]
        assert finite(f["wls_origin"]["slope"], f["wls_origin"]["slope_se"], f["predicted_slope_mean"],
                      f["ratio_over_pred_vs_loss"]["a"], f["ratio_over_pred_vs_loss"]["a_se"])
        for p in land["points"]:
            assert finite(p["loss"], p["neg"], p["ratio"], p["ratio_se"], p["pred"])
            assert p["neg"] < 0 < p["loss"]
