"""The probe registry: named measurements of a network at one point of training.

A probe is ``fn(ctx: ProbeContext) -> dict[str, float]``; it reads the network only through
``ctx.objective`` (the measurement set, see :mod:`dnn.objective`), so it never changes the model.
``ctx.state`` is a dict the probes share and keep across probe times (the top eigenvectors, used to
warm-start the next Lanczos run and by the ``step`` and ``curvature`` probes). Run order follows
:data:`PROBES`, so ``lanczos`` runs before the probes that use its eigenvectors.

  lanczos      top-k Hessian eigenpairs: lambda_max, lambda_H_i, residuals, n_hvp, frobenius_top
  trace        Hutchinson Tr(H) and ||H||_F (from the same HVPs) with their SEs, deflated by this
               probe time's Lanczos pairs when the lanczos probe ran (smaller SE)
  covariance   lambda_K, trace_K, trace_ratio = Tr K / lambda_K, lambda_K_i (Gram of L mini-batch grads),
               grad_norm_ratio_top5 (||g|| / ||g_5||, g_5 on the top-5 eigenvectors of K)
  alignment    K against H (needs lanczos, trace, covariance): tr(HK), ||K||_F, cos_HK = tr(HK)/(||H||_F
               ||K||_F), c_fit_HK, |cos(e_K^1, e_H^1)|, overlap of K's top 5 with H's top k, alpha_eH1
  step         alpha_star (+ alpha_star_reached), loss_change_a{alpha} (+ _se) and what a parabola along e_1
               with curvature lambda_1 predicts from the same batches (loss_change_quad_a{alpha},
               alpha_cross_quad, g_e1_*), mean |cos(g_b, e_i)|
  curvature    per-example curvature along e_H^1 (curvature_mean, curvature_var) and R1's
               stability_factor (1 - eta lambda)^2 + eta^2 c(S, N) s^2 with lambda, s^2 from them
  negative     the most negative eigenvalues (Lanczos on -H): lambda_min, neg_eig_sum (R5)
  walk         the last step's walk metrics (floor, height, barrier, ...), cos_consecutive,
               distance_from_init

Every row of a BatchNorm model also gets bn_scale_norm, ||gamma|| of its last BatchNorm layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from dnn import covariance, eigen, step_probes
from dnn.objective import Objective
from valleysim import theory

__all__ = ["PROBES", "ProbeContext", "run_probes", "top_eigenpairs"]


@dataclass
class ProbeContext:
    cfg: Any  # dnn.train.TrainConfig (lr, batch, top_k, seeds, sample counts)
    model: torch.nn.Module  # read only (bn_scale_norm)
    objective: Objective  # loaded with the model's current parameters
    state: dict = field(default_factory=dict)
    walk: Any = None  # dnn.walk_metrics.WalkTracker
    step: int = 0
    n_train: int | None = None  # size of the training set (for c(S, N)); default: measurement set
    pairs: Any = None  # this probe time's Lanczos Eigenpairs (set by the lanczos probe)
    batch_grads: Any = None  # the covariance probe's (G (L, P), g, M): reused by the alignment probe
    results: dict = field(default_factory=dict)  # the metrics of the probes run so far at this probe time


def top_eigenpairs(objective: Objective, cfg, init=None, k: int | None = None) -> eigen.Eigenpairs:
    """Top-k Hessian eigenpairs of the measurement loss (Lanczos, warm-started from ``init``)."""
    init = None if init is None else init.to(objective.device, objective.dtype)
    return eigen.lanczos_top(
        objective.hvp,
        objective.theta0,
        k or cfg.top_k,
        tol=cfg.lanczos_tol,
        max_iter=cfg.lanczos_max_iter,
        init=init,
        seed=cfg.seed,
    )


def _lanczos(ctx: ProbeContext) -> dict:
    pairs = top_eigenpairs(ctx.objective, ctx.cfg, ctx.state.get("eigvecs"))
    ctx.pairs = pairs
    ctx.state["eigvecs"] = pairs.vectors.detach().cpu()
    out = {
        "lambda_max": float(pairs.values[0]),
        "lanczos_n_hvp": pairs.n_matvec,
        "lanczos_converged": bool(pairs.converged),
        "lanczos_max_rel_residual": float(np.max(pairs.residuals / np.abs(pairs.values))),
    }
    out.update({f"lambda_H_{i + 1}": float(v) for i, v in enumerate(pairs.values)})
    out.update(step_probes.frobenius_top(pairs.values))
    return out


def _negative(ctx: ProbeContext) -> dict:
    """The most negative Hessian eigenvalues: Lanczos top-k of -H (R5: their sum against the loss).
    neg_eig_sum = sum of the negative ones among the k found (k = cfg.top_k), lambda_min."""
    obj = ctx.objective
    pairs = eigen.lanczos_top(
        lambda v: -obj.hvp(v),
        obj.theta0,
        ctx.cfg.top_k,
        tol=ctx.cfg.lanczos_tol,
        max_iter=ctx.cfg.lanczos_max_iter,
        init=ctx.state.get("eigvecs_neg"),
        seed=ctx.cfg.seed + 1,
    )
    ctx.state["eigvecs_neg"] = pairs.vectors.detach().cpu()
    values = -pairs.values
    return {
        "lambda_min": float(values[0]),
        "neg_eig_sum": float(np.sum(np.minimum(values, 0.0))),
        "negative_n_hvp": pairs.n_matvec,
    }


def _trace(ctx: ProbeContext) -> dict:
    r = eigen.hutchinson_trace_frobenius(
        ctx.objective.hvp,
        ctx.objective.theta0,
        deflate=ctx.pairs,
        n_samples=ctx.cfg.hutchinson_samples,
        seed=ctx.cfg.seed + ctx.step,
    )
    return {
        "trace_hessian": r["trace"],
        "trace_hessian_se": r["trace_se"],
        "frobenius_hessian": r["frobenius"],
        "frobenius_hessian_se": r["frobenius_se"],
        "trace_n_hvp": r["n_matvec"],
    }


def _covariance(ctx: ProbeContext) -> dict:
    """K from the L x L Gram matrix of L mini-batch gradients centred by the full gradient
    (:func:`dnn.covariance.gradient_covariance`, spelled out to reuse the batch gradients), and
    ||g|| / ||g_5|| (g_5: projection of a mini-batch gradient on the top 5 eigenvectors of K,
    break-even-point.txt Sec. 4.3) averaged over the L batches."""
    obj, m = ctx.objective, min(ctx.cfg.cov_batch, ctx.objective.n - 1)
    G = covariance.mini_batch_gradients(obj, ctx.cfg.cov_batches, m, seed=ctx.cfg.seed + ctx.step)
    g = obj.grad()
    ctx.batch_grads = (G, g, m)
    res = covariance.covariance_from_gram(G, g, m, obj.n, k=5)
    ctx.state["eigvecs_K"] = res["eigenvectors_K"].detach().cpu()  # top-5 of K, kept with the checkpoint
    out = {k: float(res[k]) for k in ("lambda_K", "trace_K", "trace_ratio", "lambda_K_gram", "trace_K_gram")}
    out.update({f"lambda_K_{i + 1}": float(v) for i, v in enumerate(res["eigenvalues_K"])})
    V5 = res["eigenvectors_K"][:5]
    if V5.shape[0] == 5 and bool((V5.norm(dim=1) > 0).all()):  # zero rows: K's rank < 5
        ratios = [step_probes.gradient_alignment(g, V5)["grad_norm_ratio_top5"] for g in G]
        out["grad_norm_ratio_top5"] = float(np.mean(ratios))
    return out


def _alignment(ctx: ProbeContext) -> dict:
    """K (the covariance probe's Gram estimate, its batches reused) against H: tr(HK), ||K||_F, cos_HK,
    c_fit_HK, cos_eK1_eH1, overlap_K_H (K's top 5 in H's top-k), alpha_eH1 (:func:`dnn.covariance.alignment`)."""
    G, g, m = ctx.batch_grads
    return covariance.alignment(
        ctx.objective.hvp,
        G,
        g,
        m,
        ctx.objective.n,
        ctx.pairs.vectors,
        float(ctx.pairs.values[0]),
        ctx.results["frobenius_hessian"],
        ctx.state["eigvecs_K"],
    )


def _step(ctx: ProbeContext) -> dict:
    """The SGD step against the sharpest directions, from B = cfg.loss_change_batches seeded mini-batch
    gradients g_b (batch size cfg.batch) of the measurement set: the loss change along e_1
    (sharpest-directions Sec. 3.2), the mean |cos(g_b, e_i)| (Sec. 3.3), and alpha* for the step
    -eta g_1 (break-even-point.txt Sec. 4: the smallest alpha with L(theta - alpha eta g_1) >= 1.2 L)."""
    E = ctx.state["eigvecs"].to(ctx.objective.device, ctx.objective.dtype)
    G = covariance.mini_batch_gradients(
        ctx.objective,
        ctx.cfg.loss_change_batches,
        min(ctx.cfg.batch, ctx.objective.n - 1),
        seed=ctx.cfg.seed + ctx.step,
    )
    out = dict(step_probes.alpha_star(ctx.objective, G[0], ctx.cfg.lr))
    out.update(step_probes.loss_change_along_top(ctx.objective, E[0], G, ctx.cfg.lr))
    lam1 = float(ctx.pairs.values[0]) if ctx.pairs is not None else float(E[0] @ ctx.objective.hvp(E[0]))
    out.update(step_probes.loss_change_quadratic_model(ctx.objective, E[0], G, ctx.cfg.lr, lam1))
    cos = [step_probes.gradient_alignment(g, E) for g in G]
    out.update({k: float(np.mean([c[k] for c in cos])) for k in cos[0] if k.startswith("cos_g_e")})
    return out


def _curvature(ctx: ProbeContext) -> dict:
    e1 = ctx.state["eigvecs"][0].to(ctx.objective.device, ctx.objective.dtype)
    out = step_probes.per_example_curvature_stats(ctx.objective, e1)
    n = ctx.n_train or ctx.objective.n
    c = theory.variance_factor(min(ctx.cfg.batch, n), n)
    out["stability_factor"] = float(theory.stability_factor(ctx.cfg.lr, out["curvature_mean"], out["curvature_var"], c))
    return out


def _walk(ctx: ProbeContext) -> dict:
    return ctx.walk.metrics(ctx.objective)


PROBES: dict[str, Callable[[ProbeContext], dict]] = {
    "lanczos": _lanczos,
    "trace": _trace,
    "covariance": _covariance,
    "alignment": _alignment,
    "step": _step,
    "curvature": _curvature,
    "walk": _walk,
    "negative": _negative,
}


def run_probes(names, ctx: ProbeContext) -> dict:
    """Runs the named probes in registry order; one flat dict of metrics, with bn_scale_norm (||gamma|| of
    the last BatchNorm layer, break-even-point.txt Fig. 5) whatever the probes when the model has one."""
    out = ctx.results
    for name in PROBES:
        if name in names:
            out.update(PROBES[name](ctx))
    out.update(step_probes.bn_scale_norm(ctx.model))
    return out
