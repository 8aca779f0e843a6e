"""R1: mean-square stability of SGD on per-example quadratics.

Update rule: w_{t+1} = w_t - eta grad L_B(w_t) with L_i(w) = 1/2 w^T H_i w (minimum at 0)
and L_B = sum_i w_i L_i, where the batch weights are w_i = 1_i / S (a uniform S-subset,
without replacement) or w_i = n_i / S (n_i = how often example i is among S iid uniform
draws, with replacement). A fresh batch each step, independent of the past.

Everything rests on one lemma about the weights (``batch_lemma``):
N E[w_i] = 1, N (E[w_i^2] - E[w_i w_j]) = c and N^2 E[w_i w_j] = 1 - c (i != j).
"""

from __future__ import annotations

import itertools

import sympy as sp

from proofs._util import check, check_true, section

eta, lam = sp.symbols("eta lam", real=True)
s2, c = sp.symbols("s2 c", nonnegative=True)
S, N = sp.symbols("S N", positive=True, integer=True)
lam_max, s_nu, rho_LinvQ = sp.symbols("lam_max s rho_LinvQ", positive=True)
SCHEMES = ("without_replacement", "with_replacement")


# --- Step 1: the batch-weight lemma and the variance factor c(S, N) -------------------------------


def weight_moments(scheme: str):
    """(E[w_i], E[w_i^2], E[w_i w_j] for i != j) of the weights in h_B = sum_i w_i h_i."""
    if scheme == "without_replacement":  # w_i = 1_i / S and 1_i^2 = 1_i; count S-subsets
        p_i = sp.combsimp(sp.binomial(N - 1, S - 1) / sp.binomial(N, S))
        p_ij = sp.combsimp(sp.binomial(N - 2, S - 2) / sp.binomial(N, S))
        check(p_i, S / N, "P(i in B)")
        check(p_ij, S * (S - 1) / (N * (N - 1)), "P(i, j in B)")
        return p_i / S, p_i / S**2, p_ij / S**2
    # n_i = sum_k [J_k = i] over S iid uniform draws: pairs (k, l) with k = l contribute
    # S * (1/N), pairs with k != l contribute S (S - 1) / N^2.
    return (S / N) / S, (S / N + S * (S - 1) / N**2) / S**2, (S * (S - 1) / N**2) / S**2


def batch_lemma(scheme: str):
    """Return (a, b) = (N (E w_i^2 - E w_i w_j), N^2 E w_i w_j), checking N E w_i = 1, a + b = 1."""
    m1, m2, m11 = weight_moments(scheme)
    check(N * m1, 1, "the batch mean is unbiased")
    a, b = sp.factor(sp.simplify(N * (m2 - m11))), sp.factor(sp.simplify(N**2 * m11))
    check(a + b, 1, "coefficients of mean(h_i^2) and lam^2 add to one")
    return a, b


def _variance_factor(scheme: str):
    """c from Var[h_B] = E[h_B^2] - lam^2 with m_sq = mean(h_i^2) = s2 + lam^2."""
    _, m2, m11 = weight_moments(scheme)
    m_sq = s2 + lam**2
    # E[h_B^2] = sum_i E[w_i^2] h_i^2 + sum_{i != j} E[w_i w_j] h_i h_j
    second = m2 * N * m_sq + m11 * (N**2 * lam**2 - N * m_sq)
    var = sp.simplify(second - lam**2)
    factor = sp.factor(sp.simplify(var / s2))
    check_true(lam not in factor.free_symbols, "Var[h_B] is proportional to s2 alone")
    return factor


variance_factor = {sch: _variance_factor(sch) for sch in SCHEMES}
variance_factor_without_replacement = variance_factor["without_replacement"]
variance_factor_with_replacement = variance_factor["with_replacement"]


def _batches(n: int, s: int, scheme: str):
    """All equally likely batches: S-subsets, or ordered S-tuples with replacement."""
    if scheme == "without_replacement":
        return list(itertools.combinations(range(n), s))
    return list(itertools.product(range(n), repeat=s))


def _avg(items):
    items = list(items)
    return sum(items, sp.S.Zero) / len(items)


