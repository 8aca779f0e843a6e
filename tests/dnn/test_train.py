"""dnn.train / dnn.store / dnn.probes: update rules against explicit formulas, exactly-once resumable rows,
probes that leave the model bit-identical, and clear errors. Synthetic 8x8 images, tiny networks."""

import json
import math
import os

import pytest
import torch

from dnn import probes as probes_mod
from dnn.models import build_model
from dnn.objective import Objective, flat_params, model_state
from dnn.store import RunStore, read_rows
from dnn.train import TrainConfig, seed_for, train
from valleysim.errors import UserInputError

from tiny_nets import fake_batches_dir, synthetic_images

TIMING = ("train_time_s", "probe_time_s")


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def synthetic(n=48, seed=0):
    return synthetic_images(n, seed)


def cfg(**kw):
    base = dict(
        model="simplecnn",
        width=0.125,
        lr=0.05,
        batch=8,
        epochs=2,
        probes=("lanczos",),
        probe_every=0,
        measure_size=16,
        top_k=2,
        lanczos_tol=1e-6,
        hutchinson_samples=4,
        cov_batches=3,
        cov_batch=4,
        loss_change_batches=2,
        slq_starts=2,
        slq_steps=10,
        channels_last=False,
    )
    base.update(kw)
    return TrainConfig(**base)


def strip(rows):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def test_store_truncates_to_the_checkpoint_and_refuses_another_config(tmp_path):
    st = RunStore(tmp_path, {"a": 1})
    st.append({"step": 0, "x": float("nan")})
    st.save_checkpoint({"step": 0})
    st.append({"step": 1})  # written after the checkpoint
    with open(st.metrics_path, "a") as f:
        f.write('{"step": 2')  # torn line
    st2 = RunStore(tmp_path, {"a": 1})
    assert st2.load_checkpoint() == {"step": 0}
    assert read_rows(st2.metrics_path) == [{"step": 0, "x": None}]
    st2.append({"step": 1})
    assert [r["step"] for r in st2.rows()] == [0, 1]
    with pytest.raises(UserInputError, match="different configuration"):
        RunStore(tmp_path, {"a": 2})
    RunStore(tmp_path / "d", {"a": 1, "device": "cpu"})
    RunStore(tmp_path / "d", {"a": 1, "device": "cuda"})  # where it runs may change on resume
    # an option added after the run started resumes it at its default, and only there
    RunStore(tmp_path / "d", {"a": 1, "new": 0}, defaults={"new": 0})
    with pytest.raises(UserInputError, match="differs in: new"):
        RunStore(tmp_path / "d", {"a": 1, "new": 5}, defaults={"new": 0})


def test_kept_weights_are_the_models_at_those_steps(tmp_path):
    x, y = synthetic(24)
    c = cfg(epochs=1, batch=4, measure_size=8, probes=(), keep_every=2)
    store = train(c, tmp_path / "k", x, y, progress=False)
    kept = sorted(p.name for p in (tmp_path / "k" / "weights").iterdir())
    assert kept == [f"step{s:07d}.pt" for s in (0, 2, 4, 6)]  # 6 steps of 4 images
    final = torch.load(tmp_path / "k" / "checkpoint.pt", weights_only=True)["state"]["model"]
    last = torch.load(tmp_path / "k" / "weights" / "step0000006.pt", weights_only=True)
    assert all(torch.equal(final[k], last[k]) for k in final)
    start = build_model(c.model, input_shape=(3, 8, 8), width=c.width, seed=c.seed).state_dict()
    first = torch.load(tmp_path / "k" / "weights" / "step0000000.pt", weights_only=True)
    assert all(torch.equal(start[k], first[k]) for k in start)
    assert store.rows()[-1]["step"] == 6


def test_gd_step_is_the_full_gradient_step(tmp_path):
    x, y = synthetic(24)
    c = cfg(optimizer="gd", epochs=1, measure_size=24, probes=())
    train(c, tmp_path, x, y, progress=False)
    model0 = build_model("simplecnn", num_classes=10, input_shape=(3, 8, 8), width=0.125, seed=0)
    from dnn.data import channel_stats, normalize, to_float_nchw

    mean, std = channel_stats(x)
    obj = Objective(model0, normalize(to_float_nchw(x), mean, std), torch.as_tensor(y), dtype=torch.float64)
    expected = obj.theta0 - c.lr * obj.grad()
    ck = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    model0.load_state_dict(ck["state"]["model"])
    torch.testing.assert_close(flat_params(model0).double(), expected, rtol=0, atol=2e-6)


