"""Symbolic valley landscapes: a sympy loss over named coordinates, derived once.

A landscape is the loss L over non-degenerate coordinates theta (n) and
degenerate ones theta_hat (m), D = n + m, either analytic (one expression) or a
finite sum L = (1/M) sum_k l(coords; x_k) over M data rows. From it we derive
the gradient (D,), the Hessian (D, D) and, when L - L* = 1/2 sum_i theta_i^2
lambda_i(theta_hat) holds identically (the valley form of R3), the curvatures
lambda_i, their gradients (n, m) and Hessians (n, m, m). Compiled kernels come
from ``valleysim.valley.codegen``; the paper's toys are in ``CATALOGUE``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from itertools import combinations

import numpy as np
import sympy as sp

from valleysim.errors import UserInputError, check_array, check_finite
from valleysim.expr import check_name, parse_expression, parse_number

#: Functions that make a loss non-smooth; the sign of their argument must not change along a run.
_KINK_FUNCS = (sp.Abs, sp.sign, sp.Heaviside)
#: Non-smooth where their two arguments are equal: the kink argument is their difference.
_KINK_PAIRS = (sp.Max, sp.Min)


def diff(expr: sp.Expr, *xs) -> sp.Expr:
    """Derivative away from kinks: DiracDelta terms (from |.|'' or sign') are dropped."""
    return sp.diff(expr, *xs).replace(sp.DiracDelta, lambda *args: sp.S.Zero)


def _symbols(text, what):
    """Comma-separated names -> real sympy Symbols."""
    if not isinstance(text, str):
        raise UserInputError(f"{what} must be a string of comma-separated names; got {type(text).__name__}")
    names = [check_name(s.strip(), what) for s in text.split(",")]
    if len(set(names)) != len(names):
        raise UserInputError(f"{what} lists a coordinate twice: {','.join(names)}")
    return [sp.Symbol(s, real=True) for s in names]


@dataclass(frozen=True)
class ValleyLandscape:
    """A loss over coordinates ``theta`` (non-degenerate) and ``theta_hat`` (degenerate).

    ``loss``: full loss L (analytic) or, with ``data`` (M, k), the per-example
    loss l over coordinates and ``data_symbols`` (k); L is then its mean over
    the M rows. ``init`` (D,) is the default starting point.
    """

    name: str
    theta: tuple[sp.Symbol, ...]
    theta_hat: tuple[sp.Symbol, ...]
    loss: sp.Expr
    init: tuple[float, ...]
    data_symbols: tuple[sp.Symbol, ...] = ()
    data: np.ndarray | None = field(default=None, compare=False)
    description: str = ""

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_strings(
        cls, loss: str, nondegenerate: str, degenerate: str, init: str | None = None, name: str = "custom"
    ) -> ValleyLandscape:
        """Parse the CLI form: ``loss`` over comma-separated coordinate names; ``init`` 'a=1,b=2'."""
        theta = _symbols(nondegenerate, "--nondegenerate")
        theta_hat = _symbols(degenerate, "--degenerate")
        overlap = {s.name for s in theta} & {s.name for s in theta_hat}
        if overlap:
            raise UserInputError(f"coordinates {sorted(overlap)} are listed in both --nondegenerate and --degenerate")
        expr = parse_expression(loss, theta + theta_hat, "--loss")
        land = cls(name, tuple(theta), tuple(theta_hat), expr, tuple([0.0] * (len(theta) + len(theta_hat))))
        return land if init is None else land.with_init(init)

    def with_init(self, init: str | dict) -> ValleyLandscape:
        """Copy with the starting point changed for the named coordinates ('t3=2,t4=2' or a dict)."""
        if not isinstance(init, (str, dict)):
            raise UserInputError(
                f"--init must be 'name=value,...' or a dict {{name: value}}; got {type(init).__name__}"
            )
        if isinstance(init, str):
            pairs = {}
            for item in filter(None, (s.strip() for s in init.split(","))):
                key, sep, value = item.partition("=")
                if not sep:
                    raise UserInputError(f"--init items must look like name=value; got {item!r}")
                pairs[key.strip()] = parse_number(value, f"--init value for {key.strip()}")
            init = pairs
        names = [s.name for s in self.coords]
        unknown = sorted(set(init) - set(names))
        if unknown:
            raise UserInputError(f"--init names unknown coordinates {unknown}; coordinates are {names}")
        x = [check_finite(init[n], f"--init value for {n}") if n in init else v for n, v in zip(names, self.init)]
        return ValleyLandscape(
            self.name, self.theta, self.theta_hat, self.loss, tuple(x), self.data_symbols, self.data, self.description
        )

    def __post_init__(self):
        """Every field checked: symbols, a sympy loss over exactly them (and the declared data symbols), a finite
        starting point with one value per coordinate, data (M >= 1, one column per data symbol)."""
        for what, symbols in (
            ("theta", self.theta),
            ("theta_hat", self.theta_hat),
            ("data_symbols", self.data_symbols),
        ):
            if not isinstance(symbols, tuple) or not all(isinstance(s, sp.Symbol) for s in symbols):
                raise UserInputError(f"{what} must be a tuple of sympy Symbols; got {symbols!r:.80}")
        if not self.theta or not self.theta_hat:
            raise UserInputError("a valley needs at least one coordinate in theta and one in theta_hat")
        names = [s.name for s in self.coords + self.data_symbols]
        if len(set(names)) != len(names):
            raise UserInputError(f"theta, theta_hat and data_symbols must not share a name; got {names}")
        if not isinstance(self.loss, sp.Expr):
            kind = type(self.loss).__name__
            raise UserInputError(f"loss must be a sympy expression (from_strings reads text); got {kind}")
        object.__setattr__(self, "init", tuple(check_array(self.init, "init", (len(self.coords),)).tolist()))
        if self.data is not None:
            data = check_array(self.data, "data", ("M", len(self.data_symbols)))
            if data.shape[0] < 1:
                raise UserInputError("data must have at least one row (example)")
            object.__setattr__(self, "data", data)
        free = self.loss.free_symbols
        missing = [s.name for s in self.coords if s not in free]
        if missing:
            raise UserInputError(f"coordinates {missing} do not appear in the loss {self.loss}")
        extra = sorted(s.name for s in free - set(self.coords) - set(self.data_symbols))
        if extra:
            raise UserInputError(f"the loss uses undeclared symbols {extra}; declare them as coordinates")
        if self.data_symbols and self.data is None:
            raise UserInputError(f"data_symbols {[s.name for s in self.data_symbols]} are declared without data")

    # --- derived symbolic objects ---------------------------------------------------------------
    @property
    def coords(self) -> tuple[sp.Symbol, ...]:
        return self.theta + self.theta_hat

    @property
    def n(self) -> int:
        return len(self.theta)

    @property
    def m(self) -> int:
        return len(self.theta_hat)

    @property
    def finite_sum(self) -> bool:
        return self.data is not None

    @property
    def n_examples(self) -> int:
        return 0 if self.data is None else int(self.data.shape[0])

    def example_loss(self, k: int) -> sp.Expr:
        """l(coords; x_k) with data row k substituted (exact rationals for integer data)."""
        row = [sp.nsimplify(v) if float(v).is_integer() else sp.Float(v) for v in self.data[k]]
        return self.loss.subs(dict(zip(self.data_symbols, row)))

    @cached_property
    def full_loss(self) -> sp.Expr:
        """L over the coordinates (the mean of the per-example losses for a finite sum)."""
        if not self.finite_sum:
            return self.loss
        return sp.expand(sp.Add(*[self.example_loss(k) for k in range(self.n_examples)]) / self.n_examples)

    @cached_property
    def gradient(self) -> list[sp.Expr]:
        return [diff(self.full_loss, x) for x in self.coords]

    @cached_property
    def hessian(self) -> sp.Matrix:
        return sp.Matrix([[diff(g, x) for x in self.coords] for g in self.gradient])

    @cached_property
    def floor_loss(self) -> sp.Expr:
        """L* = L at theta = 0 (a constant for a valley)."""
        return sp.simplify(self.full_loss.subs({t: 0 for t in self.theta}))

    @cached_property
    def lambdas(self) -> list[sp.Expr] | None:
        """lambda_i(theta_hat) if L - L* = 1/2 sum theta_i^2 lambda_i identically, else None."""
        at_floor = {t: 0 for t in self.theta}
        lam = [sp.simplify(diff(self.full_loss, t, 2).subs(at_floor)) for t in self.theta]
        if self.floor_loss.free_symbols & set(self.theta_hat):
            return None
        rest = self.full_loss - self.floor_loss - sum(t**2 * l for t, l in zip(self.theta, lam)) / 2
        if sp.expand(rest) != 0 and sp.simplify(rest) != 0:
            return None
        return lam

    @property
    def valley_form(self) -> bool:
        return self.lambdas is not None

    def require_valley_form(self, what: str) -> list[sp.Expr]:
        if self.lambdas is None:
            raise UserInputError(
                f"{what} needs a loss of the valley form L* + 1/2 sum theta_i^2 lambda_i(theta_hat); "
                f"{self.name} is not (the simulation itself works with the general Hessian)"
            )
        return self.lambdas

    @cached_property
    def kinks(self) -> list[sp.Expr]:
        """Arguments of |.|, sign, Heaviside and the pairwise differences of the arguments of Max, Min in L:
        the valley form holds while none changes sign."""
        args = {f.args[0] for f in self.full_loss.atoms(*_KINK_FUNCS)}
        args |= {a - b for f in self.full_loss.atoms(*_KINK_PAIRS) for a, b in combinations(f.args, 2)}
        return sorted(args, key=sp.default_sort_key)

    @cached_property
    def key(self) -> str:
        """Content hash: the same landscape always compiles to the same cached kernel."""
        parts = [
            sp.srepr(self.loss),
            repr([s.name for s in self.theta]),
            repr([s.name for s in self.theta_hat]),
            repr([s.name for s in self.data_symbols]),
        ]
        if self.data is not None:
            parts.append(hashlib.sha256(np.ascontiguousarray(self.data, dtype=float).tobytes()).hexdigest())
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    # --- numeric evaluation (numpy, vectorised over leading axes) --------------------------------
    def __getstate__(self) -> dict:
        """Pickled without the compiled ``eval_*`` evaluators (closures, rebuilt on first use where the
        landscape is unpickled, e.g. in a sweep's worker)."""
        return {k: v for k, v in self.__dict__.items() if not k.startswith("eval_")}

    def _lambdify(self, exprs):
        """Nested lists of expressions -> function x (..., D) -> array (...,) + nested shape."""
        flat, shape = _flatten(exprs), _shape(exprs)
        f = sp.lambdify(list(self.coords), flat, modules="numpy")

        def call(x):
            x = np.asarray(x, dtype=float)
            out = np.empty(x.shape[:-1] + (len(flat),))
            for j, v in enumerate(f(*np.moveaxis(x, -1, 0))):
                out[..., j] = v  # broadcasts constant entries
            return out.reshape(x.shape[:-1] + shape)

        return call

    @cached_property
    def eval_loss(self):
        """x (..., D) -> L (...)."""
        f = self._lambdify([self.full_loss])
        return lambda x: f(x)[..., 0]

    @cached_property
    def eval_hessian(self):
        """x (..., D) -> Hessian (..., D, D)."""
        return self._lambdify(self.hessian.tolist())

    @cached_property
    def eval_hessian_gradient(self):
        """x (..., D) -> dH[a, b, c] = d H_ab / d x_c (..., D, D, D)."""
        return self._lambdify([[[diff(h, x) for x in self.coords] for h in row] for row in self.hessian.tolist()])

    @cached_property
    def eval_lambdas(self):
        """x (..., D) -> lambda (..., n)."""
        return self._lambdify(self.require_valley_form("lambda_i"))

    @cached_property
    def eval_grad_lambdas(self):
        """x (..., D) -> grad_hat lambda (..., n, m)."""
        lam = self.require_valley_form("grad lambda_i")
        return self._lambdify([[diff(l, y) for y in self.theta_hat] for l in lam])

    @cached_property
    def eval_hess_lambdas(self):
        """x (..., D) -> hess_hat lambda (..., n, m, m)."""
        lam = self.require_valley_form("hess lambda_i")
        return self._lambdify([[[diff(l, y, z) for z in self.theta_hat] for y in self.theta_hat] for l in lam])


def _flatten(x):
    if isinstance(x, (list, tuple)):
        return [z for y in x for z in _flatten(y)]
    return [x]


def _shape(x):
    return (len(x),) + _shape(x[0]) if isinstance(x, (list, tuple)) else ()


# --- catalogue ---------------------------------------------------------------------------------------


def _hadamard(M: int) -> np.ndarray:
    from scipy.linalg import hadamard

    return hadamard(M).astype(float)


def _abs_toy() -> ValleyLandscape:
    return ValleyLandscape.from_strings(
        "Abs(t3 + t4)*t1**2 + Abs(t3 + 2*t4)*t2**2", "t1,t2", "t3,t4", "t3=1,t4=1", name="abs-toy"
    )


def _exp_toy() -> ValleyLandscape:
    return ValleyLandscape.from_strings(
        "(4 - 2*exp(-t3 - t4))*t1**2 + exp(-(t3 - t4)**2)*t2**2", "t1,t2", "t3,t4", "t3=2.5,t4=1.5", name="exp-toy"
    )


def _regression_valley(M: int = 32, sigma: float = 0.5) -> ValleyLandscape:
    """Least squares l_k = 1/2 (sum_i sqrt(lambda_i(theta_hat)) h_ki theta_i - sigma h_0k)^2.

    h_k. are rows of a Hadamard matrix (columns orthogonal, entries +-1), so
    L = 1/2 sum_i lambda_i theta_i^2 + sigma^2 / 2 exactly, and the per-example
    gradients at the floor have covariance sigma^2 diag(lambda): true
    mini-batch noise aligned with the Hessian.
    """
    H = _hadamard(M)
    data = np.column_stack([sigma * H[:, 3], H[:, 1], H[:, 2]])  # (y_k, h_k1, h_k2)
    y, h1, h2 = sp.symbols("y h1 h2", real=True)
    t1, t2, t3, t4 = sp.symbols("t1 t2 t3 t4", real=True)
    lam1 = 1 + t3**2 + t4**2 / 2
    lam2 = 2 + sp.exp(-t3 + t4)
    loss = (sp.sqrt(lam1) * h1 * t1 + sp.sqrt(lam2) * h2 * t2 - y) ** 2 / 2
    return ValleyLandscape(
        "regression-valley",
        (t1, t2),
        (t3, t4),
        loss,
        (0.0, 0.0, 1.0, 1.0),
        (y, h1, h2),
        data,
        "finite-sum least squares in valley form (true mini-batch noise)",
    )


def _diag_linear_net(M: int = 32, sigma: float = 0.5) -> ValleyLandscape:
    """Diagonal linear network f(x) = u1 v1 x1 + u2 v2 x2, squared loss, label noise sigma.

    Orthogonal +-1 design and residuals orthogonal to it: minima are the
    hyperbolas u_j v_j = beta_j, tr H = u1^2 + v1^2 + u2^2 + v2^2 everywhere,
    and on the minimum manifold min tr H = 2 (|beta_1| + |beta_2|). Not of the
    valley form in these coordinates (the manifold is curved).
    """
    H = _hadamard(M)
    beta = (1.0, 0.5)
    X = H[:, 1:3]
    data = np.column_stack([X @ beta + sigma * H[:, 3], X])
    y, x1, x2 = sp.symbols("y x1 x2", real=True)
    u1, u2, v1, v2 = sp.symbols("u1 u2 v1 v2", real=True)
    loss = (u1 * v1 * x1 + u2 * v2 * x2 - y) ** 2 / 2
    return ValleyLandscape(
        "diag-linear-net",
        (u1, u2),
        (v1, v2),
        loss,
        (2.0, 1.5, 0.5, 1.0 / 3.0),
        (y, x1, x2),
        data,
        "diagonal linear network regression (not valley form; trace known in closed form)",
    )


CATALOGUE = {
    "abs-toy": _abs_toy,
    "exp-toy": _exp_toy,
    "regression-valley": _regression_valley,
    "diag-linear-net": _diag_linear_net,
}


def catalogue(name: str) -> ValleyLandscape:
    """A catalogue landscape by name (see ``CATALOGUE``)."""
    if not isinstance(name, str) or name not in CATALOGUE:
        raise UserInputError(f"unknown catalogue landscape {name!r}; choose one of {', '.join(CATALOGUE)}")
    return CATALOGUE[name]()
