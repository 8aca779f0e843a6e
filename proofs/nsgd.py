"""R8: sharpest directions and Nudged-SGD (sharpest-directions-sgd-step.txt Secs. 3.2-4, App. E).

NSGD replaces the SGD step -eta g by -eta M g with M = I - (1 - gamma) P_K, P_K the projector
onto the top-K Hessian eigenvectors: learning rate gamma eta along them, eta elsewhere.

(a) App. E: for diag(H) = [100]*5 + [1, 1], K = 5, gamma = 1/100 the NSGD step equals the
    step of Eq. (1), theta - eta (H + lam_N I)^{-1} g, with lam_N = 0 and the *same* eta, for
    every eta and every g. With eta = 1 both are the undamped Newton step -H^{-1} g (on the
    quadratic: the minimum in one step); with the paper's eta = 0.01 both only shrink every
    coordinate by 0.99. More generally NSGD(eta, gamma, K) = Eq. (1)(eta', lam_N) iff the
    spectrum is two-valued {a (top K), b (the rest)} and gamma = (b + lam_N)/(a + lam_N),
    eta' = eta (b + lam_N).
(b) Sec. 3.2: along an eigen-direction e_1 of curvature lam on a quadratic, with G = <grad L, e_1>
    and g1 = <g_B, e_1> (mini-batch), L(theta - alpha eta g1 e_1) - L(theta)
    = -alpha eta g1 G + 1/2 lam alpha^2 eta^2 g1^2; full batch: eta G^2 alpha (eta lam alpha / 2 - 1),
    negative on 0 < alpha < 2/(eta lam), zero there, positive beyond; minimum at alpha = 1/(eta lam).
(c) Other checks: the expected change over mini-batches (root alpha* = 2 G^2 / (eta lam (G^2 + s2))),
    the paper's "decrease for alpha < 1, increase for alpha > 1" <=> alpha* = 1; the paper's reported
    percentages against the parabola any quadratic model gives; NSGD's per-direction factors and its
    stability bound lam < 2/(gamma eta); well-posedness (needs lam_K > lam_{K+1}); spectral-norm notation.
"""

from __future__ import annotations

import sympy as sp

from proofs._util import check, check_true, section

eta, gamma, lam, alpha = sp.symbols("eta gamma lam alpha", positive=True)
G, g1 = sp.symbols("G g1", real=True)  # full-batch and mini-batch gradient components along e_1
s2 = sp.Symbol("s2", nonnegative=True)  # Var[g1] over mini-batches
lam_N = sp.Symbol("lam_N", nonnegative=True)  # the Newton damping scalar (the paper's lambda in Eq. 1)
eta_N = sp.Symbol("eta_N", positive=True)  # Newton step size in Eq. (1)
a, b = sp.symbols("a b", positive=True)  # two-valued spectrum: top-K curvature a, the rest b
x = sp.Symbol("x", real=True)  # coordinate along e_1 (quadratic minimum at x = 0)

APP_E_H = [100] * 5 + [1, 1]
APP_E_K = 5
APP_E_GAMMA = sp.Rational(1, 100)


def nsgd_matrix(h, K, gamma_, eta_):
    """eta M for a diagonal H whose top-K eigenvectors are the first K axes (h sorted decreasing)."""
    return sp.diag(*[gamma_ * eta_ if i < K else eta_ for i in range(len(h))])


def newton_matrix(h, eta_, lam_):
    """eta (H + lam I)^{-1}, the preconditioner of App. E Eq. (1)."""
    return eta_ * (sp.diag(*h) + lam_ * sp.eye(len(h))).inv()


# --- (a) App. E ------------------------------------------------------------------------------------
gvec = sp.Matrix(sp.symbols("gv1:8", real=True))
nsgd_step_app_e = -nsgd_matrix(APP_E_H, APP_E_K, APP_E_GAMMA, eta) * gvec
newton_step_app_e = -newton_matrix(APP_E_H, eta, 0) * gvec
# general matching of the two preconditioners on the spectrum {a (K times), b}
_match = sp.solve([sp.Eq(eta_N / (a + lam_N), gamma * eta), sp.Eq(eta_N / (b + lam_N), eta)], [eta_N, gamma], dict=True)
matching_gamma = _match[0][gamma]  # (b + lam_N) / (a + lam_N)
matching_eta_N = _match[0][eta_N]  # eta (b + lam_N)


