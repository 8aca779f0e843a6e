"""Break-even dynamics (R2): landscape derivatives, the frozen-curvature R1 recursion, the emergent
break-even point against lambda*(eta, S), Conjectures 1-2, determinism, bad input."""

from __future__ import annotations

import json
import math

import numba
import numpy as np
import pytest
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st

from proofs import break_even as pb
from valleysim import break_even as bes
from valleysim.cli import main
from valleysim.theory import eta_star_1d, stability_factor, variance_factor


@pytest.fixture(scope="module")
def land():
    return bes.SharpeningLandscape.make(
        n_examples=32, sigma=0.5, offset=0.01, beta=0.003, a0=(1.0, 1.0), rates=(1.0, 0.5), landscape_seed=3
    )


# --- the landscape: exact per-example structure, derivatives against finite differences --------------


def test_landscape_structure(land):
    a = land.curvatures(0.7)
    h = a * land.f  # per-example curvatures (N, k)
    np.testing.assert_allclose(h.mean(axis=0), a, rtol=1e-12)
    np.testing.assert_allclose(h.var(axis=0), land.sigma**2 * a**2, rtol=1e-10)
    np.testing.assert_allclose(np.sum(land.f * land.b, axis=0), 0.0, atol=1e-14)  # full-batch minimum at x = 0


def test_gradients_hessian_covariance_against_finite_differences(land):
    rng = np.random.default_rng(1)
    th = np.concatenate([0.1 * rng.standard_normal(land.k), [0.4]])
    L = lambda t: float(land.loss(t[:-1], t[-1]))  # noqa: E731
    eps = 1e-5
    E = np.eye(th.size)
    grad_fd = np.array([(L(th + eps * e) - L(th - eps * e)) / (2 * eps) for e in E])
    G = land.per_example_gradients(th[:-1], th[-1])
    np.testing.assert_allclose(G.mean(axis=0), grad_fd, rtol=1e-6, atol=1e-9)
    H_fd = np.array(
        [
            [
                (L(th + eps * (ei + ej)) - L(th + eps * (ei - ej)) - L(th - eps * (ei - ej)) + L(th - eps * (ei + ej)))
                / (4 * eps**2)
                for ej in E
            ]
            for ei in E
        ]
    )
    np.testing.assert_allclose(land.hessian(th[:-1], th[-1]), H_fd, rtol=1e-4, atol=1e-5)
    K = land.gradient_covariance(th[:-1], th[-1])
    np.testing.assert_allclose(K, np.cov(G.T, bias=True), rtol=1e-10, atol=1e-14)


# --- prediction: lambda* against the project's closed forms --------------------------------------------


@given(eta=st.floats(0.01, 1.0), S=st.integers(1, 64), sigma=st.floats(0.0, 3.0))
def test_predicted_break_even_is_the_mean_square_edge(eta, S, sigma):
    lam = bes.predicted_break_even(eta, S, 64, sigma)
    c = variance_factor(S, 64)
    assert math.isclose(float(stability_factor(eta, lam, sigma**2 * lam**2, c)), 1.0, rel_tol=1e-9)
    assert math.isclose(float(eta_star_1d(lam, sigma**2 * lam**2, c)), eta, rel_tol=1e-9)
    assert lam <= 2 / eta * (1 + 1e-12)
    # Conjecture 1's ordering of the prediction: lower for larger eta or smaller S
    assert bes.predicted_break_even(eta * 1.1, S, 64, sigma) < lam
    if S < 64 and sigma > 0.01:
        assert bes.predicted_break_even(eta, S + 1, 64, sigma) > lam


def test_almost_sure_edge_is_above_the_mean_square_edge():
    land1 = bes.SharpeningLandscape.make(n_examples=24, sigma=1.0)
    for S in (1, 4):
        lam_as = bes.almost_sure_break_even(land1, 0.2, S, samples=20000)  # all C(24, S) batches
        assert lam_as > bes.predicted_break_even(0.2, S, 24, 1.0) * 1.05
        if S == 1:  # gamma(lam_as) = 0
            assert np.mean(np.log(np.abs(1 - 0.2 * lam_as * land1.f[:, 0]))) == pytest.approx(0, abs=1e-8)
        else:  # Monte Carlo batches agree
            mc = bes.almost_sure_break_even(land1, 0.2, S, samples=10000, seed=1)
            assert mc == pytest.approx(lam_as, rel=0.03)
    assert bes.almost_sure_break_even(land1, 0.2, 24) == pytest.approx(10.0)


