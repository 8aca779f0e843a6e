"""The walk study: the per-epoch tables on hand-made rows, the noise calibration's arithmetic, and a tiny
end-to-end run that resumes."""

import math
import shutil

import numpy as np
import pytest

from dnn import walk_study as ws
from dnn.config import TrainConfig
from dnn.study import run_dir
from valleysim.theory import variance_factor

from tiny_nets import synthetic_images


def _row(step, barrier, height, cos, dist=0.0, loss=1.0, size=0.0):
    return dict(
        step=step,
        reason="every",
        barrier=barrier,
        height=height,
        cos_consecutive=cos,
        distance_from_init=dist,
        measure_loss=loss,
        loss_prev=loss,
        barrier_size=size,
    )


def test_summarise_run_by_hand():
    cfg = TrainConfig(model="mlp", lr=0.1, batch=4)  # n = 8: two steps an epoch
    rows = [_row(0, math.nan, math.nan, math.nan)]
    rows += [
        _row(1, 0.0, 0.1, math.nan),
        _row(2, 1.0, 0.3, -0.5, size=0.2, loss=2.0),
        _row(3, 0.0, 0.2, -0.2),
        _row(4, 0.0, 0.4, 0.0),
        _row(5, 1.0, 0.5, 0.4, dist=7.0, loss=0.5, size=0.1),
    ]
    s = ws.summarise_run(rows, cfg, 8, (1, 2, 3))
    assert (s["steps"], s["S"], s["eta"]) == (5, 4, 0.1)
    assert (s["barriers_epoch1"], s["barrier_fraction_epoch1"], s["height_epoch1"]) == (1.0, 0.5, pytest.approx(0.2))
    assert s["cos_epoch1"] == -0.5  # the first step has no previous gradient
    assert (s["barriers_epoch2"], s["height_epoch2"], s["cos_epoch2"]) == (0.0, pytest.approx(0.3), -0.1)
    assert math.isnan(s["barriers_epoch3"]) and math.isnan(s["height_epoch3"])  # epoch 3 incomplete (step 5 only)
    assert s["barrier_fraction"] == pytest.approx(2 / 5) and s["mean_height"] == pytest.approx(0.3)
    assert s["barrier_size_rel"] == pytest.approx(np.mean([0.2 / 2.0, 0.1 / 0.5]))
    assert s["mean_cos"] == pytest.approx(np.mean([-0.2, 0.0, 0.4]))  # steps > 2.5
    assert (s["final_distance"], s["final_loss"]) == (7.0, 0.5)
    gd = ws.summarise_run(rows, TrainConfig(model="mlp", optimizer="gd", lr=0.1), 8, (1, 2))
    assert gd["S"] == 8 and gd["barriers_epoch2"] == 1.0  # GD: one step an epoch


def test_points_grid_and_gd_noise():
    p = ws.PRESETS["quick"]
    pts = ws.points(p, noise_std=0.01)
    labels = [q.label for q in pts]
    assert labels == [
        "sgd_lr0.02_S128",
        "sgd_lr0.05_S32",
        "sgd_lr0.05_S128",
        "sgd_lr0.05_S512",
        "sgd_lr0.1_S128",
        "sgd_lr0.05_S32_ep2",
        "sgd_lr0.05_S128_ep2",
        "sgd_lr0.05_S512_ep2",
        "gd",
        "gd_noise",
    ]
    shared = pts[labels.index("sgd_lr0.05_S128")]
    assert shared.knobs == {"learning_rate": 0.05, "batch_size": 1 / 128}
    assert pts[-1].cfg.noise_std == 0.01 and pts[-1].cfg.optimizer == "gd-noise" and pts[-1].knobs == {}
    fixed_epochs = [q for q in pts if "batch_size_epochs" in q.knobs]
    assert [q.cfg.batch for q in fixed_epochs] == [32, 128, 512]
    assert all(q.cfg.epochs == 2 and q.cfg.max_steps is None for q in fixed_epochs)
    fixed_steps = [q for q in pts if q not in fixed_epochs]
    assert all(q.cfg.max_steps == p.steps for q in fixed_steps)
    assert all(q.cfg.probe_every == 1 and q.cfg.probes == ("walk",) for q in pts)


def test_noise_calibration_is_sgd_noise_power():
    x, y = synthetic_images(40)
    p = ws.PRESETS["smoke"]
    cal = ws.sgd_noise_std(p, x, y)
    assert cal["c"] == variance_factor(p.noise_batch, 40)
    assert cal["noise_std"] ** 2 * cal["P"] == pytest.approx(cal["c"] * cal["trace_K"], rel=1e-12)
    assert cal["trace_K"] > 0


def test_a_tiny_walk_study_end_to_end_and_resumed(tmp_path):
    x, y = synthetic_images(40)
    tx, ty = synthetic_images(10, seed=9)
    preset = ws.PRESETS["smoke"]
    s = ws.run(preset, tmp_path, x, y, test=(tx, ty), progress=False)
    assert {r["label"] for r in s["per_run"]} == {
        "sgd_lr0.02_S8",
        "sgd_lr0.05_S4",
        "sgd_lr0.05_S8",
        "sgd_lr0.05_S4_ep1",
        "sgd_lr0.05_S8_ep1",
        "gd",
        "gd_noise",
    }
    # one epoch of the 40 images: 10 steps at S = 4, 5 at S = 8 (the fixed-epoch grid)
    steps = {r["label"]: r["steps"] for r in s["per_run"]}
    assert steps.pop("sgd_lr0.05_S4_ep1") == 10 and steps.pop("sgd_lr0.05_S8_ep1") == 5
    assert "batch_size_epochs" in {o["grid"] for o in s["orderings"]}
    for r in s["per_run"]:
        if r["label"].endswith("_ep1"):
            continue
        assert r["steps"] == 6 and math.isfinite(r["mean_height"]) and math.isfinite(r["final_distance"])
    assert s["noise_calibration"]["noise_std"] > 0
    for f in ("per_run.csv", "across_seeds.csv", "orderings.csv", "summary.json", "report.md", "walk_study.png"):
        assert (tmp_path / f).stat().st_size > 0
    assert "Walk study, preset `smoke`" in (tmp_path / "report.md").read_text()
    shutil.rmtree(run_dir(tmp_path, "gd_noise", 0))
    again = ws.run(preset, tmp_path, x, y, test=(tx, ty), progress=False)
    assert again["per_run"] == s["per_run"]