def check_app_e() -> None:
    check(nsgd_step_app_e, newton_step_app_e, "App. E: NSGD(eta, 1/100, K=5) = Eq. (1)(eta, lam=0), every eta, g")
    # the top-5 eigenspace is well defined: lambda_5 = 100 > lambda_6 = 1
    check_true(APP_E_H[APP_E_K - 1] > APP_E_H[APP_E_K], "gap lambda_K > lambda_{K+1}")
    # on L = 1/2 theta^T H theta (g = H theta): the step maps theta to (1 - eta) theta in every coordinate
    th = sp.Matrix(sp.symbols("th1:8", real=True))
    H = sp.diag(*APP_E_H)
    new = th - nsgd_matrix(APP_E_H, APP_E_K, APP_E_GAMMA, eta) * H * th
    check(new, (1 - eta) * th, "NSGD on the App. E quadratic: theta -> (1 - eta) theta")
    check(new.subs(eta, 1), sp.zeros(7, 1), "eta = 1: the undamped Newton step, minimum in one step")
    check(new.subs(eta, sp.Rational(1, 100)), sp.Rational(99, 100) * th, "paper's eta = 0.01: factor 0.99")
    # the general match: gamma = (b + lam_N)/(a + lam_N), eta' = eta (b + lam_N); App. E is a = 100, b = 1, lam_N = 0
    check_true(len(_match) == 1, "unique (eta', gamma)")
    check(matching_gamma, (b + lam_N) / (a + lam_N), "matching gamma")
    check(matching_eta_N, eta * (b + lam_N), "matching eta'")
    check(matching_gamma.subs({a: 100, b: 1, lam_N: 0}), APP_E_GAMMA, "App. E gamma = 1/100")
    check(matching_eta_N.subs({b: 1, lam_N: 0}), eta, "App. E eta' = eta")
    # necessity: two different curvatures a1 != a2 inside the top-K block cannot both get gamma eta
    a1, a2 = sp.symbols("a1 a2", positive=True)
    sol = sp.solve(
        [sp.Eq(eta_N / (a1 + lam_N), gamma * eta), sp.Eq(eta_N / (a2 + lam_N), gamma * eta)], [eta_N, a2], dict=True
    )
    check_true(len(sol) == 1 and sp.simplify(sol[0][a2] - a1) == 0, "Newton = NSGD forces equal top-K curvatures")
    # with lam_N > 0 the App. E spectrum needs gamma = (1 + lam_N)/(100 + lam_N) > 1/100
    check(sp.diff(matching_gamma.subs({a: 100, b: 1}), lam_N), 99 / (100 + lam_N) ** 2, "d gamma / d lam_N > 0")


# --- (b) loss change along e_1 ---------------------------------------------------------------------
L1 = lam * x**2 / 2  # the loss along e_1 (quadratic)
G_of_x = sp.diff(L1, x)  # G = lam x
step_len = alpha * eta * g1  # the step along e_1
loss_change = sp.expand(L1.subs(x, x - step_len) - L1).subs(x, G / lam)  # in terms of G and g1
loss_change_full = sp.factor(loss_change.subs(g1, G))  # full batch g1 = G
alpha_cross = 2 / (eta * lam)  # the sign change
alpha_best = 1 / (eta * lam)
loss_change_min = -(G**2) / (2 * lam)
expected_loss_change = sp.expand(loss_change).subs(g1**2, G**2 + s2).subs(g1, G)  # E g1 = G, E g1^2 = G^2 + s2
alpha_cross_noisy = 2 * G**2 / (eta * lam * (G**2 + s2))
# on a network: B measured projections g_b with sample moments m1 = mean g_b, m2 = mean g_b^2
m1 = sp.Symbol("m1", real=True)
m2 = sp.Symbol("m2", positive=True)
sample_loss_change = -alpha * eta * G * m1 + lam * alpha**2 * eta**2 * m2 / 2
sample_alpha_cross = 2 * G * m1 / (eta * lam * m2)


