"""The resumable sweep runner: store format, resume without recomputation, torn lines."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from valleysim.runner import load_store, point_key, run_sweep

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
