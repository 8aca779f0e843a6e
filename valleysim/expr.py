"""Expressions typed by users, read as data: a whitelisted subset of Python syntax, never evaluated.

``parse_expression(text, symbols)`` parses ``text`` with ``ast.parse`` (which
only builds a syntax tree; it runs nothing) and walks the tree itself,
building the sympy expression node by node. Accepted:

    numbers (int, float; finite, at most 1e308), the declared names, pi, E,
    + - * / ** (binary), unary + -, parentheses,
    calls of the functions in ``FUNCTIONS`` with their arities.

Anything else -- attribute access, subscripts, lambdas, strings, other
calls, keyword arguments, comparisons, comprehensions, dunder names --, input
longer than ``MAX_LENGTH`` characters, more than ``MAX_NODES`` syntax nodes,
nesting deeper than ``MAX_DEPTH``, powers whose exact value would be huge,
or a result that is not finite (1/0, log(0)) is a ``UserInputError`` naming
the parameter. sympy's ``sympify`` / ``parse_expr`` are never called on user
text: they evaluate Python.

``check_name`` is the rule for user-declared names (coordinates): ASCII
identifiers, not keywords, not dunder, not a function or constant name.
"""

from __future__ import annotations

import ast
import keyword
import math
import operator
import re

import sympy as sp

from valleysim.errors import UserInputError

MAX_LENGTH = 2000  # characters
MAX_NODES = 600  # syntax-tree nodes
MAX_DEPTH = 40  # nesting of operations
MAX_POWER = 64  # |numeric exponent| on a symbolic base (degree of what expand() may face)
MAX_DIGITS = 400  # decimal digits of an exact number built from powers of numbers

#: name -> (sympy function, allowed argument counts). Each prints to numba-compilable code.
FUNCTIONS = {
    "exp": (sp.exp, (1,)),
    "log": (sp.log, (1, 2)),
    "sqrt": (sp.sqrt, (1,)),
    "cbrt": (sp.cbrt, (1,)),
    "Abs": (sp.Abs, (1,)),
    "abs": (sp.Abs, (1,)),
    "sign": (sp.sign, (1,)),
    "Heaviside": (sp.Heaviside, (1,)),
    "Max": (sp.Max, (2,)),
    "Min": (sp.Min, (2,)),
    "sin": (sp.sin, (1,)),
    "cos": (sp.cos, (1,)),
    "tan": (sp.tan, (1,)),
    "asin": (sp.asin, (1,)),
    "acos": (sp.acos, (1,)),
    "atan": (sp.atan, (1,)),
    "atan2": (sp.atan2, (2,)),
    "sinh": (sp.sinh, (1,)),
    "cosh": (sp.cosh, (1,)),
    "tanh": (sp.tanh, (1,)),
    "asinh": (sp.asinh, (1,)),
    "acosh": (sp.acosh, (1,)),
    "atanh": (sp.atanh, (1,)),
    "erf": (sp.erf, (1,)),
    "erfc": (sp.erfc, (1,)),
}
CONSTANTS = {"pi": sp.pi, "E": sp.E}
RESERVED = frozenset(FUNCTIONS) | frozenset(CONSTANTS)

_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_BINARY = (*_OPERATORS, ast.Pow)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")

# what a rejected node is, in words
_DESCRIBE = {
    ast.Attribute: "attribute access (.)",
    ast.Subscript: "subscripts ([])",
    ast.Lambda: "lambda",
    ast.Compare: "comparisons",
    ast.BoolOp: "and/or",
    ast.IfExp: "if-else",
    ast.NamedExpr: ":=",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Set: "sets",
    ast.Dict: "dicts",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.JoinedStr: "strings",
    ast.Starred: "*args",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Slice: "slices",
}


def check_name(name: str, what: str) -> str:
    """``name`` as a declared symbol name: ASCII identifier, <= 64 chars, not keyword/dunder/reserved."""
    if not _NAME.match(name) or keyword.iskeyword(name) or keyword.issoftkeyword(name):
        raise UserInputError(
            f"{what}: names must be ASCII identifiers (letters, digits, _; at most 64 "
            f"characters, not a Python keyword); got {name!r}"
        )
    if name.startswith("__") or name in RESERVED:
        raise UserInputError(
            f"{what}: {name!r} is reserved (dunder names, functions {', '.join(FUNCTIONS)}, "
            f"constants {', '.join(CONSTANTS)}); choose another name"
        )
    return name


def _short(text: str) -> str:
    return repr(text) if len(text) <= 80 else repr(text[:77] + "...")