def test_gd_noise_adds_isotropic_gaussian_noise(tmp_path):
    x, y = synthetic(24)
    c = cfg(optimizer="gd-noise", noise_std=0.5, lr=0.1, epochs=1, probes=())
    c_gd = cfg(optimizer="gd", lr=0.1, epochs=1, probes=())
    thetas = []
    for i, cc in enumerate((c, c_gd)):
        train(cc, tmp_path / str(i), x, y, progress=False)
        m = build_model("simplecnn", input_shape=(3, 8, 8), width=0.125)
        m.load_state_dict(torch.load(tmp_path / str(i) / "checkpoint.pt", weights_only=True)["state"]["model"])
        thetas.append(flat_params(m).double())
    xi = (thetas[1] - thetas[0]) / (c.lr * c.noise_std)  # theta_gd - theta_noise = eta sigma xi
    n = xi.numel()
    assert abs(float(xi.mean())) < 5 / math.sqrt(n)
    assert abs(float(xi.var()) - 1.0) < 5 * math.sqrt(2 / n)
    gen = torch.Generator().manual_seed(seed_for(c.seed, 2, 0))
    torch.testing.assert_close(xi, torch.randn(n, generator=gen, dtype=torch.float32).double(), atol=1e-3, rtol=0)


def test_nsgd_step_is_the_explicit_projection(tmp_path):
    x, y = synthetic(16)
    c = cfg(
        optimizer="nsgd",
        nsgd_gamma=0.1,
        nsgd_k=2,
        top_k=2,
        batch=16,
        epochs=1,
        measure_size=16,
        augment=False,
        probes=(),
    )
    train(c, tmp_path, x, y, progress=False)
    model0 = build_model("simplecnn", input_shape=(3, 8, 8), width=0.125, seed=0)
    from dnn.data import channel_stats, normalize, to_float_nchw

    mean, std = channel_stats(x)
    obj = Objective(model0, normalize(to_float_nchw(x), mean, std), torch.as_tensor(y), dtype=torch.float64)
    H = torch.autograd.functional.hessian(
        lambda t: obj._losses(obj.unflatten(t), obj.inputs, obj.targets).mean(), obj.theta0
    )
    w, V = torch.linalg.eigh(H)
    E = V[:, -2:].T
    g = obj.grad()
    P = torch.eye(obj.dim, dtype=torch.float64) - (1 - c.nsgd_gamma) * E.T @ E
    expected = obj.theta0 - c.lr * (P @ g)
    m = build_model("simplecnn", input_shape=(3, 8, 8), width=0.125)
    m.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["state"]["model"])
    torch.testing.assert_close(flat_params(m).double(), expected, rtol=0, atol=5e-6)


def test_probes_leave_the_model_bit_identical():
    x, y = synthetic(16)
    m = build_model("simplecnn-bn", input_shape=(3, 8, 8), width=0.125, seed=1)
    m.train()
    before = model_state(m)
    c = cfg(model="simplecnn-bn", probes=tuple(probes_mod.PROBES))
    from dnn.walk_metrics import WalkTracker

    obj = Objective(m, torch.randn(16, 3, 8, 8), torch.as_tensor(y))
    walk = WalkTracker(obj.theta0.clone())
    walk.update(obj.theta0.clone(), obj.theta0 + 1e-3, torch.ones(obj.dim, dtype=torch.float64))
    ctx = probes_mod.ProbeContext(cfg=c, model=m, objective=obj, walk=walk, step=1)
    out = probes_mod.run_probes(c.probes, ctx)
    for k in (
        "lambda_max",
        "trace_hessian",
        "lambda_K",
        "alpha_star",
        "curvature_mean",
        "stability_factor",
        "height",
        "cos_consecutive",
        "bn_scale_norm",
    ):
        assert k in out, k
    after = model_state(m)
    assert all(torch.equal(before[k], after[k]) for k in before) and m.training
    lanczos_only = probes_mod.run_probes(("lanczos",), probes_mod.ProbeContext(cfg=c, model=m, objective=obj))
    assert lanczos_only["bn_scale_norm"] == out["bn_scale_norm"] > 0  # ||gamma|| in every row of a BN model


