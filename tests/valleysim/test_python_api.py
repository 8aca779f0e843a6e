"""The Python API as a new user meets it: defaults that give the command line's answer, misuse refused.

- Item 1 of issue 27: ``valley.simulate`` with its defaults predicts the trace drift the command predicts
  (and the simulation measures); a prediction from too coarse a recording schedule is withheld.
- The defaults of every toy's Python signatures against the real parser's (``valleysim.cli.build_parser``).
- ``MISUSE``: every toy's public functions called with NaN, inf, wrong shapes, wrong types, None, short or
  long init, empty arrays: each is a ``UserInputError`` (a ``ValueError``) naming the parameter, never a
  foreign exception, a silent NaN or a read past an array.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import sympy as sp

from valleysim import break_even as be
from valleysim import nsgd as ns
from valleysim import quadratic as qd
from valleysim import theory, valley, walk
from valleysim.cli import build_parser
from valleysim.cli.quadratic import GENERATED
from valleysim.errors import UserInputError
from valleysim.executors import add_executor_options
from valleysim.quadratic.phase_diagram import phase_diagram
from valleysim.valley import sim as vsim
from valleysim.valley.landscape import ValleyLandscape

nan = math.nan
NOWHERE = "/dev/null/phase_diagram"  # a directory no sweep can create: the checks must refuse before any write
K_SE = 4  # |predicted - measured| <= K_SE standard errors

# --- item 1: the trace drift of a valley from Python, with the defaults ------------------------------------

LOSS = "(1 + a**2 + b**2/2)*x**2/2 + (2 + exp(a - b))*y**2/2"
ITEM1 = ["--loss", LOSS, "--nondegenerate", "x,y", "--degenerate", "a,b", "--init", "a=1,b=0.5"]
ITEM1 += ["--noise", "sgd", "--batch", "4", "--n-examples", "32", "--eta", "0.05", "--steps", "4000"]


@functools.cache
def _item1():
    land = ValleyLandscape.from_strings(LOSS, "x,y", "a,b", "a=1,b=0.5")
    return land, valley.make_noise(land, "sgd", S=4, M=32)


def test_python_defaults_predict_what_the_command_predicts_and_what_is_measured(installed):
    """4,000 steps after the default burn-in: Python once predicted -3.68e-4 from two records (start and
    end of the window); the command, recording every steps/50, -1.97e-4, and the run measures -1.96e-4."""
    land, noise = _item1()
    py = valley.summarise(valley.simulate(land, noise, 0.05, steps=4000))
    res = installed("valley", *ITEM1, "--json")
    assert res.returncode == 0, res.stderr
    cli = json.loads(res.stdout)
    for key in ("burn_in", "trajectories", "record_every", "trace_drift_per_step", "trace_drift_predicted"):
        assert py[key] == cli[key], key  # the same run, bit for bit
    assert py["burn_in"] == 1000 and py["prediction_records"] == 51
    measured, se, predicted = py["trace_drift_per_step"], py["trace_drift_stderr"], py["trace_drift_predicted"]
    assert measured == pytest.approx(-1.96e-4, rel=0.02)
    assert abs(predicted - measured) <= K_SE * se
    assert py["prediction_schedule_error"] < vsim.SCHEDULE_RTOL and "schedule_note" not in py


@pytest.mark.parametrize("record_every", [4000, 2000, 400])
def test_a_prediction_from_too_coarse_a_schedule_is_withheld(record_every):
    """Two records (the old default) put the drift at 1.9x the truth, three at 1.26x, eleven at 1.011x:
    each is withheld, with the reason and the default schedule, instead of reported as the answer."""
    land, noise = _item1()
    run = valley.simulate(land, noise, 0.05, steps=4000, trajectories=64, record_every=record_every)
    out = valley.summarise(run)
    assert out["trace_drift_predicted"] is None and out["second_moments_predicted"] is None
    assert out["prediction_schedule_error"] > vsim.SCHEDULE_RTOL
    assert f"recorded every {record_every} steps" in out["schedule_note"] and "default is 80" in out["schedule_note"]
    assert out["trace_drift_per_step"] < 0 and math.isfinite(out["neg_eig_slope_predicted"])


def test_the_command_says_why_a_prediction_is_withheld(installed):
    res = installed("valley", *ITEM1, "--trajectories", "64", "--record-every", "2000")
    assert res.returncode == 0, res.stderr
    assert "note: predictions withheld" in res.stdout and "recorded every 2000 steps (3 records)" in res.stdout


def test_the_measured_drift_is_over_the_recorded_steps():
    """steps not a multiple of record_every: the last record is before the window's end, and the drift
    divides by the steps between the first and last records (not by all the steps)."""
    land, noise = _item1()
    whole = valley.summarise(valley.simulate(land, noise, 0.05, steps=1040, trajectories=64, record_every=20))
    cut = valley.summarise(valley.simulate(land, noise, 0.05, steps=1059, trajectories=64, record_every=20))
    assert cut["trace_drift_per_step"] == pytest.approx(whole["trace_drift_per_step"], rel=1e-12)


def test_no_prediction_where_the_records_project_onto_no_minimum():
    """A one-example least-squares valley has no minimum manifold near the path: no prediction and a
    note (it was a LinAlgError)."""
    import dataclasses

    reg = valley.catalogue("regression-valley")
    land = dataclasses.replace(reg, data=reg.data[:1])
    out = valley.summarise(valley.simulate(land, valley.make_noise(land, "minibatch", S=1), 0.05, steps=20))
    assert out["trace_drift_predicted"] is None and "project onto no minimum" in out["prediction_note"]


# --- the Python defaults are the command line's -------------------------------------------------------------

# command: (argv that parses, {function: {parser dest: parameter}}, parser dests with no Python default
# (required in Python, or a command-line matter)); the mapped defaults must agree, and every dest is named.
# valley.simulate's record_every (None) and nsgd.simulate's record_every / recompute (None) mean the same
# defaults as the command's None and 0: default_record_every(steps), epoch_steps(N, S).
DEFAULTS = {
    "valley": (
        ["--loss", "abs-toy", "--eta", "0.1"],
        {valley.simulate: {"burn_in": "burn_in", "trajectories": "trajectories", "seed": "seed"}},
        {"loss", "nondegenerate", "degenerate", "init", "noise", "noise_scale", "eta", "batch", "dataset_size"}
        | {"steps", "record_every", "json", "out"},
    ),
    "break-even": (
        ["--eta", "0.1", "--batch", "4"],
        {
            be.simulate: {"steps": "steps", "trajectories": "trajectories", "seed": "seed"},
            be.sweep: {"steps": "steps", "trajectories": "trajectories", "seed": "seed"},
            be.SharpeningLandscape.make: {
                "n_examples": "n_examples",
                "sigma": "sigma",
                "offset": "offset",
                "beta": "beta",
                "a0": "a0",
                "rates": "rates",
                "landscape_seed": "landscape_seed",
            },
        },
        {"eta", "batch", "json"},
    ),
    "walk": (
        [],
        {
            walk.simulate: {
                "optimizer": "optimizer",
                "trajectories": "trajectories",
                "seed": "seed",
                "bins": "n_bins",
                "noise_factor": "noise_factor",
            },
            walk.WalkLandscape.make: {
                "n_examples": "n_examples",
                "wall_width": "width",
                "barrier": "barrier",
                "slope": "slope",
                "landscape_seed": "seed",
            },
        },
        {"eta", "batch", "steps", "json"},
    ),
    "nsgd": (
        [],
        {
            ns.simulate: {"method": "method", "K": "K", "trajectories": "trajectories", "seed": "seed"},
            ns.gamma_sweep: {"gamma": "gammas", "K": "K", "trajectories": "trajectories", "seed": "seed"},
            ns.make_valley: {"dim": "D", "sharp": "Ks", "examples": "N", "a_hi": "a_hi", "seed": "seed"},
        },
        {"eta", "batch", "steps", "recompute", "json"},
    ),
    "stability": (
        ["--eta", "0.1", "--batch", "2"],
        {
            qd.stability_report: {"scheme": "scheme", "trajectories": "n_traj", "steps": "n_steps", "seed": "seed"},
            qd.mean_square_growth_mc: {
                "scheme": "scheme",
                "trajectories": "n_traj",
                "steps": "n_steps",
                "seed": "seed",
            },
        },
        {"eta", "batch", "simulate", "json", *GENERATED, "hessians"},
    ),
    "phase-diagram": (
        [],
        {phase_diagram: {"scheme": "scheme", "trajectories": "n_traj", "steps": "n_steps", "seed": "seed"}},
        {"etas", "batch_sizes", "out", "quiet", *GENERATED, "hessians"},  # and the executor options
    ),
}
SAME_DEFAULT = {(ns.simulate, "recompute"): (0, None), (valley.simulate, "record_every"): (None, None)}


def _parser_defaults(command: str, argv: list) -> dict:
    """The parsed defaults of ``command``'s options (without the executor options, a command-line matter)."""
    args = vars(build_parser().parse_args([command, *argv]))
    executor = argparse.ArgumentParser()
    add_executor_options(executor)
    skip = {"command", "func"} | {a.dest for a in executor._actions}
    return {k: v for k, v in args.items() if k not in skip}


