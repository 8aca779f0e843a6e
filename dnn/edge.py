"""Where a network sits against the linear-stability edges of SGD, from its own per-example curvature.

At a trained point theta, with E (k, P) the top-k Hessian eigenvectors of a measurement set of m
examples, the per-example Hessians projected on span(E) are

    A_i = E H_i E^T  (k, k),     A_i[a, b] = e_a^T H_i e_b,

read by forward-over-forward directional curvatures (:meth:`dnn.objective.Objective.per_example_curvature`)
and polarisation, e_a^T H_i e_b = ((e_a + e_b)^T H_i (e_a + e_b) - A_i[a, a] - A_i[b, b]) / 2: k (k + 1) / 2
passes over the examples, no Hessian. SGD linearised at theta within span(E) is the per-example
quadratic toy of R1 with these A_i (:class:`valleysim.quadratic.PerExampleQuadratic`), so the toy's edges
apply to it at the run's (eta, S, N):

* the mean-square edge: rho_ms = rho(T(eta)) at c = c(S, N) (:class:`valleysim.quadratic.second_moment.MomentMap`),
  R1's factor q = (1 - eta lambda)^2 + eta^2 c s^2 when k = 1; eta*_ms, the eta where rho_ms = 1;
* the almost-sure edge: the Lyapunov exponent gamma of the random product of (I - eta A_B), batches of S
  drawn with replacement from the m examples (Monte Carlo, :func:`valleysim.quadratic.lyapunov.lyapunov_exponent`;
  gamma <= log(rho_ms) / 2). Stable means rho_ms < 1, resp. gamma < 0; an edge is 1, resp. 0.

N is the training set's size (the m examples stand for its population). The picture leaves out every
direction outside span(E) and the change of H along the step (third derivatives).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from valleysim import theory
from valleysim.errors import UserInputError

__all__ = ["projected_hessians", "stability_edges", "analyse_checkpoint"]


def projected_hessians(objective, E: torch.Tensor, theta=None) -> np.ndarray:
    """A (m, k, k) float64: A[i, a, b] = e_a^T H_i e_b for the rows e_a of ``E`` (k, P), m examples of
    ``objective`` (module docstring; needs independent examples: bn='eval' for BatchNorm)."""
    E = E.to(device=objective.device, dtype=objective.dtype)
    if E.ndim != 2 or E.shape[1] != objective.dim:
        raise UserInputError(f"E must have shape (k, {objective.dim}); got {tuple(E.shape)}")
    k = E.shape[0]
    A = np.zeros((objective.n, k, k))
    for a in range(k):
        A[:, a, a] = objective.per_example_curvature(E[a], theta).detach().cpu().double().numpy()
    for a in range(k):
        for b in range(a + 1, k):
            both = objective.per_example_curvature(E[a] + E[b], theta).detach().cpu().double().numpy()
            A[:, a, b] = A[:, b, a] = (both - A[:, a, a] - A[:, b, b]) / 2
    return A


def stability_edges(
    A: np.ndarray, eta: float, S: int, n_train: int, *, seed: int = 0, n_steps: int = 3000, n_traj: int = 64
) -> dict:
    """The edges of the module docstring for the per-example Hessians ``A`` (m, k, k) at (eta, S, N = n_train):
    {k, lambda_1..k (of the mean of A), c, rho_ms, eta_star_ms, eta_over_eta_star, gamma_as, gamma_as_se,
    half_log_rho_ms}. ``gamma_as`` from ``n_traj`` trajectories of ``n_steps`` steps (a tenth burn-in)."""
    from valleysim.quadratic.landscape import PerExampleQuadratic
    from valleysim.quadratic.lyapunov import lyapunov_exponent
    from valleysim.quadratic.second_moment import MomentMap

    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 3 or A.shape[1] != A.shape[2] or A.shape[0] < 2:
        raise UserInputError(f"per-example Hessians must have shape (m >= 2, k, k); got {A.shape}")
    k = A.shape[1]
    q = PerExampleQuadratic("diagonal", A[:, :, 0]) if k == 1 else PerExampleQuadratic("dense", A)
    c = theory.variance_factor(S, n_train)
    moments = MomentMap(q)
    lam = np.linalg.eigvalsh(A.mean(axis=0))[::-1]
    rho = moments.spectral_radius(eta, c)
    eta_star = moments.eta_star(c)
    lyap = lyapunov_exponent(
        q, eta, S, "with_replacement", n_steps=n_steps, burn_in=n_steps // 10, n_traj=n_traj, seed=seed
    )
    return {
        "k": k,
        **{f"lambda_{i + 1}": float(v) for i, v in enumerate(lam)},
        "c": c,
        "rho_ms": float(rho),
        "half_log_rho_ms": 0.5 * math.log(rho) if rho > 0 else -math.inf,
        "eta_star_ms": float(eta_star),
        "eta_over_eta_star": eta / eta_star if eta_star > 0 else math.inf,
        "gamma_as": float(lyap["value"]),
        "gamma_as_se": float(lyap["se"]),
    }


def analyse_checkpoint(
    cfg, model_state: dict, images, labels, *, sizes, top_k: int, tol: float = 1e-3, seed: int = 0
) -> list[dict]:
    """For each measurement size m in ``sizes``: the run ``cfg``'s network at ``model_state`` (its
    training images uint8 NHWC and labels, the first cfg.n_train), Lanczos top-``top_k`` (relative
    residual ``tol``) on m examples,
    then :func:`stability_edges` on e_H^1 alone (k = 1) and on the top-k subspace, with the curvature
    spread along e_H^1 (curvature_mean, curvature_var over the m examples). One row per (m, k)."""
    import dataclasses

    from dnn import probes as probes_mod
    from dnn.data import channel_stats
    from dnn.train import measurement_objective, run_model

    if cfg.n_train is not None:
        images, labels = images[: cfg.n_train], labels[: cfg.n_train]
    n = len(images)
    mean, std = channel_stats(images)
    model = run_model(cfg, (images.shape[3], images.shape[1], images.shape[2])).to(torch.device(cfg.device))
    model.load_state_dict(model_state)
    rows = []
    for m in sizes:
        obj = measurement_objective(cfg, model, images, labels, mean, std, size=min(int(m), n)).load(model)
        pairs = probes_mod.top_eigenpairs(obj, dataclasses.replace(cfg, top_k=top_k, lanczos_tol=tol), k=top_k)
        A = projected_hessians(obj, pairs.vectors)
        spread = {"curvature_mean": float(A[:, 0, 0].mean()), "curvature_var": float(A[:, 0, 0].var())}
        for kk in sorted({1, top_k}):
            rows.append(
                {
                    "measure_size": obj.n,
                    "lanczos_lambda_1": float(pairs.values[0]),
                    **spread,
                    **stability_edges(A[:, :kk, :kk], cfg.lr, cfg.batch, n, seed=seed),
                }
            )
    return rows
