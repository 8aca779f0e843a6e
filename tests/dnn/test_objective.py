"""dnn.objective against dense float64 truth: autograd losses/gradients, torch.autograd.functional.hessian,
per-example loops; and the model is left bit-identical."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dnn.objective import Objective, flat_params, model_state
from valleysim.errors import UserInputError

from tiny_nets import data, tiny_net


def reference_logits(net, x, bn, group):
    """Logits from an ordinary forward of a float64 copy (batch statistics per ``group`` for bn='batch')."""
    net = copy.deepcopy(net).double()
    net.train(bn == "batch")
    if bn == "eval":
        return net, net(x.double())
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats, m.running_mean, m.running_var = False, None, None
    return net, torch.cat([net(x[s : s + group].double()) for s in range(0, len(x), group)])


def reference_hessian(obj):
    return torch.autograd.functional.hessian(
        lambda t: obj._losses(obj.unflatten(t), obj.inputs, obj.targets).mean(), obj.theta0
    )


@pytest.mark.parametrize("bn", ["eval", "batch"])
def test_loss_grad_hvp_against_dense_truth(bn):
    net, (x, y) = tiny_net(bn=True), data()
    obj = Objective(net, x, y, bn=bn, bn_batch=4, chunk=4)
    with torch.no_grad():
        loss = F.cross_entropy(reference_logits(net, x, bn, 4)[1], y)
    assert obj.loss() == pytest.approx(loss.item(), rel=1e-13)
    # gradient by an ordinary backward pass on a float64 copy
    net64, logits = reference_logits(net, x, bn, 4)
    F.cross_entropy(logits, y).backward()
    g_ref = torch.cat([p.grad.reshape(-1) for p in net64.parameters()])
    value, g = obj.loss_and_grad()
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(obj.grad(), g_ref, rtol=1e-12, atol=1e-14)
    assert value == pytest.approx(obj.loss(), rel=1e-14)
    H = reference_hessian(obj)
    torch.testing.assert_close(H, H.T, rtol=1e-12, atol=1e-12)
    v = torch.randn(obj.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(obj.hvp(v), H @ v, rtol=1e-10, atol=1e-12)


def test_label_smoothing_is_the_smoothed_cross_entropy():
    """eps-smoothed targets by hand: (1 - eps) (-log p_y) + eps mean_c (-log p_c); gradient and HVP of it."""
    net, (x, y) = tiny_net(bn=False), data()
    eps = 0.2
    obj = Objective(net, x, y, chunk=3, label_smoothing=eps)
    net64, logits = reference_logits(net, x, "eval", 4)
    logp = torch.log_softmax(logits, dim=1)
    by_hand = ((1 - eps) * -logp.gather(1, y[:, None])[:, 0] - eps * logp.mean(1)).mean()
    assert obj.loss() == pytest.approx(by_hand.item(), rel=1e-13)
    assert abs(obj.loss() - Objective(net, x, y).loss()) > 1e-3  # eps changes the loss
    by_hand.backward()
    g_ref = torch.cat([p.grad.reshape(-1) for p in net64.parameters()])
    torch.testing.assert_close(obj.grad(), g_ref, rtol=1e-12, atol=1e-14)
    H = reference_hessian(obj)
    v = torch.randn(obj.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(obj.hvp(v), H @ v, rtol=1e-10, atol=1e-12)
    with pytest.raises(UserInputError, match="label_smoothing must be in"):
        Objective(net, x, y, label_smoothing=1.0)


def test_eval_policy_does_not_depend_on_chunking_and_subsets_are_exact():
    net, (x, y) = tiny_net(bn=True), data(n=13)
    a, b = Objective(net, x, y, chunk=13), Objective(net, x, y, chunk=3)
    v = torch.randn(a.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert a.loss() == pytest.approx(b.loss(), rel=1e-14)
    torch.testing.assert_close(a.hvp(v), b.hvp(v), rtol=1e-12, atol=1e-14)
    idx = torch.tensor([0, 5, 6, 11])
    sub = Objective(net, x[idx], y[idx])
    torch.testing.assert_close(b.grad(idx=idx), sub.grad(), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(b.hvp(v, idx=idx), sub.hvp(v), rtol=1e-12, atol=1e-14)
    assert b.loss(idx=idx) == pytest.approx(sub.loss(), rel=1e-14)


def test_per_example_gradients_and_curvature():
    net, (x, y) = tiny_net(bn=True), data(n=7)
    obj = Objective(net, x, y, chunk=3)
    G = obj.per_example_grads()
    assert G.shape == (7, obj.dim)
    for i in range(7):
        gi = Objective(net, x[i : i + 1], y[i : i + 1]).grad()
        torch.testing.assert_close(G[i], gi, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(G.mean(0), obj.grad(), rtol=1e-12, atol=1e-15)
    v = torch.randn(obj.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    c = obj.per_example_curvature(v)
    for i in range(7):
        Hi = reference_hessian(Objective(net, x[i : i + 1], y[i : i + 1]))
        assert float(c[i]) == pytest.approx(float(v @ Hi @ v), rel=1e-10, abs=1e-12)
    assert float(c.mean()) == pytest.approx(float(v @ obj.hvp(v)), rel=1e-10)


@pytest.mark.parametrize("bn", ["eval", "batch"])
def test_measurements_leave_the_model_bit_identical(bn):
    net, (x, y) = tiny_net(bn=True), data()
    net.train(True)
    before = model_state(net)
    obj = Objective(net, x, y, bn=bn, bn_batch=4)
    v = torch.ones(obj.dim, dtype=torch.float64)
    obj.loss(), obj.grad(), obj.hvp(v), obj.accuracy(), obj.loss(obj.theta0 + 0.1 * v)
    if bn == "eval":
        obj.per_example_grads(), obj.per_example_curvature(v)
    obj.load(net)
    after = model_state(net)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
        assert before[k].dtype == after[k].dtype
    assert net.training and next(net.parameters()).dtype == torch.float32


def test_load_takes_new_parameters_and_statistics():
    net, (x, y) = tiny_net(bn=True), data()
    obj = Objective(net, x, y)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.9)
        net[1].running_mean.add_(0.3)
    obj.load(net)
    assert obj.loss() == pytest.approx(Objective(net, x, y).loss(), rel=1e-14)
    torch.testing.assert_close(obj.theta0, flat_params(net).double())


def test_errors_name_the_problem():
    net, (x, y) = tiny_net(bn=True), data()
    with pytest.raises(UserInputError, match="bn policy"):
        Objective(net, x, y, bn="running")
    with pytest.raises(UserInputError, match="same number"):
        Objective(net, x, y[:5])
    obj = Objective(net, x, y, bn="batch")
    with pytest.raises(UserInputError, match="bn='eval'"):
        obj.per_example_grads()
    with pytest.raises(UserInputError, match="theta must have shape"):
        obj.loss(torch.zeros(3))
