"""dnn.covariance against dense float64 truth: explicit D^T D / L and K from a loop of per-example
gradients (tiny P), exact enumeration of all mini-batches (the factors 1/M and (N-M)/(M(N-1))),
Monte Carlo unbiasedness of the trace, reproducibility and input errors."""

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from dnn.covariance import (
    covariance_from_gram,
    exact_covariance,
    gradient_covariance,
    mini_batch_gradients,
    mini_batch_indices,
)
from dnn.objective import Objective
from valleysim.errors import UserInputError

KEYS = {"lambda_K", "trace_K", "trace_ratio", "eigenvalues_K", "eigenvectors_K"}


def mlp(d_in=5, hidden=4, classes=3, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, classes))


def make_objective(n, d_in=5, hidden=4, classes=3, seed=1, chunk=512) -> Objective:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, d_in, generator=g), torch.randint(0, classes, (n,), generator=g)
    return Objective(mlp(d_in, hidden, classes), x, y, chunk=chunk)


def dense_K(obj: Objective, theta=None) -> torch.Tensor:
    """K from a loop of single-example objectives (P x P, float64)."""
    th = obj.theta0 if theta is None else theta
    G = torch.stack([obj.grad(th, idx=[i]) for i in range(obj.n)])
    D = G - G.mean(0)
    return sum(torch.outer(d, d) for d in D) / obj.n


def assert_matches_dense(res, C: torch.Tensor, k: int, rtol=1e-10):
    """res's summaries equal numpy.linalg.eigh of the explicit P x P matrix C."""
    assert KEYS <= set(res)
    w, V = np.linalg.eigh(C.numpy())
    w, V = w[::-1][:k], V[:, ::-1][:, :k]
    scale = float(w[0])
    np.testing.assert_allclose(res["eigenvalues_K"], w, rtol=rtol, atol=rtol * scale)
    assert res["lambda_K"] == pytest.approx(float(w[0]), rel=rtol)
    assert res["trace_K"] == pytest.approx(float(torch.trace(C)), rel=1e-12)
    assert res["trace_ratio"] == pytest.approx(float(torch.trace(C)) / float(w[0]), rel=rtol)
    E = res["eigenvectors_K"]
    assert isinstance(E, torch.Tensor) and E.shape == (k, C.shape[0]) and E.dtype == torch.float64
    torch.testing.assert_close(E @ E.T, torch.eye(k, dtype=torch.float64), rtol=0, atol=1e-10)
    # eigenvectors up to sign (the test spectra are simple), and C v = lambda v
    overlap = np.abs(np.einsum("kp,pk->k", E.numpy(), V))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-8)
    torch.testing.assert_close(
        E @ C, torch.as_tensor(res["eigenvalues_K"].copy())[:, None] * E, rtol=0, atol=1e-9 * scale
    )


# --------------------------------------------------------------------------- covariance_from_gram


@pytest.mark.parametrize("L,P", [(7, 12), (20, 5)])  # the L x L side and the P x P side
@pytest.mark.parametrize("n_total", [None, 40])
def test_covariance_from_gram_equals_dense_eigh(L, P, n_total):
    gen = torch.Generator().manual_seed(L * P)
    G = torch.randn(L, P, dtype=torch.float64, generator=gen) * torch.linspace(0.2, 2.0, P, dtype=torch.float64)
    g = torch.randn(P, dtype=torch.float64, generator=gen)
    M, k = 3, 4
    res = covariance_from_gram(G, g, M, n_total=n_total, k=k)
    c = 1 / M if n_total is None else (n_total - M) / (M * (n_total - 1))
    D = G - g
    assert_matches_dense(res, D.T @ D / L / c, k)


