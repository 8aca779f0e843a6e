"""The resumable sweep runner: store format, resume without recomputation, torn lines, lost workers."""

import functools
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from valleysim.runner import LostWorker, default_executor, load_store, point_key, run_sweep

POINTS = [{"x": x, "tag": t} for x in range(5) for t in ("a", "b")]


def square(point):
    return {"y": point["x"] ** 2}


def test_results_in_point_order_and_one_line_per_point(tmp_path):
    store = tmp_path / "s.jsonl"
    with ThreadPoolExecutor(2) as pool:
        res = run_sweep(square, POINTS, store, executor=pool, progress=False)
    assert res == [{"y": p["x"] ** 2} for p in POINTS]
    lines = [json.loads(line) for line in store.read_text().splitlines()]
    assert sorted(point_key(r["point"]) for r in lines) == sorted(point_key(p) for p in POINTS)
    assert all(r["result"]["y"] == r["point"]["x"] ** 2 for r in lines)


def test_interrupted_sweep_resumes_without_recomputing(tmp_path):
    store = tmp_path / "s.jsonl"

    def fails_on_three(point):
        if point["x"] == 3:
            raise KeyboardInterrupt  # what an interrupted run looks like to the runner
        return square(point)

    with pytest.raises(KeyboardInterrupt), ThreadPoolExecutor(1) as pool:
        run_sweep(fails_on_three, POINTS, store, executor=pool, progress=False)
    finished = load_store(store)
    assert 0 < len(finished) < len(POINTS)
    seen = []

    def counting(point):
        seen.append(point_key(point))
        return square(point)

    with ThreadPoolExecutor(1) as pool:
        res = run_sweep(counting, POINTS, store, executor=pool, progress=False)
    assert res == [{"y": p["x"] ** 2} for p in POINTS]
    assert sorted(seen) == sorted(point_key(p) for p in POINTS if point_key(p) not in finished)
    assert len(store.read_text().splitlines()) == len(POINTS)  # nothing lost, nothing duplicated


def test_torn_last_line_is_dropped_and_recomputed(tmp_path):
    store = tmp_path / "s.jsonl"
    good = json.dumps({"point": POINTS[0], "result": {"y": 0}})
    store.write_text(good + "\n" + good[: len(good) // 2])  # killed mid-write
    assert list(load_store(store)) == [point_key(POINTS[0])]
    with ThreadPoolExecutor(1) as pool:
        res = run_sweep(square, POINTS[:3], store, executor=pool, progress=False)
    assert res == [square(p) for p in POINTS[:3]]
    assert [json.loads(line)["point"] for line in store.read_text().splitlines()][0] == POINTS[0]
    assert len(store.read_text().splitlines()) == 3


def test_duplicate_points_evaluated_once(tmp_path):
    calls = []

    def counting(point):
        calls.append(point["x"])
        return square(point)

    with ThreadPoolExecutor(1) as pool:
        res = run_sweep(
            counting, [POINTS[0], POINTS[0], POINTS[2]], tmp_path / "s.jsonl", executor=pool, progress=False
        )
    assert res == [{"y": 0}, {"y": 0}, {"y": 1}] and sorted(calls) == [0, 1]


def _dies_once(point, flag):
    """``square``, but the first call for x = 2 kills its own worker process (SIGKILL: a lost worker)."""
    if point["x"] == 2 and not Path(flag).exists():
        Path(flag).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return square(point)


def _dies_on_four(point):
    if point["x"] == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return square(point)


RETRY = "valleysim: warning: a worker process died (killed, or out of memory); its tasks run again on fresh workers"


def test_a_killed_pool_worker_loses_no_point(tmp_path, capsys):
    """The default pool runs the tasks a dead worker took down again on fresh workers: every point, once."""
    points = [{"x": x} for x in range(6)]
    fn = functools.partial(_dies_once, flag=str(tmp_path / "died"))
    assert run_sweep(fn, points, tmp_path / "s.jsonl", progress=False) == [square(p) for p in points]
    assert (tmp_path / "died").exists()  # the worker did die
    assert capsys.readouterr().err.splitlines() == [f"{RETRY} (retry 1 of 3)"]
    assert sorted(json.loads(line)["point"]["x"] for line in (tmp_path / "s.jsonl").read_text().splitlines()) == [
        *range(6)
    ]


def test_a_point_whose_worker_dies_on_every_try_is_named_and_the_rest_kept(tmp_path, capsys):
    """Up to 3 retries, then one LostWorker (an OSError: the CLI's one line, exit 1) naming the point; the
    finished points are stored and a rerun computes only the lost one."""
    store, points = tmp_path / "s.jsonl", [{"x": x} for x in range(5)]
    pool = default_executor(1)  # one worker: x = 0..3 finish before x = 4 kills it
    try:
        with pytest.raises(LostWorker, match=r'^1 point\(s\) lost \(\{"x":4\}\): .* the 4 finished points are kept'):
            run_sweep(_dies_on_four, points, store, executor=pool, progress=False)
    finally:
        pool.shutdown()
    assert isinstance(LostWorker("x"), OSError)
    assert capsys.readouterr().err.splitlines() == [f"{RETRY} (retry {k} of 3)" for k in (1, 2, 3)]
    assert sorted(load_store(store)) == sorted(point_key(p) for p in points[:4])
    with ThreadPoolExecutor(1) as threads:
        assert run_sweep(square, points, store, executor=threads, progress=False) == [square(p) for p in points]
    assert len(store.read_text().splitlines()) == 5


def test_a_dask_killed_worker_is_a_lost_point(tmp_path):
    """dask's KilledWorker (its allowed failures spent) ends the sweep the same way, after the others."""
    distributed = pytest.importorskip("distributed")

    def killed_on_one(point):
        if point["x"] == 1:
            raise distributed.KilledWorker(("evaluate", 1), None, 3)
        return square(point)

    with ThreadPoolExecutor(1) as threads, pytest.raises(LostWorker, match=r'1 point\(s\) lost \(\{"x":1\}\)'):
        run_sweep(killed_on_one, [{"x": x} for x in range(3)], tmp_path / "s.jsonl", executor=threads, progress=False)
    assert len(load_store(tmp_path / "s.jsonl")) == 2


def _fails_on_one(point):
    if point["x"] == 1:
        raise ZeroDivisionError("point 1")
    time.sleep(0.5)
    return square(point)


def test_a_failing_point_on_the_default_pool_ends_the_sweep_at_once(tmp_path):
    """The rest is cancelled and the error re-raised (cancelled tasks are announced to as_completed: the
    sweep does not wait for them forever)."""
    import threading

    got = {}

    def sweep():
        try:
            run_sweep(_fails_on_one, [{"x": x} for x in range(40)], tmp_path / "s.jsonl", progress=False)
        except ZeroDivisionError as err:
            got["error"] = err

    t = threading.Thread(target=sweep, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "the sweep hung after a point failed"
    assert len(load_store(tmp_path / "s.jsonl")) < 20  # the rest was cancelled, not run
    assert str(got["error"]) == "point 1"
