"""The project's one JSON encoding: non-finite numbers are null, numpy values are plain Python.

JSON has no NaN or infinity. Every file and every ``--json`` output of the
project writes them as ``null``; where "infinite" or "not reached" carries
meaning, the result says so in a field of its own (``diverged``, ``reached``,
``mean_square_stable``, ``alpha_star_reached``), never through the number.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path

import numpy as np

from valleysim.errors import UserInputError


def json_safe(x):
    """``x`` with non-finite floats -> None and numpy scalars / arrays -> Python (inside dicts, lists, tuples)."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def dumps(x, **kwargs) -> str:
    """``json.dumps`` of ``json_safe(x)``; a bare NaN can never be written (allow_nan=False)."""
    return json.dumps(json_safe(x), allow_nan=False, **kwargs)


MAX_DEPTH = 100  # JSON nesting that no file of the project comes near: deeper is damage (or a stack attack)


def _loads(text: str):
    """``json.loads(text)``; RecursionError where the value nests deeper than MAX_DEPTH levels (json's own
    limit is the interpreter's stack, and deep values overflow every recursive use after it)."""
    value = json.loads(text)
    if text.count("[") + text.count("{") <= MAX_DEPTH:  # too few brackets to nest that deep
        return value
    level = [value] if type(value) in (dict, list) else []  # the objects and arrays at each depth
    for _ in range(MAX_DEPTH):
        level = [c for v in level for c in (v.values() if type(v) is dict else v) if type(c) in (dict, list)]
    if level:
        raise RecursionError(f"JSON nested deeper than {MAX_DEPTH} levels")
    return value


def read_json(path) -> dict:
    """The JSON object in ``path``; a damaged file (not JSON, not UTF-8, nested deeper than MAX_DEPTH, not an
    object) is a UserInputError naming it and, for bad JSON, the line and the column."""
    p = Path(path)
    try:
        value = _loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserInputError(
            f"{p} is damaged (not valid JSON at line {err.lineno}, column {err.colno}: "
            f"{err.msg}); delete it or choose another directory"
        ) from None
    except UnicodeDecodeError:
        raise UserInputError(f"{p} is damaged (not UTF-8 text); delete it or choose another directory") from None
    except RecursionError:
        raise UserInputError(
            f"{p} is damaged (JSON nested deeper than {MAX_DEPTH} levels); delete it or choose another directory"
        ) from None
    if not isinstance(value, dict):
        raise UserInputError(f"{p} is damaged (not a JSON object); delete it or choose another directory")
    return value


def atomic_write(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsynced and renamed: readers see the old file or
    the new one, never half of one. A failed write (a full disk) removes the temporary file and raises an
    OSError naming ``path``."""
    p = Path(path)
    tmp = p.with_suffix(p.suffix + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror or str(err), str(p)) from None


def write_jsonl(path, records) -> None:
    """Replace ``path`` atomically with one ``dumps`` line per record."""
    atomic_write(path, "".join(dumps(r) + "\n" for r in records).encode("utf-8"))


def read_jsonl(path) -> tuple[list[tuple[int, object]], list[int], bool]:
    """([(line number, value)], damaged line numbers, torn) of a JSON-lines file; missing: ([], [], False).

    Line numbers are 1-based. A line that is not valid JSON (or nests deeper than MAX_DEPTH) is damaged; a
    last line without its newline is torn (a write was interrupted) and left out of both lists.
    """
    p = Path(path)
    if not p.exists():
        return [], [], False
    raw = p.read_bytes()
    torn = not raw.endswith(b"\n") and len(raw) > 0
    lines = raw.split(b"\n")[:-1]  # complete lines only
    records, damaged = [], []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append((i, _loads(line.decode("utf-8"))))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            damaged.append(i)
    return records, damaged, torn