def check_loss_change() -> None:
    check(G_of_x, lam * x, "G = lam x")
    check(loss_change, -alpha * eta * g1 * G + lam * alpha**2 * eta**2 * g1**2 / 2, "Delta L(alpha)")
    check(loss_change_full, eta * G**2 * alpha * (eta * lam * alpha / 2 - 1), "full batch factorised")
    roots = sp.solve(sp.Eq(loss_change_full, 0), alpha)  # alpha > 0 symbol: only the nonzero root
    check_true(len(roots) == 1, "one positive root")
    check(roots[0], alpha_cross, "sign change at alpha = 2/(eta lam)")
    check(sp.solve(sp.diff(loss_change_full, alpha), alpha)[0], alpha_best, "minimum at alpha = 1/(eta lam)")
    check(loss_change_full.subs(alpha, alpha_best), loss_change_min, "minimum value -G^2/(2 lam)")
    u = sp.Symbol("u", positive=True)  # alpha = u * alpha_cross
    sign = sp.factor(loss_change_full.subs(alpha, u * alpha_cross))
    check(sign, 2 * G**2 * u * (u - 1) / lam, "Delta L = 2 G^2 u (u - 1)/lam with u = alpha/alpha_cross")
    check_true(
        sp.solveset(u * (u - 1) < 0, u, sp.Interval.open(0, sp.oo)) == sp.Interval.open(0, 1),
        "decrease exactly for alpha < 2/(eta lam)",
    )
    # the mean over B measured batch projections: linear in g_b and g_b^2, so their sample moments enter
    gs = sp.symbols("g_b0:4", real=True)
    mean_change = sum(loss_change.subs(g1, gb) for gb in gs) / len(gs)
    check(
        mean_change,
        sample_loss_change.subs({m1: sum(gs) / len(gs), m2: sum(gb**2 for gb in gs) / len(gs)}),
        "mean over batches = -alpha eta G m1 + lam alpha^2 eta^2 m2 / 2",
    )
    roots = sp.solve(sp.Eq(sample_loss_change, 0), alpha)
    check_true(len(roots) == 1, "one positive root of the sample-moment parabola")
    check(roots[0], sample_alpha_cross, "its root 2 G m1 / (eta lam m2)")
    check(
        sample_alpha_cross.subs({m1: G, m2: G**2 + s2}), alpha_cross_noisy, "= the expected root when m1, m2 are exact"
    )
    # alpha = 1 (the SGD step itself) decreases the loss along e_1 iff eta lam < 2 (GD stability)
    check(loss_change_full.subs(alpha, 1), eta * G**2 * (eta * lam - 2) / 2, "alpha = 1")


# --- (c) the rest ------------------------------------------------------------------------------------
PAPER_PCT = {
    "SimpleCNN": {0.25: -2.0, 0.5: -2.0, 2: 2.1, 4: 11.1},
    "Resnet-32": {0.25: -0.5, 0.5: -0.5, 2: 3.0, 4: 13.1},
}


def parabola_fit(points: dict) -> dict:
    """Delta L(alpha) = A alpha (alpha - c) through the alpha = 2 and 4 points; its prediction at 0.25, 0.5."""
    A_, c_ = sp.symbols("A c", real=True)
    p = lambda al: A_ * al * (al - c_)  # noqa: E731
    sol = sp.solve([sp.Eq(p(2), sp.nsimplify(points[2])), sp.Eq(p(4), sp.nsimplify(points[4]))], [A_, c_], dict=True)[0]
    return {
        "A": sol[A_],
        "alpha_cross": sol[c_],
        "pred_0.25": p(sp.Rational(1, 4)).subs(sol),
        "pred_0.5": p(sp.Rational(1, 2)).subs(sol),
    }


PAPER_FITS = {k: parabola_fit(v) for k, v in PAPER_PCT.items()}
nsgd_factor_top = 1 - gamma * eta * lam  # NSGD on a quadratic, a top-K direction
nsgd_stable_top = 2 / (gamma * eta)  # |factor| < 1 iff lam < 2/(gamma eta)


