"""Probes of one SGD step against the sharpest directions of a network's loss.

Pure functions of an :class:`dnn.objective.Objective` (or anything with ``.loss(theta)``,
``.hvp(v, theta)``, ``.per_example_curvature(v, theta)``, ``.theta0``, ``.dim``), Hessian
eigenvectors, mini-batch gradients and the learning rate eta. Each returns a dict of named floats;
the names are the project's one name per quantity. Vectors are flat torch tensors (P,);
eigenvectors are rows, (k, P), sorted by decreasing eigenvalue.

Definitions followed (line numbers in ``shared/papers``):

* ``loss_change_along_top`` -- sharpest-directions-sgd-step.txt l. 91 (g~_1 = <g^(S), e_1> e_1) and
  l. 127: E[L(theta - alpha eta g~_1) - L(theta)], alpha in {0.25, 0.5, 1, 2, 4}, the expectation an
  average over 10 mini-batch gradients (the caller chooses how many rows ``batch_grads`` has).
* ``alpha_star`` -- break-even-point.txt l. 109: the minimum alpha with
  L(theta(t) - alpha (theta(t) - theta(t+1))) >= 1.2 L(theta(t)), i.e. a multiple of the actual SGD
  step theta(t) - theta(t+1) = eta g^(S) (the mini-batch gradient of that step, not the full
  gradient).
* ``gradient_alignment`` -- sharpest-directions-sgd-step.txt l. 129 (cosine of the mini-batch
  gradient with e_1..e_5) and break-even-point.txt l. 164 (||g|| / ||g_5||, g the mini-batch
  gradient, g_5 its projection on the top-5 eigenvectors -- of K, the gradient covariance, in that
  paper; here of whatever ``eigvecs`` the caller passes).
* ``nsgd_direction`` -- sharpest-directions-sgd-step.txt Sec. 4, same math as
  :func:`valleysim.nsgd.nsgd_direction`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from dnn.eigen import frobenius_from_top as _frobenius_from_top
from dnn.models import last_bn_scale
from valleysim.errors import UserInputError, check_positive
from valleysim.nsgd.directions import ALPHAS
from valleysim.stats import mean_se
from valleysim.walk.metrics import GRAD_ATOL

__all__ = [
    "ALPHAS",
    "alpha_key",
    "loss_change_along_top",
    "loss_change_quadratic_model",
    "alpha_star",
    "gradient_alignment",
    "per_example_curvature_stats",
    "frobenius_top",
    "bn_scale_norm",
    "nsgd_direction",
]


# ------------------------------------------------------------------ input checks


def check_vector(x, name: str, dim: int | None = None) -> torch.Tensor:
    """``x`` as a (P,) tensor (``dim`` = P if given); UserInputError naming ``name`` otherwise."""
    t = torch.as_tensor(x)
    if t.ndim != 1 or (dim is not None and t.shape[0] != dim):
        want = f"({dim},)" if dim is not None else "(P,)"
        raise UserInputError(f"{name} must have shape {want}, got {tuple(t.shape)}")
    return t


def _rows(x, name: str, dim: int | None = None) -> torch.Tensor:
    """(k, P) from (k, P) or a single (P,) vector."""
    t = torch.as_tensor(x)
    if t.ndim == 1:
        t = t[None]
    if t.ndim != 2 or t.shape[0] < 1 or (dim is not None and t.shape[1] != dim):
        want = f"(k, {dim})" if dim is not None else "(k, P)"
        raise UserInputError(f"{name} must have shape {want} with k >= 1, got {tuple(torch.as_tensor(x).shape)}")
    return t


def _unit(v: torch.Tensor, name: str) -> torch.Tensor:
    n = float(torch.linalg.vector_norm(v))
    if not math.isfinite(n) or n == 0.0:
        raise UserInputError(f"{name} must be a finite nonzero vector, got norm {n}")
    return v / n


def _theta(objective, theta) -> torch.Tensor:
    th = objective.theta0 if theta is None else check_vector(theta, "theta", objective.dim)
    return th.to(objective.theta0.device, objective.theta0.dtype)


def alpha_key(alpha: float) -> str:
    """'a0.25', 'a0.5', 'a1', 'a2', 'a4' (``%g`` of alpha)."""
    return f"a{float(alpha):g}"


# ------------------------------------------------------------------ probes


def loss_change_along_top(
    objective, eigvec, batch_grads, eta: float, alphas: Sequence[float] = ALPHAS, theta=None
) -> dict:
    """Loss change of a step along the sharpest direction, per multiple alpha of the SGD step.

    eigvec e (P,) (normalised here; sign irrelevant), batch_grads G (B, P) mini-batch gradients at
    theta, eta > 0. For each alpha (key ``alpha_key``):

        loss_change_a{alpha}    = (1/B) sum_b [L(theta - alpha eta (e.g_b) e) - L(theta)]
        loss_change_a{alpha}_se = std_b(ddof=1) / sqrt(B)     (nan when B = 1)

    L is the objective's full loss. Cost: 1 + B len(alphas) loss evaluations.
    """
    eta = check_positive(eta, "eta")
    th = _theta(objective, theta)
    e = _unit(check_vector(eigvec, "eigvec", objective.dim).to(th), "eigvec")
    G = _rows(batch_grads, "batch_grads", objective.dim).to(th)
    alphas = [check_positive(a, "alphas") for a in alphas]
    if not alphas:
        raise UserInputError("alphas must hold at least one step multiple")
    L0 = objective.loss(th)
    proj = (G @ e).tolist()  # e.g_b, (B,)
    out = {}
    for a in alphas:
        d = np.array([objective.loss(th - (a * eta * p) * e) - L0 for p in proj])
        mean, se = mean_se(d)
        out[f"loss_change_{alpha_key(a)}"] = mean
        out[f"loss_change_{alpha_key(a)}_se"] = se
    return out


def loss_change_quadratic_model(
    objective, eigvec, batch_grads, eta: float, curvature: float, alphas: Sequence[float] = ALPHAS, theta=None
) -> dict:
    """What ``loss_change_along_top`` would return if the loss were quadratic along e (curvature e^T H e =
    ``curvature``, lambda_1 for the top Ritz pair), from the same mini-batch gradients G (B, P):

        g_e1_full              G_e = <grad L(theta), e>
        g_e1_batch_mean, _sq   m1 = mean_b <g_b, e>, m2 = mean_b <g_b, e>^2
        loss_change_quad_a{alpha} = -alpha eta G_e m1 + curvature alpha^2 eta^2 m2 / 2
        alpha_cross_quad       2 G_e m1 / (eta curvature m2), the sign change of the above

    (:func:`valleysim.nsgd.directions.loss_change_quadratic`, derived in ``proofs.nsgd``). The gap to the
    measured change is the loss's departure from a parabola along e_1 over the step. Cost: one gradient.
    """
    from valleysim.nsgd.directions import alpha_cross_quadratic, loss_change_quadratic

    eta = check_positive(eta, "eta")
    th = _theta(objective, theta)
    e = _unit(check_vector(eigvec, "eigvec", objective.dim).to(th), "eigvec")
    G = _rows(batch_grads, "batch_grads", objective.dim).to(th)
    proj = (G @ e).double().cpu().numpy()
    G_e = float(objective.grad(th) @ e)
    pred = loss_change_quadratic(alphas, eta, float(curvature), G_e, proj)
    out = {
        "g_e1_full": G_e,
        "g_e1_batch_mean": float(np.mean(proj)),
        "g_e1_batch_sq": float(np.mean(proj**2)),
        "alpha_cross_quad": alpha_cross_quadratic(eta, float(curvature), G_e, proj),
    }
    out.update({f"loss_change_quad_{alpha_key(a)}": float(v) for a, v in zip(alphas, pred)})
    return out


def alpha_star(
    objective,
    direction,
    eta: float,
    theta=None,
    threshold: float = 1.2,
    *,
    alpha_min: float = 2.0**-6,
    alpha_max: float = 2.0**8,
    factor: float = 2.0,
    rtol: float = 1e-3,
) -> dict:
    """Break-even-point step-length proxy alpha* (break-even-point.txt l. 109).

    alpha* = min { alpha > 0 : L(theta - alpha eta d) >= threshold L(theta) },  threshold = 1.2 (20 %),

    with d = ``direction`` (P,) the mini-batch gradient of the SGD step taken at theta, so that alpha = 1
    is the actual step theta(t) -> theta(t+1) (for another optimiser pass d = (theta(t) - theta(t+1)) / eta).
    L is the objective's full loss (the paper says "training loss").

    Search: alpha on the geometric grid alpha_min factor^j (<= alpha_max); the first grid point
    reaching the threshold brackets alpha* with the previous one (0 before the first), then bisection
    until hi - lo <= rtol hi; returns hi, so  alpha*_true <= result <= alpha*_true (1 + rtol)  when the
    loss ratio crosses the threshold once in the bracket. Ambiguity: the paper does not say how the
    minimum is searched; a crossing narrower than a grid cell, before the first bracketing point, can
    be missed (the loss along the ray is not monotone in general). A non-finite loss counts as reaching
    the threshold (the step diverged). Returns {alpha_star, alpha_star_reached}: alpha* = inf and
    reached False when the threshold is not reached up to alpha_max (JSON writes inf as null: the flag
    carries it), nan and False when L(theta) <= 0 (the ratio is undefined). Cost: <= log_factor(alpha_max /
    alpha_min) + 1 + log2(1 / rtol) + 1 loss evaluations.
    """
    eta = check_positive(eta, "eta")
    threshold = float(threshold)
    if not math.isfinite(threshold) or threshold <= 1.0:
        raise UserInputError(f"threshold must be a finite number > 1; got {threshold!r}")
    alpha_min, alpha_max = check_positive(alpha_min, "alpha_min"), check_positive(alpha_max, "alpha_max")
    if alpha_max < alpha_min:
        raise UserInputError(f"alpha_max must be >= alpha_min; got {alpha_max} < {alpha_min}")
    factor = check_positive(factor, "factor")
    if factor <= 1.0:
        raise UserInputError(f"factor must be > 1; got {factor}")
    rtol = check_positive(rtol, "rtol")
    th = _theta(objective, theta)
    d = check_vector(direction, "direction", objective.dim).to(th)
    L0 = objective.loss(th)
    if not (math.isfinite(L0) and L0 > 0.0):
        return {"alpha_star": float("nan"), "alpha_star_reached": False}
    target = threshold * L0

    def reached(a: float) -> bool:
        val = objective.loss(th - (a * eta) * d)
        return not math.isfinite(val) or val >= target

    lo, hi, a = 0.0, None, alpha_min
    while a <= alpha_max * (1 + 1e-12):
        if reached(a):
            hi = a
            break
        lo, a = a, a * factor
    if hi is None:
        return {"alpha_star": float("inf"), "alpha_star_reached": False}
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if reached(mid):
            hi = mid
        else:
            lo = mid
    return {"alpha_star": float(hi), "alpha_star_reached": True}


def gradient_alignment(grad, eigvecs) -> dict:
    """Alignment of a (mini-batch) gradient g (P,) with eigenvectors e_1..e_k (rows of (k, P)).

        cos_g_e{i}            = |g.e_i| / (||g|| ||e_i||),  i = 1..k   (absolute value: the sign of an
                                eigenvector is arbitrary; nan when ||g|| < GRAD_ATOL)
        grad_norm_ratio_top5  = ||g|| / ||g_5||,  g_5 = projection of g on span(e_1..e_5)
                                (break-even-point.txt l. 164; >= 1; inf when g_5 = 0, nan when
                                ||g|| < GRAD_ATOL; only when k >= 5)

    The projection uses an orthonormal basis of the first five rows (QR), so the rows need not be
    exactly orthonormal.
    """
    E = _rows(eigvecs, "eigvecs").to(torch.float64)
    g = check_vector(grad, "grad", E.shape[1]).to(E)
    gn = float(torch.linalg.vector_norm(g))
    en = torch.linalg.vector_norm(E, dim=1)
    if bool((en == 0).any()):
        raise UserInputError("eigvecs must have nonzero rows")
    small = gn < GRAD_ATOL
    cos = (E @ g).abs() / (en * gn) if not small else torch.full_like(en, float("nan"))
    out = {f"cos_g_e{i + 1}": float(c) for i, c in enumerate(cos.tolist())}
    if E.shape[0] >= 5:
        Q, _ = torch.linalg.qr(E[:5].T)  # (P, 5) orthonormal columns spanning e_1..e_5
        g5 = float(torch.linalg.vector_norm(Q.T @ g))
        out["grad_norm_ratio_top5"] = float("nan") if small else float("inf") if g5 == 0.0 else gn / g5
    return out


def per_example_curvature_stats(objective, eigvec, theta=None) -> dict:
    """Spread over the examples of the curvature along e (P,) (normalised here):

        c_i = e^T H_i e   (H_i the Hessian of example i's loss; objective.per_example_curvature)
        curvature_mean = (1/n) sum_i c_i = e^T H e
        curvature_var  = (1/n) sum_i (c_i - mean)^2        (population variance over the n examples)
        curvature_se   = std(ddof=1) / sqrt(n)            (standard error of the mean; nan for n = 1)

    Needs independent examples (an Objective with bn='eval' for a BatchNorm network).
    """
    th = _theta(objective, theta)
    e = _unit(check_vector(eigvec, "eigvec", objective.dim).to(th), "eigvec")
    c = objective.per_example_curvature(e, th).detach().cpu().double().numpy()
    mean, se = mean_se(c)
    return {"curvature_mean": mean, "curvature_var": float(c.var()), "curvature_se": se}


def frobenius_top(eigenvalues) -> dict:
    """{"frobenius_top": sqrt(sum_i lambda_i^2)} over the given top eigenvalues (a lower bound on
    ||H||_F); the number is :func:`dnn.eigen.frobenius_from_top` (which returns the bare float)."""
    return {"frobenius_top": _frobenius_from_top(eigenvalues)}


def bn_scale_norm(model: nn.Module) -> dict:
    """{"bn_scale_norm": ||gamma||_2} of the last BatchNorm layer (in ``model.modules()`` order) that has
    a scale (affine=True); {} when there is none."""
    gamma = last_bn_scale(model)
    return {} if gamma is None else {"bn_scale_norm": float(torch.linalg.vector_norm(gamma.detach().double()))}


def nsgd_direction(g, eigvecs, gamma: float) -> torch.Tensor:
    """NSGD's direction d = g + (gamma - 1) E^T (E g) (P,), E = eigvecs (K, P) with orthonormal rows
    (or one (P,) vector): the component of g in span(E) scaled by gamma, the rest kept
    (theta <- theta - eta d). Same as valleysim.nsgd.nsgd_direction(g, E, gamma) (the same row convention)."""
    gamma = check_positive(gamma, "gamma")
    g = check_vector(g, "g")
    E = _rows(eigvecs, "eigvecs", g.shape[0]).to(g)
    return g + (gamma - 1.0) * (E.T @ (E @ g))
