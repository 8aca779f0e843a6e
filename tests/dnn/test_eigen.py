"""dnn.eigen: Lanczos top-k, PyHessian power iteration, Hutchinson trace, against dense oracles.

Test operators are ``A = Q diag(lam) Q^T`` (float64) with ``Q`` from a seeded QR, so the spectrum
is known; the matvec counts asserted below are those of the fixed seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from dnn.eigen import (
    Eigenpairs,
    dense_matrix,
    frobenius_from_top,
    hutchinson_trace,
    hutchinson_trace_frobenius,
    lanczos_top,
    power_iteration,
)
from valleysim.errors import UserInputError

from tiny_nets import orthogonal

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def spectral(lam: np.ndarray, seed: int = 0) -> torch.Tensor:
    """Symmetric ``Q diag(lam) Q^T`` with a seeded orthogonal ``Q``; eigenpairs in :func:`oracle`."""
    Q = orthogonal(lam.size, seed)
    A = torch.tensor((Q * lam) @ Q.T, dtype=F64)
    order = np.argsort(-lam, kind="stable")
    A.oracle = (lam[order], Q[:, order])  # type: ignore[attr-defined]
    return A


def oracle(A: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (descending) and eigenvectors (columns) of a :func:`spectral` matrix, else eigh."""
    if hasattr(A, "oracle"):
        return A.oracle
    w, U = np.linalg.eigh(A.numpy())
    return w[::-1], U[:, ::-1]


class Counted:
    """``matvec`` of a dense matrix that counts its calls and records the vectors."""

    def __init__(self, A: torch.Tensor):
        self.A = A
        self.n = 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.n += 1
        return self.A @ v


def psd_gap_spectrum(P: int = 300, seed: int = 1) -> np.ndarray:
    """lam1 = 1, lam2 = 0.95 (relative gap 5%), the rest uniform in [0, 0.9]."""
    lam = np.sort(np.random.default_rng(seed).uniform(0.0, 0.9, P))[::-1].copy()
    lam[0], lam[1] = 1.0, 0.95
    return lam


def like(P: int) -> torch.Tensor:
    return torch.zeros(P, dtype=F64)


def check_pairs(e: Eigenpairs, A: torch.Tensor, k: int, tol: float, gap_ok: np.ndarray | None = None):
    """Values vs eigh, vectors up to sign, orthonormality, bound vs exact residual."""
    An = A.numpy()
    w, U = oracle(A)
    assert e.values.shape == (k,) and e.vectors.shape == (k, A.shape[0])
    assert e.values.dtype == np.float64 and e.vectors.dtype == A.dtype
    assert np.all(np.diff(e.values) <= 0)
    # each theta_i within tol |theta_i| of lambda_i (Ritz values interlace: theta_i <= lambda_i)
    assert np.all(np.abs(e.values - w[:k]) <= tol * np.abs(e.values) + 1e-12)
    V = e.vectors.numpy()
    assert np.allclose(V @ V.T, np.eye(k), atol=1e-10)
    exact = np.linalg.norm(An @ V.T - V.T * e.values, axis=0)
    assert np.allclose(e.residual_bounds, exact, rtol=1e-6, atol=1e-10 * abs(w).max())
    assert np.all(e.residual_bounds <= tol * np.abs(e.values) + 1e-12)
    if gap_ok is not None:
        for i in np.flatnonzero(gap_ok):
            # |<v, u>| >= 1 - (r / gap)^2-ish: require close to 1 where the gap allows
            assert abs(V[i] @ U[:, i]) > 1 - 1e-6


# --------------------------------------------------------------------------- Lanczos accuracy


@pytest.mark.parametrize("kind", ["psd", "indefinite"])
@pytest.mark.parametrize("k", [1, 4])
def test_lanczos_matches_eigh(kind: str, k: int):
    P = 200
    rng = np.random.default_rng(7)
    if kind == "psd":
        lam = np.sort(rng.uniform(0.0, 1.0, P))[::-1].copy()
        lam[:4] = [3.0, 2.5, 2.0, 1.6]
    else:  # large negative eigenvalues dominate |lambda|: Lanczos must still return the largest
        lam = np.sort(rng.uniform(-1.0, 1.0, P))[::-1].copy()
        lam[:4] = [3.0, 2.5, 2.0, 1.6]
        lam[-3:] = [-30.0, -40.0, -50.0]
    A = spectral(lam, seed=3)
    mv = Counted(A)
    tol = 1e-8
    e = lanczos_top(mv, like(P), k, tol=tol, max_iter=P, exact_residuals=True)
    assert e.converged
    assert mv.n == e.n_matvec
    assert e.residuals_exact
    check_pairs(e, A, k, tol, gap_ok=np.ones(k, bool))
    np.testing.assert_allclose(e.values, lam[:k], rtol=1e-12)
    assert np.allclose(e.residuals, e.residual_bounds, rtol=1e-4, atol=1e-12)
    assert e.n_matvec < P // 2 + k


