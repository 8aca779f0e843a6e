"""Command-line value types: each checks its range where the flag is read and says what is allowed.

argparse calls them on the raw string; a ``ArgumentTypeError`` becomes
``valleysim <command>: error: argument --flag: <message>`` and exit code 2
(one line: see ``OneLineParser``), before any work is done.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

from valleysim.errors import UserInputError, check_out_dir

SEED_MAX = 2**63 - 1  # seeds travel to the numba kernels as int64


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (the flag and what is allowed), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(text: str) -> float:
    try:
        return float(str(text).replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _real(text: str, ok, allowed: str) -> float:
    v = _number(text)
    if not math.isfinite(v) or not ok(v):
        raise argparse.ArgumentTypeError(f"must be {allowed}; got {text!r}")
    return v


def positive(text: str) -> float:
    """A finite float > 0."""
    return _real(text, lambda v: v > 0, "a finite number > 0")


def nonnegative(text: str) -> float:
    """A finite float >= 0."""
    return _real(text, lambda v: v >= 0, "a finite number >= 0")


def finite(text: str) -> float:
    """Any finite float."""
    return _real(text, lambda v: True, "a finite number")


def fraction(text: str) -> float:
    """A float in (0, 1]."""
    return _real(text, lambda v: 0 < v <= 1, "a number in (0, 1]")


def _integer(text: str, lo: int, hi: int | None) -> int:
    s = str(text).strip().replace("_", "")
    try:
        v = int(s)
    except ValueError:
        f = _number(s)  # '1e6' is a count too
        if not math.isfinite(f) or f != int(f):
            raise argparse.ArgumentTypeError(f"must be an integer; got {text!r}") from None
        v = int(f)
    if v < lo or (hi is not None and v > hi):
        allowed = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
        raise argparse.ArgumentTypeError(f"must be an integer {allowed}; got {text!r}")
    return v


def integer(lo: int = 1, hi: int | None = None):
    """A type for integers in [lo, hi] (hi None: unbounded); '1e6' and '1_000_000' are accepted."""

    def parse(text: str) -> int:
        return _integer(text, lo, hi)

    parse.__name__ = f"integer_{lo}_{hi}"
    return parse


count = integer(1)  # sizes, steps, trajectories: >= 1
natural = integer(0)  # >= 0 (0 meaning "off" where documented)


def out_dir(text: str) -> Path:
    """A directory that can be created or written in (``errors.check_out_dir``); nothing is created yet."""
    try:
        return check_out_dir(text, "directory")
    except UserInputError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("directory ")) from None


def seed(text: str) -> int:
    """A seed in 0..2**63 - 1."""
    return _integer(text, 0, SEED_MAX)


def comma_list(item, allowed: str = "numbers", empty: bool = False):
    """A type for 'a,b,c': each entry read by ``item`` (a type above, or ``str``); at least one entry
    unless ``empty`` ('' is then the empty tuple)."""

    def parse(text: str) -> tuple:
        parts = [s.strip() for s in str(text).split(",") if s.strip()]
        if not parts and not empty:
            raise argparse.ArgumentTypeError(f"must be a comma list of {allowed}; got {text!r}")
        out = []
        for s in parts:
            try:
                out.append(item(s))
            except argparse.ArgumentTypeError:
                raise argparse.ArgumentTypeError(
                    f"must be a comma list of {allowed}; got {text!r} (entry {s!r})"
                ) from None
        return tuple(out)

    parse.__name__ = f"comma_list_{getattr(item, '__name__', 'item')}"
    return parse


MAX_GRID = 10_000  # points per grid axis


def grid(text: str) -> tuple[float, ...]:
    """'min:max:count' (count log-spaced values, 0 < min <= max) or a comma list of finite numbers > 0."""
    allowed = (
        f"'min:max:count' (log-spaced, 0 < min <= max, 1 <= count <= {MAX_GRID}) or a comma list of finite numbers > 0"
    )
    try:
        if ":" in str(text):
            a, b, n = (s.strip() for s in str(text).split(":"))
            a, b, n = positive(a), positive(b), integer(1, MAX_GRID)(n)
            if b < a:
                raise argparse.ArgumentTypeError("min > max")
            return tuple(float(v) for v in np.geomspace(a, b, n))
        values = comma_list(positive)(text)
        if len(values) > MAX_GRID:
            raise argparse.ArgumentTypeError("too many values")
        return values
    except (argparse.ArgumentTypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be {allowed}; got {text!r}") from None
