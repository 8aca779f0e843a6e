"""Matrix-free spectral estimators for a symmetric operator ``A`` given only as ``matvec(v) = A v``.

In the project ``A`` is a Hessian (Hessian-vector product of a network over a fixed data set), so
``P`` (the dimension) can be ~1e6 and every matvec costs a forward+backward pass: every function
here counts its matvecs and returns the count. Vectors are 1-D tensors of shape ``(P,)``; all work
is done in the dtype/device of the vectors (``dim_or_like`` a tensor: its dtype/device; an int:
the ``dtype``/``device`` arguments, else ``torch.get_default_dtype()`` on the CPU). Random vectors
come from a seeded CPU ``torch.Generator`` (drawn in float64, then cast and moved), so the same
seed gives the same start vectors on any device (and the same result on the same device).

* :func:`lanczos_top` -- top-k (algebraically largest) eigenpairs, block Lanczos with full
  reorthogonalisation (block size 1 = classical Lanczos), warm start from previous eigenvectors.
* :func:`power_iteration` -- PyHessian's ``hessian.eigenvalue(maxIter, tol, top_n=1)`` (baseline).
* :func:`hutchinson_trace` -- Hutchinson trace estimate ``mean_z z^T A z``, optionally deflated by
  known eigenpairs (``tr A = sum theta_i + tr(Pi A Pi)``, ``Pi = I - V^T V``);
  :func:`hutchinson_trace_frobenius` -- the same probes also estimate ``||A||_F`` (``E ||A z||^2``).
* :func:`dense_matrix` -- ``A`` applied to the identity columns (oracle for tiny ``P``).
* :func:`frobenius_from_top` -- ``sqrt(sum lambda_i^2)`` over the given top eigenvalues.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import torch

from valleysim.errors import UserInputError, check_int_range, check_positive
from valleysim.stats import mean_se

__all__ = [
    "Eigenpairs",
    "lanczos_top",
    "power_iteration",
    "hutchinson_trace",
    "hutchinson_trace_frobenius",
    "dense_matrix",
    "frobenius_from_top",
]

MatVec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Eigenpairs:
    """Approximate eigenpairs ``A v_i ~= lambda_i v_i`` of a symmetric operator.

    values: ``(k,)`` numpy float64, descending (algebraically largest first).
    vectors: ``(k, P)`` tensor, orthonormal rows, dtype/device of the computation.
    residuals: ``(k,)`` numpy float64, ``||A v_i - lambda_i v_i||_2`` -- the Lanczos value
        ``||B_m s_{m,i}||`` (``|beta_m s_{m,i}|`` for block size 1; exact up to rounding, i.e.
        down to ~``eps ||A||`` of the dtype), or, when ``residuals_exact``, the value recomputed
        with one extra matvec per pair.
    n_matvec: matvecs performed in total (including the exact-residual ones, if any).
    converged: every returned pair met the stopping criterion before ``max_iter``.
    residual_bounds: ``(k,)`` the Lanczos bounds (equal to ``residuals`` unless exact).
    """

    values: np.ndarray
    vectors: torch.Tensor
    residuals: np.ndarray
    n_matvec: int
    converged: bool
    residual_bounds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    residuals_exact: bool = False

    def __len__(self) -> int:
        return int(self.values.shape[0])


# --------------------------------------------------------------------------- helpers


def _resolve(
    dim_or_like: int | torch.Tensor, dtype: torch.dtype | None, device: torch.device | str | None
) -> tuple[int, torch.dtype, torch.device]:
    """``(P, dtype, device)`` from an int or a like-tensor (explicit arguments win)."""
    if isinstance(dim_or_like, torch.Tensor):
        P = int(dim_or_like.numel())
        dt = dtype if dtype is not None else dim_or_like.dtype
        dev = torch.device(device) if device is not None else dim_or_like.device
    else:
        P = check_int_range(dim_or_like, "dim_or_like", 1)
        dt = dtype if dtype is not None else torch.get_default_dtype()
        dev = torch.device(device) if device is not None else torch.device("cpu")
    if not dt.is_floating_point:
        raise UserInputError(f"dtype must be a floating-point dtype; got {dt}")
    if P < 1:
        raise UserInputError(f"dim_or_like must describe a dimension >= 1; got {P}")
    return P, dt, dev


def _randn(n: int, P: int, seed: int, dtype: torch.dtype, device: torch.device, offset: int = 0) -> torch.Tensor:
    """``(n, P)`` standard normal rows from a CPU generator seeded ``seed`` (then ``offset`` more)."""
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed) + 7919 * int(offset))
    return torch.randn(n, P, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)


def _apply(matvec: MatVec, v: torch.Tensor) -> torch.Tensor:
    w = matvec(v)
    if not isinstance(w, torch.Tensor) or w.shape != v.shape:
        raise ValueError(f"matvec must return a tensor of shape {tuple(v.shape)}; got {getattr(w, 'shape', type(w))}")
    return w.to(dtype=v.dtype, device=v.device)


def _orth_against(W: torch.Tensor, Q: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Two passes of classical Gram-Schmidt of rows ``W (b, P)`` against rows ``Q (m, P)``.

    Returns ``(W - C^T Q, C)`` with ``C = Q W^T (m, b)`` the accumulated coefficients.
    """
    if Q is None or Q.shape[0] == 0:
        return W, W.new_zeros((0, W.shape[0]))
    C = Q @ W.T
    W = W - C.T @ Q
    C2 = Q @ W.T
    W = W - C2.T @ Q
    return W, C + C2


