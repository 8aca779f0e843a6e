"""A run directory that survives interruption: config, metric rows, checkpoint.

    DIR/config.json      the run's configuration (a resumed run must match it)
    DIR/metrics.jsonl    one JSON object per probe (tidy: read with ``pandas.read_json(path, lines=True)``)
    DIR/checkpoint.pt    the training state and the number of metric rows it accounts for

Exactly-once rows: every row is appended, flushed and fsynced before the run moves on, and every
checkpoint records how many rows existed when it was taken. Resuming truncates ``metrics.jsonl``
to that count (dropping rows written after the checkpoint, which the resumed run will write again,
and a torn last line), so a killed run resumes with no lost and no duplicated rows. Checkpoints are
written to a temporary file, fsynced and renamed (atomic on POSIX).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from valleysim.errors import UserInputError

__all__ = ["RunStore", "read_rows"]


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def read_rows(path: str | Path) -> list[dict]:
    """Complete rows of a metrics file (a torn last line is skipped)."""
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    with open(p, encoding="utf-8") as f:
        for line in f:
            if line.endswith("\n"):
                rows.append(json.loads(line))
    return rows


class RunStore:
    """The files of one run in ``out``; ``config`` is a JSON-serialisable dict."""

    #: config keys that may change between a run and its resumption (where it runs, not what it computes)
    RESUMABLE_KEYS = ("device",)

    def __init__(self, out: str | Path, config: dict):
        self.dir = Path(out)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "config.json"
        self.metrics_path = self.dir / "metrics.jsonl"
        self.checkpoint_path = self.dir / "checkpoint.pt"
        config = json.loads(json.dumps(config, sort_keys=True))
        if self.config_path.exists():
            old = json.loads(self.config_path.read_text())
            diff = sorted(k for k in set(old) | set(config)
                          if old.get(k) != config.get(k) and k not in self.RESUMABLE_KEYS)
            if diff:
                raise UserInputError(
                    f"{self.dir} holds a run with a different configuration (differs in: {', '.join(diff)}); "
                    "use a new --out directory or the same options to resume")
        else:
            _atomic_write_bytes(self.config_path, json.dumps(config, indent=1, sort_keys=True).encode())
        self.config = config
        self.n_rows = len(read_rows(self.metrics_path))

    def append(self, row: dict) -> None:
        """Appends one row, flushed and fsynced."""
        line = json.dumps({k: _jsonable(v) for k, v in row.items()}, allow_nan=False) + "\n"
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self.n_rows += 1

    def rows(self) -> list[dict]:
        return read_rows(self.metrics_path)

    def save_checkpoint(self, state: dict) -> None:
        """Atomically stores ``state`` (anything ``torch.save`` takes) with the current row count."""
        tmp = self.checkpoint_path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            torch.save({"state": state, "n_rows": self.n_rows}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.checkpoint_path)

    def load_checkpoint(self, map_location="cpu") -> dict | None:
        """The last checkpoint's state (None if there is none), tensors on ``map_location``; truncates
        the metrics to its rows."""
        if not self.checkpoint_path.exists():
            if self.metrics_path.exists():
                self.metrics_path.unlink()     # rows without any checkpoint: start over
            self.n_rows = 0
            return None
        ck = torch.load(self.checkpoint_path, map_location=map_location, weights_only=False)
        rows = read_rows(self.metrics_path)[: ck["n_rows"]]
        if len(rows) < ck["n_rows"]:
            raise UserInputError(f"{self.metrics_path} has fewer rows ({len(rows)}) than its checkpoint "
                                 f"accounts for ({ck['n_rows']}): the run directory was modified")
        _atomic_write_bytes(self.metrics_path, "".join(json.dumps(r) + "\n" for r in rows).encode())
        self.n_rows = len(rows)
        return ck["state"]


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
