"""The sympy derivations in proofs/ agree with the numeric formulas in valleysim.theory."""

import subprocess
import sys

import numpy as np
import pytest
import sympy as sp
from hypothesis import given
from hypothesis import strategies as st

from proofs import MODULES
from proofs import break_even as be
from proofs import gd_damping as gd
from proofs import sgd_second_moment as sm
from proofs._util import ProofError, check
from valleysim import theory
from valleysim.quadratic.landscape import PerExampleQuadratic
from valleysim.quadratic.reshuffle import epoch_spectral_radius

pos = st.floats(1e-3, 1e3)


@given(N=st.integers(2, 500), data=st.data())
def test_variance_factor(N, data):
    S = data.draw(st.integers(1, N))
    for scheme in sm.SCHEMES:
        expr = sm.variance_factor[scheme]
        assert float(expr.subs({sm.S: S, sm.N: N})) == pytest.approx(theory.variance_factor(S, N, scheme), rel=1e-12)


@given(eta=pos, lam=pos, s2=pos, c=st.floats(0, 1))
def test_one_dimensional_formulas(eta, lam, s2, c):
    q = sp.lambdify((sm.eta, sm.lam, sm.s2, sm.c), sm.stability_factor)
    assert theory.stability_factor(eta, lam, s2, c) == pytest.approx(q(eta, lam, s2, c), rel=1e-12)
    es = sp.lambdify((sm.lam, sm.s2, sm.c), sm.eta_star_1d)
    assert theory.eta_star_1d(lam, s2, c) == pytest.approx(es(lam, s2, c), rel=1e-12)
    lyap_bound = sp.lambdify((sm.eta, sm.lam, sm.s2, sm.c), sm.lyapunov_bound)
    with np.errstate(divide="ignore"):  # q = 0 (c = 0, eta lam = 1): both sides are -inf
        assert lyap_bound(eta, lam, s2, c) == pytest.approx(
            0.5 * np.log(theory.stability_factor(eta, lam, s2, c)), rel=1e-9, abs=1e-12
        )


@given(eta=pos, alpha=st.floats(0, 10), c=st.floats(0, 1))
def test_break_even_curvature(eta, alpha, c):
    lam_star = sp.lambdify((sm.eta, be.alpha, sm.c), be.break_even_curvature)
    assert theory.break_even_curvature(eta, c, alpha) == pytest.approx(lam_star(eta, alpha, c), rel=1e-12, abs=1e-12)


@given(lam_max=pos, s=pos, c=st.floats(1e-6, 1))
def test_necessary_bounds(lam_max, s, c):
    sharp = sp.lambdify(sm.lam_max, sm.eta_bound_sharpness)(lam_max)
    noise = sp.lambdify((sm.c, sm.s_nu), sm.eta_bound_noise)(c, s)
    assert theory.necessary_eta_bounds(lam_max, s, c) == pytest.approx((sharp, noise), rel=1e-12)


@given(eta=pos, lam=pos)
def test_gd_damping(eta, lam):
    contraction = sp.lambdify((gd.eta, gd.lam), gd.gd_contraction)
    assert theory.gd_contraction(eta, lam) == pytest.approx(contraction(eta, lam), rel=1e-12, abs=1e-15)
    u = eta * lam
    if not (np.isclose(u, 1.0) or np.isclose(u, 2.0)):  # the numeric side snaps to the boundaries
        regime = [name for name, region in gd.REGIMES.items() if region.contains(sp.Float(u)) == sp.true]
        assert regime == [theory.gd_damping_regime(eta, lam)]


def test_check_fails_on_a_wrong_step():
    x = sp.Symbol("x")
    check((x + 1) ** 2, x**2 + 2 * x + 1)
    with pytest.raises(ProofError):
        check((x + 1) ** 2, x**2 + 1, "wrong expansion")


def test_python_m_proofs_writes_report(tmp_path):
    out = tmp_path / "proofs.md"
    res = subprocess.run(
        [sys.executable, "-m", "proofs", "--out", str(out)], capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr
    assert [line for line in res.stdout.splitlines() if line.startswith("ok ")] == [f"ok {m}" for m in MODULES]
    text = out.read_text()
    for title in ("R1 Mean-square stability", "R2 The break-even point", "R7 Damping regimes"):
        assert f"## {title}" in text
    assert r"\frac{2 \lambda}{c s^{2} + \lambda^{2}}" in text  # eta* in 1-D, rendered


@given(h=st.lists(st.floats(0.05, 3.0), min_size=4, max_size=4), S=st.sampled_from([1, 2, 4]), eta=st.floats(0.05, 2))
def test_reshuffle_epoch_factor(h, S, eta):
    factor = float(sm.epoch_factor_1d([sp.Float(x) for x in h], S, sp.Float(eta)))
    q = PerExampleQuadratic("diagonal", np.array(h)[:, None])
    assert epoch_spectral_radius(q, eta, S) == pytest.approx(factor, rel=1e-10)
