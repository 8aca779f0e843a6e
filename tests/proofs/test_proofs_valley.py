"""The sympy derivations of proofs.degenerate_valley agree with valleysim.valley.theory (R3-R5)."""

import numpy as np
import pytest
import sympy as sp
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from proofs import degenerate_valley as dv
from valleysim.errors import UserInputError
from valleysim.valley import theory as vt

# --- lambdified once ---------------------------------------------------------------------------------
_G = list(dv.g)  # g_11, g_12, g_21, g_22 (row-major: grad lambda_i rows)
_HL = [dv.hl[i][k, l] for i in range(2) for k, l in ((0, 0), (0, 1), (1, 1))]
_W_exact = sp.lambdify((*dv.lam, dv.C[0, 0], dv.C[0, 1], dv.C[1, 1], dv.eta), dv.W_exact)
_W_leading = sp.lambdify((*dv.lam, dv.C[0, 0], dv.C[0, 1], dv.C[1, 1], dv.eta), dv.W_leading)
_W3, _lam3, _C3 = dv.lyapunov_solution(3)
_W3_f = sp.lambdify((*_lam3, *[_C3[i, j] for i in range(3) for j in range(i, 3)], dv.eta), _W3)
_W_sgd = sp.lambdify((*dv.lam, dv.c, dv.eta), sp.Matrix(dv.W_sgd))
_drift = sp.lambdify(
    (
        dv.eta,
        *dv.Wd,
        *_G,
        *dv.gf,
        dv.hf[0, 0],
        dv.hf[0, 1],
        dv.hf[1, 1],
        dv.C_hat[0, 0],
        dv.C_hat[0, 1],
        dv.C_hat[1, 1],
    ),
    dv.drift_general,
)
_trace = sp.lambdify((dv.eta, dv.c, *_G), dv.trace_drift_leading)
_designed = sp.lambdify((dv.eta, dv.scale, *dv.fl, *_G), dv.designed_drift_leading)
_logdet = sp.lambdify((dv.eta, dv.scale, *dv.lam, *_G), dv.logdet_drift_isotropic)
_A = sp.lambdify((*dv.lam, *_G, *_HL), [sp.Matrix(a) for a in dv.A_blocks])
_slope = sp.lambdify((*dv.lam, *_G, *_HL, *dv.Wd), dv.negative_eigenvalue_slope)
_toy_a = {
    k: sp.lambdify((dv.t3, dv.t4, dv.eta, dv.c, dv.iso), dv.toy_a[k], modules="numpy")
    for k in ("trace_drift_sgd", "logdet_drift_isotropic", "schur_slope_sgd")
}
_toy_b = {
    k: sp.lambdify((dv.t3, dv.t4, dv.eta, dv.c, dv.iso), dv.toy_b[k], modules="numpy")
    for k in ("trace_drift_sgd", "logdet_drift_isotropic", "trace_drift_isotropic", "logdet_drift_sgd")
}
_toy_lam = {
    name: sp.lambdify(
        (dv.t3, dv.t4),
        [
            sp.Matrix(q["lambda"]),
            q["grad_lambda"],
            *[sp.hessian(li, (dv.t3, dv.t4)).replace(sp.DiracDelta, lambda *a: 0) for li in q["lambda"]],
        ],
    )
    for name, q in (("A", dv.toy_a), ("B", dv.toy_b))
}  # away from toy A's kinks


def _sym(a11, a12, a22):
    return np.array([[a11, a12], [a12, a22]])


def _hess_args(hess):
    return [hess[i][k, l] for i in range(2) for k, l in ((0, 0), (0, 1), (1, 1))]


lam_st = st.floats(0.1, 10.0)
coef = st.floats(-3.0, 3.0)


