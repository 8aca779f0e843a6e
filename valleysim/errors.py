"""User-input errors: each names the parameter and what is allowed.

The CLI turns a ``UserInputError`` into a one-line message and exit code 2.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy loads where an array is checked: the command's signal handlers come first
    import numpy as np


class UserInputError(ValueError):
    """Bad input from a user (not a bug): the message names the parameter."""


class Terminated(SystemExit):
    """SIGTERM, raised by the command's handler: unwinds like Ctrl-C (finally blocks run), exit code 143."""

    def __init__(self):
        super().__init__(128 + signal.SIGTERM)


def _shown(value) -> str:
    """``value`` as the user would write it: numpy scalars as plain numbers (-1.0, not np.float64(-1.0))."""
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    return repr(value)


def check_positive(value: float, name: str) -> float:
    """``value`` must be a finite number > 0."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"{name} must be a finite number > 0; got {_shown(value)}") from None
    if not math.isfinite(v) or v <= 0:
        raise UserInputError(f"{name} must be a finite number > 0; got {_shown(value)}")
    return v


def check_range(value: float, name: str, lo: float, hi: float) -> float:
    """``value`` must be a finite number in [lo, hi]."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"{name} must be a finite number in [{lo:g}, {hi:g}]; got {_shown(value)}") from None
    if not (math.isfinite(v) and lo <= v <= hi):
        raise UserInputError(f"{name} must be a finite number in [{lo:g}, {hi:g}]; got {_shown(value)}")
    return v


#: Magnitudes the simulators keep numbers within, [1 / SCALE_LIMIT, SCALE_LIMIT]: their squares stay finite
#: in float64 (and LAPACK's scaling, which clamps eigenvalues at ~1.5e138, is never reached).
SCALE_LIMIT = 1e100


def check_learning_rate(eta: float, name: str = "eta") -> float:
    """``eta`` must be a finite number in [1 / SCALE_LIMIT, SCALE_LIMIT]."""
    return check_range(eta, name, 1 / SCALE_LIMIT, SCALE_LIMIT)