def test_killed_run_resumes_with_identical_rows(tmp_path, monkeypatch):
    x, y = synthetic(48)
    c = cfg(probes=("lanczos", "covariance", "walk"), probe_every=2, probe_acc=(0.3,))
    full = strip(train(c, tmp_path / "full", x, y, progress=False).rows())
    assert [r["step"] for r in full][:3] == [0, 2, 4] and full[-1]["step"] == 12
    calls = {"n": 0}
    real = probes_mod.run_probes

    def dying(names, ctx):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(names, ctx)

    monkeypatch.setattr(probes_mod, "run_probes", dying)
    with pytest.raises(KeyboardInterrupt):
        train(c, tmp_path / "cut", x, y, progress=False)
    assert len(read_rows(tmp_path / "cut" / "metrics.jsonl")) == 4
    monkeypatch.setattr(probes_mod, "run_probes", real)
    resumed = strip(train(c, tmp_path / "cut", x, y, progress=False).rows())
    assert resumed == full
    assert len(resumed) == len({(r["step"], r["reason"]) for r in resumed})


def test_divergence_is_a_row_not_a_crash(tmp_path):
    x, y = synthetic(24)
    rows = train(cfg(lr=1e6, probes=()), tmp_path, x, y, progress=False).rows()
    assert rows[-1]["reason"] == "diverged" and rows[-1]["diverged"] >= 0


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(model="resnet18"), "unknown model"),
        (dict(probes=("hessian",)), "unknown probe"),
        (dict(optimizer="nsgd", nsgd_k=4, top_k=2), "larger than the eigenpairs"),
        (dict(probes=("step",)), "add 'lanczos'"),
        (dict(optimizer="adam"), "unknown optimizer"),
        (dict(lr=0.0), "lr"),
        (dict(optimizer="gd-noise"), "noise-std"),
        (dict(model="simplecnn-bn", bn="batch", probes=("lanczos", "curvature")), "independent examples"),
    ],
)
def test_bad_configurations_are_named(kw, match):
    with pytest.raises(UserInputError, match=match):
        cfg(**kw)


def test_cli_missing_data_path_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from valleysim.cli import main

    monkeypatch.delenv("VALLEYSIM_DATA", raising=False)
    assert main(["dnn", "train", "--out", str(tmp_path / "r")]) == 2
    assert "data" in capsys.readouterr().err.lower()
    assert main(["dnn", "train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_curvature_probes_against_the_dense_hessian():
    """lanczos + trace (and ||H||_F) + curvature through the registry vs the autograd Hessian (float64)."""
    x, y = synthetic(16)
    m = build_model("simplecnn", input_shape=(3, 8, 8), width=0.125, seed=2)
    obj = Objective(m, torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0)), torch.as_tensor(y))
    c = cfg(probes=("lanczos", "trace", "curvature", "negative"), top_k=3, lanczos_tol=1e-8, hutchinson_samples=30)
    ctx = probes_mod.ProbeContext(cfg=c, model=m, objective=obj, n_train=16)
    out = probes_mod.run_probes(c.probes, ctx)
    H = torch.autograd.functional.hessian(
        lambda t: obj._losses(obj.unflatten(t), obj.inputs, obj.targets).mean(), obj.theta0
    )
    w = torch.linalg.eigvalsh(H).flip(0)
    for i in range(3):
        assert out[f"lambda_H_{i + 1}"] == pytest.approx(float(w[i]), rel=1e-6)
    assert abs(out["trace_hessian"] - float(H.trace())) < 4 * out["trace_hessian_se"]
    assert abs(out["frobenius_hessian"] - float(torch.linalg.matrix_norm(H))) < 4 * out["frobenius_hessian_se"]
    assert out["lambda_min"] == pytest.approx(float(w[-1]), rel=1e-6)
    assert out["neg_eig_sum"] == pytest.approx(float(w[-3:].clamp(max=0).sum()), rel=1e-6)
    assert out["curvature_mean"] == pytest.approx(float(w[0]), rel=1e-6)
    from valleysim.theory import stability_factor, variance_factor

    q = stability_factor(c.lr, out["curvature_mean"], out["curvature_var"], variance_factor(c.batch, 16))
    assert out["stability_factor"] == pytest.approx(float(q), rel=1e-12)