def test_full_batch_prediction_is_two_over_eta():
    assert bes.predicted_break_even(0.3, 64, 64, 2.0) == pytest.approx(2 / 0.3, rel=1e-14)


# --- R1 at frozen curvature: exact E[x_t^2] vs Monte Carlo, below and above the edge --------------------


@pytest.mark.parametrize("rel", [0.85, 0.97, 1.03])
def test_frozen_second_moment_matches_exact_recursion(rel):
    land1 = bes.SharpeningLandscape.make(n_examples=32, sigma=0.5, offset=0.01, landscape_seed=2)
    eta, S = 0.2, 8
    lam = bes.predicted_break_even(eta, S, land1.N, land1.sigma)
    z = land1.z_of_curvature(rel * lam)
    q = bes.frozen_q(land1, eta, S, z)
    assert (q < 1) == (rel < 1)
    T, R = 40, 20000  # short: past the edge the tail gets heavy
    run = bes.simulate(land1, eta, S, steps=T, trajectories=R, seed=5, record_every=10, z0=z, frozen=True)
    assert np.all(run.Z == z) and run.ok.all()
    x2 = run.X[:, :, 0] ** 2
    exact = bes.frozen_second_moment(land1, eta, S, z, run.steps)
    mc, se = x2.mean(axis=0), x2.std(axis=0, ddof=1) / math.sqrt(R)
    zscores = (mc[1:] - exact[1:]) / se[1:]
    assert np.all(np.abs(zscores) < 4.5), (mc, exact, se)
    if rel > 1:  # past the edge: no stationary floor, E[x^2] ~ q^t
        assert mc[-1] > 2 * mc[1] and exact[-1] > 2 * exact[1]
    else:  # below it: converges to eta^2 c V / (1 - q)
        assert exact[-1] == pytest.approx(bes.frozen_second_moment(land1, eta, S, z, 10**6), rel=0.1)


# --- the emergent break-even point ------------------------------------------------------------------------


def _summary(land1, eta, S, R=24, seed=0):
    return bes.summarise(bes.simulate(land1, eta, S, trajectories=R, seed=seed))


def test_full_batch_limit_max_curvature_reaches_two_over_eta():
    # GD: x collapses to rounding level between bursts, so the curvature runs a sawtooth around 2 / eta
    # (about 0.8 .. 1.2 x 2 / eta here); its late-time mean is within a few % of 2 / eta
    land1 = bes.SharpeningLandscape.make(n_examples=16, sigma=1.0, offset=0.001, beta=0.001)
    for eta in (0.1, 0.2):
        s = _summary(land1, eta, 16, R=1)
        assert s["predicted_break_even"] == pytest.approx(2 / eta)
        assert s["max_curvature"] >= 2 / eta  # GD crosses the edge before x grows
        assert s["curvature_at_break_even"] == pytest.approx(2 / eta, rel=0.05)  # self-stabilised at 2 / eta
        assert s["diverged"] == 0


def test_break_even_follows_prediction_and_conjecture_1_ordering():
    land1 = bes.SharpeningLandscape.make(n_examples=32, sigma=1.0, offset=0.001, beta=0.001)
    rows = {(eta, S): _summary(land1, eta, S) for eta in (0.1, 0.2) for S in (2, 16)}
    for (eta, S), s in rows.items():
        assert s["diverged"] == 0
        assert 0.9 < s["plateau_over_predicted"] < 1.05, (eta, S, s["plateau_over_predicted"])
        assert 0.98 < s["max_over_predicted"] < 1.4, (eta, S, s["max_over_predicted"])
        assert s["steps_to_break_even"] > 0
        if S == 2:  # it follows the mean-square edge, not the higher almost-sure one
            assert s["curvature_at_break_even"] < 0.9 * s["almost_sure_break_even"]
    # (max_lambda_K is set by the largest catapult, too heavy-tailed to order at this R; the median of
    # lambda_K^1 over the self-stabilised phase is the break-even value of lambda_K)
    for key in ("max_curvature", "curvature_at_break_even", "median_late_lambda_K"):
        for S in (2, 16):  # larger eta: lower
            hi, lo = rows[(0.2, S)], rows[(0.1, S)]
            assert hi[key] + 3 * hi[key + "_se"] < lo[key] - 3 * lo[key + "_se"], (key, S)
        for eta in (0.1, 0.2):  # smaller S: lower
            small, big = rows[(eta, 2)], rows[(eta, 16)]
            assert small[key] + 3 * small[key + "_se"] < big[key] - 3 * big[key + "_se"], (key, eta)


