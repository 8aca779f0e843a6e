"""Network studies with seeds: aggregation and orderings against hand arithmetic, a tiny end-to-end
break-even study on synthetic images that resumes after a kill, bad input."""

import math
import shutil
from pathlib import Path

import pytest

from dnn import break_even_study as bes
from dnn.config import TrainConfig
from dnn.study import Point, across_seeds, orderings_across_seeds, run_dir
from valleysim import theory
from valleysim.errors import UserInputError

from tiny_nets import fake_batches_dir, synthetic_images

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_across_seeds_is_a_t_interval_per_point():
    per_run = [dict(label="a", seed=s, x=v, flag=True) for s, v in enumerate([1.0, 2.0, 6.0])]
    per_run += [dict(label="b", seed=0, x=float("nan"), flag=False)]
    rows = {(r["label"], r["quantity"]): r for r in across_seeds(per_run)}
    a = rows[("a", "x")]
    assert a["n"] == 3 and a["mean"] == 3.0 and a["se"] == pytest.approx(math.sqrt(7 / 3))
    assert a["hi"] - a["mean"] == pytest.approx(4.302652729911275 * math.sqrt(7 / 3))  # t_{2, 0.975}
    assert rows[("b", "x")]["n"] == 0 and math.isnan(rows[("b", "x")]["mean"])
    assert ("a", "flag") not in rows  # booleans are not quantities


def test_orderings_are_tested_seed_by_seed():
    cfg = TrainConfig(model="mlp")
    pts = [Point(f"p{i}", cfg, {"g": k}) for i, k in enumerate([1.0, 2.0, 3.0])]
    # seed 0 falls with the knob (tau -1), seed 1 rises (tau +1), seed 2 has one point missing then falls
    y = {0: [3, 2, 1], 1: [1, 2, 3], 2: [5, float("nan"), 4]}
    per_run = [dict(label=f"p{i}", seed=s, q=float(v[i])) for s, v in y.items() for i in range(3)]
    (o,) = orderings_across_seeds(per_run, pts, {"q": -1})
    assert o["taus"] == pytest.approx([-1.0, 1.0, -1.0]) and o["n_seeds"] == 3
    assert o["mean_tau"] == pytest.approx(-1 / 3) and o["agree_fraction"] == pytest.approx(2 / 3)


def test_points_share_the_fixed_point_and_carry_their_knobs():
    p = bes.PRESETS["quick"]
    pts = {q.label: q for q in bes.points(p)}
    assert len(pts) == len(p.lr_grid) + len(p.batch_grid) - 1 + len(p.bn_lr_grid)  # (0.05, 128) is on both grids
    bn = pts["bn_lr1_S128"]
    assert bn.knobs == {"bn_learning_rate": 1.0} and bn.cfg.model == "simplecnn-bn" and bn.cfg.bn == "eval"
    shared = pts["lr0.05_S128"]
    assert shared.knobs == {"learning_rate": 0.05, "batch_size": 1 / 128}
    assert shared.cfg.probes == ("lanczos", "covariance", "step", "curvature") and shared.cfg.probe_acc == (0.6,)


def test_window_extremes_against_hand_arithmetic():
    """The window ends at the first probe with running accuracy >= 0.6 (the 4th); alpha* unreached is inf."""
    acc = [0.1, 0.2, 0.4, 0.7, 0.9]
    a_star = [8.0, None, 2.5, 2.0, 0.5]
    lam_k = [1.0, 2.0, 3.0, 4.0, 99.0]
    rows = [
        dict(
            step=10 * i,
            train_acc_running=a,
            alpha_star=s,
            alpha_star_reached=s is not None,
            lambda_K=k,
            stability_factor=0.1 * (i + 1),
            grad_norm_ratio_top5=1 + i,
            bn_scale_norm=5.0 - i,
        )
        for i, (a, s, k) in enumerate(zip(acc, a_star, lam_k))
    ]
    out = bes._window_extremes(rows, 0.6)
    assert out["min_alpha_star"] == 2.0 and out["alpha_star_late"] == 2.25  # median of (2.5, 2.0)
    # tau over the finite pairs (8, 1), (2.5, 3), (2, 4): perfectly anti-correlated
    assert out["tau_alpha_star_lambda_K"] == pytest.approx(-1.0)
    assert out["r1_factor_late"] == pytest.approx(0.35) and out["max_r1_factor"] == pytest.approx(0.4)
    assert (out["max_grad_norm_ratio"], out["min_grad_norm_ratio"]) == (4.0, 1.0)
    assert (out["bn_scale_norm_start"], out["bn_scale_norm_min"], out["bn_scale_norm_end"]) == (5.0, 2.0, 2.0)
    assert math.isinf(bes._alpha_star(rows)[1])


