"""dnn.predictions: toy-theory predictions from measured probe rows, on synthetic rows with known answers."""

import itertools
import math

import numpy as np
import pytest

from dnn import predictions as P
from valleysim import break_even as bes
from valleysim.errors import UserInputError


def _rows(steps, **cols):
    return [dict(step=int(s), **{k: (v[i] if np.ndim(v) else v) for k, v in cols.items()}) for i, s in enumerate(steps)]


# --------------------------------------------------------------------------------------------- R1 factor


def test_stability_factors_hand_computed():
    # eta = 0.1, S = 10, N = 100: c = (100 - 10) / (10 * 99) = 1/11
    rows = _rows([0, 10, 20], curvature_mean=[2.0, 10.0, 19.0], curvature_var=[4.0, 110.0, 0.0])
    q = P.stability_factors(rows, 0.1, 10, 100)
    expected = [
        (1 - 0.2) ** 2 + 0.01 * 4.0 / 11,  # 0.64 + 0.00363636...
        (1 - 1.0) ** 2 + 0.01 * 110.0 / 11,  # 0 + 0.1
        (1 - 1.9) ** 2 + 0.0,
    ]  # 0.81
    assert q == pytest.approx([0.64 + 0.04 / 11, 0.1, 0.81], rel=1e-12)
    assert q == pytest.approx(expected, rel=1e-12)


def test_stability_factor_full_batch_has_no_noise_term():
    rows = _rows([0], curvature_mean=[3.0], curvature_var=[1e6])
    assert P.stability_factors(rows, 0.5, 50, 50)[0] == pytest.approx((1 - 1.5) ** 2)


# --------------------------------------------------------------------------------------------- break-even point


def _series():
    # lambda grows; s^2 = 0 and GD-like c irrelevant: q = (1 - eta lam)^2 with eta = 0.1
    lam = np.array([1.0, 3.0, 5.0, 8.0, 10.0, 19.9, 20.5, 19.0, 20.1])
    steps = np.arange(lam.size) * 100
    acc = np.linspace(0.1, 0.9, lam.size)
    return _rows(
        steps,
        curvature_mean=lam,
        curvature_var=0.0,
        lambda_max=lam,
        epoch=steps / 50.0,
        train_acc_running=acc,
        measure_acc=acc - 0.05,
    )


def test_break_even_point_first_probe_over_threshold():
    rows = _series()
    # q at lam = 19.9: (1 - 1.99)^2 = 0.9801 >= 0.95; at 10: 0 ; at 8: 0.04
    be = P.break_even_point(rows, 0.1, 64, 64)
    assert be["reached"] and be["index"] == 5 and be["step"] == 500
    assert be["epoch"] == pytest.approx(10.0)
    assert be["train_acc_running"] == pytest.approx(0.1 + 5 * 0.1)
    assert be["measure_acc"] == pytest.approx(0.55)
    assert be["stability_factor"] == pytest.approx(0.99**2)
    # a stricter threshold moves it to lam = 20.5 ((1 - 2.05)^2 = 1.1025)
    assert P.break_even_point(rows, 0.1, 64, 64, q_threshold=1.0)["index"] == 6
    # curvature criterion against lambda* = 2/eta = 20
    be_c = P.break_even_point(rows, 0.1, 64, 64, criterion="curvature", lambda_star=20.0)
    assert be_c["index"] == 6 and be_c["lambda_max"] == 20.5


def test_break_even_point_never_reached():
    rows = _series()[:5]
    be = P.break_even_point(rows, 0.1, 64, 64)
    assert be["reached"] is False and be["step"] is None and be["index"] is None and be["epoch"] is None


