"""R3, R4, R5: SGD in a degenerate valley (noise-hessian-spectrum.txt, Secs. 2-4 and App. A.3).

Valley (Lemma 1, Eq. 1): L = 1/2 sum_{i<=n} theta_i^2 lambda_i(theta_hat), n = 2 non-degenerate
coordinates theta and m = 2 degenerate ones theta_hat. The update is
theta' = theta - eta (lambda theta + xi), theta_hat' = theta_hat - eta (grad_hat L + xi_hat)
with zero-mean noise, Cov xi = C (n x n), Cov xi_hat = C_hat (m x m), fresh each step and
independent of the state. The theta block is stationary at frozen theta_hat (time-scale
separation, paper Sec. 2.1.3); <.> is the stationary average.

Two kinds of symbols are used: generic sympy Functions lambda_i(theta_hat) for the calculus
(chain rule, Hessian blocks), and plain symbols for the values at one point (lam_i,
g_ik = d lambda_i / d theta_hat_k, hl_i_kl = d2 lambda_i / d theta_hat_k d theta_hat_l), which
are what ``tests/test_proofs_valley.py`` lambdifies and compares with ``valleysim.valley.theory``.
"""

from __future__ import annotations

import itertools

import sympy as sp

from proofs._util import check, check_true, section
from proofs.sgd_second_moment import N as M_
from proofs.sgd_second_moment import S as S_
from proofs.sgd_second_moment import variance_factor_without_replacement

n = m = 2
eta = sp.Symbol("eta", positive=True)
c = sp.Symbol("c", nonnegative=True)  # SGD variance factor: C = c diag(lam)
scale = sp.Symbol("scale", positive=True)  # Theorem 2: C_ii = scale lam_i df/dlam_i
th = sp.symbols("theta1:3", real=True)  # non-degenerate coordinates
hh = sp.symbols("thetahat1:3", real=True)  # degenerate coordinates
xi = sp.symbols("xi1:3", real=True)  # noise in the theta block
xh = sp.symbols("xihat1:3", real=True)  # noise in the theta_hat block
lamf = [sp.Function(f"lambda{i + 1}")(*hh) for i in range(n)]
L_valley = sum(th[i] ** 2 * lamf[i] for i in range(n)) / 2

# values at one point of the valley floor
lam = sp.symbols("lam1:3", positive=True)
g = sp.Matrix(n, m, lambda i, k: sp.Symbol(f"g_{i + 1}{k + 1}", real=True))  # grad lambda_i (rows)
hl = [
    sp.Matrix(m, m, lambda k, l, i=i: sp.Symbol(f"hl_{i + 1}_{min(k, l) + 1}{max(k, l) + 1}", real=True))
    for i in range(n)
]  # hess lambda_i
C = sp.Matrix(n, n, lambda i, j: sp.Symbol(f"C_{min(i, j) + 1}{max(i, j) + 1}", real=True))
C_hat = sp.Matrix(m, m, lambda k, l: sp.Symbol(f"Chat_{min(k, l) + 1}{max(k, l) + 1}", real=True))
Wd = sp.symbols("W1:3", nonnegative=True)  # W_jj = <theta_j^2>
gf = sp.Matrix(sp.symbols("gf1:3", real=True))  # grad_hat f at the point (m,)
hf = sp.Matrix(m, m, lambda k, l: sp.Symbol(f"hf_{min(k, l) + 1}{max(k, l) + 1}", real=True))
fl = sp.symbols("f1:3", real=True)  # df/dlam_i


def at_point(expr):
    """Replace lambda_i(theta_hat) and its derivatives by the point symbols lam, g, hl."""
    rep = {}
    for i in range(n):
        for k, l in itertools.product(range(m), repeat=2):
            rep[sp.diff(lamf[i], hh[k], hh[l])] = hl[i][k, l]
    expr = expr.subs(rep)
    expr = expr.subs({sp.diff(lamf[i], hh[k]): g[i, k] for i in range(n) for k in range(m)})
    return expr.subs({lamf[i]: lam[i] for i in range(n)})


def expectation(expr, moments):
    """E[expr] for a polynomial in the random symbols: each monomial (a tuple of exponents over
    ``moments['vars']``) is replaced by ``moments['of'](exponents)``."""
    vs = moments["vars"]
    poly = sp.Poly(sp.expand(expr), *vs)
    return sp.expand(sum(cf * moments["of"](mon) for mon, cf in poly.terms()))


# --- Step 1: the valley and its gradient -----------------------------------------------------------

grad_theta = sp.Matrix([sp.diff(L_valley, t) for t in th])
grad_hat = sp.Matrix([sp.diff(L_valley, h) for h in hh])


def check_valley() -> None:
    for i in range(n):
        check(grad_theta[i], th[i] * lamf[i], f"dL/dtheta_{i + 1} = theta_i lambda_i")
        check(sp.diff(L_valley, th[i], 2), lamf[i], f"d2L/dtheta_{i + 1}^2 = lambda_i")
    check(
        grad_hat,
        sum((th[i] ** 2 * sp.Matrix([sp.diff(lamf[i], h) for h in hh]) for i in range(n)), sp.zeros(m, 1)) / 2,
        "grad_hat L = 1/2 sum theta_i^2 grad lambda_i",
    )
    check(L_valley.subs({t: 0 for t in th}), 0, "minimum L = 0 on the floor theta = 0")


# --- Step 2: stationary second moments --------------------------------------------------------------

A_step = sp.eye(n) - eta * sp.diag(*lam)


def lyapunov_solution(nn: int = n, lam_=None, C_=None):
    """Entrywise solution of W = A W A + eta^2 C, A = I - eta diag(lam), for nn x nn."""
    lam_ = lam_ if lam_ is not None else sp.symbols(f"lam1:{nn + 1}", positive=True)
    C_ = C_ if C_ is not None else sp.Matrix(nn, nn, lambda i, j: sp.Symbol(f"C_{min(i, j) + 1}{max(i, j) + 1}"))
    Wu = sp.Matrix(nn, nn, lambda i, j: sp.Symbol(f"w_{min(i, j) + 1}{max(i, j) + 1}"))
    A = sp.eye(nn) - eta * sp.diag(*lam_)
    eqs = list(Wu - A * Wu * A - eta**2 * C_)
    sol = sp.solve(eqs, sorted(Wu.free_symbols, key=str), dict=True)
    check_true(len(sol) == 1, "the Lyapunov equation has one solution")
    return Wu.subs(sol[0]), lam_, C_