def test_a_tiny_study_end_to_end_and_resumed(tmp_path):
    x, y = synthetic_images(40)
    tx, ty = synthetic_images(10, seed=9)
    preset = bes.PRESETS["smoke"]
    s = bes.run(preset, tmp_path, x, y, test=(tx, ty), progress=False)
    labels = {r["label"] for r in s["per_run"]}
    assert labels == {"lr0.02_S8", "lr0.05_S4", "lr0.05_S8", "bn_lr0.01_S8", "bn_lr0.1_S8"}
    assert len(s["per_run"]) == 10
    for r in s["per_run"]:
        assert ("bn_scale_norm_min" in r) == r["label"].startswith("bn_")
        if r["label"].startswith("bn_"):
            assert r["bn_scale_norm_min"] <= r["bn_scale_norm_start"]
    for r in s["per_run"]:
        assert r["steps"] == 4 and math.isfinite(r["max_lambda_max"]) and 0 <= r["final_test_acc"] <= 1
        # the paper's Gram units are L c(M, n) x ours: L = 3 batches of M = 4 from the n = 16 measured
        lc = 3 * (16 - 4) / (4 * (16 - 1))
        assert r["max_lambda_K_gram"] == pytest.approx(lc * r["max_lambda_K"], rel=1e-12)
        assert r["max_trace_K_gram"] == pytest.approx(lc * r["max_trace_K"], rel=1e-9)
    files = ("per_run.csv", "across_seeds.csv", "orderings.csv", "summary.json", "report.md", "break_even_study.png")
    for f in (*files, "bn_study.png", "edge.csv", "edge_across_seeds.csv"):
        assert (tmp_path / f).stat().st_size > 0
    assert {o["grid"] for o in s["orderings"]} == {"learning_rate", "batch_size", "bn_learning_rate"}
    # the batch-size-effect analysis: the batch grid's runs x seeds x sizes x (e_H^1, top-k); along e_H^1
    # alone rho_ms is R1's closed-form factor of the reported curvature mean and variance
    edge = bes.batch_size_effect(preset, tmp_path, bes.points(preset), [0, 1], x, y, progress=False)["per_run"]
    assert len(edge) == 2 * 2 * len(preset.edge_sizes) * 2 and {r["label"] for r in edge} == {"lr0.05_S4", "lr0.05_S8"}
    for r in edge:
        if r["k"] == 1:
            q = theory.stability_factor(
                r["eta"], r["curvature_mean"], r["curvature_var"], theory.variance_factor(r["S"], 40)
            )
            assert r["rho_ms"] == pytest.approx(float(q), rel=1e-8) and r["lambda_1"] == pytest.approx(
                r["curvature_mean"]
            )
        else:
            assert r["k"] == preset.edge_k and r["lambda_1"] >= r["lambda_2"]
    assert "## The batch-size effect" in (tmp_path / "report.md").read_text()
    assert "Break-even study, preset `smoke` (2 seeds per point)" in (tmp_path / "report.md").read_text()
    # an interrupted study: one run never finished (its directory gone) -> the rerun trains only that run
    # again (the others are read back) and gives the same table
    shutil.rmtree(run_dir(tmp_path, "lr0.05_S4", 1))
    again = bes.run(preset, tmp_path, x, y, test=(tx, ty), progress=False)
    assert again["per_run"] == s["per_run"]


def test_bad_study_input_is_named(tmp_path, cli):
    code, _, err = cli("dnn", "study", "hessian", "--out", tmp_path / "o")
    assert code == 2 and "argument name: invalid choice: 'hessian'" in err
    code, _, err = cli("dnn", "study", "break-even", "--preset", "huge", "--out", tmp_path / "o")
    assert code == 2 and "unknown preset 'huge'" in err
    with pytest.raises(UserInputError, match="at least one grid point and one seed"):
        from dnn.study import run_study

        run_study([], [0], tmp_path, None, None, summarise_run=None)


