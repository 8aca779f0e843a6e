"""R8: proofs.nsgd agrees with valleysim.nsgd; the NSGD / SGD-variant steps, the landscape, bad input."""

import math

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from proofs import nsgd as pn
from valleysim import nsgd as ns
from valleysim.cli import main
from valleysim.errors import UserInputError

# --- lambdified once ---------------------------------------------------------------------------------
_dL = sp.lambdify((pn.alpha, pn.eta, pn.g1, pn.G, pn.lam), pn.loss_change)
_dL_full = sp.lambdify((pn.alpha, pn.eta, pn.G, pn.lam), pn.loss_change_full)
_alpha_cross = sp.lambdify((pn.eta, pn.lam), pn.alpha_cross)
_sample_dL = sp.lambdify((pn.alpha, pn.eta, pn.lam, pn.G, pn.m1, pn.m2), pn.sample_loss_change)
_sample_cross = sp.lambdify((pn.eta, pn.lam, pn.G, pn.m1, pn.m2), pn.sample_alpha_cross)
_factor = sp.lambdify((pn.gamma, pn.eta, pn.lam), pn.nsgd_factor_top)
_newton = sp.lambdify((pn.eta, *pn.gvec), pn.newton_step_app_e)
_match = sp.lambdify((pn.a, pn.b, pn.lam_N, pn.eta), [pn.matching_gamma, pn.matching_eta_N])

LAND = ns.make_valley(D=12, Ks=2, N=40, seed=3)


def _quad(h, N=30, seed=0, noise=0.5):
    rng = np.random.default_rng(seed)
    return ns.quadratic_valley(h, noise * rng.standard_normal((N, len(h))))


def _app_e_land(N=10):
    off = np.random.default_rng(1).standard_normal((N, 7))
    return ns.SharpValley(off, np.zeros(7), [100.0] * 5, [1.0, 1.0], a_lo=1.0, a_hi=1.0)


