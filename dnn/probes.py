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
  exact_covariance  exact K matrix-free (bn eval): lambda_K_exact, lambda_Kx_i (top 5, Lanczos), trace_K_exact,
               trace_ratio_exact; with covariance: lambda_K_gram_over_exact, trace_K_gram_over_exact,
               cos_eK1_gram_exact; with lanczos: cos_eKx1_eH1, overlap_Kx_H, alpha_eH1_exact = e_H1 K e_H1 / lambda_H1
  gauss_newton  G = J^T H_out J against H (needs lanczos): lambda_G(_i), cos_eG1_eH1, overlap_G_H, second_term_norm_eH1
               = ||(H - G) e_H^1|| / lambda_H^1, second_term_eH1; Hutchinson trace_G, trace_H_minus_G (+ _se),
               trace_HG, cos_HG; with exact_covariance also trace_HKx, cos_HKx, c_fit_HKx, cos_GKx, cos_eG1_eKx1
  step         alpha_star (+ alpha_star_reached), loss_change_a{alpha} (+ _se) and what a parabola along e_1
               with curvature lambda_1 predicts from the same batches (loss_change_quad_a{alpha},
               alpha_cross_quad, g_e1_*), mean |cos(g_b, e_i)|
  curvature    per-example curvature along e_H^1 (curvature_mean, curvature_var) and R1's
               stability_factor (1 - eta lambda)^2 + eta^2 c(S, N) s^2 with lambda, s^2 from them
  negative     the most negative eigenvalues (Lanczos on -H): lambda_min, neg_eig_sum (R5)
  density      stochastic Lanczos quadrature of H: slq_trace, slq_neg_mass, slq_logdet, slq_n_above (+ _se),
               slq_threshold, density_n_hvp; every probe's Ritz nodes/weights kept in state["slq"][step] (the figure)
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
from dnn import density as slq_density
from dnn.objective import Objective
from valleysim import theory
from valleysim.stats import mean_se

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


def _density(ctx: ProbeContext) -> dict:
    """SLQ of H (:mod:`dnn.density`): cfg.slq_starts Rademacher starts x cfg.slq_steps Lanczos steps (capped
    at P), seed cfg.seed + step; threshold of slq_logdet / slq_n_above = cfg.slq_rel_threshold x the largest
    Ritz value."""
    obj, cfg = ctx.objective, ctx.cfg
    res = slq_density.slq(
        obj.hvp,
        obj.theta0,
        n_starts=cfg.slq_starts,
        m=min(cfg.slq_steps, obj.dim),
        seed=cfg.seed + ctx.step,
    )
    ctx.state.setdefault("slq", {})[int(ctx.step)] = res.to_state()  # every probe's, for the density figure
    return slq_density.probe_metrics(res, cfg.slq_rel_threshold)


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


def _operator_pairs(ctx: ProbeContext, matvec, k: int, key: str, seed_offset: int) -> eigen.Eigenpairs:
    """Top-k eigenpairs of ``matvec`` by Lanczos (cfg's tolerance and budget), warm-started from and kept in
    ``ctx.state[key]``."""
    obj, cfg = ctx.objective, ctx.cfg
    init = ctx.state.get(key)
    pairs = eigen.lanczos_top(
        matvec,
        obj.theta0,
        min(k, obj.dim),
        tol=cfg.lanczos_tol,
        max_iter=cfg.lanczos_max_iter,
        init=None if init is None else init.to(obj.device, obj.dtype),
        seed=cfg.seed + seed_offset,
    )
    ctx.state[key] = pairs.vectors.detach().cpu()
    return pairs