def test_runs_through_a_process_pool_give_the_same_table(tmp_path):
    """Each run a task on a pool of 2 single-threaded workers: the same per-run table as one after another,
    and a rerun through the pool only reads the finished runs back."""
    import dataclasses

    from valleysim.runner import default_executor

    x, y = synthetic_images(40)
    preset = dataclasses.replace(bes.PRESETS["smoke"], bn_lr_grid=(), edge_sizes=(), lr_grid=(0.05,))
    here = bes.run(preset, tmp_path / "here", x, y, progress=False)
    pool = default_executor(2)
    try:
        there = bes.run(preset, tmp_path / "pool", x, y, progress=False, executor=pool)
        rows = {p: p.read_text() for p in (tmp_path / "pool" / "runs").rglob("metrics.jsonl")}
        again = bes.run(preset, tmp_path / "pool", x, y, progress=False, executor=pool)
    finally:
        pool.shutdown()
    assert there["per_run"] == here["per_run"] == again["per_run"]
    assert {p: p.read_text() for p in rows} == rows  # nothing retrained (train_time_s would differ)


def test_a_study_on_dask_survives_a_killed_worker(tmp_path):
    """4 runs on a 2-process LocalCluster; one worker SIGKILLed once a run has written rows: dask reruns
    its task, which resumes from the run's checkpoint; the table equals the in-process one."""
    import dataclasses
    import os
    import signal
    import threading
    import time

    pytest.importorskip("distributed", reason="the cluster extra is not installed")
    from valleysim.executors import ExecutorOptions, open_executor

    x, y = synthetic_images(40)
    preset = dataclasses.replace(bes.PRESETS["smoke"], bn_lr_grid=(), edge_sizes=(), lr_grid=(0.05,), max_steps=6)
    here = bes.run(preset, tmp_path / "here", x, y, progress=False)
    with open_executor("dask", ExecutorOptions(workers=2), log=lambda m: None) as ex:
        pids = list(ex._client.run(os.getpid).values())
        got = {}
        t = threading.Thread(
            target=lambda: got.update(s=bes.run(preset, tmp_path / "dask", x, y, progress=False, executor=ex))
        )
        t.start()
        deadline = time.time() + 120
        while time.time() < deadline and not any(
            len(p.read_text().splitlines()) >= 2 for p in (tmp_path / "dask").rglob("metrics.jsonl")
        ):
            time.sleep(0.05)
        os.kill(pids[0], signal.SIGKILL)
        t.join(300)
        assert not t.is_alive()
    assert got["s"]["per_run"] == here["per_run"]


def test_workers_read_the_data_from_its_path(tmp_path, monkeypatch):
    """A study through a 2-process LocalCluster with a DataSource: the workers decode the CIFAR-10 files
    themselves, both at once into one empty cache (whole arrays for both, one valid cache file, no
    temporary file left), and the table equals the in-process one on the arrays."""
    import dataclasses

    import numpy as np

    pytest.importorskip("distributed", reason="the cluster extra is not installed")
    from dnn.data import DataSource, load_cifar10
    from valleysim.executors import ExecutorOptions, open_executor

    root, expect = fake_batches_dir(tmp_path / "data", per_batch=8)
    cache = tmp_path / "cache"
    monkeypatch.setenv("VALLEYSIM_DATA_CACHE", str(cache))  # the workers inherit it
    source = DataSource(str(root), None)
    x, y = load_cifar10(root, "train", cache_dir=False)
    preset = dataclasses.replace(
        bes.PRESETS["smoke"], bn_lr_grid=(), edge_sizes=(), lr_grid=(0.05,), batch_grid=(8,), seeds=1
    )
    here = bes.run(preset, tmp_path / "here", x, y, progress=False)
    with open_executor("dask", ExecutorOptions(workers=2), log=lambda m: None) as ex:
        loaded = ex._client.run(source.load, "train")  # on both workers at the same time
        there = bes.run(preset, tmp_path / "dask", x, y, progress=False, executor=ex, source=source)
    assert len(loaded) == 2
    for images, labels in loaded.values():
        assert np.array_equal(images, expect["train"][0]) and np.array_equal(labels, expect["train"][1])
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 1 and files[0].endswith(".npz"), files  # no .tmp left behind
    hit = load_cifar10(root, "train", cache_dir=cache)
    assert np.array_equal(hit[0], expect["train"][0])
    assert there["per_run"] == here["per_run"]


