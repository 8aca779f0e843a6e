"""The break-even study (break-even-point.txt Sec. 4, Figs. 2-3): SimpleCNN SGD on a learning-rate grid at
fixed S and a batch-size grid at fixed eta, every point under several seeds (:mod:`dnn.study`).

Per run, over the probes up to the first with running training accuracy >= ``max_acc`` (the paper's
window; the whole run when it is not reached, flagged by ``reached_max_acc``): the maxima of
lambda_H^1, lambda_K^1 and Tr K / lambda_K^1 (:func:`dnn.predictions.run_maxima`), lambda_K^1 and
Tr K also in the paper's K_hat units (``*_gram``: L c(M, N) x ours, ERRATA 14), the measured
alpha = lambda_K / lambda_H over the early phase (median) and the break-even curvature it predicts,
lambda* = 2/eta - alpha c(S, N) (R2), the final test accuracy. Across seeds: mean, SE, 95% t interval;
Conjectures 1-2 as Kendall tau per seed (:func:`dnn.study.orderings_across_seeds`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnn import predictions as P
from dnn.config import TrainConfig
from dnn.study import Point, SGDGrid, cell, finish, orderings_table, run_study, seeds_for

SIGNS = dict(P.CONJECTURE_SIGNS)  # Conj. 1: max lambda_H, lambda_K fall with the noise; Conj. 2: Tr K / lambda_K rises


@dataclass(frozen=True, kw_only=True)
class Preset(SGDGrid):
    """The SGD grids (:class:`dnn.study.SGDGrid`), each point under ``seeds`` seeds, the first
    ``test_size`` test images scored in every row."""

    seeds: int = 2
    test_size: int | None = None


PRESETS = {
    # 2-core CPU (~3 min a run): 5,000 training images, 256 measurement images, top-1 Lanczos at
    # tolerance 1e-2, <= 300 steps per run, probes every 30 steps (none at epoch ends), 2 seeds;
    # 7 grid points x 2 seeds = 14 runs.
    "quick": Preset(
        name="quick",
        lr_grid=(0.01, 0.02, 0.05, 0.1),
        batch_grid=(32, 64, 128, 256),
        lr_fixed=0.05,
        seeds=2,
        n_train=5000,
        epochs=8,
        max_steps=300,
        probe_every=30,
        probe_epochs=False,
        measure_size=256,
        top_k=1,
        lanczos_tol=1e-2,
        test_size=2000,
    ),
    # tiny: the end-to-end test on synthetic 8x8 images (seconds)
    "smoke": Preset(
        name="smoke",
        lr_grid=(0.02, 0.05),
        batch_grid=(4, 8),
        lr_fixed=0.05,
        batch_fixed=8,
        seeds=2,
        width=0.125,
        epochs=1,
        max_steps=4,
        probe_every=2,
        measure_size=16,
        top_k=1,
        lanczos_tol=1e-3,
        cov_batches=3,
        cov_batch=4,
    ),
    # the full training set, a 5% measurement set, 3 seeds, 10 epochs (meant for a GPU). The grid is ours:
    # the paper's per-figure grids (App. C) are not transcribed yet.
    "paper": Preset(
        name="paper",
        lr_grid=(0.01, 0.025, 0.05, 0.1),
        batch_grid=(32, 64, 128, 256),
        lr_fixed=0.05,
        seeds=3,
        epochs=10,
        probe_every=100,
    ),
}


def label(eta: float, S: int) -> str:
    """The name of the grid point (eta, S): its run directories are ``runs/<label>_seed<k>``."""
    return f"lr{eta:g}_S{S}"


def points(p: Preset, device: str = "cpu") -> list[Point]:
    """The grid points (eta, S) of ``p`` with their knobs (:meth:`dnn.study.SGDGrid.grid`)."""
    return [
        Point(label(lr, b), p.train_config(lr=lr, batch=b, test_size=p.test_size, device=device), knobs)
        for (lr, b), knobs in p.grid().items()
    ]


def summarise_run(rows: list[dict], cfg: TrainConfig, max_acc: float, n_train: int) -> dict:
    """The per-run numbers of the module docstring (NaN where a quantity is undefined)."""
    probes = [r for r in rows if r.get("reason") != "diverged"]
    m = P.run_maxima(probes, max_acc=max_acc)
    a = P.alpha_ratio(probes, cfg.lr, cfg.batch, n_train, max_acc=max_acc)
    lam_star = (
        P.predicted_break_even_curvature(cfg.lr, cfg.batch, n_train, a["alpha"])
        if math.isfinite(a["alpha"])
        else math.nan
    )
    return {
        "eta": cfg.lr,
        "S": cfg.batch,
        "steps": probes[-1]["step"] if probes else 0,
        "diverged": float(any(r.get("reason") == "diverged" for r in rows)),
        "reached_max_acc": float(m["reached_max_acc"]),
        **{k: v for k, v in m.items() if k.startswith("max_")},
        "alpha": a["alpha"],
        "lambda_star": lam_star,
        "max_over_lambda_star": m["max_lambda_max"] / lam_star if lam_star > 0 else math.nan,
        "final_test_acc": probes[-1].get("test_acc", math.nan) if probes else math.nan,
    }


def run(
    preset: Preset,
    out,
    images,
    labels,
    *,
    test=None,
    seeds: int | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Train the study into ``out``, write per_run.csv, across_seeds.csv, orderings.csv, summary.json and
    report.md; returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pts = points(preset, device)
    n_train = len(images) if preset.n_train is None else preset.n_train
    seed_list = seeds_for(seeds, preset.seeds)
    per_run = run_study(
        pts,
        seed_list,
        out,
        images,
        labels,
        summarise_run=lambda rows, cfg: summarise_run(rows, cfg, preset.max_acc, n_train),
        test=test,
        progress=progress,
    )
    return finish(
        out,
        preset.name,
        seed_list,
        per_run,
        pts,
        SIGNS,
        lambda s: report(preset, s),
        lambda s, path: figure(preset, s, path),
        "break_even_study.png",
    )


def figure(preset: Preset, s: dict, path: Path) -> None:
    """Per grid: the mean over seeds (95% t interval as error bars) of max lambda_H^1 and of the lambda*
    predicted from the run's alpha against the knob, with 2/eta; and max lambda_K^1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {(r["label"], r["quantity"]): r for r in s["across_seeds"]}
    fig, axes = plt.subplots(2, 2, figsize=(9.5, 6.4), constrained_layout=True)
    grids = (("learning_rate", "eta (S = %d)" % preset.batch_fixed), ("batch_size", "S (eta = %g)" % preset.lr_fixed))
    for col, (grid, xlabel) in enumerate(grids):
        pts = [(lr, b) for (lr, b), knobs in preset.grid().items() if grid in knobs]
        x = np.array([lr if grid == "learning_rate" else b for lr, b in pts], dtype=float)
        for row, quantities in enumerate((("max_lambda_max", "lambda_star"), ("max_lambda_K", "max_lambda_K_gram"))):
            ax = axes[row, col]
            for q in quantities:
                r = [by.get((label(lr, b), q)) for lr, b in pts]
                m = np.array([v["mean"] if v else np.nan for v in r])
                err = np.array([[v["mean"] - v["lo"], v["hi"] - v["mean"]] if v else [np.nan, np.nan] for v in r]).T
                ax.errorbar(x, m, yerr=np.nan_to_num(err), fmt="o-", capsize=3, label=q)
            if row == 0:
                ax.plot(x, [2 / lr for lr, _ in pts], "k--", lw=1, label="2/eta")
            ax.set(xscale="log", yscale="log", xlabel=xlabel)
            ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("curvature (mean over seeds, 95% t)")
    axes[1, 0].set_ylabel("lambda_K^1 (ours; Gram: the paper's units)")
    fig.suptitle(f"break-even study ({preset.name}, {len(s['seeds'])} seeds)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(preset: Preset, s: dict) -> str:
    """Markdown: the per-point means +- 95% t intervals across seeds, and the orderings seed by seed."""
    keys = (
        "max_lambda_max",
        "lambda_star",
        "max_lambda_K",
        "max_lambda_K_gram",
        "max_trace_ratio",
        "alpha",
        "final_test_acc",
        "reached_max_acc",
    )
    by = {(r["label"], r["quantity"]): r for r in s["across_seeds"]}
    labels = list(dict.fromkeys(r["label"] for r in s["across_seeds"]))
    lines = [
        f"# Break-even study, preset `{preset.name}` ({len(s['seeds'])} seeds per point)\n",
        "Mean over seeds [95% t interval]; maxima over the probes before running training accuracy "
        f"{preset.max_acc:g} (the whole run where it was not reached: `reached_max_acc` < 1).\n",
        "| point | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for lab in labels:
        lines.append(f"| {lab} | " + " | ".join(cell(by.get((lab, k))) for k in keys) + " |")
    lines += [
        "",
        "Orderings (Kendall tau per seed; predicted sign: -1 for the maxima of lambda_H, lambda_K against "
        "the noise knob eta or 1/S, +1 for Tr K / lambda_K):",
        "",
        *orderings_table(s["orderings"]),
    ]
    return "\n".join(lines) + "\n"