def test_conjecture_2_trace_and_conditioning(land):
    a, b = _summary(land, 0.1, 8), _summary(land, 0.3, 8)
    assert b["max_trace_H"] < a["max_trace_H"]  # larger eta: lower max Tr(H)
    assert b["min_trace_ratio"] > a["min_trace_ratio"]  # ... and better conditioned
    # at the break-even point a_2 = sqrt(a_1) in this landscape: Tr / lambda_max = 1 + lambda^{-1/2}
    assert a["final_trace_ratio"] == pytest.approx(1 + a["curvature_at_break_even"] ** -0.5, rel=0.05)


def test_divergence_is_a_result_with_its_step():
    land1 = bes.SharpeningLandscape.make(n_examples=16, sigma=0.5)
    z = land1.z_of_curvature(1.5 * 2 / 0.1)
    run = bes.simulate(land1, 0.1, 4, steps=2000, trajectories=8, z0=z, frozen=True)
    s = bes.summarise(run)
    assert s["diverged"] == 8 and 0 < s["first_divergence_step"] < 2000 and "error" in s
    assert np.all(np.isnan(run.Z[:, -1]))


# --- determinism ---------------------------------------------------------------------------------------


def test_same_seed_same_numbers_for_one_and_two_threads(land):
    old = numba.get_num_threads()
    try:
        out = []
        for n in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(n)
            run = bes.simulate(land, 0.2, 4, steps=3000, trajectories=16, seed=11)
            out.append(run)
    finally:
        numba.set_num_threads(old)
    a, b = out
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.Z, b.Z)
    np.testing.assert_array_equal(a.max_curvature, b.max_curvature)
    c = bes.simulate(land, 0.2, 4, steps=3000, trajectories=16, seed=12)
    assert not np.array_equal(a.Z, c.Z)


# --- command line and bad input -------------------------------------------------------------------------


