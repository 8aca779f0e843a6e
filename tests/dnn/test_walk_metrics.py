"""dnn.walk_metrics against direct evaluation of the loss at the interpolated points and the toy's
definitions in valleysim.walk; WalkTracker's bookkeeping over a few SGD steps."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from dnn.objective import Objective
from dnn.walk_metrics import WalkTracker, cos_consecutive, distance_from_init, segment_walk_metrics
from valleysim import walk as toy
from valleysim.errors import UserInputError

KEYS = {"floor", "height", "barrier", "barrier_size", "loss_prev", "loss_next"}


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(3 * 3 * 3, 4),
    )


def rand(shape, seed):
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def obj():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(10, 3, 6, 6, generator=g), torch.randint(0, 4, (10,), generator=g)
    return Objective(tiny_net(), x, y, chunk=5)


class Profile:
    """Duck-typed objective L(theta) = 1 - theta_0^2 (a barrier between -1 and +1)."""

    dim = 2

    def loss(self, theta=None, idx=None):
        return float(1.0 - theta[0] ** 2)


def test_segment_against_direct_evaluation(obj):
    a = obj.theta0
    b = a - 0.8 * obj.grad(idx=torch.arange(4))
    out = segment_walk_metrics(obj, a, b)
    assert set(out) == KEYS
    alphas = [j / 11 for j in range(12)]
    L = [obj.loss((1 - al) * a + al * b) for al in alphas]
    ref = toy.segment_metrics(L)
    assert out["loss_prev"] == obj.loss(a) and out["loss_next"] == obj.loss(b)
    assert out["floor"] == pytest.approx(min(L), rel=1e-14)
    assert out["height"] == pytest.approx((L[0] + L[-1] - 2 * min(L)) / 2, rel=1e-12, abs=1e-15)
    assert out["height"] == pytest.approx(ref["height"], rel=1e-12, abs=1e-15)
    assert out["barrier"] == float(ref["barrier"]) and out["barrier_size"] == pytest.approx(ref["barrier_size"])
    # float32 inputs are interpolated in the objective's dtype
    out32 = segment_walk_metrics(obj, a.float(), b.float(), n_interp=3)
    assert out32["loss_prev"] == pytest.approx(obj.loss(a.float().double()), rel=1e-14)


def test_segment_barrier_and_n_interp():
    p = Profile()
    a, b = torch.tensor([-1.0, 0.0], dtype=torch.float64), torch.tensor([1.0, 0.3], dtype=torch.float64)
    out = segment_walk_metrics(p, a, b)
    assert out["barrier"] == 1.0
    assert out["barrier_size"] == pytest.approx(1 - 1 / 121, rel=1e-12)  # interior max at x = +-1/11
    assert out["floor"] == 0.0 and out["height"] == 0.0
    for n in (1, 2, 5):
        L = [p.loss((1 - al) * a + al * b) for al in toy.interpolation_alphas(n)]
        ref = toy.segment_metrics(L)
        got = segment_walk_metrics(p, a, b, n_interp=n)
        assert got["barrier_size"] == pytest.approx(ref["barrier_size"], rel=1e-12, abs=1e-15)
        assert got["barrier"] == float(ref["barrier"])
    # a valley (no barrier): L = theta_0^2 between -1 and 1
    valley = type("V", (), {"dim": 2, "loss": lambda self, theta=None: float(theta[0] ** 2)})()
    v = segment_walk_metrics(valley, a, b)
    assert v["barrier"] == 0.0 and v["barrier_size"] == 0.0
    assert v["floor"] == pytest.approx(1 / 121) and v["height"] == pytest.approx(1 - 1 / 121)


def test_cos_and_distance():
    g0, g1 = rand(20, 0), rand(20, 1)
    assert cos_consecutive(g0, g1)["cos_consecutive"] == pytest.approx(toy.cosine(g0.numpy(), g1.numpy()), rel=1e-13)
    assert cos_consecutive(g0, -3 * g0)["cos_consecutive"] == pytest.approx(-1.0, rel=1e-14)
    assert math.isnan(cos_consecutive(g0, 1e-13 * g1)["cos_consecutive"])
    assert math.isnan(toy.cosine(g0.numpy(), 1e-13 * g1.numpy()))
    assert distance_from_init(g1, g0) == {"distance_from_init": pytest.approx(float((g1 - g0).norm()), rel=1e-14)}


def test_walk_tracker_sequence(obj):
    theta0 = obj.theta0.clone()
    tr = WalkTracker(theta0)
    first = tr.metrics(obj)  # before any update: nan segment/cos, distance 0
    assert set(first) == KEYS | {"cos_consecutive", "distance_from_init"}
    assert first["distance_from_init"] == 0.0
    assert all(math.isnan(v) for k, v in first.items() if k != "distance_from_init")
    thetas, grads = [theta0], []
    eta = 0.5
    for t in range(3):
        g = obj.grad(theta=thetas[-1], idx=torch.arange(3 * t, 3 * t + 4))
        new = thetas[-1] - eta * g
        tr.update(thetas[-1], new, g)
        thetas.append(new)
        grads.append(g)
        m = tr.metrics(obj, n_interp=2)
        assert set(m) == KEYS | {"cos_consecutive", "distance_from_init"}
        assert {k: m[k] for k in KEYS} == segment_walk_metrics(obj, thetas[-2], new, n_interp=2)
        if t == 0:
            assert math.isnan(m["cos_consecutive"])
        else:
            assert m["cos_consecutive"] == pytest.approx(toy.cosine(grads[-2].numpy(), grads[-1].numpy()), rel=1e-12)
        assert m["distance_from_init"] == pytest.approx(float((new - theta0).norm()), rel=1e-13)
    assert tr.steps == 3
    # stored vectors: theta_init, theta_before, theta_after, the last gradient; and they are copies
    stored = [v for v in vars(tr).values() if isinstance(v, torch.Tensor)]
    assert len(stored) == 4
    ref = tr.metrics(obj, n_interp=1)
    for v in thetas + grads:
        v.add_(1.0)
    assert tr.metrics(obj, n_interp=1) == ref
    # checkpoint round trip; the cosine continues across it
    again = WalkTracker.from_state(tr.state())
    assert again.metrics(obj, n_interp=1) == ref and again.steps == 3
    g4 = rand(obj.dim, 4)
    for w in (tr, again):
        w.update(thetas[-1], thetas[-1] - 0.1 * g4, g4)
    assert again.metrics(obj, n_interp=1) == tr.metrics(obj, n_interp=1)
    assert tr.metrics(obj, n_interp=1)["cos_consecutive"] == pytest.approx(
        toy.cosine(grads[-1].numpy() - 1.0, g4.numpy()), rel=1e-12
    )


def test_bad_input(obj):
    a = obj.theta0
    with pytest.raises(UserInputError, match="n_interp"):
        segment_walk_metrics(obj, a, a, n_interp=0)
    with pytest.raises(UserInputError, match="theta_next"):
        segment_walk_metrics(obj, a, a[:-1])
    with pytest.raises(UserInputError, match="theta_prev"):
        segment_walk_metrics(obj, a[None], a)
    with pytest.raises(UserInputError, match="g_prev"):
        cos_consecutive(a[:3], a[:4])
    with pytest.raises(UserInputError, match="theta"):
        distance_from_init(a[:3], a)
    tr = WalkTracker(a)
    with pytest.raises(UserInputError, match="step_gradient"):
        tr.update(a, a, a[:-1])
    with pytest.raises(UserInputError, match="theta_before"):
        tr.update(np.zeros((2, 2)), a, a)
    with pytest.raises(UserInputError, match="state"):
        WalkTracker.from_state({"theta_init": a})