@settings(max_examples=30)
@given(
    lam=st.tuples(lam_st, lam_st), C=st.tuples(st.floats(0.0, 5.0), coef, st.floats(0.0, 5.0)), u=st.floats(0.01, 1.99)
)
def test_stationary_second_moments(lam, C, u):
    eta = u / max(lam)  # 0 < eta lam_i < 2
    Cm = _sym(*C)
    W = vt.stationary_second_moments(lam, Cm, eta)
    np.testing.assert_allclose(W, np.array(_W_exact(*lam, *C, eta), dtype=float), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        vt.stationary_second_moments_leading(lam, Cm, eta),
        np.array(_W_leading(*lam, *C, eta), dtype=float),
        rtol=1e-12,
        atol=1e-15,
    )
    # W solves the Lyapunov equation (independent of the closed form)
    A = np.eye(2) - eta * np.diag(lam)
    np.testing.assert_allclose(W, A @ W @ A + eta**2 * Cm, rtol=1e-9, atol=1e-12)
    # SGD noise C = c diag(lam): the diagonal is eta c / (2 - eta lam_i)
    c = 0.37
    np.testing.assert_allclose(
        np.diag(vt.stationary_second_moments(lam, c * np.diag(lam), eta)),
        np.ravel(np.array(_W_sgd(*lam, c, eta), dtype=float)),
        rtol=1e-12,
    )


@settings(max_examples=20)
@given(lam=st.tuples(lam_st, lam_st, lam_st), seed=st.integers(0, 2**31), u=st.floats(0.01, 1.99))
def test_stationary_second_moments_n3(lam, seed, u):
    eta = u / max(lam)
    X = np.random.default_rng(seed).normal(size=(3, 3))
    Cm = X @ X.T
    upper = [Cm[i, j] for i in range(3) for j in range(i, 3)]
    np.testing.assert_allclose(
        vt.stationary_second_moments(lam, Cm, eta), np.array(_W3_f(*lam, *upper, eta), dtype=float), rtol=1e-12
    )


def test_stationary_second_moments_rejects_unstable():
    with pytest.raises(UserInputError):
        vt.stationary_second_moments([1.0, 3.0], np.eye(2), 0.7)  # eta lam_2 = 2.1
    with pytest.raises(UserInputError):
        vt.stationary_second_moments([1.0, 0.0], np.eye(2), 0.1)


@settings(max_examples=30)
@given(
    eta=st.floats(1e-3, 1.0),
    W=st.tuples(st.floats(0, 2), st.floats(0, 2)),
    g=st.tuples(*[coef] * 4),
    gf=st.tuples(coef, coef),
    hf=st.tuples(coef, coef, coef),
    Ch=st.tuples(st.floats(0, 2), coef, st.floats(0, 2)),
)
def test_spectral_drift(eta, W, g, gf, hf, Ch):
    grad_lam = np.array(g).reshape(2, 2)
    expected = _drift(eta, *W, *g, *gf, *hf, *Ch)
    got = vt.spectral_drift(eta, W, grad_lam, gf, _sym(*hf), _sym(*Ch))
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-12)
    no_hat = _drift(eta, *W, *g, *gf, *hf, 0, 0, 0)
    assert vt.spectral_drift(eta, W, grad_lam, gf) == pytest.approx(no_hat, rel=1e-10, abs=1e-12)


@settings(max_examples=30)
@given(
    eta=st.floats(1e-3, 1.0),
    c=st.floats(0, 1),
    scale=st.floats(1e-3, 5),
    lam=st.tuples(lam_st, lam_st),
    g=st.tuples(*[coef] * 4),
    fl=st.tuples(st.floats(0, 3), st.floats(0, 3)),
)
def test_theorem_drifts(eta, c, scale, lam, g, fl):
    grad_lam = np.array(g).reshape(2, 2)
    assert vt.trace_drift_leading(eta, c, grad_lam) == pytest.approx(_trace(eta, c, *g), rel=1e-10, abs=1e-14)
    assert vt.designed_drift_leading(eta, scale, fl, grad_lam) == pytest.approx(
        _designed(eta, scale, *fl, *g), rel=1e-10, abs=1e-14
    )
    # Corollary 2.1: f = log det, df/dlam_i = 1/lam_i
    assert vt.designed_drift_leading(eta, scale, 1 / np.array(lam), grad_lam) == pytest.approx(
        _logdet(eta, scale, *lam, *g), rel=1e-10, abs=1e-14
    )
    # Theorem 1 through the general drift with W_jj = eta c / 2 and grad f = sum_i grad lambda_i
    assert vt.spectral_drift(eta, [eta * c / 2] * 2, grad_lam, grad_lam.sum(axis=0)) == pytest.approx(
        _trace(eta, c, *g), rel=1e-10, abs=1e-14
    )


