"""The sharpest-directions study: the per-run arithmetic on hand-made rows, and a tiny end-to-end run."""

import math
import shutil

import numpy as np
import pytest

from dnn import sharpest_study as ss
from dnn.config import TrainConfig
from dnn.study import run_dir

from tiny_nets import synthetic_images


def _row(step, lam1, lam2, test_acc, frob, dist, loss, changes, quads, cross):
    r = dict(
        step=step,
        reason="epoch",
        lambda_max=lam1,
        lambda_H_2=lam2,
        test_acc=test_acc,
        frobenius_hessian=frob,
        distance_from_init=dist,
        measure_loss=loss,
        alpha_cross_quad=cross,
    )
    for a, c, q in zip(ss.ALPHAS, changes, quads):
        r[f"loss_change_{ss.alpha_key(a)}"] = c
        r[f"loss_change_quad_{ss.alpha_key(a)}"] = q
    return r


def test_summarise_run_by_hand():
    cfg = TrainConfig(model="mlp", optimizer="nsgd", lr=0.1, nsgd_gamma=0.5, nsgd_k=1, top_k=2, batch=4)
    rows = [
        _row(0, 5.0, 1.0, 0.1, 9.0, 0.0, 2.0, [0.0] * 5, [0.0] * 5, math.nan),  # step 0: not in the means
        _row(10, 30.0, 15.0, 0.6, 40.0, 3.0, 1.0, [-1, -1, 1, 1, 1], [-1, -1, -1, 1, 1], 1.5),
        _row(20, 20.0, 25.0, 0.4, 30.0, 4.0, 0.5, [-2, -1, -1, 2, 3], [-2, -1, -1, 1, 4], 2.5),
        dict(step=21, reason="diverged", diverged=21),
    ]
    s = ss.summarise_run(rows, cfg)
    assert (s["eta"], s["gamma"], s["steps"], s["diverged"]) == (0.1, 0.5, 20, 1.0)
    assert (s["edge_top"], s["edge_rest"]) == pytest.approx((40.0, 20.0))  # 2/(gamma eta), 2/eta
    assert (s["max_lambda_max"], s["final_lambda_max"], s["max_lambda_K1"]) == (30.0, 20.0, 25.0)
    assert s["max_lambda_max_over_edge_top"] == pytest.approx(30 / 40)
    assert s["max_lambda_K1_over_edge_rest"] == pytest.approx(25 / 20)
    assert s["loss_change_a0.25"] == pytest.approx(-1.5) and s["loss_change_quad_a4"] == pytest.approx(2.5)
    assert s["loss_change_pct_a0.25"] == pytest.approx(np.mean([100 * -1 / 1.0, 100 * -2 / 0.5]))
    assert s["sign_agreement_quad"] == pytest.approx(9 / 10)  # alpha = 1 at step 10 disagrees
    assert s["alpha_cross_quad"] == pytest.approx(2.0)
    # best = the probe with the best test accuracy (step 10)
    assert (s["best_test_acc"], s["best_frobenius"], s["best_distance_from_init"]) == (0.6, 40.0, 3.0)
    assert (s["final_test_acc"], s["final_frobenius"], s["final_loss"]) == (0.4, 30.0, 0.5)


def test_sgd_points_have_gamma_one_and_nsgd_refreshes_once_per_epoch():
    p = ss.PRESETS["quick"]
    pts = ss.points(p, 5000)
    assert [q.label for q in pts] == [
        "sgd_lr0.01",
        "sgd_lr0.05",
        "sgd_lr0.1",
        "nsgd_g0.01",
        "nsgd_g0.1",
        "nsgd_g1",
        "nsgd_g5",
    ]
    for q in pts:
        assert q.cfg.top_k == p.nsgd_k + 1 and q.cfg.nsgd_every == 5000 // 128
    assert {q.cfg.optimizer for q in pts if "gamma" in q.knobs} == {"nsgd"}


def test_a_tiny_sharpest_study_end_to_end_and_resumed(tmp_path):
    x, y = synthetic_images(40)
    tx, ty = synthetic_images(10, seed=9)
    preset = ss.PRESETS["smoke"]
    s = ss.run(preset, tmp_path, x, y, test=(tx, ty), progress=False)
    assert {r["label"] for r in s["per_run"]} == {"sgd_lr0.02", "sgd_lr0.05", "nsgd_g0.1", "nsgd_g5"}
    for r in s["per_run"]:
        assert r["steps"] == 10 and math.isfinite(r["final_frobenius"]) and 0 <= r["final_test_acc"] <= 1
        assert math.isfinite(r["loss_change_a1"]) and math.isfinite(r["loss_change_quad_a1"])
    grids = {(o["grid"], o["quantity"]) for o in s["orderings"]}
    assert ("gamma", "final_loss") in grids and ("learning_rate", "final_loss") not in grids
    for f in ("per_run.csv", "across_seeds.csv", "orderings.csv", "summary.json", "report.md", "sharpest_study.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert "Sharpest-directions study, preset `smoke`" in (tmp_path / "report.md").read_text()
    shutil.rmtree(run_dir(tmp_path, "nsgd_g5", 1))
    again = ss.run(preset, tmp_path, x, y, test=(tx, ty), progress=False)
    assert again["per_run"] == s["per_run"]
