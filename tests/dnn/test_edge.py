"""dnn.edge against dense float64 per-example Hessians, R1's 1-D closed forms and exact batch enumeration."""

import itertools
import math

import numpy as np
import pytest
import torch

from dnn.edge import projected_hessians, stability_edges
from dnn.objective import Objective
from valleysim import theory
from valleysim.errors import UserInputError

from tiny_nets import data, tiny_net


def dense_hessian(obj):
    return torch.autograd.functional.hessian(
        lambda t: obj._losses(obj.unflatten(t), obj.inputs, obj.targets).mean(), obj.theta0
    )


def test_projected_hessians_against_dense_per_example_hessians():
    net, (x, y) = tiny_net(bn=True), data(n=5)
    obj = Objective(net, x, y, chunk=2)
    E = torch.linalg.qr(torch.randn(obj.dim, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(4)))[0].T
    A = projected_hessians(obj, E)
    assert A.shape == (5, 3, 3)
    for i in range(5):
        Hi = dense_hessian(Objective(net, x[i : i + 1], y[i : i + 1]))
        np.testing.assert_allclose(A[i], (E @ Hi @ E.T).numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(A.mean(0), (E @ dense_hessian(obj) @ E.T).numpy(), rtol=1e-9, atol=1e-11)
    with pytest.raises(UserInputError, match="E must have shape"):
        projected_hessians(obj, E[:, :-1])


def test_one_direction_is_r1s_factor_and_critical_rate():
    rng = np.random.default_rng(0)
    h = rng.gamma(2.0, 5.0, size=(400, 1, 1))
    eta, S, N = 0.05, 16, 5000
    out = stability_edges(h, eta, S, N, n_steps=400, n_traj=8)
    lam, s2, c = h.mean(), h.var(), theory.variance_factor(S, N)
    assert out["k"] == 1 and out["c"] == c and out["lambda_1"] == pytest.approx(lam, rel=1e-12)
    assert out["rho_ms"] == pytest.approx(float(theory.stability_factor(eta, lam, s2, c)), rel=1e-10)
    assert out["eta_star_ms"] == pytest.approx(theory.eta_star_1d(lam, s2, c), rel=1e-8)
    at_edge = stability_edges(h, out["eta_star_ms"], S, N, n_steps=400, n_traj=8)
    assert at_edge["rho_ms"] == pytest.approx(1.0, abs=1e-9) and at_edge["eta_over_eta_star"] == pytest.approx(1.0)
    assert out["gamma_as"] <= out["half_log_rho_ms"] + 4 * out["gamma_as_se"]  # Jensen


def test_the_numba_simulation_leaves_torchs_thread_count_alone():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        stability_edges(np.full((8, 2, 2), 1.0) + np.eye(2), 0.1, 2, 100, n_steps=50, n_traj=4)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_commuting_directions_take_the_worst_one():
    """Diagonal A_i: the second-moment map splits by coordinate, so rho_ms is the largest 1-D factor."""
    rng = np.random.default_rng(1)
    d = rng.gamma(3.0, [6.0, 2.0, 1.0], size=(300, 3))
    A = np.stack([np.diag(r) for r in d])
    eta, S, N = 0.04, 8, 2000
    c = theory.variance_factor(S, N)
    want = max(float(theory.stability_factor(eta, d[:, j].mean(), d[:, j].var(), c)) for j in range(3))
    out = stability_edges(A, eta, S, N, n_steps=400, n_traj=8)
    assert out["k"] == 3 and out["rho_ms"] == pytest.approx(want, rel=1e-9)
    assert [out[f"lambda_{j}"] for j in (1, 2, 3)] == pytest.approx(sorted(d.mean(0), reverse=True), rel=1e-12)


def test_almost_sure_exponent_against_batch_enumeration():
    """gamma = E_B log|1 - eta h_B| over the m^S equally likely ordered batches (with replacement)."""
    h = np.array([1.0, 3.0, 9.0, 20.0, 40.0, 2.0])
    eta, S = 0.09, 2
    exact = np.mean([math.log(abs(1 - eta * np.mean(b))) for b in itertools.product(h, repeat=S)])
    dense = np.stack([np.diag([v, 0.5 * v]) for v in h])  # the second coordinate is the more stable one
    out = stability_edges(dense, eta, S, 1000, n_steps=4000, n_traj=64, seed=3)
    assert out["gamma_as_se"] > 0
    assert abs(out["gamma_as"] - exact) < 4 * out["gamma_as_se"]
    one = stability_edges(h[:, None, None], eta, S, 1000)
    assert one["gamma_as"] == pytest.approx(exact, abs=max(4 * one["gamma_as_se"], 1e-12))


def test_bad_shapes_are_named():
    with pytest.raises(UserInputError, match="per-example Hessians"):
        stability_edges(np.ones((1, 2, 2)), 0.1, 1, 10)
    with pytest.raises(UserInputError, match="per-example Hessians"):
        stability_edges(np.ones((4, 2, 3)), 0.1, 1, 10)
