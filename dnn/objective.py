"""The training loss over a fixed data set as a function of one flat parameter vector.

Every probe in ``dnn/`` sees a network through an :class:`Objective`:

    L(theta) = (1/n) sum_{i<n} l(f(x_i; theta), y_i),    l = cross-entropy,  theta in R^P,

with exact weighting whatever the chunking (sums over chunks divided by n). The objective owns a
private copy of the model (in ``dtype`` on ``device``), so nothing a probe does can change the
caller's parameters or buffers; parameters enter only through :func:`torch.func.functional_call`.

BatchNorm policy (``bn``):
  ``"eval"``   running statistics (the model in eval mode); examples are independent, so per-example
               quantities are defined;
  ``"batch"``  batch statistics over consecutive groups of ``bn_batch`` examples (the model in train
               mode, as SGD sees it); the private copy's BatchNorm layers stop tracking running
               statistics, so there is no buffer update to undo.
Caution (measured, torch 2.13): ``torch.func.hessian`` (jacfwd over jacrev) of a train-mode BatchNorm
network with more than one statistics group is wrong by O(1); ``hvp`` here (jvp of grad) agrees with
``torch.autograd.functional.hessian`` and with finite differences, and the tests use the latter.
For models without BatchNorm the two policies agree.

Derivatives (all exact, no finite differences):
  grad     g = dL/dtheta                       reverse mode,                      (P,)
  hvp      H v                                 forward-over-reverse (jvp of grad), (P,)
  per-example gradients  g_i                   vmap of grad over examples,        (n, P)
  per-example curvature  v^T H_i v             second directional derivative of the vector of
                                               per-example losses (jvp of jvp),   (n,)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, grad_and_value, jvp, vmap

from valleysim.errors import UserInputError

__all__ = ["BN_POLICIES", "Objective", "has_batchnorm", "model_state", "flat_params"]

BN_POLICIES = ("eval", "batch")


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def flat_params(model: nn.Module) -> torch.Tensor:
    """All trainable parameters of ``model`` concatenated in ``named_parameters`` order, detached copy."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad]).clone()


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached clone of every parameter and buffer (for bit-identity checks)."""
    state = {f"param:{k}": v.detach().clone() for k, v in model.named_parameters()}
    state.update({f"buffer:{k}": v.detach().clone() for k, v in model.named_buffers()})
    return state


def _cast(t: torch.Tensor, device, dtype) -> torch.Tensor:
    """Detached copy on ``device``; floating tensors in ``dtype``, integer ones unchanged."""
    return t.detach().to(device, dtype if t.is_floating_point() else t.dtype).clone()


class Objective:
    """Mean cross-entropy of ``model`` on ``(inputs, targets)`` as a function of a flat ``theta``
    (against the targets smoothed by ``label_smoothing`` eps: weight 1 - eps + eps/C on the label, eps/C
    on each of the C classes, torch's definition).

    inputs (n, ...) float, targets (n,) int64. ``theta`` defaults to the model's parameters at
    construction (``self.theta0``, shape (P,)); every method takes an optional ``theta`` (P,) and an
    optional index tensor ``idx`` selecting a subset of the examples (the mean is then over the
    subset). Computation runs in chunks of ``chunk`` examples (memory only; results do not depend
    on it under ``bn="eval"``; under ``bn="batch"`` the statistics groups are ``bn_batch`` examples
    and chunks are whole groups).
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device | None = None,
        bn: str = "eval",
        bn_batch: int = 128,
        chunk: int = 64,
        label_smoothing: float = 0.0,
    ):
        if bn not in BN_POLICIES:
            raise UserInputError(f"bn policy must be one of {', '.join(BN_POLICIES)}, got {bn!r}")
        if inputs.shape[0] != targets.shape[0] or inputs.shape[0] < 1:
            raise UserInputError(
                f"inputs and targets must hold the same number (>= 1) of examples, got "
                f"{inputs.shape[0]} and {targets.shape[0]}"
            )
        if chunk < 1 or bn_batch < 1:
            raise UserInputError(f"chunk and bn_batch must be >= 1, got {chunk} and {bn_batch}")
        if not 0.0 <= label_smoothing < 1.0:
            raise UserInputError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)
        device = torch.device(device) if device is not None else next(model.parameters()).device
        self.dtype, self.device, self.bn = dtype, device, bn
        self.has_bn = has_batchnorm(model)
        self.bn_batch = bn_batch
        # chunks hold whole BN groups under the batch policy
        self.chunk = max(1, chunk // bn_batch) * bn_batch if (bn == "batch" and self.has_bn) else chunk
        self.model = copy.deepcopy(model).to(device=device, dtype=dtype)
        self.model.train(bn == "batch")
        if bn == "batch":  # batch statistics always, and no running-statistics update to undo
            for mod in self.model.modules():
                if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                    mod.track_running_stats = False
                    mod.running_mean = mod.running_var = mod.num_batches_tracked = None
        for p in self.model.parameters():
            p.requires_grad_(False)
        named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
        self.names = [k for k, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.dim = sum(self.sizes)
        self.buffers = {k: _cast(b, device, dtype) for k, b in self.model.named_buffers()}
        self.theta0 = self.flatten({k: p for k, p in self.model.named_parameters() if k in set(self.names)})
        self.inputs = inputs.to(device=device, dtype=dtype)
        self.targets = targets.to(device=device)
        self.n = int(inputs.shape[0])

    def load(self, model: nn.Module) -> "Objective":
        """Takes ``model``'s current parameters (-> ``theta0``) and BN running statistics, keeping the
        data (cheaper than a new Objective at every probe). Returns self."""
        params = dict(model.named_parameters())
        self.theta0 = torch.cat([params[k].detach().reshape(-1) for k in self.names]).to(
            device=self.device, dtype=self.dtype
        )
        src = dict(model.named_buffers())
        self.buffers = {k: _cast(src[k], self.device, self.dtype) for k in self.buffers}
        return self

    # ------------------------------------------------------------------ parameters

    def flatten(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([params[k].reshape(-1) for k in self.names])

    def unflatten(self, theta: torch.Tensor) -> dict[str, torch.Tensor]:
        if theta.shape != (self.dim,):
            raise UserInputError(f"theta must have shape ({self.dim},), got {tuple(theta.shape)}")
        return {k: t.view(s) for k, t, s in zip(self.names, torch.split(theta, self.sizes), self.shapes)}

    def _theta(self, theta):
        return self.theta0 if theta is None else theta.to(device=self.device, dtype=self.dtype)

    def vector(self, params: Sequence[torch.Tensor] | dict) -> torch.Tensor:
        """A per-parameter list/dict (e.g. ``[p.grad for p in model.parameters()]``) -> flat (P,)."""
        if isinstance(params, dict):
            return self.flatten(params).to(self.device, self.dtype)
        return torch.cat([p.reshape(-1) for p in params]).to(self.device, self.dtype)

    # ------------------------------------------------------------------ forward

    def _logits(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        """Logits (m, classes) of one chunk; batch statistics per ``bn_batch`` group."""
        if self.bn == "batch" and self.has_bn:
            return torch.cat(
                [
                    functional_call(self.model, (params, self.buffers), (x[s : s + self.bn_batch],))
                    for s in range(0, x.shape[0], self.bn_batch)
                ]
            )
        return functional_call(self.model, (params, self.buffers), (x,))

    def _losses(self, params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example losses (m,) of one chunk."""
        return F.cross_entropy(self._logits(params, x), y, reduction="none", label_smoothing=self.label_smoothing)

    def _chunks(self, idx):
        if idx is None:
            n = self.n
            for s in range(0, n, self.chunk):
                yield self.inputs[s : s + self.chunk], self.targets[s : s + self.chunk]
        else:
            idx = torch.as_tensor(idx, device=self.device, dtype=torch.long)
            for s in range(0, idx.numel(), self.chunk):
                j = idx[s : s + self.chunk]
                yield self.inputs[j], self.targets[j]

    def _count(self, idx) -> int:
        return self.n if idx is None else int(torch.as_tensor(idx).numel())

    # ------------------------------------------------------------------ quantities

    def per_example_losses(self, theta=None, idx=None) -> torch.Tensor:
        """l_i(theta) for the selected examples, (m,)."""
        params = self.unflatten(self._theta(theta))
        with torch.no_grad():
            return torch.cat([self._losses(params, x, y) for x, y in self._chunks(idx)])

    def loss(self, theta=None, idx=None) -> float:
        """L(theta) over the selected examples."""
        return float(self.per_example_losses(theta, idx).sum() / self._count(idx))

    def accuracy(self, theta=None, idx=None) -> float:
        """Fraction of the selected examples classified correctly at theta."""
        params = self.unflatten(self._theta(theta))
        with torch.no_grad():
            correct = sum(int((self._logits(params, x).argmax(1) == y).sum()) for x, y in self._chunks(idx))
        return correct / self._count(idx)

    def _sum_loss(self, th, x, y):
        """sum_i l_i over one chunk as a function of the flat theta (what the transforms differentiate)."""
        return self._losses(self.unflatten(th), x, y).sum()

    def loss_and_grad(self, theta=None, idx=None) -> tuple[float, torch.Tensor]:
        """(L, dL/dtheta (P,)) over the selected examples, one forward-backward per chunk."""
        th = self._theta(theta)
        f = self._sum_loss
        g, total = torch.zeros_like(th), 0.0
        for x, y in self._chunks(idx):
            gc, val = grad_and_value(f)(th, x, y)
            g += gc
            total += float(val)
        m = self._count(idx)
        return total / m, g / m

    def grad(self, theta=None, idx=None) -> torch.Tensor:
        """dL/dtheta (P,) over the selected examples."""
        th = self._theta(theta)
        f = self._sum_loss
        g = torch.zeros_like(th)
        for x, y in self._chunks(idx):
            g += grad(f)(th, x, y)
        return g / self._count(idx)

    def hvp(self, v: torch.Tensor, theta=None, idx=None) -> torch.Tensor:
        """H v (P,) with H = d^2 L / dtheta^2 over the selected examples (forward-over-reverse)."""
        th = self._theta(theta)
        v = v.to(device=self.device, dtype=self.dtype)
        f = self._sum_loss
        out = torch.zeros_like(th)
        for x, y in self._chunks(idx):
            out += jvp(lambda t: grad(f)(t, x, y), (th,), (v,))[1]
        return out / self._count(idx)

    def _require_independent(self, what: str):
        if self.bn == "batch" and self.has_bn:
            raise UserInputError(f"{what} needs independent examples: use bn='eval' for a model with BatchNorm")

    def per_example_grads(self, theta=None, idx=None) -> torch.Tensor:
        """g_i = dl_i/dtheta for the selected examples, (m, P) (vmap over examples; bn='eval')."""
        self._require_independent("per-example gradients")
        th = self._theta(theta)

        def one(t, x, y):
            return self._losses(self.unflatten(t), x[None], y[None])[0]

        return torch.cat([vmap(grad(one), in_dims=(None, 0, 0))(th, x, y) for x, y in self._chunks(idx)])

    def per_example_curvature(self, v: torch.Tensor, theta=None, idx=None) -> torch.Tensor:
        """v^T H_i v = d^2/dt^2 l_i(theta + t v) at t = 0 for the selected examples, (m,)."""
        self._require_independent("per-example curvature")
        th = self._theta(theta)
        v = v.to(device=self.device, dtype=self.dtype)
        out = []
        for x, y in self._chunks(idx):

            def losses(t):
                return self._losses(self.unflatten(t), x, y)

            def directional(t):
                return jvp(losses, (t,), (v,))[1]

            out.append(jvp(directional, (th,), (v,))[1])
        return torch.cat(out)
