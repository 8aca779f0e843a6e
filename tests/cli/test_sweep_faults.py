"""Faults around a sweep, each on the real command (issue 27): a local-pool worker killed mid-sweep (its
points run again on fresh workers; a worker lost on every try ends in one line and the rerun resumes)."""

from __future__ import annotations

import contextlib
import json
import time

import psutil
import pytest

PD = ["phase-diagram", "--kind", "diagonal", "--n-examples", "6", "--dim", "1", "--etas", "0.2:3:8"]
PD += ["--batch-sizes", "1,2,3", "--steps", "3000", "--trajectories", "64", "--quiet"]
N_POINTS = 3 + 8 * 3  # a per-S task for each batch size, and the grid
RETRY = "valleysim: warning: a worker process died (killed, or out of memory); its tasks run again on fresh workers"


def _pool_workers(proc) -> list[psutil.Process]:
    """The live pool workers of the command ``proc`` (not its resource tracker, nor a dead worker)."""
    workers = []
    for kid in psutil.Process(proc.pid).children():
        with contextlib.suppress(psutil.Error):
            if "spawn_main" in " ".join(kid.cmdline()):
                workers.append(kid)
    return workers


def _stored(store) -> list[dict]:
    return [json.loads(line) for line in store.read_text().splitlines()] if store.exists() else []


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The CSV of the same sweep, undisturbed."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("reference") / "pd"
    res = subprocess.run([sys.executable, "-m", "valleysim", *PD, "--out", str(out)], capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return (out / "phase_diagram.csv").read_bytes()


def test_a_pool_worker_killed_mid_sweep_is_replaced_and_the_sweep_finishes(installed, tmp_path, reference):
    proc = installed.popen(*PD, "--out", "pd")  # the sweep's own pool (no --workers)
    store = tmp_path / "pd" / "sweep.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and len(_stored(store)) < 1:
        time.sleep(0.05)
    _pool_workers(proc)[0].kill()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert err.decode().splitlines() == [f"{RETRY} (retry 1 of 3)"]
    keys = [json.dumps(r["point"], sort_keys=True) for r in _stored(store)]
    assert len(keys) == len(set(keys)) == N_POINTS  # every point, once
    assert (tmp_path / "pd" / "phase_diagram.csv").read_bytes() == reference


def test_pool_workers_lost_on_every_try_end_in_one_line_and_the_rerun_resumes(installed, tmp_path, reference):
    proc = installed.popen(*PD, "--out", "pd", "--workers", "2")  # open_executor's local pool
    killed = set()
    while proc.poll() is None:  # every worker of every fresh pool, as soon as it starts
        with contextlib.suppress(psutil.Error):  # the command may exit meanwhile
            for w in _pool_workers(proc):
                if w.pid not in killed:
                    killed.add(w.pid)
                    w.kill()
        time.sleep(0.02)
    err = proc.communicate()[1].decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    *warnings, line = err.splitlines()
    assert warnings == [f"{RETRY} (retry {k} of 3)" for k in (1, 2, 3)]
    assert line.startswith(f"valleysim: error: {N_POINTS} point(s) lost (") and line.endswith(
        "their worker processes died (killed, or out of memory) on every try; the 0 finished points are kept in "
        "pd/sweep.jsonl: rerun the command to compute the rest"
    )
    rerun = installed(*PD, "--out", "pd", "--workers", "2")
    assert rerun.returncode == 0, rerun.stderr
    assert (tmp_path / "pd" / "phase_diagram.csv").read_bytes() == reference


@pytest.mark.slow
@pytest.mark.usefixtures("torch_one_thread")  # the in-process runs as in the single-threaded workers
def test_a_network_study_on_the_local_pool_survives_a_killed_worker(tmp_path, capsys):
    """``dnn study --workers N`` sends its runs to the same pool: 4 runs on 2 workers, one worker SIGKILLed
    once a run has written rows; its runs go to fresh workers and resume from their checkpoints; the table
    equals the in-process one."""
    import dataclasses
    import sys
    import threading
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dnn"))
    from dnn import break_even_study as bes
    from valleysim.executors import ExecutorOptions, open_executor

    from tiny_nets import synthetic_images

    x, y = synthetic_images(40)
    preset = dataclasses.replace(bes.PRESETS["smoke"], bn_lr_grid=(), edge_sizes=(), lr_grid=(0.05,), max_steps=6)
    here = bes.run(preset, tmp_path / "here", x, y, progress=False)
    got = {}
    with open_executor("local", ExecutorOptions(workers=2)) as ex:
        t = threading.Thread(
            target=lambda: got.update(s=bes.run(preset, tmp_path / "pool", x, y, progress=False, executor=ex))
        )
        t.start()
        deadline = time.time() + 120
        while time.time() < deadline and not any(
            len(p.read_text().splitlines()) >= 2 for p in (tmp_path / "pool").rglob("metrics.jsonl")
        ):
            time.sleep(0.05)
        [w for w in psutil.Process().children() if "spawn_main" in " ".join(w.cmdline())][0].kill()
        t.join(300)
        assert not t.is_alive()
    assert got["s"]["per_run"] == here["per_run"]
    assert f"{RETRY} (retry 1 of 3)" in capsys.readouterr().err.splitlines()
