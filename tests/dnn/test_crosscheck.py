"""The cross-check pipeline end to end on tiny synthetic data (< 1 minute), and its resumption."""

import json
import shutil

import pytest

from dnn.crosscheck import Preset, plan, run_crosscheck

from tiny_nets import synthetic_images

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = Preset(
    name="tiny",
    width=0.125,
    n_train=64,
    lr_grid=(0.05, 0.2),
    batch_fixed=16,
    batch_grid=(8, 16),
    lr_fixed=0.05,
    epochs=2,
    max_steps=8,
    probe_every=4,
    max_acc=0.6,
    measure_size=16,
    top_k=1,
    cov_batches=3,
    cov_batch=4,
    gd_n_train=32,
    gd_lrs=(0.1,),
    gd_steps=6,
    gd_probe_every=3,
    r5_n=32,
    r5_pretrain_steps=30,
    r5_points=((0.05, 4), (0.1, 8)),
    r5_steps=12,
    r5_probe_every=4,
    r5_top_k=3,
)


def synthetic(n=64, seed=0):
    return synthetic_images(n, seed)


def test_plan_shares_the_grid_point(tmp_path):
    runs = plan(TINY, tmp_path)
    names = [n for n, _ in runs["sgd"]]
    assert len(set(names)) == len(names) == 3  # (0.05, 16) is shared by both grids
    assert all(c.optimizer == "gd" for _, c in runs["gd"])
    assert all(c.init_from.endswith("model.pt") for _, c in runs["r5"])


def test_crosscheck_end_to_end_and_resume(tmp_path, monkeypatch):
    x, y = synthetic()
    s = run_crosscheck(TINY, tmp_path, x, y, progress=False)
    report = (tmp_path / "report.md").read_text()
    assert "Measured vs predicted" in report and "Conjecture orderings" in report
    assert (tmp_path / "trajectories.png").stat().st_size > 0 and (tmp_path / "predictions.png").exists()
    assert len(s["comparison"]) == 3 and {o["grid"] for o in s["orderings"]} == {"learning_rate", "batch_size"}
    for row in s["comparison"]:  # predictions computed from the run's own measurements
        if row["alpha"] == row["alpha"]:
            from valleysim.theory import break_even_curvature, variance_factor

            assert row["lambda_star"] == pytest.approx(
                float(break_even_curvature(row["eta"], variance_factor(row["S"], 64), row["alpha"]))
            )
    assert s["gd"][0]["two_over_eta"] == pytest.approx(20.0)
    assert s["r5_fit"]["n"] >= 3
    saved = json.loads((tmp_path / "summary.json").read_text())
    # resuming: every run is finished, so nothing trains again and the summary is identical
    import dnn.train as T

    monkeypatch.setattr(T, "_full_gradient", lambda *a, **k: pytest.fail("a finished run trained again"))
    s2 = run_crosscheck(TINY, tmp_path, x, y, progress=False)
    assert json.loads((tmp_path / "summary.json").read_text()) == saved
    assert s2["comparison"][0]["max_lambda_max"] == s["comparison"][0]["max_lambda_max"]
    # a copy of the directory elsewhere reopens too (the R5 runs' init_from is stored by content, not as
    # the absolute path of the original's r5_pretrain/model.pt), reading every run back
    copy = tmp_path.with_name(tmp_path.name + "-copy")
    shutil.copytree(tmp_path, copy)
    rows = {p: p.read_bytes() for p in copy.rglob("metrics.jsonl")}
    run_crosscheck(TINY, copy, x, y, progress=False)
    assert json.loads((copy / "summary.json").read_text()) == saved
    assert {p: p.read_bytes() for p in rows} == rows


def test_crosscheck_through_a_process_pool_equals_in_process(tmp_path):
    """The runs go out as tasks (SGD, GD and the R5 pretraining together, then the R5 runs from the
    pretrained model): the summary equals the in-process one."""
    from valleysim.runner import default_executor

    x, y = synthetic()
    here = run_crosscheck(TINY, tmp_path / "here", x, y, progress=False, toy=False)
    pool = default_executor(2)
    try:
        there = run_crosscheck(TINY, tmp_path / "pool", x, y, progress=False, toy=False, executor=pool)
    finally:
        pool.shutdown()
    assert json.loads((tmp_path / "pool" / "summary.json").read_text()) == json.loads(
        (tmp_path / "here" / "summary.json").read_text()
    )
    assert there["comparison"] == here["comparison"]
