"""The gradient covariance K of a network over a fixed data set, and its summaries, matrix-free.

For the N examples of an :class:`~dnn.objective.Objective` with per-example gradients g_i (P,) and
mean gradient g = (1/N) sum_i g_i,

    K = (1/N) sum_i (g_i - g)(g_i - g)^T                                        (P, P),

summarised (App. B of the break-even-point paper) by lambda_K = lambda_max(K), Tr K and
Tr K / lambda_K. No P x P matrix is ever formed: every spectrum comes from the smaller of the two
Gram matrices of a centred (L, P) matrix D,

    C = s D^T D (P x P)   and   s D D^T (L x L)  have the same nonzero eigenvalues mu_j,
    eigenvector of C:  v_j = D^T u_j / ||D^T u_j||  (= D^T u_j / sqrt(mu_j / s)),

where u_j are the unit eigenvectors of the small matrix (eigendecomposed in float64); Tr C = s ||D||_F^2.

Mini-batch estimator (the paper's, after Papyan 2019): L mini-batch gradients g_B of size M, centred by
the full gradient g. For a batch B drawn uniformly,

    with replacement (M i.i.d. uniform indices):   E[(g_B - g)(g_B - g)^T] = K / M,
    without replacement (a uniform M-subset):      E[(g_B - g)(g_B - g)^T] = c(M, N) K,
                                                   c(M, N) = (N - M) / (M (N - 1)),

(the second is the finite-population correction of a sample mean: Var = (1 - M/N) S^2 / M with
S^2 = N K / (N - 1)). Hence with C_M = D^T D / L, D = G_batches - g, the estimate K_hat = C_M / c (c = 1/M
with replacement) is unbiased for K, entry by entry; see :func:`gradient_covariance`.

Functions:
  :func:`mini_batch_indices`   (L, M) seeded uniform mini-batch indices.
  :func:`mini_batch_gradients` (L, P) their mean gradients.
  :func:`covariance_from_gram` K_hat's summaries from (L, P) batch gradients and the full gradient.
  :func:`gradient_covariance`  the two above on an objective (the paper's estimator, L = 25, M = 128).
  :func:`exact_covariance`     K from all (n, P) per-example gradients (validation truth, small models).
  :func:`alignment`            K_hat (Gram) against H: tr(HK), cos_HK, eigenvector cosines, alpha.
  :func:`top_cosine`, :func:`subspace_overlap`  how two sets of top eigenvectors (rows) line up.
  :func:`hutchinson_products`  tr A, ||A||_F, tr(AB), cos_AB for several operators from the same probes
                               (H, the exact K of :meth:`~dnn.objective.Objective.covariance_vp`, G).
  :func:`ratio`                a / b, nan unless b > 0 (every ratio to a norm or top eigenvalue here).

Each summary is a dict with the keys ``"lambda_K"`` (float), ``"trace_K"`` (float), ``"trace_ratio"``
(float, Tr K / lambda_K; nan when lambda_K = 0), ``"eigenvalues_K"`` (numpy (k',), descending,
k' = min(k, rank side)) and ``"eigenvectors_K"`` (tensor (k', P), orthonormal rows; a row for a
numerically zero eigenvalue is undefined and returned as zeros).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from valleysim.errors import UserInputError, check_int_range
from valleysim.stats import mean_se
from valleysim.theory import variance_factor

__all__ = [
    "mini_batch_indices",
    "mini_batch_gradients",
    "covariance_from_gram",
    "gradient_covariance",
    "exact_covariance",
    "alignment",
    "top_cosine",
    "subspace_overlap",
    "hutchinson_products",
    "ratio",
]


def mini_batch_indices(
    n: int, n_batches: int = 25, batch_size: int = 128, *, seed: int = 0, replace: bool = False
) -> torch.Tensor:
    """(L, M) int64 indices into ``range(n)``, from ``numpy.random.default_rng(seed)``.

    ``replace=False``: each batch is a uniform M-subset; the L batches are disjoint (the first L M
    entries of one uniform permutation) when L M <= n, else independent subsets.
    ``replace=True``: L M i.i.d. uniform indices (then any ``batch_size`` >= 1 is allowed).
    """
    n = check_int_range(n, "n", 1)
    L = check_int_range(n_batches, "n_batches", 2)
    M = check_int_range(batch_size, "batch_size", 1, None if replace else n)
    rng = np.random.default_rng(seed)
    if replace:
        idx = rng.integers(0, n, size=(L, M))
    elif L * M <= n:
        idx = rng.permutation(n)[: L * M].reshape(L, M)
    else:
        idx = np.stack([rng.choice(n, size=M, replace=False) for _ in range(L)])
    return torch.as_tensor(idx, dtype=torch.long)


def mini_batch_gradients(
    objective,
    n_batches: int = 25,
    batch_size: int = 128,
    *,
    seed: int = 0,
    theta: torch.Tensor | None = None,
    replace: bool = False,
) -> torch.Tensor:
    """(L, P) mean gradients g_B = (1/M) sum_{i in B} g_i of the batches of :func:`mini_batch_indices`
    (``objective.n`` examples), at ``theta`` (default ``objective.theta0``)."""
    idx = mini_batch_indices(objective.n, n_batches, batch_size, seed=seed, replace=replace)
    return torch.stack([objective.grad(theta, idx=b) for b in idx])


def _spectrum(D: torch.Tensor, scale: float, k: int) -> dict:
    """Summaries of C = scale * D^T D for D (L, P), via the smaller Gram side (float64)."""
    L, P = D.shape
    D = D.to(torch.float64)
    small_is_gram = L <= P
    S = (D @ D.T) if small_is_gram else (D.T @ D)  # (L, L) or (P, P), the smaller one
    S = 0.5 * (S + S.T) * scale
    mu, U = np.linalg.eigh(S.cpu().numpy())  # ascending
    order = np.argsort(mu)[::-1]
    mu, U = np.clip(mu[order], 0.0, None), U[:, order]
    trace = float(scale * (D * D).sum())
    kk = min(k, mu.size)
    mu, U = mu[:kk], torch.as_tensor(np.ascontiguousarray(U[:, :kk]), dtype=torch.float64, device=D.device)
    if small_is_gram:
        V = (D.T @ U).T  # (k', P), row j = D^T u_j
        norms = V.norm(dim=1, keepdim=True)
        tol = max(L, P) * np.finfo(np.float64).eps * (float(mu[0]) if mu.size else 0.0)
        null = torch.as_tensor(mu <= tol, device=D.device)
        V = torch.where(null[:, None], torch.zeros_like(V), V / norms.clamp_min(torch.finfo(torch.float64).tiny))
    else:
        tol = max(L, P) * np.finfo(np.float64).eps * (float(mu[0]) if mu.size else 0.0)
        null = torch.as_tensor(mu <= tol, device=D.device)
        V = torch.where(null[:, None], torch.zeros_like(U.T), U.T).contiguous()
    lam = float(mu[0]) if mu.size else 0.0
    return {
        "lambda_K": lam,
        "trace_K": trace,
        "trace_ratio": ratio(trace, lam),
        "eigenvalues_K": mu.copy(),
        "eigenvectors_K": V,
    }


def centred_batch_gradients(G_batches: torch.Tensor, g_full: torch.Tensor, batch_size: int, n_total: int | None):
    """(D, c): D = G_batches - g_full (L, P) in float64 and the sampling factor c(M, N) of
    :func:`covariance_from_gram` (so K_hat = D^T D / (L c)); checks the shapes and M < N."""
    if G_batches.ndim != 2:
        raise UserInputError(f"G_batches must have shape (L, P), got {tuple(G_batches.shape)}")
    L, P = G_batches.shape
    check_int_range(L, "n_batches", 2)
    if tuple(g_full.shape) != (P,):
        raise UserInputError(f"g_full must have shape ({P},), got {tuple(g_full.shape)}")
    M = check_int_range(batch_size, "batch_size", 1)
    if n_total is not None:
        N = check_int_range(n_total, "n_total", 1)
        if check_int_range(M, "batch_size", 1, N) == N:
            raise UserInputError(
                f"batch_size must be < n_total = {n_total} for batches drawn without replacement (a batch of all "
                f"examples has g_B = g, so it carries no information on K); got {M}"
            )
    c = variance_factor(M, M, "with_replacement") if n_total is None else variance_factor(M, n_total)
    D = G_batches.to(torch.float64) - g_full.to(device=G_batches.device, dtype=torch.float64)
    return D, c


def covariance_from_gram(
    G_batches: torch.Tensor, g_full: torch.Tensor, batch_size: int, n_total: int | None = None, k: int = 5
) -> dict:
    """Summaries of K_hat = C_M / c(M, N) from L mini-batch gradients.

    G_batches (L, P): mean gradients of L batches of size M = ``batch_size``; g_full (P,): the full
    gradient g of the N examples the batches were drawn from. D = G_batches - g, C_M = D^T D / L,
    and c = (N - M) / (M (N - 1)) when ``n_total`` = N is given (each batch a uniform M-subset, drawn
    without replacement), c = 1 / M when it is None (indices i.i.d. with replacement). The spectrum
    comes from the L x L Gram matrix D D^T / (L c) (same nonzero eigenvalues as K_hat); eigenvectors
    D^T u / ||D^T u||. Tr K_hat = ||D||_F^2 / (L c) exactly. Returns the keys of the module docstring
    (top min(k, L) eigenpairs), and the paper's units: ``lambda_K_gram`` and ``trace_K_gram``, the top
    eigenvalue and the trace of the Gram D D^T itself (= L c x ours; E Tr = L c Tr K, not Tr K).
    """
    D, c = centred_batch_gradients(G_batches, g_full, batch_size, n_total)
    L = D.shape[0]
    check_int_range(k, "k", 1)
    out = _spectrum(D, 1.0 / (L * c), k)
    # the paper's K_hat (break-even-point.txt App. B): the L x L Gram <g_i - g, g_j - g>, no 1/L, no 1/c
    out.update(lambda_K_gram=L * c * out["lambda_K"], trace_K_gram=float((D * D).sum()))
    return out


def gradient_covariance(
    objective,
    n_batches: int = 25,
    batch_size: int = 128,
    *,
    seed: int = 0,
    theta: torch.Tensor | None = None,
    k: int = 5,
    replace: bool = False,
) -> dict:
    """The paper's estimate of K (App. B): L = ``n_batches`` seeded mini-batch gradients of size M =
    ``batch_size`` (:func:`mini_batch_gradients`), centred by the full gradient g of the objective's
    N examples, through :func:`covariance_from_gram` with the factor of the sampling used
    (c = (N - M)/(M (N - 1)) without replacement, 1/M with).

    Unbiasedness: because the centre is the exact g (not the mean of the L batch gradients, hence
    the 1/L), each term (g_B - g)(g_B - g)^T / c has expectation K over the batch draw, and so
    E[K_hat] = K entry by entry; in particular E[trace_K] = Tr K exactly. This holds for disjoint
    batches too (each is marginally a uniform M-subset; the dependence between batches changes only
    the variance). It assumes g_B is the mean of independent per-example gradients (not true under
    ``bn="batch"`` with BatchNorm). The spectral summaries are nonlinear and not unbiased: K_hat has
    rank <= L, and E[lambda_K] >= lambda_max(K) (lambda_max is convex), trace_ratio <= L.
    """
    G = mini_batch_gradients(objective, n_batches, batch_size, seed=seed, theta=theta, replace=replace)
    g = objective.grad(theta)
    return covariance_from_gram(G, g, batch_size, None if replace else objective.n, k=k)


def exact_covariance(objective, theta: torch.Tensor | None = None, k: int = 5) -> dict:
    """K = D^T D / n exactly, D = G - mean_i g_i from the per-example gradients G (n, P) of all the
    objective's examples (``bn="eval"``), via the n x n Gram matrix when n <= P (else the P x P
    matrix, which is then the smaller). For small models: the truth that validates the estimators.
    Returns the keys of the module docstring (top min(k, n, P) eigenpairs)."""
    check_int_range(k, "k", 1)
    G = objective.per_example_grads(theta).to(torch.float64)
    D = G - G.mean(0)
    return _spectrum(D, 1.0 / G.shape[0], k)


def alignment(
    hvp,
    G_batches,
    g_full,
    batch_size: int,
    n_total: int | None,
    eigvecs_H,
    lambda_H1: float,
    frobenius_H: float,
    eigvecs_K,
) -> dict:
    """How the gradient covariance K_hat = D^T D / (L c) (:func:`covariance_from_gram`) lines up with the
    Hessian H (``hvp``: v -> H v), with s = 1 / (L c), D = G_batches - g_full (L, P):

        trace_HK      tr(H K) = s sum_l d_l^T H d_l                      (L HVPs)
        frobenius_K   ||K||_F = s ||D D^T||_F
        cos_HK        tr(H K) / (||H||_F ||K||_F): 1 iff K = c H (the valley paper's assumption C ~ c H)
        c_fit_HK      tr(H K) / ||H||_F^2, the least-squares c of K ~ c H
        cos_eK1_eH1   |<e_K^1, e_H^1>|
        overlap_K_H   ||V_H V_K^T||_F^2 / k_K: the fraction of K's top-k_K subspace (rows of ``eigvecs_K``)
                      inside the span of ``eigvecs_H`` (k_H rows), 1 when contained
        alpha_eH1     e_H^1^T K e_H^1 / lambda_H^1 = s ||D e_H^1||^2 / lambda_H^1 (R2's alpha, along e_H^1)

    ``frobenius_H`` is ||H||_F (the Hutchinson estimate of the trace probe); eigenvectors are rows.
    """
    D, c = centred_batch_gradients(G_batches, g_full, batch_size, n_total)
    L = D.shape[0]
    s = 1.0 / (L * c)
    VH = torch.as_tensor(eigvecs_H).to(D)
    tr_hk = s * sum(float(d @ hvp(d.to(G_batches.dtype)).to(D)) for d in D)  # H in the objective's dtype
    gram = D @ D.T
    fro_k = s * float(torch.linalg.matrix_norm(gram))
    e1 = VH[0]
    return {
        "trace_HK": tr_hk,
        "frobenius_K": fro_k,
        "cos_HK": tr_hk / (frobenius_H * fro_k) if frobenius_H > 0 and fro_k > 0 else math.nan,
        "c_fit_HK": tr_hk / frobenius_H**2 if frobenius_H > 0 else math.nan,
        "cos_eK1_eH1": top_cosine(eigvecs_K, VH),
        "overlap_K_H": subspace_overlap(VH, eigvecs_K),
        "alpha_eH1": s * float(((D @ e1) ** 2).sum()) / lambda_H1 if lambda_H1 > 0 else math.nan,
    }


def _rows(V, like: torch.Tensor | None = None) -> torch.Tensor:
    """The nonzero rows of ``V`` (k, P) (a zero row marks an undefined eigenvector), float64 or like ``like``."""
    V = torch.as_tensor(V)
    V = V.to(like) if like is not None else V.to(torch.float64)
    return V[V.norm(dim=1) > 0]


def top_cosine(VA, VB) -> float:
    """|<a_1, b_1>|: the cosine of the first nonzero rows of ``VA`` and ``VB`` (unit eigenvectors, (k, P));
    nan when either has none."""
    A = _rows(VA)
    B = _rows(VB, A)
    return float(abs(A[0] @ B[0])) if A.shape[0] and B.shape[0] else math.nan


def subspace_overlap(VA, VB) -> float:
    """||V_A V_B^T||_F^2 / k_B: the fraction of span(V_B) (its k_B nonzero orthonormal rows) inside span(V_A),
    1 when contained, k_B / P on average for a random V_B; nan when V_B has no nonzero row."""
    A = _rows(VA)
    B = _rows(VB, A)
    return float(((A @ B.T) ** 2).sum()) / B.shape[0] if B.shape[0] else math.nan


def ratio(a: float, b: float) -> float:
    """``a / b`` for a positive denominator (a norm, a top eigenvalue), else nan (undefined, not inf)."""
    return a / b if b > 0 else math.nan


def hutchinson_products(ops: dict, like: torch.Tensor, n_samples: int = 50, seed: int = 0, block: int = 8) -> dict:
    """Traces and alignments of symmetric operators from the same S = ``n_samples`` Rademacher probes z
    (P,) (E z z^T = I, generator seeded ``seed``, in the dtype/device of ``like``):

        trace_A       tr A                            = E z^T A z
        frobenius_A   ||A||_F                         = sqrt(E ||A z||^2)
        trace_AB      tr(A B)                         = E (A z)^T (B z)        (A symmetric)
        cos_AB        tr(A B) / (||A||_F ||B||_F)     (1 iff B = c A, c > 0; a ratio of the estimates)
        c_fit_AB      tr(A B) / ||A||_F^2             (the least-squares c of B ~ c A)

    for every operator A and every pair A before B in ``ops`` ({name: V (b, P) -> the rows A v_j (b, P)};
    the probes go in blocks of ``block``, so an operator that costs one pass per block, such as
    :meth:`~dnn.objective.Objective.covariance_vp`, makes S / block passes). Each trace comes with its
    SE (``_se``, std / sqrt(S)); ``"samples"`` holds the S per-probe values of every trace (for the SE of a
    difference such as tr(H - G)).
    """
    S = check_int_range(n_samples, "n_samples", 1)
    check_int_range(block, "block", 1)
    names = list(ops)
    P = like.numel()
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    samples = {f"trace_{a}": [] for a in names}
    samples.update({f"frobenius2_{a}": [] for a in names})
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    samples.update({f"trace_{a}{b}": [] for a, b in pairs})
    for s0 in range(0, S, block):
        b = min(block, S - s0)
        Z = (torch.randint(0, 2, (b, P), generator=gen, dtype=torch.int8).to(torch.float64) * 2 - 1).to(like)
        AZ = {a: ops[a](Z).to(like) for a in names}
        for a in names:
            samples[f"trace_{a}"] += (Z * AZ[a]).sum(1).tolist()
            samples[f"frobenius2_{a}"] += (AZ[a] * AZ[a]).sum(1).tolist()
        for a, c in pairs:
            samples[f"trace_{a}{c}"] += (AZ[a] * AZ[c]).sum(1).tolist()
    samples = {k: np.asarray(v) for k, v in samples.items()}
    if not all(np.all(np.isfinite(v)) for v in samples.values()):
        raise ValueError("an operator returned non-finite values")
    out: dict = {}
    for k, v in samples.items():
        if k.startswith("trace_"):
            out[k], out[f"{k}_se"] = mean_se(v)
    fro = {a: math.sqrt(max(float(samples[f"frobenius2_{a}"].mean()), 0.0)) for a in names}
    out.update({f"frobenius_{a}": f for a, f in fro.items()})
    for a, c in pairs:
        t = out[f"trace_{a}{c}"]
        out[f"cos_{a}{c}"] = ratio(t, fro[a] * fro[c])
        out[f"c_fit_{a}{c}"] = ratio(t, fro[a] ** 2)
    out["samples"] = {k: v for k, v in samples.items() if k.startswith("trace_")}
    return out