def test_break_even_point_ignores_flat_side():
    # q -> 1 also as lambda -> 0 (eta lambda << 1: the step barely moves); that side is not break-even.
    # eta = 0.1, s^2 = 0: q(0.2) = 0.98^2 = 0.9604 >= 0.95 but eta < eta*/2 = 1/lambda = 5
    rows = _rows([0, 1, 2], curvature_mean=[0.2, 5.0, 19.9], curvature_var=0.0, lambda_max=[0.2, 5.0, 19.9])
    assert P.stability_factors(rows, 0.1, 8, 8)[0] == pytest.approx(0.98**2)
    assert P.break_even_point(rows, 0.1, 8, 8)["index"] == 2
    # with noise (sigma^2 = 1, c = 1/11): q(0.05) = 0.995^2 + 0.01 * 0.0025 / 11 > 0.95, but 0.05 is far below
    # lambda*/2 = 1 / (eta (1 + c sigma^2)) = 9.17, so the flat side again
    rows = _rows([0, 1], curvature_mean=[0.05, 19.0], curvature_var=[0.05**2, 19.0**2], lambda_max=[0.05, 19.0])
    be = P.break_even_point(rows, 0.1, 10, 100)
    assert be["index"] == 1 and be["stability_factor"] == pytest.approx(0.81 + 0.01 * 361 / 11)


def test_early_phase_end_break_even_or_accuracy():
    rows = _series()
    assert P.early_phase_end(rows, 0.1, 64, 64)["end"] == 5
    ph = P.early_phase_end(rows, 0.1, 64, 64, max_acc=0.35)  # acc 0.1, 0.2, 0.3, 0.4: index 3
    assert ph["end"] == 3 and ph["reason"] == "accuracy"
    assert P.early_phase_end(rows[:4], 0.1, 64, 64)["reason"] == "all"


# --------------------------------------------------------------------------------------------- alpha


def test_alpha_constant_ratio_and_lambda_star():
    rows = _series()
    for r in rows:
        r["lambda_K"] = 0.3 * r["lambda_max"]
    rows[7]["lambda_K"] = 100.0  # after the break-even probe: ignored
    al = P.alpha_ratio(rows, 0.1, 64, 64)
    assert al["alpha"] == pytest.approx(0.3) and al["alpha_iqr"] == pytest.approx(0.0, abs=1e-12)
    assert al["n"] == 6 and al["phase_reason"] == "break_even"
    # lambda* = 2/eta - alpha c; eta = 0.1, S = 10, N = 100: c = 1/11
    assert P.predicted_break_even_curvature(0.1, 10, 100, 0.3) == pytest.approx(20.0 - 0.3 / 11)
    assert P.predicted_break_even_curvature(0.1, 100, 100, 0.3) == pytest.approx(20.0)


def test_alpha_spread_is_median_and_iqr():
    lam = np.ones(5)
    rows = _rows(
        range(5), lambda_max=lam, lambda_K=[1.0, 2.0, 3.0, 4.0, 100.0], curvature_mean=1.0, curvature_var=0.0
    )  # q = 0.81 < 0.95: every probe is early
    al = P.alpha_ratio(rows, 0.1, 4, 8)
    assert al["alpha"] == 3.0 and al["alpha_q25"] == 2.0 and al["alpha_q75"] == 4.0 and al["alpha_max"] == 100.0


# --------------------------------------------------------------------------------------------- orderings


def _tau_b_brute(x, y):
    conc = disc = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        s = np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
        conc += s > 0
        disc += s < 0
    n0 = len(x) * (len(x) - 1) / 2
    return (conc - disc) / math.sqrt(n0 * n0)  # no ties: tau-b = (C - D) / n0


def _grid(reverse=False):
    # maxima generated from a law that obeys the conjectures: lambda's fall with eta and 1/S, the ratio rises
    def law(e, S):
        return dict(
            max_lambda_max=2.0 / e * S / (S + 64), max_lambda_K=S / (100.0 * e), max_trace_ratio=5 + 10 * e + 100.0 / S
        )

    runs = [dict(eta=e, S=128, **law(e, 128)) for e in (0.01, 0.03, 0.1, 0.3)]  # lr grid at S = 128
    runs += [dict(eta=0.1, S=S, **law(0.1, S)) for S in (16, 32, 512)]  # batch grid at eta = 0.1
    if reverse:
        for r in runs:
            for q in P.CONJECTURE_SIGNS:
                r[q] = 1.0 / r[q]
    return runs


def test_kendall_tau_matches_brute_force():
    rng = np.random.default_rng(1)
    x, y = rng.permutation(7).astype(float), rng.standard_normal(7)
    runs = [dict(eta=0.01 * (1 + xi), S=32, max_lambda_max=yi) for xi, yi in zip(x, y)]
    (row,) = P.conjecture_orderings(runs, quantities=["max_lambda_max"])
    assert row["tau"] == pytest.approx(_tau_b_brute(x, y), abs=1e-12)
    assert row["n"] == 7 and row["grid"] == "learning_rate" and 0 <= row["p_value"] <= 1


