"""A run directory that survives interruption: config, metric rows, checkpoint.

    DIR/config.json      the run's configuration (a resumed run must match it)
    DIR/metrics.jsonl    one JSON object per probe (tidy: read with ``pandas.read_json(path, lines=True)``)
    DIR/checkpoint.pt    the training state and the number of metric rows it accounts for

Exactly-once rows: every row is appended, flushed and fsynced before the run moves on, and every
checkpoint records how many rows existed when it was taken. Resuming truncates ``metrics.jsonl``
to that count (dropping rows written after the checkpoint, which the resumed run will write again,
and a torn last line), so a killed run resumes with no lost and no duplicated rows. Checkpoints are
written to a temporary file, fsynced and renamed (atomic on POSIX). A finished run is reopened by
``RunStore.finished`` without writing anything (a read-only directory reopens).

No stored file runs code: tensor files are read by :func:`load_tensors` (torch's weights-only unpickler:
tensors, numbers, strings, lists, dicts), and what they hold is checked before use.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from pathlib import Path

import torch

from valleysim.errors import UserInputError
from valleysim.jsonout import atomic_write, dumps, read_json, read_jsonl, write_jsonl

__all__ = ["RunStore", "load_tensors", "read_checkpoint", "read_rows", "save_tensors"]


def load_tensors(path: str | Path, what: str, map_location="cpu"):
    """The tensors, numbers, strings, lists and dicts stored in ``path`` by ``torch.save``, read with torch's
    weights-only unpickler (nothing in the file runs); a file it cannot read is a UserInputError, one line
    naming ``what`` (e.g. the file itself, or the option that gave it)."""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the error below says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except (OSError, MemoryError):  # the machine, not the file: report_errors names them
        raise
    except Exception as err:  # any exception: torch.load parses untrusted bytes
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [""]
        why = type(err).__name__ + (f": {lines[0]}" if lines[0] else "")
        if lines[0].startswith("Weights only load failed"):  # torch's advice around the unpickler's reason
            reason = [line for line in lines[1:] if not line.startswith("Check the documentation")] or [""]
            why = reason[-1].split("WeightsUnpickler error:")[-1].strip()
            found = re.search(r"GLOBAL (\S+)", why)
            if found:
                raise UserInputError(
                    f"{what} refused: it holds Python objects, not only tensors ({found.group(1)}); loading it "
                    "could run code"
                ) from None
        raise UserInputError(f"{what} cannot be read as a torch file ({why[:200]})") from None


@contextlib.contextmanager
def _writing(path: Path):
    """A failed write inside (a full disk) is an OSError naming ``path``, also where torch wraps it in a
    RuntimeError ("PytorchStreamWriter failed writing file")."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        cause = err if isinstance(err, OSError) else err.__context__
        if isinstance(cause, OSError) and cause.errno is not None:
            raise OSError(cause.errno, cause.strerror, str(path)) from None
        raise