def test_cli_end_to_end_on_pickled_batches(tmp_path, monkeypatch, capsys):
    """valleysim dnn train on a tiny canonical cifar-10-batches-py directory; rerunning is a no-op."""
    from valleysim.cli import main

    d, _ = fake_batches_dir(tmp_path / "data")
    monkeypatch.setenv("VALLEYSIM_DATA_CACHE", str(tmp_path / "cache"))
    args = [
        "dnn",
        "train",
        "--data",
        str(d),
        "--model",
        "simplecnn",
        "--width",
        "0.125",
        "--batch",
        "4",
        "--max-steps",
        "3",
        "--measure-size",
        "6",
        "--probes",
        "lanczos,covariance",
        "--cov-batches",
        "2",
        "--cov-batch",
        "2",
        "--top-k",
        "1",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert '"lambda_max"' in out and '"lambda_K"' in out
    rows = read_rows(tmp_path / "run" / "metrics.jsonl")
    assert [r["reason"] for r in rows] == ["start", "end"] and rows[-1]["step"] == 3
    assert main(args) == 0
    assert read_rows(tmp_path / "run" / "metrics.jsonl") == rows
    assert main(args[:-3] + ["--lr", "0.5", "--out", str(tmp_path / "run")]) == 2
    assert "different configuration" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(args + ["--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_a_network_that_cannot_fit_is_refused_before_the_run_directory_exists(tmp_path, cli, monkeypatch):
    data, _ = fake_batches_dir(tmp_path / "data")
    monkeypatch.setenv("VALLEYSIM_DATA_CACHE", str(tmp_path / "cache"))
    code, _, err = cli("dnn", "train", "--data", data, "--out", tmp_path / "run", "--width", "1000", "--batch", "4")
    assert code == 2 and "parameters, batch 4) needs about" in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("drop_last, steps", [(True, 2), (False, 3)])
def test_the_last_partial_batch_is_dropped_unless_kept(tmp_path, drop_last, steps):
    """20 examples in batches of 8: 2 full batches an epoch (the 4-example rest dropped), or 3 with it."""
    x, y = synthetic(20)
    rows = train(cfg(epochs=2, probes=(), drop_last=drop_last), tmp_path, x, y, progress=False).rows()
    assert [(r["step"], r["reason"]) for r in rows] == [(0, "start"), (steps, "epoch"), (2 * steps, "end")]


def test_test_metrics_are_the_eval_mode_loss_on_the_test_set(tmp_path):
    """test_loss / test_acc of the last row against a float64 forward pass by hand: the final weights,
    the test images normalised with the training set's channel statistics (numpy), log-softmax."""
    import numpy as np

    x, y = synthetic(24)
    tx, ty = synthetic(30, seed=5)
    rows = train(
        cfg(model="simplecnn-bn", epochs=1, probes=(), test_size=20), tmp_path, x, y, test=(tx, ty), progress=False
    ).rows()
    assert all("test_loss" in r and "test_acc" in r for r in rows)
    m = build_model("simplecnn-bn", input_shape=(3, 8, 8), width=0.125)
    m.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["state"]["model"])
    f = x.astype(np.float64) / 255
    mean, std = f.mean(axis=(0, 1, 2)), f.std(axis=(0, 1, 2))
    t = ((tx[:20].astype(np.float64) / 255 - mean) / std).transpose(0, 3, 1, 2)
    m.eval()
    with torch.no_grad():
        logits = m.double()(torch.as_tensor(t)).numpy()
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    assert rows[-1]["test_loss"] == pytest.approx(-logp[np.arange(20), ty[:20]].mean(), rel=1e-5)
    assert rows[-1]["test_acc"] == np.mean(logits.argmax(1) == ty[:20])
    with pytest.raises(UserInputError, match="test_size must be in 0..30"):
        train(cfg(test_size=31), tmp_path / "b", x, y, test=(tx, ty), progress=False)
    none = train(cfg(epochs=1, probes=(), test_size=0), tmp_path / "c", x, y, test=(tx, ty), progress=False)
    assert all("test_loss" not in r for r in none.rows())


def test_alignment_probe_against_explicit_K_and_dense_H():
    """alignment through the registry vs tr(H K), ||K||_F, eigenvectors of the explicit K = D^T D / (L c) and
    the autograd Hessian (float64)."""
    from dnn.covariance import mini_batch_gradients
    from valleysim.theory import variance_factor

    x, y = synthetic(16)
    m = build_model("simplecnn", input_shape=(3, 8, 8), width=0.125, seed=3)
    obj = Objective(m, torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1)), torch.as_tensor(y))
    c = cfg(
        probes=("lanczos", "trace", "covariance", "alignment"),
        top_k=3,
        lanczos_tol=1e-9,
        lanczos_max_iter=300,
        hutchinson_samples=5,
        cov_batches=6,
        cov_batch=4,
    )
    out = probes_mod.run_probes(c.probes, probes_mod.ProbeContext(cfg=c, model=m, objective=obj, n_train=16))
    H = torch.autograd.functional.hessian(
        lambda t: obj._losses(obj.unflatten(t), obj.inputs, obj.targets).mean(), obj.theta0
    )
    D = mini_batch_gradients(obj, 6, 4, seed=c.seed) - obj.grad()  # the probe's batches (seed + step 0)
    K = D.T @ D / (6 * variance_factor(4, 16))
    assert out["trace_HK"] == pytest.approx(float(torch.trace(H @ K)), rel=1e-9)
    assert out["frobenius_K"] == pytest.approx(float(torch.linalg.matrix_norm(K)), rel=1e-9)
    assert out["cos_HK"] == pytest.approx(out["trace_HK"] / (out["frobenius_hessian"] * out["frobenius_K"]), rel=1e-12)
    assert out["c_fit_HK"] == pytest.approx(out["trace_HK"] / out["frobenius_hessian"] ** 2, rel=1e-12)
    wH, VH = torch.linalg.eigh(H)
    wK, VK = torch.linalg.eigh(K)
    eH, VK5 = VH[:, -3:].flip(1).T, VK[:, -5:].flip(1).T  # rows, largest first
    assert out["cos_eK1_eH1"] == pytest.approx(float(abs(VK5[0] @ eH[0])), rel=1e-6)
    assert out["overlap_K_H"] == pytest.approx(float(((eH @ VK5.T) ** 2).sum()) / 5, rel=1e-6)
    assert out["alpha_eH1"] == pytest.approx(float(eH[0] @ K @ eH[0]) / float(wH[-1]), rel=1e-6)
    with pytest.raises(UserInputError, match="alignment needs lanczos, trace and covariance"):
        cfg(probes=("lanczos", "alignment"))


