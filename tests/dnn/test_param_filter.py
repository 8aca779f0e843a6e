"""The objective's parameter filter (per-layer curvature): every derivative is the block of the full one
(dense float64 truths indexed by offsets computed here from the model), the fixed parameters follow
``load``, clear errors, and a training run whose probes see only the block."""

import argparse
import dataclasses
import json

import pytest
import torch
from test_train import cfg as train_cfg

from dnn import eigen
from dnn.config import TrainConfig
from dnn.models import build_model
from dnn.objective import Objective, model_state, select_parameters
from valleysim.errors import UserInputError

from tiny_nets import data, synthetic_images, tiny_net

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# tiny_net(bn=True): 0 Conv2d (0.weight, 0.bias), 1 BatchNorm2d (1.weight, 1.bias), 5 Linear (5.weight, 5.bias)
CASES = [
    ("5", ["5.weight", "5.bias"]),  # a module name
    ("*.bias", ["0.bias", "1.bias", "5.bias"]),  # a parameter-name pattern
    (["1", "0.weight"], ["0.weight", "1.weight", "1.bias"]),  # a sequence, in named_parameters order
    ("0.*, 5.bias", ["0.weight", "0.bias", "5.bias"]),  # a comma-separated string
]


def block_index(model, names) -> torch.Tensor:
    """Positions of ``names``' entries in the full flat vector (named_parameters order)."""
    offsets, start = {}, 0
    for k, p in model.named_parameters():
        offsets[k] = (start, start + p.numel())
        start += p.numel()
    return torch.cat([torch.arange(*offsets[k]) for k in names])


def dense_hessian(obj) -> torch.Tensor:
    return torch.autograd.functional.hessian(
        lambda t: obj._losses(obj.unflatten(t), obj.inputs, obj.targets).mean(), obj.theta0
    )


def embed(v, idx, P):
    out = torch.zeros(P, dtype=v.dtype)
    out[idx] = v
    return out