def check_other() -> None:
    # expected change over mini-batches: still a parabola through 0, root alpha* = 2 G^2/(eta lam (G^2 + s2))
    check(expected_loss_change, -alpha * eta * G**2 + lam * alpha**2 * eta**2 * (G**2 + s2) / 2, "E Delta L")
    root = [r for r in sp.solve(sp.Eq(expected_loss_change, 0), alpha)]
    check_true(len(root) == 1, "one positive root (noisy)")
    check(root[0], alpha_cross_noisy, "alpha* with gradient noise")
    check(alpha_cross_noisy.subs(s2, 0), alpha_cross, "s2 = 0: alpha* = 2/(eta lam)")
    # the paper's observation (decrease for alpha < 1, increase for alpha > 1) <=> alpha* = 1
    check(
        sp.solve(sp.Eq(alpha_cross_noisy, 1), eta)[0],
        2 * G**2 / (lam * (G**2 + s2)),
        "alpha* = 1 iff eta lam (1 + s2/G^2) = 2",
    )
    pc = sp.Symbol("c", positive=True)
    pal = lambda al: al * (al - pc)  # noqa: E731
    check(
        sp.solve(sp.Eq(pal(sp.Rational(1, 4)), pal(sp.Rational(1, 2))), pc)[0],
        sp.Rational(3, 4),
        "equal changes at alpha = 0.25 and 0.5 need alpha* = 3/4",
    )
    check(pal(4).subs(pc, 1) / pal(2).subs(pc, 1), 6, "alpha* = 1: Delta L(4)/Delta L(2) = 6")
    # the paper's percentages are not on any parabola A alpha (alpha - alpha*): fitting 2 and 4 misses 0.25/0.5
    f = PAPER_FITS["SimpleCNN"]
    check(f["alpha_cross"], sp.Rational(18, 23), "SimpleCNN fit alpha* = 18/23 ~ 0.78")
    check_true(
        abs(float(f["pred_0.25"])) < 0.2 and abs(float(f["pred_0.5"])) < 0.2,
        "SimpleCNN: a parabola through the alpha=2,4 points predicts |change| < 0.2% at 0.25, 0.5 (paper ~2%)",
    )
    f = PAPER_FITS["Resnet-32"]
    check(f["alpha_cross"], sp.Rational(22, 71), "Resnet-32 fit alpha* = 22/71 ~ 0.31")
    check_true(f["pred_0.5"] > 0, "Resnet-32: the parabola predicts an increase at alpha = 0.5 (paper: decrease)")
    # NSGD per-direction factors on a quadratic (gradient H theta): 1 - gamma eta lam (top K), 1 - eta lam else
    gs, es = sp.Rational(1, 100), sp.Rational(1, 100)
    check_true(
        sp.solveset(sp.Abs(nsgd_factor_top.subs({gamma: gs, eta: es})) < 1, lam, sp.Interval.open(0, sp.oo))
        == sp.Interval.open(0, 20000),
        "gamma = eta = 0.01: top-K stable iff lam < 2e4",
    )
    check(nsgd_factor_top.subs(gamma, 1), 1 - eta * lam, "gamma = 1: SGD")
    check(nsgd_stable_top / (2 / eta), 1 / gamma, "NSGD's stability bound is 1/gamma times SGD's")
    # paper Sec. 4: K = 20, gamma = eta = 0.01: lambda_max ~ 8e3 (NSGD) vs ~150 (SGD); bounds 2e4 and 200
    bound = nsgd_stable_top.subs({gamma: gs, eta: es})
    check_true(bound == 20000 and 8000 < bound and 150 < 2 / es, "reported lambda_max below 2/(gamma eta), 2/eta")
    # SGD-top / SGD-no-top on a quadratic: factor 1 - eta lam on the kept directions, 1 on the removed ones
    # well-posedness: with lambda_K = lambda_{K+1} the step depends on the chosen eigenbasis
    phi = sp.Symbol("phi", real=True)
    v = sp.Matrix([sp.cos(phi), sp.sin(phi)])  # any unit vector is an eigenvector of H = I_2
    M = sp.eye(2) - (1 - gamma) * v * v.T
    dM = sp.simplify(sp.diff(M, phi))
    check_true(dM != sp.zeros(2, 2), "H = I_2, K = 1: the NSGD matrix depends on the basis angle")
    check(dM.subs(gamma, 1), sp.zeros(2, 2), "... unless gamma = 1")
    # spectral-norm notation: eigenvalues ordered by |lambda|; H = diag(-3, 1): lambda_1 = -3, max = 1, ||H|| = 3
    Hs = sp.diag(-3, 1)
    ev = sorted(Hs.eigenvals(), key=lambda e: -abs(e))
    check_true(
        ev[0] == -3 and max(Hs.eigenvals()) == 1 and sp.Abs(ev[0]) == 3,
        "lambda_1 (largest |.|) != max eigenvalue; ||H||_2 = |lambda_1|",
    )