def _exact_covariance(ctx: ProbeContext) -> dict:
    """The exact K = (1/n) sum_i (g_i - g)(g_i - g)^T of the measurement set, matrix-free
    (:meth:`dnn.objective.Objective.covariance_vp`, every matvec one pass over the per-example gradients):
    its top 5 by Lanczos and Tr K exactly; the covariance probe's Gram estimate over it when that probe ran;
    its top eigenvectors against H's when lanczos ran, and alpha_eH1_exact = e_H^1^T K e_H^1 / lambda_H^1."""
    obj = ctx.objective
    g = obj.grad()
    pairs = _operator_pairs(ctx, lambda v: obj.covariance_vp(v, mean=g), 5, "eigvecs_Kx", 2)
    lam, trace = float(pairs.values[0]), obj.covariance_trace(mean=g)
    out = {
        "lambda_K_exact": lam,
        "trace_K_exact": trace,
        "trace_ratio_exact": covariance.ratio(trace, lam),
        "exact_covariance_n_kvp": pairs.n_matvec,
        "exact_covariance_converged": bool(pairs.converged),
    }
    out.update({f"lambda_Kx_{i + 1}": float(v) for i, v in enumerate(pairs.values)})
    if "lambda_K" in ctx.results:  # the covariance probe ran at this probe time
        out["lambda_K_gram_over_exact"] = covariance.ratio(ctx.results["lambda_K"], lam)
        out["trace_K_gram_over_exact"] = covariance.ratio(ctx.results["trace_K"], trace)
        out["cos_eK1_gram_exact"] = covariance.top_cosine(ctx.state["eigvecs_K"], pairs.vectors)
    if ctx.pairs is not None:
        VH, lam_H = ctx.pairs.vectors, float(ctx.pairs.values[0])
        out["cos_eKx1_eH1"] = covariance.top_cosine(pairs.vectors, VH)
        out["overlap_Kx_H"] = covariance.subspace_overlap(VH, pairs.vectors)
        out["alpha_eH1_exact"] = covariance.ratio(float(VH[0] @ obj.covariance_vp(VH[0], mean=g)), lam_H)
    return out


def _gauss_newton(ctx: ProbeContext) -> dict:
    """The Gauss-Newton G = (1/n) sum_i J_i^T H_out,i J_i (:meth:`dnn.objective.Objective.gnvp`) against H:
    top-k of G by Lanczos, its eigenvectors against H's, the second term H - G along e_H^1, and Hutchinson
    traces of H, G (and the exact K when the exact_covariance probe ran) from the same cfg.hutchinson_samples
    Rademacher probes (seed cfg.seed + step; :func:`dnn.covariance.hutchinson_products`)."""
    obj, cfg = ctx.objective, ctx.cfg
    pairs = _operator_pairs(ctx, obj.gnvp, cfg.top_k, "eigvecs_G", 3)
    VH, lam_H = ctx.pairs.vectors, float(ctx.pairs.values[0])
    out = {
        "lambda_G": float(pairs.values[0]),
        "gauss_newton_n_gvp": pairs.n_matvec,
        "gauss_newton_converged": bool(pairs.converged),
    }
    out.update({f"lambda_G_{i + 1}": float(v) for i, v in enumerate(pairs.values)})
    out["cos_eG1_eH1"] = covariance.top_cosine(pairs.vectors, VH)
    out["overlap_G_H"] = covariance.subspace_overlap(VH, pairs.vectors)
    r = obj.hvp(VH[0]) - obj.gnvp(VH[0])  # (H - G) e_H^1
    out["second_term_norm_eH1"] = covariance.ratio(float(r.norm()), lam_H)
    out["second_term_eH1"] = covariance.ratio(float(VH[0] @ r), lam_H)
    ops = {
        "H": lambda Z: torch.stack([obj.hvp(z) for z in Z]),
        "G": lambda Z: torch.stack([obj.gnvp(z) for z in Z]),
    }
    if "lambda_K_exact" in ctx.results:  # this probe time's exact K: its eigenvectors and its traces
        g = obj.grad()
        ops["Kx"] = lambda Z: obj.covariance_vp(Z, mean=g)
        out["cos_eG1_eKx1"] = covariance.top_cosine(pairs.vectors, ctx.state["eigvecs_Kx"])
    res = covariance.hutchinson_products(ops, obj.theta0, n_samples=cfg.hutchinson_samples, seed=cfg.seed + ctx.step)
    samples = res.pop("samples")
    out.update({k: float(v) for k, v in res.items()})
    out["trace_H_minus_G"], out["trace_H_minus_G_se"] = (
        float(v) for v in mean_se(samples["trace_H"] - samples["trace_G"])
    )
    return out


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
    "exact_covariance": _exact_covariance,
    "gauss_newton": _gauss_newton,
    "step": _step,
    "curvature": _curvature,
    "walk": _walk,
    "negative": _negative,
    "density": _density,
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