def test_lanczos_default_tol_is_relative_residual():
    P = 200
    A = spectral(psd_gap_spectrum(P))
    for tol in (1e-2, 1e-3, 1e-5):
        e = lanczos_top(Counted(A), like(P), 2, tol=tol, max_iter=300)
        assert e.converged
        assert np.all(e.residual_bounds / np.abs(e.values) <= tol)
        check_pairs(e, A, 2, tol)


def test_lanczos_degenerate_top_needs_block():
    """A triple top eigenvalue: block size 3 finds all three copies, then the next one."""
    P = 200
    lam = np.sort(np.random.default_rng(2).uniform(0.0, 0.9, P))[::-1].copy()
    lam[:3] = 1.0
    A = spectral(lam, seed=5)
    e = lanczos_top(Counted(A), like(P), 4, tol=1e-8, max_iter=P, block_size=3)
    assert e.converged
    check_pairs(e, A, 4, 1e-8)
    np.testing.assert_allclose(e.values, lam[:4], atol=1e-12)
    # the three returned vectors span the eigenspace of 1
    U = oracle(A)[1][:, :3]
    Vt = e.vectors[:3].numpy()
    np.testing.assert_allclose(np.linalg.svd(Vt @ U)[1], 1.0, atol=1e-8)


def test_lanczos_clustered_top_single_vector():
    """Near-degenerate cluster (relative gaps 1e-4) resolved by single-vector Lanczos."""
    P = 200
    lam = np.sort(np.random.default_rng(4).uniform(0.0, 0.9, P))[::-1].copy()
    lam[:3] = [1.0, 1.0 - 1e-4, 1.0 - 2e-4]
    A = spectral(lam, seed=6)
    e = lanczos_top(Counted(A), like(P), 3, tol=1e-9, max_iter=P)
    assert e.converged
    check_pairs(e, A, 3, 1e-9)
    np.testing.assert_allclose(e.values, lam[:3], atol=1e-13)


def test_lanczos_invariant_breakdown_and_tiny_dims():
    # rank 2 operator, k = 3: the Krylov space is invariant after 2 steps and gets restarted
    lam = np.zeros(50)
    lam[:2] = [2.0, 1.0]
    A = spectral(lam)
    e = lanczos_top(Counted(A), 50, 3, tol=1e-8, dtype=F64)
    assert e.converged and e.n_matvec == 3
    np.testing.assert_allclose(e.values, [2.0, 1.0, 0.0], atol=1e-12)
    check_pairs(e, A, 3, 1e-8)
    # k = P: the whole space
    A3 = spectral(np.array([3.0, 1.0, -2.0]))
    e3 = lanczos_top(Counted(A3), like(3), 3, tol=1e-10)
    assert e3.converged and e3.n_matvec == 3
    np.testing.assert_allclose(e3.values, [3.0, 1.0, -2.0], atol=1e-12)


def test_lanczos_max_iter_not_converged():
    P = 300
    A = spectral(psd_gap_spectrum(P))
    mv = Counted(A)
    e = lanczos_top(mv, like(P), 3, tol=1e-12, max_iter=10)
    assert not e.converged and e.n_matvec == 10 == mv.n
    assert e.values.shape == (3,)


def test_dtype_and_like_handling():
    P = 60
    A = spectral(np.linspace(2.0, -1.0, P))
    A32 = A.float()
    e = lanczos_top(lambda v: A32 @ v, torch.zeros(P, dtype=torch.float32), 2, tol=1e-4)
    assert e.vectors.dtype == torch.float32 and e.values.dtype == np.float64
    np.testing.assert_allclose(e.values, np.linspace(2.0, -1.0, P)[:2], rtol=1e-4)
    e64 = lanczos_top(lambda v: A @ v, P, 2, tol=1e-8, dtype=F64)
    assert e64.vectors.dtype == F64
    with pytest.raises(ValueError, match="shape"):
        lanczos_top(lambda v: v[:-1], like(P), 1)


