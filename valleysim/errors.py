"""User-input errors: each names the parameter and what is allowed.

The CLI turns a ``UserInputError`` into a one-line message and exit code 2.
"""

from __future__ import annotations

import math


class UserInputError(ValueError):
    """Bad input from a user (not a bug): the message names the parameter."""


def check_positive(value: float, name: str) -> float:
    """``value`` must be a finite number > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"{name} must be a finite number > 0; got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise UserInputError(f"{name} must be a finite number > 0; got {value!r}")
    return v


def check_int_range(value: int, name: str, lo: int, hi: int | None = None) -> int:
    """``value`` must be an integer in [lo, hi] (hi None: unbounded)."""
    if isinstance(value, bool) or int(value) != value:
        raise UserInputError(f"{name} must be an integer; got {value!r}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        allowed = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise UserInputError(f"{name} must be in {allowed}; got {v}")
    return v


def check_batch_size(S: int, N: int, allow_above_n: bool = False) -> int:
    """Batch size S in 1..N (any S >= 1 when sampling with replacement)."""
    return check_int_range(S, "batch size S", 1, None if allow_above_n else N)
