"""dnn.step_probes against direct evaluation of the objective, closed forms on quadratics, explicit
projections and valleysim.nsgd (float64 tiny nets)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from dnn.eigen import frobenius_from_top
from dnn.objective import Objective
from dnn.step_probes import (
    alpha_key,
    alpha_star,
    bn_scale_norm,
    frobenius_top,
    gradient_alignment,
    loss_change_along_top,
    loss_change_quadratic_model,
    nsgd_direction,
    per_example_curvature_stats,
)
from valleysim import nsgd as toy_nsgd
from valleysim.errors import UserInputError

from tiny_nets import data, tiny_net

ALPHAS = (0.25, 0.5, 1.0, 2.0, 4.0)


def rand(shape, seed):
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


class Quadratic:
    """L(theta) = c + b.theta + theta^T A theta / 2 (duck-typed Objective)."""

    def __init__(self, A, b, c, theta0):
        self.A, self.b, self.c, self.theta0 = A, b, c, theta0
        self.dim = theta0.shape[0]
        self.calls = 0

    def loss(self, theta=None, idx=None):
        self.calls += 1
        t = self.theta0 if theta is None else theta
        return float(self.c + self.b @ t + 0.5 * t @ self.A @ t)

    def grad(self, theta=None, idx=None):
        t = self.theta0 if theta is None else theta
        return self.b + self.A @ t

    def hvp(self, v, theta=None, idx=None):
        return self.A @ v


@pytest.fixture(scope="module")
def bn_objective():
    net, (x, y) = tiny_net(bn=True), data()
    return net, x, y, Objective(net, x, y, chunk=5)


def test_alpha_keys():
    assert [alpha_key(a) for a in ALPHAS] == ["a0.25", "a0.5", "a1", "a2", "a4"]


def test_loss_change_against_direct_evaluation(bn_objective):
    _, _, _, obj = bn_objective
    e = rand(obj.dim, 0) * 3.0  # not unit: normalised inside
    G = torch.stack([obj.grad(idx=torch.arange(s, s + 4)) for s in (0, 4, 8)])
    eta = 0.3
    out = loss_change_along_top(obj, e, G, eta)
    assert set(out) == {f"loss_change_{alpha_key(a)}{s}" for a in ALPHAS for s in ("", "_se")}
    u = e / e.norm()
    L0 = obj.loss()
    for a in ALPHAS:
        d = []
        for b in range(3):
            step = a * eta * float(G[b] @ u)
            d.append(obj.loss(obj.theta0 - step * u) - L0)
        assert out[f"loss_change_{alpha_key(a)}"] == pytest.approx(np.mean(d), rel=1e-12, abs=1e-15)
        assert out[f"loss_change_{alpha_key(a)}_se"] == pytest.approx(
            np.std(d, ddof=1) / math.sqrt(3), rel=1e-10, abs=1e-15
        )
    # sign of the eigenvector does not matter; explicit theta is used
    flip = loss_change_along_top(obj, -e, G, eta)
    assert flip == pytest.approx(out, rel=1e-12, abs=1e-15)
    th = obj.theta0 + 0.01 * rand(obj.dim, 5)
    at = loss_change_along_top(obj, e, G[:1], eta, alphas=(1.0,), theta=th)
    step = eta * float(G[0] @ u)
    assert at["loss_change_a1"] == pytest.approx(obj.loss(th - step * u) - obj.loss(th), rel=1e-12)
    assert math.isnan(at["loss_change_a1_se"])


def test_loss_change_closed_form_on_quadratic():
    P = 6
    Q, _ = torch.linalg.qr(rand((P, P), 1))
    lam = torch.tensor([5.0, 2.0, 1.0, 0.5, 0.1, 0.01], dtype=torch.float64)
    A = Q @ torch.diag(lam) @ Q.T
    quad = Quadratic(A, rand(P, 2), 0.7, rand(P, 3))
    e, lam1 = Q[:, 0], float(lam[0])
    g_full = quad.grad()
    G = g_full + 0.5 * rand((4, P), 4)  # "mini-batch" gradients
    eta = 0.1
    out = loss_change_along_top(quad, e, G, eta)
    for a in ALPHAS:
        s = a * eta * (G @ e)
        closed = -s * float(e @ g_full) + s**2 * lam1 / 2
        assert out[f"loss_change_{alpha_key(a)}"] == pytest.approx(float(closed.mean()), rel=1e-9, abs=1e-13)
    # on a quadratic the parabola model along the eigenvector is exact
    q = loss_change_quadratic_model(quad, e, G, eta, lam1)
    flipped = loss_change_quadratic_model(quad, -3 * e, G, eta, lam1)  # not unit, other sign: same changes
    assert {k: v for k, v in flipped.items() if "quad" in k} == pytest.approx(
        {k: v for k, v in q.items() if "quad" in k}
    )
    for a in ALPHAS:
        assert q[f"loss_change_quad_{alpha_key(a)}"] == pytest.approx(out[f"loss_change_{alpha_key(a)}"], rel=1e-9)
    proj = (G @ e).numpy()
    assert q["g_e1_full"] == pytest.approx(float(g_full @ e), rel=1e-12)
    assert (q["g_e1_batch_mean"], q["g_e1_batch_sq"]) == pytest.approx((proj.mean(), (proj**2).mean()), rel=1e-12)
    ac = q["alpha_cross_quad"]  # the measured change vanishes there
    s = ac * eta * (G @ e)
    assert float((-s * float(e @ g_full) + s**2 * lam1 / 2).mean()) == pytest.approx(0.0, abs=1e-12)


def _alpha_star_1d(c, k, x, eta, thr=1.2):
    q = k * x * x / 2
    r = ((thr - 1) * c + thr * q) / q
    return (1 + math.sqrt(r)) / (eta * k)


@pytest.mark.parametrize("rtol", [1e-3, 1e-6])
def test_alpha_star_closed_form_and_precision(rtol):
    c, k, x, eta = 0.3, 4.0, 0.5, 0.2
    quad = Quadratic(
        torch.tensor([[k]], dtype=torch.float64),
        torch.zeros(1, dtype=torch.float64),
        c,
        torch.tensor([x], dtype=torch.float64),
    )
    d = quad.grad()  # the step's gradient
    true = _alpha_star_1d(c, k, x, eta)
    got = alpha_star(quad, d, eta, rtol=rtol)["alpha_star"]
    assert true <= got <= true * (1 + rtol) + 1e-15
    assert quad.calls <= 1 + 15 + math.ceil(math.log2(1 / rtol)) + 2
    # threshold 1.5 and a coarser grid
    t15 = _alpha_star_1d(c, k, x, eta, 1.5)
    got15 = alpha_star(quad, d, eta, threshold=1.5, factor=3.0, rtol=rtol)["alpha_star"]
    assert t15 <= got15 <= t15 * (1 + rtol) + 1e-15


def test_alpha_star_edge_cases(bn_objective):
    quad = Quadratic(
        torch.eye(2, dtype=torch.float64),
        torch.zeros(2, dtype=torch.float64),
        0.1,
        torch.tensor([1.0, 0.0], dtype=torch.float64),
    )
    assert alpha_star(quad, torch.zeros(2, dtype=torch.float64), 0.1) == {
        "alpha_star": math.inf,
        "alpha_star_reached": False,
    }
    zero = Quadratic(
        torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), 0.0, torch.zeros(2, dtype=torch.float64)
    )
    assert math.isnan(alpha_star(zero, torch.ones(2, dtype=torch.float64), 0.1)["alpha_star"])
    # crossing below alpha_min: bisection on [0, alpha_min]
    got = alpha_star(quad, quad.grad(), 100.0, rtol=1e-6)["alpha_star"]
    true = _alpha_star_1d(0.1, 1.0, 1.0, 100.0)
    assert true <= got <= true * (1 + 1e-6)
    # on the network: the definition holds at the result and not just below it
    _, _, _, obj = bn_objective
    g = obj.grad(idx=torch.arange(4))
    a = alpha_star(obj, g, 0.5, rtol=1e-4)["alpha_star"]
    assert math.isfinite(a)
    L0 = obj.loss()
    assert obj.loss(obj.theta0 - a * 0.5 * g) >= 1.2 * L0
    assert obj.loss(obj.theta0 - a * (1 - 2e-4) * 0.5 * g) < 1.2 * L0


def test_gradient_alignment_against_explicit_projection():
    P = 30
    Q, _ = torch.linalg.qr(rand((P, 7), 6))
    E = Q.T  # (7, P) orthonormal rows
    g = rand(P, 7) + 3 * E[0] - 2 * E[3]
    out = gradient_alignment(g, E)
    assert set(out) == {f"cos_g_e{i}" for i in range(1, 8)} | {"grad_norm_ratio_top5"}
    for i in range(7):
        assert out[f"cos_g_e{i + 1}"] == pytest.approx(abs(float(g @ E[i])) / float(g.norm()), rel=1e-12)
    P5 = E[:5].T @ E[:5]
    assert out["grad_norm_ratio_top5"] == pytest.approx(float(g.norm() / (P5 @ g).norm()), rel=1e-12)
    # sign- and scale-invariant in the eigenvectors; non-orthonormal rows spanning the same space
    M = torch.tensor(
        [[1.0, 0.5, 0, 0, 0], [0, -2.0, 0, 0, 0], [0, 0, 3.0, 0, 0], [0, 0, 0.2, 1.0, 0], [0, 0, 0, 0, 1.0]],
        dtype=torch.float64,
    )
    other = gradient_alignment(g, M @ E[:5])
    assert other["grad_norm_ratio_top5"] == pytest.approx(out["grad_norm_ratio_top5"], rel=1e-10)
    flipped = gradient_alignment(g, -2 * E)
    assert flipped == pytest.approx(out, rel=1e-12)
    # fewer than 5 eigenvectors: no ratio; g inside the span: ratio 1; tiny g: nan
    assert set(gradient_alignment(g, E[:3])) == {"cos_g_e1", "cos_g_e2", "cos_g_e3"}
    assert gradient_alignment(E[:5].T @ rand(5, 8), E)["grad_norm_ratio_top5"] == pytest.approx(1.0, rel=1e-12)
    tiny = gradient_alignment(torch.zeros(P, dtype=torch.float64), E)
    assert all(math.isnan(v) for v in tiny.values())
    assert gradient_alignment(E[6], E)["grad_norm_ratio_top5"] > 1e12  # g orthogonal to the span
    assert gradient_alignment(g, E[0])["cos_g_e1"] == pytest.approx(out["cos_g_e1"], rel=1e-12)


def test_per_example_curvature_stats():
    net, (x, y) = tiny_net(bn=True), data(n=5)
    obj = Objective(net, x, y, chunk=2)
    e = rand(obj.dim, 9) * 0.1
    u = e / e.norm()
    out = per_example_curvature_stats(obj, e)
    assert set(out) == {"curvature_mean", "curvature_var", "curvature_se"}
    assert out["curvature_mean"] == pytest.approx(float(u @ obj.hvp(u)), rel=1e-10)
    c = np.array([float(u @ Objective(net, x[i : i + 1], y[i : i + 1]).hvp(u)) for i in range(obj.n)])
    assert out["curvature_mean"] == pytest.approx(c.mean(), rel=1e-10)
    assert out["curvature_var"] == pytest.approx(c.var(), rel=1e-9)
    assert out["curvature_se"] == pytest.approx(c.std(ddof=1) / math.sqrt(obj.n), rel=1e-9)
    th = obj.theta0 + 0.05 * rand(obj.dim, 10)
    assert per_example_curvature_stats(obj, u, theta=th)["curvature_mean"] == pytest.approx(
        float(u @ obj.hvp(u, theta=th)), rel=1e-10
    )


def test_frobenius_top():
    vals = [3.0, -4.0, 0.0]
    assert frobenius_top(vals) == {"frobenius_top": pytest.approx(5.0, rel=1e-15)}
    assert frobenius_top(np.array([2.0]))["frobenius_top"] == frobenius_from_top([2.0]) == 2.0


def test_bn_scale_norm():
    assert bn_scale_norm(tiny_net(bn=False)) == {}
    net = tiny_net(bn=True)
    assert bn_scale_norm(net)["bn_scale_norm"] == pytest.approx(
        float(net[1].weight.detach().double().norm()), rel=1e-12
    )
    two = nn.Sequential(
        nn.Linear(4, 5),
        nn.BatchNorm1d(5),
        nn.ReLU(),
        nn.Linear(5, 3),
        nn.BatchNorm1d(3),
        nn.BatchNorm1d(3, affine=False),
    )
    with torch.no_grad():
        two[1].weight.fill_(2.0)
        two[4].weight.copy_(torch.tensor([1.0, 2.0, 2.0]))
    assert bn_scale_norm(two) == {"bn_scale_norm": pytest.approx(3.0, rel=1e-12)}


def test_nsgd_direction_matches_toy_and_projection():
    P, K = 12, 3
    Q, _ = torch.linalg.qr(rand((P, K), 11))
    E = Q.T
    g = rand(P, 12)
    for gamma in (0.01, 0.1, 1.0, 5.0):
        d = nsgd_direction(g, E, gamma)
        Pm = E.T @ E
        explicit = g - (1 - gamma) * (Pm @ g)
        torch.testing.assert_close(d, explicit, rtol=1e-12, atol=1e-14)
        toy = toy_nsgd.nsgd_direction(g.numpy(), E.numpy(), gamma)  # the same (K, P) rows
        np.testing.assert_allclose(d.numpy(), toy, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(nsgd_direction(g, E[0], 0.5), g - 0.5 * (E[0] @ g) * E[0], rtol=1e-12, atol=1e-14)


def test_bad_input(bn_objective):
    _, _, _, obj = bn_objective
    e, G = rand(obj.dim, 0), rand((2, obj.dim), 1)
    with pytest.raises(UserInputError, match="eta"):
        loss_change_along_top(obj, e, G, 0.0)
    with pytest.raises(UserInputError, match="eta"):
        alpha_star(obj, e, -1.0)
    with pytest.raises(UserInputError, match="threshold"):
        alpha_star(obj, e, 0.1, threshold=1.0)
    with pytest.raises(UserInputError, match="eigvec"):
        loss_change_along_top(obj, e[:-1], G, 0.1)
    with pytest.raises(UserInputError, match="eigvec"):
        loss_change_along_top(obj, torch.zeros_like(e), G, 0.1)
    with pytest.raises(UserInputError, match="batch_grads"):
        loss_change_along_top(obj, e, G[:, :-1], 0.1)
    with pytest.raises(UserInputError, match="direction"):
        alpha_star(obj, G, 0.1)
    with pytest.raises(UserInputError, match="theta"):
        per_example_curvature_stats(obj, e, theta=e[:3])
    with pytest.raises(UserInputError, match="grad"):
        gradient_alignment(e[:-1], G)
    with pytest.raises(UserInputError, match="eigvecs"):
        nsgd_direction(e, G[:, :-1], 0.5)
    with pytest.raises(UserInputError, match="gamma"):
        nsgd_direction(e, G, 0.0)