W_exact = sp.Matrix(n, n, lambda i, j: eta * C[i, j] / (lam[i] + lam[j] - eta * lam[i] * lam[j]))
W_leading = sp.Matrix(n, n, lambda i, j: eta * C[i, j] / (lam[i] + lam[j]))
W_master = [eta * C[i, i] / (lam[i] * (2 - eta * lam[i])) for i in range(n)]  # the paper's Eq. 8-9 route
W_sgd = [eta * c / (2 - eta * lam[i]) for i in range(n)]  # Eq. 11 with c(S, M)


def _moments_theta_xi(Wm, Cm):
    """Moments of (theta, xi): E theta theta^T = W, E xi xi^T = C, independent, zero-mean xi."""

    def of(mon):
        deg = sum(mon)
        if deg == 0:
            return 1
        if deg != 2:
            raise ValueError(mon)
        idx = [k for k, e in enumerate(mon) for _ in range(e)]
        a, b = idx
        if a < n and b < n:
            return Wm[a, b]
        if a >= n and b >= n:
            return Cm[a - n, b - n]
        return 0  # E[theta xi] = E[theta] E[xi] = 0

    return {"vars": list(th) + list(xi), "of": of}


def check_stationary() -> None:
    theta, xiv = sp.Matrix(th), sp.Matrix(xi)
    step = theta - eta * (sp.diag(*lam) * theta + xiv)
    check(step, A_step * theta - eta * xiv, "theta' = A theta - eta xi")
    Wsym = sp.Matrix(n, n, lambda i, j: sp.Symbol(f"w_{min(i, j) + 1}{max(i, j) + 1}"))
    mom = _moments_theta_xi(Wsym, C)
    EW = (step * step.T).applyfunc(lambda e: expectation(e, mom))
    check(EW, A_step * Wsym * A_step + eta**2 * C, "E theta' theta'^T = A W A + eta^2 C")
    Wsol, _, _ = lyapunov_solution(n, lam, C)
    check(Wsol, W_exact, "W_ij = eta C_ij / (lam_i + lam_j - eta lam_i lam_j)")
    W3, lam3, C3 = lyapunov_solution(3)
    check(
        W3,
        sp.Matrix(3, 3, lambda i, j: eta * C3[i, j] / (lam3[i] + lam3[j] - eta * lam3[i] * lam3[j])),
        "the same entrywise formula for n = 3",
    )
    for i, j in itertools.product(range(n), repeat=2):
        check(sp.series(W_exact[i, j], eta, 0, 2).removeO(), W_leading[i, j], f"leading order W_{i + 1}{j + 1}")
        check(
            sp.limit((W_exact[i, j] - W_leading[i, j]) / eta**2, eta, 0),
            C[i, j] * lam[i] * lam[j] / (lam[i] + lam[j]) ** 2,
            "next order is eta^2",
        )
    # the paper's route: master equation (Eq. 3) for O = theta_i theta_j
    gB = sp.diag(*lam) * theta + xiv  # noisy theta gradient
    for i, j in itertools.product(range(n), repeat=2):
        master = expectation((th[i] - eta * gB[i]) * (th[j] - eta * gB[j]) - th[i] * th[j], mom)
        rhs = -eta * expectation(th[i] * gB[j] + th[j] * gB[i], mom) + eta**2 * expectation(gB[i] * gB[j], mom)
        check(master, rhs, "master equation for theta_i theta_j")
        solved = sp.solve(master, Wsym[i, j])
        if i == j:
            # Eq. 8: stationarity of theta_i^2 <=> <theta_i dL/dtheta_i> = (eta/2) <C~_ii>
            check(
                master,
                -2 * eta * (expectation(th[i] * lam[i] * th[i], mom) - eta / 2 * expectation(gB[i] ** 2, mom)),
                "Eq. 8: the master equation is <theta_i dL/dtheta_i> = (eta/2) <C~_ii>",
            )
            check(
                expectation(gB[i] ** 2, mom), C[i, i] + lam[i] ** 2 * Wsym[i, i], "Eq. 9: C~_ii = C_ii + lam_i^2 W_ii"
            )
            check(solved[0], W_master[i], "Eq. 8-9 solved for W_ii")
            check(W_master[i], W_exact[i, i], "master-equation W_ii equals the Lyapunov diagonal")
            check(W_master[i].subs(C[i, i], c * lam[i]), W_sgd[i], "SGD noise: W_ii = eta c / (2 - eta lam_i)")
        else:
            check(solved[0], W_exact[i, j], "master equation off the diagonal")


def check_variance_factor() -> None:
    """The paper's (1/S)(1 - S/M) versus the exact c(S, M) = (M - S)/(S (M - 1))."""
    paper = (1 - S_ / M_) / S_
    check(variance_factor_without_replacement / paper, M_ / (M_ - 1), "c = (M/(M-1)) (1/S)(1 - S/M)")
    check(variance_factor_without_replacement - paper, (M_ - S_) / (S_ * M_ * (M_ - 1)), "difference O(1/M^2)")
    # the paper's Eq. 11 is the derived W_ii with c -> (1/S)(1 - S/M)
    PAPER_EQ11 = eta / (S_ * (2 - eta * lam[0])) * (1 - S_ / M_)
    check(W_sgd[0].subs(c, paper), PAPER_EQ11, "Eq. 11 = W_sgd with the paper's factor")


# --- Step 3: fluctuation-dissipation relation -------------------------------------------------------


def check_fdr() -> None:
    theta, gBs = sp.Matrix(th), sp.Matrix(sp.symbols("gB1:3", real=True))
    new = theta - eta * gBs
    check(
        (new.T * new)[0] - (theta.T * theta)[0],
        -2 * eta * (theta.T * gBs)[0] + eta**2 * (gBs.T * gBs)[0],
        "|theta'|^2 - |theta|^2 = -2 eta theta.g_B + eta^2 |g_B|^2",
    )
    # stationarity E|theta'|^2 = E|theta|^2  <=>  <theta.g_B> = eta/2 <|g_B|^2>  (eta != 0)
    t_g, g2 = sp.symbols("theta_dot_gB gB_sq")
    check_true(sp.solve(sp.Eq(-2 * eta * t_g + eta**2 * g2, 0), t_g) == [eta * g2 / 2], "FDR solved")
    # in the valley with g_B = lam theta + xi and the exact W: both sides agree
    gB = sp.diag(*lam) * theta + sp.Matrix(xi)
    mom = _moments_theta_xi(W_exact, C)
    check(
        expectation((theta.T * gB)[0], mom),
        eta / 2 * expectation((gB.T * gB)[0], mom),
        "FDR holds for the Lyapunov W (any C)",
    )


