"""Sweeps on real engines: a phase diagram through a dask LocalCluster of 2 processes and through submitit's
local executor equals the local pool's table; a dask worker killed mid-sweep loses no point and stores
none twice; bad executor specs and a missing engine are named errors."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import cloudpickle
import numpy as np
import pytest

from valleysim.errors import UserInputError
from valleysim.executors import ExecutorOptions, executor_spec, open_executor, slurm_executor
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


def _killed_or_refused(point):
    """x = 1 kills its own job (as Slurm does past its requeues); x = 2 is bad input; the rest square."""
    if point["x"] == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    if point["x"] == 2:
        raise UserInputError("x = 2 is refused")
    return {"y": point["x"] ** 2}


def test_a_submitit_job_killed_or_refused_is_one_named_line(tmp_path):
    """A job that ends without a result is a lost point naming its log (the CLI's one line, exit 1), after the
    others are stored; a point's UserInputError comes back as itself, not as submitit's traceback text."""
    from valleysim.runner import LostWorker, load_store

    opts = ExecutorOptions(slurm_cluster="local", slurm_folder=str(tmp_path / "jobs"), slurm_time=5)
    store = tmp_path / "sweep.jsonl"
    with open_executor("slurm", opts, log=lambda m: None) as ex:
        with pytest.raises(LostWorker, match=r'^1 point\(s\) lost \(\{"x":1\}\): job \S+ ended without a result '):
            run_sweep(_killed_or_refused, [{"x": 0}, {"x": 1}, {"x": 3}], store, executor=ex, progress=False)
        assert sorted(r["y"] for r in load_store(store).values()) == [0, 9]
        with pytest.raises(UserInputError, match="^x = 2 is refused$"):
            run_sweep(_killed_or_refused, [{"x": 2}], tmp_path / "other.jsonl", executor=ex, progress=False)


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


PD = ["phase-diagram", "--kind", "diagonal", "--n-examples", "6", "--dim", "1", "--etas", "0.5,1", "--steps", "50"]
PD += ["--batch-sizes", "1,2,3", "--trajectories", "8", "--quiet"]


def _fake_commands(bin_dir, **scripts):
    """Executables ``bin_dir/<name>`` running the given shell code (a fake Slurm for a machine without one)."""
    bin_dir.mkdir(exist_ok=True)
    for name, code in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + code + "\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _valleysim(*argv, path, cwd):
    """The real command in its own process with ``PATH=path`` (python itself by its absolute path)."""
    env = {**os.environ, "PATH": str(path)}
    cmd = [sys.executable, "-m", "valleysim", *map(str, argv)]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_slurm_parameters_pass_submitits_validation_and_reach_the_sbatch_script(tmp_path, monkeypatch):
    """The parameters we set are accepted by submitit's Slurm executor (its update_parameters checks their
    names and renders a trial sbatch script) and appear as #SBATCH lines of the array job it would submit."""
    from submitit.slurm.slurm import _make_sbatch_string

    monkeypatch.setenv("PATH", str(_fake_commands(tmp_path / "bin", sbatch="exit 1", srun="exit 1")))
    opts = ExecutorOptions(
        slurm_partition="gpu,long", slurm_gpus=2, slurm_time=720, slurm_array_parallelism=16, slurm_folder=tmp_path
    )
    ex = slurm_executor(opts)
    assert ex.cluster == "slurm" and ex._executor.max_num_timeout == 3  # requeued up to 3 times
    script = _make_sbatch_string(command="run", folder=tmp_path, map_count=40, **ex._executor.parameters)
    lines = set(script.splitlines())
    for flag in ("--partition=gpu,long", "--gpus-per-node=2", "--time=720", "--array=0-39%16"):
        assert f"#SBATCH {flag}" in lines, script
    cpu = slurm_executor(ExecutorOptions(slurm_folder=tmp_path))._executor.parameters
    assert "gpus_per_node" not in cpu and "partition" not in cpu  # no GPU line, the cluster's default partition


