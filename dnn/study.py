"""Network studies with seeds: a grid of train runs, each point under several seeds, summarised per run
and across seeds with Student-t intervals, orderings tested seed by seed, every number in a tidy CSV.

A study is a list of :class:`Point` (a label, the grids it belongs to with its knob value there, and a
``TrainConfig`` whose seed is replaced per seed). :func:`run_study` trains every (point, seed) into
``out/runs/<label>_seed<k>`` (resumable: a finished run is read back, a killed one continues; each run
checks it is on the same data, :func:`dnn.config.stored_config`), calls
the study's ``summarise_run(rows, cfg) -> {quantity: float}`` on each, and aggregates:

* :func:`across_seeds`: per point and quantity, n, mean, SE and the 95% t interval over the seeds
  (seeds are independent runs; probes of one run are not, so they never count as samples here);
* :func:`orderings_across_seeds`: per grid, quantity and seed, Kendall's tau between the knob and the
  quantity, then the mean tau over seeds with its t interval and the fraction of seeds whose tau has
  the predicted sign.

A study directory holds one study: :func:`open_study` records the study, its preset and its data in
``out/study.json`` before anything else and refuses a directory that holds another.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from dnn.config import TrainConfig
from dnn.predictions import kendall_tau
from valleysim.errors import UserInputError
from valleysim.stats import t_interval


@dataclass(frozen=True, kw_only=True)
class SGDGrid:
    """SGD runs of one model on a learning-rate grid at ``batch_fixed`` and a batch-size grid at
    ``lr_fixed`` (the grids share the point (lr_fixed, batch_fixed)), probing lambda_H^1, K and the
    per-example curvature along e_H^1 on a schedule and when the running training accuracy first
    reaches ``max_acc``: the part the cross-check and the break-even study share."""

    name: str
    model: str = "simplecnn"
    width: float = 1.0
    n_train: int | None = None  # first n examples of the training set (None: all 50,000)
    lr_grid: tuple[float, ...] = (0.01, 0.05, 0.1)
    batch_fixed: int = 128
    batch_grid: tuple[int, ...] = (32, 128, 512)
    lr_fixed: float = 0.05
    epochs: int = 10
    max_steps: int | None = None
    probe_every: int = 100
    probe_epochs: bool = True
    max_acc: float = 0.6
    measure_size: int | None = None  # None: 5% of the training set
    top_k: int = 5
    lanczos_tol: float = 1e-3
    cov_batches: int = 25
    cov_batch: int = 128
    augment: bool = True
    seed: int = 0

    def grid(self) -> dict[tuple[float, int], dict]:
        """{(eta, S): knobs}, sorted: knob eta on the learning-rate grid, 1/S on the batch grid."""
        pts: dict = {}
        for lr in self.lr_grid:
            pts.setdefault((lr, self.batch_fixed), {})["learning_rate"] = lr
        for b in self.batch_grid:
            pts.setdefault((self.lr_fixed, b), {})["batch_size"] = 1.0 / b
        return dict(sorted(pts.items()))

    def train_config(self, **kw) -> TrainConfig:
        """The SGD run of this grid (probes lanczos, covariance, curvature) with ``kw`` overriding."""
        base = dict(
            model=self.model,
            width=self.width,
            n_train=self.n_train,
            epochs=self.epochs,
            max_steps=self.max_steps,
            probes=("lanczos", "covariance", "curvature"),
            probe_every=self.probe_every,
            probe_epochs=self.probe_epochs,
            probe_acc=(self.max_acc,),
            measure_size=self.measure_size,
            top_k=self.top_k,
            lanczos_tol=self.lanczos_tol,
            cov_batches=self.cov_batches,
            cov_batch=self.cov_batch,
            augment=self.augment,
            seed=self.seed,
        )
        return TrainConfig(**{**base, **kw})


@dataclass(frozen=True)
class Point:
    """One grid point: ``knobs`` maps each grid it belongs to onto its knob value there."""

    label: str
    cfg: TrainConfig
    knobs: dict = dataclasses.field(default_factory=dict)


def open_study(out, study: str, preset: str, images, labels, test=None) -> Path:
    """``out`` as the directory of one study, made if need be. Its study.json, written before anything else,
    names the study, the preset and the data (:func:`dnn.data.data_digest` of ``images``, ``labels``,
    ``test``); a directory that holds another study, another preset or other data is refused before anything
    is written. Results from before study.json are taken over with a warning."""
    from dnn.data import data_digest
    from valleysim.errors import warn
    from valleysim.jsonout import atomic_write, dumps, read_json

    out, now = Path(out), {"study": study, "preset": preset, "data": data_digest(images, labels, test)}
    path = out / "study.json"
    if path.is_file():
        was = read_json(path)
        if was.get("study") != study or was.get("preset") != preset:
            raise UserInputError(
                f"{out} holds the {was.get('study')} study with preset {was.get('preset')}, not the {study} "
                f"study with preset {preset}; use another --out"
            )
        if was.get("data") != now["data"]:
            raise UserInputError(
                f"{out} holds a {study} study of other data (sha256 {str(was.get('data'))[:12]}..., this --data "
                f"gives {now['data'][:12]}...); give the data it was run on or another --out"
            )
        return out
    if (out / "runs").is_dir() or (out / "summary.json").is_file():
        warn(f"{out} holds results from before study.json: taken as the {study} study, without a check")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (dumps(now, indent=1) + "\n").encode())
    return out


def run_dir(out: Path, label: str, seed: int) -> Path:
    return Path(out) / "runs" / f"{label}_seed{seed}"


def seeds_for(seeds: int | None, default: int) -> list[int]:
    """Seeds 0..K-1, K = ``seeds`` (the --seeds flag) or the preset's ``default``."""
    return list(range(seeds if seeds is not None else default))


