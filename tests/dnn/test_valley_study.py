"""The valley study: the smoothed-entropy floor, the per-run arithmetic on hand-made rows, and a tiny
end-to-end run (minimum, calibration, runs) that resumes."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dnn import valley_study as vs
from dnn.config import TrainConfig
from dnn.study import run_dir
from valleysim.errors import UserInputError

from tiny_nets import Payload, synthetic_images


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_floor_is_the_smoothed_cross_entropy_of_the_smoothed_target(eps):
    C = 10
    target = torch.full((1, C), eps / C, dtype=torch.float64)
    target[0, 3] += 1 - eps
    logits = torch.log(target.clamp_min(1e-300))  # the network that outputs the smoothed target
    got = float(F.cross_entropy(logits, torch.tensor([3]), label_smoothing=eps))
    assert vs.smoothed_entropy(eps, C) == pytest.approx(got, rel=1e-12, abs=1e-12)
    other = float(F.cross_entropy(torch.randn(1, C, dtype=torch.float64), torch.tensor([3]), label_smoothing=eps))
    assert other >= vs.smoothed_entropy(eps, C)


def _row(step, trace, lams, loss, neg, cos=0.5):
    r = dict(step=step, reason="every", trace_hessian=trace, measure_loss=loss, neg_eig_sum=neg, cos_HK=cos)
    r.update({f"lambda_H_{i + 1}": v for i, v in enumerate(lams)})
    return r


def test_summarise_run_by_hand():
    cfg = TrainConfig(model="mlp", lr=0.1, batch=5, top_k=2)
    floor = 0.5
    rows = [
        _row(0, 10.0, [4.0, 1.0], 0.5, -0.0),
        _row(10, 9.0, [4.0, math.e], 0.6, -1.0, cos=0.7),
        _row(20, 7.0, [2.0, 1e-9], 0.7, -2.0, cos=None),  # lambda_2 below 1e-6 lambda_1: left out of log det
    ]
    s = vs.summarise_run(rows, cfg, floor)
    assert s["trace_drift"] == pytest.approx(np.polyfit([0, 10, 20], [10, 9, 7], 1)[0])
    assert s["trace_drift_over_eta2"] == pytest.approx(s["trace_drift"] / 0.01)
    ld = [math.log(4), math.log(4) + 1, math.log(2)]
    assert s["logdet_drift"] == pytest.approx(np.polyfit([0, 10, 20], ld, 1)[0])
    assert (s["initial_trace"], s["final_trace"]) == (10.0, 7.0)
    assert s["mean_loss"] == pytest.approx(0.65) and s["excess_loss"] == pytest.approx(0.15)
    # R5 through the probes after step 0: (0.1, -1), (0.2, -2): w = -10, b = 0
    assert (s["r5_slope"], s["r5_intercept"]) == (pytest.approx(-10.0), pytest.approx(0.0, abs=1e-12))
    assert s["mean_cos_HK"] == pytest.approx(0.6)  # the None (NaN) probe left out
    assert math.isnan(s["mean_overlap_K_H"])


def test_a_tiny_valley_study_end_to_end_and_resumed(tmp_path):
    x, y = synthetic_images(40)
    test = synthetic_images(10, seed=9)
    preset = vs.PRESETS["smoke"]
    s = vs.run(preset, tmp_path, x, y, test=test, progress=False)
    assert {r["label"] for r in s["per_run"]} == {"sgd_lr0.02", "sgd_lr0.05", "gd", "gd_noise"}
    assert s["minimum"]["steps"] == preset.min_steps and (tmp_path / "minimum.pt").is_file()
    assert s["minimum"]["loss"] >= s["minimum"]["floor"]
    for r in s["per_run"]:
        assert r["steps"] == preset.steps and math.isfinite(r["trace_drift"]) and math.isfinite(r["mean_cos_HK"])
    # every run starts at the minimum: the same Tr H at step 0 whatever the point (same Hutchinson seed)
    first = {r["label"]: r["initial_trace"] for r in s["per_run"] if r["seed"] == 0}
    assert len({round(v, 6) for v in first.values()}) == 1
    files = ("per_run.csv", "orderings.csv", "summary.json", "report.md", "valley_study.png", "minimum.json")
    for f in (*files, "projected_path.png"):
        assert (tmp_path / f).stat().st_size > 0
    # the projected path of each SGD run: kept states 0, 2, 4, 6; the first is the minimum itself
    for r in s["per_run"]:
        assert ("path_points" in r) == r["label"].startswith("sgd")
    path = json.loads((tmp_path / "projected" / "sgd_lr0.05_seed0.json").read_text())
    first = path["points"][0]
    assert first["step"] == 0 and first["reached"] and first["gd_steps"] == 0
    assert {q["step"] for q in path["points"]} <= {0, 2, 4, 6} and len(path["points"]) >= 3
    assert all(math.isfinite(q["trace_hessian"]) and 0 <= q["test_acc"] <= 1 for q in path["points"])
    assert path["target"] == s["minimum"]["loss"] and path["threshold"] > path["target"]
    shutil.rmtree(run_dir(tmp_path, "gd", 1))
    again = vs.run(preset, tmp_path, x, y, test=test, progress=False)
    assert again["per_run"] == s["per_run"]
    # the files it reads back never run code, and a damaged one is one named error
    cal, minimum, marker = tmp_path / "noise_calibration.json", tmp_path / "minimum.pt", tmp_path / "MARKER"
    stored = {f: f.read_bytes() for f in (cal, minimum)}
    cal.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(UserInputError, match="noise_calibration.json is damaged"):
        vs.run(preset, tmp_path, x, y, test=test, progress=False)
    cal.unlink()
    torch.save({"w": Payload(marker)}, minimum)
    with pytest.raises(UserInputError, match="minimum.pt refused: it holds Python objects"):
        vs.run(preset, tmp_path, x, y, test=test, progress=False)
    for f, data in stored.items():
        f.write_bytes(data)
    for kept in (run_dir(tmp_path, "sgd_lr0.05", 0) / "weights").glob("step*.pt"):
        torch.save({"w": Payload(marker)}, kept)
    (tmp_path / "projected" / "sgd_lr0.05_seed0.json").unlink()
    with pytest.raises(UserInputError, match=r"step\d{7}.pt refused: it holds Python objects"):
        vs.run(preset, tmp_path, x, y, test=test, progress=False)
    assert not marker.exists()