def check_variance_factor() -> None:
    for sch in SCHEMES:
        a, _ = batch_lemma(sch)
        check(a, variance_factor[sch], f"lemma coefficient is c ({sch})")
    check(variance_factor_without_replacement, (N - S) / (S * (N - 1)), "c without replacement")
    check(variance_factor_with_replacement, 1 / S, "c with replacement")
    for n, s in [(4, 2), (3, 1), (3, 3), (5, 3)]:  # exact enumeration with symbolic data
        a = sp.symbols(f"a1:{n + 1}", real=True)
        abar = sum(a) / n
        pop_var = _avg((ai - abar) ** 2 for ai in a)
        for sch in SCHEMES:
            var = _avg((sum(a[i] for i in B) / s) ** 2 for B in _batches(n, s, sch)) - abar**2
            check(var, variance_factor[sch].subs({N: n, S: s}) * pop_var, f"enumeration N={n} S={s} {sch}")


# --- Step 2: 1-D second moment ------------------------------------------------------------------

psi, h_B = sp.symbols("psi h_B", real=True)
psi_next = psi - eta * sp.diff(h_B * psi**2 / 2, psi)  # one SGD step on L_B = h_B psi^2 / 2
step_factor = sp.factor(psi_next / psi)  # X = 1 - eta h_B, affine in h_B
# E[X^2] = E[X]^2 + Var[X]; E[X] = X(lam) (affine), Var[X] = (dX/dh_B)^2 Var[h_B] = eta^2 c s2
stability_factor = step_factor.subs(h_B, lam) ** 2 + sp.diff(step_factor, h_B) ** 2 * c * s2
_roots = [r for r in sp.solve(sp.Eq(stability_factor, 1), eta) if r != 0]
eta_star_1d = _roots[0]


def check_one_dimensional() -> None:
    check(psi_next, (1 - eta * h_B) * psi, "SGD step")
    check(sp.diff(step_factor, h_B, 2), 0, "step factor affine in h_B")
    # the same q from raw moments E[h_B] = lam, E[h_B^2] = lam^2 + c s2
    poly = sp.Poly(sp.expand(step_factor**2), h_B)
    moments = {0: 1, 1: lam, 2: lam**2 + c * s2}
    check(sum(cf * moments[k[0]] for k, cf in poly.terms()), stability_factor, "E[X^2] from raw moments")
    check(stability_factor, (1 - eta * lam) ** 2 + eta**2 * c * s2, "q in the completed-square form")
    h = sp.symbols("h1:4", real=True)  # exact enumeration, N = 3, S = 2, symbolic h_i
    mean_h = sum(h) / 3
    var_h = _avg((hi - mean_h) ** 2 for hi in h)
    for sch in SCHEMES:
        q_enum = _avg((1 - eta * sum(h[i] for i in B) / 2) ** 2 for B in _batches(3, 2, sch))
        target = stability_factor.subs({lam: mean_h, s2: var_h, c: variance_factor[sch].subs({N: 3, S: 2})})
        check(q_enum, target, f"q by enumeration ({sch})")
    # boundary q = 1: q - 1 = eta (eta (lam^2 + c s2) - 2 lam), roots 0 and eta*
    check(stability_factor - 1, eta * (eta * (lam**2 + c * s2) - 2 * lam), "q - 1 factorises")
    check_true(len(_roots) == 1, "exactly one nonzero root")
    check(eta_star_1d, 2 * lam / (lam**2 + c * s2), "eta* in closed form")
    lp, u = sp.symbols("lam u", positive=True)  # eta = eta* u / (1 + u) in (0, eta*), eta* (1 + u) beyond
    q_pos, es = stability_factor.subs(lam, lp), eta_star_1d.subs(lam, lp)
    check_true(sp.factor(sp.simplify(q_pos.subs(eta, es * u / (1 + u)) - 1)).is_negative, "q < 1 inside")
    check_true(sp.factor(sp.simplify(q_pos.subs(eta, es * (1 + u)) - 1)).is_positive, "q > 1 beyond eta*")


# --- Step 3: D dimensions ----------------------------------------------------------------------


def sym_matrix(name: str, d: int = 2) -> sp.Matrix:
    return sp.Matrix(d, d, lambda i, j: sp.Symbol(f"{name}_{min(i, j)}{max(i, j)}", real=True))


def mean_matrix(Hs):
    return sum(Hs, sp.zeros(*Hs[0].shape)) / len(Hs)


def L_op(Sig, Hs):
    """L(Sigma) = H Sigma + Sigma H."""
    H = mean_matrix(Hs)
    return H * Sig + Sig * H


