"""Hessians far from unit scale (issue 18): ``stability`` and ``phase-diagram`` work on the exactly rescaled
problem (a power of 2), so at 1e-300 ... 1e300 every result is the unscaled one times the scale (eta* as
1 / scale, lambda_max as scale, rho and gamma unchanged); subnormal, non-finite and all-zero Hessians are
one named line and exit 2; eta* and mean_square_stable are never reported in contradiction."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from valleysim.quadratic.integrator import simulate
from valleysim.quadratic.landscape import PerExampleQuadratic, generate
from valleysim.quadratic.second_moment import dense_transition, eta_star_dense
from valleysim.quadratic.stability import stability_report
from valleysim.theory import variance_factor

AS_ETA = ("eta_star", "sharpness_bound", "noise_bound")  # scale as 1 / scale
AS_H = ("lambda_max", "nonuniformity")  # scale as scale
UNCHANGED = ("spectral_radius", "lyapunov_exponent", "variance_factor")
VERDICTS = ("mean_square_stable", "almost_sure_stable")


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _report(cli, path, eta, *extra):
    code, out, err = cli("stability", "--hessians", path, "--eta", repr(eta), "--batch", "2", "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def _close(a, b, rel=1e-12):
    return a == b or abs(a - b) <= rel * max(abs(a), abs(b))


@pytest.mark.parametrize("kind, shape", [("dense", (8, 3)), ("diagonal", (6, 2))])
@pytest.mark.parametrize("scale", [1e-150, 1e150, 1e-300, 1e300])
def test_stability_at_extreme_scales_is_the_unscaled_result_times_the_scale(workdir, cli, kind, shape, scale):
    q = generate(kind, *shape, seed=1)
    np.save("H.npy", q.data)
    np.save("Hs.npy", q.data * scale)
    ref = _report(cli, "H.npy", 1.0)
    got = _report(cli, "Hs.npy", 1.0 / scale)
    for k in AS_ETA:
        assert _close(got[k] * scale, ref[k]), (k, got[k], ref[k])
    for k in AS_H:
        assert _close(got[k] / scale, ref[k]), (k, got[k], ref[k])
    for k in UNCHANGED:
        assert abs(got[k] - ref[k]) <= 1e-12 * max(1.0, abs(ref[k])), (k, got[k], ref[k])
    assert [got[k] for k in VERDICTS] == [ref[k] for k in VERDICTS]
    assert got["eta"] == 1.0 / scale


@pytest.mark.parametrize("scheme", ["with_replacement", "reshuffle"])
def test_the_other_schemes_at_1e_minus_300(workdir, cli, scheme):
    q = generate("diagonal", 6, 2, seed=4)
    np.save("H.npy", q.data)
    np.save("Hs.npy", q.data * 1e-300)
    ref = _report(cli, "H.npy", 1.0, "--scheme", scheme)
    got = _report(cli, "Hs.npy", 1e300, "--scheme", scheme)
    assert _close(got["eta_star"] * 1e-300, ref["eta_star"], 1e-10)
    assert _close(got["spectral_radius"], ref["spectral_radius"])
    assert [got[k] for k in VERDICTS] == [ref[k] for k in VERDICTS]


def test_phase_diagram_at_1e_150_is_the_unscaled_one(workdir, installed):
    q = generate("diagonal", 6, 2, seed=2)
    np.save("H.npy", q.data)
    np.save("Hs.npy", q.data * 1e-150)
    common = ("--batch-sizes", "1,3", "--trajectories", "8", "--steps", "40", "--quiet")
    for path, etas, out in (("H.npy", "0.5,2", "a"), ("Hs.npy", "0.5e150,2e150", "b")):
        run = installed("phase-diagram", "--hessians", path, "--etas", etas, *common, "--out", out)
        assert run.returncode == 0, run.stderr
    ref, got = (list(csv.DictReader(io.StringIO(Path(d, "phase_diagram.csv").read_text()))) for d in "ab")
    assert len(ref) == len(got) == 4
    for r, g in zip(ref, got):
        for k in ("eta_star", "sharpness_bound", "noise_bound", "lyapunov_boundary"):
            assert _close(float(g[k]) * 1e-150, float(r[k]), 1e-9), (k, g[k], r[k])
        for k in ("spectral_radius", "lyapunov_exponent", "diverged_fraction"):
            assert abs(float(g[k]) - float(r[k])) <= 1e-12, (k, g[k], r[k])
        assert g["mean_square_stable"] == r["mean_square_stable"]
        eta, es = float(g["eta"]), float(g["eta_star"])  # the verdict is the exact criterion eta <= eta*
        if abs(eta / es - 1) > 1e-6:
            assert g["mean_square_stable"] == str(eta < es), g
    assert {r["mean_square_stable"] for r in got} == {"True", "False"}  # both sides of the boundary


@pytest.mark.parametrize(
    "data, message",
    [
        (np.array([1e-320, 2e-320, 3e-320]), "subnormal numbers below it have lost digits"),
        (np.full((4, 2), 1e305), "largest |entry| is 1e+305; it must lie in [9.33e-302, 1.07e+301]"),
        (np.zeros((4, 2)), "every entry is zero"),
        (np.zeros((4, 3, 3)), "every entry is zero"),
        (np.zeros(5), "every entry is zero"),
        (np.array([1.0, np.nan]), "hessians must be finite"),
        (np.array([1.0, np.inf]), "hessians must be finite"),
    ],
    ids=["1e-320", "1e305", "zero-diag", "zero-dense", "zero-1d", "nan", "inf"],
)
def test_hessians_outside_the_exact_range_are_one_named_line(workdir, cli, data, message):
    np.save("H.npy", data)
    code, out, err = cli("stability", "--hessians", "H.npy", "--eta", "1", "--batch", "1")
    assert code == 2 and out == "" and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err and "shape" not in err
    if "zero" in message:
        assert "--hessians H.npy" in err and "eta* is infinite" in err
    code, _, err = cli("phase-diagram", "--hessians", "H.npy", "--etas", "1", "--batch-sizes", "1", "--out", "pd")
    assert code == 2 and message in err and err.count("\n") == 1


def _ill_conditioned():
    """(landscape, whether eta_star_dense is a trustworthy reference: its generalized eigenproblem fails
    beyond a condition number of about 1e13, where the matrix-free Perron root and rho still agree)."""
    rng = np.random.default_rng(0)
    for small in (1e-11, 1e-13, 1e-16, 1e-20):
        d = np.abs(rng.normal(size=(8, 2))) + 0.1
        d[:, 1] *= small
        yield PerExampleQuadratic("diagonal", d), True
        a = rng.normal(size=(8, 3, 3))
        a = a + a.transpose(0, 2, 1)
        yield PerExampleQuadratic("dense", 0.1 * (a - a.mean(axis=0)) + np.diag([1.0, 0.5, small])), small >= 1e-13
    yield PerExampleQuadratic("diagonal", np.array([[1.0, 1.0], [1.0, -1.0]])), False  # flat, with noise: eta* 0


def test_eta_star_and_mean_square_stable_never_contradict():
    """Mean curvatures 1e-11 ... 1e-20 of the largest (where eta* used to be reported 0 next to
    mean_square_stable true) and a truly singular mean: eta* is the reference's, the verdict agrees
    with eta <= eta* and with the explicit transition matrix's rho wherever that is clear of 1."""
    for q, reliable in _ill_conditioned():
        for S in (1, 4, 8) if q.N == 8 else (1, 2):
            c = variance_factor(S, q.N)
            ref = eta_star_dense(q, c) if reliable else None
            for eta in (1e-3, 0.1, 1.0, 1.9):
                r = stability_report(q, eta, S)
                es, stable = r["eta_star"], r["mean_square_stable"]
                if ref is not None:
                    assert es == pytest.approx(ref, rel=1e-6), (q.data, S, es, ref)
                assert not (es == 0 and stable), (q.data, eta, S, r)
                if 0 < es < np.inf and abs(eta / es - 1) > 1e-6:
                    assert stable == (eta < es), (q.data, eta, S, r)
                rho = np.max(np.abs(np.linalg.eigvals(dense_transition(q, eta, c))))
                if abs(rho - 1) > 1e-9:
                    assert stable == (rho < 1), (q.data, eta, S, rho, r)
    assert (
        stability_report(PerExampleQuadratic("diagonal", np.array([[1.0, 1.0], [1.0, -1.0]])), 0.1, 1)["eta_star"]
        == 0.0
    )


