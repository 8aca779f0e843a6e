"""The cross-check: toy predictions (R1, R2, R5) next to real CIFAR-10 runs, as a Markdown report.

Study (one :class:`Preset`):
  * SGD runs of one model on a learning-rate grid at fixed S and a batch-size grid at fixed eta,
    probing lambda_H^1, lambda_K^1, Tr K, Tr K / lambda_K^1 and the per-example curvature along
    e_H^1 on a schedule (and when the running training accuracy first reaches ``max_acc``);
  * full-batch GD on a fixed subset (edge of stability: lambda_max against 2/eta);
  * R5 on a network: an MLP trained to near-zero loss on a few hundred examples, then SGD at several
    (eta, S) from there; the sum of negative Hessian eigenvalues against the training loss.
Predictions from the same runs (:mod:`dnn.predictions`): R1's stability factor at every probe,
lambda*(eta, S) from the measured alpha = lambda_K / lambda_H, 2/eta, the R2 toy calibrated to each
run's early phase, and the Conjecture 1-2 orderings (Kendall tau). Every run is a resumable
:func:`dnn.train.train` directory under ``out/runs``, so an interrupted cross-check continues where
it stopped (finished runs are read back, not recomputed).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnn import predictions as P
from dnn.store import save_tensors
from dnn.study import SGDGrid, open_study, train_runs
from dnn.train import TrainConfig, read_run_checkpoint
from valleysim.errors import UserInputError
from valleysim.jsonout import dumps
from valleysim.stats import slope_through_origin

__all__ = ["Preset", "PRESETS", "plan", "run_crosscheck"]

PAPER_REFERENCE = (
    "Jastrzebski et al. (break-even point), SimpleCNN on CIFAR-10: max lambda_K^1 = 0.87 at "
    "eta = 0.1 vs 3.01 at eta = 0.01; max Tr(K)/lambda_K^1 = 14.29 vs 10.69 (Sec. 4.2)."
)


@dataclass(frozen=True, kw_only=True)
class Preset(SGDGrid):
    """What the cross-check runs: the SGD grids (:class:`dnn.study.SGDGrid`), GD, R5."""

    gd_n_train: int = 4096
    gd_lrs: tuple[float, ...] = (0.05,)
    gd_steps: int = 2000
    gd_probe_every: int = 50
    r5_n: int = 500
    r5_pretrain_steps: int = 4000
    r5_pretrain_lr: float = 0.05
    r5_points: tuple[tuple[float, int], ...] = ((0.02, 10), (0.05, 10), (0.1, 10), (0.05, 50), (0.1, 50))
    r5_steps: int = 2000
    r5_probe_every: int = 250
    r5_top_k: int = 20
    note: str = ""


PRESETS = {
    # 2-core CPU, about 45 minutes: 5,000 training examples, 256 measurement examples, top-1 Lanczos
    # at a loose residual tolerance (value still ~1e-4 accurate), <= 300 steps per SGD run.
    "quick": Preset(
        name="quick",
        n_train=5000,
        lr_grid=(0.01, 0.03, 0.1),
        lr_fixed=0.03,
        batch_grid=(32, 128, 512),
        epochs=8,
        max_steps=300,
        probe_every=25,
        measure_size=256,
        top_k=1,
        lanczos_tol=1e-2,
        gd_n_train=500,
        gd_lrs=(0.1,),
        gd_steps=150,
        gd_probe_every=30,
        r5_pretrain_steps=3000,
        r5_steps=600,
        r5_probe_every=150,
        r5_top_k=10,
        note="5,000 training examples, 256 measurement examples, top-1 Lanczos (tol 1e-2), "
        "<= 300 steps per SGD run (probes every 25), GD on 500 examples for 150 steps",
    ),
    # the papers' settings (meant for a GPU): all 50,000 examples, 5% measurement set, top-5 Lanczos
    "paper": Preset(
        name="paper",
        note="the papers' settings: 50,000 examples, 5% measurement set, L = 25, M = 128, top-5 Lanczos, 10 epochs",
    ),
}


def plan(p: Preset, out: Path) -> dict[str, list[tuple[str, TrainConfig]]]:
    """{"sgd": [...], "gd": [...], "r5_pretrain": [...], "r5": [...]} of (run name, config)."""
    sgd = [(f"sgd_lr{lr:g}_S{b}", p.train_config(lr=lr, batch=b)) for lr, b in p.grid()]
    gd = [
        (
            f"gd_lr{lr:g}",
            p.train_config(
                optimizer="gd",
                lr=lr,
                n_train=p.gd_n_train,
                batch=min(256, p.gd_n_train),
                epochs=p.gd_steps,
                max_steps=p.gd_steps,
                probe_every=p.gd_probe_every,
                probe_epochs=False,
                probe_acc=(),
                probes=("lanczos",),
                measure_size=p.gd_n_train,  # the loss GD minimises
                augment=False,
            ),
        )
        for lr in p.gd_lrs
    ]
    r5_common = dict(
        model="mlp",
        width=1.0,
        n_train=p.r5_n,
        measure_size=p.r5_n,
        augment=False,
        probe_epochs=False,
        probe_acc=(),
        top_k=p.r5_top_k,
        lanczos_tol=1e-3,
    )
    pre = TrainConfig(
        **{
            **r5_common,
            "lr": p.r5_pretrain_lr,
            "batch": min(50, p.r5_n),
            "epochs": p.r5_pretrain_steps,
            "max_steps": p.r5_pretrain_steps,
            "probes": (),
            "probe_every": 0,
            "seed": p.seed,
        }
    )
    init = str(out / "runs" / "r5_pretrain" / "model.pt")
    r5 = [
        (
            f"r5_lr{lr:g}_S{b}",
            TrainConfig(
                **{
                    **r5_common,
                    "lr": lr,
                    "batch": b,
                    "epochs": p.r5_steps,
                    "max_steps": p.r5_steps,
                    "probes": ("negative",),
                    "probe_every": p.r5_probe_every,
                    "init_from": init,
                    "seed": p.seed,
                }
            ),
        )
        for lr, b in p.r5_points
    ]
    return {"sgd": sgd, "gd": gd, "r5_pretrain": [("r5_pretrain", pre)], "r5": r5}


def _save_final_model(run_dir: Path, dest: Path) -> None:
    if not dest.exists():
        save_tensors(read_run_checkpoint(run_dir)["state"]["model"], dest)


def run_crosscheck(
    preset: str | Preset,
    out: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    progress: bool = True,
    toy: bool = True,
    device: str = "cpu",
    executor=None,
    source=None,
) -> dict:
    """Runs (or resumes) the study and writes ``out/report.md``, ``out/summary.json``, figures.

    ``images`` uint8 (N, H, W, C) training images, ``labels`` (N,). ``executor``, ``source``: as for
    :func:`dnn.study.train_runs` (the SGD, GD and R5-pretraining runs go out together, then the R5 runs
    that start from the pretrained model). Returns the summary dict.
    """
    if isinstance(preset, str) and preset not in PRESETS:
        raise UserInputError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    p = PRESETS[preset] if isinstance(preset, str) else preset
    out = open_study(Path(out).resolve(), "crosscheck", p.name, images, labels)
    (out / "runs").mkdir(exist_ok=True)
    runs = {k: [(n, dataclasses.replace(c, device=device)) for n, c in v] for k, v in plan(p, out).items()}
    n_sgd = p.n_train or len(images)

    def train_all(kind_names):  # the runs of these kinds, through the executor; rows per run in plan order
        todo = [(kind, name, cfg) for kind in kind_names for name, cfg in runs[kind]]
        rows = train_runs(
            [(cfg, out / "runs" / name) for _, name, cfg in todo],
            images,
            labels,
            progress=progress,
            executor=executor,
            source=source,
        )
        return [(kind, name, cfg, r) for (kind, name, cfg), r in zip(todo, rows)]

    first = train_all(("sgd", "gd", "r5_pretrain"))  # independent runs; the R5 runs start from the pretrained model
    sgd = [
        dict(
            label=name,
            rows=[r for r in rows if r.get("reason") != "diverged"],
            eta=cfg.lr,
            S=cfg.batch,
            N=n_sgd,
            max_acc=p.max_acc,
        )
        for kind, name, cfg, rows in first
        if kind == "sgd"
    ]
    gd = [dict(label=name, rows=rows, eta=cfg.lr) for kind, name, cfg, rows in first if kind == "gd"]
    name, _, pre_rows = next((n, c, r) for kind, n, c, r in first if kind == "r5_pretrain")
    _save_final_model(out / "runs" / name, out / "runs" / name / "model.pt")
    r5 = [dict(label=name, rows=rows, eta=cfg.lr, S=cfg.batch) for _, name, cfg, rows in train_all(("r5",))]

    table = P.comparison_table([r for r in sgd if r["rows"]], toy=toy)
    orderings = P.conjecture_orderings(table)
    gd_table = [_gd_summary(r) for r in gd]
    r5_table, r5_fit = _r5_summary(r5, burn_in=p.r5_steps // 3)
    summary = dict(
        preset=dataclasses.asdict(p),
        comparison=table,
        orderings=orderings,
        gd=gd_table,
        r5=r5_table,
        r5_fit=r5_fit,
        r5_pretrain_loss=pre_rows[-1].get("measure_loss") if pre_rows else None,
        paper_reference=PAPER_REFERENCE,
    )
    _figures(out, sgd, table, gd, r5_table, r5_fit)
    (out / "summary.json").write_text(dumps(_without_rows(summary), indent=1))
    (out / "report.md").write_text(_report(p, summary))
    return summary


def _gd_summary(run: dict) -> dict:
    rows = [r for r in run["rows"] if r.get("lambda_max") is not None]
    lam = np.array([r["lambda_max"] for r in rows], float)
    two = 2.0 / run["eta"]
    late = lam[len(lam) // 2 :] if lam.size else lam
    return dict(
        label=run["label"],
        eta=run["eta"],
        two_over_eta=two,
        max_lambda_max=float(lam.max()) if lam.size else math.nan,
        late_median_lambda_max=float(np.median(late)) if late.size else math.nan,
        late_over_two_over_eta=float(np.median(late) / two) if late.size else math.nan,
        first_step_above_90pct=next((r["step"] for r in rows if r["lambda_max"] >= 0.9 * two), None),
        diverged=any(r.get("reason") == "diverged" for r in run["rows"]),
    )


def _r5_summary(runs: list[dict], burn_in: int) -> tuple[list[dict], dict]:
    """Per probe after ``burn_in`` steps: (loss, neg_eig_sum); fit neg_eig_sum = slope * loss.

    Probes of one run are correlated, so ``slope_se`` is clustered by run (``valleysim.stats.
    slope_through_origin``: n_runs clusters, not n points); ``slope_se_naive`` treats points as independent.
    """
    pts = []
    for run in runs:
        for r in run["rows"]:
            if r.get("step", 0) >= burn_in and r.get("neg_eig_sum") is not None:
                pts.append(
                    dict(
                        label=run["label"],
                        eta=run["eta"],
                        S=run["S"],
                        step=r["step"],
                        loss=r["measure_loss"],
                        neg_eig_sum=r["neg_eig_sum"],
                        lambda_min=r["lambda_min"],
                    )
                )
    if len(pts) < 3:
        return pts, dict(n=len(pts))
    x = np.array([q["loss"] for q in pts])
    y = np.array([q["neg_eig_sum"] for q in pts])
    fit = slope_through_origin(x, y, [q["label"] for q in pts])
    r = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else math.nan
    return pts, dict(
        n=fit["n"],
        n_runs=fit["n_clusters"],
        slope_through_origin=fit["slope"],
        slope_se=fit["slope_se"],
        slope_se_naive=fit["slope_se_naive"],
        pearson_r=r,
    )


def _without_rows(v):
    """``v`` without the per-probe "rows" lists (they live in each run's metrics.jsonl)."""
    if isinstance(v, dict):
        return {k: _without_rows(x) for k, x in v.items() if k != "rows"}
    if isinstance(v, (list, tuple)):
        return [_without_rows(x) for x in v]
    return v


def _figures(out: Path, sgd, table, gd, r5_pts, r5_fit) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_label = {t["label"]: t for t in table}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for run in sgd:
        rows = [r for r in run["rows"] if r.get("lambda_max") is not None]
        if not rows:
            continue
        ep = [r["epoch"] for r in rows]
        (line,) = axes[0].plot(ep, [r["lambda_max"] for r in rows], label=run["label"])
        lam_star = by_label.get(run["label"], {}).get("lambda_star", math.nan)
        if lam_star is not None and math.isfinite(lam_star) and lam_star > 0:
            axes[0].axhline(lam_star, color=line.get_color(), ls="--", lw=0.8)
        axes[1].plot(ep, [r["lambda_K"] for r in rows], color=line.get_color())
        axes[2].plot(ep, [r["stability_factor"] for r in rows], color=line.get_color())
    axes[0].set(title="lambda_H^1 (dashed: predicted lambda*)", xlabel="epoch", yscale="log")
    axes[1].set(title="lambda_K^1", xlabel="epoch", yscale="log")
    axes[2].axhline(1.0, color="k", lw=0.8)
    axes[2].set(title="R1 stability factor along e_H^1", xlabel="epoch")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "trajectories.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ok = [t for t in table if t.get("lambda_star") is not None and math.isfinite(t["lambda_star"])]
    if ok:
        ls = [t["lambda_star"] for t in ok]
        axes[0].scatter(ls, [t["max_lambda_max"] for t in ok], label="measured max lambda_H^1")
        toy_max = [t.get("toy_max", math.nan) for t in ok]
        axes[0].scatter(ls, toy_max, marker="x", label="calibrated toy max")
        lim = [min(ls + [t["max_lambda_max"] for t in ok]) * 0.8, max(ls + [t["max_lambda_max"] for t in ok]) * 1.2]
        axes[0].plot(lim, lim, "k:", lw=0.8)
        for t in ok:
            axes[0].annotate(t["label"].replace("sgd_", ""), (t["lambda_star"], t["max_lambda_max"]), fontsize=6)
        axes[0].set(
            xscale="log",
            yscale="log",
            xlabel="predicted lambda*(eta, S)",
            ylabel="curvature",
            title="maxima vs break-even prediction",
        )
        axes[0].legend(fontsize=7)
    for g in gd:
        rows = [r for r in g["rows"] if r.get("lambda_max") is not None]
        (line,) = axes[1].plot([r["step"] for r in rows], [r["lambda_max"] for r in rows], label=g["label"])
        axes[1].axhline(2 / g["eta"], color=line.get_color(), ls="--", lw=0.8)
    axes[1].set(title="full-batch GD: lambda_max and 2/eta", xlabel="step")
    if gd:
        axes[1].legend(fontsize=7)
    if r5_pts:
        axes[2].scatter([q["loss"] for q in r5_pts], [q["neg_eig_sum"] for q in r5_pts], s=12)
        if r5_fit.get("slope_through_origin") is not None:
            xs = np.linspace(0, max(q["loss"] for q in r5_pts), 10)
            axes[2].plot(xs, r5_fit["slope_through_origin"] * xs, "k--", lw=0.8)
    axes[2].set(
        title="R5: sum of negative eigenvalues vs loss (MLP)",
        xlabel="training loss",
        ylabel="sum of negative eigenvalues",
    )
    fig.tight_layout()
    fig.savefig(out / "predictions.png", dpi=110)
    plt.close(fig)


def _report(p: Preset, s: dict) -> str:
    cols = [
        "label",
        "eta",
        "S",
        "max_lambda_max",
        "lambda_star",
        "max_over_lambda_star",
        "two_over_eta",
        "toy_max",
        "q_at_max",
        "q_median_after",
        "max_lambda_K",
        "max_trace_ratio",
        "alpha",
        "break_even_step",
        "break_even_epoch",
        "break_even_train_acc",
    ]
    cols = [c for c in cols if any(c in t for t in s["comparison"])]
    lines = [
        f"# Cross-check: toy theory vs SimpleCNN on CIFAR-10 (preset `{p.name}`)",
        "",
        f"Settings: {p.note or dataclasses.asdict(p)}. Model {p.model}; early phase and maxima up to the "
        f"first probe with running training accuracy >= {p.max_acc:g} (or the break-even probe).",
        "",
        "## Measured vs predicted, per run",
        "",
        P.to_markdown(s["comparison"], cols),
        "",
        "lambda_star: R2's break-even curvature 2/eta - alpha c(S, N) from the run's own alpha = "
        "lambda_K / lambda_H; q: R1's stability factor along e_H^1 (1 = the mean-square edge); toy_max: "
        "the R2 toy calibrated to the run's early phase, simulated at the same (eta, S, N).",
        "",
        "## Conjecture orderings (Kendall tau-b between the noise knob and the measured maximum)",
        "",
        P.to_markdown(
            s["orderings"],
            ["grid", "fixed", "quantity", "conjecture", "predicted_sign", "tau", "p_value", "n", "agrees"],
        ),
        "",
        f"Paper: {PAPER_REFERENCE}",
        "",
        "## Full-batch GD (edge of stability)",
        "",
        P.to_markdown(s["gd"]) if s["gd"] else "(none)",
        "",
        "## R5: negative eigenvalues against the loss (MLP on a small subset)",
        "",
        f"Pre-training loss: {s['r5_pretrain_loss']}. Fit: {dumps(s['r5_fit'])}",
        "",
        P.to_markdown(s["r5"], ["label", "step", "loss", "neg_eig_sum", "lambda_min"]) if s["r5"] else "(none)",
        "",
        "![](trajectories.png)",
        "",
        "![](predictions.png)",
        "",
    ]
    return "\n".join(lines)