def _python_default(fn, name: str):
    default = inspect.signature(fn).parameters[name].default
    assert default is not inspect.Parameter.empty, f"{fn.__qualname__}({name}) has no default"
    return default


@pytest.mark.parametrize("command", list(DEFAULTS))
def test_python_signatures_default_to_the_command_line(command):
    argv, functions, no_default = DEFAULTS[command]
    cli = _parser_defaults(command, argv)
    mapped = set()
    for fn, names in functions.items():
        for dest, name in names.items():
            want, got = cli[dest], _python_default(fn, name)
            if isinstance(want, (list, tuple)):
                want, got = tuple(want), tuple(got)
            assert want == got, f"{command} --{dest} defaults to {want!r}, {fn.__qualname__}({name}=) to {got!r}"
            mapped.add(dest)
    unnamed = set(cli) - mapped - no_default
    assert not unnamed, f"{command}: decide where {sorted(unnamed)} belong in DEFAULTS"


def test_defaults_that_the_command_spells_differently():
    cli = _parser_defaults("nsgd", [])
    assert (cli["recompute"], _python_default(ns.simulate, "recompute")) == SAME_DEFAULT[(ns.simulate, "recompute")]
    land = ns.make_valley()
    assert ns.epoch_steps(land.N, cli["batch"]) == 13  # the command's 0: once per epoch, ceil(100 / 8)
    cli = _parser_defaults("valley", ["--loss", "abs-toy", "--eta", "0.1"])
    assert (cli["record_every"], _python_default(valley.simulate, "record_every")) == (None, None)
    assert vsim.default_record_every(cli["steps"]) == 20  # the command's help: steps/50
    generated = _parser_defaults("stability", ["--eta", "0.1", "--batch", "2"])
    assert all(generated[k] is None for k in GENERATED)  # not given: GENERATED holds them
    for key, name in (("lambda_max", "lambda_max"), ("nonuniformity", "nonuniformity"), ("condition", "condition")):
        assert GENERATED[key] == _python_default(qd.generate, name)
    assert GENERATED["landscape_seed"] == _python_default(qd.generate, "seed")


