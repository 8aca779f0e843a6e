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

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dnn import predictions as P
from dnn.config import TrainConfig
from dnn.store import read_rows
from dnn.study import Point, SGDGrid, cell, finish, open_study, orderings_table, run_dir, run_study, seeds_for
from valleysim.errors import UserInputError
from valleysim.jsonout import read_json

SIGNS = dict(P.CONJECTURE_SIGNS)  # Conj. 1: max lambda_H, lambda_K fall with the noise; Conj. 2: Tr K / lambda_K rises


@dataclass(frozen=True, kw_only=True)
class Preset(SGDGrid):
    """The SGD grids (:class:`dnn.study.SGDGrid`), each point under ``seeds`` seeds, the first
    ``test_size`` test images scored in every row."""

    seeds: int = 2
    test_size: int | None = None
    bn_lr_grid: tuple[float, ...] = ()  # SimpleCNN-BN at S = batch_fixed (Sec. 4.3, Fig. 5)
    bn_probe_every: int | None = None  # the BN runs' probe interval (None: probe_every)
    bn_max_steps: int | None = None  # the BN runs' length (None: max_steps)
    edge_sizes: tuple[int, ...] = ()  # measurement sizes of the batch-size-effect analysis (dnn.edge)
    edge_batches: tuple[int, ...] = ()  # the batch-grid runs it analyses (empty: all)
    edge_k: int = 5  # its subspace: the top-k Hessian eigenvectors
    edge_tol: float = 1e-3  # its Lanczos tolerance
    loss_change_batches: int = 2  # mini-batch gradients of the step probe (alpha*: the first one)

    def train_config(self, **kw) -> TrainConfig:
        """:meth:`dnn.study.SGDGrid.train_config` with the step probe (alpha*, Fig. 2) added."""
        probes = ("lanczos", "covariance", "step", "curvature")
        return super().train_config(**{"probes": probes, "loss_change_batches": self.loss_change_batches, **kw})


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
        bn_lr_grid=(0.001, 0.01, 0.1, 1.0),
        bn_probe_every=50,
        bn_max_steps=150,
        edge_sizes=(256, 512),
        edge_batches=(32, 128),
        edge_tol=1e-2,
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
        bn_lr_grid=(0.01, 0.1),
        edge_sizes=(16, 24),
        edge_k=2,
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
        bn_lr_grid=(0.001, 0.01, 0.1, 1.0),
        edge_sizes=(2500, 10000),
    ),
}


def label(eta: float, S: int, model: str = "simplecnn") -> str:
    """The name of the grid point (eta, S): its run directories are ``runs/<label>_seed<k>``
    (``bn_`` in front for SimpleCNN-BN)."""
    return ("bn_" if model.endswith("-bn") else "") + f"lr{eta:g}_S{S}"


def points(p: Preset, device: str = "cpu") -> list[Point]:
    """The grid points (eta, S) of ``p`` with their knobs (:meth:`dnn.study.SGDGrid.grid`), then the
    SimpleCNN-BN points of ``bn_lr_grid`` (knob ``bn_learning_rate``)."""
    sgd = [
        Point(label(lr, b), p.train_config(lr=lr, batch=b, test_size=p.test_size, device=device), knobs)
        for (lr, b), knobs in p.grid().items()
    ]
    bn_model = p.model + "-bn"
    return sgd + [
        Point(
            label(lr, p.batch_fixed, bn_model),
            p.train_config(
                model=bn_model,
                lr=lr,
                batch=p.batch_fixed,
                test_size=p.test_size,
                device=device,
                probe_every=p.bn_probe_every or p.probe_every,
                max_steps=p.bn_max_steps or p.max_steps,
            ),
            {"bn_learning_rate": lr},
        )
        for lr in p.bn_lr_grid
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
        **_window_extremes(probes, max_acc),
    }