@pytest.mark.parametrize("pattern, names", CASES)
def test_every_derivative_is_the_block_of_the_full_one(pattern, names):
    net, (x, y) = tiny_net(bn=True), data()
    before = model_state(net)
    full = Objective(net, x, y, chunk=5)
    obj = Objective(net, x, y, chunk=5, params=pattern)
    idx = block_index(net, names)
    assert obj.names == names and obj.dim == len(idx) and obj.full_dim == full.dim and obj.filtered
    torch.testing.assert_close(obj.theta0, full.theta0[idx], rtol=0, atol=0)
    assert obj.loss() == full.loss() and obj.accuracy() == full.accuracy()
    H = dense_hessian(full)
    Hb = H[idx][:, idx]
    torch.testing.assert_close(eigen.dense_matrix(obj.hvp, obj.dim, dtype=torch.float64), Hb, rtol=1e-10, atol=1e-12)
    g = full.grad()
    torch.testing.assert_close(obj.grad(), g[idx], rtol=1e-12, atol=1e-14)
    value, gb = obj.loss_and_grad(idx=torch.arange(7))
    assert value == pytest.approx(full.loss(idx=torch.arange(7)), rel=1e-14)
    torch.testing.assert_close(gb, full.grad(idx=torch.arange(7))[idx], rtol=1e-12, atol=1e-14)
    Gi = full.per_example_grads()
    torch.testing.assert_close(obj.per_example_grads(), Gi[:, idx], rtol=1e-12, atol=1e-14)
    v = torch.randn(obj.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(
        obj.per_example_curvature(v), full.per_example_curvature(embed(v, idx, full.dim)), rtol=1e-10, atol=1e-12
    )
    # a theta other than theta0 moves only the block
    th = obj.theta0 + 0.1 * v
    torch.testing.assert_close(
        obj.hvp(v, theta=th), full.hvp(embed(v, idx, full.dim), theta=full.theta0.index_put((idx,), th))[idx]
    )
    if hasattr(obj, "gnvp"):  # the Gauss-Newton and covariance products, where the objective has them
        torch.testing.assert_close(obj.gnvp(v), full.gnvp(embed(v, idx, full.dim))[idx], rtol=1e-10, atol=1e-12)
    if hasattr(obj, "covariance_vp"):
        D = Gi[:, idx] - g[idx]
        K = D.T @ D / full.n
        torch.testing.assert_close(obj.covariance_vp(v), K @ v, rtol=1e-10, atol=1e-12)
        assert obj.covariance_trace() == pytest.approx(float(K.trace()), rel=1e-10)
    # a list of every parameter's gradient gives the block, as the dict does
    grads = [torch.full(p.shape, float(i)) for i, p in enumerate(net.parameters())]
    torch.testing.assert_close(obj.vector(grads), full.vector(grads)[idx])
    after = model_state(net)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_batch_statistics_policy_block():
    net, (x, y) = tiny_net(bn=True), data()
    full = Objective(net, x, y, bn="batch", bn_batch=4, chunk=4)
    obj = Objective(net, x, y, bn="batch", bn_batch=4, chunk=4, params="1")
    idx = block_index(net, ["1.weight", "1.bias"])
    Hb = eigen.dense_matrix(obj.hvp, obj.dim, dtype=torch.float64)
    torch.testing.assert_close(Hb, dense_hessian(full)[idx][:, idx], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(obj.grad(), full.grad()[idx], rtol=1e-12, atol=1e-14)


def test_all_patterns_and_none_select_everything():
    net, (x, y) = tiny_net(bn=False), data()
    full = Objective(net, x, y)
    for params in (None, "*", ["0", "4"]):  # tiny_net(bn=False): 0 Conv2d, 4 Linear
        obj = Objective(net, x, y, params=params)
        assert obj.names == full.names and not obj.filtered and obj.dim == full.dim
        torch.testing.assert_close(obj.grad(), full.grad(), rtol=0, atol=0)


def test_a_pattern_that_matches_nothing_names_it_and_the_names():
    net, (x, y) = tiny_net(bn=False), data()
    with pytest.raises(UserInputError, match=r"'conv\*' matches no .*modules: 0, 4; parameters: 0.weight"):
        Objective(net, x, y, params="4, conv*")
    with pytest.raises(UserInputError, match="empty pattern"):
        Objective(net, x, y, params="4,")
    with pytest.raises(UserInputError, match="must be strings"):
        select_parameters(net, [5])
    with pytest.raises(UserInputError, match="4.Weight"):  # case-sensitive
        select_parameters(net, "4.Weight")
    with torch.device("meta"):
        big = build_model("resnet32", width=0.25)
    with pytest.raises(UserInputError, match=r"--probe-params: 'nope' .*\.\.\. \(\d+ more\)") as err:
        select_parameters(big, "nope", what="--probe-params")
    assert len(str(err.value)) < 2000  # shortened


def test_load_takes_the_fixed_parameters_too():
    net, (x, y) = tiny_net(bn=True), data()
    obj = Objective(net, x, y, params="5")
    H0 = eigen.dense_matrix(obj.hvp, obj.dim, dtype=torch.float64)
    with torch.no_grad():  # change parameters outside the block (and one inside, and a BN statistic)
        net[0].weight.mul_(1.5)
        net[5].bias.add_(0.3)
        net[1].running_mean.add_(0.2)
    obj.load(net)
    fresh = Objective(net, x, y)
    idx = block_index(net, ["5.weight", "5.bias"])
    H1 = eigen.dense_matrix(obj.hvp, obj.dim, dtype=torch.float64)
    assert not torch.allclose(H0, H1, rtol=1e-3)
    torch.testing.assert_close(H1, dense_hessian(fresh)[idx][:, idx], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(obj.theta0, fresh.theta0[idx], rtol=0, atol=0)
    assert obj.loss() == fresh.loss()


def cfg(**kw):
    """test_train's tiny SimpleCNN run, one epoch, measured in float64 to a tight tolerance."""
    base = dict(epochs=1, measure_dtype="float64", lanczos_tol=1e-9, lanczos_max_iter=200)
    base.update(kw)
    return train_cfg(**base)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(probe_params="features.0,nothing"), r"--probe-params: 'nothing' matches no .*classifier"),
        (dict(probe_params="classifier", probes=("lanczos", "walk")), "--probe-params: the walk probe"),
        (dict(probe_params="classifier", optimizer="nsgd", nsgd_k=2), "--probe-params: NSGD"),
        (dict(probe_params=3), "--probe-params takes comma-separated patterns"),
    ],
)
def test_bad_probe_params_are_named(kw, match):
    with pytest.raises(UserInputError, match=match):
        cfg(**kw)