@settings(max_examples=30)
@given(
    lam=st.tuples(lam_st, lam_st),
    g=st.tuples(*[coef] * 4),
    hl=st.tuples(*[coef] * 6),
    W=st.tuples(st.floats(1e-3, 2), st.floats(1e-3, 2)),
)
def test_schur_blocks_and_slope(lam, g, hl, W):
    grad_lam = np.array(g).reshape(2, 2)
    hess = np.array([_sym(*hl[:3]), _sym(*hl[3:])])
    A = vt.schur_blocks(lam, grad_lam, hess)
    np.testing.assert_allclose(
        A, np.array([np.array(a, dtype=float) for a in _A(*lam, *g, *hl)]), rtol=1e-12, atol=1e-12
    )
    slope, all_nsd = vt.negative_eigenvalue_slope(lam, grad_lam, hess, W)
    assert slope == pytest.approx(_slope(*lam, *g, *hl, *W), rel=1e-10, abs=1e-12)
    assert np.ndim(all_nsd) == 0, f"all_nsd must be one flag for all A_i, got {all_nsd!r}"
    # the largest eigenvalue of each 2 x 2 A_i in closed form; compared away from the rounding band around 0
    top = max((a[0, 0] + a[1, 1]) / 2 + np.hypot((a[0, 0] - a[1, 1]) / 2, a[0, 1]) for a in A)
    if abs(top) > 1e-9 * max(1.0, np.abs(A).max()):
        assert bool(all_nsd) == (top < 0)


# --- numeric: the Schur complement against the dense Hessian of a random valley ----------------------

_n, _m = 2, 3
_th = sp.symbols(f"th1:{_n + 1}")
_hh = sp.symbols(f"hh1:{_m + 1}")
_a = sp.symbols(f"a1:{_n + 1}")
_b = sp.Matrix(_n, _m, lambda i, k: sp.Symbol(f"b{i}{k}"))
_Q = [sp.Matrix(_m, _m, lambda k, l, i=i: sp.Symbol(f"q{i}{min(k, l)}{max(k, l)}")) for i in range(_n)]
_k3 = sp.Matrix(_n, _m, lambda i, k: sp.Symbol(f"k{i}{k}"))
_hvec = sp.Matrix(_hh)
# lambda_i = a_i + b_i.h + 1/2 h^T Q_i h + (k_i.h)^3 : a generic smooth valley floor
_lam_expr = [
    _a[i] + (_b[i, :] * _hvec)[0] + (_hvec.T * _Q[i] * _hvec)[0] / 2 + ((_k3[i, :] * _hvec)[0]) ** 3 for i in range(_n)
]
_L_expr = sum(_th[i] ** 2 * _lam_expr[i] for i in range(_n)) / 2
_params = (*_a, *_b, *[q for Qi in _Q for q in (Qi[k, l] for k in range(_m) for l in range(k, _m))], *_k3)
_dense_hessian = sp.lambdify((*_th, *_hh, *_params), sp.hessian(_L_expr, (*_th, *_hh)))
_floor = sp.lambdify(
    (*_hh, *_params),
    [
        sp.Matrix(_lam_expr),
        sp.Matrix([[sp.diff(li, h) for h in _hh] for li in _lam_expr]),
        [sp.hessian(li, _hh) for li in _lam_expr],
    ],
)
_L_num = sp.lambdify((*_th, *_hh, *_params), _L_expr)


def _random_valley(seed, nsd=False):
    rng = np.random.default_rng(seed)
    a = rng.uniform(1.0, 3.0, _n)
    b = rng.normal(size=(_n, _m))
    Q = []
    for _ in range(_n):
        X = rng.normal(size=(_m, _m))
        Qi = -(X @ X.T) / _m if nsd else (X + X.T) / 2  # NSD Q_i makes every A_i NSD
        Q.append([Qi[k, l] for k in range(_m) for l in range(k, _m)])
    k3 = np.zeros((_n, _m)) if nsd else rng.normal(size=(_n, _m))  # the cubic term could spoil NSD
    params = (*a, *b.ravel(), *np.ravel(Q), *k3.ravel())
    h0 = rng.normal(scale=0.1, size=_m)
    lam, grad, hess = _floor(*h0, *params)
    return (
        params,
        h0,
        np.ravel(np.array(lam, dtype=float)),
        np.array(grad, dtype=float),
        np.array([np.array(h, dtype=float) for h in hess]),
        rng,
    )