# --- Step 4: drift of a spectral function f(lambda(theta_hat)) ---------------------------------------

f = sp.Function("f")
_x = sp.symbols("x1:3")
F_of_hat = f(*lamf)
drift_general = -eta / 2 * sum(Wd[j] * (g[j, :] * gf)[0] for j in range(n)) + eta**2 / 2 * sum(
    C_hat[k, l] * hf[k, l] for k in range(m) for l in range(m)
)
# grad f = sum_i f_i grad lambda_i at the point
grad_f_chain = (sp.Matrix([fl]) * g).T


def diagonal_noise_drift(grad_f, noise_diag, lam_=lam, g_=g):
    """Leading order: C = diag(noise_diag) gives W_jj = eta s_j/(2 lam_j) and
    E df = -(eta^2/4) sum_j (s_j / lam_j) grad f . grad lambda_j."""
    return -(eta**2) / 4 * sum(noise_diag[j] / lam_[j] * (g_[j, :] * grad_f)[0] for j in range(len(lam_)))


trace_drift_leading = drift_general.subs({Wd[0]: eta * c / 2, Wd[1]: eta * c / 2}).subs(
    {gf[k]: g[0, k] + g[1, k] for k in range(m)}
)
trace_drift_leading = sp.expand(trace_drift_leading.subs({C_hat[k, l]: 0 for k in range(m) for l in range(m)}))
trace_drift_exact_W = sp.expand(sum(-eta / 2 * W_sgd[j] * (g[j, :] * (g[0, :] + g[1, :]).T)[0] for j in range(n)))
designed_drift_leading = -(eta**2) * scale / 4 * ((sp.Matrix([fl]) * g) * (sp.Matrix([fl]) * g).T)[0]
designed_drift_exact_W = sum(
    -eta / 2 * (eta * scale * lam[j] * fl[j] / (lam[j] * (2 - eta * lam[j]))) * (g[j, :] * grad_f_chain)[0]
    for j in range(n)
)
grad_logdet = sp.Matrix([sum(g[i, k] / lam[i] for i in range(n)) for k in range(m)])
logdet_drift_isotropic = -(eta**2) * scale / 4 * (grad_logdet.T * grad_logdet)[0]
#: the paper's printed Theorem 1 coefficient, transcribed only to compare
PAPER_THM1 = -(eta**2) / (2 * S_) * (1 - S_ / M_) * ((g[0, :] + g[1, :]) * (g[0, :] + g[1, :]).T)[0]


def _taylor_order_check() -> None:
    """E[F(theta_hat + delta) - F(theta_hat)] = drift_general + O(eta^3) for a cubic F, with moments
    W = O(eta), E theta^4 = O(eta^2), ... and xi_hat zero-mean with covariance C_hat, independent."""
    k3 = sp.symbols("k_1:5")  # third derivatives of F (cubic part)
    d = sp.symbols("d1:3")
    Fpoly = (
        gf[0] * d[0]
        + gf[1] * d[1]
        + (hf[0, 0] * d[0] ** 2 + 2 * hf[0, 1] * d[0] * d[1] + hf[1, 1] * d[1] ** 2) / 2
        + (k3[0] * d[0] ** 3 + 3 * k3[1] * d[0] ** 2 * d[1] + 3 * k3[2] * d[0] * d[1] ** 2 + k3[3] * d[1] ** 3) / 6
    )
    delta = [-eta * (sum(th[j] ** 2 * g[j, k] for j in range(n)) / 2 + xh[k]) for k in range(m)]
    dF = Fpoly.subs({d[0]: delta[0], d[1]: delta[1]}, simultaneous=True)
    w = sp.symbols("w1:3", positive=True)  # W_jj = eta w_j
    T3 = sp.symbols("T_1:5")  # third moments of xi_hat (O(1))

    def of(mon):
        a1, a2, b1, b2 = mon
        if a1 % 2 or a2 % 2:
            raise ValueError("only even powers of theta occur")
        p1, p2 = a1 // 2, a2 // 2
        if (p1, p2) == (1, 0):
            th_m = eta * w[0]
        elif (p1, p2) == (0, 1):
            th_m = eta * w[1]
        elif (p1, p2) == (0, 0):
            th_m = 1
        else:  # E theta^(2p) = O(eta^p)
            th_m = eta ** (p1 + p2) * sp.Symbol(f"mu_{p1}{p2}")
        bd = b1 + b2
        if bd == 0:
            x_m = 1
        elif bd == 1:
            x_m = 0
        elif bd == 2:
            x_m = C_hat[0, 0] if b1 == 2 else C_hat[1, 1] if b2 == 2 else C_hat[0, 1]
        elif bd == 3:
            x_m = T3[b2]
        else:
            raise ValueError(mon)
        return th_m * x_m

    EdF = expectation(dF, {"vars": list(th) + list(xh), "of": of})
    predicted = drift_general.subs({Wd[0]: eta * w[0], Wd[1]: eta * w[1]})
    rem = sp.expand(EdF - predicted)
    check(rem.coeff(eta, 0), 0, "no eta^0 remainder")
    check(rem.coeff(eta, 1), 0, "no eta^1 remainder")
    check(rem.coeff(eta, 2), 0, "no eta^2 remainder: the formula is exact to O(eta^2)")
    check_true(rem.coeff(eta, 3) != 0, "the remainder starts at eta^3 (third moments of xi_hat)")
    check(rem.coeff(eta, 3).subs({t: 0 for t in T3}), 0, "eta^3 term only from E xi_hat^3")