def noise_op(Sig, Hs):
    """N(Sigma) = (1/N) sum (H_i - H) Sigma (H_i - H)."""
    H = mean_matrix(Hs)
    return mean_matrix([(Hi - H) * Sig * (Hi - H) for Hi in Hs])


def Q_op(Sig, Hs, cc=c):
    """Q(Sigma) = (1 - c) H Sigma H + c (1/N) sum H_i Sigma H_i."""
    H = mean_matrix(Hs)
    return (1 - cc) * H * Sig * H + cc * mean_matrix([Hi * Sig * Hi for Hi in Hs])


def T_op(Sig, Hs, e=eta, cc=c):
    """T(eta) Sigma = E[(I - eta H_B) Sigma (I - eta H_B)] = Sigma - eta L + eta^2 Q."""
    return Sig - e * L_op(Sig, Hs) + e**2 * Q_op(Sig, Hs, cc)


H_, Sig_, M_ = sp.MatrixSymbol("H", 2, 2), sp.MatrixSymbol("Sigma", 2, 2), sp.MatrixSymbol("M_Sigma", 2, 2)
second_moment_map = Sig_ - eta * (H_ * Sig_ + Sig_ * H_) + eta**2 * ((1 - c) * H_ * Sig_ * H_ + c * M_)
eta_star_general = 1 / rho_LinvQ
# necessary conditions (checked in check_necessary_conditions): |1 - x| <= 1 with x = eta lam_max,
# and eta^2 c s^2 <= 1 with s^2 = rho(N)
_x = sp.Symbol("x", real=True)
_sharp_interval = sp.solve_univariate_inequality((1 - _x) ** 2 <= 1, _x, relational=False)
eta_bound_sharpness = _sharp_interval.sup / lam_max
_e, _c = sp.symbols("e c_pos", positive=True)  # the noise bound constrains only where c > 0
_noise_roots = sp.solve(sp.Eq(_e**2 * _c * s_nu**2, 1), _e)
eta_bound_noise = _noise_roots[0].subs(_c, c)


def check_matrix_map() -> None:
    n = 3
    Hs, Sig = [sym_matrix(f"H{i}") for i in range(n)], sym_matrix("Sigma")
    I2 = sp.eye(2)
    for sch in SCHEMES:
        # expectation through the weight moments: E[H_B] = H, E[H_B Sig H_B] = sum m_ij H_i Sig H_j
        m1, m2, m11 = (m.subs(N, n) for m in weight_moments(sch))
        pair = sum(
            (((m2 if i == j else m11) * Hs[i] * Sig * Hs[j]) for i in range(n) for j in range(n)), sp.zeros(2, 2)
        )
        first = sum((m1 * (Hi * Sig + Sig * Hi) for Hi in Hs), sp.zeros(2, 2))
        cc = variance_factor[sch].subs(N, n)
        check(Sig - eta * first + eta**2 * pair, T_op(Sig, Hs, eta, cc), f"T(eta) from the lemma ({sch})")
        for s in (1, 2):  # exact enumeration of all batches
            enum = mean_matrix(
                [
                    (I2 - eta * mean_matrix([Hs[i] for i in B])) * Sig * (I2 - eta * mean_matrix([Hs[i] for i in B]))
                    for B in _batches(n, s, sch)
                ]
            )
            check(enum, T_op(Sig, Hs, eta, cc.subs(S, s)), f"T(eta) by enumeration S={s} ({sch})")
    # T(eta) - I = eta (eta Q - L); so T Sigma = Sigma  <=>  Q Sigma = (1/eta) L Sigma
    check(T_op(Sig, Hs) - Sig, eta * (eta * Q_op(Sig, Hs) - L_op(Sig, Hs)), "T - I = eta (eta Q - L)")
    check(T_op(Sig, Hs) - Sig, eta**2 * (Q_op(Sig, Hs) - L_op(Sig, Hs) / eta), "fixed point <=> Q = L / eta")
    # D = 1: L = 2 lam, Q = (1 - c) lam^2 + c mean(h_i^2) with mean(h_i^2) = s2 + lam^2
    L1, Q1 = 2 * lam, (1 - c) * lam**2 + c * (s2 + lam**2)
    check(1 / (Q1 / L1), eta_star_1d, "D = 1: 1 / rho(L^-1 Q) = eta*_1d")
    check(1 - eta * L1 + eta**2 * Q1, stability_factor, "D = 1: T(eta) = q")
    # diagonal H_i: diagonal of Sigma evolves coordinatewise by the 1-D factor
    d = sp.symbols("d1:4_1:3", real=True)
    Hd = [sp.diag(d[2 * i], d[2 * i + 1]) for i in range(n)]
    TS = T_op(Sig, Hd)
    for j in range(2):
        hj = [d[2 * i + j] for i in range(n)]
        lj = sum(hj) / n
        qj = stability_factor.subs({lam: lj, s2: _avg((h - lj) ** 2 for h in hj)}, simultaneous=True)
        check(TS[j, j], qj * Sig[j, j], f"diagonal H_i: coordinate {j} follows q_j")