# --- misuse: each a UserInputError naming the parameter -----------------------------------------------------


@functools.cache
def _sharp(k: int = 1) -> be.SharpeningLandscape:
    return be.SharpeningLandscape.make(n_examples=8, a0=(1.0,) * k, rates=(1.0,) * k)


def _sharp_with(**fields) -> be.SharpeningLandscape:
    g = _sharp()
    kw = dict(a0=g.a0, rates=g.rates, sigma=g.sigma, offset=g.offset, beta=g.beta, f=g.f, b=g.b)
    return be.SharpeningLandscape(**{**kw, **fields})


@functools.cache
def _valley() -> ValleyLandscape:
    return _item1()[0]


def _valley_with(**fields) -> ValleyLandscape:
    land = _valley()
    kw = dict(name="v", theta=land.theta, theta_hat=land.theta_hat, loss=land.loss, init=land.init)
    return ValleyLandscape(**{**kw, **fields})


def _valley_run(R: int = 2, n_rec: int = 3) -> valley.ValleyRun:
    """A ValleyRun of the right types (its numbers do not matter to the checks)."""
    land, noise = _item1()
    rec = np.zeros((R, n_rec, len(vsim.OBSERVABLES) + 4))
    return valley.ValleyRun(land, noise, 0.05, 0, n_rec - 1, 1, rec, np.zeros((R, 4)), np.full(R, -1), np.zeros(R))