def check_drift() -> None:
    # chain rule for F = f(lambda(theta_hat))
    fi = [sp.diff(f(*_x), _x[i]).subs(dict(zip(_x, lamf)), simultaneous=True) for i in range(n)]
    for k in range(m):
        check(
            sp.diff(F_of_hat, hh[k]) - sum(fi[i] * sp.diff(lamf[i], hh[k]) for i in range(n)),
            0,
            f"chain rule d f / d thetahat_{k + 1}",
        )
    # first-order term: E[delta] = -eta <grad_hat L> = -(eta/2) sum W_jj grad lambda_j
    Edelta = [
        expectation(
            -eta * at_point(grad_hat[k]),
            {
                "vars": list(th),
                "of": lambda mo: 1 if sum(mo) == 0 else Wd[mo.index(2)] if sorted(mo) == [0, 2] else sp.nan,
            },
        )
        for k in range(m)
    ]
    for k in range(m):
        check(Edelta[k], -eta / 2 * sum(Wd[j] * g[j, k] for j in range(n)), "E delta_k")
    _taylor_order_check()
    # Theorem 1: f = trace, C = c diag(lam), C_hat = 0
    check(
        trace_drift_leading,
        -(eta**2) * c / 4 * ((g[0, :] + g[1, :]) * (g[0, :] + g[1, :]).T)[0],
        "Theorem 1: -(eta^2 c/4)|sum grad lambda_i|^2",
    )
    check(sp.series(trace_drift_exact_W, eta, 0, 3).removeO(), trace_drift_leading, "exact W -> leading order")
    # Theorem 2: C_ii = scale lam_i f_i gives W_ii = eta scale f_i/(2 - eta lam_i) (Eq. 14 with scale 1)
    for i in range(n):
        check(
            W_master[i].subs(C[i, i], scale * lam[i] * fl[i]),
            eta * scale * fl[i] / (2 - eta * lam[i]),
            "Eq. 14: W_ii under designed noise",
        )
    lead2 = sp.series(designed_drift_exact_W, eta, 0, 3).removeO()
    check(lead2, designed_drift_leading, "Theorem 2: -(eta^2 scale/4)|sum f_i grad lambda_i|^2")
    check(
        diagonal_noise_drift(grad_f_chain, [scale * lam[i] * fl[i] for i in range(n)]),
        designed_drift_leading,
        "Theorem 2 from the diagonal-noise formula",
    )
    check(
        designed_drift_leading.subs({fl[0]: 1, fl[1]: 1, scale: c}),
        trace_drift_leading,
        "Theorem 1 is Theorem 2 with f = trace, scale = c",
    )
    # Corollary 2.1: f = log det, f_i = 1/lam_i, so C_ii = scale: isotropic noise
    logdet = sp.log(sp.Mul(*_x))
    f_logdet = [sp.diff(logdet, _x[i]).subs(dict(zip(_x, lam))) for i in range(n)]
    for i in range(n):
        check(lam[i] * f_logdet[i], 1, "log det: lam_i df/dlam_i = 1 (isotropic noise)")
    check(designed_drift_leading.subs(dict(zip(fl, f_logdet))), logdet_drift_isotropic, "Corollary 2.1 (log det)")
    # Det itself (the corollary's statement): E dDet = -(eta^2 scale/(4 Det)) |grad Det|^2 at leading order
    det_ = lam[0] * lam[1]
    grad_det = (sp.Matrix([[lam[1], lam[0]]]) * g).T
    check(
        diagonal_noise_drift(grad_det, [scale, scale]),
        -(eta**2) * scale / (4 * det_) * (grad_det.T * grad_det)[0],
        "Det decreases under isotropic noise too",
    )
    # the paper's printed Theorem 1 versus Eq. 7 x Eq. 11 and Eq. 15
    c_paper = (1 - S_ / M_) / S_
    eq7_x_eq11 = -eta / 2 * sum((eta * c_paper / 2) * (g[j, :] * (g[0, :] + g[1, :]).T)[0] for j in range(n))
    check(eq7_x_eq11, trace_drift_leading.subs(c, c_paper), "Eq. 7 x Eq. 11 gives eta^2/(4S)(1 - S/M)")
    check(PAPER_THM1 / eq7_x_eq11, 2, "the printed Theorem 1 is twice Eq. 7 x Eq. 11")
    eq15_trace = -(eta**2) / 4 * ((g[0, :] + g[1, :]) * (g[0, :] + g[1, :]).T)[0]  # Eq. 15, f = trace, scale 1
    check(eq15_trace * c_paper, eq7_x_eq11, "Eq. 15 with f = trace and C = c lam agrees with /4")
    # every noise of the diagonal form decreases f = trace and f = log det when gradients align
    check(
        diagonal_noise_drift(sp.Matrix(g[0, :] + g[1, :]).T, [c * lam[0], c * lam[1]]),
        trace_drift_leading,
        "diagonal-noise formula reproduces Theorem 1",
    )


# --- Step 5: Hessian blocks, Schur complement, negative eigenvalues (R5) -----------------------------

hess_full = sp.hessian(L_valley, list(th) + list(hh))
B_block = sp.Matrix(n, m, lambda i, k: th[i] * sp.diff(lamf[i], hh[k]))
D_block = sum((th[i] ** 2 * sp.hessian(lamf[i], hh) for i in range(n)), sp.zeros(m, m)) / 2
A_blocks = [hl[i] / 2 - g[i, :].T * g[i, :] / lam[i] for i in range(n)]
schur_at_point = sum((th[i] ** 2 * A_blocks[i] for i in range(n)), sp.zeros(m, m))
negative_eigenvalue_slope = (
    2 * sum(Wd[i] * A_blocks[i].trace() for i in range(n)) / sum(Wd[i] * lam[i] for i in range(n))
)
negative_eigenvalue_slope_sgd = 2 * sum(A_blocks[i].trace() for i in range(n)) / sum(lam)
# 1+1-dimensional valley L = 1/2 t^2 lambda(u): values l0 = lambda, l1 = lambda', l2 = lambda''
_t, l0, l1, l2 = (
    sp.Symbol("t", real=True),
    sp.Symbol("l0", positive=True),
    sp.Symbol("l1", real=True),
    sp.Symbol("l2", real=True),
)
_H11 = sp.Matrix([[l0, _t * l1], [_t * l1, _t**2 * l2 / 2]])
_small_eig = (_H11.trace() - sp.sqrt(_H11.trace() ** 2 - 4 * _H11.det())) / 2
small_eigenvalue_series_1d = sp.collect(sp.expand(sp.series(_small_eig, _t, 0, 6).removeO()), _t, sp.factor)