def derive() -> dict:
    check_app_e()
    check_loss_change()
    check_other()
    return {
        "nsgd_step_app_e": nsgd_step_app_e,
        "newton_step_app_e": newton_step_app_e,
        "matching_gamma": matching_gamma,
        "matching_eta_N": matching_eta_N,
        "loss_change": loss_change,
        "loss_change_full": loss_change_full,
        "alpha_cross": alpha_cross,
        "alpha_best": alpha_best,
        "loss_change_min": loss_change_min,
        "expected_loss_change": expected_loss_change,
        "alpha_cross_noisy": alpha_cross_noisy,
        "sample_loss_change": sample_loss_change,
        "sample_alpha_cross": sample_alpha_cross,
        "nsgd_factor_top": nsgd_factor_top,
        "nsgd_stable_top": nsgd_stable_top,
        **{
            f"paper_fit[{k}]": f"alpha* = {float(v['alpha_cross']):.3f}, predicted change at 0.25/0.5: "
            f"{float(v['pred_0.25']):.3f}% / {float(v['pred_0.5']):.3f}% "
            f"(paper: {PAPER_PCT[k][0.25]}% / {PAPER_PCT[k][0.5]}%)"
            for k, v in PAPER_FITS.items()
        },
    }


ASSUMPTIONS = [
    "NSGD: theta <- theta - eta (I - (1 - gamma) P_K) g, P_K the projector onto the top-K Hessian eigenvectors "
    "(well defined only when lambda_K > lambda_{K+1}).",
    "App. E: H = diag(100, 100, 100, 100, 100, 1, 1), K = 5, gamma = 1/100; Eq. (1): "
    "theta <- theta - eta_N (H + lam_N I)^{-1} g.",
    "Sec. 3.2: the loss along e_1 is quadratic with curvature lam; G = <grad L, e_1>, g1 = <g_B, e_1>, "
    "E g1 = G, Var g1 = s2.",
]
STEPS = [
    "App. E: eta M = eta diag(gamma I_5, I_2) with gamma = 1/100 equals eta (H + 0 I)^{-1} = eta diag(I_5/100, I_2) "
    "entrywise, so the NSGD step with rate eta equals the Eq. (1) step with the same eta and lam_N = 0, for every eta "
    "and every gradient. It is the undamped Newton step -H^{-1} g only for eta = 1; on the quadratic the step maps "
    "theta to (1 - eta) theta (eta = 1: the minimum in one step; the paper's eta = 0.01: factor 0.99).",
    "Solving eta_N/(a + lam_N) = gamma eta, eta_N/(b + lam_N) = eta: the only match is "
    "gamma = (b + lam_N)/(a + lam_N), "
    "eta_N = eta (b + lam_N); two different curvatures inside the top-K block cannot be matched, so the "
    "equivalence needs the two-valued spectrum of the example.",
    "Along e_1: L(x - alpha eta g1) - L(x) with G = lam x gives -alpha eta g1 G + 1/2 lam alpha^2 eta^2 g1^2; "
    "for g1 = G it factorises as eta G^2 alpha (eta lam alpha/2 - 1): negative for alpha < 2/(eta lam), "
    "minimal (-G^2/(2 lam)) at alpha = 1/(eta lam), positive beyond.",
    "Averaged over mini-batches the change is still a parabola through 0 with root 2 G^2/(eta lam (G^2 + s2)); "
    "the paper's 'decrease below alpha = 1, increase above' is this root at 1, i.e. eta lam (1 + s2/G^2) = 2. "
    "Averaging over iterations keeps a parabola through 0; the paper's four percentages are on none "
    "(fits through alpha = 2, 4 shown below).",
    "NSGD on a quadratic multiplies a top-K coordinate by 1 - gamma eta lam: stable iff lam < 2/(gamma eta), "
    "1/gamma times SGD's 2/eta (the reported 8e3 vs 150 are below 2e4 and 200). If lambda_K = lambda_{K+1} the "
    "step depends on the chosen eigenbasis (H = I_2, K = 1).",
]


def report() -> str:
    return section("R8 Sharpest directions and Nudged-SGD (`proofs.nsgd`)", ASSUMPTIONS, STEPS, derive())
