"""The training loss over a fixed data set as a function of one flat parameter vector.

Every probe in ``dnn/`` sees a network through an :class:`Objective`:

    L(theta) = (1/n) sum_{i<n} l(f(x_i; theta), y_i),    theta in R^P,

with the per-example loss ``loss`` (:func:`per_example_loss`; z = f(x) the logits (C,), t = (1 - eps) e_y
+ eps/C the target smoothed by ``label_smoothing`` eps, p = softmax(z)):
  ``"cross_entropy"``  l = -sum_c t_c log p_c,       H_out = d^2 l/dz^2 = diag(p) - p p^T (any eps),
  ``"mse"``            l = 1/2 sum_c (z_c - t_c)^2,  H_out = I_C  (the square loss of Cohen et al. 2021,
                       edge of stability; torch's F.mse_loss(z, t) also averages over the C classes,
                       so it is 2/C times this l),
with exact weighting whatever the chunking (sums over chunks divided by n). The objective owns a
private copy of the model (in ``dtype`` on ``device``), so nothing a probe does can change the
caller's parameters or buffers; parameters enter only through :func:`torch.func.functional_call`.

Parameter filter (``params``, per-layer curvature): fnmatch patterns (a sequence, or one string of
comma-separated ones) matched against trainable parameter names (``"features.0.*"``, ``"*.weight"``) and
module names (``"classifier"`` selects all of its parameters; :func:`select_parameters`). theta is then
only the selected parameters (``named_parameters`` order, P their count); the others are held fixed at the
model's values (at construction and at each :meth:`Objective.load`), so every quantity below is the
theta-block of the full one (H v: the block H_SS v). A pattern matching nothing is a UserInputError.

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
  covariance_vp  K v = (1/n) sum_i (d_i . v) d_i,  d_i = g_i - g: per-example gradients one chunk at a
                                               time (never (n, P)),               (P,) or (b, P)
  gnvp     G v = (1/n) sum_i J_i^T H_out,i J_i v,  J_i = dz_i/dtheta (C, P): jvp of the logits, H_out,
                                               then vjp (Gauss-Newton; the Fisher for cross-entropy), (P,)
For the loss, H = G + (1/n) sum_i sum_c (dl_i/dz_ic) d^2 z_ic/dtheta^2: G is H without the second
derivatives of the network (for MSE dl/dz = z - t, the residual); H = G for a network linear in theta.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from fnmatch import fnmatchcase

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, grad_and_value, jvp, vjp, vmap

from valleysim.errors import UserInputError

__all__ = [
    "BN_POLICIES",
    "LOSSES",
    "Objective",
    "has_batchnorm",
    "model_state",
    "flat_params",
    "per_example_loss",
    "select_parameters",
]

BN_POLICIES = ("eval", "batch")
LOSSES = ("cross_entropy", "mse")


def check_loss(loss: str, what: str = "loss") -> str:
    if loss not in LOSSES:
        raise UserInputError(f"{what} must be one of {', '.join(LOSSES)}, got {loss!r}")
    return loss


def per_example_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    loss: str = "cross_entropy",
    label_smoothing: float = 0.0,
    reduction: str = "none",
) -> torch.Tensor:
    """l(z_i, y_i) (m,) for logits z (m, C) and int labels y (m,), against t = (1 - eps) e_y + eps/C (the
    module docstring's definitions; cross-entropy is torch's F.cross_entropy with label_smoothing=eps);
    ``reduction`` "mean" / "sum" over the m examples as torch's. The one-hot target is built by comparison,
    so this runs under vmap."""
    if check_loss(loss) == "cross_entropy":
        return F.cross_entropy(logits, targets, reduction=reduction, label_smoothing=label_smoothing)
    C = logits.shape[1]
    onehot = (targets[:, None] == torch.arange(C, device=logits.device)).to(logits.dtype)
    l = 0.5 * ((logits - (1.0 - label_smoothing) * onehot - label_smoothing / C) ** 2).sum(1)
    return {"none": l, "mean": l.mean(), "sum": l.sum()}[reduction]


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


def _listing(items: list[str], limit: int = 24) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def patterns(params, what: str = "params") -> tuple[str, ...] | None:
    """``params`` (None, a comma-separated string or a sequence of strings) as a tuple of stripped patterns."""
    if params is None:
        return None
    pats = params.split(",") if isinstance(params, str) else list(params)
    if not all(isinstance(q, str) for q in pats):
        raise UserInputError(f"{what}: patterns must be strings, got {params!r}")
    pats = tuple(q.strip() for q in pats)
    if not pats or not all(pats):
        raise UserInputError(f"{what}: an empty pattern in {params!r}")
    return pats


def select_parameters(model: nn.Module, params=None, what: str = "params") -> list[str]:
    """Names of ``model``'s trainable parameters (``named_parameters`` order) that ``params`` selects: None
    (all), or fnmatch patterns (case-sensitive; a sequence, or one string of comma-separated ones), each
    matched against parameter names and against the names of the modules a parameter lies in. A pattern
    matching nothing: UserInputError naming it (``what``: the option) and listing the model's names."""
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    pats = patterns(params, what)
    if pats is None:
        return names

    def owners(name: str) -> list[str]:  # "a.b.w" -> ["a", "a.b"]
        parts = name.split(".")[:-1]
        return [".".join(parts[: i + 1]) for i in range(len(parts))]

    chosen: set[str] = set()
    for pat in pats:
        hit = {k for k in names if fnmatchcase(k, pat) or any(fnmatchcase(m, pat) for m in owners(k))}
        if not hit:
            modules = list(dict.fromkeys(m for k in names for m in owners(k)))
            raise UserInputError(
                f"{what}: {pat!r} matches no trainable parameter or module name; modules: "
                f"{_listing(modules) or '(none)'}; parameters: {_listing(names)}"
            )
        chosen |= hit
    return [k for k in names if k in chosen]


