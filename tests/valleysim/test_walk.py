"""R9 walk: the metric definitions, the landscape, the kernel and the CLI, each against an independent truth."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from valleysim.cli import main
from valleysim.errors import UserInputError
from valleysim.walk import (
    TRACE_FIELDS,
    WalkLandscape,
    cosine,
    interpolation_alphas,
    isotropic_sigma,
    segment_metrics,
    simulate,
    summarise,
)

F = {name: j for j, name in enumerate(TRACE_FIELDS)}


@pytest.fixture(scope="module")
def land():
    return WalkLandscape.make(n_examples=8, seed=3)


@pytest.fixture(scope="module")
def sgd_run(land):
    return simulate(land, 2.0, optimizer="sgd", steps=60, trajectories=5, batch_size=3, seed=7, n_rec=2)


def _pure_wall(k=1.0, x0=1.0, width=math.inf):
    """One example, quadratic (or saturating) wall along x only: no slope, no barrier, no flat directions."""
    return WalkLandscape.make(
        n_examples=1,
        k=k,
        k_spread=0.0,
        offset_std=0.0,
        slope=0.0,
        slope_std=0.0,
        width=width,
        barrier=0.0,
        n_flat=0,
        x0=x0,
    )


# --- the metric definitions on hand-made segments ----------------------------------------------------


def test_alphas_are_ten_interior_points_plus_the_endpoints():
    al = interpolation_alphas()
    assert al.shape == (12,) and al[0] == 0 and al[-1] == 1
    np.testing.assert_allclose(np.diff(al), 1 / 11)


def test_barrier_detection_on_hand_made_segments():
    # a bump between two equal endpoints: crossed, size = bump - endpoint
    m = segment_metrics([1.0, 1.2, 1.5, 1.2, 1.0])
    assert m["barrier"] and m["barrier_size"] == pytest.approx(0.5) and m["floor"] == 1.0
    # a valley between the endpoints (bouncing off walls): no barrier, floor inside
    m = segment_metrics([1.0, 0.5, 0.2, 0.6, 1.1])
    assert not m["barrier"] and m["floor"] == 0.2 and m["height"] == pytest.approx((1.0 + 1.1 - 0.4) / 2)
    # monotone descent: no barrier, the floor is the lower endpoint, height = half the drop
    m = segment_metrics([2.0, 1.5, 1.0, 0.5])
    assert not m["barrier"] and m["floor"] == 0.5 and m["height"] == pytest.approx(0.75)
    # an interior point above only the lower endpoint is not a barrier
    assert not segment_metrics([2.0, 1.5, 1.0])["barrier"]
    # equal to the higher endpoint is not above it, nor is round-off above it
    assert not segment_metrics([1.0, 1.0, 0.5])["barrier"]
    assert not segment_metrics([0.3, 0.3 + 1e-15, 0.3])["barrier"]
    assert segment_metrics([0.3, 0.3 + 1e-8, 0.3])["barrier"]


def test_height_above_floor_for_known_points():
    # a quadratic wall L = x^2 / 2 and a symmetric jump x -> -x: floor 0 at the middle (alpha = 1/2 is
    # not on the 1/11 grid: the closest grid points are x = +-1/11 x), height = L(x) - floor
    wall = _pure_wall()
    x = 0.8
    a = np.array([x, 0.0])
    b = np.array([-x, 0.0])
    al = interpolation_alphas()
    L = wall.loss((1 - al)[:, None] * a + al[:, None] * b)
    m = segment_metrics(L)
    floor = 0.5 * (x / 11) ** 2
    assert m["floor"] == pytest.approx(floor) and m["height"] == pytest.approx(0.5 * x * x - floor)


def test_cosine_definition():
    assert cosine([1, 0], [-2, 0]) == -1 and cosine([1, 1], [1, 1]) == pytest.approx(1)
    assert cosine([1, 0], [0, 3]) == 0 and math.isnan(cosine([0, 0], [1, 0]))
    assert math.isnan(cosine([1e-13, 0], [1, 0]))  # a stopped GD: no direction


# --- the landscape --------------------------------------------------------------------------------------


def test_gradients_match_finite_differences(land):
    rng = np.random.default_rng(0)
    th = rng.normal(size=land.D) * 0.5
    G = land.example_grads(th)
    h = 1e-6
    for d in range(land.D):
        e = np.zeros(land.D)
        e[d] = h
        fd = (land.example_losses(th + e) - land.example_losses(th - e)) / (2 * h)
        np.testing.assert_allclose(G[:, d], fd, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(land.loss(th), land.example_losses(th).mean(), rtol=1e-12)


def test_minibatch_gradient_mean_is_the_full_gradient_by_enumeration(land):
    th = np.array([0.3, 0.4] + [0.1] * land.n_flat)
    G = land.example_grads(th)
    for S in (1, 3, land.N):
        means = np.array([G[list(B)].mean(axis=0) for B in itertools.combinations(range(land.N), S)])
        np.testing.assert_allclose(means.mean(axis=0), land.grad(th), atol=1e-13)
        # and the batch covariance is c(S, N) times the per-example one (finite-population correction)
        np.testing.assert_allclose(
            np.trace(np.cov(means.T, bias=True)),
            (land.N - S) / (S * (land.N - 1)) * G.var(axis=0).sum(),
            rtol=1e-10,
            atol=1e-15,
        )
        assert land.noise_power(th, S) == pytest.approx((land.N - S) / (S * (land.N - 1)) * G.var(axis=0).sum())


def test_isotropic_noise_has_sgds_power_at_the_start(land):
    s = isotropic_sigma(land, 3)
    assert land.D * s * s == pytest.approx(land.noise_power(land.theta0, 3))
    assert isotropic_sigma(land, 3, noise_factor=4.0) == pytest.approx(2 * s)


# --- the kernel against direct evaluation --------------------------------------------------------------


def test_kernel_interpolation_is_the_full_loss_along_the_segment(land, sgd_run):
    al = interpolation_alphas()
    tr, xs = sgd_run.traces[0], sgd_run.interp[0]
    # rebuild theta_t from the recorded x, y (flat directions never move under SGD: no example pushes them)
    th = np.zeros((sgd_run.steps, land.D))
    th[:, 0], th[:, 1] = tr[:, F["x"]], tr[:, F["y"]]
    for t in range(sgd_run.steps - 1):
        seg = (1 - al)[:, None] * th[t] + al[:, None] * th[t + 1]
        np.testing.assert_allclose(xs[t], land.loss(seg), rtol=1e-12, atol=1e-14)
        m = segment_metrics(xs[t])
        assert tr[t, F["floor"]] == pytest.approx(m["floor"], abs=1e-14)
        assert tr[t, F["height"]] == pytest.approx(m["height"], abs=1e-14)
        assert bool(tr[t, F["barrier"]]) == m["barrier"]
        assert tr[t, F["dist"]] == pytest.approx(np.linalg.norm(th[t] - land.theta0), abs=1e-12)


def test_kernel_cosines_are_of_the_step_gradients(land, sgd_run):
    tr = sgd_run.traces[0]
    th = np.zeros((sgd_run.steps, land.D))
    th[:, 0], th[:, 1] = tr[:, F["x"]], tr[:, F["y"]]
    g = -(th[1:] - th[:-1]) / sgd_run.eta  # g_t = -(theta_{t+1} - theta_t) / eta
    for t in range(1, sgd_run.steps - 1):
        assert tr[t, F["cos"]] == pytest.approx(cosine(g[t - 1], g[t]), abs=1e-9)
    assert math.isnan(tr[0, F["cos"]])


def test_gd_is_the_full_gradient_map(land):
    run = simulate(land, 1.3, optimizer="gd", steps=12, trajectories=1, n_rec=1)
    th = land.theta0.copy()
    for t in range(12):
        assert run.traces[0, t, F["x"]] == pytest.approx(th[0], abs=1e-12)
        assert run.traces[0, t, F["y"]] == pytest.approx(th[1], abs=1e-12)
        th = th - 1.3 * land.grad(th)
    np.testing.assert_allclose(run.theta_end[0], th, atol=1e-12)


@pytest.mark.parametrize("eta", [0.5, 0.9, 1.5, 1.9])
def test_gd_cosine_on_a_quadratic_wall_is_the_sign_of_one_minus_eta_k(eta):
    # x_{t+1} = (1 - eta k) x_t, so consecutive gradients k x_t multiply by (1 - eta k)  (R7)
    k = 1.3
    run = simulate(_pure_wall(k=k), eta / k, optimizer="gd", steps=10, trajectories=1, n_rec=1)
    cos = run.traces[0, 1:, F["cos"]]  # |g_t| = k |1 - eta k|^t >= 1.3e-10: all defined
    np.testing.assert_allclose(cos, np.sign(1 - eta), atol=1e-12)
    np.testing.assert_allclose(run.traces[0, :, F["x"]], (1 - eta) ** np.arange(10), rtol=1e-12)


def test_gd_bounces_on_the_saturating_wall_at_the_predicted_height():
    # W = w^2/2 log(1 + x^2/w^2), 2 < eta k < 4: stable 2-cycle x* = w sqrt(eta k / 2 - 1), cos = -1,
    # height = W(x*) - min over the grid (alpha = 1/2 is not on it: the nearest points are +-x*/11)
    w, k, eta = 1.0, 1.0, 3.0
    run = simulate(_pure_wall(k=k, x0=0.3, width=w), eta, optimizer="gd", steps=400, trajectories=1, n_rec=1)
    xs = run.traces[0, -50:, F["x"]]
    xstar = w * math.sqrt(eta * k / 2 - 1)
    np.testing.assert_allclose(np.abs(xs), xstar, rtol=1e-9)
    np.testing.assert_array_equal(run.traces[0, -50:, F["cos"]], -1.0)
    W = lambda u: 0.5 * w * w * math.log1p(u * u / (w * w))  # noqa: E731
    np.testing.assert_allclose(run.traces[0, -50:, F["height"]], W(xstar) - W(xstar / 11), rtol=1e-8)


def test_divergence_is_reported_with_its_step():
    # quadratic wall, eta k = 3: |x_t| = 2^t, passes 1e8 at t = 27
    run = simulate(_pure_wall(), 3.0, optimizer="gd", steps=100, trajectories=2, n_rec=1)
    assert list(run.diverged_step) == [27, 27]
    s = summarise(run)
    assert s["diverged"] == 2 and s["completed"] == 0 and s["first_divergence_step"] == 27
    assert math.isnan(s["height"])
    # traces hold the segments theta_t -> theta_{t+1} that were completed: t = 0..25
    assert np.isnan(run.traces[0, 26:, F["x"]]).all() and np.isfinite(run.traces[0, :26, F["x"]]).all()
    np.testing.assert_allclose(run.theta_end[0], [2.0**26 * (1 if 26 % 2 == 0 else -1), 0.0])


def test_same_seed_same_numbers_for_one_and_two_threads(land):
    import numba

    kw = dict(steps=80, trajectories=7, batch_size=2, seed=5, n_rec=3)
    a = simulate(land, 1.8, optimizer="sgd", **kw)
    an = simulate(land, 1.8, optimizer="gd-noise", **kw)
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        b = simulate(land, 1.8, optimizer="sgd", **kw)
        bn = simulate(land, 1.8, optimizer="gd-noise", **kw)
    finally:
        numba.set_num_threads(before)
    for x, y in ((a, b), (an, bn)):
        for f in ("bins", "theta_end", "traces", "interp", "diverged_step"):
            np.testing.assert_array_equal(getattr(x, f), getattr(y, f))
    c = simulate(land, 1.8, optimizer="sgd", **{**kw, "seed": 6})
    assert not np.array_equal(a.theta_end, c.theta_end)


def test_sgd_with_the_whole_batch_is_gd(land):
    a = simulate(land, 1.5, optimizer="sgd", steps=30, trajectories=2, batch_size=land.N, n_rec=1)
    b = simulate(land, 1.5, optimizer="gd", steps=30, trajectories=2, n_rec=1)
    np.testing.assert_allclose(a.theta_end, b.theta_end, atol=1e-12)


def test_summary_counts_match_the_traces(land):
    run = simulate(land, 2.0, optimizer="gd-noise", steps=40, trajectories=3, batch_size=2, n_rec=3, n_bins=2)
    s = summarise(run, window="all")
    tr = run.traces
    assert s["barriers_total"] == pytest.approx(tr[:, :, F["barrier"]].sum(axis=1).mean())
    assert s["height"] == pytest.approx(tr[:, :, F["height"]].mean(axis=1).mean())
    assert s["cos"] == pytest.approx(np.nanmean(tr[:, :, F["cos"]], axis=1).mean())


# --- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(optimizer="adam"), "optimizer"),
        (dict(eta=0.0), "eta"),
        (dict(eta=float("nan")), "eta"),
        (dict(batch_size=0), "batch size"),
        (dict(batch_size=9), "batch size"),
        (dict(batch_size=None), "batch size"),
        (dict(steps=0), "steps"),
        (dict(trajectories=0), "trajectories"),
    ],
)
def test_bad_run_input_names_the_parameter(land, kw, match):
    args = dict(optimizer="sgd", eta=1.0, steps=10, trajectories=2, batch_size=2) | kw
    with pytest.raises(UserInputError, match=match):
        simulate(land, args.pop("eta"), optimizer=args.pop("optimizer"), **args)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(n_examples=0), "n_examples"),
        (dict(k=-1.0), "k"),
        (dict(k_spread=1.0), "k_spread"),
        (dict(width=0.0), "wall width"),
        (dict(barrier=-1.0), "barrier"),
        (dict(period=0.0), "period"),
        (dict(kappa=float("inf")), "kappa"),
        (dict(n_flat=-1), "n_flat"),
    ],
)
def test_bad_landscape_input_names_the_parameter(kw, match):
    with pytest.raises(UserInputError, match=match):
        WalkLandscape.make(**kw)


# --- the CLI ------------------------------------------------------------------------------------------


def test_cli_prints_metrics_and_json(capsys):
    assert (
        main(
            [
                "walk",
                "--optimizer",
                "sgd",
                "--eta",
                "2",
                "--batch",
                "4",
                "--steps",
                "40",
                "--trajectories",
                "4",
                "--json",
            ]
        )
        == 0
    )
    s = json.loads(capsys.readouterr().out)
    assert s["optimizer"] == "sgd" and s["batch"] == 4 and s["completed"] == 4
    for key in ("height", "cos", "barriers_total", "distance", "progress"):
        assert key in s and f"{key}_se" in s
    assert len(s["per_window"]["height"]) == 4
    assert main(["walk", "--optimizer", "gd", "--eta", "1", "--steps", "20", "--trajectories", "2"]) == 0
    out = capsys.readouterr().out
    assert "cos(g_{t-1}, g_t)" in out and "height above floor" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--batch", "99"], "batch size S must be in 1..32"),
        (["--eta=-1"], "argument --eta"),
        (["--wall-width", "1e308"], "wall width w must be in [0.001, 1e+06] or inf"),
        (["--wall-width", "1e-320"], "wall width w"),
        (["--n-examples", "1e12"], "n_examples must be in 1..2147483648"),
        (["--landscape-seed", "-1"], "argument --landscape-seed"),
        (["--trajectories", "1e6", "--steps", "1e5", "--bins", "1e5"], "needs about"),
    ],
)
def test_cli_bad_input_is_one_named_line(cli, argv, message):
    code, _, err = cli("walk", "--steps", "5", *argv)
    assert code == 2 and message in err and err.count("\n") == 1, err


# --- the figure script ----------------------------------------------------------------------------------


def test_walk_tables_quick_writes_png_and_json(figure):
    d = figure("walk_tables")
    assert {"table1_barriers", "table2_height", "table3_grid", "table4_gd_damping", "table5_sgd_vs_isotropic"} <= set(d)
    for row in d["table4_gd_damping"][:4]:  # the quadratic-wall rows are exact
        assert row["cos_mean"] == pytest.approx(row["cos_predicted"], abs=1e-9)
    assert "T1  barriers crossed" in figure.stdout and "T5  SGD vs GD + isotropic" in figure.stdout


def test_consecutive_gradient_correlation_on_a_noisy_quadratic_wall_is_minus_eta_k_over_two():
    # quadratic wall, per-example offsets only: g_B = k (x - mean_B a), additive noise independent across
    # steps. Stationary x_{t+1} = (1 - eta k) x_t + eta k abar_t gives E[g_t g_{t+1}] / E[g_t^2] = -eta k / 2
    # for ANY noise power, i.e. any S: on a linear wall the batch size cannot move this correlation.
    land = WalkLandscape.make(
        n_examples=16,
        k=1.0,
        k_spread=0.0,
        offset_std=1.0,
        slope=0.0,
        slope_std=0.0,
        width=math.inf,
        barrier=0.0,
        n_flat=0,
        x0=0.0,
        seed=1,
    )
    eta = 1.2
    for S in (1, 4):
        run = simulate(land, eta, optimizer="sgd", steps=4000, trajectories=8, batch_size=S, seed=S, n_rec=8)
        x = run.traces[:, 100:, F["x"]]
        g = (x[:, :-1] - x[:, 1:]) / eta
        rho = np.mean(g[:, :-1] * g[:, 1:]) / np.mean(g * g)
        assert rho == pytest.approx(-eta / 2, abs=0.03)


def test_walk_tables_on_a_dask_cluster_equal_in_process(figure):
    """The T1-T3 runs as tasks on a 2-process dask LocalCluster: the same tables as in this process."""
    pytest.importorskip("distributed", reason="the cluster extra is not installed")
    here = figure("walk_tables")
    there = figure("walk_tables", "--executor", "dask", "--workers", "2")
    assert all(there[k] == here[k] for k in ("table1_barriers", "table2_height", "table3_grid"))
