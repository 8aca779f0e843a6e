"""R7: damping regimes of GD along one eigen-direction (walk-with-sgd.txt Sec. 6).

GD on L(x) = 1/2 lam x^2: x_{t+1} = x_t - eta L'(x_t) = (1 - eta lam) x_t, so
x_t = (1 - eta lam)^t x_0. Everything depends on the product u = eta lam.
"""

from __future__ import annotations

import sympy as sp

from proofs._util import check, check_true, section

eta, lam = sp.symbols("eta lam", real=True)
x = sp.Function("x")
t = sp.Symbol("t", integer=True, nonnegative=True)
x0, pos = sp.Symbol("x0", real=True), sp.Symbol("pos", real=True)
u = sp.Symbol("u", real=True)  # u = eta lam

gd_step = sp.expand(pos - eta * sp.diff(lam * pos**2 / 2, pos))  # x_{t+1} as a function of x_t = pos
gd_factor = sp.factor(gd_step / pos)  # r = 1 - eta lam
gd_contraction = sp.Abs(gd_factor)
gd_trajectory = sp.rsolve(x(t + 1) - gd_factor * x(t), x(t), {x(0): x0})

_r = gd_factor.subs(eta * lam, u)
_pos_u = sp.Interval.open(0, sp.oo)  # eta > 0, lam > 0


def _where(cond) -> sp.Set:
    """{u > 0 : cond(r(u))} by solveset."""
    return sp.solveset(cond, u, sp.S.Reals).intersect(_pos_u)


def _r_between(lo, hi) -> sp.Set:
    return _where(_r > lo).intersect(_where(_r < hi))


REGIMES = {  # regime: the set of u = eta lam where the factor r = 1 - u has the defining property
    "over-damped": _r_between(0, 1),  # 0 < r < 1: monotone approach
    "critically damped": _where(sp.Eq(_r, 0)),  # r = 0: the minimum in one step
    "under-damped": _r_between(-1, 0),  # -1 < r < 0: alternating sign, shrinking
    "marginal": _where(sp.Eq(_r, -1)),  # r = -1: constant-amplitude oscillation
    "divergent": _where(_r < -1),  # r < -1
}


def check_regimes() -> None:
    check(gd_factor, 1 - eta * lam, "GD factor")
    check(gd_trajectory, x0 * (1 - eta * lam) ** t, "x_t = r^t x_0")
    check(_r, 1 - u, "factor in terms of u")
    expected = {
        "over-damped": sp.Interval.open(0, 1),
        "critically damped": sp.FiniteSet(1),
        "under-damped": sp.Interval.open(1, 2),
        "marginal": sp.FiniteSet(2),
        "divergent": sp.Interval.open(2, sp.oo),
    }
    for name, interval in expected.items():
        check_true(REGIMES[name] == interval, f"{name}: eta lam in {interval}")
    # contraction |r| < 1 exactly on (0, 2); the regimes tile u > 0 without overlap
    check_true(_where(sp.Abs(_r) < 1) == sp.Interval.open(0, 2), "|1 - u| < 1 iff 0 < u < 2")
    check_true(sp.Union(*REGIMES.values()) == _pos_u, "regimes cover u > 0")
    sets = list(REGIMES.values())
    check_true(
        all(a.intersect(b) == sp.S.EmptySet for i, a in enumerate(sets) for b in sets[i + 1 :]), "regimes are disjoint"
    )
    # sign pattern: x_{t+1} / x_t = r, so x_t alternates in sign iff r < 0 (u > 1)
    check(gd_trajectory.subs(t, t + 1) / gd_trajectory, gd_factor, "x_{t+1}/x_t = r")


def derive() -> dict:
    check_regimes()
    return {
        "gd_factor": gd_factor,
        "gd_contraction": gd_contraction,
        "gd_trajectory": gd_trajectory,
        **{f"regime[{k}]": v for k, v in REGIMES.items()},
    }


ASSUMPTIONS = ["One eigen-direction of curvature lam > 0, L(x) = 1/2 lam x^2, GD with eta > 0."]
STEPS = [
    "The step is x_{t+1} = x_t - eta lam x_t = r x_t with r = 1 - eta lam, so x_t = r^t x_0 (rsolve).",
    "With u = eta lam: r in (0, 1) iff u in (0, 1) (over-damped, monotone); r = 0 iff u = 1 "
    "(critically damped, one step); r in (-1, 0) iff u in (1, 2) (under-damped: x_t alternates in "
    "sign across the valley while |x_t| shrinks); r = -1 iff u = 2 (marginal); r < -1 iff u > 2 "
    "(divergent).",
    "|r| < 1 iff 0 < eta lam < 2: the per-step contraction of the distance is |1 - eta lam|.",
]


def report() -> str:
    return section("R7 Damping regimes of GD on a quadratic (`proofs.gd_damping`)", ASSUMPTIONS, STEPS, derive())