def test_seed_reproducibility():
    P = 150
    A = spectral(psd_gap_spectrum(P))
    a = lanczos_top(Counted(A), like(P), 3, tol=1e-6, seed=11)
    b = lanczos_top(Counted(A), like(P), 3, tol=1e-6, seed=11)
    c = lanczos_top(Counted(A), like(P), 3, tol=1e-6, seed=12)
    assert a.n_matvec == b.n_matvec
    np.testing.assert_array_equal(a.values, b.values)
    assert torch.equal(a.vectors, b.vectors)
    assert not torch.equal(a.vectors, c.vectors)
    np.testing.assert_allclose(a.values, c.values, rtol=1e-6)
    p1 = power_iteration(Counted(A), like(P), seed=3)
    p2 = power_iteration(Counted(A), like(P), seed=3)
    assert p1[0] == p2[0] and p1[2] == p2[2] and torch.equal(p1[1], p2[1])
    h1 = hutchinson_trace(Counted(A), like(P), n_samples=20, seed=5)
    h2 = hutchinson_trace(Counted(A), like(P), n_samples=20, seed=5)
    assert h1 == h2


# --------------------------------------------------------------------------- Lanczos vs power


def test_lanczos_far_fewer_matvecs_than_power_iteration():
    """lam1 = 100, lam2 = 95: matvecs to reach relative eigenvalue error 1e-7.

    (The scale 100 keeps PyHessian's ``v / (||v|| + 1e-6)`` bias, ~2e-6 / lam1 relative, below 1e-7.)
    """
    P, target = 300, 1e-7
    lam = 100.0 * psd_gap_spectrum(P)
    A = spectral(lam)
    e = lanczos_top(Counted(A), like(P), 1, tol=1e-4, max_iter=P)
    assert e.converged and abs(e.values[0] / 100.0 - 1.0) <= target
    assert e.n_matvec <= 25

    def power_err(n: int) -> float:
        # tol tiny: never stops early, so exactly n matvecs
        val, _, used = power_iteration(Counted(A), like(P), tol=1e-300, max_iter=n)
        assert used == n
        return abs(val / 100.0 - 1.0)

    # smallest n with power error <= target (the Rayleigh quotients increase for PSD A)
    lo, hi = 1, 64
    while power_err(hi) > target:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if power_err(mid) > target else (lo, mid)
    assert hi / e.n_matvec >= 5, (hi, e.n_matvec)
    # at the default tol = 1e-3 PyHessian's rule stops long before it is accurate
    val, _, n_p = power_iteration(Counted(A), like(P))
    e3 = lanczos_top(Counted(A), like(P), 1)
    assert abs(val / 100.0 - 1.0) > 1e-3 > 100 * abs(e3.values[0] / 100.0 - 1.0)
    assert e3.n_matvec < n_p


# --------------------------------------------------------------------------- warm start


def test_warm_start_needs_fewer_matvecs():
    """Eigenvectors of A0 as ``init`` for A1 = A0 + 1e-3 ||A0|| E (a nearby checkpoint)."""
    P, k = 300, 5
    lam = psd_gap_spectrum(P)
    A0 = spectral(lam)
    prev = lanczos_top(Counted(A0), like(P), k, tol=1e-8, max_iter=P)
    E = np.random.default_rng(5).standard_normal((P, P))
    E = (E + E.T) / 2
    A1 = A0 + 1e-3 * torch.tensor(E / np.linalg.norm(E, 2))
    w, U = scipy.linalg.eigh(A1.numpy(), subset_by_index=[P - k, P - 1])
    A1.oracle = (w[::-1], U[:, ::-1])
    counts = {}
    for tol in (1e-3, 1e-6):
        cold = lanczos_top(Counted(A1), like(P), k, tol=tol, max_iter=P)
        mv = Counted(A1)
        warm = lanczos_top(mv, like(P), k, tol=tol, max_iter=P, init=prev.vectors)
        assert cold.converged and warm.converged and mv.n == warm.n_matvec
        check_pairs(warm, A1, k, tol)
        check_pairs(cold, A1, k, tol)
        counts[tol] = (cold.n_matvec, warm.n_matvec)
        assert warm.n_matvec < 0.7 * cold.n_matvec, counts
    assert counts[1e-3][1] == k  # Rayleigh-Ritz on span(init) already meets tol 1e-3
    # the eigenvectors of the same operator: k matvecs
    same = lanczos_top(Counted(A0), like(P), k, tol=1e-6, init=prev.vectors)
    assert same.converged and same.n_matvec == k
    np.testing.assert_allclose(same.values, lam[:k], atol=1e-12)
    # fewer init vectors than k (sum start only), and a single 1-D init vector
    few = lanczos_top(Counted(A1), like(P), k, tol=1e-6, max_iter=P, init=prev.vectors[:2])
    assert few.converged
    check_pairs(few, A1, k, 1e-6)
    one = lanczos_top(Counted(A1), like(P), 1, tol=1e-6, max_iter=P, init=prev.vectors[0])
    assert one.converged and one.n_matvec < lanczos_top(Counted(A1), like(P), 1, tol=1e-6).n_matvec
    # block start variant (block_size > 1) works too
    blk = lanczos_top(Counted(A1), like(P), k, tol=1e-3, max_iter=P, init=prev.vectors, block_size=k)
    assert blk.converged and blk.n_matvec == k
    check_pairs(blk, A1, k, 1e-3)