def _regression_with(data) -> ValleyLandscape:
    import dataclasses

    return dataclasses.replace(valley.catalogue("regression-valley"), data=data)


@functools.cache
def _quad() -> qd.PerExampleQuadratic:
    return qd.generate("diagonal", 8, 2)


@functools.cache
def _walk_land() -> walk.WalkLandscape:
    return walk.WalkLandscape.make(n_examples=8, n_flat=2)


def _walk_with(**fields) -> walk.WalkLandscape:
    kw = dict(k=np.ones(8), a=np.zeros(8), e=np.zeros(8))
    return walk.WalkLandscape(**{**kw, **fields})


def _walk_run() -> walk.WalkRun:
    land, R, T, nb = _walk_land(), 2, 4, 2
    zeros = np.zeros
    return walk.WalkRun(
        land, "sgd", 0.1, 2, 0.0, T, R, 0, zeros((R, nb, 6)), zeros((R, nb), int), zeros((R, land.D)), zeros(R),
        np.full(R, -1), zeros((0, T, 8)), zeros((0, T, 12)),
    )  # fmt: skip


@functools.cache
def _nsgd() -> ns.SharpValley:
    return ns.make_valley(D=6, Ks=2, N=10)


MISUSE = [
    # break_even: the landscape's shapes are what its kernel indexes (a0 longer than f: a read past f)
    (lambda: _sharp_with(a0=np.ones(3), rates=np.ones(3)), "f must have shape (N, 3)"),
    (lambda: _sharp_with(a0=[nan]), "a0 must be finite"),
    (lambda: _sharp_with(a0=np.ones(3)), "a0 and rates"),
    (lambda: _sharp_with(f=np.ones((5, 1))), "b must have shape (5, 1)"),
    (lambda: _sharp_with(f=np.full((8, 1), nan)), "f must be finite"),
    (lambda: _sharp_with(f=np.ones(8)), "f must have shape"),
    (lambda: _sharp_with(sigma=nan), "sigma"),
    (lambda: _sharp_with(f=np.ones((1, 1)), b=np.zeros((1, 1))), "number of examples N"),
    (lambda: be.SharpeningLandscape.make(a0="abc"), "a0"),
    (lambda: be.SharpeningLandscape.make(a0=None), "a0"),
    (lambda: be.SharpeningLandscape.make(n_examples=nan), "n_examples"),
    (lambda: be.SharpeningLandscape.make(n_examples=None), "n_examples"),
    (lambda: be.SharpeningLandscape.make(landscape_seed=nan), "landscape_seed"),
    (lambda: be.simulate(_sharp(2), 0.1, 4, steps=10, x0=[0.0]), "x0 must have shape (2,)"),
    (lambda: be.simulate(_sharp(), 0.1, 4, steps=10, x0="a"), "x0"),
    (lambda: be.simulate(_sharp(), 0.1, 4, steps=10, z0=None), "z0"),
    (lambda: be.simulate(None, 0.1, 4, steps=10), "land must be a SharpeningLandscape"),
    (lambda: be.simulate(_sharp(), 0.1, nan, steps=10), "batch size S"),
    (lambda: be.simulate(_sharp(), 0.1, 4, steps=nan), "steps"),
    (lambda: be.predicted_break_even(0.1, 4, 8, nan), "sigma"),
    (lambda: be.predicted_break_even(0.1, 4, 8, -1.0), "sigma"),
    (lambda: be.predicted_break_even(0.1, 4, nan, 1.0), "N (training-set size)"),
    (lambda: be.almost_sure_break_even(_sharp(), 0.1, 4, j=5), "direction j"),
    (lambda: be.almost_sure_break_even(_sharp(), 0.1, 4, samples=0), "samples"),
    (lambda: be.frozen_q(_sharp(), 0.1, 4, nan), "z"),
    (lambda: be.frozen_q(_sharp(), nan, 4, 0.0), "eta"),
    (lambda: be.frozen_q(_sharp(), 0.1, 4, 0.0, j=3), "direction j"),
    (lambda: be.frozen_second_moment(_sharp(), 0.1, 4, 0.0, nan), "t must be steps >= 0"),
    (lambda: be.frozen_second_moment(_sharp(), 0.1, 4, 0.0, -1.0), "t must be steps >= 0"),
    (lambda: be.growth_stops(np.ones(5)), "curv must have shape (R, n_rec)"),
    (lambda: be.break_even_per_trajectory(np.ones((2, 5)), nan), "record_every"),
    (lambda: be.sweep([], [4], _sharp(), steps=10), "etas"),
    (lambda: be.sweep(None, [4], _sharp(), steps=10), "eta"),
    (lambda: be.summarise(None), "run must be a BreakEvenRun"),
    (lambda: be.spectra("run"), "run must be a BreakEvenRun"),
    (lambda: _sharp().z_of_curvature(-1.0), "curvature lam"),
    (lambda: be.SharpeningLandscape.make(rates=(0.0,)).z_of_curvature(2.0), "rates[0] is 0"),
    (lambda: _sharp(2).hessian([0.0], 0.0), "x must have shape (..., 2)"),
    (lambda: _sharp().noise_source(0.0, 4), "direction j"),
    # the closed forms
    (lambda: theory.variance_factor(nan, 8), "batch size S"),
    (lambda: theory.variance_factor(2, nan), "N (training-set size)"),
    (lambda: theory.variance_factor(2, None), "N (training-set size)"),
    (lambda: theory.eta_star_1d("a", 1.0, 1.0), "lam"),
    (lambda: theory.stability_factor(None, 1.0, 1.0, 1.0), "eta"),
    (lambda: theory.necessary_eta_bounds(nan, 0.5, 0.1), "lambda_max"),
    # valley: the landscape, the noise model and their fit
    (lambda: valley.simulate(_valley(), None, 0.05, steps=20), "noise must be a NoiseModel"),
    (lambda: valley.simulate(_valley(), "sgd", 0.05, steps=20), "noise must be a NoiseModel"),
    (lambda: valley.simulate(None, _item1()[1], 0.05, steps=20), "land must be a ValleyLandscape"),
    (lambda: valley.simulate(valley.catalogue("abs-toy"), _item1()[1], 0.05, steps=20), "make_noise(land"),
    (lambda: valley.simulate(_valley(), valley.NoiseModel("x", 1.0, (sp.S.One,)), 0.05, steps=20), "1 variances"),
    (
        lambda: valley.simulate(_valley(), valley.NoiseModel("minibatch", 0.1, None, None, 4, 32), 0.05, steps=2),
        "S = 4",
    ),
    (lambda: valley.NoiseModel("x", 1.0, ("1", "1", "0", "0")), "noise variances"),
    (lambda: valley.NoiseModel("x", nan, (sp.S.One,)), "noise scale"),
    (lambda: valley.NoiseModel("minibatch", 0.1, None), "needs S and M"),
    (lambda: valley.simulate(*_item1(), 0.05, steps=nan), "--steps"),
    (lambda: valley.simulate(*_item1(), 0.05, steps=None), "--steps"),
    (lambda: valley.simulate(*_item1(), 0.05, steps=20, seed=nan), "--seed"),
    (lambda: _valley_with(init=(0.0, 1.0)), "init must have shape (4,)"),
    (lambda: _valley_with(init=(0.0, 0.0, 1.0, 0.5, 7.0)), "init must have shape (4,)"),
    (lambda: _valley_with(init=(0.0, 0.0, nan, 0.5)), "init must be finite"),
    (lambda: _valley_with(init=None), "init"),
    (lambda: _valley_with(loss="x**2"), "loss must be a sympy expression"),
    (lambda: _valley_with(theta=("x", "y")), "theta must be a tuple of sympy Symbols"),
    (lambda: _valley_with(theta=()), "theta"),
    (lambda: _valley_with(theta_hat=_valley().theta), "must not share a name"),
    (lambda: _regression_with(valley.catalogue("regression-valley").data[:, :2]), "data must have shape (M, 3)"),
    (lambda: _regression_with(np.full((4, 3), nan)), "data must be finite"),
    (lambda: _regression_with(np.zeros((0, 3))), "data must have at least one row"),
    (lambda: ValleyLandscape.from_strings("x**2*(1+a**2)", None, "a"), "--nondegenerate"),
    (lambda: _valley().with_init({"a": None}), "--init value for a"),
    (lambda: _valley().with_init({"a": "x"}), "--init value for a"),
    (lambda: _valley().with_init({"a": nan}), "--init value for a"),
    (lambda: _valley().with_init(None), "--init"),
    (lambda: valley.catalogue([]), "catalogue"),
    (lambda: valley.make_noise(None, "sgd", S=4, M=32), "land must be a ValleyLandscape"),
    (lambda: valley.make_noise(_valley(), None, S=4, M=32), "--noise"),
    (lambda: valley.make_noise(_valley(), 3, scale=1.0), "--noise"),
    (lambda: valley.make_noise(_valley(), "sgd", S=nan, M=32), "--batch S"),
    (lambda: valley.make_noise(_valley(), "sgd", S=4, M=nan), "--dataset-size M"),
    (lambda: valley.summarise(None), "run must be a ValleyRun"),
    (lambda: valley.predictions(_valley_run(), np.zeros(3)), "xhat must have shape"),
    (lambda: valley.predictions(_valley_run(), np.array([nan, 1.0])), "xhat must be finite"),
    # quadratic
    (lambda: qd.PerExampleQuadratic("diagonal", "abc"), "hessians"),
    (lambda: qd.PerExampleQuadratic("diagonal", np.ones((3, 2)) * 1j), "hessians must be an array of real numbers"),
    (lambda: qd.PerExampleQuadratic("diagonal", np.ones((3, 2)), "ab"), "w_star"),
    (lambda: qd.PerExampleQuadratic("diagonal", np.ones((3, 2)), [nan, 0.0]), "w_star must be finite"),
    (lambda: qd.generate("diagonal", nan, 2), "N"),
    (lambda: qd.generate("diagonal", None, 2), "N"),
    (lambda: qd.generate("diagonal", 8, 2, seed=None), "landscape seed"),
    (lambda: qd.least_squares(np.full((2, 3), nan), np.zeros(2)), "X must be finite"),
    (lambda: qd.least_squares(np.zeros((0, 3)), np.zeros(0)), "X must have at least one example"),
    (lambda: qd.least_squares("ab", np.zeros(2)), "X"),
    (lambda: qd.load_hessians(None), "--hessians"),
    (lambda: qd.simulate(_quad(), 0.1, nan, steps=10), "batch size S"),
    (lambda: qd.simulate(_quad(), 0.1, 2, steps=None), "steps"),
    (lambda: qd.simulate(_quad(), 0.1, 2, steps=10, w0="ab"), "w0"),
    (lambda: qd.simulate(_quad(), 0.1, 2, steps=10, record_every=nan), "record_every"),
    (lambda: qd.simulate(None, 0.1, 2, steps=10), "q must be a PerExampleQuadratic"),
    (lambda: qd.MomentMap(None), "q must be a PerExampleQuadratic"),
    (lambda: qd.MomentMap(_quad()).eta_star(nan), "variance factor c"),
    (lambda: qd.MomentMap(_quad()).eta_star(-1.0), "variance factor c"),
    (lambda: qd.MomentMap(_quad()).spectral_radius(nan, 0.1), "eta"),
    (lambda: qd.MomentMap(_quad()).mean_dist2(0.1, 0.1, [nan]), "steps"),
    (lambda: qd.eta_star_dense(_quad(), nan), "variance factor c"),
    (lambda: qd.mean_square(_quad(), 0.1, nan), "batch size S"),
    (lambda: qd.lyapunov_exact(_quad(), 0.1, nan), "batch size S"),
    (lambda: qd.lyapunov_exact(qd.generate("dense", 4, 2), 0.1, 2), "q is dense"),
    (lambda: qd.lyapunov_exponent(qd.generate("dense", 4, 2), 0.1, 2, n_steps=10, burn_in=20), "burn_in"),
    (lambda: qd.mean_square_growth_mc(_quad(), 0.1, 2, n_steps=10, burn_in=20), "burn_in"),
    (lambda: qd.mean_square_growth_mc(_quad(), 0.1, 2, n_traj=1), "n_traj"),
    (lambda: qd.stability_report(_quad(), 0.1, 2, simulate=True, n_steps=1), "n_steps"),
    (lambda: qd.stability_report(_quad(), 0.1, 2, simulate=True, n_traj=1), "n_traj"),
    (lambda: qd.stability_report(None, 0.1, 2), "q must be a PerExampleQuadratic"),
    (lambda: phase_diagram(_quad(), None, [2], NOWHERE), "eta"),
    (lambda: phase_diagram(_quad(), [], [2], NOWHERE), "etas"),
    (lambda: phase_diagram(_quad(), [0.1], [nan], NOWHERE), "batch size S"),
    (lambda: phase_diagram(_quad(), [0.1], [2], None), "out_dir"),
    (lambda: phase_diagram(_quad(), [0.1], [2], NOWHERE, seed=nan), "seed"),
    # walk
    (lambda: walk.WalkLandscape.make(k_spread=None), "k_spread"),
    (lambda: walk.WalkLandscape.make(slope=None), "slope"),
    (lambda: walk.WalkLandscape.make(offset_std=None), "offset_std"),
    (lambda: walk.WalkLandscape.make(kappa=None), "kappa"),
    (lambda: walk.WalkLandscape.make(x0=None), "x0"),
    (lambda: walk.WalkLandscape.make(seed=nan), "seed"),
    (lambda: walk.WalkLandscape.make(seed=-1), "seed"),
    (lambda: walk.WalkLandscape.make(n_examples=nan), "n_examples"),
    (lambda: walk.WalkLandscape.make(n_flat=nan), "n_flat"),
    (lambda: _walk_with(k=np.ones(3)), "a (wall offsets a_i) must have shape (3,)"),
    (lambda: _walk_with(k=np.full(8, nan)), "k (wall curvatures k_i) must be finite"),
    (lambda: _walk_with(k=np.zeros(0), a=np.zeros(0), e=np.zeros(0)), "k (wall curvatures k_i)"),
    (lambda: _walk_with(n_flat=-1), "n_flat"),
    (lambda: _walk_with(width=nan), "wall width"),
    (lambda: _walk_with(period=0.0), "barrier period"),
    (lambda: walk.simulate(None, 0.1, 2, steps=20), "land must be a WalkLandscape"),
    (lambda: walk.simulate(_walk_land(), 0.1, nan, steps=20), "batch size S"),
    (lambda: walk.simulate(_walk_land(), 0.1, 2, steps=None), "steps"),
    (lambda: walk.simulate(_walk_land(), 0.1, 2, steps=20, div_threshold=nan), "div_threshold"),
    (lambda: walk.simulate(_walk_land(), 0.1, 2, steps=20, div_threshold="a"), "div_threshold"),
    (lambda: walk.summarise(_walk_run(), window="bogus"), "window"),
    (lambda: walk.summarise(None), "run must be a WalkRun"),
    (lambda: walk.per_bin(None), "run must be a WalkRun"),
    (lambda: walk.isotropic_sigma(_walk_land(), nan), "batch size S"),
    (lambda: walk.isotropic_sigma(_walk_land(), 2, -1.0), "noise_factor"),
    (lambda: _walk_land().loss([1.0]), "theta must have shape (..., 4)"),
    (lambda: _walk_land().example_grads([1.0]), "theta must have shape (4,)"),
    (lambda: walk.segment_metrics([1.0]), "losses"),
    (lambda: walk.cosine(None, None), "g0"),
    # nsgd
    (lambda: ns.make_valley(D=nan), "D"),
    (lambda: ns.make_valley(a_hi=None), "a_hi"),
    (lambda: ns.make_valley(mid=None), "mid"),
    (lambda: ns.make_valley(seed=nan), "seed"),
    (lambda: ns.make_valley(sharp_noise=None), "sharp_noise"),
    (lambda: ns.SharpValley(np.zeros((2, 3)), np.zeros(3), np.ones(1), np.ones(2), a_hi=None), "a_hi"),
    (lambda: ns.SharpValley("ab", np.zeros(3), np.ones(1), np.ones(2)), "offsets"),
    (lambda: ns.simulate(None, 0.1, 2, steps=3), "land must be a SharpValley"),
    (lambda: ns.simulate(_nsgd(), 0.1, nan, steps=3), "batch size S"),
    (lambda: ns.simulate(_nsgd(), 0.1, 2, steps=None), "steps"),
    (lambda: ns.simulate(_nsgd(), 0.1, 2, steps=3, theta0=np.full(6, nan)), "theta0 must be finite"),
    (lambda: ns.simulate(_nsgd(), 0.1, 2, steps=3, theta0="abc"), "theta0"),
    (lambda: ns.simulate(_nsgd(), 0.1, 2, steps=3, theta0=[0.0]), "theta0 must have shape"),
    (lambda: ns.simulate(_nsgd(), 0.1, 2, steps=3, K=nan, gamma=0.1), "K (top directions)"),
    (lambda: ns.simulate(_nsgd(), 0.1, 2, steps=3, first=-1), "first"),
    (lambda: ns.simulate(_nsgd(), 0.1, 2, steps=3, seed=nan), "seed"),
    (lambda: ns.simulate(_nsgd(), 0.1, 2, steps=3, blowup=nan), "blowup"),
    (lambda: ns.gamma_sweep(_nsgd(), 0.1, 2, steps=3, gammas=None), "gamma"),
    (lambda: ns.gamma_sweep(_nsgd(), 0.1, 2, steps=3, tail=nan), "tail"),
    (lambda: ns.gamma_sweep(_nsgd(), 0.1, 2, steps=3, tail=0), "tail"),
    (lambda: ns.loss_change_along_top(_nsgd(), [0.0], 0.1, 2), "theta must have shape"),
    (lambda: ns.loss_change_along_top(_nsgd(), np.full(6, nan), 0.1, 2), "theta must be finite"),
    (lambda: ns.settled(np.ones(10)), "lambda_max must have shape (n_rec, R)"),
    (lambda: ns.settled(np.ones((10, 2)), tail=nan), "tail"),
    (lambda: ns.top_eigen(np.eye(3), 0), "K (top directions)"),
    (lambda: ns.top_eigen(np.full((3, 3), nan), 1), "H must be finite"),
    (lambda: ns.top_eigen(np.ones(3), 1), "H must be square"),
    (lambda: ns.step_direction("nsgd", np.ones(3), None, 0.5), "E (the top eigenvectors"),
    (lambda: ns.step_direction(None, np.ones(3), np.eye(3)[:1], 0.5), "method"),
    (lambda: ns.alpha_cross_quadratic(0.1, 1.0, None, [1.0]), "g_full"),
    (lambda: ns.BatchStream(0, 0, 3, 5), "batch size S"),
    (lambda: ns.BatchStream(0, 0, 3, 0), "batch size S"),
]