def test_cli_json(capsys):
    argv = ["break-even", "--eta", "0.2", "--batch", "8", "--n-examples", "16", "--beta", "0.01"]
    assert main([*argv, "--trajectories", "8", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    for k in (
        "max_curvature",
        "curvature_at_break_even",
        "predicted_break_even",
        "steps_to_break_even",
        "max_curvature_se",
        "steps_to_break_even_se",
    ):
        assert k in s
    assert s["predicted_break_even"] == pytest.approx(bes.predicted_break_even(0.2, 8, 16, 1.0))
    assert main([*argv, "--trajectories", "4"]) == 0
    assert "predicted_break_even" in capsys.readouterr().out


def test_unreached_break_even_is_reported_as_not_reached(capsys):
    """The issue's case at a length that cannot reach lambda*: the curvature rises monotonically, so no
    plateau, no break-even step; the note says how many steps it needs."""
    assert (
        main(["break-even", "--eta", "0.02", "--batch", "8", "--steps", "200000", "--trajectories", "16", "--json"])
        == 0
    )
    s = json.loads(capsys.readouterr().out)
    assert s["reached"] is False and s["reached_trajectories"] == 0
    for k in bes.BREAK_EVEN_KEYS + ("plateau_over_predicted",):
        assert s[k] is None, k
    assert s["max_curvature"] < s["predicted_break_even"]  # rose, never turned back
    need = bes.steps_for_break_even(bes.SharpeningLandscape.make(), 0.02, 8)
    c = (64 - 8) / (8 * (64 - 1))  # c(S, N) by hand
    lam_star = 2 / (0.02 * (1 + c))  # sigma = 1: lambda* = 90
    assert s["predicted_break_even"] == pytest.approx(lam_star, rel=1e-12)
    assert need == math.ceil(2.5 * math.log(lam_star) / (0.02 * 0.001) + 500)  # a(z) = e^z, z grows eta beta
    assert s["steps_for_break_even"] == need and f"--steps {need}" in s["note"]
    # the default length is enough, and reaches it (the cap is 5e6 steps, stated in the summary)
    land = bes.SharpeningLandscape.make()
    assert bes.default_steps(land, 0.02, 8) == need < bes.MAX_DEFAULT_STEPS
    assert main(["break-even", "--eta", "0.02", "--batch", "8", "--steps", "200000", "--trajectories", "4"]) == 0
    text = capsys.readouterr().out
    assert "reached break-even: NO" in text and "curvature_at_break_even  = not reached" in text


def test_break_even_detection_reads_the_turn_of_the_curvature():
    """growth_stops on hand-made curves: monotone (never), a 1% fall, a fall in the last half only."""
    t = np.arange(100, dtype=float)
    rising = 1 + t
    turned = np.minimum(1 + t, 40.0) - np.where(t > 40, 1.0, 0.0)  # plateau at 40, then 2.5% lower
    late = np.where(t < 80, 1 + t, 70.0)
    wiggle = 1 + t - 0.005 * (1 + t) * (t % 2)  # 0.5% dips: not a turn
    curv = np.stack([rising, turned, late, wiggle])
    assert bes.growth_stops(curv).tolist() == [-1, 41, 80, -1]
    be = bes.break_even_per_trajectory(curv, record_every=10)
    assert be["reached"].tolist() == [False, True, False, False]
    assert be["plateau"][1] == 39.0 and be["steps"][1] == 380.0  # first record at the plateau level
    assert np.isnan(be["plateau"][[0, 2, 3]]).all()


def test_no_sharpening_is_said_and_not_run_for_ever():
    land = bes.SharpeningLandscape.make(beta=0.0)
    assert bes.steps_for_break_even(land, 0.1, 8) is None and bes.default_steps(land, 0.1, 8) == 2000
    s = bes.summarise(bes.simulate(land, 0.1, 8, trajectories=4))
    assert s["reached"] is False and "no sharpening" in s["note"]


def test_sweep_rows():
    rows = bes.sweep([0.2, 0.4], [4, 16], bes.SharpeningLandscape.make(n_examples=16, beta=0.01), trajectories=4)
    assert [(r["eta"], r["batch"]) for r in rows] == [(0.2, 4), (0.2, 16), (0.4, 4), (0.4, 16)]


@pytest.mark.parametrize(
    "argv, name",
    [
        (["--eta", "0", "--batch", "4"], "argument --eta: must be a finite number > 0"),
        (["--eta", "1e308", "--batch", "4"], "eta must be a finite number in [1e-100, 1e+100]"),
        (["--eta", "0.1", "--batch", "0"], "argument --batch"),
        (["--eta", "0.1", "--batch", "65"], "batch size S must be in 1..64"),
        (["--eta", "0.1", "--batch", "4", "--sigma", "-1"], "argument --sigma"),
        (["--eta", "0.1", "--batch", "4", "--sigma", "1e308"], "sigma must be a finite number in [0, 1000]"),
        (["--eta", "0.1", "--batch", "4", "--a0", "1,2"], "--a0 and --rates"),
        (["--eta", "0.1", "--batch", "4", "--a0", "0"], "argument --a0: must be a comma list of numbers > 0"),
        (["--eta", "0.1", "--batch", "4", "--rates", "-1"], "argument --rates: must be a comma list of numbers >= 0"),
        (["--eta", "0.1", "--batch", "4", "--rates", "x"], "--rates"),
        (["--eta", "0.1", "--batch", "4", "--n-examples", "1"], "argument --n-examples"),
        (["--eta", "0.1", "--batch", "4", "--n-examples", "1e12"], "n_examples N must be in 2..2147483648"),
        (["--eta", "0.1", "--batch", "4", "--steps", "0"], "argument --steps"),
        (["--eta", "0.1", "--batch", "4", "--trajectories", "0"], "argument --trajectories"),
        (["--eta", "0.1", "--batch", "4", "--trajectories", "1e12", "--steps", "100"], "needs about"),
    ],
)
def test_bad_input_names_the_parameter(cli, argv, name):
    code, _, err = cli("break-even", *argv)
    assert code == 2 and name in err and err.count("\n") == 1, err


def test_figure_script_quick(figure):
    d = figure("break_even_sweep")
    assert len(d["rows"]) == 9 and all(r["diverged"] == 0 for r in d["rows"])
    assert all(0.8 < r["plateau_over_predicted"] < 1.1 for r in d["rows"])


def test_predicted_break_even_is_the_derived_root():
    f = sp.lambdify((pb.eta, pb.c, pb.sigma), pb.break_even_curvature_proportional)
    for eta, S, N, sigma in ((0.1, 8, 64, 1.0), (0.03, 1, 10, 0.5), (0.4, 64, 64, 2.0)):
        assert bes.predicted_break_even(eta, S, N, sigma) == pytest.approx(
            f(eta, variance_factor(S, N), sigma), rel=1e-12
        )