def test_covariance_from_gram_k_above_rank_and_zero_spread():
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(3, 10, dtype=torch.float64, generator=gen)
    res = covariance_from_gram(G, G.mean(0), 2, k=5)  # centred by its own mean: rank 2
    assert res["eigenvalues_K"].shape == (3,)  # min(k, L)
    assert res["eigenvalues_K"][2] == pytest.approx(0.0, abs=1e-12)
    assert torch.all(res["eigenvectors_K"][2] == 0)  # null direction: undefined -> zeros
    same = covariance_from_gram(G[[0, 0]], G[0], 2, k=1)  # every batch gradient equals g
    assert same["lambda_K"] == 0.0 and same["trace_K"] == 0.0 and math.isnan(same["trace_ratio"])


def test_covariance_from_gram_refuses_full_batches():
    """A batch of all N examples has g_B = g: K cannot be estimated from it (c(N, N) = 0)."""
    G = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(UserInputError, match="batch_size must be < n_total = 6"):
        covariance_from_gram(G, G.mean(0), 6, n_total=6)


# --------------------------------------------------------------------------- exact_covariance


@pytest.mark.parametrize("n,hidden", [(9, 4), (60, 2)])  # n < P = 39 and n > P = 21
def test_exact_covariance_equals_loop_of_per_example_gradients(n, hidden):
    obj = make_objective(n, hidden=hidden, chunk=4)
    theta = obj.theta0 + 0.3 * torch.randn(obj.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    for th in (None, theta):
        K = dense_K(obj, th)
        assert_matches_dense(exact_covariance(obj, theta=th, k=4), K, 4)


# --------------------------------------------------------------------------- exact identities by enumeration


def test_enumerating_all_batches_recovers_K_exactly():
    """Averaging over every possible batch turns E[(g_B - g)(g_B - g)^T] into an exact finite sum:
    uniform M-subsets (N = 6, M = 2: 15 batches) give c(M, N) K with c = (N-M)/(M(N-1)); ordered
    M-tuples with replacement (36) give K / M. So covariance_from_gram over all of them is K itself."""
    N, M = 6, 2
    obj = make_objective(N)
    g = obj.grad()
    K = dense_K(obj)
    truth = exact_covariance(obj, k=4)
    subsets = list(itertools.combinations(range(N), M))
    G = torch.stack([obj.grad(idx=list(b)) for b in subsets])
    D = G - g
    torch.testing.assert_close(D.T @ D / len(subsets), (N - M) / (M * (N - 1)) * K, rtol=1e-10, atol=1e-14)
    res = covariance_from_gram(G, g, M, n_total=N, k=4)
    assert_matches_dense(res, K, 4)
    assert res["trace_K"] == pytest.approx(truth["trace_K"], rel=1e-12)
    np.testing.assert_allclose(res["eigenvalues_K"], truth["eigenvalues_K"], rtol=1e-10)
    tuples = list(itertools.product(range(N), repeat=M))
    Gr = torch.stack([obj.grad(idx=list(b)) for b in tuples])
    Dr = Gr - g
    torch.testing.assert_close(Dr.T @ Dr / len(tuples), K / M, rtol=1e-10, atol=1e-14)
    assert_matches_dense(covariance_from_gram(Gr, g, M, k=4), K, 4)
    # the with-replacement factor applied to subsets is biased by (N - M)/(N - 1)
    wrong = covariance_from_gram(G, g, M, k=1)
    assert wrong["trace_K"] == pytest.approx(truth["trace_K"] * (N - M) / (N - 1), rel=1e-12)


# --------------------------------------------------------------------------- Monte Carlo unbiasedness


class PerExampleMeans:
    """The part of the Objective interface the estimator uses, with batch gradients as means of
    precomputed per-example gradients (exact under bn="eval"; checked against obj.grad below)."""

    def __init__(self, obj: Objective):
        self.G, self.n = obj.per_example_grads(), obj.n

    def grad(self, theta=None, idx=None):
        assert theta is None
        return self.G.mean(0) if idx is None else self.G[torch.as_tensor(idx)].mean(0)


def test_per_example_means_stand_in_for_the_objective():
    obj = make_objective(12, seed=3)
    fast = PerExampleMeans(obj)
    idx = mini_batch_indices(12, 4, 3, seed=0, replace=True)  # repeated indices count twice
    torch.testing.assert_close(
        mini_batch_gradients(fast, 4, 3, seed=0, replace=True),
        mini_batch_gradients(obj, 4, 3, seed=0, replace=True),
        rtol=1e-12,
        atol=1e-15,
    )
    torch.testing.assert_close(fast.grad(idx=idx[0]), obj.grad(idx=idx[0]), rtol=1e-12, atol=1e-15)
    a, b = gradient_covariance(fast, 5, 2, seed=4, k=2), gradient_covariance(obj, 5, 2, seed=4, k=2)
    assert a["trace_K"] == pytest.approx(b["trace_K"], rel=1e-10)
    np.testing.assert_allclose(a["eigenvalues_K"], b["eigenvalues_K"], rtol=1e-10)


@pytest.mark.parametrize(
    "M,L,replace",
    [
        (2, 5, False),  # disjoint subsets (L M = 10 <= 12)
        (4, 5, False),  # independent subsets (L M = 20 > 12)
        (1, 4, True),  # M = 1 (c = 1 either way)
        (3, 4, True),
    ],
)  # i.i.d. indices
def test_trace_estimate_is_unbiased(M, L, replace):
    """mean over R = 300 seeds of trace_K is within 5 standard errors of the exact Tr K.
    The R estimates are i.i.d. with finite variance, so by the CLT the z-score is ~N(0, 1): a false
    failure has probability ~6e-7 (and the seeds are fixed, so the test is deterministic). The
    power is real: the uncorrected 1/M factor is off by (N-M)/(N-1) = 10/11 and 8/11 in the two
    without-replacement cases, measured at z ~ -8 and ~ -26, and asserted to be rejected (z < -5)."""
    obj = make_objective(12, seed=3)
    truth = exact_covariance(obj, k=1)["trace_K"]
    fast = PerExampleMeans(obj)  # same batch gradients, without autograd per call
    R = 300
    est = np.array([gradient_covariance(fast, L, M, seed=s, k=1, replace=replace)["trace_K"] for s in range(R)])
    se = est.std(ddof=1) / math.sqrt(R)
    z = (est.mean() - truth) / se
    assert abs(z) < 5, (est.mean(), truth, se)
    assert se < 0.05 * truth  # the check is sharp enough
    if not replace:  # power: the same batches with the with-replacement factor 1/M are rejected
        naive = np.array(
            [
                covariance_from_gram(mini_batch_gradients(fast, L, M, seed=s), fast.grad(), M, k=1)["trace_K"]
                for s in range(R)
            ]
        )
        assert (naive.mean() - truth) / (naive.std(ddof=1) / math.sqrt(R)) < -5


# --------------------------------------------------------------------------- sampling, reproducibility


def test_indices_disjoint_or_independent_and_seeded():
    a = mini_batch_indices(20, 4, 5, seed=7)
    assert a.shape == (4, 5) and a.dtype == torch.long
    assert len(set(a.flatten().tolist())) == 20  # L M <= n: disjoint
    b = mini_batch_indices(20, 5, 8, seed=7)  # L M > n: subsets, not disjoint
    assert all(len(set(r.tolist())) == 8 for r in b)
    assert len(set(b.flatten().tolist())) < 40
    r = mini_batch_indices(5, 3, 9, seed=1, replace=True)  # with replacement: M > n allowed
    assert r.shape == (3, 9) and int(r.min()) >= 0 and int(r.max()) < 5
    assert torch.equal(mini_batch_indices(20, 4, 5, seed=7), a)
    assert not torch.equal(mini_batch_indices(20, 4, 5, seed=8), a)


def test_seeded_reproducibility_and_batch_gradients():
    obj = make_objective(16)
    G = mini_batch_gradients(obj, 3, 4, seed=11)
    idx = mini_batch_indices(16, 3, 4, seed=11)
    torch.testing.assert_close(G, torch.stack([obj.grad(idx=b) for b in idx]), rtol=0, atol=0)
    r1 = gradient_covariance(obj, 3, 4, seed=11, k=2)
    r2 = gradient_covariance(obj, 3, 4, seed=11, k=2)
    assert r1["trace_K"] == r2["trace_K"] and np.array_equal(r1["eigenvalues_K"], r2["eigenvalues_K"])
    assert torch.equal(r1["eigenvectors_K"], r2["eigenvectors_K"])
    assert gradient_covariance(obj, 3, 4, seed=12, k=2)["trace_K"] != r1["trace_K"]
    # theta is honoured
    th = obj.theta0 + 0.1
    torch.testing.assert_close(
        mini_batch_gradients(obj, 3, 4, seed=11, theta=th), torch.stack([obj.grad(th, idx=b) for b in idx])
    )


# --------------------------------------------------------------------------- errors


def test_errors_name_the_parameter():
    obj = make_objective(8)
    with pytest.raises(UserInputError, match="n_batches"):
        gradient_covariance(obj, 1, 2)
    with pytest.raises(UserInputError, match="batch_size"):
        gradient_covariance(obj, 3, 0)
    with pytest.raises(UserInputError, match="batch_size"):
        gradient_covariance(obj, 3, 9)
    with pytest.raises(UserInputError, match="batch_size"):
        gradient_covariance(obj, 3, 8)  # M = N without replacement: c = 0
    with pytest.raises(UserInputError, match="k"):
        gradient_covariance(obj, 3, 2, k=0)
    with pytest.raises(UserInputError, match="k"):
        exact_covariance(obj, k=0)
    G, g = torch.zeros(3, obj.dim, dtype=torch.float64), torch.zeros(obj.dim, dtype=torch.float64)
    with pytest.raises(UserInputError, match="n_batches"):
        covariance_from_gram(G[:1], g, 2)
    with pytest.raises(UserInputError, match="batch_size"):
        covariance_from_gram(G, g, 0)
    with pytest.raises(UserInputError, match="batch_size"):
        covariance_from_gram(G, g, 9, n_total=8)
    with pytest.raises(UserInputError, match="k"):
        covariance_from_gram(G, g, 2, k=0)
    with pytest.raises(UserInputError, match="g_full"):
        covariance_from_gram(G, g[:-1], 2)


def test_the_papers_gram_units_and_their_expectation():
    """lambda_K_gram / trace_K_gram are the top eigenvalue and trace of the L x L Gram <g_i - g, g_j - g>
    (break-even-point.txt App. B, no 1/L, no 1/c), and over all C(N, M) batches E ||g_B - g||^2 = c Tr K:
    the paper's Tr K_hat estimates L c Tr K, not Tr K (ERRATA 14)."""
    import itertools

    rng = np.random.default_rng(3)
    N, M, P, L = 6, 2, 4, 5
    per_example = rng.standard_normal((N, P))
    g = per_example.mean(0)
    idx = np.array([rng.choice(N, M, replace=False) for _ in range(L)])
    G = per_example[idx].mean(1)
    res = covariance_from_gram(torch.as_tensor(G), torch.as_tensor(g), M, n_total=N, k=2)
    D = G - g
    gram = D @ D.T
    assert res["lambda_K_gram"] == pytest.approx(np.linalg.eigvalsh(gram)[-1], rel=1e-12)
    assert res["trace_K_gram"] == pytest.approx(np.trace(gram), rel=1e-12)
    K = np.cov(per_example.T, bias=True)
    c = (N - M) / (M * (N - 1))
    all_batches = [per_example[list(b)].mean(0) - g for b in itertools.combinations(range(N), M)]
    assert np.mean([d @ d for d in all_batches]) == pytest.approx(c * np.trace(K), rel=1e-12)
    assert res["trace_K_gram"] == pytest.approx(L * c * res["trace_K"], rel=1e-12)