def test_slurm_without_sbatch_is_one_line(tmp_path):
    """No Slurm here: one line and exit 2, not submitit's silent choice of local jobs (nor a traceback)."""
    res = _valleysim(*PD, "--out", tmp_path / "pd", "--executor", "slurm", path=tmp_path / "empty", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    [line] = res.stderr.splitlines()
    assert line.startswith("valleysim") and line.endswith(
        "error: --executor slurm: no Slurm on this machine (sbatch and srun not on PATH); "
        "run the command on a Slurm login node, or use --executor local or dask"
    )
    assert not (tmp_path / "slurm_logs").exists() and not (tmp_path / "pd" / "sweep.jsonl").exists()


def test_slurm_submits_one_array_job_through_sbatch(tmp_path):
    """With (fake) Slurm commands on PATH the sweep goes to sbatch as one array job of its 9 points with our
    parameters; sbatch's refusal is one line with its reason, exit 2."""
    fake = _fake_commands(
        tmp_path / "bin",
        srun="exit 1",
        sbatch=f'/bin/cp "$1" {tmp_path}/submitted.sh; echo "sbatch: error: invalid partition specified: gpu" >&2\n'
        "exit 1",
    )
    argv = [*PD, "--out", tmp_path / "pd", "--executor", "slurm", "--slurm-partition", "gpu", "--slurm-time", "30"]
    res = _valleysim(*argv, "--slurm-folder", tmp_path / "jobs", path=fake, cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    [line] = res.stderr.splitlines()
    assert line.startswith("valleysim") and line.endswith(
        "error: --executor slurm: the jobs were not submitted: sbatch: error: invalid partition specified: gpu"
    )
    script = (tmp_path / "submitted.sh").read_text().splitlines()
    for flag in ("--partition=gpu", "--time=30", "--array=0-8%9"):  # 3 per-S tasks + 6 grid points
        assert f"#SBATCH {flag}" in script
    assert not (tmp_path / "pd" / "sweep.jsonl").exists()  # nothing computed, nothing stored


def test_a_slurm_partition_that_is_not_names_is_one_line(tmp_path, cli):
    code, _, err = cli(*PD, "--out", tmp_path / "pd", "--executor", "slurm", "--slurm-partition", "gpu\n#x")
    assert code == 2 and "--slurm-partition: must be partition names" in err and len(err.splitlines()) == 1


@pytest.fixture
def listener():
    """listener(greeting) -> port: a TCP socket on 127.0.0.1 whose thread accepts every connection, sends
    ``greeting`` at once (b"": nothing) and never answers further."""
    import socket

    servers, held = [], []

    def start(greeting: bytes) -> int:
        srv = socket.create_server(("127.0.0.1", 0))
        servers.append(srv)

        def serve():
            with contextlib.suppress(OSError):
                while True:
                    conn, _ = srv.accept()
                    held.append(conn)
                    conn.sendall(greeting)

        threading.Thread(target=serve, daemon=True).start()
        return srv.getsockname()[1]

    yield start
    for s in servers + held:
        s.close()


@pytest.mark.parametrize(
    "greeting, message",
    [
        (b"", "something accepted the connection but sent nothing in 5 s: not a dask scheduler (one greets at once)"),
        (
            b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/html\r\n\r\n<html>",
            "something that is not a dask scheduler answered there (it sent 'HTTP/1.0 400 Bad Request')",
        ),
    ],
    ids=["silent", "http"],
)
def test_a_service_that_is_not_a_dask_scheduler_is_one_line_within_seconds(tmp_path, cli, listener, greeting, message):
    """A silent listener (distributed waited for its handshake without end) and an HTTP-like reply (read as a
    frame length: "out of memory") are named in one line, exit 2, within the bound."""
    spec = f"dask://127.0.0.1:{listener(greeting)}"
    t0 = time.monotonic()
    code, _, err = cli(*PD, "--out", tmp_path / "pd", "--executor", spec)
    assert time.monotonic() - t0 < 15
    [line] = err.splitlines()
    assert code == 2 and line.startswith("valleysim") and line.endswith(f"error: --executor {spec}: {message}")
    assert not (tmp_path / "pd").exists()


def test_a_real_dask_scheduler_passes_the_check(tmp_path):
    import distributed

    with distributed.LocalCluster(
        n_workers=1, processes=False, protocol="tcp", host="127.0.0.1", dashboard_address=":0"
    ) as cluster:
        spec = "dask://" + cluster.scheduler_address.removeprefix("tcp://")
        with open_executor(spec, log=lambda m: None) as ex:
            assert ex.submit(pow, 2, 5).result() == 32
