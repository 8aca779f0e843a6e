"""dnn.density (stochastic Lanczos quadrature) against independent truths.

Operators are explicit ``A = U diag(lam) U^T`` (float64, seeded ``U``) with ``f(A) = U f(lam) U^T``, and the
dense float64 Hessian of a tiny network (``eigen.dense_matrix``, ``numpy.linalg.eigh``). Truths per start use
the start vector ``v = sqrt(P) q`` of :func:`dnn.density.start_vector` (``||v||^2 = P``):
``v^T f(A) v = P sum_i (u_i^T q)^2 f(lam_i)``. Error bounds for ``m < P`` are the Gauss-rule ones:
``|rule - q^T f(A) q| <= 2 ||f - p||_inf`` on ``[lam_min, lam_max]`` for any polynomial ``p`` of degree
``2m - 1`` (here the Chebyshev interpolant, its error measured on a fine grid), and the
Chebyshev-Markov-Stieltjes bracket for a step function.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.polynomial import Chebyshev

from dnn import density as D
from dnn import eigen, probes
from dnn.objective import Objective, model_state
from valleysim.errors import UserInputError

from tiny_nets import data, orthogonal, tiny_net

F64 = torch.float64

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def operator(lam: np.ndarray, seed: int = 0):
    """``(matvec, like, U)`` of ``A = U diag(lam) U^T``."""
    U = orthogonal(lam.size, seed)
    A = torch.tensor((U * lam) @ U.T, dtype=F64)
    return (lambda v: A @ v), torch.zeros(lam.size, dtype=F64), U


def exact_per_start(res: D.SLQResult, U: np.ndarray, lam: np.ndarray, f) -> np.ndarray:
    """``v_s^T f(A) v_s`` for the starts of ``res`` (``v_s = sqrt(P) q_s``)."""
    P = lam.size
    out = []
    for s in range(res.n_starts):
        w = (U.T @ D.start_vector(P, res.seed, s, res.distribution).numpy()) ** 2  # (u_i^T q)^2
        out.append(P * float(w @ f(lam)))
    return np.array(out)


def cheb_error(f, a: float, b: float, deg: int) -> float:
    """``||f - p||_inf`` on ``[a, b]`` (20001 points and the kink at 0) of the degree-``deg`` Chebyshev
    interpolant: an upper bound on the best approximation error ``E_deg(f)``."""
    p = Chebyshev.interpolate(f, deg, domain=[a, b])
    x = np.append(np.linspace(a, b, 20001), 0.0 if a < 0 < b else a)
    return float(np.max(np.abs(f(x) - p(x))))


def neg(x):
    return np.minimum(x, 0.0)


def log_above(c):
    return lambda x: np.where(x > c, np.log(np.where(x > c, x, 1.0)), 0.0)


def gap_spectrum(P: int = 120, seed: int = 3) -> np.ndarray:
    """Negative cluster [-1, -0.4], a degenerate part |x| < 1e-6, a bulk [0.3, 1.5], outliers 4..10."""
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [rng.uniform(-1, -0.4, 20), rng.uniform(-1e-6, 1e-6, 30), rng.uniform(0.3, 1.5, P - 56), [4, 5, 6, 7, 8, 10]]
    )


# --------------------------------------------------------------------------- tr f(A)


@pytest.mark.parametrize("distribution", D.DISTRIBUTIONS)
def test_full_krylov_space_is_exact_per_start(distribution):
    """m = P: the Ritz nodes are the eigenvalues and the per-start value is v^T f(A) v to rounding."""
    rng = np.random.default_rng(0)
    lam = np.sort(rng.uniform(-1.0, 2.0, 60))
    mv, like, U = operator(lam)
    res = D.slq(mv, like, n_starts=3, m=60, seed=5, distribution=distribution)
    assert res.n_matvec == 180 and [t.size for t in res.nodes] == [60] * 3
    for s in range(3):
        np.testing.assert_allclose(res.nodes[s], lam, atol=1e-12)
        assert res.weights[s].sum() == pytest.approx(1.0, abs=1e-14)
    for f in (lambda x: x, neg, log_above(0.2), lambda x: (x > 0.2).astype(float)):
        np.testing.assert_allclose(D.quadrature(res, f), exact_per_start(res, U, lam, f), rtol=0, atol=1e-8)


def test_breakdown_on_repeated_eigenvalues_is_exact():
    """Eigenvalue 0 of multiplicity 30 (+ 4 distinct): the Krylov space is invariant after 5 steps."""
    lam = np.concatenate([np.zeros(30), [-2.0, 1.0, 3.0, 5.0]])
    mv, like, U = operator(lam, seed=1)
    t = D.lanczos_tridiagonal(mv, like, 34, seed=2)
    assert t.breakdown and t.alpha.size == 5 and t.n_matvec == 5 and t.beta.size == 4
    res = D.slq(mv, like, n_starts=2, m=34, seed=2)
    assert res.n_matvec == 10
    np.testing.assert_allclose(res.nodes[0], [-2.0, 0.0, 1.0, 3.0, 5.0], atol=1e-12)
    for f in (neg, log_above(0.5)):
        np.testing.assert_allclose(D.quadrature(res, f), exact_per_start(res, U, lam, f), atol=1e-10)


def test_trace_is_hutchinson_for_every_m_and_within_se():
    """f(x) = x is exact for every m (degree 1 <= 2m - 1): the per-start value is v^T A v."""
    lam = gap_spectrum()
    mv, like, U = operator(lam, seed=2)
    res = D.slq(mv, like, n_starts=30, m=4, seed=1)
    np.testing.assert_allclose(D.quadrature(res, lambda x: x), exact_per_start(res, U, lam, lambda x: x), atol=1e-10)
    est, se = D.slq_trace(res)
    assert abs(est - lam.sum()) < 4 * se and se > 0


def test_gapped_spectrum_neg_mass_and_logdet_within_se():
    """Discontinuities in spectral gaps (0 in (-0.4, -1e-6) u (1e-6, 0.3), threshold 0.1 in the gap):
    m = 40 < P resolves them: the estimates are within 4 SE of the eigh truth, each start within 1e-4 of
    its v^T f(A) v (largest seen 1e-5: Ritz nodes still in the gaps carry small weights; 0.46 at m = 20)."""
    lam = gap_spectrum()
    mv, like, U = operator(lam, seed=2)
    res = D.slq(mv, like, n_starts=30, m=40, seed=4)
    for (est, se), f in (
        (D.negative_mass(res), neg),
        (D.logdet_above(res, 0.1), log_above(0.1)),
        (D.count_above(res, 0.1), lambda x: (x > 0.1).astype(float)),
    ):
        truth = float(np.sum(f(lam)))
        assert abs(est - truth) < 4 * se, (est, truth, se)
        np.testing.assert_allclose(D.quadrature(res, f), exact_per_start(res, U, lam, f), atol=1e-4)


def test_continuous_spectrum_errors_obey_the_quadrature_bounds():
    """No gap at the discontinuity: per start, min(x, 0) is off by at most 2 P E_{2m-1}, the count above
    c by at most P max(tau_k, tau_{k+1}) (Chebyshev-Markov-Stieltjes), and neither is exact for m << P."""
    P, m, c = 150, 12, 0.5
    lam = np.sort(np.random.default_rng(1).uniform(-1.0, 2.0, P))
    mv, like, U = operator(lam, seed=3)
    res = D.slq(mv, like, n_starts=8, m=m, seed=0)
    err = np.abs(D.quadrature(res, neg) - exact_per_start(res, U, lam, neg))
    bound = 2 * P * cheb_error(neg, lam[0], lam[-1], 2 * m - 1)
    assert np.all(err <= bound) and err.max() > 1e-3
    step = lambda x: (x > c).astype(float)  # noqa: E731
    err = np.abs(D.quadrature(res, step) - exact_per_start(res, U, lam, step))
    for s in range(res.n_starts):
        k = int(np.searchsorted(res.nodes[s], c))  # nodes[k-1] <= c < nodes[k]
        assert err[s] <= P * res.weights[s][max(k - 1, 0) : k + 1].max() + 1e-9
    assert err.max() > 0.1


# --------------------------------------------------------------------------- density


def smoothed(lam: np.ndarray, t: np.ndarray, sigma: float, w: np.ndarray | None = None) -> np.ndarray:
    """``sum_i w_i N(t; lam_i, sigma^2)`` (``w = 1/P``: the smoothed histogram of the eigenvalues)."""
    w = np.full(lam.size, 1 / lam.size) if w is None else w
    g = np.exp(-0.5 * ((t[:, None] - lam[None]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return g @ w


def test_density_full_space_equals_weighted_histogram_and_is_close_to_uniform():
    """m = P: phi is sum_i (u_i^T q)^2 N(t; lam_i) averaged over starts (to rounding); against the uniform
    histogram (1/P) sum_i N(t; lam_i) the L1 distance is within its expected size: for Rademacher
    q = z / sqrt(P), Var(q^T G(t) q) <= 2 ||G(t)||_F^2 / P^2 (G(t) = U diag(N(t; lam)) U^T), so
    E ||phi - phi_exact||_1 <= int sqrt(2 sum_i N(t; lam_i)^2 / n) / P dt =: B."""
    P, n, sigma = 80, 20, 0.1
    lam = np.sort(np.random.default_rng(2).uniform(-1.0, 2.0, P))
    mv, like, U = operator(lam, seed=4)
    res = D.slq(mv, like, n_starts=n, m=P, seed=3)
    t = np.linspace(-1.6, 2.6, 841)
    dt = t[1] - t[0]
    phi = D.density(res, t, sigma)
    W = [(U.T @ D.start_vector(P, 3, s).numpy()) ** 2 for s in range(n)]
    weighted = np.mean([smoothed(lam, t, sigma, w) for w in W], axis=0)
    np.testing.assert_allclose(phi, weighted, rtol=0, atol=1e-10)
    assert phi.sum() * dt == pytest.approx(1.0, abs=1e-6)
    uniform = smoothed(lam, t, sigma)
    g = np.exp(-0.5 * ((t[:, None] - lam[None]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    B = float(np.sum(np.sqrt(2 * (g**2).sum(1) / n)) / P * dt)
    L1 = float(np.abs(phi - uniform).sum() * dt)
    assert L1 <= B and L1 > 0


def test_density_with_few_steps_is_within_the_gauss_rule_bound():
    """m = 15 < P = 200 against m = P from the same starts: per grid point the difference is at most
    2 E_29(N(.; t, sigma^2)) on [lam_min, lam_max] (Gauss rule exact for degree 29); integrated over t that
    is 0.033 (the measured L1 distance 0.0036; 7e-8 at m = 30): sigma = 0.15 against L / m = 0.2."""
    P, m, sigma = 200, 15, 0.15
    lam = np.sort(np.random.default_rng(5).uniform(-1.0, 2.0, P))
    mv, like, _ = operator(lam, seed=5)
    full = D.slq(mv, like, n_starts=2, m=P, seed=7)
    few = D.slq(mv, like, n_starts=2, m=m, seed=7)
    t = np.linspace(-1.5, 2.5, 161)
    dt = t[1] - t[0]
    diff = np.abs(D.density(few, t, sigma) - D.density(full, t, sigma))

    def kernel(t0):
        return lambda x: np.exp(-0.5 * ((x - t0) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))

    bound = np.array([2 * cheb_error(kernel(t0), lam[0], lam[-1], 2 * m - 1) for t0 in t])
    assert np.all(diff <= bound + 1e-12)
    assert 1e-3 < diff.sum() * dt <= bound.sum() * dt < 0.05


def test_plot_density_writes_a_png(tmp_path):
    lam = gap_spectrum()
    mv, like, _ = operator(lam)
    res = D.slq(mv, like, n_starts=2, m=20, seed=0)
    out = D.plot_density(res, tmp_path / "sub" / "density.png", top_eigenvalues=[10.0, 8.0, 7.0])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000


# --------------------------------------------------------------------------- network


def test_tiny_network_trace_and_negative_mass_against_dense_hessian():
    """Tiny ReLU net (P = 196, indefinite at init): per start the SLQ trace is v^T H v of the dense
    float64 Hessian; the negative mass per start is within 2 P E_{2m-1}(min(x, 0)) of v^T min(H, 0) v and
    the estimates within 4 SE (+ that bias bound) of the eigh truths."""
    x, y = data()
    obj = Objective(tiny_net(bn=False), x, y, dtype=F64)
    H = eigen.dense_matrix(obj.hvp, obj.theta0)
    lam, U = np.linalg.eigh(0.5 * (H + H.T).numpy())
    m = 30
    res = D.slq(obj.hvp, obj.theta0, n_starts=6, m=m, seed=11)
    assert res.n_matvec == 6 * m
    np.testing.assert_allclose(D.quadrature(res, lambda x: x), exact_per_start(res, U, lam, lambda x: x), atol=1e-9)
    est, se = D.slq_trace(res)
    assert abs(est - lam.sum()) < 4 * se
    bias = 2 * obj.dim * cheb_error(neg, lam[0], lam[-1], 2 * m - 1)
    err = np.abs(D.quadrature(res, neg) - exact_per_start(res, U, lam, neg))
    assert np.all(err <= bias)
    est, se = D.negative_mass(res)
    assert lam.min() < 0 and abs(est - lam[lam < 0].sum()) < 4 * se + bias


def test_density_probe_leaves_the_model_bit_identical():
    net, (x, y) = tiny_net(bn=True), data()
    net.train()
    before = model_state(net)
    from dnn.train import TrainConfig

    cfg = TrainConfig(model="simplecnn", probes=("density",), seed=2, slq_starts=3, slq_steps=20)
    ctx = probes.ProbeContext(cfg=cfg, model=net, objective=Objective(net, x, y, bn="batch", bn_batch=4), step=3)
    out = probes.run_probes(("density",), ctx)
    after = model_state(net)
    assert all(torch.equal(before[k], after[k]) for k in before) and net.training
    keys = ("slq_trace", "slq_neg_mass", "slq_logdet", "slq_n_above", "slq_threshold", "density_n_hvp")
    for k in keys + ("slq_trace_se", "slq_neg_mass_se", "slq_logdet_se", "slq_n_above_se"):
        assert math.isfinite(out[k]), k
    assert out["density_n_hvp"] == 60 and out["slq_n_above"] > 0
    assert list(ctx.state["slq"]) == [3]  # keyed by step: a run keeps every probe's quadrature
    res = D.SLQResult.from_state(ctx.state["slq"][3])
    assert res.n_starts == 3 and res.seed == 2 + 3 and res.steps == 20
    again_metrics = D.probe_metrics(res, cfg.slq_rel_threshold)
    assert again_metrics == {k: v for k, v in out.items() if k in again_metrics}
    again = probes.run_probes(("density",), probes.ProbeContext(cfg=cfg, model=net, objective=ctx.objective, step=3))
    assert {k: again[k] for k in keys} == {k: out[k] for k in keys}  # same seed, same numbers


# --------------------------------------------------------------------------- errors


def test_bad_inputs_name_the_parameter():
    mv, like, _ = operator(np.linspace(-1, 1, 10))
    res = D.slq(mv, like, n_starts=2, m=5)
    cases = [
        (lambda: D.slq(mv, like, n_starts=2, m=0), r"m \(Lanczos steps\) must be in 1\.\.10"),
        (lambda: D.slq(mv, like, n_starts=2, m=11), r"m \(Lanczos steps\) must be in 1\.\.10"),
        (lambda: D.slq(mv, like, n_starts=0, m=5), r"n_starts must be in >= 1"),
        (
            lambda: D.slq(mv, like, n_starts=2, m=5, distribution="uniform"),
            "distribution must be one of rademacher, gaussian",
        ),
        (lambda: D.lanczos_tridiagonal(mv, like, 3, start=torch.zeros(10, dtype=F64)), "start must be finite"),
        (lambda: D.lanczos_tridiagonal(mv, like, 3, start=torch.ones(4)), r"start must be a tensor of shape \(10,\)"),
        (lambda: D.density(res, np.linspace(0, 1, 5), 0.0), "sigma must be a finite number > 0"),
        (lambda: D.density(res, [], 0.1), "grid must be a non-empty 1-D array"),
        (lambda: D.density(res, [0.0, math.nan], 0.1), "grid must be a non-empty 1-D array"),
        (lambda: D.logdet_above(res, -1.0), r"threshold must be a finite number in \[0, inf\]"),
        (lambda: D.count_above(res, math.nan), "threshold must be a finite number"),
        (lambda: D.probe_metrics(res, -0.1), r"rel_threshold must be a finite number in \[0, inf\]"),
    ]
    for call, msg in cases:
        with pytest.raises(UserInputError, match=msg):
            call()