# --------------------------------------------------------------------------- power iteration


def test_power_iteration_stopping_rule():
    P, tol = 100, 1e-3
    A = spectral(psd_gap_spectrum(P))
    quotients: list[float] = []

    def mv(v: torch.Tensor) -> torch.Tensor:
        w = A @ v
        quotients.append(float(w @ v))
        return w

    val, vec, n = power_iteration(mv, like(P), tol=tol, max_iter=1000)
    assert n == len(quotients) >= 2
    rel = [abs(quotients[i - 1] - quotients[i]) / (abs(quotients[i - 1]) + 1e-6) for i in range(1, n)]
    assert rel[-1] < tol and all(r >= tol for r in rel[:-1])
    assert val == quotients[-2]  # PyHessian keeps the previous value
    w = A @ vec  # vector: the last normalised A v, norm 1 up to the 1e-6 of PyHessian
    assert abs(float(vec.norm()) - 1.0) < 1e-5 and float(w @ vec) > 0.9
    # max_iter caps the matvecs
    val2, _, n2 = power_iteration(Counted(A), like(P), tol=1e-300, max_iter=7)
    assert n2 == 7


# --------------------------------------------------------------------------- Hutchinson


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_unbiased_and_se(distribution: str):
    P = 80
    lam = np.random.default_rng(8).uniform(-1.0, 2.0, P)
    A = spectral(lam, seed=9)
    tr = float(lam.sum())
    ses = []
    for seed in range(5):
        mv = Counted(A)
        est, se, n = hutchinson_trace(mv, like(P), n_samples=100, seed=seed, distribution=distribution)
        assert n == 100 == mv.n
        assert abs(est - tr) < 4 * se
        ses.append(se)
    _, se_big, _ = hutchinson_trace(Counted(A), like(P), n_samples=1600, seed=0, distribution=distribution)
    ratio = se_big / float(np.mean(ses))  # expected 1/sqrt(16) = 0.25
    assert 0.18 < ratio < 0.34, ratio
    # SE matches the known variance: Rademacher 2 sum_{i!=j} A_ij^2, Gaussian 2 ||A||_F^2
    An = A.numpy()
    var = 2 * (np.sum(An**2) - (np.sum(np.diag(An) ** 2) if distribution == "rademacher" else 0.0))
    assert se_big == pytest.approx(math.sqrt(var / 1600), rel=0.1)


def test_hutchinson_deflated_unbiased_smaller_se():
    P = 100
    lam = np.random.default_rng(10).uniform(-1.0, 1.0, P)
    lam[:3] = [60.0, 40.0, 25.0]  # dominant top eigenvalues
    A = spectral(lam, seed=11)
    tr = float(lam.sum())
    top = lanczos_top(Counted(A), like(P), 3, tol=1e-3)
    ests, se_plain, se_defl = [], [], []
    for seed in range(6):
        e0, s0, _ = hutchinson_trace(Counted(A), like(P), n_samples=50, seed=seed)
        mv = Counted(A)
        e1, s1, n1 = hutchinson_trace(mv, like(P), n_samples=50, seed=seed, deflate=top)
        assert n1 == mv.n == 50
        assert abs(e0 - tr) < 4 * s0 and abs(e1 - tr) < 4 * s1
        ests.append(e1)
        se_plain.append(s0)
        se_defl.append(s1)
    assert np.mean(se_defl) < 0.1 * np.mean(se_plain)
    # unbiased: the mean of the 6 estimates is within 4 SE of the mean
    assert abs(np.mean(ests) - tr) < 4 * np.mean(se_defl) / math.sqrt(6)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_frobenius_within_se_of_the_exact_norm(distribution: str):
    P = 80
    lam = np.random.default_rng(12).uniform(-1.0, 2.0, P)
    A = spectral(lam, seed=13)
    frob = float(np.sqrt(np.sum(lam**2)))
    for seed in range(4):
        mv = Counted(A)
        r = hutchinson_trace_frobenius(mv, like(P), n_samples=100, seed=seed, distribution=distribution)
        assert mv.n == r["n_matvec"] == 100
        assert abs(r["frobenius"] - frob) < 4 * r["frobenius_se"]
        # the trace from the same probes is hutchinson_trace's
        assert (r["trace"], r["trace_se"]) == hutchinson_trace(
            Counted(A), like(P), n_samples=100, seed=seed, distribution=distribution
        )[:2]


