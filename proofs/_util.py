"""Shared helpers for the proof modules: checked equalities and Markdown sections.

``check`` raises (it does not use ``assert``), so the derivations are verified
even under ``python -O``.
"""

from __future__ import annotations

import sympy as sp

#: LaTeX names for the project's plain-ASCII symbol names.
LATEX_NAMES = {
    "eta": r"\eta",
    "lam": r"\lambda",
    "s2": "s^{2}",
    "alpha": r"\alpha",
    "psi": r"\psi",
    "lam_max": r"\lambda_{\max}",
    "rho_LinvQ": r"\rho(L^{-1} Q)",
    "x": "x",
}


class ProofError(AssertionError):
    """A step of a derivation did not check out."""


def _is_zero(expr) -> bool:
    expr = sp.expand(expr)
    if expr == 0:
        return True
    return sp.simplify(sp.cancel(sp.together(expr))) == 0


def check(lhs, rhs=0, why: str = "") -> None:
    """Raise ProofError unless lhs - rhs simplifies to 0 (entrywise for matrices)."""
    diff = sp.Matrix(lhs) - sp.Matrix(rhs) if isinstance(lhs, sp.MatrixBase) else sp.sympify(lhs - rhs)
    entries = list(diff) if isinstance(diff, sp.MatrixBase) else [diff]
    bad = [d for d in entries if not _is_zero(d)]
    if bad:
        raise ProofError(f"{why}: difference does not vanish: {bad[0]}")


def check_true(cond, why: str = "") -> None:
    """Raise ProofError unless ``cond`` is (sympy or Python) True."""
    if cond is not True and cond is not sp.true:
        raise ProofError(f"{why}: got {cond!r}")


def tex(expr) -> str:
    return sp.latex(
        expr, symbol_names={s: LATEX_NAMES[s.name] for s in getattr(expr, "free_symbols", ()) if s.name in LATEX_NAMES}
    )


def section(title: str, assumptions: list[str], steps: list[str], formulas: dict) -> str:
    """One Markdown section: assumptions, steps in words, final formulas in LaTeX."""
    lines = [f"## {title}", "", "**Assumptions.**", ""]
    lines += [f"- {a}" for a in assumptions]
    lines += ["", "**Derivation (every step is checked by sympy).**", ""]
    lines += [f"{k}. {s}" for k, s in enumerate(steps, 1)]
    lines += ["", "**Results.**", ""]
    for name, expr in formulas.items():
        rhs = tex(expr) if isinstance(expr, sp.Basic) else str(expr)
        lines += [f"- `{name}`:", "", f"$$ {rhs} $$", ""]
    return "\n".join(lines) + "\n"
