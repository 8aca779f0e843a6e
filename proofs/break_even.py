"""R2: the break-even point (break-even-point.txt, Sec. 3 and App. A, Theorem 1 / Eq. 4).

Along e_H^1 the per-example losses are h_i psi^2 / 2 (R1, 1-D). The gradient variance along
e_H^1 at distance psi is lam_K = psi^2 s2; the paper's assumption lam_K = alpha lam_H then fixes
s2 = alpha lam / psi^2, and the stability factor q of R1 becomes a function of lam alone. The
break-even curvature lambda* is the positive root of q = 1.
"""

from __future__ import annotations

import sympy as sp

from proofs._util import check, check_true, section
from proofs.sgd_second_moment import N, S, c, eta, lam, s2, stability_factor, variance_factor_without_replacement

alpha = sp.Symbol("alpha", nonnegative=True)  # lam_K >= 0 (K is PSD) and lam_H > 0
psi = sp.Symbol("psi", real=True, nonzero=True)

s2_assumed = sp.solve(sp.Eq(psi**2 * s2, alpha * lam), s2)[0]  # lam_K = psi^2 s2 = alpha lam
q_break_even = stability_factor.subs(s2, s2_assumed)
_roots = [r for r in sp.solve(sp.Eq(q_break_even, 1), lam) if r != 0]
break_even_curvature_psi = _roots[0]  # general distance psi
break_even_curvature = break_even_curvature_psi.subs(psi, 1)  # the paper's psi = 1
c_of_S = variance_factor_without_replacement
d_lambda_d_eta = sp.diff(break_even_curvature, eta)
d_lambda_d_S = sp.simplify(sp.diff(break_even_curvature.subs(c, c_of_S), S))

#: The paper's Eq. 4 (App. A), transcribed only to compare with the derivation.
PAPER_EQ4 = (2 - alpha * (N - S) / (N - 1) * eta / S) / eta


def check_derivation() -> None:
    h = sp.symbols("h1:4", real=True)  # gradient variance along e_H^1: g_i = h_i psi
    g = [sp.diff(hi * psi**2 / 2, psi) for hi in h]
    pop_var = lambda v: sum((x - sum(v) / 3) ** 2 for x in v) / 3  # noqa: E731
    check(pop_var(g), psi**2 * pop_var(h), "Var[g_i] = psi^2 s2")
    check(s2_assumed, alpha * lam / psi**2, "s2 under lam_K = alpha lam_H")
    check_true(len(_roots) == 1, "one nonzero root of q = 1 in lam")
    check(break_even_curvature_psi, 2 / eta - alpha * c / psi**2, "lambda*(psi)")
    check(break_even_curvature, 2 / eta - alpha * c, "lambda* at psi = 1")
    # q - 1 = eta^2 lam (lam - lambda*): stable (q < 1) exactly for 0 < lam < lambda*
    check(q_break_even - 1, eta**2 * lam * (lam - break_even_curvature_psi), "q - 1 factorises")


def check_monotonicity() -> None:
    ep, ap, m = sp.symbols("eta alpha m", positive=True)  # N = 1 + m > 1
    check(d_lambda_d_eta, -2 / eta**2, "d lambda*/d eta")
    check_true(d_lambda_d_eta.subs(eta, ep).is_negative, "lambda* decreases with eta")
    dc = sp.diff(c_of_S, S)
    check(dc, -N / (S**2 * (N - 1)), "dc/dS")
    check_true(sp.factor(dc.subs(N, 1 + m)).is_negative, "c decreases with S for N > 1")
    check(d_lambda_d_S, alpha * N / (S**2 * (N - 1)), "d lambda*/dS")
    check_true(sp.factor(d_lambda_d_S.subs({N: 1 + m, alpha: ap})).is_positive, "lambda* increases with S (alpha > 0)")
    # for any fixed psi the same signs hold: only alpha c / psi^2 changes
    check(sp.diff(break_even_curvature_psi, eta), d_lambda_d_eta, "d/d eta at any psi")
    check(c_of_S.subs(S, N), 0, "c(N, N) = 0")
    check(break_even_curvature.subs(c, c_of_S.subs(S, N)), 2 / eta, "full batch: lambda* = 2/eta")
    check(sp.limit(break_even_curvature.subs(c, 1 / S), S, sp.oo), 2 / eta, "with replacement, S -> oo")


