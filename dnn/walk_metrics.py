"""Walk-with-SGD metrics (walk-with-sgd.txt Sec. 3) on a network's full-batch loss.

The definitions are the toy's, imported from :mod:`valleysim.walk` so that toy and network share one:
:func:`valleysim.walk.interpolation_alphas` (alpha_j = j / (n_interp + 1), j = 0..n_interp + 1: the
endpoints and n_interp points strictly between), :func:`valleysim.walk.segment_metrics` (floor, height,
barrier, barrier_size) and the cosine of :func:`valleysim.walk.cosine` (nan when a norm is below
``GRAD_ATOL``). Vectors are flat torch tensors (P,); ``objective`` is a :class:`dnn.objective.Objective`
(anything with ``.loss(theta)`` and ``.dim``).
"""

from __future__ import annotations

import torch

from dnn.step_probes import check_vector
from valleysim.errors import UserInputError, check_int_range
from valleysim.walk.metrics import GRAD_ATOL, N_INTERP, interpolation_alphas, segment_metrics

__all__ = ["segment_walk_metrics", "cos_consecutive", "distance_from_init", "WalkTracker"]


def _same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str):
    if a.shape != b.shape:
        raise UserInputError(
            f"{name_a} and {name_b} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def segment_walk_metrics(objective, theta_prev, theta_next, n_interp: int = N_INTERP) -> dict:
    """Loss profile of one update theta_prev -> theta_next (P,) on the objective's full loss L.

    L_j = L((1 - alpha_j) theta_prev + alpha_j theta_next) at alpha_j = interpolation_alphas(n_interp)
    (n_interp + 2 values, endpoints exactly theta_prev and theta_next), then segment_metrics:

        floor        = min_j L_j
        height       = (L_0 + L_{n+1} - 2 floor) / 2                         (walk-with-sgd Table 2)
        barrier      = 1.0 if some interior L_j is above both endpoints (by > BARRIER_RTOL (1 + |L|)),
                       else 0.0                                              (walk-with-sgd Table 1)
        barrier_size = max interior L_j - max(L_0, L_{n+1}) (0 when no barrier)
        loss_prev, loss_next = L_0, L_{n+1}

    Cost: n_interp + 2 full-loss evaluations.
    """
    check_int_range(n_interp, "n_interp", 1)
    a = check_vector(theta_prev, "theta_prev", objective.dim)
    b = check_vector(theta_next, "theta_next", objective.dim)
    ref = getattr(objective, "theta0", None)  # interpolate in the objective's dtype/device
    if isinstance(ref, torch.Tensor):
        a, b = a.to(ref), b.to(ref)
    alphas = interpolation_alphas(int(n_interp))
    losses = []
    for j, al in enumerate(alphas):
        th = a if j == 0 else b if j == len(alphas) - 1 else (1.0 - float(al)) * a + float(al) * b
        losses.append(objective.loss(th))
    m = segment_metrics(losses)
    return {
        "floor": float(m["floor"]),
        "height": float(m["height"]),
        "barrier": float(m["barrier"]),
        "barrier_size": float(m["barrier_size"]),
        "loss_prev": float(losses[0]),
        "loss_next": float(losses[-1]),
    }


def cos_consecutive(g_prev, g_next) -> dict:
    """{"cos_consecutive": g_prev.g_next / (||g_prev|| ||g_next||)} of the gradients (P,) of two
    consecutive updates (walk-with-sgd l. 61); nan when either norm is below GRAD_ATOL (as
    valleysim.walk.cosine). Computed in float64."""
    g0 = check_vector(g_prev, "g_prev").to(torch.float64)
    g1 = check_vector(g_next, "g_next").to(g0)
    _same_shape(g0, g1, "g_prev", "g_next")
    n0, n1 = float(torch.linalg.vector_norm(g0)), float(torch.linalg.vector_norm(g1))
    if n0 < GRAD_ATOL or n1 < GRAD_ATOL:
        return {"cos_consecutive": float("nan")}
    return {"cos_consecutive": float(g0 @ g1) / (n0 * n1)}


def distance_from_init(theta, theta_init) -> dict:
    """{"distance_from_init": ||theta - theta_init||_2} (walk-with-sgd l. 61), float64."""
    t = check_vector(theta, "theta").to(torch.float64)
    t0 = check_vector(theta_init, "theta_init").to(t)
    _same_shape(t, t0, "theta", "theta_init")
    return {"distance_from_init": float(torch.linalg.vector_norm(t - t0))}


class WalkTracker:
    """Keeps what the walk metrics of the LAST update need; a training loop calls :meth:`update` after
    every optimiser step and :meth:`metrics` at a probe.

    Memory: 4 P-vectors (theta_init, theta_before and theta_after of the last update, the last update's
    gradient), cloned in the dtype/device they are passed in. cos_consecutive of the last two update
    gradients is computed at each update (one O(P) dot product) and kept as a float, so the gradient
    before the last one is not stored. :meth:`state` / :meth:`from_state` checkpoint it.
    """

    _STATE = ("theta_init", "theta_before", "theta_after", "g_last", "cos_last", "steps")

    def __init__(self, theta_init):
        self.theta_init = check_vector(theta_init, "theta_init").detach().clone()
        self.dim = self.theta_init.shape[0]
        self.theta_before = None  # parameters before the last update
        self.theta_after = None  # parameters after the last update
        self.g_last = None  # gradient of the last update
        self.cos_last = float("nan")  # cos(g of the update before the last, g_last); nan after one update
        self.steps = 0

    def update(self, theta_before, theta_after, step_gradient) -> None:
        """Record one update theta_before -> theta_after made with ``step_gradient`` (all (P,); the
        gradient of the step -- the mini-batch gradient for SGD, before momentum / weight decay)."""
        tb = check_vector(theta_before, "theta_before", self.dim)
        ta = check_vector(theta_after, "theta_after", self.dim)
        g = check_vector(step_gradient, "step_gradient", self.dim).detach()
        self.cos_last = cos_consecutive(self.g_last, g)["cos_consecutive"] if self.g_last is not None else float("nan")
        self.theta_before, self.theta_after = tb.detach().clone(), ta.detach().clone()
        self.g_last = g.clone()
        self.steps += 1

    def metrics(self, objective, n_interp: int = N_INTERP) -> dict:
        """Walk metrics of the last update on ``objective``'s full loss:
        segment_walk_metrics(theta_before, theta_after) + cos_consecutive of the last two update
        gradients (nan after a single update) + distance_from_init of theta_after. Before any update the
        segment keys and the cosine are nan and the distance is 0."""
        if self.steps == 0:
            nan = float("nan")
            return {
                **dict.fromkeys(
                    ("floor", "height", "barrier", "barrier_size", "loss_prev", "loss_next", "cos_consecutive"), nan
                ),
                "distance_from_init": 0.0,
            }
        out = segment_walk_metrics(objective, self.theta_before, self.theta_after, n_interp)
        out["cos_consecutive"] = self.cos_last
        out.update(distance_from_init(self.theta_after, self.theta_init))
        return out

    def state(self) -> dict:
        """Checkpointable dict (the tensors are the tracker's own clones)."""
        return {k: getattr(self, k) for k in self._STATE}

    @classmethod
    def from_state(cls, state: dict) -> "WalkTracker":
        missing = [k for k in cls._STATE if k not in state]
        if missing:
            raise UserInputError(f"walk tracker state lacks {', '.join(missing)}")
        tr = cls(state["theta_init"])
        for k in cls._STATE[1:]:
            v = state[k]
            setattr(tr, k, v.detach().clone() if isinstance(v, torch.Tensor) else v)
        return tr