def test_conjecture_signs_agree_and_reverse():
    out = P.conjecture_orderings(_grid())
    assert {(r["grid"], r["quantity"]) for r in out} == {
        (g, q) for g in ("learning_rate", "batch_size") for q in P.CONJECTURE_SIGNS
    }
    assert all(r["agrees"] for r in out)
    assert all(abs(r["tau"]) == pytest.approx(1.0) for r in out)
    lr = {r["quantity"]: r for r in out if r["grid"] == "learning_rate"}
    assert lr["max_lambda_K"]["tau"] == pytest.approx(-1.0) and lr["max_trace_ratio"]["tau"] == pytest.approx(1.0)
    bs = {r["quantity"]: r for r in out if r["grid"] == "batch_size"}
    assert bs["max_lambda_K"]["knob"] == "1/S" and bs["max_lambda_K"]["tau"] == pytest.approx(-1.0)
    assert bs["max_lambda_K"]["n"] == 4  # the S = 128 run of the lr grid joins
    assert not any(r["agrees"] for r in P.conjecture_orderings(_grid(reverse=True)))


def test_orderings_two_points_and_constant_quantity():
    runs = [
        dict(eta=0.1, S=32, max_lambda_max=5.0, max_trace_ratio=3.0),
        dict(eta=0.2, S=32, max_lambda_max=4.0, max_trace_ratio=3.0),
    ]
    out = {r["quantity"]: r for r in P.conjecture_orderings(runs, quantities=["max_lambda_max", "max_trace_ratio"])}
    assert out["max_lambda_max"]["tau"] == pytest.approx(-1.0) and out["max_lambda_max"]["agrees"]
    assert math.isnan(out["max_trace_ratio"]["tau"]) and not out["max_trace_ratio"]["agrees"]


def test_run_maxima_up_to_accuracy():
    rows = _rows(
        range(4),
        lambda_max=[1.0, 5.0, 3.0, 9.0],
        lambda_K=[0.5, 0.1, 2.0, 0.0],
        trace_ratio=[3.0, 4.0, 2.0, 8.0],
        lambda_K_gram=[0.05, 0.01, 0.2, 0.9],
        train_acc_running=[0.2, 0.5, 0.61, 0.8],
    )
    m = P.run_maxima(rows, max_acc=0.6)
    assert (m["max_lambda_max"], m["max_lambda_K"], m["max_trace_ratio"], m["n"]) == (5.0, 2.0, 4.0, 3)
    assert m["max_lambda_K_gram"] == 0.2 and m["reached_max_acc"] is True
    assert math.isnan(m["max_trace_K"]) and math.isnan(m["max_trace_K_gram"])
    whole = P.run_maxima(rows)
    assert whole["max_lambda_max"] == 9.0 and whole["reached_max_acc"] is None
    assert P.run_maxima(rows, max_acc=0.9)["reached_max_acc"] is False


# --------------------------------------------------------------------------------------------- calibrated toy


@pytest.fixture(scope="module")
def toy_run():
    sigma, eta, S, N, beta = 0.8, 0.1, 8, 64, 1e-3
    land = bes.SharpeningLandscape.make(n_examples=N, sigma=sigma, beta=beta, a0=(2.0,), rates=(1.0,), landscape_seed=3)
    run = bes.simulate(land, eta, S, trajectories=16, seed=5)
    curv = run.curvature()[0]
    # per-example curvatures along the sharp direction: h_i = a f_i, population variance sigma^2 a^2
    fvar = float(np.var(land.f[:, 0]))
    rows = _rows(run.steps, lambda_max=curv, curvature_mean=curv, curvature_var=fvar * curv**2)
    return dict(land=land, run=run, rows=rows, sigma=sigma, eta=eta, S=S, N=N, beta=beta)