def _orthonormal_rows(
    W: torch.Tensor, Q: torch.Tensor | None, drop_tol: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orthonormal basis ``Z (r, P)`` of the rows of ``W (b, P)`` (already orthogonal to ``Q``).

    Returns ``(Z, B, R)``: ``W ~= B^T Z`` with ``B (r, b)``, dropping directions whose singular value
    is ``<= drop_tol`` (rank deflation), and ``R (b, b)`` from ``W^T = Q_W R`` (so that
    ``||W^T s|| = ||R s||`` exactly, before any dropping). A further Gram-Schmidt pass against ``Q``
    is made if cancellation left ``Z`` visibly non-orthogonal to it.
    """
    b = W.shape[0]
    if b == 0:
        return W, W.new_zeros((0, 0)), W.new_zeros((0, 0))
    # W^T = U S Vh  (thin SVD via the small Gram matrix would lose accuracy: use QR then SVD of R)
    Qt, R = torch.linalg.qr(W.T, mode="reduced")  # W^T = Qt R, Qt (P, b)
    U, S, Vh = torch.linalg.svd(R)  # R = U diag(S) Vh
    keep = S > drop_tol
    r = int(keep.sum())
    if r == 0:
        return W.new_zeros((0, W.shape[1])), W.new_zeros((0, b)), R
    Z = (Qt @ U[:, :r]).T.contiguous()  # (r, P)
    B = S[:r, None] * Vh[:r]  # (r, b)  W^T ~= Z^T B
    if Q is not None and Q.shape[0] > 0:
        eps = torch.finfo(W.dtype).eps
        if float((Q @ Z.T).abs().max()) > math.sqrt(eps):
            Z, _ = _orth_against(Z, Q)
            Z = torch.linalg.qr(Z.T, mode="reduced")[0].T.contiguous()
    return Z, B, R


# --------------------------------------------------------------------------- Lanczos


def _top_ritz(T: np.ndarray, k: int, bw: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Top ``min(k, m)`` eigenpairs (ascending) of the banded symmetric ``T (m, m)`` and ``max|eig|``.

    ``scipy.linalg.eig_banded`` on the upper band (bandwidth ``bw``), selecting the wanted indices:
    ``O(m^2 bw)`` per call instead of a dense ``O(m^3)`` solve.
    """
    m = T.shape[0]
    u = min(bw, m - 1)
    ab = np.zeros((u + 1, m))
    for d in range(u + 1):
        ab[u - d, d:] = np.diagonal(T, d)
    kk = min(k, m)
    theta, S = scipy.linalg.eig_banded(ab, lower=False, select="i", select_range=(m - kk, m - 1))
    lo = scipy.linalg.eig_banded(ab, lower=False, eigvals_only=True, select="i", select_range=(0, 0))
    scale = float(max(abs(theta[-1]), abs(lo[0])))
    return theta, S, scale


def lanczos_top(
    matvec: MatVec,
    dim_or_like: int | torch.Tensor,
    k: int,
    *,
    tol: float = 1e-3,
    max_iter: int = 100,
    init: torch.Tensor | None = None,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    exact_residuals: bool = False,
    block_size: int = 1,
    init_noise: float = 1e-3,
) -> Eigenpairs:
    """Top-``k`` (algebraically largest) eigenpairs of a symmetric ``A`` by (block) Lanczos.

    Krylov basis ``Q (m, P)`` (orthonormal rows) built from a start block ``Q_0 (b, P)``::

        W_j = A Q_j^T - Q^T (Q A Q_j^T)        (full reorthogonalisation: CGS, two passes)
        W_j^T = Q_{j+1}^T B_j                  (QR + SVD, rank-deflating: ``B_j (b', b)``)

    so ``A Q^T = Q^T T_m + Q_{j+1}^T B_j E_j^T`` with ``T_m`` block tridiagonal (diagonal blocks
    ``Q_j A Q_j^T``, off-diagonal ``B_j``; tridiagonal ``(alpha, beta)`` for block size 1). After
    every block step the top ``k`` eigenpairs ``T_m s_i = theta_i s_i`` are computed by
    ``scipy.linalg.eig_banded`` (``O(m^2 b)``, negligible next to a matvec). Ritz pairs
    ``(theta_i, y_i = s_i^T Q)`` satisfy ``||A y_i - theta_i y_i|| = ||B_j s_{last,i}||``
    (``|beta_m s_{m,i}|`` for block size 1, exact up to rounding thanks to the full
    reorthogonalisation): the bound returned in ``residuals``.

    Stopping criterion: every one of the ``k`` largest Ritz values has relative residual bound
    ``||B_j s_{last,i}|| / max(|theta_i|, 1e-8 max_l |theta_l|) <= tol`` (the floor only avoids a
    division by zero for a vanishing Ritz value). For symmetric ``A`` each ``theta_i`` is then
    within ``tol |theta_i|`` of an eigenvalue (within ``(tol theta_i)^2 / gap`` for an isolated
    one). Otherwise it stops after ``max_iter`` matvecs (``converged=False``) or when the
    Krylov space fills the whole space (exact).

    Start vectors:

    * ``init`` None: ``block_size`` seeded Gaussian vectors (classical Lanczos for 1).
    * ``init (j, P)`` (e.g. the eigenvectors of the previous checkpoint), ``block_size == 1``
      (default): (1) if ``k <= j``, Rayleigh-Ritz on ``span(init)`` (one block step, ``j``
      matvecs); if its top-``k`` pairs already meet ``tol`` they are returned (``n_matvec = j``).
      (2) Otherwise single-vector Lanczos from the normalised sum of those Ritz vectors (or of
      the orthonormalised ``init`` rows when ``j < k``) plus ``init_noise`` times a seeded
      random unit vector (which keeps every direction in the Krylov space); the ``j`` matvecs of
      (1) are counted. Measured on a 300x300 test spectrum perturbed by ``1e-3 ||A||``: ``k=5,
      tol=1e-3``: 5 matvecs warm vs 88 cold; ``tol=1e-6``: 82 vs 131. A pure block start
      (``block_size > 1``) is as good at loose ``tol`` but worse than the cold start at tight
      ``tol`` (block Krylov spaces grow ``b`` vectors per polynomial degree).
    * ``init`` with ``block_size > 1``: block start, the orthonormalised ``init`` rows padded with
      seeded random rows to ``block_size`` (block size ``max(block_size, rank(init))``).

    Degeneracy: single-vector Lanczos sees (in exact arithmetic) one vector of an exactly repeated
    eigenvalue, so it may return the next distinct eigenvalue in its place; a block of size
    ``b >= multiplicity`` finds them all. Near-degenerate clusters are found with ``b = 1``
    (convergence slows with the relative gap). If the Krylov space becomes invariant before the
    ``k`` pairs converge it is continued with fresh seeded random vectors orthogonal to it.

    Args:
        matvec: ``v (P,) -> A v (P,)``, ``A`` symmetric.
        dim_or_like: ``P`` or a tensor whose numel/dtype/device to use.
        k: number of pairs, ``1 <= k <= P``.
        tol: relative residual tolerance (> 0).
        max_iter: maximal number of matvecs of the iteration (the Krylov dimension cap; the
            exact-residual check adds ``k``; a start block larger than ``max_iter`` is still
            applied once).
        init: optional ``(j, P)`` or ``(P,)`` warm-start vectors.
        seed: seed of the random start / padding vectors.
        exact_residuals: recompute ``||A y_i - theta_i y_i||`` with ``k`` extra matvecs.
        block_size: block size ``b >= 1`` (with ``init`` and ``b > 1``: ``max(b, rank(init))``).
        init_noise: relative size of the random component of the warm start vector (>= 0).

    Memory: the basis holds up to ``max_iter + b`` rows of ``P`` entries.
    """
    P, dt, dev = _resolve(dim_or_like, dtype, device)
    k = check_int_range(k, "k", 1, P)
    tol = check_positive(tol, "tol")
    max_iter = check_int_range(max_iter, "max_iter", 1)
    block_size = check_int_range(block_size, "block_size", 1, P)
    init_noise = float(init_noise)
    if not math.isfinite(init_noise) or init_noise < 0:
        raise UserInputError(f"init_noise must be a finite number >= 0; got {init_noise!r}")
    eps = torch.finfo(dt).eps
    run = dict(matvec=matvec, k=k, tol=tol, seed=seed)
    if init is None:
        Q0 = _orthonormal_rows(_randn(block_size, P, seed, dt, dev), None, drop_tol=0.0)[0]
        out = _block_lanczos(Q0=Q0, max_mv=max_iter, **run)
    else:
        if not isinstance(init, torch.Tensor):
            raise UserInputError("init must be a tensor of shape (j, P) or (P,)")
        X = init.detach().to(device=dev, dtype=dt)
        if X.ndim == 1:
            X = X[None]
        if X.ndim != 2 or X.shape[1] != P or X.shape[0] < 1:
            raise UserInputError(f"init must have shape (j, {P}) with j >= 1; got {tuple(init.shape)}")
        if X.shape[0] > P:
            raise UserInputError(f"init has {X.shape[0]} rows; at most P = {P} allowed")
        if not bool(torch.isfinite(X).all()):
            raise UserInputError("init must be finite")
        Z = _orthonormal_rows(X, None, drop_tol=math.sqrt(eps) * float(X.norm(dim=1).max()))[0]
        if Z.shape[0] == 0:
            raise UserInputError("init must have a nonzero row")
        if block_size > 1:
            # block start: init rows padded with seeded random rows to block_size
            pad = max(block_size - Z.shape[0], 0)
            if pad:
                Rn, _ = _orth_against(_randn(pad, P, seed, dt, dev), Z)
                Zr = _orthonormal_rows(Rn, Z, drop_tol=math.sqrt(eps))[0]
                Z = torch.cat([Z, Zr])
            out = _block_lanczos(Q0=Z, max_mv=max_iter, **run)
        else:
            # phase 1: Rayleigh-Ritz on span(init) (= one block-Lanczos step, j matvecs)
            used = 0
            out = None
            if k <= Z.shape[0] < max_iter:
                out = _block_lanczos(Q0=Z, max_mv=Z.shape[0], **run)
                used = out[3]
                Z = out[1]  # its top-k Ritz vectors
            if out is None or not out[4]:
                # phase 2: Lanczos from the normalised sum of those vectors + small seeded noise
                x = Z.sum(0)
                x = x / x.norm()
                g = _randn(1, P, seed, dt, dev)[0]
                x = x + init_noise * g / g.norm()
                out = _block_lanczos(Q0=(x / x.norm())[None], max_mv=max_iter - used, **run)
                out = (*out[:3], out[3] + used, out[4])
    vals, V, bnds, n_mv, converged = out
    res = bnds.copy()
    if exact_residuals:
        for i in range(V.shape[0]):
            r_i = _apply(matvec, V[i]) - float(vals[i]) * V[i]
            res[i] = float(r_i.norm())
        n_mv += V.shape[0]
    return Eigenpairs(
        values=vals,
        vectors=V,
        residuals=res,
        n_matvec=n_mv,
        converged=bool(converged and V.shape[0] == k),
        residual_bounds=bnds,
        residuals_exact=bool(exact_residuals),
    )


def _block_lanczos(
    matvec: MatVec, Q0: torch.Tensor, k: int, tol: float, max_mv: int, seed: int
) -> tuple[np.ndarray, torch.Tensor, np.ndarray, int, bool]:
    """Block Lanczos from orthonormal rows ``Q0 (b, P)`` (see :func:`lanczos_top`).

    Returns ``(values desc (k',), vectors (k', P), bounds (k',), n_matvec, converged)``,
    ``k' = min(k, m)``. The first block step is always made, later ones while the budget lasts.
    """
    P, dt, dev = Q0.shape[1], Q0.dtype, Q0.device
    eps = torch.finfo(dt).eps
    n_mv = 0
    Qj = Q0

    cap = min(max_mv, P) + Qj.shape[0]
    Qbuf = torch.empty((min(cap, max(4 * Qj.shape[0], 32)), P), dtype=dt, device=dev)
    m = 0  # rows of the basis in use
    T = np.zeros((0, 0))  # projected matrix (block tridiagonal)
    blocks: list[tuple[int, int]] = []  # (start, stop) rows of each block
    refills = 0
    bw = max(Qj.shape[0] - 1, 1)  # bandwidth of T
    theta = S = None
    bounds_all = None
    converged = False

    def append(rows: torch.Tensor) -> None:
        nonlocal Qbuf, m
        need = m + rows.shape[0]
        if need > Qbuf.shape[0]:
            new = torch.empty((min(cap, max(need, 2 * Qbuf.shape[0])), P), dtype=dt, device=dev)
            new[:m] = Qbuf[:m]
            Qbuf = new
        Qbuf[m:need] = rows
        m = need

    append(Qj)
    blocks.append((0, Qj.shape[0]))
    while True:
        s0, s1 = blocks[-1]
        b = s1 - s0
        if theta is not None and n_mv + b > max_mv:
            break
        AQ = torch.stack([_apply(matvec, Qbuf[i]) for i in range(s0, s1)])  # (b, P)
        n_mv += b
        W, C = _orth_against(AQ, Qbuf[:m])  # C (m, b)
        Cn = C.detach().cpu().double().numpy()
        if not np.all(np.isfinite(Cn)):
            raise ValueError("matvec returned non-finite values")
        # block-tridiagonal projection: the diagonal block Q_j A Q_j^T; B_{j-1} is already in T
        Tn = np.zeros((m, m))
        Tn[: T.shape[0], : T.shape[1]] = T
        D = Cn[s0:s1]
        Tn[s0:s1, s0:s1] = 0.5 * (D + D.T)
        T = Tn
        theta, S, scale = _top_ritz(T, k, bw)  # ascending, top k
        Wnorm = float(W.norm())
        drop = max(eps ** (2 / 3) * scale, torch.finfo(dt).tiny)
        Znew, B, Rfull = _orthonormal_rows(W, Qbuf[:m], drop_tol=drop)
        Bn = B.detach().cpu().double().numpy()  # (r, b)
        # residual bounds ||W^T s_{last,i}|| = ||R s_{last,i}|| for all Ritz pairs (before deflation)
        Rn = Rfull.detach().cpu().double().numpy()  # (b, b)
        bounds_all = np.linalg.norm(Rn @ S[s0:s1, :], axis=0) if Wnorm > 0 else np.zeros(theta.shape[0])
        if m >= k:
            denom = np.maximum(np.abs(theta), 1e-8 * scale)
            denom = np.where(denom > 0, denom, 1.0)
            if np.all(bounds_all / denom <= tol):
                converged = True
                break
        if m >= P:
            converged = True  # the basis spans the space: Ritz pairs are exact
            break
        if Znew.shape[0] == 0:
            # invariant subspace: continue with fresh random directions orthogonal to Q
            refills += 1
            Rn_, _ = _orth_against(_randn(max(b, 1), P, seed, dt, dev, offset=refills), Qbuf[:m])
            Znew = _orthonormal_rows(Rn_, Qbuf[:m], drop_tol=math.sqrt(eps))[0]
            if Znew.shape[0] == 0:
                converged = True
                break
            Bn = np.zeros((Znew.shape[0], b))
        r = Znew.shape[0]
        if m + r > cap:
            break
        Tn = np.zeros((m + r, m + r))
        Tn[:m, :m] = T
        Tn[m:, s0:s1] = Bn
        Tn[s0:s1, m:] = Bn.T
        T = Tn
        bw = max(bw, b + r - 1)
        blocks.append((m, m + r))
        append(Znew)

    # ---- Ritz pairs of the last diagonalised T (its size may be below m after a last append)
    assert theta is not None and S is not None and bounds_all is not None
    mt = S.shape[0]
    top = np.arange(theta.shape[0] - 1, -1, -1)
    Sk = torch.as_tensor(S[:, top].T.copy(), dtype=dt, device=dev)  # (k', mt)
    V = Sk @ Qbuf[:mt]
    return (theta[top].astype(np.float64), V, bounds_all[top].astype(np.float64), n_mv, converged)


# --------------------------------------------------------------------------- power iteration


def _pyhessian_normalization(v: torch.Tensor) -> torch.Tensor:
    """PyHessian's ``normalization``: ``v / (||v|| + 1e-6)``."""
    return v / (float(v.norm()) + 1e-6)


def power_iteration(
    matvec: MatVec,
    dim_or_like: int | torch.Tensor,
    *,
    tol: float = 1e-3,
    max_iter: int = 100,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[float, torch.Tensor, int]:
    """PyHessian's ``hessian.eigenvalue(maxIter=max_iter, tol=tol, top_n=1)``, faithfully.

    ``v`` = normalised Gaussian; then up to ``max_iter`` times::

        Hv = A v;  lam_new = Hv . v;  v = Hv / (||Hv|| + 1e-6)
        if lam is None: lam = lam_new
        elif |lam - lam_new| / (|lam| + 1e-6) < tol: break      # lam is *not* updated on break
        else: lam = lam_new

    Returns ``(lam, v (P,), n_matvec)``. As in PyHessian the returned value is the Rayleigh quotient
    *before* the last matvec and the vector is the last normalised ``Hv``; the iteration converges to
    the eigenvalue of largest *magnitude* (not the algebraically largest) at the rate
    ``(lambda_2 / lambda_1)^2`` per step for the Rayleigh quotient, and the stopping rule tests only
    the change between steps, not the residual.
    """
    P, dt, dev = _resolve(dim_or_like, dtype, device)
    tol = check_positive(tol, "tol")
    max_iter = check_int_range(max_iter, "max_iter", 1)
    v = _pyhessian_normalization(_randn(1, P, seed, dt, dev)[0])
    eigenvalue: float | None = None
    n_mv = 0
    for _ in range(max_iter):
        Hv = _apply(matvec, v)
        n_mv += 1
        tmp = float(torch.dot(Hv, v))
        if not math.isfinite(tmp):
            raise ValueError("matvec returned non-finite values")
        v = _pyhessian_normalization(Hv)
        if eigenvalue is None:
            eigenvalue = tmp
        elif abs(eigenvalue - tmp) / (abs(eigenvalue) + 1e-6) < tol:
            break
        else:
            eigenvalue = tmp
    assert eigenvalue is not None
    return float(eigenvalue), v, n_mv


# --------------------------------------------------------------------------- trace


def hutchinson_trace(
    matvec: MatVec,
    dim_or_like: int | torch.Tensor,
    *,
    n_samples: int = 100,
    seed: int = 0,
    distribution: str = "rademacher",
    deflate: Eigenpairs | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[float, float, int]:
    """Hutchinson estimate of ``tr A``: ``(estimate, standard_error, n_matvec)`` of
    :func:`hutchinson_trace_frobenius` (same probes, same numbers)."""
    r = hutchinson_trace_frobenius(
        matvec,
        dim_or_like,
        n_samples=n_samples,
        seed=seed,
        distribution=distribution,
        deflate=deflate,
        dtype=dtype,
        device=device,
    )
    return r["trace"], r["trace_se"], r["n_matvec"]


def hutchinson_trace_frobenius(
    matvec: MatVec,
    dim_or_like: int | torch.Tensor,
    *,
    n_samples: int = 100,
    seed: int = 0,
    distribution: str = "rademacher",
    deflate: Eigenpairs | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> dict:
    """Hutchinson estimates of ``tr A`` and ``||A||_F`` from the same ``n_samples`` probes ``z``.

    ``z`` has i.i.d. Rademacher (+-1) or standard Gaussian entries (``E z z^T = I``), drawn from a
    generator seeded ``seed``, so ``E z^T A z = tr A`` and ``E ||A z||^2 = tr(A^T A) = ||A||_F^2``.
    Standard errors = sample std (ddof 1) / sqrt(n) (NaN for n = 1).

    ``deflate`` (orthonormal ``V (j, P)``, values ``theta``, residual norms ``r``; Ritz pairs from
    :func:`lanczos_top`), ``Pi = I - V^T V``, ``u = Pi z``::

        tr A      = sum_i theta_i + E u^T A u
        ||A||_F^2 = sum_i theta_i^2 + 2 sum_i r_i^2 + E ||Pi A u||^2

    (``A = (V^T V + Pi) A (V^T V + Pi)``; for Ritz pairs ``V A V^T = diag(theta)`` and
    ``Pi A v_i = A v_i - theta_i v_i``, whose norm is the residual ``r_i``). Unbiased whenever the pairs
    are Ritz pairs; the SEs are those of the stochastic parts. Variance per trace probe: Rademacher
    ``2 sum_{i!=j} B_ij^2``, Gaussian ``2 ||B||_F^2``, ``B = A`` or ``Pi A Pi``: small when a few
    eigenvalues dominate and are deflated (the Hutch++ idea with the Lanczos vectors as the sketch).

    Returns {trace, trace_se, frobenius, frobenius_se (delta method: se(F^2) / 2F), n_matvec}.
    """
    P, dt, dev = _resolve(dim_or_like, dtype, device)
    n_samples = check_int_range(n_samples, "n_samples", 1)
    if distribution not in ("rademacher", "gaussian"):
        raise UserInputError(f"distribution must be 'rademacher' or 'gaussian'; got {distribution!r}")
    V = None
    base_trace = base_frob = 0.0
    if deflate is not None:
        if len(deflate) > 0:
            V = deflate.vectors.detach().to(device=dev, dtype=dt)
            if V.ndim != 2 or V.shape[1] != P:
                raise UserInputError(f"deflate.vectors must have shape (j, {P}); got {tuple(V.shape)}")
            vals, res = np.asarray(deflate.values, float), np.asarray(deflate.residuals, float)
            base_trace = float(np.sum(vals))
            base_frob = float(np.sum(vals**2) + 2 * np.sum(res**2))
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    tr, fr = np.empty(n_samples), np.empty(n_samples)
    for s in range(n_samples):
        if distribution == "rademacher":
            z = torch.randint(0, 2, (P,), generator=g, dtype=torch.int8).to(torch.float64) * 2 - 1
        else:
            z = torch.randn(P, generator=g, dtype=torch.float64)
        z = z.to(device=dev, dtype=dt)
        if V is not None:
            z = z - V.T @ (V @ z)
        w = _apply(matvec, z)
        tr[s] = float(torch.dot(z, w))
        if V is not None:
            w = w - V.T @ (V @ w)
        fr[s] = float(torch.dot(w, w))
    if not (np.all(np.isfinite(tr)) and np.all(np.isfinite(fr))):
        raise ValueError("matvec returned non-finite values")
    t, t_se = mean_se(tr)
    f2, f2_se = mean_se(fr)
    frob = math.sqrt(max(base_frob + f2, 0.0))
    return {
        "trace": base_trace + t,
        "trace_se": t_se,
        "frobenius": frob,
        "frobenius_se": f2_se / (2 * frob) if frob > 0 else math.nan,
        "n_matvec": n_samples,
    }


# --------------------------------------------------------------------------- small helpers


def dense_matrix(
    matvec: MatVec,
    dim_or_like: int | torch.Tensor,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``(P, P)`` matrix with columns ``A e_i`` (``P`` matvecs; a test oracle for tiny ``P``)."""
    P, dt, dev = _resolve(dim_or_like, dtype, device)
    I = torch.eye(P, dtype=dt, device=dev)
    return torch.stack([_apply(matvec, I[i]) for i in range(P)], dim=1)


def frobenius_from_top(values: np.ndarray | Eigenpairs | list[float]) -> float:
    """``sqrt(sum_i lambda_i^2)`` over the given (top) eigenvalues: a lower bound on ``||A||_F``."""
    vals = values.values if isinstance(values, Eigenpairs) else values
    a = np.asarray(vals, dtype=np.float64).ravel()
    return float(np.sqrt(np.sum(a * a)))
