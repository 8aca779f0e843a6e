"""The projected path (noise-hessian-spectrum.txt Sec. 2, Fig. 1, and Sec. 4.3, Fig. 3): the kept states of a
run projected onto the valley floor by gradient descent, consecutive projections tested for line
connectedness, the training loss, validation loss and Hessian trace along the projections.

* :func:`project`: heavy-ball GD on the full training objective from a state, theta <- theta + v,
  v <- mu v - lr g(theta), until the loss is <= ``target`` (the paper: the minimal training loss);
  at most ``max_steps`` steps, ``reached`` False otherwise (the paper: the same hyper-parameters as the run,
  GD instead of SGD).
* :func:`segment_losses`: the loss at ``n`` evenly spaced points of the segment [a, b], both ends included;
  a pair is *line connected* when all ``n`` are <= ``threshold`` (the paper: 10 points, "a threshold").
* :func:`projected_path`: the paper's recursion. From each pair of consecutive coarse states A, B (the
  paper: epochs), when their projections are not line connected and a kept state lies between them, the
  middle one C is projected and (A, C), (C, B) are tested in turn; it stops at connected or adjacent pairs.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

__all__ = ["project", "segment_losses", "projected_path"]


def project(objective, theta: torch.Tensor, *, lr: float, momentum: float, target: float, max_steps: int) -> dict:
    """{theta, loss, steps, reached}: GD with momentum from ``theta`` (P,) until objective.loss <= target."""
    th = theta.to(device=objective.device, dtype=objective.dtype).clone()
    v = torch.zeros_like(th)
    loss, g = objective.loss_and_grad(th)
    steps = 0
    while loss > target and steps < max_steps and math.isfinite(loss):
        v = momentum * v - lr * g
        th = th + v
        loss, g = objective.loss_and_grad(th)
        steps += 1
    return {"theta": th, "loss": float(loss), "steps": steps, "reached": bool(loss <= target)}


def segment_losses(objective, a: torch.Tensor, b: torch.Tensor, n: int = 10) -> np.ndarray:
    """(n,) loss at a + t (b - a), t = 0, 1/(n-1), ..., 1."""
    return np.array([objective.loss(a + t * (b - a)) for t in np.linspace(0.0, 1.0, n)])


def projected_path(
    steps: list[int],
    load: Callable[[int], torch.Tensor],
    objective,
    *,
    coarse: int,
    lr: float,
    momentum: float,
    target: float,
    threshold: float,
    max_steps: int,
    n_points: int = 10,
    measure: Callable[[torch.Tensor], dict] | None = None,
) -> dict:
    """The projected path over the kept ``steps`` (sorted; ``load(step)`` gives that state's theta (P,)).

    Coarse pairs: consecutive entries of ``steps[::coarse]`` (plus the last step). Returns {"points": one
    row per projected state (step, loss, gd_steps, reached, and ``measure(theta_projected)``'s keys), in
    step order; "segments": one row per tested pair (step_a, step_b, max_loss, connected, refined: a kept
    state lay between and the pair was split)}."""
    steps = sorted(int(s) for s in steps)
    cache: dict[int, dict] = {}

    def proj(i: int) -> dict:
        if i not in cache:
            p = project(objective, load(steps[i]), lr=lr, momentum=momentum, target=target, max_steps=max_steps)
            cache[i] = {**p, **(measure(p["theta"]) if measure else {})}
        return cache[i]

    segments = []

    def test(i: int, j: int) -> None:
        losses = segment_losses(objective, proj(i)["theta"], proj(j)["theta"], n_points)
        ok = bool(np.all(losses <= threshold))
        split = not ok and j - i > 1
        segments.append(
            {"step_a": steps[i], "step_b": steps[j], "max_loss": float(losses.max()), "connected": ok, "refined": split}
        )
        if split:
            m = (i + j) // 2
            test(i, m)
            test(m, j)

    coarse_idx = list(range(0, len(steps), max(1, int(coarse))))
    if coarse_idx[-1] != len(steps) - 1:
        coarse_idx.append(len(steps) - 1)
    for i, j in zip(coarse_idx, coarse_idx[1:]):
        test(i, j)
    if len(coarse_idx) == 1:
        proj(0)
    points = [
        {"step": steps[i], **{k: v for k, v in cache[i].items() if k != "theta"}, "gd_steps": cache[i]["steps"]}
        for i in sorted(cache)
    ]
    for p in points:
        p.pop("steps")
    return {"points": points, "segments": segments}