def test_calibrate_toy_recovers_own_parameters(toy_run):
    t = toy_run
    cal = P.calibrate_toy(t["rows"], t["eta"], t["S"], t["N"], landscape_seed=3)
    assert cal["sigma2"] == pytest.approx(t["sigma"] ** 2, rel=1e-9)
    assert cal["rate"] == pytest.approx(t["eta"] * t["beta"], rel=0.02)  # d log a / dt = r eta beta
    assert cal["beta"] == pytest.approx(t["beta"], rel=0.02)
    assert cal["a0"] == pytest.approx(2.0, rel=0.02)
    lam_star = 2.0 / (t["eta"] * (1 + (t["N"] - t["S"]) / (t["S"] * (t["N"] - 1)) * t["sigma"] ** 2))
    assert cal["toy_lambda_star"] == pytest.approx(lam_star)
    own_max = float(np.mean(t["run"].max_curvature))
    assert cal["toy_max_curvature"] == pytest.approx(own_max, rel=0.05)
    own_settled = float(np.median(t["run"].curvature()[:, t["run"].Z.shape[1] // 2 :]))
    assert cal["toy_settled_curvature"] == pytest.approx(own_settled, rel=0.05)
    assert cal["toy_settled_curvature"] == pytest.approx(lam_star, rel=0.1)


def test_comparison_table_and_markdown(toy_run):
    t = toy_run
    rows = [
        dict(
            r,
            lambda_K=0.5 * r["lambda_max"],
            trace_ratio=3.0,
            epoch=r["step"] / 8.0,
            train_acc_running=min(1.0, r["step"] / 60000),
            measure_acc=0.5,
        )
        for r in t["rows"]
    ]
    table = P.comparison_table(
        [dict(rows=rows, eta=t["eta"], S=t["S"], N=t["N"], label="toy")],
        toy_kwargs=dict(landscape_seed=3, trajectories=4),
    )
    (row,) = table
    c = (t["N"] - t["S"]) / (t["S"] * (t["N"] - 1))
    assert row["alpha"] == pytest.approx(0.5)
    assert row["lambda_star"] == pytest.approx(20.0 - 0.5 * c)
    assert row["two_over_eta"] == pytest.approx(20.0)
    assert row["max_lambda_max"] == pytest.approx(float(np.max(t["run"].curvature()[0])))
    assert row["break_even_step"] is not None and row["q_median_after"] == pytest.approx(1.0, abs=0.15)
    assert row["toy_error"] is None and row["toy_max"] > row["toy_lambda_star"] * 0.95
    md = P.to_markdown(table, columns=["label", "eta", "S", "lambda_star", "break_even_step", "toy_error"])
    lines = md.strip().splitlines()
    assert lines[0] == "| label | eta | S | lambda_star | break_even_step | toy_error |"
    assert lines[2].startswith("| toy | 0.1 | 8 | 19.9") and lines[2].endswith("| - |")


# --------------------------------------------------------------------------------------------- errors


def test_errors_name_the_parameter():
    rows = _series()
    with pytest.raises(UserInputError, match="rows"):
        P.stability_factors([], 0.1, 8, 64)
    with pytest.raises(UserInputError, match="curvature_var"):
        P.stability_factors([dict(step=0, curvature_mean=1.0)], 0.1, 8, 64)
    with pytest.raises(UserInputError, match="lambda_K"):
        P.alpha_ratio(rows, 0.1, 8, 64)
    for bad in (0.0, -0.1, float("nan")):
        with pytest.raises(UserInputError, match="eta"):
            P.stability_factors(rows, bad, 8, 64)
        with pytest.raises(UserInputError, match="eta"):
            P.predicted_break_even_curvature(bad, 8, 64, 0.1)
    for S in (0, 65):
        with pytest.raises(UserInputError, match="batch size S"):
            P.break_even_point(rows, 0.1, S, 64)
        with pytest.raises(UserInputError, match="batch size S"):
            P.predicted_break_even_curvature(0.1, S, 64, 0.1)
    with pytest.raises(UserInputError, match="alpha"):
        P.predicted_break_even_curvature(0.1, 8, 64, -1.0)
    with pytest.raises(UserInputError, match="step order"):
        P.stability_factors(rows[::-1], 0.1, 8, 64)
    with pytest.raises(UserInputError, match="runs"):
        P.conjecture_orderings([])
    with pytest.raises(UserInputError, match="does not grow"):
        P.calibrate_toy(
            _rows(range(4), lambda_max=[4.0, 3.0, 2.0, 1.0], curvature_mean=1.0, curvature_var=0.1), 0.1, 8, 64
        )