# --- proofs vs implementation ---------------------------------------------------------------------------
def test_app_e_nsgd_equals_newton_step():
    land = _app_e_land()
    rng = np.random.default_rng(0)
    for eta in (1.0, 0.01, 0.3):
        th = rng.standard_normal(7)
        g = land.grad(th)
        E = ns.top_eigen(land.hessian(th), 5)[1]
        d = ns.nsgd_direction(g, E, 0.01)
        np.testing.assert_allclose(-eta * d, np.ravel(_newton(eta, *g)), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(-eta * d, -eta * np.linalg.solve(land.hessian(th), g), rtol=1e-12, atol=1e-14)
        res = ns.simulate(land, method="nsgd", eta=eta, batch_size=land.N, steps=1, theta0=th, K=5, gamma=0.01)
        np.testing.assert_allclose(res["theta"][0], (1 - eta) * th, rtol=1e-12, atol=1e-13)  # eta = 1: the minimum


@given(a=st.floats(2.0, 500.0), b=st.floats(0.01, 1.9), lam_n=st.floats(0.0, 10.0), eta=st.floats(1e-3, 1.0))
@settings(max_examples=20)
def test_matching_gamma_gives_damped_newton(a, b, lam_n, eta):
    gamma, eta_n = _match(a, b, lam_n, eta)
    land = ns.SharpValley(np.zeros((2, 5)), np.zeros(5), [a, a], [b, b, b], a_lo=1.0, a_hi=1.0)
    th = np.linspace(-1, 1, 5)
    g, H = land.grad(th), land.hessian(th)
    d = ns.nsgd_direction(g, ns.top_eigen(H, 2)[1], gamma)
    np.testing.assert_allclose(eta * d, eta_n * np.linalg.solve(H + lam_n * np.eye(5), g), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("S", [1, 5, 30])
def test_loss_change_along_e1_matches_closed_form(S):
    land = _quad([40.0, 3.0, 1.0, 0.2])
    th = np.random.default_rng(2).standard_normal((6, 4))
    res = ns.loss_change_along_top(land, th, eta=0.05, batch_size=S, n_batches=7, seed=5)
    np.testing.assert_allclose(res["lam"], 40.0)
    np.testing.assert_allclose(res["G"], 40.0 * np.abs(th[:, 0]) * np.sign(res["G"]), rtol=1e-12)
    al = res["alphas"]
    want = _dL(al[None, None, :], 0.05, res["g1"][..., None], res["G"][:, None, None], res["lam"][:, None, None])
    np.testing.assert_allclose(res["per_batch"], want, rtol=1e-10, atol=1e-12)
    if S == 30:  # full batch: g1 = G, and the sign flips at alpha = 2/(eta lam) = 1
        np.testing.assert_allclose(res["g1"], np.broadcast_to(res["G"][:, None], res["g1"].shape), rtol=1e-12)
        np.testing.assert_allclose(
            res["change"], _dL_full(al[None, :], 0.05, res["G"][:, None], 40.0), rtol=1e-10, atol=1e-9
        )
        ac = _alpha_cross(0.05, 40.0)
        near = ns.loss_change_along_top(land, th, eta=0.05, batch_size=30, alphas=[0.99 * ac, 1.01 * ac], n_batches=1)
        assert np.all(near["change"][:, 0] < 0) and np.all(near["change"][:, 1] > 0)


def test_nsgd_factor_on_quadratic():
    h = np.array([50.0, 20.0, 2.0, 0.5])
    land = _quad(h)
    th = np.array([1.0, -2.0, 0.5, 3.0])
    for gamma in (0.01, 0.1, 1.0, 5.0):
        res = ns.simulate(land, method="nsgd", eta=0.03, batch_size=land.N, steps=1, theta0=th, K=2, gamma=gamma)
        factors = [_factor(gamma, 0.03, h[0]), _factor(gamma, 0.03, h[1]), 1 - 0.03 * h[2], 1 - 0.03 * h[3]]
        np.testing.assert_allclose(res["theta"][0], np.array(factors) * th, rtol=1e-12)


# --- the steps ---------------------------------------------------------------------------------------------
@given(seed=st.integers(0, 10**6), D=st.integers(2, 15), data=st.data(), gamma=st.floats(0.001, 10.0))
def test_nsgd_direction_equals_explicit_projection(seed, D, data, gamma):
    K = data.draw(st.integers(1, D))
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((D, D))
    H = A + A.T
    g = rng.standard_normal(D)
    w, V = np.linalg.eigh(H)
    order = np.argsort(-w, kind="stable")  # algebraically largest first
    scale = np.ones(D)
    scale[order[:K]] = gamma
    want = sum(scale[i] * (V[:, i] @ g) * V[:, i] for i in range(D))
    vals, E = ns.top_eigen(H, K)
    np.testing.assert_allclose(vals, w[order[:K]], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ns.nsgd_direction(g, E, gamma), want, rtol=1e-9, atol=1e-10)
    top, notop = ns.step_direction("sgd_top", g, E), ns.step_direction("sgd_no_top", g, E)
    np.testing.assert_allclose(top + notop, g, atol=1e-12)
    assert abs(top @ notop) < 1e-9 * (1 + g @ g)


def test_gamma_one_is_sgd_exactly():
    a = ns.simulate(LAND, method="sgd", eta=0.05, batch_size=4, steps=300, trajectories=3, seed=7, record_every=7)
    b = ns.simulate(
        LAND,
        method="nsgd",
        eta=0.05,
        batch_size=4,
        steps=300,
        trajectories=3,
        seed=7,
        K=3,
        gamma=1.0,
        recompute=5,
        record_every=7,
    )
    assert np.array_equal(a["theta"], b["theta"]) and np.array_equal(a["loss"], b["loss"])
    assert b["eig_steps"] == []


@pytest.mark.parametrize("n", [1, 4, 7])
def test_recompute_schedule_and_manual_loop(n):
    T, eta, K, gamma, seed = 40, 0.05, 2, 0.1, 11
    res = ns.simulate(LAND, method="nsgd", eta=eta, batch_size=5, steps=T, K=K, gamma=gamma, recompute=n, seed=seed)
    assert res["eig_steps"] == list(range(0, T, n))
    th = LAND.start()
    stream = ns.BatchStream(seed, 0, LAND.N, 5)
    for t in range(T):
        idx = stream.next()
        g = np.mean([LAND.example_grads(th)[i] for i in idx], axis=0)
        if t % n == 0:
            w, V = np.linalg.eigh(LAND.hessian(th))
            V = V[:, np.argsort(-np.abs(w))[:K]]
        th = th - eta * (g - (1 - gamma) * V @ (V.T @ g))
    np.testing.assert_allclose(res["theta"][0], th, rtol=1e-10, atol=1e-12)


def test_constant_top_keeps_the_first_eigenvectors():
    res = ns.simulate(
        LAND,
        method="sgd_constant_top",
        eta=0.05,
        batch_size=5,
        steps=30,
        K=1,
        trajectories=2,
        record_every=1,
        keep_theta=True,
    )
    assert res["eig_steps"] == [0]
    e0 = ns.top_eigen(LAND.hessian(LAND.start()), 1)[1][0]
    moves = np.diff(res["thetas"], axis=0)  # every step is parallel to e_1(0)
    resid = moves - np.einsum("trd,d->tr", moves, e0)[..., None] * e0
    assert np.abs(resid).max() < 1e-12


def test_trajectories_reproducible_whatever_R():
    full = ns.simulate(
        LAND, method="nsgd", eta=0.05, batch_size=3, steps=120, trajectories=3, K=2, gamma=0.1, recompute=3, seed=4
    )
    one = ns.simulate(
        LAND,
        method="nsgd",
        eta=0.05,
        batch_size=3,
        steps=120,
        trajectories=1,
        K=2,
        gamma=0.1,
        recompute=3,
        seed=4,
        first=2,
    )
    np.testing.assert_allclose(full["theta"][2], one["theta"][0], rtol=1e-12, atol=1e-14)
    again = ns.simulate(
        LAND, method="nsgd", eta=0.05, batch_size=3, steps=120, trajectories=3, K=2, gamma=0.1, recompute=3, seed=4
    )
    assert np.array_equal(full["theta"], again["theta"])


# --- the landscape --------------------------------------------------------------------------------------
def test_landscape_derivatives():
    rng = np.random.default_rng(0)
    for _ in range(3):
        th = rng.standard_normal(LAND.D) * 0.7
        np.testing.assert_allclose(LAND.example_losses(th).mean(), LAND.loss(th), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(LAND.example_grads(th).mean(0), LAND.grad(th), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(LAND.batch_grad(th, np.arange(LAND.N)), LAND.grad(th), rtol=1e-10, atol=1e-12)
        eps = 1e-6
        E = np.eye(LAND.D)
        fd_g = np.array([(LAND.loss(th + eps * e) - LAND.loss(th - eps * e)) / (2 * eps) for e in E])
        np.testing.assert_allclose(LAND.grad(th), fd_g, rtol=1e-6, atol=1e-6)
        fd_gi = np.array(
            [(LAND.example_losses(th + eps * e) - LAND.example_losses(th - eps * e)) / (2 * eps) for e in E]
        ).T
        np.testing.assert_allclose(LAND.example_grads(th), fd_gi, rtol=1e-6, atol=1e-5)
        fd_H = np.array([(LAND.grad(th + eps * e) - LAND.grad(th - eps * e)) / (2 * eps) for e in E])
        np.testing.assert_allclose(LAND.hessian(th), fd_H, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(LAND.hessian(th), LAND.hessian(th).T)


def test_sharpness_varies_along_the_valley():
    th = LAND.start()
    lo = ns.lambda_max(LAND.hessian(th))
    th[LAND.Ks] = LAND.target[LAND.Ks]
    hi = ns.lambda_max(LAND.hessian(th))
    assert lo < 10 < 90 < hi <= LAND.a_hi


def test_qualitative_paper_claims():
    """Short runs: SGD stalls at the edge of stability; gamma < 1 reaches a sharper region with a lower loss."""
    kw = dict(eta=0.05, batch_size=8, steps=1200, trajectories=2, record_every=100)
    sgd = ns.simulate(LAND, method="sgd", **kw)
    fast = ns.simulate(LAND, method="nsgd", K=2, gamma=0.01, **kw)
    wide = ns.simulate(LAND, method="nsgd", K=2, gamma=5.0, **kw)
    assert fast["loss"][-1].mean() < 0.2 * sgd["loss"][-1].mean()
    assert fast["lambda_max"][-1].mean() > 2 / 0.05 > sgd["lambda_max"][-1].mean() > wide["lambda_max"][-1].mean()
    lc = ns.loss_change_along_top(
        LAND,
        ns.simulate(LAND, method="sgd", keep_theta=True, **kw)["thetas"][3:].reshape(-1, LAND.D),
        eta=0.05,
        batch_size=8,
    )
    mean = lc["change"].mean(0)  # alphas 0.25, 0.5, 1, 2, 4
    assert mean[0] < 0 and mean[1] < 0 and 0 < mean[3] < mean[4]


# --- bad input ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw",
    [
        dict(K=13),
        dict(K=0),
        dict(gamma=0.0),
        dict(gamma=-1.0),
        dict(gamma=float("nan")),
        dict(eta=0.0),
        dict(batch_size=41),
        dict(batch_size=0),
        dict(recompute=0),
        dict(method="adam"),
        dict(steps=-1),
        dict(trajectories=0),
        dict(theta0=np.zeros(3)),
    ],
)
def test_bad_input(kw):
    args = dict(method="nsgd", eta=0.05, batch_size=4, steps=5, K=2, gamma=0.1) | kw
    with pytest.raises(UserInputError):
        ns.simulate(LAND, method=args.pop("method"), **args)


def test_bad_landscape():
    with pytest.raises(UserInputError):
        ns.make_valley(D=2, Ks=2)
    with pytest.raises(UserInputError):
        ns.make_valley(N=1)
    with pytest.raises(UserInputError):
        ns.make_valley(a_lo=10.0, a_hi=1.0)
    with pytest.raises(UserInputError):
        ns.SharpValley(np.zeros((3, 4)), np.zeros(4), [1.0], [1.0, 1.0])  # D = 3 != 4
    with pytest.raises(UserInputError):
        ns.SharpValley(np.zeros((3, 3)), np.zeros(3), [-1.0], [1.0, 1.0])
    with pytest.raises(UserInputError):
        ns.loss_change_along_top(LAND, LAND.start(), eta=0.05, batch_size=4, alphas=[[1.0]])


# --- the subcommand (registered by valleysim.cli) ----------------------------------------------------------
def test_cli_json(capsys):
    import json

    assert main(["nsgd", "--steps", "60", "--trajectories", "2", "--gamma", "0.1", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["gamma"] for r in out["runs"]] == [0.1, 1.0] and set(out["runs"][0]["loss_change_along_e1"]) == {
        "0.25",
        "0.5",
        "1",
        "2",
        "4",
    }
    assert main(["nsgd", "--method", "sgd_no_top", "--steps", "30", "--trajectories", "1"]) == 0
    assert "sgd_no_top" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--K", "21"], "K (top directions) must be in 1..20"),
        (["--gamma", "0"], "argument --gamma"),
        (["--eta=-1"], "argument --eta"),
        (["--batch", "101"], "batch size S must be in 1..100"),
        (["--batch", "0"], "argument --batch"),
        (["--dim", "2"], "D must be in"),
        (["--seed", "-1"], "argument --seed"),
        (["--trajectories", "1e12"], "needs about"),
    ],
)
def test_cli_bad_input(cli, argv, message):
    code, _, err = cli("nsgd", "--steps", "5", *argv)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_proofs_derive_and_report():
    out = pn.derive()  # raises ProofError on a failed step
    assert out["alpha_cross"] == 2 / (pn.eta * pn.lam)
    assert "R8" in pn.report()


def test_figure_quick(figure):
    data = figure("nsgd_study")
    sweep = {s["gamma"]: s for s in data["gamma_sweep"]}
    assert sweep[0.01]["final_loss"] < sweep[1.0]["final_loss"] < sweep[5.0]["final_loss"]
    assert sweep[0.01]["lambda_max_reached"] > sweep[1.0]["lambda_max_reached"] > sweep[5.0]["lambda_max_reached"]


def test_lambda_max_reached_is_flagged_while_it_still_changes():
    steps = np.arange(50, dtype=float)[:, None]
    flat = np.full((50, 3), 7.0)
    rising = np.broadcast_to(1.0 + steps, (50, 3)).copy()
    assert ns.settled(flat) is True and ns.settled(rising) is False
    assert ns.settled(flat[:10]) is None  # 2 records in the window: cannot tell
    rising[-5:, :] = np.nan  # trajectories that diverged at the end
    assert ns.settled(rising) is None


@settings(max_examples=40, deadline=None)
@given(
    lam=st.floats(0.1, 100.0),
    x=st.floats(-3.0, 3.0).filter(lambda v: abs(v) > 1e-3),
    eta=st.floats(1e-3, 0.5),
    noise=st.lists(st.floats(-5.0, 5.0), min_size=1, max_size=12),
)
def test_quadratic_loss_change_is_the_mean_of_direct_evaluations(lam, x, eta, noise):
    """On L(x) = lam x^2 / 2 (G = lam x), batch projections g_b = G + noise_b: the prediction equals the
    mean of L(x - alpha eta g_b) - L(x) evaluated directly, and changes sign at alpha_cross_quadratic."""
    from valleysim.nsgd.directions import alpha_cross_quadratic, loss_change_quadratic

    G = lam * x
    g = G + np.array(noise)

    def direct(a):
        return float(np.mean(lam / 2 * ((x - a * eta * g) ** 2 - x**2)))

    alphas = np.array([0.25, 0.5, 1.0, 2.0, 4.0])
    pred = loss_change_quadratic(alphas, eta, lam, G, g)
    np.testing.assert_allclose(pred, [direct(a) for a in alphas], rtol=1e-9, atol=1e-9 * lam * (x**2 + 1))
    m1, m2 = float(np.mean(g)), float(np.mean(g * g))
    np.testing.assert_allclose(pred, _sample_dL(alphas, eta, lam, G, m1, m2), rtol=1e-12, atol=1e-300)
    ac = alpha_cross_quadratic(eta, lam, G, g)
    if m2 > 0:
        assert ac == pytest.approx(_sample_cross(eta, lam, G, m1, m2), rel=1e-12)
    if np.mean(g * g) > 1e-9 and ac > 1e-6:
        assert direct(0.5 * ac) < 0 < direct(2.0 * ac)
        assert abs(direct(ac)) <= 1e-9 * (1 + abs(direct(2 * ac)))
    elif np.mean(g * g) > 1e-9:
        assert direct(1.0) >= -1e-12  # root at alpha <= 0: the change is positive for every alpha > 0


def test_quadratic_crossing_without_curvature_is_nan():
    from valleysim.nsgd.directions import alpha_cross_quadratic

    assert math.isnan(alpha_cross_quadratic(0.1, 0.0, 1.0, [1.0]))
    assert math.isnan(alpha_cross_quadratic(0.1, -2.0, 1.0, [1.0, 2.0]))
    assert alpha_cross_quadratic(0.1, 10.0, 1.0, [1.0]) == pytest.approx(2.0)  # 2/(eta lam), no noise