def _window_extremes(probes: list[dict], max_acc: float) -> dict:
    """Over the probes of the paper's window (:func:`dnn.predictions.accuracy_window`): max and min of
    ||g|| / ||g_5||; for a BatchNorm model ||gamma|| of the last BN layer at the start, its minimum and
    its value at the window's end (Fig. 5 bottom: high eta first shrinks ||gamma||); alpha* (Fig. 2: it
    falls to ~2 at the break-even point): its minimum, its median over the window's second half and
    Kendall's tau between alpha* and lambda_K^1 over the window's probes (Fig. 2: anti-correlated; probes
    of one run are correlated, so the tau describes the run, it is not a test); R1's factor q along
    e_H^1 (the curvature probe): its median over the second half and its maximum."""
    window, _ = P.accuracy_window(probes, max_acc)
    out = {}
    half = len(window) // 2
    a_star = _alpha_star(window)
    if np.isfinite(a_star).any():
        lam_k = P.column(window, "lambda_K", strict=False)
        ok = np.isfinite(a_star) & np.isfinite(lam_k)
        out.update(
            min_alpha_star=float(np.nanmin(a_star)),
            alpha_star_late=float(np.nanmedian(a_star[half:])),
            tau_alpha_star_lambda_K=P.kendall_tau(a_star[ok], lam_k[ok])[0] if ok.sum() >= 2 else math.nan,
        )
    q = P.column(window, "stability_factor", strict=False)
    if np.isfinite(q).any():
        out.update(
            r1_factor_late=float(np.nanmedian(q[half:])),
            max_r1_factor=float(np.nanmax(q)),
        )
    ratio = P.column(window, "grad_norm_ratio_top5", strict=False)
    if np.isfinite(ratio).any():
        out.update(max_grad_norm_ratio=float(np.nanmax(ratio)), min_grad_norm_ratio=float(np.nanmin(ratio)))
    gamma = P.column(window, "bn_scale_norm", strict=False)
    if np.isfinite(gamma).any():
        out.update(bn_scale_norm_start=float(gamma[0]), bn_scale_norm_min=float(np.nanmin(gamma)))
        out["bn_scale_norm_end"] = float(gamma[np.isfinite(gamma)][-1])
    return out


def _alpha_star(rows: list[dict]) -> np.ndarray:
    """alpha* per row: inf where the loss never rose 20% (stored as null with alpha_star_reached false),
    NaN where the step probe did not run."""
    a = P.column(rows, "alpha_star", strict=False)
    unreached = np.array([r.get("alpha_star_reached") is False and r.get("alpha_star") is None for r in rows])
    return np.where(unreached, np.inf, a)


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
    executor=None,
    source=None,
) -> dict:
    """Train the study into ``out``, write per_run.csv, across_seeds.csv, orderings.csv, summary.json and
    report.md; returns the summary."""
    out = open_study(out, "break-even", preset.name, images, labels, test)
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
        executor=executor,
        source=source,
    )
    edge = batch_size_effect(preset, out, pts, seed_list, images, labels, progress=progress)
    if preset.bn_lr_grid:
        bn_figure(preset, out, seed_list, out / "bn_study.png")
    return finish(
        out,
        preset.name,
        seed_list,
        per_run,
        pts,
        SIGNS,
        lambda s: report(preset, s, edge),
        lambda s, path: figure(preset, s, path),
        "break_even_study.png",
    )


EDGE_QUANTITIES = ("lambda_1", "curvature_var", "rho_ms", "eta_over_eta_star", "gamma_as", "half_log_rho_ms")


