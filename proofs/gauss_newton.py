"""R6: Hessian, uncentred gradient second moment and gradient covariance for l_k = -log p_k.

Sources: walk-with-sgd.txt Eq. 3 and App. D; noise-hessian-spectrum.txt Eq. 4. Per-example loss
l_k(theta) = -log p_k(theta) with generic sympy Functions p_k of two parameters, N examples,
L = (1/N) sum l_k, H = hess L, g = grad L, G = (1/N) sum grad l_k grad l_k^T (uncentred second
moment), K = (1/N) sum (grad l_k - g)(grad l_k - g)^T (covariance, THEORY.md notation).
"""

from __future__ import annotations

import itertools

import sympy as sp

from proofs._util import check, check_true, section
from proofs.sgd_second_moment import N as N_
from proofs.sgd_second_moment import S as S_
from proofs.sgd_second_moment import variance_factor_without_replacement

NEX = 3  # examples
x = sp.symbols("x1:3", real=True)  # two parameters
p = [sp.Function(f"p{k + 1}")(*x) for k in range(NEX)]
ell = [-sp.log(pk) for pk in p]
L_mean = sum(ell) / NEX


def grad(e):
    return sp.Matrix([sp.diff(e, xi) for xi in x])


H = sp.hessian(L_mean, x)
gl = [grad(e) for e in ell]
gbar = sum(gl, sp.zeros(2, 1)) / NEX
G = sum((gk * gk.T for gk in gl), sp.zeros(2, 2)) / NEX
K = sum(((gk - gbar) * (gk - gbar).T for gk in gl), sp.zeros(2, 2)) / NEX
second_term = -sum((sp.hessian(pk, x) / pk for pk in p), sp.zeros(2, 2)) / NEX
hessian_decomposition = sp.Eq(sp.Symbol("H"), sp.Symbol("G") - sp.Symbol("(1/N) sum hess p_k / p_k"))


def check_decomposition() -> None:
    for k in range(NEX):
        check(gl[k], -grad(p[k]) / p[k], "grad l_k = -grad p_k / p_k")
        # per example: hess l = l''(p) grad p grad p^T + l'(p) hess p, l' = -1/p, l'' = 1/p^2
        q = sp.Symbol("q", positive=True)
        lp, lpp = sp.diff(-sp.log(q), q).subs(q, p[k]), sp.diff(-sp.log(q), q, 2).subs(q, p[k])
        check(lp, -1 / p[k], "dl/dp = -1/p")
        check(lpp, 1 / p[k] ** 2, "d2l/dp2 = 1/p^2")
        check(sp.hessian(ell[k], x), lpp * grad(p[k]) * grad(p[k]).T + lp * sp.hessian(p[k], x), "chain rule")
        check(lpp * grad(p[k]) * grad(p[k]).T, gl[k] * gl[k].T, "l'' grad p grad p^T = grad l grad l^T")
    check(H, G + second_term, "H = G - (1/N) sum hess p_k / p_k")
    # walk-with-sgd Eq. 3: H = C + (1/N) sum dl/dp hess p, with their C = G (uncentred)
    walk_eq3 = (
        G
        + sum(
            (sp.diff(-sp.log(sp.Symbol("q")), sp.Symbol("q")).subs(sp.Symbol("q"), pk) * sp.hessian(pk, x) for pk in p),
            sp.zeros(2, 2),
        )
        / NEX
    )
    check(H, walk_eq3, "walk-with-sgd Eq. 3 holds with C = G")
    check(K, G - gbar * gbar.T, "K = G - g g^T")
    check(H, K + gbar * gbar.T + second_term, "H = K + g g^T - (1/N) sum hess p_k / p_k")
    check(gbar, grad(L_mean), "g = grad L")