@settings(max_examples=15)
@given(seed=st.integers(0, 2**31))
def test_schur_complement_matches_dense_hessian(seed):
    params, h0, lam, grad, hess, rng = _random_valley(seed)
    assume(lam.min() > 0.2)  # a valley: every lambda_i > 0 at the floor point
    v = rng.normal(size=_n)
    v /= np.linalg.norm(v)
    A = vt.schur_blocks(lam, grad, hess)
    errs = []
    s0 = (
        0.05 * lam.min() / max(1.0, np.abs(grad).max(), np.sqrt(np.abs(hess).max()))
    )  # theta small vs the floor's scale
    for s in (s0, s0 / 2):
        th = s * v
        ev = np.linalg.eigvalsh(np.array(_dense_hessian(*th, *h0, *params), dtype=float))
        small = np.sort(ev)[:_m]  # the m eigenvalues O(theta^2); the others ~ lambda_i
        schur = np.linalg.eigvalsh(np.einsum("i,ikl->kl", th**2, A))
        assert np.max(np.abs(small)) < 0.1 * lam.min()
        errs.append(np.max(np.abs(small - schur)))
        assert errs[-1] < 0.05 * max(np.max(np.abs(schur)), 1e-12) + 1e-12  # agrees to leading order
    assert 10 < errs[0] / errs[1] < 24  # O(theta^4): ~16x smaller when theta halves


def test_dropping_the_schur_term_is_wrong():
    """Control: without -B^T diag(lam)^-1 B (App. A.3 keeps only D) the small eigenvalues do not match."""
    params, h0, lam, grad, hess, rng = _random_valley(7)
    th = 0.02 * np.array([0.6, 0.8])
    small = np.sort(np.linalg.eigvalsh(np.array(_dense_hessian(*th, *h0, *params), dtype=float)))[:_m]
    D_only = np.linalg.eigvalsh(np.einsum("i,ikl->kl", th**2, hess / 2))
    schur = np.linalg.eigvalsh(np.einsum("i,ikl->kl", th**2, vt.schur_blocks(lam, grad, hess)))
    assert np.max(np.abs(small - schur)) < 1e-2 * np.max(np.abs(small))
    assert np.max(np.abs(small - D_only)) > 0.1 * np.max(np.abs(small))


@settings(max_examples=10)
@given(seed=st.integers(0, 2**31), W=st.tuples(st.floats(0.5, 2.0), st.floats(0.5, 2.0)))
def test_negative_eigenvalue_slope_at_equilibrium(seed, W):
    """<sum of negative eigenvalues> / <L> over Gaussian theta (Gauss-Hermite, W = 1e-5 w) -> the slope."""
    params, h0, lam, grad, hess, _ = _random_valley(seed, nsd=True)
    Wd = 1e-5 * np.array(W)
    slope, all_nsd = vt.negative_eigenvalue_slope(lam, grad, hess, Wd)
    assert np.all(all_nsd)
    x, wq = np.polynomial.hermite_e.hermegauss(8)  # E over N(0, 1)
    wq = wq / wq.sum()
    neg = loss = 0.0
    for x1, w1 in zip(x, wq):
        for x2, w2 in zip(x, wq):
            th = np.sqrt(Wd) * np.array([x1, x2])
            ev = np.linalg.eigvalsh(np.array(_dense_hessian(*th, *h0, *params), dtype=float))
            neg += w1 * w2 * ev[ev < 0].sum()
            loss += w1 * w2 * float(_L_num(*th, *h0, *params))
    assert neg / loss == pytest.approx(slope, rel=1e-3)
    # the same with the SGD-noise form: equal W_jj gives 2 sum tr A_i / T
    s_eq, _ = vt.negative_eigenvalue_slope(lam, grad, hess, [1.0, 1.0])
    assert s_eq == pytest.approx(2 * np.trace(vt.schur_blocks(lam, grad, hess), axis1=1, axis2=2).sum() / lam.sum())


# --- the toys of Sec. 4.2 -----------------------------------------------------------------------------