class Objective:
    """Mean loss (``loss``: ``"cross_entropy"`` or ``"mse"``, module docstring) of ``model`` on
    ``(inputs, targets)`` as a function of a flat ``theta`` (against the targets smoothed by
    ``label_smoothing`` eps: weight 1 - eps + eps/C on the label, eps/C on each of the C classes, torch's
    definition; the same smoothed target for MSE).

    inputs (n, ...) float, targets (n,) int64. ``theta`` defaults to the model's parameters at
    construction (``self.theta0``, shape (P,)); every method takes an optional ``theta`` (P,) and an
    optional index tensor ``idx`` selecting a subset of the examples (the mean is then over the
    subset). Computation runs in chunks of ``chunk`` examples (memory only; results do not depend
    on it under ``bn="eval"``; under ``bn="batch"`` the statistics groups are ``bn_batch`` examples
    and chunks are whole groups). ``params``: the parameter filter (module docstring); ``names``, ``shapes``,
    ``sizes``, ``dim`` describe theta's parameters, ``full_dim`` counts every trainable one, ``fixed`` holds
    the others.
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
        loss: str = "cross_entropy",
        params: str | Sequence[str] | None = None,
    ):
        self.loss_kind = check_loss(loss)
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
        names = select_parameters(model, params)  # theta's parameters (every trainable one: params=None)
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
        self.names = names
        self.params = patterns(params)  # None: every trainable parameter
        every = dict(model.named_parameters())
        trainable = [k for k, p in every.items() if p.requires_grad]
        self.filtered = len(self.names) < len(trainable)
        self._index = [trainable.index(k) for k in self.names]  # positions among the trainable parameters
        self._n_trainable = len(trainable)
        self.shapes = [tuple(every[k].shape) for k in self.names]
        self.sizes = [every[k].numel() for k in self.names]
        self.dim = sum(self.sizes)
        self.full_dim = sum(every[k].numel() for k in trainable)
        # every parameter outside theta, held fixed (passed to functional_call with theta's)
        self.fixed = {k: _cast(p, device, dtype) for k, p in self.model.named_parameters() if k not in set(names)}
        self.buffers = {k: _cast(b, device, dtype) for k, b in self.model.named_buffers()}
        self.theta0 = self.flatten({k: p for k, p in self.model.named_parameters() if k in set(self.names)})
        self.inputs = inputs.to(device=device, dtype=dtype)
        self.targets = targets.to(device=device)
        self.n = int(inputs.shape[0])

    def load(self, model: nn.Module) -> "Objective":
        """Takes ``model``'s current parameters (theta's -> ``theta0``, the others -> the fixed ones) and BN
        running statistics, keeping the data (cheaper than a new Objective at every probe). Returns self."""
        params = dict(model.named_parameters())
        self.theta0 = torch.cat([params[k].detach().reshape(-1) for k in self.names]).to(
            device=self.device, dtype=self.dtype
        )
        self.fixed = {k: _cast(params[k], self.device, self.dtype) for k in self.fixed}
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
        """A per-parameter list/dict (e.g. ``[p.grad for p in model.parameters()]``) -> flat (P,); a list of
        every trainable parameter under a filter gives theta's block of it."""
        if isinstance(params, dict):
            return self.flatten(params).to(self.device, self.dtype)
        params = list(params)
        if self.filtered and len(params) == self._n_trainable:
            params = [params[i] for i in self._index]
        return torch.cat([p.reshape(-1) for p in params]).to(self.device, self.dtype)

    # ------------------------------------------------------------------ forward

    def _logits(self, params: dict, x: torch.Tensor) -> torch.Tensor:
        """Logits (m, classes) of one chunk; batch statistics per ``bn_batch`` group."""
        if self.fixed:  # the parameters outside theta, held fixed
            params = {**self.fixed, **params}
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
        return per_example_loss(self._logits(params, x), y, self.loss_kind, self.label_smoothing)

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

    def _grad_chunks(self, th: torch.Tensor, idx):
        """The per-example gradients g_i (m_c, P) of one chunk at a time (vmap of grad over its examples)."""

        def one(t, x, y):
            return self._losses(self.unflatten(t), x[None], y[None])[0]

        per_example = vmap(grad(one), in_dims=(None, 0, 0))
        for x, y in self._chunks(idx):
            yield per_example(th, x, y)

    def per_example_grads(self, theta=None, idx=None) -> torch.Tensor:
        """g_i = dl_i/dtheta for the selected examples, (m, P) (vmap over examples; bn='eval')."""
        self._require_independent("per-example gradients")
        return torch.cat(list(self._grad_chunks(self._theta(theta), idx)))

    def _covariance_pass(self, V: torch.Tensor | None, theta, idx, mean) -> tuple[torch.Tensor | None, float]:
        """(K V^T as rows (b, P) or None, Tr K) in one pass over the chunks; d_i = g_i - g, g = ``mean``
        (default: :meth:`grad`, one more pass), centred before any product (no cancellation of
        E[g_i g_i^T] - g g^T)."""
        self._require_independent("the gradient covariance")
        th = self._theta(theta)
        g = self.grad(th, idx) if mean is None else mean.to(device=self.device, dtype=self.dtype)
        out = None if V is None else torch.zeros_like(V)
        trace = 0.0
        for G in self._grad_chunks(th, idx):
            D = G - g
            trace += float((D * D).sum())
            if V is not None:
                out += (V @ D.T) @ D
        m = self._count(idx)
        return (None if out is None else out / m), trace / m

    def covariance_vp(self, v: torch.Tensor, theta=None, idx=None, mean: torch.Tensor | None = None) -> torch.Tensor:
        """K v with K = (1/m) sum_i (g_i - g)(g_i - g)^T over the m selected examples (bn='eval'): v (P,) ->
        (P,), or a block V (b, P) -> the rows K v_j (b, P) from the same pass. The per-example gradients
        are formed one chunk at a time (memory chunk x P, never m x P); ``mean`` the mean gradient g if
        known (saves a pass), else :meth:`grad`."""
        V = v.to(device=self.device, dtype=self.dtype)
        if V.ndim not in (1, 2) or V.shape[-1] != self.dim:
            raise UserInputError(f"v must have shape ({self.dim},) or (b, {self.dim}), got {tuple(V.shape)}")
        out, _ = self._covariance_pass(V.reshape(-1, self.dim), theta, idx, mean)
        return out.reshape(V.shape)

    def covariance_trace(self, theta=None, idx=None, mean: torch.Tensor | None = None) -> float:
        """Tr K = (1/m) sum_i ||g_i - g||^2 exactly, in the chunks of :meth:`covariance_vp`."""
        return self._covariance_pass(None, theta, idx, mean)[1]

    def _output_hvp(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """H_out u row by row for logits z and tangents u (m, C): (diag(p) - p p^T) u for cross-entropy
        (p = softmax(z), whatever the smoothing), u for MSE."""
        if self.loss_kind == "mse":
            return u
        p = torch.softmax(z, dim=1)
        return p * (u - (p * u).sum(1, keepdim=True))

    def gnvp(self, v: torch.Tensor, theta=None, idx=None) -> torch.Tensor:
        """G v (P,), G = (1/m) J^T H_out J the Gauss-Newton matrix of the selected examples (the Fisher
        for cross-entropy), J (m C, P) the Jacobian of their logits: per chunk J v (jvp), H_out per
        example, J^T (vjp). Under bn='batch' J is that of the group-normalised logits (each example's
        logits depend on its whole group), so H = G + sum_i sum_c (dl_i/dz_ic) d^2 z_ic/dtheta^2 holds
        under both policies."""
        th = self._theta(theta)
        v = v.to(device=self.device, dtype=self.dtype)
        out = torch.zeros_like(th)
        for x, _ in self._chunks(idx):

            def logits(t):
                return self._logits(self.unflatten(t), x)

            z, jv = jvp(logits, (th,), (v,))
            out += vjp(logits, th)[1](self._output_hvp(z, jv))[0]
        return out / self._count(idx)

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