def test_cli_option_and_a_stored_config_without_the_field_resumes(tmp_path):
    from dnn.cli import add_config_options, config_from_args
    from dnn.train import train

    p = argparse.ArgumentParser()
    add_config_options(p)
    a = p.parse_args(["--model", "mlp", "--probe-params", "net.1.*,net.5"])
    assert config_from_args(a).probe_params == "net.1.*,net.5"
    with pytest.raises(UserInputError, match="--probe-params: 'net.0' matches no"):  # checked on the MLP's names
        config_from_args(p.parse_args(["--model", "mlp", "--probe-params", "net.0"]))
    assert TrainConfig.defaults()["probe_params"] is None
    x, y = synthetic_images(16)
    c = cfg(probes=(), max_steps=1, measure_size=8)
    train(c, tmp_path, x, y, progress=False)
    stored = json.loads((tmp_path / "config.json").read_text())
    del stored["probe_params"]
    (tmp_path / "config.json").write_text(json.dumps(stored))
    train(c, tmp_path, x, y, progress=False)  # resumes (a no-op: the run is done)
    with pytest.raises(UserInputError, match="differs in: probe_params"):
        train(dataclasses.replace(c, probe_params="classifier"), tmp_path, x, y, progress=False)


def test_a_run_with_probe_params_measures_the_block(tmp_path):
    """lambda_max of every row = the top eigenvalue of the block of the dense full Hessian (full-objective
    HVPs on unit vectors), at the row's weights; the run's model is untouched by the probes."""
    from dnn.data import channel_stats
    from dnn.train import measurement_objective, train

    x, y = synthetic_images(24)
    pattern, names = "features.0,classifier.3.bias", ["features.0.weight", "features.0.bias", "classifier.3.bias"]
    c = cfg(probe_params=pattern, keep_every=3, probe_every=3)
    out = tmp_path / "run"
    store = train(c, out, x, y, progress=False)
    rows = store.rows()
    assert [r["step"] for r in rows] == [0, 3] and all(r["probe_params"] == pattern for r in rows)
    mean, std = channel_stats(x)
    model = build_model(c.model, input_shape=(3, 8, 8), width=c.width, seed=c.seed)
    idx = block_index(model, names)
    for row in rows:
        model.load_state_dict(torch.load(out / "weights" / f"step{row['step']:07d}.pt", weights_only=True))
        full = measurement_objective(dataclasses.replace(c, probe_params=None), model, x, y, mean, std)
        E = torch.eye(full.dim, dtype=torch.float64)[idx]
        Hb = torch.stack([full.hvp(e)[idx] for e in E], dim=1)
        w = torch.linalg.eigvalsh((Hb + Hb.T) / 2)
        assert row["lambda_max"] == pytest.approx(float(w[-1]), rel=1e-7)
        assert row["lambda_H_2"] == pytest.approx(float(w[-2]), rel=1e-6)
        blk = measurement_objective(c, model, x, y, mean, std)
        assert blk.dim == len(idx) and row["measure_loss"] == pytest.approx(full.loss(), rel=1e-12)