def check_necessary_conditions() -> None:
    Hs, Sig = [sym_matrix(f"H{i}") for i in range(3)], sym_matrix("Sigma")
    H = mean_matrix(Hs)
    check(Q_op(Sig, Hs), H * Sig * H + c * noise_op(Sig, Hs), "Q = H Sig H + c N")
    A = sp.eye(2) - eta * H
    check(T_op(Sig, Hs), A * Sig * A + eta**2 * c * noise_op(Sig, Hs), "T = D + eta^2 c N")
    vec = lambda X: X.reshape(4, 1)  # noqa: E731  (row-major vec: vec(A X A^T) = (A kron A) vec X)
    check(vec(A * Sig * A), sp.kronecker_product(A, A) * vec(Sig), "D = A kron A")
    # rho(D) = max_j (1 - eta lam_j)^2 <= 1 with x = eta lam_j: x in [0, 2]
    check_true(_sharp_interval == sp.Interval(0, 2), "|1 - eta lam| <= 1 iff 0 <= eta lam <= 2")
    check(eta_bound_sharpness, 2 / lam_max, "sharpness bound")
    check_true(len(_noise_roots) == 1, "one positive root of eta^2 c s^2 = 1")
    check(eta_bound_noise, 1 / (sp.sqrt(c) * s_nu), "noise bound")


# --- Step 3b: random reshuffling (an epoch map, not a one-step map) ---------------------------------