def test_a_refused_run_leaves_out_untouched(tmp_path):
    """Options checked against the data (here the measurement size) fail before --out is written, so the
    corrected command then starts the run (issue 18)."""
    x, y = synthetic(24)
    with pytest.raises(UserInputError, match="measurement subset size must be in 1..24"):
        train(cfg(measure_size=100000), tmp_path / "r", x, y, progress=False)
    assert not (tmp_path / "r").exists()
    with pytest.raises(UserInputError, match="--init-from: no such file"):
        train(cfg(init_from=str(tmp_path / "missing.pt")), tmp_path / "r", x, y, progress=False)
    assert not (tmp_path / "r").exists()
    assert train(cfg(measure_size=8, epochs=1), tmp_path / "r", x, y, progress=False).rows()


def test_a_second_writer_is_refused_by_name(tmp_path):
    from valleysim.locking import DirectoryLock

    x, y = synthetic(24)
    (tmp_path / "r").mkdir()
    holder = DirectoryLock(tmp_path / "r", "test").acquire()  # another process's lock, as far as flock knows
    try:
        with pytest.raises(UserInputError, match=rf"in use by another dnn train \(pid {os.getpid()}\)"):
            train(cfg(epochs=1, measure_size=8), tmp_path / "r", x, y, progress=False)
        assert not (tmp_path / "r" / "config.json").exists()
    finally:
        holder.release()
    rows = train(cfg(epochs=1, measure_size=8), tmp_path / "r", x, y, progress=False).rows()
    again = train(cfg(epochs=1, measure_size=8), tmp_path / "r", x, y, progress=False).rows()  # released
    assert again == rows