@pytest.mark.parametrize("call, names", MISUSE, ids=[f"{i:03d}-{n[:40]}" for i, (_, n) in enumerate(MISUSE)])
def test_misuse_is_a_user_input_error_naming_the_parameter(call, names):
    with pytest.raises(UserInputError) as err:
        call()
    assert isinstance(err.value, ValueError)
    assert names in str(err.value)


def test_an_a0_longer_than_f_is_refused_before_any_kernel_reads_past_f():
    """4,000,000 entries of a0 against one column of f: a segmentation fault in the kernel before."""
    code = (
        "import numpy as np; from valleysim import break_even as be\n"
        "g = be.SharpeningLandscape.make(n_examples=8)\n"
        "land = be.SharpeningLandscape(np.ones(4_000_000), np.ones(4_000_000), 1.0, 0.001, 0.001, g.f, g.b)\n"
        "be.simulate(land, 0.1, 4, steps=20, trajectories=2)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, (res.returncode, res.stderr[-2000:])
    assert "UserInputError: f must have shape (N, 4000000); got shape (8, 1)" in res.stderr


def test_inputs_that_once_failed_now_work():
    """Lists where arrays are expected, numbers as text, a one-example data set."""
    land = be.SharpeningLandscape(
        a0=[1.0], rates=[1.0], sigma=1.0, offset=0.001, beta=0.001, f=_sharp().f, b=_sharp().b
    )
    assert land.a0.dtype == np.float64 and land.k == 1
    walk_land = _walk_with(k=[1.0] * 8, a=[0.0] * 8, e=[0.0] * 8)
    assert walk_land.N == 8 and walk_land.k.dtype == np.float64
    reg = _regression_with(valley.catalogue("regression-valley").data.tolist())
    assert reg.data.shape == (32, 3)
    assert qd.stability_report(_quad(), "0.1", 2)["eta"] == 0.1
    assert math.isnan(theory.eta_star_1d(nan, 1.0, 1.0))  # NaN in, NaN out (it was 0: "no stable rate")
    floor = be.frozen_second_moment(_sharp(), 0.1, 4, 0.0, math.inf)  # the stationary limit (dnn.predictions)
    assert floor == pytest.approx(be.frozen_second_moment(_sharp(), 0.1, 4, 0.0, 10**6))
