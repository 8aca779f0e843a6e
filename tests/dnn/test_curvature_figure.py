"""figures/dnn_curvature.py on a tiny synthetic run: every probe's quadrature survives in the checkpoint, the
figure's numbers are the run's, and the quadrature of the last probe is the one a fresh SLQ of the final
weights gives (same seed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import cfg as train_cfg

from dnn import density as D
from dnn.data import channel_stats
from dnn.models import build_model
from dnn.train import measurement_objective, train

from tiny_nets import Payload, fake_batches_dir, synthetic_images

ROOT = Path(__file__).resolve().parents[2]
PROBES = ("lanczos", "covariance", "exact_covariance", "gauss_newton", "density")

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def tiny_run(out):
    x, y = synthetic_images(32, 0)
    cfg = train_cfg(epochs=1, probes=PROBES, probe_every=2, measure_size=12, slq_steps=8)
    train(cfg, out, x, y, progress=False)
    return cfg, x, y


def figure(*argv, timeout=300):
    """figures/dnn_curvature.py in its own process."""
    cmd = [sys.executable, str(ROOT / "figures" / "dnn_curvature.py"), *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def test_figure_reads_every_probes_density_and_matches_a_fresh_quadrature(tmp_path):
    run = tmp_path / "run"
    cfg, x, y = tiny_run(run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    res = figure("--run", run, "--out", tmp_path / "f")
    assert res.returncode == 0, res.stderr[-3000:]
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # read only
    assert (tmp_path / "f" / "dnn_curvature.png").stat().st_size > 10_000
    data = json.loads((tmp_path / "f" / "dnn_curvature.json").read_text())
    steps = [r["step"] for r in data["rows"]]
    assert steps == [0, 2, 4] and sorted(map(int, data["density"])) == steps  # 4 steps of 8: probes 0, 2, 4
    for r in data["rows"]:  # the figure's rows are the run's probe columns, from the stored quadrature
        d = data["density"][str(r["step"])]
        q = D.SLQResult([np.array(t) for t in d["nodes"]], [np.array(w) for w in d["weights"]], d["dim"], 0, 8, 0, "")
        assert D.negative_mass(q)[0] == pytest.approx(r["slq_neg_mass"], rel=1e-12, abs=1e-12)
        assert D.slq_trace(q)[0] == pytest.approx(r["slq_trace"], rel=1e-12)
        for k in ("lambda_K_gram_over_exact", "trace_K_gram_over_exact", "second_term_norm_eH1", "cos_HG"):
            assert np.isfinite(r[k]), k
    # the last probe's quadrature is a fresh SLQ of the final weights with the probe's seed (seed + step)
    ck = torch.load(run / "checkpoint.pt", weights_only=True)["state"]
    model = build_model(cfg.model, input_shape=(3, 8, 8), width=cfg.width, seed=cfg.seed)
    model.load_state_dict(ck["model"])
    obj = measurement_objective(cfg, model, x, y, *channel_stats(x))
    fresh = D.slq(obj.hvp, obj.theta0, n_starts=2, m=8, seed=cfg.seed + 4)
    last = data["density"]["4"]
    for a, b in zip(fresh.nodes, last["nodes"]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_a_run_without_the_density_probe_is_a_named_error(tmp_path):
    res = figure("--run", tmp_path, "--out", tmp_path)
    assert res.returncode == 2 and "not a dnn train directory" in res.stderr and "Traceback" not in res.stderr


def test_convergence_reruns_the_last_density_probe_from_the_data_path(tmp_path, monkeypatch):
    monkeypatch.setenv("VALLEYSIM_DATA_CACHE", str(tmp_path / "cache"))
    d, expect = fake_batches_dir(tmp_path / "data", per_batch=8)
    x, y = expect["train"]
    cfg = train_cfg(epochs=1, probes=("density",), measure_size=12, slq_steps=8)
    train(cfg, tmp_path / "run", x, y, progress=False)  # 5 steps: probes at 0 and 5
    run, out = tmp_path / "run", tmp_path / "f"
    res = figure("--run", run, "--out", out, "--data", d, "--convergence", "4,8")
    assert res.returncode == 0, res.stderr[-3000:]
    conv = json.loads((tmp_path / "f" / "dnn_curvature.json").read_text())["convergence"]
    assert [c["steps"] for c in conv] == [4, 8] and conv[1]["reproduces_run"] is True
    assert all(np.isfinite(c["slq_neg_mass"]) and c["density_n_hvp"] == 2 * c["steps"] for c in conv)
    bad = figure("--run", run, "--convergence", "8", timeout=120)
    assert bad.returncode == 2 and "--convergence needs --data" in bad.stderr
    # the run's files as the figure reads them: a damaged environment.json, weights of another network
    (run / "environment.json").write_text('{"torch_threads": ')
    bad = figure("--run", run, "--out", out, "--data", d, "--convergence", "8", timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "environment.json is damaged" in bad.stderr
    (run / "environment.json").unlink()
    ck = torch.load(run / "checkpoint.pt", weights_only=True)
    ck["state"]["model"]["features.0.weight"] = torch.zeros(2)
    torch.save(ck, run / "checkpoint.pt")
    bad = figure("--run", run, "--out", out, "--data", d, "--convergence", "8", timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr
    assert "does not hold the weights of its config's model (features.0.weight is (2,)" in bad.stderr


def test_the_figure_never_runs_a_checkpoint_and_names_a_damaged_one(tmp_path):
    x, y = synthetic_images(32, 0)
    run = tmp_path / "run"
    train(train_cfg(epochs=1, probes=("density",), measure_size=12, slq_steps=8), run, x, y, progress=False)
    path, marker = run / "checkpoint.pt", tmp_path / "MARKER"
    good = torch.load(path, weights_only=True)
    ck = torch.load(path, weights_only=True)
    ck["state"]["state"]["probe_state"]["slq"][0] = Payload(marker)
    torch.save(ck, path)
    res = figure("--run", run, "--out", tmp_path / "f")
    assert not marker.exists(), "the payload ran"
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr
    assert f"{path} refused: it holds Python objects, not only tensors (posix.system)" in res.stderr
    good["state"]["state"]["probe_state"]["slq"][0] = {"nodes": 1}  # plain data, not a quadrature
    torch.save(good, path)
    res = figure("--run", run, "--out", tmp_path / "f")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "holds damaged density quadratures" in res.stderr