def check_schur() -> None:
    P = sp.diag(*lamf)
    check(hess_full[:n, :n], P, "theta block = diag(lambda)")
    check(hess_full[:n, n:], B_block, "B_ik = theta_i d lambda_i / d thetahat_k")
    check(hess_full[n:, n:], D_block, "D = 1/2 sum theta_i^2 hess lambda_i")
    schur = D_block - B_block.T * P.inv() * B_block
    check(at_point(schur), schur_at_point, "Schur complement = sum theta_i^2 A_i exactly")
    # det(H - mu) = det(P - mu) det(S(mu) - mu), S(mu) = D - B^T (P - mu)^{-1} B, for symbol blocks
    mu = sp.Symbol("mu")
    Bs = sp.Matrix(n, m, lambda i, k: sp.Symbol(f"b_{i + 1}{k + 1}"))
    Ds = sp.Matrix(m, m, lambda k, l: sp.Symbol(f"dd_{min(k, l) + 1}{max(k, l) + 1}"))
    Ps = sp.diag(*lam)
    Hs = sp.Matrix(sp.BlockMatrix([[Ps, Bs], [Bs.T, Ds]]))
    Rmu = (Ps - mu * sp.eye(n)).inv()
    Smu = Ds - Bs.T * Rmu * Bs
    check(
        (Hs - mu * sp.eye(n + m)).det(),
        (Ps - mu * sp.eye(n)).det() * (Smu - mu * sp.eye(m)).det(),
        "det(H - mu) = det(P - mu) det(S(mu) - mu)",
    )
    # S(mu) - S(0) = -mu B^T P^-1 (P - mu)^-1 B: O(theta^2) B's times mu = O(theta^2) -> O(theta^4)
    check(Smu - (Ds - Bs.T * Ps.inv() * Bs), -mu * Bs.T * Ps.inv() * Rmu * Bs, "S(mu) - S(0) = O(mu |B|^2)")
    # exact: v = (-P^-1 B u, u) has v^T H v = u^T S u (Rayleigh quotient of the Schur complement)
    u = sp.Matrix(sp.symbols("u1:3"))
    v = (-Ps.inv() * Bs * u).col_join(u)
    check((v.T * Hs * v)[0], (u.T * (Ds - Bs.T * Ps.inv() * Bs) * u)[0], "v^T H v = u^T S u")
    # 1+1 dims: the small eigenvalue is t^2 (l2/2 - l1^2/l0) + O(t^4), and the t^4 term is generic
    uu = sp.Symbol("uu", real=True)
    lam_u = sp.Function("lam")(uu)
    H11 = sp.hessian(_t**2 * lam_u / 2, (_t, uu))
    H11 = H11.subs(sp.diff(lam_u, uu, 2), l2).subs(sp.diff(lam_u, uu), l1).subs(lam_u, l0)
    check(H11, _H11, "1+1 valley Hessian")
    check(small_eigenvalue_series_1d.coeff(_t, 2), l2 / 2 - l1**2 / l0, "t^2 coefficient = A")
    check(
        small_eigenvalue_series_1d.coeff(_t, 0)
        + small_eigenvalue_series_1d.coeff(_t, 1)
        + small_eigenvalue_series_1d.coeff(_t, 3),
        0,
        "no t^0, t^1, t^3 terms",
    )
    check(small_eigenvalue_series_1d.coeff(_t, 4), -(l1**2) / l0**2 * (l2 / 2 - l1**2 / l0), "t^4 coefficient")
    check_true(sp.simplify(small_eigenvalue_series_1d.coeff(_t, 4)) != 0, "the O(t^4) correction is present")
    # equilibrium: <L> = 1/2 sum lam_i W_ii, <tr S> = sum W_ii tr A_i
    th_mom = {
        "vars": list(th),
        "of": lambda mo: 1 if sum(mo) == 0 else Wd[mo.index(2)] if sorted(mo) == [0, 2] else sp.nan,
    }
    check(expectation(at_point(L_valley), th_mom), sum(lam[i] * Wd[i] for i in range(n)) / 2, "<L> = 1/2 sum lam W")
    check(
        expectation(schur_at_point.trace(), th_mom),
        sum(Wd[i] * A_blocks[i].trace() for i in range(n)),
        "<tr S> = sum W_ii tr A_i",
    )
    check(
        negative_eigenvalue_slope,
        expectation(schur_at_point.trace(), th_mom) / expectation(at_point(L_valley), th_mom),
        "slope = <tr S> / <L>",
    )
    check(
        negative_eigenvalue_slope.subs({Wd[0]: Wd[1]}),
        negative_eigenvalue_slope_sgd,
        "equal W_ii (SGD noise, leading order): slope = 2 sum tr A_i / T",
    )
    check(
        sp.cancel(negative_eigenvalue_slope.subs({Wd[0]: W_sgd[0], Wd[1]: W_sgd[1]})).subs(eta, 0),
        negative_eigenvalue_slope_sgd,
        "exact SGD W_ii -> the same slope as eta -> 0",
    )


# --- Step 6: the two toys of Sec. 4.2 --------------------------------------------------------------

t1, t2, t3, t4 = sp.symbols("t1:5", real=True)
TOY_A = sp.Abs(t3 + t4) * t1**2 + sp.Abs(t3 + 2 * t4) * t2**2
TOY_B = (4 - 2 * sp.exp(-t3 - t4)) * t1**2 + sp.exp(-((t3 - t4) ** 2)) * t2**2
iso = sp.Symbol("s_iso", positive=True)  # isotropic noise variance in the theta block
u_a, w_a = sp.symbols("u w", positive=True)  # toy A region: t3 + t4 = u > 0, t3 + 2 t4 = w > 0
TOY_A_REGION = {t3: 2 * u_a - w_a, t4: w_a - u_a}
p_b, q_b = sp.symbols("p q", real=True)  # toy B: p = t3 + t4, q = t3 - t4
TOY_B_PQ = {t3: (p_b + q_b) / 2, t4: (p_b - q_b) / 2}


def toy_quantities(Lt):
    lam_t = [sp.diff(Lt, t1, 2), sp.diff(Lt, t2, 2)]
    g_t = sp.Matrix(2, 2, lambda i, k: sp.diff(lam_t[i], (t3, t4)[k]))
    # away from toy A's kinks (t3 + t4 = 0, t3 + 2 t4 = 0) the DiracDelta terms of hess |.| vanish
    hl_t = [sp.hessian(li, (t3, t4)).replace(sp.DiracDelta, lambda *a: 0) for li in lam_t]
    gT = (g_t[0, :] + g_t[1, :]).T
    gLD = sp.Matrix([sum(g_t[i, k] / lam_t[i] for i in range(2)) for k in range(2)])
    sgd = [c * lam_t[0], c * lam_t[1]]
    return {
        "lambda": lam_t,
        "grad_lambda": g_t,
        "trace_drift_sgd": diagonal_noise_drift(gT, sgd, lam_t, g_t),
        "logdet_drift_isotropic": diagonal_noise_drift(gLD, [iso, iso], lam_t, g_t),
        "trace_drift_isotropic": diagonal_noise_drift(gT, [iso, iso], lam_t, g_t),
        "logdet_drift_sgd": diagonal_noise_drift(gLD, sgd, lam_t, g_t),
        "schur_slope_sgd": 2
        * sum((hl_t[i] / 2 - g_t[i, :].T * g_t[i, :] / lam_t[i]).trace() for i in range(2))
        / (lam_t[0] + lam_t[1]),
    }