@pytest.mark.parametrize("scale", [1e-300, 1e300])
def test_simulated_trajectories_at_extreme_scales(scale):
    """The integrator runs the rescaled problem: at 1e-300 the gradients H u of a converging run would
    otherwise fall below float64's normal range (u ~ 1e-70, H u ~ 1e-370) and the run would stall."""
    q = generate("dense", 8, 3, seed=1)
    a = simulate(q, 0.5, 2, steps=3000, trajectories=4, seed=1, record_every=1000)
    b = simulate(PerExampleQuadratic("dense", q.data * scale), 0.5 / scale, 2, steps=3000, trajectories=4, seed=1)
    assert np.allclose(b.dist2[:, -1], a.dist2[:, -1], rtol=1e-10, atol=0)
    assert np.array_equal(b.log_norm[:, -1] != 0, a.log_norm[:, -1] != 0)


def test_an_ill_conditioned_landscape_through_the_command(workdir, cli):
    d = np.abs(np.random.default_rng(3).normal(size=(8, 2))) + 0.1
    d[:, 1] *= 1e-13
    np.save("H.npy", d)
    r = _report(cli, "H.npy", 0.1)
    assert r["eta_star"] > 0.1 and r["mean_square_stable"] is True
    r = _report(cli, "H.npy", 2.0 * r["eta_star"])
    assert r["mean_square_stable"] is False and r["spectral_radius"] > 1