def test_hutchinson_frobenius_deflated_counts_the_ritz_residuals():
    """Loose Lanczos (tol 0.3): Ritz vectors with sizeable residuals; sum theta^2 alone would be biased
    low, the 2 sum r^2 term restores ||A||_F^2. All P eigenpairs deflated: exact with no probe noise."""
    P = 60
    lam = np.random.default_rng(14).uniform(-0.5, 0.5, P)
    lam[:4] = [30.0, 20.0, 12.0, 8.0]
    A = spectral(lam, seed=15)
    frob = float(np.sqrt(np.sum(lam**2)))
    top = lanczos_top(Counted(A), like(P), 4, tol=0.3, max_iter=6)
    assert np.max(top.residuals) > 0.1  # the test needs inexact pairs
    ests = []
    for seed in range(5):
        r = hutchinson_trace_frobenius(Counted(A), like(P), n_samples=40, seed=seed, deflate=top)
        assert abs(r["frobenius"] - frob) < 4 * r["frobenius_se"]
        ests.append(r["frobenius"] ** 2)
    assert abs(np.mean(ests) - frob**2) < 0.02 * frob**2
    w, V = np.linalg.eigh(A.numpy())
    full = Eigenpairs(
        values=w[::-1].copy(),
        vectors=torch.as_tensor(V[:, ::-1].T.copy()),
        residuals=np.zeros(P),
        n_matvec=0,
        converged=True,
    )
    r = hutchinson_trace_frobenius(Counted(A), like(P), n_samples=3, seed=0, deflate=full)
    assert r["frobenius"] == pytest.approx(frob, rel=1e-10) and r["frobenius_se"] < 1e-8 * frob


# --------------------------------------------------------------------------- small helpers


def test_dense_matrix_and_frobenius():
    A = spectral(np.array([2.0, -1.0, 0.5, 0.0]), seed=2)
    mv = Counted(A)
    D = dense_matrix(mv, like(4))
    assert mv.n == 4
    assert D.dtype == F64
    np.testing.assert_allclose(D.numpy(), A.numpy(), rtol=0, atol=1e-15)
    assert frobenius_from_top([3.0, -4.0]) == pytest.approx(5.0)
    e = lanczos_top(Counted(A), like(4), 2, tol=1e-10)
    assert frobenius_from_top(e) == pytest.approx(math.sqrt(4.0 + 0.25))
    assert frobenius_from_top(e) <= float(torch.linalg.matrix_norm(A)) + 1e-12


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(k=0), "k"),
        (dict(k=11), "k"),
        (dict(k=2, tol=0.0), "tol"),
        (dict(k=2, tol=-1.0), "tol"),
        (dict(k=2, max_iter=0), "max_iter"),
        (dict(k=2, block_size=0), "block_size"),
        (dict(k=2, init=torch.zeros(3, 4)), "init"),
    ],
)
def test_lanczos_errors_name_parameter(kwargs, name):
    A = spectral(np.linspace(1.0, 0.1, 10))
    with pytest.raises(UserInputError, match=rf"^{name}\b"):
        lanczos_top(Counted(A), like(10), **kwargs)


def test_other_errors():
    A = spectral(np.linspace(1.0, 0.1, 10))
    assert issubclass(UserInputError, ValueError)
    with pytest.raises(UserInputError, match="tol"):
        power_iteration(Counted(A), like(10), tol=0.0)
    with pytest.raises(UserInputError, match="n_samples"):
        hutchinson_trace(Counted(A), like(10), n_samples=0)
    with pytest.raises(UserInputError, match="distribution"):
        hutchinson_trace(Counted(A), like(10), distribution="uniform")
    with pytest.raises(UserInputError, match="dim_or_like"):
        lanczos_top(Counted(A), 0, 1)