def run_rows(out: Path, label: str, seed: int) -> list[dict]:
    """A finished run's metrics rows, less the row that records a divergence."""
    from dnn.store import read_rows

    return [r for r in read_rows(run_dir(out, label, seed) / "metrics.jsonl") if r.get("reason") != "diverged"]


def run_study(
    points: list[Point],
    seeds,
    out,
    images,
    labels,
    *,
    summarise_run: Callable[[list[dict], TrainConfig], dict],
    test=None,
    progress: bool = True,
    executor=None,
    source=None,
) -> list[dict]:
    """Train (or read back) every (point, seed); returns one row per run: label, seed, the summary.

    ``executor`` and ``source``: as for :func:`train_runs`. The rows are read in (point, seed) order,
    whatever the order of completion."""
    seeds = [int(s) for s in seeds]
    if not points or not seeds:
        raise UserInputError("a study needs at least one grid point and one seed")
    runs = [(p, dataclasses.replace(p.cfg, seed=s)) for p in points for s in seeds]
    all_rows = train_runs(
        [(cfg, run_dir(out, p.label, cfg.seed)) for p, cfg in runs],
        images,
        labels,
        test=test,
        progress=progress,
        executor=executor,
        source=source,
    )
    return [{"label": p.label, "seed": cfg.seed, **summarise_run(rows, cfg)} for (p, cfg), rows in zip(runs, all_rows)]


