"""Noise models for SGD in a valley: how a step's gradient is perturbed.

A step is x_{t+1} = x_t - eta (grad L(x_t) + xi_t). Gaussian models draw
xi ~ N(0, diag(v(x))) with per-coordinate variances v, theta block first:

- ``sgd``: v_i = scale lambda_i(theta_hat) on theta (aligned with the Hessian; R3),
- ``isotropic``: v_i = scale on theta,
- ``isotropic-full``: v = scale on every coordinate,
- ``designed:F``: v_i = scale lambda_i dF/dlambda_i on theta (Theorem 2); F is
  ``trace``, ``logdet`` or an expression in lam1..lamn with dF/dlam_i >= 0.

``minibatch`` (finite-sum landscapes only) replaces the full gradient by the mean
of S of the M per-example gradients, drawn without replacement: true SGD noise.
The default scale is c(S, M) = (M - S) / (S (M - 1)), the variance factor of a
mini-batch mean (``valleysim.theory.variance_factor``).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from valleysim.errors import (
    SCALE_LIMIT,
    UserInputError,
    check_batch_size,
    check_instance,
    check_int_range,
    check_positive,
    check_range,
)
from valleysim.expr import parse_expression
from valleysim.theory import variance_factor
from valleysim.valley.landscape import ValleyLandscape

NOISES = ("sgd", "minibatch", "isotropic", "isotropic-full", "designed:trace", "designed:logdet", "designed:EXPR")


@dataclass(frozen=True)
class NoiseModel:
    """``variances`` (D,) sympy expressions in the coordinates, or None for true mini-batches.

    ``f``: for ``designed:EXPR``, the spectral function F(lambda(theta_hat)) it
    is designed to decrease (trace and logdet are always recorded), else None. ``scale``: the noise scale; ``S``, ``M``:
    mini-batch size and data-set size (None if not given).
    """

    name: str
    scale: float
    variances: tuple[sp.Expr, ...] | None
    f: sp.Expr | None = None
    S: int | None = None
    M: int | None = None

    def __post_init__(self):
        if not isinstance(self.name, str):
            raise UserInputError(f"noise name must be a string; got {type(self.name).__name__}")
        check_range(self.scale, "noise scale", 0, SCALE_LIMIT)
        if self.variances is None:
            if self.S is None or self.M is None:
                raise UserInputError("mini-batch noise (variances None) needs S and M: build it with make_noise")
        elif not isinstance(self.variances, tuple) or not all(isinstance(v, sp.Expr) for v in self.variances):
            raise UserInputError(f"noise variances must be a tuple of sympy expressions; got {self.variances!r:.80}")
        if self.f is not None and not isinstance(self.f, sp.Expr):
            raise UserInputError(f"noise f must be a sympy expression or None; got {type(self.f).__name__}")
        for what, v in (("S", self.S), ("M", self.M)):
            if v is not None:
                check_int_range(v, f"noise {what}", 1)

    @property
    def minibatch(self) -> bool:
        return self.variances is None

    def check_for(self, land: ValleyLandscape) -> None:
        """This noise must fit ``land``: one variance per coordinate in its symbols (and the scale), or
        mini-batches of its own M examples."""
        if self.minibatch:
            if not land.finite_sum or self.M != land.n_examples or self.S > self.M:
                raise UserInputError(
                    f"noise {self.name} (S = {self.S} of M = {self.M}) does not fit {land.name} "
                    f"({land.n_examples or 'no'} examples); build it with make_noise(land, ...)"
                )
            return
        exprs = self.variances + (() if self.f is None else (self.f,))
        foreign = sorted({s.name for e in exprs for s in e.free_symbols} - {s.name for s in (*land.coords, SCALE)})
        if len(self.variances) != land.n + land.m or foreign:
            raise UserInputError(
                f"noise {self.name} has {len(self.variances)} variances in {foreign or 'the coordinates'}; "
                f"{land.name} needs {land.n + land.m} in its coordinates {[s.name for s in land.coords]}: "
                "build it with make_noise(land, ...)"
            )

    @property
    def key(self) -> str:
        """What the compiled kernel depends on (the scale enters the variances symbolically)."""
        return repr((self.name if self.minibatch else [sp.srepr(v) for v in self.variances], sp.srepr(self.f)))


SCALE = sp.Symbol("noise_scale", positive=True)  # kept symbolic so one kernel serves every scale


def lam_symbols(n: int) -> list[sp.Symbol]:
    return [sp.Symbol(f"lam{i + 1}", positive=True) for i in range(n)]


def spectral_function(n: int, spec: str) -> sp.Expr:
    """F(lam1..lamn) for 'trace', 'logdet' or an expression in lam1..lamn."""
    lam = lam_symbols(n)
    if spec == "trace":
        return sp.Add(*lam)
    if spec == "logdet":
        return sp.Add(*[sp.log(x) for x in lam])
    F = parse_expression(spec, lam, "--noise designed:EXPR")
    extra = sorted(s.name for s in F.free_symbols - set(lam))
    if extra:
        raise UserInputError(f"--noise designed:EXPR may use only {[s.name for s in lam]}; got {extra}")
    return F


def make_noise(
    land: ValleyLandscape, spec: str, *, scale: float | None = None, S: int | None = None, M: int | None = None
) -> NoiseModel:
    """Validate a noise specification against a landscape (errors name the parameter)."""
    check_instance(land, ValleyLandscape, "land", "from ValleyLandscape.from_strings or catalogue")
    if not isinstance(spec, str):
        raise UserInputError(f"--noise must be one of {', '.join(NOISES)}; got {spec!r}")
    if S is not None:
        S = check_int_range(S, "--batch S", 1)
    if land.finite_sum:
        if M is not None and M != land.n_examples:
            raise UserInputError(f"--dataset-size M must equal the landscape's {land.n_examples} examples; got {M}")
        M = land.n_examples
    elif M is not None:
        M = check_int_range(M, "--dataset-size M", 1)
    if S is not None and M is not None:
        check_batch_size(S, M)
    if scale is not None and spec == "minibatch":
        raise UserInputError("--noise-scale does not apply to --noise minibatch (its noise comes from the data)")
    if scale is not None:
        scale = check_positive(scale, "--noise-scale")
    elif S is not None and M is not None:
        scale = variance_factor(S, M)
    elif spec != "minibatch":
        raise UserInputError("noise scale: give --noise-scale, or --batch S and --dataset-size M for c(S, M)")

    D = land.n + land.m
    zero = sp.S.Zero
    if spec == "minibatch":
        if not land.finite_sum:
            raise UserInputError(
                f"--noise minibatch needs a finite-sum landscape; {land.name} is analytic "
                "(use --noise sgd for Hessian-aligned Gaussian noise)"
            )
        if S is None:
            raise UserInputError("--noise minibatch needs --batch S")
        return NoiseModel(spec, float(variance_factor(S, M)), None, None, S, M)
    f = None
    if spec == "sgd":
        lam = land.require_valley_form("--noise sgd (noise aligned with the Hessian)")
        v = [SCALE * l for l in lam] + [zero] * land.m
    elif spec == "isotropic":
        v = [SCALE] * land.n + [zero] * land.m
    elif spec == "isotropic-full":
        v = [SCALE] * D
    elif spec.startswith("designed:"):
        lam = land.require_valley_form(f"--noise {spec}")
        F = spectral_function(land.n, spec.partition(":")[2])
        at = dict(zip(lam_symbols(land.n), lam))
        v = [SCALE * l * sp.diff(F, x).subs(at) for l, x in zip(lam, lam_symbols(land.n))] + [zero] * land.m
        f = F.subs(at) if spec not in ("designed:trace", "designed:logdet") else None
    else:
        raise UserInputError(f"--noise must be one of {', '.join(NOISES)}; got {spec!r}")
    return NoiseModel(spec, float(scale), tuple(v), f, S, M)