def check_paper() -> None:
    """The comparisons recorded in proofs/ERRATA.md."""
    # Eq. 4 agrees with lambda*; its concluding sentence ("for a larger S or smaller eta,
    # lambda* is lower") has both signs reversed: see check_monotonicity.
    check(PAPER_EQ4, break_even_curvature.subs(c, c_of_S), "Eq. 4 equals lambda* (psi = 1)")
    check_true(
        sp.diff(break_even_curvature_psi, psi).subs({alpha: 1, c: 1, psi: 1}) != 0,
        "lambda* depends on psi: psi = 1 is not without loss of generality",
    )
    # Sec. 3 writes f(psi) = sum_i (psi - psi*)^2 H_i: its curvature is 2 N lam, not lam;
    # App. A's (1/(2N)) sum_i (psi - psi*)^2 H_i has curvature lam.
    h, pstar, p = sp.symbols("h1:4", real=True), sp.Symbol("psistar"), sp.Symbol("p")
    mean_h = sum(h) / 3
    check(sp.diff(sum((p - pstar) ** 2 * hi for hi in h), p, 2), 2 * 3 * mean_h, "Sec. 3 f'' = 2 N lam")
    check(sp.diff(sum((p - pstar) ** 2 * hi for hi in h) / (2 * 3), p, 2), mean_h, "App. A L'' = lam")
    # App. A: s(t) = Var[H_i] used as s^2: with h = (0, 4), S = 1 (c = 1), eta = 1/4 the
    # enumerated E[(1 - eta h_B)^2] = 1/2 matches s^2 = Var = 4, not s^2 = Var^2 = 16.
    e, hs = sp.Rational(1, 4), [0, 4]
    q_enum = sum((1 - e * x) ** 2 for x in hs) / 2
    var = sum((x - 2) ** 2 for x in hs) / sp.Integer(2)
    check(q_enum, stability_factor.subs({eta: e, lam: 2, c: 1, s2: var}), "q uses Var[H_i]")
    check_true(q_enum != stability_factor.subs({eta: e, lam: 2, c: 1, s2: var**2}), "q does not use Var^2")
    # Sec. 3 "K has N - D non-zero eigenvalues": the centred gradients sum to zero, so
    # rank K <= min(D, N - 1). Example N = 3, D = 5: rank 2, while N - D = -2.
    G = sp.Matrix([[1, 0, 2, -1, 3], [0, 1, 1, 4, -2], [2, 5, 0, 1, 1]])
    Gc = G - sp.ones(3, 1) * (sp.ones(1, 3) * G) / 3
    check(sp.ones(1, 3) * Gc, sp.zeros(1, 5), "centred gradients sum to 0")
    K = Gc.T * Gc / 3
    check_true(K.rank() == 2, "rank K = N - 1 here")


sigma = sp.Symbol("sigma", positive=True)
_prop_roots = [r for r in sp.solve(sp.Eq(stability_factor.subs(s2, sigma**2 * lam**2), 1), lam) if r != 0]
break_even_curvature_proportional = _prop_roots[0]  # per-example curvatures lam (1 + sigma xi_i): s2 = sigma^2 lam^2


def check_proportional_spread() -> None:
    """The dynamical toy of valleysim.break_even: the curvature spread grows with the mean, s = sigma lam."""
    check_true(len(_prop_roots) == 1, "one nonzero root of q = 1")
    check(break_even_curvature_proportional, 2 / (eta * (1 + c * sigma**2)), "lambda* = 2 / (eta (1 + c sigma^2))")
    check(sp.diff(break_even_curvature_proportional, eta) * eta**2 * (1 + c * sigma**2), -2, "decreases with eta")
    check(break_even_curvature_proportional.subs(c, c_of_S.subs(S, N)), 2 / eta, "full batch: 2/eta")
    # the same point in the paper's parametrisation: lam_K = psi^2 sigma^2 lam^2 = alpha lam with alpha = sigma^2 lam*
    check(
        break_even_curvature_psi.subs({psi: 1, alpha: sigma**2 * break_even_curvature_proportional}),
        break_even_curvature_proportional,
        "= 2/eta - alpha c with alpha = sigma^2 lambda*",
    )


def derive() -> dict:
    check_derivation()
    check_monotonicity()
    check_paper()
    check_proportional_spread()
    return {
        "break_even_curvature": break_even_curvature,
        "break_even_curvature_psi": break_even_curvature_psi,
        "d_lambda_d_eta": d_lambda_d_eta,
        "d_lambda_d_S": d_lambda_d_S,
        "break_even_curvature_proportional_spread": break_even_curvature_proportional,
    }


ASSUMPTIONS = [
    "R1 in 1-D along e_H^1: per-example losses h_i psi^2 / 2, lam = lam_H^1 = mean(h_i), "
    "s2 = population variance of h_i, q = (1 - eta lam)^2 + eta^2 c s2.",
    "Paper's assumption 2: e_K^1 = +-e_H^1 and lam_K^1 = alpha lam_H^1 (alpha >= 0, since K is PSD).",
    "Distance psi from the minimum along e_H^1; the paper sets psi = 1.",
]
STEPS = [
    "The per-example gradient along e_H^1 is g_i = h_i psi, so lam_K = Var[g_i] = psi^2 s2 and "
    "the assumption gives s2 = alpha lam / psi^2.",
    "Then q - 1 = eta^2 lam (lam - lambda*) with lambda* = 2/eta - alpha c / psi^2: SGD is "
    "mean-square stable along e_H^1 for 0 < lam <= lambda* and loses stability when lam crosses "
    "lambda*. At psi = 1: lambda* = 2/eta - alpha c.",
    "d lambda*/d eta = -2/eta^2 < 0: a larger learning rate breaks even at a lower curvature.",
    "c(S, N) = (N-S)/(S(N-1)) has dc/dS = -N/(S^2 (N-1)) < 0 for N > 1, so d lambda*/dS = "
    "alpha N/(S^2 (N-1)) > 0 for alpha > 0: a smaller batch breaks even at a lower curvature "
    "(with replacement c = 1/S, same sign).",
    "Full batch S = N: c = 0 and lambda* = 2/eta (the edge-of-stability value).",
    "The paper's Eq. 4 equals lambda* (psi = 1); its concluding sentence reverses both "
    "monotonicities (see proofs/ERRATA.md).",
    "Spread proportional to the mean (per-example curvatures lam (1 + sigma xi_i), the dynamical toy of "
    "valleysim.break_even): s2 = sigma^2 lam^2, so q = 1 at lambda* = 2/(eta (1 + c sigma^2)), "
    "decreasing in eta, 2/eta at S = N; the paper's form with alpha = sigma^2 lambda*.",
]


def report() -> str:
    return section("R2 The break-even point (`proofs.break_even`)", ASSUMPTIONS, STEPS, derive())