def check_batch_covariance() -> None:
    """Cov of the mini-batch gradient is c K (centred), not c G: enumeration N = 3, S = 2."""
    v = [sp.Matrix(sp.symbols(f"v{k + 1}_1:3", real=True)) for k in range(3)]
    vbar = sum(v, sp.zeros(2, 1)) / 3
    Kv = sum(((vk - vbar) * (vk - vbar).T for vk in v), sp.zeros(2, 2)) / 3
    Gv = sum((vk * vk.T for vk in v), sp.zeros(2, 2)) / 3
    batches = list(itertools.combinations(range(3), 2))
    means = [sum((v[i] for i in B), sp.zeros(2, 1)) / 2 for B in batches]
    cov = sum(((mb - vbar) * (mb - vbar).T for mb in means), sp.zeros(2, 2)) / len(batches)
    cfac = variance_factor_without_replacement.subs({N_: 3, S_: 2})
    check(cov, cfac * Kv, "Cov(g_B) = c K")
    L = sp.Symbol("L", positive=True, integer=True)
    check(L * cov.trace(), L * cfac * Kv.trace(), "E Tr K_hat = L c Tr K for the Gram of L batches (no 1/L, no 1/c)")
    check_true(any(sp.expand(e) != 0 for e in cov - cfac * Gv), "Cov(g_B) != c G unless g = 0")


def check_minima() -> None:
    """Values at a point: P_k = p_k, gp_k = grad p_k, hp_k = hess p_k."""
    P = sp.symbols("P1:4", positive=True)
    gp = [sp.Matrix(sp.symbols(f"gp{k + 1}_1:3", real=True)) for k in range(NEX)]
    hp = [
        sp.Matrix(2, 2, lambda i, j, k=k: sp.Symbol(f"hp{k + 1}_{min(i, j) + 1}{max(i, j) + 1}", real=True))
        for k in range(NEX)
    ]
    Gp = sum(((gp[k] / P[k]) * (gp[k] / P[k]).T for k in range(NEX)), sp.zeros(2, 2)) / NEX
    second = -sum((hp[k] / P[k] for k in range(NEX)), sp.zeros(2, 2)) / NEX
    # perfectly fitted: p_k = 1 is the maximum of p_k <= 1, so grad p_k = 0 and hess p_k is NSD
    fit = {**{P[k]: 1 for k in range(NEX)}, **{e: 0 for k in range(NEX) for e in gp[k]}}
    check(Gp.subs(fit), sp.zeros(2, 2), "perfect fit: G = K = 0")
    check((Gp + second).subs(fit), -sum(hp, sp.zeros(2, 2)) / NEX, "perfect fit: H = -(1/N) sum hess p_k (PSD)")
    # concrete: p_k = exp(-(a_k . x)^2) has its maximum 1 at x = 0; there H = (2/N) sum a_k a_k^T, G = 0
    a = [sp.Matrix([1, 0]), sp.Matrix([1, 2]), sp.Matrix([0, 1])]
    pk = [sp.exp(-(((ak.T * sp.Matrix(x))[0]) ** 2)) for ak in a]
    Lc = sum(-sp.log(e) for e in pk) / NEX
    at0 = {x[0]: 0, x[1]: 0}
    Hc = sp.hessian(Lc, x).subs(at0)
    Gc = sum((grad(-sp.log(e)) * grad(-sp.log(e)).T for e in pk), sp.zeros(2, 2)).subs(at0) / NEX
    check(Gc, sp.zeros(2, 2), "example: G = 0 at the perfect fit")
    check(Hc, 2 * sum((ak * ak.T for ak in a), sp.zeros(2, 2)) / NEX, "example: H = (2/N) sum a a^T")
    check_true(all(ev > 0 for ev in Hc.eigenvals()), "example: H positive definite while G = 0")
    # logistic, one parameter: p = sigma(z), minimum at z -> oo; G/H = (1 - p)/p -> 0
    z = sp.Symbol("z", real=True)
    sig = 1 / (1 + sp.exp(-z))
    l1 = -sp.log(sig)
    Hz, Gz = sp.diff(l1, z, 2), sp.diff(l1, z) ** 2
    check(Hz, sig * (1 - sig), "logistic H = p (1 - p)")
    check(Gz, (1 - sig) ** 2, "logistic G = (1 - p)^2")
    check_true(sp.limit(Gz / Hz, z, sp.oo) == 0, "G/H -> 0 towards the (asymptotic) minimum")
    check(Hz - Gz, -sp.diff(sig, z, 2) / sig, "the second term dominates: H - G = -p''/p = (1 - p)(2p - 1)")
    # a minimum with g = 0 and p < 1 (conflicting labels): p1 = sigma(z), p2 = sigma(-z), z = 0
    L2 = (-sp.log(sig) - sp.log(sig.subs(z, -z))) / 2
    check(sp.diff(L2, z).subs(z, 0), 0, "conflicting labels: g = 0 at z = 0")
    G2 = ((sp.diff(-sp.log(sig), z)) ** 2 + (sp.diff(-sp.log(sig.subs(z, -z)), z)) ** 2) / 2
    check(sp.diff(L2, z, 2).subs(z, 0), G2.subs(z, 0), "there H = G = K = 1/4 (sigma'' (0) = 0)")
    check(G2.subs(z, 0), sp.Rational(1, 4), "G = 1/4")
    # the Fisher identity: labels drawn from the model (sum_y p_y = 1) make the second term vanish on average
    q1 = sp.Function("q")(*x)
    py = [q1, 1 - q1]
    check(
        sum((py[y] * sp.hessian(py[y], x) / py[y] for y in range(2)), sp.zeros(2, 2)),
        sp.zeros(2, 2),
        "E_y~p [hess p_y / p_y] = hess sum_y p_y = 0",
    )
    EyH = sum((py[y] * sp.hessian(-sp.log(py[y]), x) for y in range(2)), sp.zeros(2, 2))
    EyG = sum((py[y] * grad(-sp.log(py[y])) * grad(-sp.log(py[y])).T for y in range(2)), sp.zeros(2, 2))
    check(EyH, EyG, "E_y~p H_y = E_y~p G_y (Fisher information)")