def one_run_preset(**kw):
    """The smoke break-even study cut to one run (lr 0.05, S 8, seed 0)."""
    import dataclasses

    base = dict(bn_lr_grid=(), lr_grid=(0.05,), batch_grid=(8,), seeds=1, edge_sizes=(16,))
    return dataclasses.replace(bes.PRESETS["smoke"], **{**base, **kw})


def test_the_edge_cache_is_keyed_by_what_it_was_computed_with(tmp_path):
    """Changing edge_sizes or edge_k recomputes the batch-size-effect analysis instead of reading the stale
    cache back; a cache file from before the key (a bare list of rows) is recomputed too."""
    import json

    x, y = synthetic_images(40)
    preset = one_run_preset()
    bes.run(preset, tmp_path, x, y, progress=False)

    def analysed(p):
        rows = bes.batch_size_effect(p, tmp_path, bes.points(p), [0], x, y, progress=False)["per_run"]
        return sorted((r["measure_size"], r["k"]) for r in rows)

    assert analysed(preset) == [(16, 1), (16, 2)]
    assert analysed(one_run_preset(edge_sizes=(16, 24), edge_k=3)) == [(16, 1), (16, 3), (24, 1), (24, 3)]
    cache = tmp_path / "edge" / "lr0.05_S8_seed0.json"
    cache.write_text(json.dumps([{"label": "lr0.05_S8", "measure_size": 99, "k": 9}]))
    assert analysed(preset) == [(16, 1), (16, 2)]
    assert json.loads(cache.read_text())["key"]["edge_sizes"] == [16]
    cache.write_text("[" * 200_000 + "]" * 200_000)  # damaged deeper than json's recursion goes: recomputed
    assert analysed(preset) == [(16, 1), (16, 2)]


@pytest.mark.parametrize("other", ["sharpest", "walk", "valley", "crosscheck"])
def test_another_study_in_a_study_directory_is_refused_before_writing(tmp_path, other):
    """Each study claims its directory (study.json) before writing: another study, another preset or other
    data in it is one named error and leaves every file as it was."""
    import importlib

    x, y = synthetic_images(40)
    preset = one_run_preset(edge_sizes=())
    bes.run(preset, tmp_path, x, y, progress=False)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    if other == "crosscheck":
        from dnn.crosscheck import PRESETS, run_crosscheck

        go = lambda: run_crosscheck(PRESETS["quick"], tmp_path, x, y, progress=False)  # noqa: E731
    else:
        mod = importlib.import_module(f"dnn.{other}_study")
        go = lambda: mod.run(mod.PRESETS["smoke"], tmp_path, x, y, progress=False)  # noqa: E731
    with pytest.raises(UserInputError, match=f"holds the break-even study with preset smoke, not the {other} study"):
        go()
    with pytest.raises(UserInputError, match="with preset smoke, not the break-even study with preset quick"):
        bes.run(bes.PRESETS["quick"], tmp_path, x, y, progress=False)
    with pytest.raises(UserInputError, match="holds a break-even study of other data"):
        bes.run(preset, tmp_path, x, y[::-1].copy(), progress=False)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_runs_lost_on_every_try_are_named_and_the_others_kept(tmp_path, monkeypatch):
    """A run whose worker died on every try (the pool's LostWorker) does not stop the others; the study ends
    with one LostWorker (the CLI's one line, exit 1) naming the lost runs."""
    from concurrent.futures import ThreadPoolExecutor

    from dnn import study
    from valleysim.runner import LostWorker

    def task(cfg, out, data):
        if out.endswith("b"):
            raise LostWorker("a worker process died (killed, or out of memory) on each of 4 tries")
        Path(out).mkdir(parents=True)
        (Path(out) / "metrics.jsonl").write_text('{"step": 0}\n')
        return 1

    monkeypatch.setattr(study, "train_task", task)
    runs = [(None, tmp_path / name) for name in "abc"]
    lost = r"^1 run\(s\) lost \(b\): a worker process died \(killed, or out of memory\) on each of 4 tries; the other"
    with ThreadPoolExecutor(1) as ex, pytest.raises(LostWorker, match=lost):
        study.train_runs(runs, None, None, executor=ex, source="the data", progress=False)
    assert all((tmp_path / name / "metrics.jsonl").is_file() for name in "ac")