def save_tensors(obj, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` atomically: a temporary file, fsynced, renamed over ``path``. A failed
    write (a full disk) is an OSError naming ``path``; the temporary file is removed, the old ``path`` kept."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    with _writing(path):
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, path)


def read_checkpoint(path: str | Path, map_location="cpu", check=None) -> dict:
    """The checkpoint ``path`` as stored (``{"state": ..., "n_rows": ...}``), read by :func:`load_tensors`.
    ``check(state)``: what in the state does not fit the run (a phrase), or None. A file that cannot be read
    or does not fit is a UserInputError naming it."""
    again = "move the run directory away and rerun"
    try:
        ck = load_tensors(path, str(path), map_location)
    except UserInputError as err:
        raise UserInputError(f"{err}; {again}") from None
    if not (isinstance(ck, dict) and isinstance(ck.get("state"), dict)):
        problem = "no dict under 'state'"
    elif type(ck.get("n_rows")) is not int or ck["n_rows"] < 0:
        problem = "no row count under 'n_rows'"
    else:
        problem = check(ck["state"]) if check is not None else None
    if problem:
        raise UserInputError(f"{path} is not a checkpoint of this run ({problem}); {again}")
    return ck


def read_rows(path: str | Path) -> list[dict]:
    """Complete rows of a metrics file (a torn last line is skipped); a damaged row is a UserInputError
    naming the file and the line (measurements cannot be recomputed without rerunning)."""
    records, damaged, _ = read_jsonl(path)
    damaged += [i for i, r in records if not isinstance(r, dict)]
    if damaged:
        raise UserInputError(
            f"{path}: line {', '.join(map(str, sorted(damaged)))} damaged (not a JSON row); the "
            "run cannot be resumed safely: move the directory away and rerun"
        )
    return [r for _, r in records]


class RunStore:
    """The files of one run in ``out``; ``config`` is a JSON-serialisable dict."""

    #: config keys that may change between a run and its resumption (where it runs, not what it computes)
    RESUMABLE_KEYS = ("device",)

    def __init__(self, out: str | Path, config: dict, defaults: dict | None = None, *, create: bool = True):
        """``defaults``: the value a key takes when a stored config lacks it (an option added after the run
        was started, whose default reproduces the old behaviour), so such a run still resumes.
        ``create`` False: open an existing run (its config.json) without writing anything."""
        self.dir = Path(out)
        if create and not self.dir.is_dir():
            self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "config.json"
        self.metrics_path = self.dir / "metrics.jsonl"
        self.checkpoint_path = self.dir / "checkpoint.pt"
        config = json.loads(dumps(config, sort_keys=True))
        if self.config_path.exists():
            old = read_json(self.config_path)
            base = json.loads(dumps(defaults or {}, sort_keys=True))
            diff = sorted(
                k
                for k in set(old) | set(config)
                if old.get(k, base.get(k)) != config.get(k, base.get(k)) and k not in self.RESUMABLE_KEYS
            )
            if diff:
                raise UserInputError(
                    f"{self.dir} holds a run with a different configuration (differs in: {', '.join(diff)}); "
                    "use a new --out directory or the same options to resume"
                )
        elif create:
            atomic_write(self.config_path, dumps(config, indent=1, sort_keys=True).encode())
        else:
            raise UserInputError(f"{self.dir} holds no run (no config.json)")
        self.config = config
        self.n_rows = len(read_rows(self.metrics_path))

    def append(self, row: dict) -> None:
        """Appends one row, flushed and fsynced (a failed write is an OSError naming the file)."""
        line = dumps(row) + "\n"
        with _writing(self.metrics_path), open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.n_rows += 1

    def rows(self) -> list[dict]:
        return read_rows(self.metrics_path)

    def save_checkpoint(self, state: dict) -> None:
        """Atomically stores ``state`` (tensors, numbers, strings, lists, dicts: what :func:`load_tensors`
        reads back) with the current row count."""
        save_tensors({"state": state, "n_rows": self.n_rows}, self.checkpoint_path)

    @classmethod
    def finished(cls, out, config: dict, defaults: dict | None = None, *, done, check=None, map_location="cpu"):
        """The store of a run in ``out`` that is complete (``done(state)`` of its checkpoint is true and the
        metrics hold exactly the checkpoint's rows), opened without writing anything; None when there is
        no such run (nothing there, or one still to resume). A different configuration is refused as by
        the constructor; ``check``: as for :func:`read_checkpoint`."""
        d = Path(out)
        if not ((d / "config.json").is_file() and (d / "checkpoint.pt").is_file()):
            return None
        store = cls(d, config, defaults, create=False)
        ck = store.read_checkpoint(map_location, check)
        if not done(ck["state"]):
            return None
        rows = read_rows(store.metrics_path)
        if len(rows) != ck["n_rows"] or not store._metrics_are(rows):
            return None
        store.n_rows = len(rows)
        return store

    def _metrics_are(self, rows: list[dict]) -> bool:
        """metrics.jsonl is exactly ``rows``, one line each (nothing to truncate or repair)."""
        want = "".join(dumps(r) + "\n" for r in rows).encode("utf-8")
        have = self.metrics_path.read_bytes() if self.metrics_path.exists() else b""
        return have == want

    def read_checkpoint(self, map_location="cpu", check=None) -> dict:
        """:func:`read_checkpoint` of this run's checkpoint.pt (read only)."""
        return read_checkpoint(self.checkpoint_path, map_location, check)

    def load_checkpoint(self, map_location="cpu", check=None) -> dict | None:
        """The last checkpoint's state (None if there is none), tensors on ``map_location``; truncates
        the metrics to its rows. ``check``: as for :func:`read_checkpoint`."""
        if not self.checkpoint_path.exists():
            if self.metrics_path.exists():
                self.metrics_path.unlink()  # rows without any checkpoint: start over
            self.n_rows = 0
            return None
        ck = self.read_checkpoint(map_location, check)
        rows = read_rows(self.metrics_path)[: ck["n_rows"]]
        if len(rows) < ck["n_rows"]:
            raise UserInputError(
                f"{self.metrics_path} has fewer rows ({len(rows)}) than its checkpoint "
                f"accounts for ({ck['n_rows']}): the run directory was modified"
            )
        if not self._metrics_are(rows):  # rows after the checkpoint, or a torn line: drop them
            write_jsonl(self.metrics_path, rows)
        self.n_rows = len(rows)
        return ck["state"]