def derive() -> dict:
    check_decomposition()
    check_batch_covariance()
    check_minima()
    return {
        "hess_l_1": sp.ImmutableMatrix(sp.hessian(ell[0], x)),
        "grad_l_1 grad_l_1^T": sp.ImmutableMatrix(gl[0] * gl[0].T),
        "-hess_p_1 / p_1 (the second term, per example)": sp.ImmutableMatrix(-sp.hessian(p[0], x) / p[0]),
    }


ASSUMPTIONS = [
    "Per-example loss l_k = -log p_k(theta), p_k generic positive functions (sympy Functions) of two "
    "parameters, N = 3 examples; L = (1/N) sum l_k.",
    "G = (1/N) sum grad l_k grad l_k^T (uncentred), K = G - g g^T (centred covariance), g = grad L.",
]
STEPS = [
    "dl/dp = -1/p, d2l/dp2 = 1/p^2, so hess l_k = grad l_k grad l_k^T - hess p_k / p_k; averaging: "
    "H = G - (1/N) sum hess p_k / p_k (noise-hessian-spectrum Eq. 4; walk-with-sgd Eq. 3 with its C = G).",
    "K = G - g g^T, hence H = K + g g^T - (1/N) sum hess p_k / p_k.",
    "The mini-batch gradient covariance is c K, the centred K (enumeration, N = 3, S = 2), and differs "
    "from c G unless g = 0: walk-with-sgd calls G the 'gradient covariance C' in Eq. 3 but uses C as the "
    "covariance of the noise in Eq. 2; noise-hessian-spectrum distinguishes C~ (second moment) and C "
    "(covariance) of the batch gradient and uses Hoffer's c (1/M) sum grad l grad l^T (= c G) as the "
    "covariance in Sec. 2.1.2. Both agree at g = 0.",
    "G is PSD, so negative eigenvalues of H come only from the second term (noise-hessian-spectrum Sec. "
    "2.1.2, correct).",
    "At a perfectly fitted minimum (p_k = 1 = max p_k) grad p_k = 0: G = K = 0 and H = -(1/N) sum hess p_k "
    "is PSD -- the second term is the whole Hessian, not negligible (example p_k = exp(-(a_k.x)^2): "
    "H = (2/N) sum a_k a_k^T). Logistic p = sigma(z): G/H = (1 - p)/p -> 0 towards the minimum. With "
    "conflicting labels (sigma(z), sigma(-z)) the minimum z = 0 has H = G = K = 1/4.",
    "What does make the second term vanish is averaging over labels drawn from the model: "
    "E_y~p[hess p_y / p_y] = hess sum_y p_y = 0, so E_y H_y = E_y G_y (Fisher identity), a statement about "
    "the model distribution, not the empirical loss at a minimum.",
]


def report() -> str:
    return section("R6 Hessian, G and K for l = -log p (`proofs.gauss_newton`)", ASSUMPTIONS, STEPS, derive())