toy_a = toy_quantities(TOY_A)
toy_b = toy_quantities(TOY_B)


def check_toys() -> None:
    for Lt, q in ((TOY_A, toy_a), (TOY_B, toy_b)):
        check(Lt, (t1**2 * q["lambda"][0] + t2**2 * q["lambda"][1]) / 2, "L = 1/2 sum theta_i^2 lambda_i")
    u_, w_, reg = u_a, w_a, TOY_A_REGION
    la = [e.subs(reg) for e in toy_a["lambda"]]
    check(sp.Matrix(la), sp.Matrix([2 * u_, 2 * w_]), "toy A: lambda = (2|t3 + t4|, 2|t3 + 2 t4|)")
    check(toy_a["grad_lambda"].subs(reg), sp.Matrix([[2, 2], [2, 4]]), "toy A: constant gradients")
    check(toy_a["trace_drift_sgd"].subs(reg), -13 * eta**2 * c, "toy A: E dT = -13 eta^2 c")
    check(
        toy_a["logdet_drift_isotropic"].subs(reg),
        -(eta**2) * iso / 4 * ((1 / u_ + 1 / w_) ** 2 + (1 / u_ + 2 / w_) ** 2),
        "toy A: E d log det (isotropic)",
    )
    # the cross terms are both -(eta^2 x/4) grad T . grad log det, with grad T . grad log det > 0 here
    cross = 20 / (2 * u_) + 32 / (2 * w_)
    check(toy_a["trace_drift_isotropic"].subs(reg), -(eta**2) * iso / 4 * cross, "toy A: E dT (isotropic)")
    check(toy_a["logdet_drift_sgd"].subs(reg), -(eta**2) * c / 4 * cross, "toy A: E d log det (SGD)")
    # opposite signs (t3 + t4 = u > 0, t3 + 2 t4 = -w < 0): the cross term is 8/lambda_2 - 4/lambda_1
    reg2 = {t3: 2 * u_ + w_, t4: -w_ - u_}
    check(
        toy_a["logdet_drift_sgd"].subs(reg2),
        -(eta**2) * c / 4 * (8 / (2 * w_) - 4 / (2 * u_)),
        "toy A, opposite signs: cross term 8/lam2 - 4/lam1",
    )
    # R5 in toy A: lambda linear, D = 0, so A_i = -g_i g_i^T / lam_i
    check(
        toy_a["schur_slope_sgd"].subs(reg),
        -2 * (8 / (2 * u_) + 20 / (2 * w_)) / (2 * u_ + 2 * w_),
        "toy A: slope = -2 (|g1|^2/lam1 + |g2|^2/lam2) / T",
    )
    # toy B: lambda_1 = 8 - 4 exp(-(t3 + t4)), lambda_2 = 2 exp(-(t3 - t4)^2), gradients orthogonal
    check(
        sp.Matrix(toy_b["lambda"]), sp.Matrix([8 - 4 * sp.exp(-t3 - t4), 2 * sp.exp(-((t3 - t4) ** 2))]), "toy B lambda"
    )
    check((toy_b["grad_lambda"][0, :] * toy_b["grad_lambda"][1, :].T)[0], 0, "toy B: grad lambda_1 . grad lambda_2 = 0")
    lb, gb = toy_b["lambda"], toy_b["grad_lambda"]
    n1, n2 = (gb[0, :] * gb[0, :].T)[0], (gb[1, :] * gb[1, :].T)[0]
    check(toy_b["trace_drift_sgd"], -(eta**2) * c / 4 * (n1 + n2), "toy B: E dT (SGD)")
    check(
        toy_b["logdet_drift_isotropic"],
        -(eta**2) * iso / 4 * (n1 / lb[0] ** 2 + n2 / lb[1] ** 2),
        "toy B: E dlogdet (iso)",
    )
    check(toy_b["logdet_drift_sgd"], -(eta**2) * c / 4 * (n1 / lb[0] + n2 / lb[1]), "toy B: E dlogdet (SGD)")
    check(toy_b["trace_drift_isotropic"], -(eta**2) * iso / 4 * (n1 / lb[0] + n2 / lb[1]), "toy B: E dT (iso)")


def check_paper_negative_eigenvalues() -> None:
    """App. A.3 keeps only D; in toy A D = 0 but the Schur complement is negative definite."""
    s, a1, a2 = sp.Symbol("s", positive=True), sp.Symbol("a1", positive=True), sp.Symbol("a2", positive=True)
    u_, w_ = sp.Rational(3, 2), 2  # t3 = 1, t4 = 1/2: lambda = (3, 4)
    point = {t1: s * a1, t2: s * a2, t3: 2 * u_ - w_, t4: w_ - u_}
    H = sp.hessian(TOY_A, (t1, t2, t3, t4)).subs(point)
    check(H[2:, 2:], sp.zeros(2, 2), "toy A: D block = 0 (lambda linear): App. A.3 predicts no negative eigenvalue")
    P, B = H[:2, :2], H[:2, 2:]
    S_toy = -B.T * P.inv() * B
    check(S_toy.trace(), -(s**2) * (8 * a1**2 / 3 + 20 * a2**2 / 4), "tr S = -s^2 (8 a1^2/lam1 + 20 a2^2/lam2)")
    check_true(sp.factor(S_toy.det()) == 0 or sp.factor(S_toy.det()).is_nonnegative, "det S >= 0 with tr S < 0: S NSD")
    # small eigenvalues of H: mu = s^2 nu, the lowest order in s is det(P) det(nu - S/s^2)
    mu, nu = sp.symbols("mu nu")
    cp = sp.expand((H - mu * sp.eye(4)).det().subs(mu, s**2 * nu))
    low = sp.expand(cp / s**4).subs(s, 0)
    check(low, P.det() * (nu * sp.eye(2) - S_toy / s**2).det(), "small eigenvalues = eig(S) + O(s^4)")
    # exact: at s = 1/10 and 1/20, a = (1, 1) the quartic has exactly two negative roots, and their
    # sum approaches tr S with an error that shrinks ~16x when s halves (O(s^4))
    errs = []
    for sv in (sp.Rational(1, 10), sp.Rational(1, 20)):
        cp_num = sp.Poly((H - mu * sp.eye(4)).det().subs({s: sv, a1: 1, a2: 1}), mu)
        check_true(cp_num.count_roots(-sp.oo, 0) == 2, f"two negative eigenvalues at s = {sv}")
        check_true(cp_num.count_roots(0, sp.oo) == 2, f"two positive eigenvalues at s = {sv}")
        neg = [r for r in cp_num.nroots(n=30) if r < 0]
        errs.append(abs(sum(neg) - S_toy.subs({s: sv, a1: 1, a2: 1}).trace()))
    check_true(12 < errs[0] / errs[1] < 20, f"error ratio {errs[0] / errs[1]} ~ 16: O(s^4)")