def test_a_resume_under_another_thread_count_is_flagged(tmp_path, capsys):
    x, y = synthetic(24)
    c = cfg(epochs=1, measure_size=8)
    n = torch.get_num_threads()
    train(c, tmp_path / "r", x, y, progress=False)
    env = json.loads((tmp_path / "r" / "environment.json").read_text())
    assert env == {"torch_version": torch.__version__, "torch_threads": n}
    capsys.readouterr()
    train(c, tmp_path / "r", x, y, progress=False)
    assert "another environment" not in capsys.readouterr().err
    torch.set_num_threads(n + 1)
    try:
        train(c, tmp_path / "r", x, y, progress=False)
    finally:
        torch.set_num_threads(n)
    err = capsys.readouterr().err
    assert f"torch_threads {n} -> {n + 1}" in err
    assert "shown as stored" in err and "resumed" not in err  # a finished run is reopened, not resumed


def test_a_run_is_its_data_by_content(tmp_path, capsys):
    """The arrays a run trains and scores on are part of its identity (config.json's ``data``): other
    training images, other labels (another label order) or other test examples are refused, by name, on
    resume and on a finished run; the same arrays (a moved copy of the data) reopen it. A run stored before
    runs recorded their data resumes as before, with a warning."""
    from dnn.data import data_digest

    x, y = synthetic(24)
    tx, ty = synthetic(6, seed=3)
    c = cfg(probes=(), max_steps=2, measure_size=8, test_size=4)
    rows = train(c, tmp_path, x, y, test=(tx, ty), progress=False).rows()
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["data"] == data_digest(x, y, (tx[:4], ty[:4]))
    assert train(c, tmp_path, x.copy(), y.copy(), test=(tx, ty[:5]), progress=False).rows() == rows  # 5th unused
    other_x = x.copy()
    other_x[3, 0, 0, 0] ^= 1
    other_y = y[::-1].copy()
    other_t = (tx[::-1].copy(), ty)
    for images, labels, test in ((other_x, y, (tx, ty)), (x, other_y, (tx, ty)), (x, y, other_t), (x, y, None)):
        with pytest.raises(UserInputError, match=f"{tmp_path} holds a run trained on other data .*--data"):
            train(c, tmp_path, images, labels, test=test, progress=False)
    # n_train: the data of a run is the part it trains on
    part = cfg(probes=(), max_steps=1, measure_size=8, n_train=16)
    train(part, tmp_path / "part", x, y, progress=False)
    assert train(part, tmp_path / "part", x[:16], y[:16], progress=False).n_rows == 2
    # a run from before runs recorded their data
    del stored["data"]
    (tmp_path / "config.json").write_text(json.dumps(stored))
    capsys.readouterr()
    assert train(c, tmp_path, other_x, y, test=(tx, ty), progress=False).rows() == rows
    assert "was started before runs recorded their data" in capsys.readouterr().err


def test_init_from_is_its_content_and_a_stored_config_rebuilds(tmp_path):
    """init_from is stored as the sha256 of its file: the same weights under another path are the same run,
    other weights under the same path another. TrainConfig.from_stored rebuilds the config of a run."""
    x, y = synthetic(24)
    w = tmp_path / "w.pt"
    torch.save(build_model("simplecnn", width=0.125, seed=5, input_shape=(3, 8, 8)).state_dict(), w)
    c = cfg(probes=(), max_steps=1, measure_size=8, init_from=str(w))
    rows = train(c, tmp_path / "r", x, y, progress=False).rows()
    stored = json.loads((tmp_path / "r" / "config.json").read_text())
    assert stored["init_from"].startswith("sha256:") and len(stored["init_from"]) == 7 + 64
    moved = tmp_path / "moved.pt"
    w.rename(moved)
    import dataclasses

    assert train(dataclasses.replace(c, init_from=str(moved)), tmp_path / "r", x, y, progress=False).rows() == rows
    torch.save(build_model("simplecnn", width=0.125, seed=6, input_shape=(3, 8, 8)).state_dict(), moved)
    with pytest.raises(UserInputError, match="differs in: init_from"):
        train(dataclasses.replace(c, init_from=str(moved)), tmp_path / "r", x, y, progress=False)
    back = TrainConfig.from_stored(stored)
    assert back == dataclasses.replace(c, init_from=None)