@settings(max_examples=30)
@given(t3=st.floats(-2, 2), t4=st.floats(-2, 2), eta=st.floats(1e-3, 0.5), c=st.floats(0, 1), s=st.floats(1e-3, 2))
def test_toy_drifts(t3, t4, eta, c, s):
    for name, toy in (("A", _toy_a), ("B", _toy_b)):
        lam, grad, *hess = _toy_lam[name](t3, t4)
        lam, grad = np.ravel(np.array(lam, dtype=float)), np.array(grad, dtype=float)
        if np.any(lam < 1e-2):
            continue
        assert toy["trace_drift_sgd"](t3, t4, eta, c, s) == pytest.approx(
            vt.trace_drift_leading(eta, c, grad), rel=1e-9, abs=1e-14
        )
        assert toy["logdet_drift_isotropic"](t3, t4, eta, c, s) == pytest.approx(
            vt.designed_drift_leading(eta, s, 1 / lam, grad), rel=1e-9, abs=1e-14
        )
        if name == "B":  # cross terms via the general drift with W_jj = eta s_j / (2 lam_j)
            gT, gLD = grad.sum(axis=0), (grad / lam[:, None]).sum(axis=0)
            assert toy["trace_drift_isotropic"](t3, t4, eta, c, s) == pytest.approx(
                vt.spectral_drift(eta, eta * s / (2 * lam), grad, gT), rel=1e-9, abs=1e-14
            )
            assert toy["logdet_drift_sgd"](t3, t4, eta, c, s) == pytest.approx(
                vt.spectral_drift(eta, [eta * c / 2] * 2, grad, gLD), rel=1e-9, abs=1e-14
            )
        else:  # R5 in toy A: D = 0, all A_i NSD, slope = -2 (8/lam1 + 20/lam2) / T
            h = np.array([np.array(x, dtype=float) for x in hess])
            slope, all_nsd = vt.negative_eigenvalue_slope(lam, grad, h, [1.0, 1.0])
            assert np.all(all_nsd)
            assert slope == pytest.approx(toy["schur_slope_sgd"](t3, t4, eta, c, s), rel=1e-9)
            assert slope == pytest.approx(-2 * (8 / lam[0] + 20 / lam[1]) / lam.sum(), rel=1e-9)


@settings(max_examples=10)
@given(seed=st.integers(0, 2**31), batch=st.integers(1, 4))
def test_functions_broadcast_over_a_batch_axis(seed, batch):
    """Every valley.theory function, given a leading batch axis, returns the per-item results stacked."""
    rng = np.random.default_rng(seed)
    eta = 0.1
    lam = rng.uniform(0.5, 5.0, (batch, 2))
    X = rng.normal(size=(batch, 2, 2))
    C = X @ np.swapaxes(X, -1, -2)
    grad = rng.normal(size=(batch, 2, 3))
    hess = rng.normal(size=(batch, 2, 3, 3))
    hess = hess + np.swapaxes(hess, -1, -2)
    Wd = rng.uniform(0.1, 1.0, (batch, 2))
    gf = rng.normal(size=(batch, 3))
    Ch = np.einsum("bij,bkj->bik", rng.normal(size=(batch, 3, 3)), rng.normal(size=(batch, 3, 3)))
    fl = rng.uniform(0, 2, (batch, 2))
    cases = [
        (vt.stationary_second_moments, (lam, C, eta), (True, True, False)),
        (vt.stationary_second_moments_leading, (lam, C, eta), (True, True, False)),
        (vt.spectral_drift, (eta, Wd, grad, gf, hess[:, 0], Ch), (False, True, True, True, True, True)),
        (vt.trace_drift_leading, (eta, 0.3, grad), (False, False, True)),
        (vt.designed_drift_leading, (eta, 0.7, fl, grad), (False, False, True, True)),
        (vt.schur_blocks, (lam, grad, hess), (True, True, True)),
        (vt.negative_eigenvalue_slope, (lam, grad, hess, Wd), (True, True, True, True)),
    ]
    for fn, args, batched in cases:
        whole = fn(*args)
        for b in range(batch):
            one = fn(*[a[b] if is_b else a for a, is_b in zip(args, batched)])
            if isinstance(one, tuple):
                for w, o in zip(whole, one):
                    assert np.shape(o) == () and np.asarray(w).shape == (batch,), fn.__name__
                    np.testing.assert_allclose(np.asarray(w)[b], o, rtol=1e-12)
            else:
                np.testing.assert_allclose(np.asarray(whole)[b], one, rtol=1e-12, err_msg=fn.__name__)