# --- Step 12: true mini-batch noise is multiplicative ------------------------------------------------


def _multiplicative_noise():
    """E_theta Cov_k g_k(theta) for NEX examples, gradients in R^2, one theta, to first order in w = E theta^2."""
    nex = 3
    tq = sp.Symbol("theta", real=True)
    w, f4, f6 = sp.symbols("w f4 f6", positive=True)  # E theta^2 = w; E theta^4, E theta^6 = O(w^2), O(w^3)
    vec = lambda name: [sp.Matrix(sp.symbols(f"{name}{k}_1:3", real=True)) for k in range(nex)]  # noqa: E731
    g0, Jv, Tv, Qv = vec("a"), vec("b"), vec("t"), vec("q")
    gk = [g0[k] + Jv[k] * tq + Tv[k] * tq**2 / 2 + Qv[k] * tq**3 for k in range(nex)]
    mean = lambda xs: sum(xs, sp.zeros(2, 1)) / nex  # noqa: E731
    cov = lambda xs, ys: sum((x * y.T for x, y in zip(xs, ys)), sp.zeros(2, 2)) / nex - mean(xs) * mean(ys).T  # noqa: E731
    moments = {0: 1, 1: 0, 2: w, 3: 0, 4: f4, 5: 0, 6: f6}  # symmetric theta
    E = lambda e: sum(cf * moments[mon[0]] for mon, cf in sp.Poly(sp.expand(e), tq).terms())  # noqa: E731
    exact = cov(gk, gk).applyfunc(E)
    formula = (
        cov(g0, g0)
        + sum((j * w * j.T for j in Jv), sp.zeros(2, 2)) / nex
        - mean(Jv) * w * mean(Jv).T
        + (cov(g0, [t * w for t in Tv]) + cov(g0, [t * w for t in Tv]).T) / 2
    )
    return exact, formula, w, (f4, f6)


def check_multiplicative_noise() -> None:
    exact, formula, w, higher = _multiplicative_noise()
    rest = (exact - formula).applyfunc(sp.expand)
    check_true(
        all(w not in r.free_symbols and sp.expand(r.subs({h: 0 for h in higher})) == 0 for r in rest),
        "E_theta Cov_k g_k(theta) = Cov(g0) + mean J W J^T - Jbar W Jbar^T + sym Cov(g0, T:W)/2 + O(E theta^4)",
    )
    check_true(any(sp.expand(r) != 0 for r in rest), "the remainder is not identically zero (it is O(w^2))")


def derive() -> dict:
    check_valley()
    check_stationary()
    check_variance_factor()
    check_fdr()
    check_drift()
    check_schur()
    check_toys()
    check_paper_negative_eigenvalues()
    check_multiplicative_noise()
    return {
        "stationary_second_moments": sp.ImmutableMatrix(W_exact),
        "stationary_second_moments_leading": sp.ImmutableMatrix(W_leading),
        "W_ii_sgd": sp.ImmutableMatrix(W_sgd),
        "spectral_drift": drift_general,
        "trace_drift_leading": sp.factor(trace_drift_leading),
        "designed_drift_leading": designed_drift_leading,
        "logdet_drift_isotropic": logdet_drift_isotropic,
        "schur_block_A_1": sp.ImmutableMatrix(A_blocks[0]),
        "small_eigenvalue_1plus1": small_eigenvalue_series_1d,
        "negative_eigenvalue_slope": negative_eigenvalue_slope,
        "negative_eigenvalue_slope_sgd": negative_eigenvalue_slope_sgd,
        **{f"toy_A_{k}(u = t3 + t4 > 0, w = t3 + 2 t4 > 0)": sp.factor(toy_a[k].subs(TOY_A_REGION)) for k in TOY_KEYS},
        **{
            f"toy_B_{k}(p = t3 + t4, q = t3 - t4)": sp.factor(sp.expand(sp.simplify(toy_b[k].subs(TOY_B_PQ))))
            for k in TOY_KEYS
        },
    }


TOY_KEYS = ("trace_drift_sgd", "logdet_drift_isotropic", "trace_drift_isotropic", "logdet_drift_sgd", "schur_slope_sgd")


