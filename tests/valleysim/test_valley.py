"""Degenerate valleys: symbolic landscapes, compiled kernels, noise models, drift and moments.

Truths: closed forms typed here by hand (lambda_i of the toys, stationary
<theta^2> = eta c / (2 - eta lambda), the abs-toy drift with constant
gradients), central finite differences of the loss, deterministic full-batch
GD in numpy, and Monte Carlo within k standard errors.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from valleysim.cli import main
from valleysim.theory import variance_factor
from valleysim.valley import theory as vt
from valleysim.valley.codegen import compile_kernels
from valleysim.valley.landscape import ValleyLandscape, catalogue
from valleysim.valley.noise import make_noise
from valleysim.valley.sim import manifold_trace_drift, noise_covariance, project_to_floor, simulate, summarise

K_SE = 4.5  # Monte Carlo tolerance in standard errors


def within(measured, se, expected, k=K_SE):
    return abs(measured - expected) <= k * se


# --- landscapes ----------------------------------------------------------------------------------


def test_toys_have_the_hand_derived_curvatures():
    x = np.array([[0.3, -0.2, 1.1, 0.4], [0.0, 0.0, 2.5, 1.5]])
    t3, t4 = x[:, 2], x[:, 3]
    abs_toy, exp_toy = catalogue("abs-toy"), catalogue("exp-toy")
    assert abs_toy.valley_form and exp_toy.valley_form
    np.testing.assert_allclose(abs_toy.eval_lambdas(x), np.stack([2 * abs(t3 + t4), 2 * abs(t3 + 2 * t4)], -1))
    np.testing.assert_allclose(
        exp_toy.eval_lambdas(x), np.stack([8 - 4 * np.exp(-t3 - t4), 2 * np.exp(-((t3 - t4) ** 2))], -1)
    )
    grad = exp_toy.eval_grad_lambdas(x)  # (2, n, m)
    np.testing.assert_allclose(grad[:, 0], np.stack([4 * np.exp(-t3 - t4)] * 2, -1))
    b = t3 - t4
    np.testing.assert_allclose(grad[:, 1], np.stack([-4 * b * np.exp(-(b**2)), 4 * b * np.exp(-(b**2))], -1))


def test_finite_sum_regression_valley_is_recognised_with_aligned_noise():
    land = catalogue("regression-valley")
    assert land.valley_form and land.finite_sum
    assert float(land.floor_loss) == pytest.approx(0.5 * 0.5**2)  # sigma^2 / 2
    noise = make_noise(land, "minibatch", S=4)
    run_stub = type("R", (), {"land": land, "noise": noise})
    x = np.array([0.0, 0.0, 0.7, -0.3])
    v = np.diagonal(noise_covariance(run_stub, x))
    lam = land.eval_lambdas(x)
    # Hadamard design: per-example gradients at the floor have covariance sigma^2 diag(lambda)
    np.testing.assert_allclose(v[:2], variance_factor(4, 32) * 0.25 * lam, rtol=1e-12)
    np.testing.assert_allclose(v[2:], 0.0, atol=1e-15)


def test_diag_linear_net_is_not_valley_form_but_simulates():
    land = catalogue("diag-linear-net")
    assert not land.valley_form
    x = np.array(land.init)
    H = land.eval_hessian(x)
    assert np.trace(H) == pytest.approx(np.sum(x**2))  # tr H = sum u^2 + v^2 (closed form)
    out = summarise(
        simulate(land, make_noise(land, "minibatch", S=8), 0.02, steps=200, burn_in=0, trajectories=64, seed=3)
    )
    assert out["completed"] == 64 and "prediction_note" in out and "trace_drift_per_step" in out


@pytest.mark.parametrize(
    "name,noise,floor",
    [
        ("abs-toy", "sgd", (0.7, 0.4)),
        ("exp-toy", "isotropic", (1.0, -0.3)),
        ("regression-valley", "minibatch", (0.4, 0.9)),
    ],
)
def test_manifold_drift_reduces_to_the_valley_formula(name, noise, floor):
    # valley form: the coordinate-free drift at a floor point is -(eta/2) sum_j W_jj grad lambda_j on theta_hat,
    # zero on theta, and its trace rate is the spectral drift of f = trace
    land = catalogue(name)
    scale = None if noise == "minibatch" else 0.2
    M = land.n_examples or 32
    run = type("R", (), {"land": land, "noise": make_noise(land, noise, scale=scale, S=4, M=M), "eta": 0.03})
    x = np.array([0.0, 0.0, *floor])
    projected = project_to_floor(land, x + [0.05, -0.02, 0, 0])  # lands on the floor, nearby
    np.testing.assert_allclose(projected[:2], 0.0, atol=1e-12)
    np.testing.assert_allclose(projected[2:], floor, atol=0.01)
    lam, grad_lam = land.eval_lambdas(x), land.eval_grad_lambdas(x)
    W = vt.stationary_second_moments(lam, noise_covariance(run, x)[:2, :2], run.eta)
    dx, W_full = vt.manifold_drift(
        run.eta, land.eval_hessian(x), land.eval_hessian_gradient(x), noise_covariance(run, x), land.n
    )
    np.testing.assert_allclose(W_full[:2, :2], W, rtol=1e-10)
    np.testing.assert_allclose(dx, [0, 0, *(-0.5 * run.eta * np.diagonal(W) @ grad_lam)], atol=1e-14)
    assert manifold_trace_drift(run, x) == pytest.approx(
        vt.spectral_drift(run.eta, np.diagonal(W), grad_lam, grad_lam.sum(axis=0)), rel=1e-10
    )


def test_diag_linear_net_drift_matches_closed_form_and_simulation():
    # minima u_j v_j = beta_j; tr H = sum u^2 + v^2 (the data are balanced, E x_j x_l = delta_jl, and the label
    # noise is orthogonal to the design), so the trace moves along the hyperbolae at the hand-derived rate
    # -(eta^2 c sigma^2 / 4) sum_j 4 (u_j^2 - v_j^2)^2 / (u_j^2 + v_j^2) / (1 - eta lambda_j / 2),
    # lambda_j = u_j^2 + v_j^2 the curvature across the hyperbola (the last factor: W exact in eta)
    land = catalogue("diag-linear-net")
    eta, S = 0.02, 4
    noise = make_noise(land, "minibatch", S=S)
    x = np.array(land.init)
    u, v = x[:2], x[2:]
    c = variance_factor(S, land.n_examples)
    lam = u**2 + v**2
    by_hand = -(eta**2 * c * 0.5**2 / 4) * np.sum(4 * (u**2 - v**2) ** 2 / lam / (1 - eta * lam / 2))
    run_stub = type("R", (), {"land": land, "noise": noise, "eta": eta})
    assert manifold_trace_drift(run_stub, x) == pytest.approx(by_hand, rel=1e-9)
    out = summarise(simulate(land, noise, eta, steps=400, burn_in=200, trajectories=2048, seed=5, record_every=50))
    assert out["stopped"] == 0
    assert within(out["trace_drift_per_step"], out["trace_drift_stderr"], out["trace_drift_predicted"])
    assert out["trace_drift_per_step"] < -5 * out["trace_drift_stderr"]


@pytest.mark.parametrize("name", ["abs-toy", "exp-toy", "regression-valley", "diag-linear-net"])
def test_compiled_gradient_matches_finite_differences(name):
    land = catalogue(name)
    noise = make_noise(land, "isotropic", scale=0.1, S=2, M=land.n_examples or 8)
    k = compile_kernels(land, noise)
    rng = np.random.default_rng(0)
    D = len(land.coords)
    for _ in range(5):
        p = np.array(land.init) + 0.3 * rng.standard_normal(D)
        g, sd, lam, kink = np.empty(D), np.empty(D), np.empty(max(land.n, 1)), np.empty(max(len(land.kinks), 1))
        k.point(p, 0.1, g, sd, lam, kink)
        h = 1e-6
        fd = [(land.eval_loss(p + h * e) - land.eval_loss(p - h * e)) / (2 * h) for e in np.eye(D)]
        np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(sd[: land.n], np.sqrt(0.1))
        np.testing.assert_allclose(sd[land.n :], 0.0)


def test_full_batch_minibatch_is_exact_gradient_descent():
    land = catalogue("regression-valley").with_init("t1=0.4,t2=-0.3,t3=0.5,t4=0.2")
    M, eta, T = land.n_examples, 0.1, 50
    run = simulate(land, make_noise(land, "minibatch", S=M), eta, steps=T, burn_in=0, trajectories=2, seed=0)
    grad = land._lambdify(land.gradient)
    x = np.array(land.init)
    for _ in range(T):
        x = x - eta * grad(x)
    np.testing.assert_allclose(run.coords[:, -1], np.tile(x, (2, 1)), rtol=1e-10, atol=1e-12)


# --- reproducibility -----------------------------------------------------------------------------


def test_same_seed_same_numbers_for_any_thread_count():
    import numba

    land = catalogue("exp-toy")
    noise = make_noise(land, "sgd", S=4, M=32)
    kw = dict(steps=300, burn_in=50, trajectories=37, seed=11, record_every=30)
    a = simulate(land, noise, 0.02, **kw)
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        b = simulate(land, noise, 0.02, **kw)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(a.rec, b.rec)
    np.testing.assert_array_equal(a.acc, b.acc)
    c = simulate(land, noise, 0.02, **{**kw, "seed": 12})
    assert not np.array_equal(a.rec, c.rec)


# --- theory against simulation ---------------------------------------------------------------------


def test_stationary_second_moment_matches_closed_form():
    # lambda barely depends on the degenerate coordinate: theta_hat is effectively frozen
    land = ValleyLandscape.from_strings("(3 + t3**2/1000)*t1**2/2", "t1", "t3", "t3=0.1")
    eta, S, M = 0.2, 2, 20
    c = (M - S) / (S * (M - 1))
    out = summarise(
        simulate(land, make_noise(land, "sgd", S=S, M=M), eta, steps=2000, burn_in=200, trajectories=2048, seed=5)
    )
    lam = 3 + 0.1**2 / 1000
    exact = eta * c / (2 - eta * lam)  # W = A W A + eta^2 c lam, solved by hand
    assert within(out["second_moments_measured"][0], out["second_moments_stderr"][0], exact)
    assert out["second_moments_predicted"][0] == pytest.approx(exact, rel=1e-4)
    assert not within(
        out["second_moments_measured"][0], out["second_moments_stderr"][0], eta * c / 2
    )  # leading order is off


def test_abs_toy_trace_drift_matches_theorem_one_exact_in_eta():
    land = catalogue("abs-toy")
    eta, S, M = 0.01, 4, 32
    c = variance_factor(S, M)
    out = summarise(
        simulate(
            land,
            make_noise(land, "sgd", S=S, M=M),
            eta,
            steps=1000,
            burn_in=1000,
            trajectories=1024,
            seed=2,
            record_every=50,
        )
    )
    assert out["completed"] == 1024
    assert within(out["trace_drift_per_step"], out["trace_drift_stderr"], out["trace_drift_predicted"])
    assert within(out["logdet_drift_per_step"], out["logdet_drift_stderr"], out["logdet_drift_predicted"])
    # by hand at the start (t3 = t4 = 1: lambda = 4, 6; grad lambda = (2, 2), (2, 4); grad T = (4, 6))
    w = eta * c / (2 - eta * np.array([4.0, 6.0]))
    by_hand = -0.5 * eta * (w[0] * 20 + w[1] * 32)
    assert out["trace_drift_predicted"] == pytest.approx(by_hand, rel=0.05)  # lambda moves a little in the run
    assert out["trace_drift_predicted_leading"] == pytest.approx(-(eta**2) * c / 4 * 52, rel=1e-9)
    # the paper's printed eta^2/(2S)(1 - S/M) is twice the measured drift
    assert not within(out["trace_drift_per_step"], out["trace_drift_stderr"], 2 * out["trace_drift_predicted"])


def test_true_minibatch_noise_drift_and_moments_match_theory():
    # eta = 0.02: the multiplicative part of the mini-batch noise shifts the drift by 0.66 %, i.e. ~10 SE here;
    # the prediction includes it (the leading-order one, noise frozen at the floor, must miss)
    land = catalogue("regression-valley")
    out = summarise(
        simulate(
            land,
            make_noise(land, "minibatch", S=4),
            0.02,
            steps=2000,
            burn_in=1000,
            trajectories=2048,
            seed=4,
            record_every=100,
        )
    )
    for name in ("trace", "logdet"):
        m, se = out[f"{name}_drift_per_step"], out[f"{name}_drift_stderr"]
        assert within(m, se, out[f"{name}_drift_predicted"])
        assert abs(m - out[f"{name}_drift_predicted_leading"]) > 5 * se
        assert m < 0
    for m, se, p in zip(out["second_moments_measured"], out["second_moments_stderr"], out["second_moments_predicted"]):
        assert within(m, se, p)
    assert within(out["fdr_difference"], out["fdr_difference_stderr"], 0.0)


def test_minibatch_noise_response_is_the_first_order_expansion():
    # exact E over a symmetric 4-point theta distribution of Cov_k g_k(theta), g_k cubic in theta:
    # the formula's error must be O(E theta^4), i.e. shrink 4x when W shrinks 2x
    rng = np.random.default_rng(3)
    M, D, n = 6, 3, 2
    g0, J, T, Q = (rng.normal(size=(M, D) + (n,) * k) for k in range(4))
    T = (T + np.swapaxes(T, -1, -2)) / 2
    C0, K = vt.minibatch_noise_response(g0, J, T)
    errs = []
    for w in (1e-2, 5e-3):
        pts = np.sqrt(w) * np.array([[1.0, 0.5], [-1.0, -0.5], [0.3, -1.2], [-0.3, 1.2]])
        gk = (
            g0[None]
            + np.einsum("kai,ri->rka", J, pts)
            + 0.5 * np.einsum("kaij,ri,rj->rka", T, pts, pts)
            + np.einsum("kaijl,ri,rj,rl->rka", Q, pts, pts, pts)
        )
        dg = gk - gk.mean(axis=1, keepdims=True)
        exact = np.einsum("rka,rkb->ab", dg, dg) / (M * len(pts))
        W = pts.T @ pts / len(pts)
        errs.append(np.abs(exact - C0 - np.einsum("ij,ijab->ab", W, K)).max())
    assert 3.5 < errs[0] / errs[1] < 4.5


def test_stationary_moments_with_multiplicative_noise():
    rng = np.random.default_rng(4)
    M, D, n, eta, c = 8, 4, 2, 0.05, 0.3
    lam = np.array([2.0, 3.5])
    g0, J, T = rng.normal(size=(M, D)), rng.normal(size=(M, D, n)), rng.normal(size=(M, D, n, n))
    C0, K = vt.minibatch_noise_response(g0, J, T)
    W = vt.stationary_second_moments_minibatch(eta, c, C0, K, lam)
    A = np.diag(1 - eta * lam)
    np.testing.assert_allclose(
        W, A @ W @ A + eta**2 * c * (C0 + np.einsum("ij,ijab->ab", W, K))[:n, :n], rtol=1e-12, atol=1e-16
    )
    # no multiplicative part: the Lyapunov solution with C = c C0
    np.testing.assert_allclose(
        vt.stationary_second_moments_minibatch(eta, c, C0, 0 * K, lam),
        vt.stationary_second_moments(lam, c * C0[:n, :n], eta),
        rtol=1e-12,
    )


@pytest.mark.parametrize("noise", ["isotropic", "designed:trace", "designed:lam1**2 + lam2"])
def test_designed_noise_drift_matches_theorem_two(noise):
    land = catalogue("exp-toy")
    out = summarise(
        simulate(
            land,
            make_noise(land, noise, scale=0.1),
            0.01,
            steps=1000,
            burn_in=500,
            trajectories=1024,
            seed=6,
            record_every=50,
        )
    )
    for name in ("trace", "logdet", "f"):
        if f"{name}_drift_predicted" in out:
            assert within(out[f"{name}_drift_per_step"], out[f"{name}_drift_stderr"], out[f"{name}_drift_predicted"])
    assert within(out["fdr_difference"], out["fdr_difference_stderr"], 0.0)


def test_negative_eigenvalues_scale_with_the_loss_in_the_abs_toy():
    land = catalogue("abs-toy")
    run = simulate(land, make_noise(land, "sgd", S=2, M=32), 0.01, steps=200, burn_in=800, trajectories=2048, seed=8)
    out = summarise(run)
    assert out["neg_eig_slope_exact_to_leading_order"]
    ratio = out["neg_eig_sum"] / out["loss_excess"]
    rel_se = np.hypot(out["neg_eig_sum_stderr"] / out["neg_eig_sum"], out["loss_excess_stderr"] / out["loss_excess"])
    assert abs(ratio / out["neg_eig_slope_predicted"] - 1) < K_SE * rel_se
    # by hand: -2 (|grad lam1|^2 / lam1 + |grad lam2|^2 / lam2) / T, |grad lam|^2 = 8, 20, at the end point
    t3, t4 = run.coords[:, -1, 2].mean(), run.coords[:, -1, 3].mean()
    lam1, lam2 = 2 * (t3 + t4), 2 * (t3 + 2 * t4)
    assert out["neg_eig_slope_predicted"] == pytest.approx(-2 * (8 / lam1 + 20 / lam2) / (lam1 + lam2), rel=1e-3)


# --- leaving the valley, divergence, bad input ---------------------------------------------------------


def test_kink_crossing_and_divergence_are_reported():
    land = catalogue("abs-toy").with_init("t3=0.02,t4=0.02")
    out = summarise(
        simulate(land, make_noise(land, "isotropic-full", scale=1.0), 0.1, steps=500, trajectories=64, seed=1)
    )
    assert out["stopped"] > 0 and "kink" in out["first_stop_reason"]
    land = ValleyLandscape.from_strings("(3 + t3**2/1000)*t1**2/2", "t1", "t3", "t3=0.1")  # eta lambda = 3 > 2
    run = simulate(land, make_noise(land, "sgd", scale=0.1), 1.0, steps=2000, trajectories=8, seed=1)
    assert np.all(run.status >= 0) and np.all(run.reason == 3)
    assert "error" in summarise(run)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--loss", "t1**2 *", "--nondegenerate", "t1", "--degenerate", "t2"], "not a valid expression"),
        (["--loss", "t1**2", "--nondegenerate", "t1", "--degenerate", "t2"], "do not appear"),
        (["--loss", "t1**2*t2", "--nondegenerate", "t1,t2", "--degenerate", "t2"], "both"),
        (["--loss", "t1**2*t2*q", "--nondegenerate", "t1", "--degenerate", "t2"], "unknown name 'q'"),
        (
            [
                "--loss",
                "t1**2*t2",
                "--nondegenerate",
                "t1",
                "--degenerate",
                "t2",
                "--init",
                "t2=-1",
                "--noise-scale",
                "1",
            ],
            "non-positive curvature",
        ),
        (
            [
                "--loss",
                "t1**2*(1 + t2**2) + Abs(t2 - 1)",
                "--nondegenerate",
                "t1",
                "--degenerate",
                "t2",
                "--init",
                "t2=1",
                "--noise-scale",
                "1",
                "--noise",
                "isotropic",
            ],
            "kink",
        ),
        (["--loss", "abs-toy", "--init", "t9=1"], "unknown coordinates"),
        (["--loss", "abs-toy", "--noise-scale=-1"], "argument --noise-scale"),
        (["--loss", "abs-toy", "--noise-scale", "1", "--trajectories", "1e10"], "needs about"),
        (["--loss", "abs-toy", "--noise-scale", "1", "--steps", "1e8", "--record-every", "1"], "needs about"),
        (["--loss", "abs-toy", "--noise-scale", "1", "--steps", "10", "--record-every", "20"], "--record-every"),
        (["--loss", "abs-toy", "--batch", "40", "--dataset-size", "32"], "batch size S"),
        (["--loss", "abs-toy"], "noise scale"),
        (["--loss", "abs-toy", "--noise", "minibatch", "--batch", "2"], "finite-sum"),
        (["--loss", "diag-linear-net", "--noise", "sgd", "--noise-scale", "1"], "valley form"),
        (["--loss", "exp-toy", "--noise", "designed:-lam1", "--noise-scale", "1"], "dF/dlambda_i >= 0"),
        (["--loss", "exp-toy", "--noise", "bogus", "--noise-scale", "1"], "--noise must be one of"),
        (["--loss", "exp-toy", "--noise-scale", "1", "--eta", "0"], "--eta"),
    ],
)
def test_bad_input_names_the_problem(cli, args, message):
    full = ["valley", "--eta", "0.01", *args] if "--eta" not in args else ["valley", *args]
    code, _, err = cli(*full)
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_json_has_the_documented_keys(capsys):
    assert (
        main(
            [
                "valley",
                "--loss",
                "abs-toy",
                "--eta",
                "0.01",
                "--batch",
                "4",
                "--dataset-size",
                "32",
                "--steps",
                "200",
                "--burn-in",
                "200",
                "--trajectories",
                "64",
                "--json",
            ]
        )
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    for key in (
        "trace_drift_per_step",
        "trace_drift_stderr",
        "trace_drift_predicted",
        "logdet_drift_per_step",
        "logdet_drift_stderr",
        "logdet_drift_predicted",
        "second_moments_measured",
        "second_moments_predicted",
        "fdr_difference",
        "neg_eig_sum",
        "loss_excess",
    ):
        assert key in out, key


def test_second_run_loads_the_cached_kernel(tmp_path):
    env = {**os.environ, "VALLEYSIM_CACHE": str(tmp_path)}
    code = (
        "from valleysim.valley.landscape import catalogue; from valleysim.valley.noise import make_noise;"
        "from valleysim.valley.sim import simulate; L = catalogue('abs-toy');"
        "simulate(L, make_noise(L, 'sgd', scale=0.1), 0.01, steps=10, trajectories=4)"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert any(p.suffix == ".nbi" for p in files) and any(p.suffix == ".nbc" for p in files)
    stamps = {p: p.stat().st_mtime_ns for p in files}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
    after = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert after == files and all(p.stat().st_mtime_ns == stamps[p] for p in files)  # nothing recompiled


def test_a_burn_in_shorter_than_the_relaxation_is_said(cli):
    """theta relaxes like (1 - eta lambda)^2 per step: 1 / (2 |log|1 - eta lambda||) steps (closed form)."""
    from valleysim.valley.sim import relaxation_steps

    land = ValleyLandscape.from_strings("(3 + t3**2/1000)*t1**2/2", "t1", "t3", "t3=0.1")
    lam = 3 + 0.1**2 / 1000
    assert relaxation_steps(land, 0.001) == pytest.approx(1 / (2 * abs(np.log(1 - 0.001 * lam))), rel=1e-12)
    base = ["valley", "--loss", "exp-toy", "--noise-scale", "0.05", "--steps", "50", "--trajectories", "16", "--json"]
    code, out, _ = cli(*base, "--eta", "0.0005", "--burn-in", "100")
    s = json.loads(out)
    assert code == 0 and "shorter than 5 relaxation times" in s["equilibration_note"]
    code, out, _ = cli(*base, "--eta", "0.01", "--burn-in", "1000")
    assert code == 0 and "equilibration_note" not in json.loads(out)