def train_runs(
    runs, images, labels, *, test=None, progress: bool = True, executor=None, source=None
) -> list[list[dict]]:
    """Trains (or resumes, or reads back) every ``(cfg, run_dir)`` of ``runs``; their metrics rows in
    the order of ``runs``.

    ``executor`` None: one after another in this process. Otherwise (a ``concurrent.futures.Executor``,
    :mod:`valleysim.executors`) each run is one task (:func:`train_task`) whose results stay in its run
    directory, so a retried or resubmitted task resumes from the checkpoint and a finished run is only
    read back. ``source`` (a :class:`dnn.data.DataSource`): the workers load the data from it
    (``images``/``labels`` must be what it loads, ``test`` its test split or None); without it every task
    carries its slice of the arrays."""
    from dnn.store import read_rows
    from dnn.train import train
    from valleysim.runner import LostWorker, is_lost_worker

    if executor is None:
        return [train(cfg, d, images, labels, test=test, progress=progress).rows() for cfg, d in runs]
    from concurrent.futures import as_completed

    from tqdm import tqdm

    futures = []
    for cfg, d in runs:
        if source is not None:
            data = (source, test is not None)
        else:
            n = len(images) if cfg.n_train is None else cfg.n_train
            k = None if test is None else (len(test[0]) if cfg.test_size is None else cfg.test_size)
            data = (images[:n], labels[:n], None if test is None else (test[0][:k], test[1][:k]))
        futures.append(executor.submit(train_task, cfg, str(d), data))
    where = {fut: Path(d) for fut, (_, d) in zip(futures, runs)}
    lost, why = [], None
    with tqdm(total=len(futures), desc="study runs", disable=not progress) as bar:
        for fut in as_completed(futures):
            try:
                fut.result()  # a failed run raises here, the others keep their directories
            except Exception as exc:
                if not is_lost_worker(exc):
                    raise
                lost.append(where[fut].name)  # the machine's fault: the other runs go on
                why = why or (str(exc) if isinstance(exc, LostWorker) and str(exc) else None)
            bar.update()
    if lost:
        shown = ", ".join(lost[:3]) + (", ..." if len(lost) > 3 else "")
        why = why or "their worker processes died (killed, or out of memory) on every try"
        raise LostWorker(
            f"{len(lost)} run(s) lost ({shown}): {why}; the other runs are kept and each lost one resumes from "
            "its checkpoint: rerun the command"
        )
    return [read_rows(Path(d) / "metrics.jsonl") for _, d in runs]


def train_task(cfg: TrainConfig, out: str, data) -> int:
    """One run in a worker (torch single-threaded there, one GPU per worker for ``--device cuda``:
    :func:`valleysim.executors.pinned_device`): trains or resumes ``out``; returns its number of rows.
    ``data``: ``(images, labels, test or None)``, or ``(DataSource, with_test)`` read in the worker."""
    import torch

    from dnn.data import DataSource
    from dnn.train import train
    from valleysim.executors import pinned_device, worker_slot

    torch.set_num_threads(1)
    if isinstance(data[0], DataSource):
        images, labels = data[0].load("train")
        test = data[0].load("test") if data[1] else None
    else:
        images, labels, test = data
    n_gpus = torch.cuda.device_count() if cfg.device == "cuda" else 0
    cfg = dataclasses.replace(cfg, device=pinned_device(cfg.device, n_gpus, worker_slot()))
    return len(train(cfg, out, images, labels, test=test, progress=False).rows())


def _numeric(v) -> bool:
    return isinstance(v, (int, float, np.floating)) and not isinstance(v, bool)


def across_seeds(per_run: list[dict], level: float = 0.95) -> list[dict]:
    """Tidy rows {label, quantity, n, mean, se, lo, hi} over the seeds of each label, one per numeric
    quantity of the run summaries (``t_interval``: non-finite values are left out and counted in n)."""
    out = []
    labels = list(dict.fromkeys(r["label"] for r in per_run))
    for label in labels:
        runs = [r for r in per_run if r["label"] == label]
        keys = [k for k in runs[0] if k not in ("label", "seed") and _numeric(runs[0][k])]
        for k in keys:
            vals = [float(r[k]) if _numeric(r.get(k)) else math.nan for r in runs]
            out.append({"label": label, "quantity": k, **t_interval(vals, level)})
    return out