ASSUMPTIONS = [
    "Valley L = 1/2 sum_{i<=n} theta_i^2 lambda_i(theta_hat) (paper Eq. 1), n = m = 2, lambda_i > 0.",
    "Update theta' = theta - eta (diag(lambda) theta + xi), theta_hat' = theta_hat - eta (grad_hat L + xi_hat); "
    "xi, xi_hat zero-mean with covariances C, C_hat, fresh each step, independent of the state.",
    "Time-scale separation: the theta block is stationary at frozen theta_hat; E theta^(2p) = O(eta^p).",
    "SGD noise aligned with the Hessian: C = c diag(lambda) with c = c(S, M) = (M - S)/(S (M - 1)) "
    "(the paper: (1/S)(1 - S/M), smaller by the factor (M - 1)/M); C_hat = 0 for SGD and isotropic noise.",
]
STEPS = [
    "d L/d theta_i = theta_i lambda_i, d^2 L/d theta_i^2 = lambda_i, grad_hat L = 1/2 sum theta_i^2 grad lambda_i.",
    "theta' = A theta - eta xi, A = I - eta diag(lambda); taking expectations of theta' theta'^T gives "
    "W = A W A + eta^2 C, solved entrywise: W_ij = eta C_ij / (lambda_i + lambda_j - eta lambda_i lambda_j) "
    "(checked for n = 2 and 3); leading order eta C_ij/(lambda_i + lambda_j), next order eta^2.",
    "The paper's route (master equation, Eq. 3, for O = theta_i theta_j; Eqs. 8-9: <theta_i dL/dtheta_i> = "
    "(eta/2) <C~_ii>, C~_ii = C_ii + lambda_i^2 theta_i^2) gives the same W; with C = c diag(lambda), "
    "W_ii = eta c/(2 - eta lambda_i) (Eq. 11 with the exact c).",
    "Fluctuation-dissipation (Yaida): |theta'|^2 - |theta|^2 = -2 eta theta.g_B + eta^2 |g_B|^2, so "
    "stationarity gives <theta.g_B> = (eta/2) <|g_B|^2> exactly; the Lyapunov W satisfies it for any C.",
    "Drift of F = f(lambda(theta_hat)): grad F = sum_i f_i grad lambda_i; delta = -eta (1/2 sum theta_j^2 "
    "grad lambda_j + xi_hat); E delta = -(eta/2) sum W_jj grad lambda_j; a second-order Taylor expansion "
    "gives E dF = -(eta/2) sum_j W_jj grad F.grad lambda_j + (eta^2/2) tr(C_hat hess F) + O(eta^3), checked "
    "by expanding a cubic F with moments W = O(eta), E theta^4 = O(eta^2): the remainder starts at eta^3 and "
    "comes only from third moments of xi_hat (O(eta^4) for symmetric noise). With exact W_jj the first term "
    "is exact in eta.",
    "Theorem 1 (f = trace, W_jj = eta c/2): E dT = -(eta^2 c/4) |sum_i grad lambda_i|^2. The paper's Eq. 7 "
    "times Eq. 11 gives -(eta^2/(4S))(1 - S/M)|...|^2 and Eq. 15 with f = trace, C = c lambda agrees; the "
    "printed Theorem 1 coefficient eta^2/(2S) is twice that (ERRATA).",
    "Theorem 2 (C_ii = scale lambda_i f_i, so W_ii = eta scale f_i/(2 - eta lambda_i), Eq. 14): E df = "
    "-(eta^2 scale/4) |sum_i f_i grad lambda_i|^2. Corollary 2.1: f = log det gives lambda_i f_i = 1, "
    "isotropic noise, E d log det = -(eta^2 scale/4)|sum_i grad lambda_i/lambda_i|^2, and E dDet = "
    "-(eta^2 scale/(4 Det))|grad Det|^2. General diagonal noise s_j: E df = -(eta^2/4) sum_j (s_j/lambda_j) "
    "grad f.grad lambda_j; so SGD noise changes log det and isotropic noise changes the trace by the same "
    "cross term grad T.grad log det.",
    "Full Hessian at theta != 0: [[diag(lambda), B], [B^T, D]], B_ik = theta_i d_k lambda_i, D = 1/2 sum "
    "theta_i^2 hess lambda_i. Its Schur complement is exactly sum_i theta_i^2 A_i, A_i = 1/2 hess lambda_i - "
    "grad lambda_i grad lambda_i^T / lambda_i. det(H - mu) = det(P - mu) det(S(mu) - mu) with S(mu) - S(0) "
    "= -mu B^T P^-1 (P - mu)^-1 B = O(theta^4) for mu = O(theta^2): the m small eigenvalues are those of "
    "S + O(theta^4) (1+1 example: t^2 (l2/2 - l1^2/l0) + O(t^4), the t^4 term present). v = (-P^-1 B u, u) "
    "gives v^T H v = u^T S u exactly.",
    "Equilibrium: <L> = 1/2 sum lambda_i W_ii, <tr S> = sum W_ii tr A_i; if every A_i is NSD the small "
    "eigenvalues are all <= 0 and <sum of negative eigenvalues> = <tr S> + O(eta^2), slope = 2 sum W_ii tr A_i "
    "/ sum W_ii lambda_i, which for SGD noise (leading order) is 2 sum tr A_i / T.",
    "App. A.3 keeps only D and drops -B^T diag(lambda)^-1 B, of the same order theta^2. Toy A "
    "(lambda linear, D = 0) at t3 = 1, t4 = 1/2, theta = (1/10, 1/10): the exact 4x4 characteristic "
    "polynomial has two negative roots, summing to tr S within O(s^4); small eigenvalues = eig(S) + O(s^4) "
    "symbolically; slope -2 (|grad lambda_1|^2/lambda_1 + |grad lambda_2|^2/lambda_2)/T (ERRATA).",
    "Toys (lambda = 2 x coefficient): A has constant gradients (2, 2), (2, 4) where t3 + t4 > 0, t3 + 2 t4 > 0, "
    "E dT = -13 eta^2 c; B has orthogonal gradients 4 e^{-(t3+t4)} (1, 1) and -4 (t3 - t4) e^{-(t3-t4)^2} (1, -1). "
    "Any diagonal noise s_j changes T and log det at the rates above; SGD noise changes log det, and isotropic "
    "noise T, by -(eta^2 x/4) grad T . grad log det. That cross term is positive in toy A's region u, w > 0 and "
    "everywhere in toy B (where lambda_1 > 0, i.e. t3 + t4 > -log 2), so at leading order each noise lowers "
    "both T and log det there; they differ only in the rates. (In toy A with sign(t3 + t4) != sign(t3 + 2 t4) "
    "the cross term is 8/lambda_2 - 4/lambda_1 and can be negative.)",
    "True mini-batch noise is multiplicative: the per-example gradients g_k(theta) = g0_k + J_k theta + "
    "1/2 T_k[theta, theta] + ... depend on theta, and with E theta = 0, symmetric theta, "
    "E_theta Cov_k g_k(theta) = Cov_k(g0) + mean_k J_k W J_k^T - Jbar W Jbar^T + 1/2 (Cov_k(g0, T_k:W) + "
    "transpose) + O(E theta^4) (checked for 3 examples with cubic gradients; the remainder involves only "
    "E theta^4). So W solves the linear equation W = A W A + eta^2 c C_theta(W), and the noise adds a "
    "relative O(eta) to W and to C_hat: the Gaussian-noise prediction with C at the floor is leading order only.",
]


def report() -> str:
    return section("R3-R5 SGD in a degenerate valley (`proofs.degenerate_valley`)", ASSUMPTIONS, STEPS, derive())
