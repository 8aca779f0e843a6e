"""Sweeps on real engines: a phase diagram through a dask LocalCluster of 2 processes and through submitit's
local executor equals the local pool's table; a dask worker killed mid-sweep loses no point and stores
none twice; bad executor specs and a missing engine are named errors."""

import json
import os
import signal
import sys
import threading
import time

import cloudpickle
import numpy as np
import pytest

from valleysim.errors import UserInputError
from valleysim.executors import ExecutorOptions, executor_spec, open_executor
from valleysim.quadratic.landscape import PerExampleQuadratic
from valleysim.quadratic.phase_diagram import phase_diagram
from valleysim.runner import run_sweep

pytest.importorskip("distributed", reason="the cluster extra (pip install 'valleysim[cluster]') is not installed")
pytest.importorskip("submitit", reason="the cluster extra (pip install 'valleysim[cluster]') is not installed")
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests directory

H = np.array([0.3, 0.8, 1.1, 2.6, 0.5, 1.7])
ETAS, SIZES = [0.4, 1.0, 2.4], [1, 2, 6]
QUIET = ExecutorOptions(workers=2)


def _table(out, executor=None):
    q = PerExampleQuadratic("diagonal", H[:, None])
    return phase_diagram(q, ETAS, SIZES, out, n_traj=16, n_steps=200, seed=3, progress=False, executor=executor)


@pytest.fixture(scope="module")
def local_table(tmp_path_factory):
    return _table(tmp_path_factory.mktemp("local"))


def test_dask_local_cluster_gives_the_local_table(tmp_path, local_table):
    with open_executor("dask", QUIET, log=lambda m: None) as ex:
        assert _table(tmp_path, ex) == local_table


def test_submitit_local_executor_gives_the_local_table(tmp_path, local_table):
    opts = ExecutorOptions(slurm_cluster="local", slurm_folder=str(tmp_path / "jobs"), slurm_time=5)
    with open_executor("slurm", opts, log=lambda m: None) as ex:
        assert _table(tmp_path / "pd", ex) == local_table
    assert any((tmp_path / "jobs").iterdir())  # submitit wrote its job files there


def _slow_square(point):
    time.sleep(0.3)
    return {"y": point["x"] ** 2, "pid": os.getpid()}


def test_a_killed_dask_worker_loses_no_point_and_stores_none_twice(tmp_path):
    store = tmp_path / "sweep.jsonl"
    points = [{"x": i} for i in range(24)]
    with open_executor("dask", QUIET, log=lambda m: None) as ex:
        pids = list(ex._client.run(os.getpid).values())
        assert len(pids) == 2
        result = {}
        t = threading.Thread(
            target=lambda: result.update(rows=run_sweep(_slow_square, points, store, executor=ex, progress=False))
        )
        t.start()
        deadline = time.time() + 60
        while (not store.exists() or len(store.read_text().splitlines()) < 4) and time.time() < deadline:
            time.sleep(0.05)
        os.kill(pids[0], signal.SIGKILL)  # mid-sweep: its running and queued points are rescheduled
        t.join(120)
        assert not t.is_alive()
    lines = [json.loads(s) for s in store.read_text().splitlines()]
    assert sorted(r["point"]["x"] for r in lines) == list(range(24))  # every point exactly once
    assert [r["y"] for r in result["rows"]] == [i * i for i in range(24)]
    assert pids[0] in {r["result"]["pid"] for r in lines}  # the killed worker had finished some before dying


def test_executor_specs_and_errors(tmp_path, monkeypatch, cli):
    for ok in ("local", "dask", "slurm", "dask://10.0.0.5:8786", "dask://sched.local:1"):
        assert executor_spec(ok) == ok
    code, _, err = cli("phase-diagram", "--executor", "dask://host:99999", "--out", tmp_path / "x")
    assert code == 2 and "--executor: must be local, dask, dask://HOST:PORT or slurm" in err
    with pytest.raises(UserInputError, match="no dask scheduler answers there"):
        with open_executor("dask://127.0.0.1:9", log=lambda m: None):
            pass
    import importlib

    real = importlib.import_module

    def missing(name, *a, **k):
        if name.startswith(("distributed", "submitit")):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(UserInputError, match=r"pip install 'valleysim\[cluster\]'"):
        with open_executor("slurm", log=lambda m: None):
            pass


def test_cli_phase_diagram_on_dask(tmp_path, cli):
    out = tmp_path / "pd"
    argv = ["phase-diagram", "--kind", "diagonal", "--n-examples", "6", "--dim", "1", "--out", out]
    code, printed, err = cli(
        *argv, "--executor", "dask", "--workers", "2", "--quiet", "--steps", "50", "--batch-sizes", "1,2"
    )
    assert code == 0, err
    assert "dask: 2 worker(s); dashboard http" in printed
    assert (out / "phase_diagram.csv").is_file()


def test_one_gpu_per_worker():
    from valleysim.executors import pinned_device

    assert [pinned_device("cuda", 4, s) for s in range(6)] == [
        "cuda:0",
        "cuda:1",
        "cuda:2",
        "cuda:3",
        "cuda:0",
        "cuda:1",
    ]
    assert pinned_device("cuda", 1, 3) == "cuda" and pinned_device("cuda:2", 4, 1) == "cuda:2"
    assert pinned_device("cpu", 4, 1) == "cpu" and pinned_device("cuda", 4, None) == "cuda"


def _slot(_):
    from valleysim.executors import worker_slot

    return worker_slot()


def test_workers_know_their_slot():
    from valleysim.runner import default_executor

    pool = default_executor(2)
    try:
        slots = set(pool.map(_slot, range(8), chunksize=1))
    finally:
        pool.shutdown()
    assert slots <= {0, 1} and slots
    with open_executor("dask", QUIET, log=lambda m: None) as ex:
        assert set(ex.map(_slot, range(8))) <= {0, 1}


def test_toy_sweeps_on_a_pool_and_on_dask_give_the_in_process_rows():
    from valleysim import break_even as bes
    from valleysim import nsgd as ns
    from valleysim.runner import default_executor

    land = bes.SharpeningLandscape.make(n_examples=16, beta=0.01)
    grid = ([0.2, 0.4], [4, 16])
    here = bes.sweep(*grid, land, trajectories=4, seed=2)
    valley = ns.make_valley(seed=0)
    kw = dict(eta=0.05, batch_size=8, steps=60, K=2, gammas=(0.1, 1.0), trajectories=2, seed=1, record_every=20)
    g_here = ns.gamma_sweep(valley, **kw)
    pool = default_executor(2)
    try:
        assert bes.sweep(*grid, land, trajectories=4, seed=2, executor=pool) == here
        g_pool = ns.gamma_sweep(valley, **kw, executor=pool)
    finally:
        pool.shutdown()
    with open_executor("dask", QUIET, log=lambda m: None) as ex:
        assert bes.sweep(*grid, land, trajectories=4, seed=2, executor=ex) == here
    for a, b in zip(g_here, g_pool):
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