def orderings_across_seeds(per_run: list[dict], points: list[Point], signs: dict) -> list[dict]:
    """Per grid (the keys of the points' ``knobs``) and quantity (``signs``: predicted sign of tau, one
    {quantity: sign} for every grid or {grid: {quantity: sign}}):
    Kendall tau between knob and quantity for each seed, then mean tau +- t interval over seeds and the
    fraction of seeds that agree (tau x sign > 0). Seeds with a constant or incomplete grid give NaN."""
    grids = list(dict.fromkeys(g for p in points for g in p.knobs))
    seeds = sorted({r["seed"] for r in per_run})
    by = {(r["label"], r["seed"]): r for r in per_run}
    out = []
    for g in grids:
        members = [p for p in points if g in p.knobs]
        knob = np.array([p.knobs[g] for p in members], dtype=float)
        grid_signs = signs.get(g, {}) if any(isinstance(v, dict) for v in signs.values()) else signs
        for q, sign in grid_signs.items():
            taus = []
            for s in seeds:
                y = np.array([float(by[(p.label, s)].get(q, math.nan)) for p in members])
                ok = np.isfinite(y)
                taus.append(kendall_tau(knob[ok], y[ok])[0] if ok.sum() >= 2 else math.nan)
            finite = [t for t in taus if math.isfinite(t)]
            ci = t_interval(taus)
            out.append(
                {
                    "grid": g,
                    "quantity": q,
                    "predicted_sign": sign,
                    "taus": taus,
                    "mean_tau": ci["mean"],
                    "tau_se": ci["se"],
                    "tau_lo": ci["lo"],
                    "tau_hi": ci["hi"],
                    "n_seeds": len(finite),
                    "agree_fraction": float(np.mean([t * sign > 0 for t in finite])) if finite else math.nan,
                }
            )
    return out


def write_csv(rows: list[dict], path) -> None:
    """Tidy CSV: one column per key seen in any row (lists joined by ';'), rows in order."""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: ";".join(map(str, v)) if isinstance(v, (list, tuple)) else v for k, v in r.items()})


def finish(
    out: Path,
    name: str,
    seeds: list[int],
    per_run: list[dict],
    points: list[Point],
    signs: dict[str, int],
    report: Callable[[dict], str],
    figure: Callable[[dict, Path], None],
    figure_name: str,
) -> dict:
    """Aggregates a study's runs (:func:`across_seeds`, :func:`orderings_across_seeds` with ``signs``) and
    writes per_run.csv, across_seeds.csv, orderings.csv, summary.json, report.md (``report(summary)``) and
    ``figure_name`` (``figure(summary, path)``); returns the summary."""
    from valleysim.jsonout import atomic_write, dumps

    out = Path(out)
    agg = across_seeds(per_run)
    orders = orderings_across_seeds(per_run, points, signs)
    write_csv(per_run, out / "per_run.csv")
    write_csv(agg, out / "across_seeds.csv")
    write_csv(orders, out / "orderings.csv")
    summary = {"preset": name, "seeds": seeds, "per_run": per_run, "across_seeds": agg, "orderings": orders}
    atomic_write(out / "summary.json", (dumps(summary, indent=2) + "\n").encode())
    atomic_write(out / "report.md", report(summary).encode())
    figure(summary, out / figure_name)
    return summary


def cell(r: dict | None, fmt: str = ".4g") -> str:
    """A table cell 'mean [lo, hi]' from an across_seeds row ('-' when absent or not finite)."""
    if r is None or not math.isfinite(r["mean"]):
        return "-"
    ci = f" [{r['lo']:.3g}, {r['hi']:.3g}]" if math.isfinite(r["lo"]) else ""
    return f"{r['mean']:{fmt}}" + ci


def orderings_table(orderings: list[dict]) -> list[str]:
    """Markdown lines: per grid and quantity, the taus per seed, mean tau [95% t] and the seeds agreeing."""
    lines = ["| grid | quantity | predicted sign | taus per seed | mean tau [95% t] | seeds agreeing |"]
    lines.append("|---|---|---|---|---|---|")
    for o in orderings:
        taus = ", ".join("nan" if not math.isfinite(t) else f"{t:+.2f}" for t in o["taus"])
        ci = f"{o['mean_tau']:+.2f}" + (
            f" [{o['tau_lo']:+.2f}, {o['tau_hi']:+.2f}]" if math.isfinite(o["tau_lo"]) else ""
        )
        agree = "-" if not math.isfinite(o["agree_fraction"]) else f"{o['agree_fraction']:.0%}"
        lines.append(f"| {o['grid']} | {o['quantity']} | {o['predicted_sign']:+d} | {taus} | {ci} | {agree} |")
    return lines