def batch_size_effect(preset: Preset, out: Path, pts: list[Point], seeds, images, labels, progress=True) -> dict:
    """Where each run of the batch grid ends against the linear-stability edges (:mod:`dnn.edge`): at its
    final weights, per measurement size in ``preset.edge_sizes`` and for e_H^1 alone (k = 1) and the top
    ``edge_k`` subspace, R1's mean-square factor rho_ms, eta / eta*_ms, the almost-sure exponent gamma_as.
    Cached per run in ``out/edge/<label>_seed<k>.json`` with its key (edge_sizes, edge_k, edge_tol and the
    run's config.json): a cache made with another key is recomputed. Writes edge.csv (per run) and
    edge_across_seeds.csv; returns {"per_run": [...], "across_seeds": [...]} (empty without edge_sizes)."""
    import hashlib

    from dnn.edge import analyse_checkpoint
    from dnn.study import write_csv
    from dnn.train import read_run_checkpoint
    from valleysim.jsonout import atomic_write, dumps
    from valleysim.stats import t_interval

    if not preset.edge_sizes:
        return {"per_run": [], "across_seeds": []}
    (out / "edge").mkdir(exist_ok=True)
    members = [
        p for p in pts if "batch_size" in p.knobs and (not preset.edge_batches or p.cfg.batch in preset.edge_batches)
    ]
    per_run = []
    for p in tqdm(members, desc="edge analysis", disable=not progress):
        for seed in seeds:
            path = out / "edge" / f"{p.label}_seed{seed}.json"
            rd = run_dir(out, p.label, seed)
            key = {
                "edge_sizes": list(preset.edge_sizes),
                "edge_k": preset.edge_k,
                "edge_tol": preset.edge_tol,
                "run_config_sha256": hashlib.sha256((rd / "config.json").read_bytes()).hexdigest(),
            }
            cached = _read_edge_cache(path, key)
            if cached is not None:
                per_run += cached
                continue
            run = read_rows(rd / "metrics.jsonl")
            if any(r.get("diverged") is not None for r in run):
                rows = []  # a diverged run has no final point to analyse
            else:
                cfg = dataclasses.replace(p.cfg, seed=seed)
                state = read_run_checkpoint(rd, cfg.device)["state"]["model"]
                found = analyse_checkpoint(
                    cfg,
                    state,
                    images,
                    labels,
                    sizes=preset.edge_sizes,
                    top_k=preset.edge_k,
                    tol=preset.edge_tol,
                    seed=seed,
                )
                step = run[-1]["step"]
                rows = [
                    {"label": p.label, "seed": seed, "S": cfg.batch, "eta": cfg.lr, "step": step, **r} for r in found
                ]
            atomic_write(path, (dumps({"key": key, "rows": rows}) + "\n").encode())
            per_run += rows
    groups = dict.fromkeys((r["label"], r["measure_size"], r["k"]) for r in per_run)
    agg = []
    for lab, m, k in groups:
        rs = [r for r in per_run if (r["label"], r["measure_size"], r["k"]) == (lab, m, k)]
        for q in EDGE_QUANTITIES:
            agg.append(
                {
                    "label": lab,
                    "S": rs[0]["S"],
                    "measure_size": m,
                    "k": k,
                    "quantity": q,
                    **t_interval([r[q] for r in rs]),
                }
            )
    write_csv(per_run, out / "edge.csv")
    write_csv(agg, out / "edge_across_seeds.csv")
    return {"per_run": per_run, "across_seeds": agg}


def _read_edge_cache(path: Path, key: dict) -> list[dict] | None:
    """The rows of an edge cache file made with ``key``; None where there is none, or it is damaged, from
    before the key or made with another (then it is recomputed)."""
    try:
        cached = read_json(path)
    except (OSError, UserInputError):
        return None
    return cached["rows"] if isinstance(cached, dict) and cached.get("key") == key else None


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


