"""The demo's network section: the edge-of-stability summary against hand arithmetic, and a tiny run."""

import math

import pytest

from dnn import edge_of_stability as eos

from tiny_nets import synthetic_images

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_summary_reads_the_edge_off_the_rows():
    eta = 0.04  # edge 2 / eta = 50
    lams = [10.0, 30.0, 46.0, 60.0, 40.0, 55.0]
    rows = [dict(step=10 * i, lambda_max=v, measure_loss=1.0 / (i + 1)) for i, v in enumerate(lams)]
    rows.insert(2, dict(step=15, reason="diverged"))  # rows without the probe are ignored
    s = eos.summarise(rows, eta)
    assert s["edge"] == 50.0 and s["reached"] and s["reached_step"] == 20  # 46 >= 0.9 x 50
    assert [t["q"] for t in s["probes"]] == pytest.approx([(1 - eta * v) ** 2 for v in lams], rel=1e-12)
    after = sorted(v / 50 for v in (46.0, 60.0, 40.0, 55.0))  # 0.8, 0.92, 1.1, 1.2
    assert s["probes_after"] == 4 and s["median_ratio"] == pytest.approx((after[1] + after[2]) / 2)
    assert s["fraction_unstable"] == 0.5  # q > 1 exactly when lambda_max > 2 / eta: 60 and 55
    low = eos.summarise(rows[:2], eta)
    assert not low["reached"] and low["reached_step"] is None and "2/eta = 45 (max 30 over 2 probes)" in low["note"]


def test_a_tiny_run_end_to_end(tmp_path):
    x, y = synthetic_images(24)
    tx, ty = synthetic_images(12, seed=3)
    over = dict(width=0.125, batch=24, n_train=24, measure_size=24, epochs=6, probe_every=3, test_size=12, lr=0.05)
    s = eos.run(x, y, tmp_path / "run", test=(tx, ty), **over)
    assert [t["step"] for t in s["probes"]] == [0, 3, 6]
    assert all(math.isfinite(t["lambda_max"]) and 0 <= t["test_acc"] <= 1 for t in s["probes"])
    md = eos.markdown(s)
    assert "full-batch GD on the first 24 CIFAR-10 images" in md and md.count("\n|") == 2 + 2
    eos.plot(s, tmp_path / "eos.png")
    assert (tmp_path / "eos.png").read_bytes()[:4] == b"\x89PNG"
    again = eos.run(x, y, tmp_path / "run", test=(tx, ty), **over)  # resumes: a finished run is read back
    assert again["probes"] == s["probes"]