def epoch_factor_1d(hs, s: int, e=eta):
    """1-D reshuffling: E_pi[prod_b (1 - eta h_{B_b})^2] over all permutations, k = N // s batches."""
    n = len(hs)
    prods = [
        sp.Mul(*[(1 - e * sum(hs[i] for i in p[b * s : (b + 1) * s]) / s) ** 2 for b in range(n // s)])
        for p in itertools.permutations(range(n))
    ]
    return _avg(prods)


def check_reshuffle() -> None:
    h = sp.symbols("h1:5", real=True)
    # each batch position of a reshuffled epoch is marginally a uniform S-subset
    perms = list(itertools.permutations(range(4)))
    for b in range(2):
        counts = {}
        for p in perms:
            key = frozenset(p[2 * b : 2 * b + 2])
            counts[key] = counts.get(key, 0) + 1
        check_true(len(counts) == 6 and set(counts.values()) == {4}, f"batch {b} is a uniform 2-subset")
    # S = 1: every epoch visits each example once, so the epoch factor is deterministic
    check(epoch_factor_1d(h[:3], 1), sp.Mul(*[(1 - eta * hi) ** 2 for hi in h[:3]]), "S = 1: prod (1 - eta h_i)^2")
    # N = 4, S = 2: the average over the 3 pair partitions, not q^2 of the one-step map
    parts = [((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2))]
    by_parts = _avg(sp.Mul(*[(1 - eta * (h[i] + h[j]) / 2) ** 2 for i, j in pt]) for pt in parts)
    check(epoch_factor_1d(h, 2), by_parts, "N = 4, S = 2: mean over pair partitions")
    mean_h = sum(h) / 4
    q_one = stability_factor.subs(
        {
            lam: mean_h,
            s2: _avg((hi - mean_h) ** 2 for hi in h),
            c: variance_factor_without_replacement.subs({N: 4, S: 2}),
        }
    )
    check_true(sp.expand(epoch_factor_1d(h, 2) - q_one**2) != 0, "epoch factor differs from q^2")


# --- Step 4: almost-sure (Lyapunov) exponent -----------------------------------------------------


def lyapunov_exponent(e, batch_curvatures):
    """gamma = E_B[log|1 - eta h_B|] over equally likely batch curvatures h_B."""
    return _avg(sp.log(sp.Abs(1 - e * hb)) for hb in batch_curvatures)


lyapunov_bound = sp.log(stability_factor) / 2  # gamma <= (1/2) log q by Jensen


def check_lyapunov() -> None:
    p0, hs = sp.Symbol("psi0"), sp.symbols("h_B1:4", real=True)
    traj = p0
    for hb in hs:  # psi_T = prod_t (1 - eta h_{B_t}) psi_0
        traj = psi_next.subs({h_B: hb, psi: traj}, simultaneous=True)
    check(traj, p0 * sp.Mul(*[(1 - eta * hb) for hb in hs]), "psi_T is a product")
    # Jensen, exactly: prod_B X_B^2 <= q^{#B} (AM-GM on the X_B^2) <=> gamma <= (1/2) log q
    cases = [
        ([1, 3], 1, "without_replacement"),
        ([0, 1, 5], 2, "without_replacement"),
        ([2, 2, 3, 7], 2, "with_replacement"),
        ([1, 4, 6], 2, "with_replacement"),
    ]
    for data, s, sch in cases:
        hbs = [sp.Rational(sum(data[i] for i in B), s) for B in _batches(len(data), s, sch)]
        for e in (sp.Rational(1, 3), sp.Rational(1, 2), sp.Rational(17, 20), 1, sp.Rational(3, 2)):
            xs2 = [(1 - e * hb) ** 2 for hb in hbs]
            q = _avg(xs2)
            m = sp.Rational(sum(data), len(data))
            qc = stability_factor.subs(
                {
                    eta: e,
                    lam: m,
                    c: variance_factor[sch].subs({N: len(data), S: s}),
                    s2: _avg((sp.Integer(v) - m) ** 2 for v in data),
                }
            )
            check(q, qc, "enumerated q equals stability_factor")
            check_true(sp.Mul(*xs2) <= q ** len(xs2), f"Jensen/AM-GM {data} eta={e}")
    # mean-square unstable but almost surely stable: h = (1, 3), S = 1, eta = 17/20
    hbs, e = [1, 3], sp.Rational(17, 20)
    q = _avg((1 - e * hb) ** 2 for hb in hbs)
    check_true(q > 1, "q > 1")
    check_true(sp.Abs(sp.Mul(*[(1 - e * hb) for hb in hbs])) < 1, "gamma < 0")
    check_true(lyapunov_exponent(e, hbs).evalf() < 0, "gamma < 0 (value)")


# --- public -------------------------------------------------------------------------------------


def derive() -> dict:
    check_variance_factor()
    check_one_dimensional()
    check_matrix_map()
    check_necessary_conditions()
    check_reshuffle()
    check_lyapunov()
    return {
        "variance_factor_without_replacement": variance_factor_without_replacement,
        "variance_factor_with_replacement": variance_factor_with_replacement,
        "stability_factor": stability_factor,
        "eta_star_1d": eta_star_1d,
        "second_moment_map": second_moment_map,
        "eta_star_general": eta_star_general,
        "eta_bound_sharpness": eta_bound_sharpness,
        "eta_bound_noise": eta_bound_noise,
        "lyapunov_bound": lyapunov_bound,
    }


ASSUMPTIONS = [
    "Per-example quadratics L_i(w) = 1/2 w^T H_i w with symmetric H_i (1-D: h_i psi^2 / 2); "
    "lam = mean(h_i), s2 = (1/N) sum (h_i - lam)^2 (population variance), H = mean(H_i).",
    "SGD w_{t+1} = w_t - eta grad L_B(w_t), a fresh batch each step, independent of w_t: "
    "a uniform S-subset (without replacement) or S iid uniform draws (with replacement).",
]
STEPS = [
    "Batch weights: h_B = sum_i w_i h_i with w_i = 1_i / S, P(i in B) = C(N-1,S-1)/C(N,S) = S/N, "
    "P(i,j in B) = S(S-1)/(N(N-1)); with replacement w_i = n_i / S, E n_i = S/N, "
    "E n_i^2 = S/N + S(S-1)/N^2, E n_i n_j = S(S-1)/N^2.",
    "Lemma: N E w_i = 1, N (E w_i^2 - E w_i w_j) = c and N^2 E w_i w_j = 1 - c. Hence "
    "E[h_B^2] = c mean(h_i^2) + (1 - c) lam^2 and Var[h_B] = c s2 with c = (N-S)/(S(N-1)) "
    "(without) or 1/S (with); checked by enumerating all batches of symbolic data.",
    "1-D: the step is psi_{t+1} = (1 - eta h_B) psi_t. Conditioning on psi_t (the batch is fresh), "
    "E[psi_{t+1}^2] = E[(1 - eta h_B)^2] E[psi_t^2] = q E[psi_t^2], q = E[X]^2 + Var[X] for the "
    "affine X = 1 - eta h_B. Checked against raw moments and by enumeration (N=3, S=2).",
    "q - 1 = eta (eta (lam^2 + c s2) - 2 lam): the roots are 0 and eta*; for lam > 0, q < 1 on "
    "(0, eta*) and q > 1 beyond.",
    "D-dim: E[(I - eta H_B) Sigma (I - eta H_B)] = Sigma - eta L(Sigma) + eta^2 Q(Sigma) with "
    "L = H Sigma + Sigma H, Q = (1-c) H Sigma H + c mean(H_i Sigma H_i) (the lemma entrywise: "
    "sum_ij E[w_i w_j] H_i Sigma H_j); checked by enumeration for N=3, S=1,2, symbolic 2x2 H_i "
    "and Sigma, both schemes. E[w w^T] evolves by this linear map T(eta), so mean-square stability "
    "is rho(T(eta)) <= 1.",
    "T(eta) - I = eta (eta Q - L), so T Sigma = Sigma iff Q Sigma = (1/eta) L Sigma. T is a positive "
    "map (PSD to PSD), so its spectral radius is an eigenvalue with a PSD eigenvector "
    "(Krein-Rutman); for H > 0, L^{-1} is positive too, and the first eta at which rho(T) reaches "
    "1 is eta* = 1 / rho(L^{-1} Q). For D = 1 this is 2 lam / (lam^2 + c s2).",
    "Diagonal H_i: (T Sigma)_jj = q(lam_j, s2_j) Sigma_jj; the off-diagonal factors "
    "E[(1 - eta h_Bj)(1 - eta h_Bk)] are at most sqrt(q_j q_k) by Cauchy-Schwarz, so "
    "eta* = min_j eta*_1d(lam_j, s2_j, c).",
    "Necessary conditions: Q = H Sigma H + c N(Sigma), N(Sigma) = mean((H_i - H) Sigma (H_i - H)), "
    "so T(eta) = D(eta) + eta^2 c N with D(Sigma) = (I - eta H) Sigma (I - eta H). D and N are "
    "positive maps and T dominates each in the PSD order, so rho(T) >= max(rho(D), eta^2 c rho(N)) "
    "(monotonicity of the spectral radius of positive maps; not symbolic). rho(D) = "
    "max_j (1 - eta lam_j)^2 (D = A kron A) gives eta* <= 2 / lam_max(H); eta^2 c s^2 <= 1 with "
    "s^2 = rho(N) gives eta* <= 1 / (sqrt(c) s).",
    "Random reshuffling draws a permutation per epoch and applies k = floor(N/S) consecutive "
    "S-blocks: each block is marginally a uniform S-subset (checked by enumerating permutations, "
    "N = 4, S = 2), but blocks within an epoch are dependent, so the second moment follows the "
    "epoch map Sigma -> E_pi[M Sigma M^T], M = prod_b (I - eta H_{B_b}), not T(eta)^k. In 1-D with "
    "S = 1 the epoch factor is the deterministic prod_i (1 - eta h_i)^2; for N = 4, S = 2 it is the "
    "mean over the 3 pair partitions, which differs from q^2.",
    "Almost-sure rate: psi_T = prod_t (1 - eta h_{B_t}) psi_0, so (1/T) log|psi_T| -> gamma = "
    "E_B[log|1 - eta h_B|] (law of large numbers). Jensen: gamma = (1/2) E log X^2 <= (1/2) log q "
    "(checked exactly as AM-GM on rational cases). Mean-square stability implies almost-sure "
    "stability, not conversely: h = (1, 3), S = 1, eta = 17/20 has q = 97/80 > 1 but gamma < 0.",
]


def report() -> str:
    return section(
        "R1 Mean-square stability of SGD on per-example quadratics (`proofs.sgd_second_moment`)",
        ASSUMPTIONS,
        STEPS,
        derive(),
    )
