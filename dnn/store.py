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
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
from pathlib import Path

import torch

from valleysim.errors import UserInputError
from valleysim.jsonout import atomic_write, dumps, read_json, read_jsonl, write_jsonl

__all__ = ["RunStore", "read_rows", "save_tensors"]


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
        """Atomically stores ``state`` (anything ``torch.save`` takes) with the current row count."""
        save_tensors({"state": state, "n_rows": self.n_rows}, self.checkpoint_path)

    @classmethod
    def finished(cls, out, config: dict, defaults: dict | None = None, *, done, map_location="cpu"):
        """The store of a run in ``out`` that is complete (``done(state)`` of its checkpoint is true and the
        metrics hold exactly the checkpoint's rows), opened without writing anything; None when there is
        no such run (nothing there, or one still to resume). A different configuration is refused as by
        the constructor."""
        d = Path(out)
        if not ((d / "config.json").is_file() and (d / "checkpoint.pt").is_file()):
            return None
        store = cls(d, config, defaults, create=False)
        ck = store.read_checkpoint(map_location)
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

    def read_checkpoint(self, map_location="cpu") -> dict:
        """The checkpoint file as stored (``{"state": ..., "n_rows": ...}``), read only; an unreadable one is a
        UserInputError naming it."""
        try:
            return torch.load(self.checkpoint_path, map_location=map_location, weights_only=False)
        except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
            raise UserInputError(
                f"{self.checkpoint_path} cannot be read ({type(err).__name__}: {err}); move the "
                "run directory away and rerun"
            ) from None

    def load_checkpoint(self, map_location="cpu") -> dict | None:
        """The last checkpoint's state (None if there is none), tensors on ``map_location``; truncates
        the metrics to its rows."""
        if not self.checkpoint_path.exists():
            if self.metrics_path.exists():
                self.metrics_path.unlink()  # rows without any checkpoint: start over
            self.n_rows = 0
            return None
        ck = self.read_checkpoint(map_location)
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