def bn_figure(preset: Preset, out: Path, seeds, path: Path) -> None:
    """Fig. 5 (bottom) of the paper: lambda_K^1 and ||gamma|| of the last BN layer against the step for
    each eta of the SimpleCNN-BN grid, every seed (one colour per eta)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dnn.study import run_rows

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), constrained_layout=True)
    keys = (
        ("lambda_K", "lambda_K^1 (ours)"),
        ("bn_scale_norm", "||gamma||, last BN layer"),
        ("trace_ratio", "Tr K / lambda_K^1"),
    )
    for j, lr in enumerate(preset.bn_lr_grid):
        for seed in seeds:
            rows = run_rows(out, label(lr, preset.batch_fixed, "-bn"), seed)
            step = P.column(rows, "step")
            for ax, (k, _) in zip(axes, keys):
                ax.plot(
                    step,
                    P.column(rows, k, strict=False),
                    color=f"C{j}",
                    lw=1,
                    label=f"eta {lr:g}" if seed == seeds[0] else None,
                )
    for ax, (k, name) in zip(axes, keys):
        ax.set(xlabel="step", ylabel=name, yscale="log" if k == "lambda_K" else "linear")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"SimpleCNN-BN at S = {preset.batch_fixed} ({preset.name}, {len(seeds)} seeds)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(preset: Preset, s: dict, edge: dict | None = None) -> str:
    """Markdown: the per-point means +- 95% t intervals across seeds, the orderings seed by seed, the
    SimpleCNN-BN grid (||gamma||, ||g|| / ||g_5||) and the batch-size-effect analysis."""
    keys = (
        "max_lambda_max",
        "lambda_star",
        "max_lambda_K",
        "max_lambda_K_gram",
        "max_trace_ratio",
        "alpha",
        "min_alpha_star",
        "alpha_star_late",
        "tau_alpha_star_lambda_K",
        "r1_factor_late",
        "final_test_acc",
        "reached_max_acc",
    )
    by = {(r["label"], r["quantity"]): r for r in s["across_seeds"]}
    labels = list(dict.fromkeys(r["label"] for r in s["across_seeds"]))
    lines = [
        f"# Break-even study, preset `{preset.name}` ({len(s['seeds'])} seeds per point)\n",
        "Mean over seeds [95% t interval]; maxima over the probes before running training accuracy "
        f"{preset.max_acc:g} (the whole run where it was not reached: `reached_max_acc` < 1). "
        "Points named `bn_...` are SimpleCNN-BN. alpha = lambda_K / lambda_H (R2); alpha*: the step multiple "
        "that raises the loss 20% (Fig. 2), its minimum, its median over the window's second half, and its "
        "Kendall tau against lambda_K^1 along the run (descriptive: probes of one run are correlated); "
        "r1_factor_late: R1's q along e_H^1, median over the second half.\n",
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
    gkeys = (
        "bn_scale_norm_start",
        "bn_scale_norm_min",
        "bn_scale_norm_end",
        "max_grad_norm_ratio",
        "min_grad_norm_ratio",
        "max_lambda_K",
        "max_trace_ratio",
    )
    rows = [lab for lab in labels if lab.startswith("bn_")]
    if rows:
        lines += [
            "",
            "## SimpleCNN-BN (Sec. 4.3, Fig. 5)",
            "",
            "||gamma|| of the last BN layer at the first probe, its minimum and its value at the window's end; "
            "||g|| / ||g_5|| (g_5: the batch gradient on K's top 5) over the window. The paper compares "
            f"SimpleCNN-BN at eta = 0.001 with SimpleCNN at eta = 0.01: the row {label(0.01, preset.batch_fixed)}.",
            "",
            "| point | " + " | ".join(gkeys) + " |",
            "|---" * (len(gkeys) + 1) + "|",
        ]
        for lab in rows + [label(0.01, preset.batch_fixed)]:
            if (lab, "max_lambda_K") in by:
                lines.append(f"| {lab} | " + " | ".join(cell(by.get((lab, k))) for k in gkeys) + " |")
    if edge and edge["across_seeds"]:
        eby = {(r["label"], r["measure_size"], r["k"], r["quantity"]): r for r in edge["across_seeds"]}
        groups = list(dict.fromkeys((r["label"], r["measure_size"], r["k"]) for r in edge["across_seeds"]))
        lines += [
            "",
            "## The batch-size effect: the final weights against SGD's linear-stability edges (dnn.edge)",
            "",
            "Per-example Hessians projected on e_H^1 (k = 1) or the top-k subspace of m measured examples; "
            "rho_ms: the mean-square growth factor per step (R1's q for k = 1; edge 1), eta / eta*_ms (edge 1), "
            "gamma_as: the almost-sure exponent per step (edge 0; <= log(rho_ms) / 2).",
            "",
            "| point | m | k | " + " | ".join(EDGE_QUANTITIES) + " |",
            "|---" * (len(EDGE_QUANTITIES) + 3) + "|",
        ]
        for lab, m, k in groups:
            lines.append(
                f"| {lab} | {m} | {k} | " + " | ".join(cell(eby.get((lab, m, k, q))) for q in EDGE_QUANTITIES) + " |"
            )
    return "\n".join(lines) + "\n"