class _Builder:
    """Builds the sympy expression of an ``ast.Expression``, refusing every node outside the whitelist."""

    def __init__(self, text: str, names: dict[str, sp.Symbol], what: str):
        self.text, self.names, self.what = text, names, what

    def fail(self, node, reason: str):
        col = getattr(node, "col_offset", None)
        where = f" at column {col + 1}" if col is not None else ""
        raise UserInputError(
            f"{self.what}: {reason}{where} in {_short(self.text)}; allowed: numbers, "
            f"{self._allowed_names()}, + - * / **, parentheses and the functions "
            f"{', '.join(FUNCTIONS)}"
        )

    def _allowed_names(self) -> str:
        names = sorted(self.names)
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        return f"the names {shown}, pi, E" if names else "pi, E"

    def build(self, node, depth: int = 0) -> sp.Expr:
        if depth > MAX_DEPTH:
            self.fail(node, f"nesting deeper than {MAX_DEPTH} levels")
        if isinstance(node, ast.Constant):
            return self._number(node)
        if isinstance(node, ast.Name):
            if node.id in self.names:
                return self.names[node.id]
            if node.id in CONSTANTS:
                return CONSTANTS[node.id]
            if node.id in FUNCTIONS:
                self.fail(node, f"function {node.id} used without arguments")
            self.fail(node, f"unknown name {node.id!r}")
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub):
                return -self.build(node.operand, depth + 1)
            if isinstance(node.op, ast.UAdd):
                return self.build(node.operand, depth + 1)
            self.fail(node, f"operator {type(node.op).__name__} is not allowed")
        if isinstance(node, ast.BinOp):
            if type(node.op) not in _BINARY:
                hint = " (use ** for powers)" if isinstance(node.op, ast.BitXor) else ""
                self.fail(node, f"operator {type(node.op).__name__} is not allowed{hint}")
            a, b = self.build(node.left, depth + 1), self.build(node.right, depth + 1)
            if isinstance(node.op, ast.Pow):
                return self._power(node, a, b)
            return _OPERATORS[type(node.op)](a, b)
        if isinstance(node, ast.Call):
            return self._call(node, depth)
        self.fail(node, _DESCRIBE.get(type(node), f"{type(node).__name__} syntax") + " not allowed")

    def _number(self, node) -> sp.Expr:
        v = node.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.fail(node, f"{type(v).__name__} literals ({v!r:.40}) are not allowed")
        if isinstance(v, int):
            if abs(v) > 10**MAX_DIGITS:
                self.fail(node, f"integer with more than {MAX_DIGITS} digits")
            return sp.Integer(v)
        if not math.isfinite(v):
            self.fail(node, "number out of the float range (|x| <= 1.8e308)")
        return sp.Float(repr(v))

    def _power(self, node, base: sp.Expr, exponent: sp.Expr) -> sp.Expr:
        if exponent.is_Number and not base.is_Number and abs(float(exponent)) > MAX_POWER:
            self.fail(node, f"exponent {exponent} beyond +-{MAX_POWER} on a symbolic base")
        if base.is_Number and exponent.is_Number and base != 0:
            size = abs(float(exponent)) * abs(math.log10(abs(float(base)))) if base.is_finite else math.inf
            if size > MAX_DIGITS:
                self.fail(node, f"{base}**{exponent} has about {size:.3g} digits (at most {MAX_DIGITS})")
        return sp.Pow(base, exponent)

    def _call(self, node: ast.Call, depth: int) -> sp.Expr:
        if not isinstance(node.func, ast.Name):
            self.fail(node, "calls of anything but a plain function name")
        name = node.func.id
        if name not in FUNCTIONS:
            self.fail(node, f"function {name!r} is not allowed")
        if node.keywords:
            self.fail(node, f"keyword arguments to {name}")
        if any(isinstance(a, ast.Starred) for a in node.args):
            self.fail(node, f"*args in the call of {name}")
        fn, arities = FUNCTIONS[name]
        if len(node.args) not in arities:
            self.fail(node, f"{name} takes {' or '.join(map(str, arities))} argument(s), got {len(node.args)}")
        return fn(*[self.build(a, depth + 1) for a in node.args])


def parse_expression(text, symbols, what: str = "expression") -> sp.Expr:
    """The sympy expression ``text`` spells over ``symbols`` (a list of sp.Symbol); UserInputError otherwise.

    Never evaluates ``text`` as Python (see the module docstring for the grammar).
    """
    if not isinstance(text, str):
        raise UserInputError(f"{what} must be a string; got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise UserInputError(f"{what} is {len(text)} characters long; at most {MAX_LENGTH} are allowed")
    if not text.strip():
        raise UserInputError(f"{what} is empty")
    if "\x00" in text:
        raise UserInputError(f"{what} contains a NUL character")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise UserInputError(
            f"{what} is not a valid expression ({exc.msg}, column {exc.offset}) in {_short(text)}"
        ) from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise UserInputError(f"{what} cannot be read ({type(exc).__name__}) in {_short(text)}") from None
    n_nodes = sum(1 for _ in ast.walk(tree))
    if n_nodes > MAX_NODES:
        raise UserInputError(f"{what} has {n_nodes} syntax nodes; at most {MAX_NODES} are allowed")
    builder = _Builder(text, {s.name: s for s in symbols}, what)
    try:
        expr = builder.build(tree.body)
    except UserInputError:
        raise
    except (RecursionError, MemoryError, OverflowError, ValueError, TypeError, ZeroDivisionError) as exc:
        raise UserInputError(f"{what} cannot be built ({type(exc).__name__}: {exc}) in {_short(text)}") from None
    if not isinstance(expr, sp.Expr):
        raise UserInputError(f"{what} must be a scalar expression; got {_short(text)}")
    if expr.has(sp.zoo, sp.oo, -sp.oo, sp.nan):
        raise UserInputError(f"{what} is not finite everywhere it is defined (contains {expr}) in {_short(text)}")
    return expr


def parse_number(text, what: str) -> float:
    """A constant expression (e.g. '1/3', 'pi/4', '-2e-3') as a finite float; UserInputError otherwise."""
    expr = parse_expression(text, [], what)
    try:
        value = complex(sp.N(expr))
    except (OverflowError, TypeError, ValueError):
        value = complex(math.nan)
    if value.imag != 0 or not math.isfinite(value.real):
        raise UserInputError(f"{what} must be a finite real number; {_short(text)} is {sp.N(expr)}")
    return float(value.real)