def check_finite(value: float, name: str) -> float:
    """``value`` must be a finite number."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v):
        raise UserInputError(f"{name} must be a finite number; got {_shown(value)}")
    return v


def check_int_range(value: int, name: str, lo: int, hi: int | None = None) -> int:
    """``value`` must be an integer in [lo, hi] (hi None: unbounded)."""
    try:
        whole = not isinstance(value, bool) and int(value) == value
    except (TypeError, ValueError, OverflowError):  # None, 'abc', nan, inf
        whole = False
    if not whole:
        raise UserInputError(f"{name} must be an integer; got {_shown(value)}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        allowed = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise UserInputError(f"{name} must be in {allowed}; got {v}")
    return v


def check_array(value, name: str, shape: tuple | None = None, finite: bool = True) -> np.ndarray:
    """``value`` as a float64 array with ``shape`` (None: any shape; a None or str entry: any length along
    that axis, the str naming it in the message) and finite entries (``finite`` False: NaN and inf pass, for
    formulas that carry them through)."""
    import numpy as np

    kind = type(value).__name__
    try:
        if value is None:  # np.asarray would make it NaN
            raise TypeError
        if np.iscomplexobj(value):  # np.asarray would drop the imaginary parts
            kind = "complex numbers"
            raise TypeError
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserInputError(f"{name} must be an array of real numbers; got {kind}") from None
    free = lambda w: w is None or isinstance(w, str)  # noqa: E731
    if shape is not None and (a.ndim != len(shape) or any(not free(w) and w != n for w, n in zip(shape, a.shape))):
        want = "(" + ", ".join("n" if w is None else str(w) for w in shape) + ("," if len(shape) == 1 else "") + ")"
        raise UserInputError(f"{name} must have shape {want}; got shape {a.shape}")
    if finite and not np.all(np.isfinite(a)):
        raise UserInputError(f"{name} must be finite; got {np.count_nonzero(~np.isfinite(a))} NaN or inf entries")
    return a


def check_instance(value, cls: type, name: str, how: str = "") -> None:
    """``value`` must be a ``cls`` (``how``: where one comes from, e.g. "from make_noise")."""
    if not isinstance(value, cls):
        how = f" ({how})" if how else ""
        raise UserInputError(f"{name} must be a {cls.__name__}{how}; got {type(value).__name__}")


def check_batch_size(S: int, N: int, allow_above_n: bool = False) -> int:
    """Batch size S in 1..N (any S >= 1 when sampling with replacement)."""
    return check_int_range(S, "batch size S", 1, None if allow_above_n else N)


def warn(message: str) -> None:
    """One warning line on stderr; the work goes on."""
    print(f"valleysim: warning: {message}", file=sys.stderr)


def check_path(value, what: str) -> Path:
    """``value`` (a str or os.PathLike) as a Path."""
    if not isinstance(value, (str, os.PathLike)):
        raise UserInputError(f"{what} must be a path (str or os.PathLike); got {type(value).__name__}")
    return Path(value)


def check_list(values, name: str) -> list:
    """``values`` as a non-empty list (a bare value: a one-entry list)."""
    import numpy as np

    values = list(np.atleast_1d(np.asarray(values, dtype=object)))
    if not values:
        raise UserInputError(f"{name} must list at least one value")
    return values


def check_out_dir(path, what: str = "--out") -> Path:
    """``path`` as a directory this process can create or write in; UserInputError naming ``what`` if not.

    Refuses an empty path, an existing file, a path under a file and a place this process cannot write
    (tried with a probe file in the directory or its nearest existing ancestor, so read-only file
    systems are caught even for root). An existing directory that holds a run (its config.json) passes
    unwritable: reopening a finished run writes nothing, and the command refuses (``check_writable_dir``)
    only if it has to write. Creates nothing: the writer makes the directory when it writes.
    """
    check_path(path, what)
    if not str(path).strip():
        raise UserInputError(f"{what} must name a directory; got an empty string")
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise UserInputError(f"{what} {str(p)!r} is an existing file; give a directory")
    parent = p
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserInputError(f"{what} {str(p)!r} cannot be created: {str(parent)!r} is a file")
    if parent == p and (p / "config.json").is_file():
        return p  # a run to reopen: writable or not is decided by whether it has anything to write
    _probe(p, parent, what)
    return p


def _probe(p: Path, parent: Path, what: str, why: str = "") -> None:
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise UserInputError(
            f"{what} {str(p)!r} is not writable ({exc.strerror or exc} in {str(parent)!r}){why}"
        ) from None


def check_writable_dir(path, what: str = "--out", reason: str = "") -> Path:
    """``path`` (a directory, or where one can be created) must be writable now: the command is about to
    write there. ``reason`` says why it has to (e.g. "its run is not finished")."""
    p = Path(path).expanduser()
    parent = p
    while not parent.exists():
        parent = parent.parent
    _probe(p, parent, what, f"; {reason}" if reason else "")
    return p


_KEPT = "(finished points and checkpoints are kept; rerun to resume)"


def report_errors(fn, *args, prog: str = "valleysim") -> int:
    """``fn(*args)`` as a command: a UserInputError is one line ``prog: error: ...`` and exit code 2; the
    machine failing the run (out of memory, a library that cannot be mapped into the address space, a full
    or vanished disk) one line and exit code 1; a closed stdout (``| head``) nothing and 141; an
    interruption exit code 130, a ``Terminated`` 143 (finished work is kept: stores resume)."""
    try:
        return fn(*args)
    except UserInputError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader of stdout went away (`| head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except MemoryError as err:
        why = str(err) or "the sizes passed the estimate before the run but not the run; lower them"
        print(f"{prog}: error: out of memory ({why})", file=sys.stderr)
        return 1
    except ImportError as err:
        if "failed to map segment" not in str(err):  # dlopen's word for an mmap refused (ulimit -v)
            raise
        print(f"{prog}: error: out of memory ({err}; is the address space limited? see ulimit -v)", file=sys.stderr)
        return 1
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        print(f"{prog}: error: {err.strerror or err}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted {_KEPT}", file=sys.stderr)
        return 130
    except Terminated as exc:
        print(f"{prog}: terminated {_KEPT}", file=sys.stderr)
        return exc.code
