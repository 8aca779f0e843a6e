"""The sharpest-directions study (sharpest-directions-sgd-step.txt Figs. 4-6, 8, Tables 1-2): SGD on a
learning-rate grid (lambda_max against 2/eta, the loss change along e_1 for alpha in {0.25, 0.5, 1, 2, 4})
and Nudged-SGD for several gamma (K fixed) against SGD at one eta, every point under several seeds
(:mod:`dnn.study`).

Each run probes lanczos (top_k = K + 1 eigenpairs, so lambda_{K+1} is seen), trace (Hutchinson Tr H and
||H||_F from the same HVPs, deflated), step (the loss change along e_1 measured, and what a parabola of
curvature lambda_1 predicts from the same mini-batches: ``loss_change_quad_*``, proofs.nsgd) and walk
(distance from the initialisation) at every epoch end. Per run (:func:`summarise_run`):

* sharpness: max and final lambda_1 and lambda_{K+1}, over their stability edges. R8 on a quadratic:
  SGD is stable along an eigendirection iff eta lambda < 2; NSGD's rate along the top-K directions is
  gamma eta, so its edge there is 2/(gamma eta), while the (K+1)-th direction keeps 2/eta
  (``edge_top = 2/(gamma eta)``, ``edge_rest = 2/eta``; gamma = 1 for SGD);
* the loss change along e_1, mean over the probes after step 0, in loss units and in % of the loss (the
  paper's units), with the quadratic prediction and the fraction of (probe, alpha) where their signs agree;
  alpha_cross_quad (median over probes): where the parabola turns up, 2 G m1 / (eta lambda_1 m2);
* the columns of Tables 1-2: ||H||_F at the best-test-accuracy probe and at the end (Hutchinson, ours;
  the paper: top-50 eigenvalues, at the best validation epoch), the test accuracy there and at the end,
  the final loss (the measurement subset of the training set), the distance from the initialisation.

Predicted orderings (the NSGD toy, README "Sharpest directions and Nudged-SGD"): along gamma the region
reached is sharper and the loss lower for smaller gamma (tau(gamma, final lambda_1) < 0, tau(gamma,
||H||_F) < 0, tau(gamma, loss) > 0); along eta at fixed S the peak lambda_1 falls (Fig. 4, R1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnn.config import TrainConfig
from dnn.predictions import column
from dnn.step_probes import ALPHAS, alpha_key
from dnn.study import Point, cell, finish, open_study, orderings_table, run_rows, run_study, seeds_for

SIGNS = {
    "learning_rate": {"max_lambda_max": -1},
    "gamma": {"max_lambda_max": -1, "final_lambda_max": -1, "final_frobenius": -1, "final_loss": +1},
}


@dataclass(frozen=True, kw_only=True)
class Preset:
    """SGD at each of ``lr_grid`` (batch ``batch``) and NSGD(``gammas``, K = ``nsgd_k``) at ``nsgd_lr``."""

    name: str
    model: str = "simplecnn"
    width: float = 1.0
    n_train: int | None = None
    batch: int = 128
    lr_grid: tuple[float, ...] = (0.01, 0.05, 0.1)
    nsgd_lr: float = 0.01
    gammas: tuple[float, ...] = (0.01, 0.1, 1.0, 5.0)
    nsgd_k: int = 5
    nsgd_every: int | None = None  # steps between eigenvector refreshes; None: once per epoch (the paper)
    epochs: int = 10
    max_steps: int | None = None
    probe_every: int = 0  # 0: at epoch ends only
    measure_size: int | None = None
    lanczos_tol: float = 1e-3
    hutchinson_samples: int = 20
    loss_change_batches: int = 10
    augment: bool = True
    seeds: int = 2
    test_size: int | None = None

    def steps_per_epoch(self, n: int) -> int:
        return max(n // self.batch, 1)

    def train_config(self, n: int, **kw) -> TrainConfig:
        base = dict(
            model=self.model,
            width=self.width,
            n_train=self.n_train,
            batch=self.batch,
            epochs=self.epochs,
            max_steps=self.max_steps,
            probes=("lanczos", "trace", "step", "walk"),
            probe_every=self.probe_every,
            probe_epochs=True,
            measure_size=self.measure_size,
            top_k=self.nsgd_k + 1,
            nsgd_k=self.nsgd_k,
            nsgd_every=self.nsgd_every or self.steps_per_epoch(n),
            lanczos_tol=self.lanczos_tol,
            hutchinson_samples=self.hutchinson_samples,
            loss_change_batches=self.loss_change_batches,
            augment=self.augment,
            test_size=self.test_size,
        )
        return TrainConfig(**{**base, **kw})


PRESETS = {
    # 2-core CPU: SimpleCNN at width 0.5 (a width-1 HVP costs 1.2 s on 256 images, 0.35 s at 0.5), 5,000
    # training images (39 steps an epoch at S = 128), 256 measurement images, top-6 Lanczos at tolerance
    # 1e-2, 10 Hutchinson probes, 8 epochs (312 steps), probes at the 9 epoch ends, NSGD eigenvectors
    # refreshed every epoch; NSGD at eta = 0.05 (not the paper's 0.01: 2/eta = 40 is reached within 312
    # steps, 200 is not); 3 + 4 points x 2 seeds = 14 runs.
    "quick": Preset(
        name="quick",
        width=0.5,
        hutchinson_samples=10,
        n_train=5000,
        lr_grid=(0.01, 0.05, 0.1),
        nsgd_lr=0.05,
        epochs=8,
        measure_size=256,
        lanczos_tol=1e-2,
        test_size=2000,
    ),
    # tiny: the end-to-end test on synthetic 8x8 images (seconds)
    "smoke": Preset(
        name="smoke",
        width=0.125,
        batch=8,
        lr_grid=(0.02, 0.05),
        nsgd_lr=0.05,
        gammas=(0.1, 5.0),
        nsgd_k=1,
        epochs=2,
        measure_size=16,
        hutchinson_samples=3,
        loss_change_batches=2,
        seeds=2,
    ),
    # the paper's Table 2 setting for SimpleCNN (eta = 0.01, S = 128, K = 5, eigenvectors once per epoch,
    # gamma in {0.01, 0.1, 1, 5}) for 200 epochs at a constant rate (the paper decays it 10x after 100
    # epochs without validation improvement: not built), and the Fig. 4 / 6 learning rates; 3 seeds,
    # the full training set, a 5% measurement set. Meant for a GPU.
    "paper": Preset(
        name="paper",
        lr_grid=(0.005, 0.01, 0.05, 0.1),
        nsgd_lr=0.01,
        epochs=200,
        seeds=3,
    ),
}


def label_sgd(eta: float) -> str:
    return f"sgd_lr{eta:g}"


def label_nsgd(gamma: float) -> str:
    return f"nsgd_g{gamma:g}"


def points(p: Preset, n: int, device: str = "cpu") -> list[Point]:
    """SGD points (knob learning_rate) and NSGD points (knob gamma) of ``p`` on a training set of n."""
    pts = [Point(label_sgd(lr), p.train_config(n, lr=lr, device=device), {"learning_rate": lr}) for lr in p.lr_grid]
    pts += [
        Point(
            label_nsgd(g), p.train_config(n, lr=p.nsgd_lr, optimizer="nsgd", nsgd_gamma=g, device=device), {"gamma": g}
        )
        for g in p.gammas
    ]
    return pts


def _nanmax(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(v.max()) if v.size else math.nan


def summarise_run(rows: list[dict], cfg: TrainConfig) -> dict:
    """The per-run numbers of the module docstring (NaN where undefined, e.g. no test rows)."""
    probes = [r for r in rows if r.get("reason") != "diverged"]
    gamma = cfg.nsgd_gamma if cfg.optimizer == "nsgd" else 1.0
    k1 = f"lambda_H_{cfg.nsgd_k + 1}"
    edge_top, edge_rest = 2.0 / (gamma * cfg.lr), 2.0 / cfg.lr
    lam1, lamk1 = column(probes, "lambda_max", strict=False), column(probes, k1, strict=False)
    out = {
        "eta": cfg.lr,
        "S": cfg.batch,
        "gamma": gamma,
        "steps": probes[-1]["step"] if probes else 0,
        "diverged": float(any(r.get("reason") == "diverged" for r in rows)),
        "max_lambda_max": _nanmax(lam1),
        "final_lambda_max": float(lam1[-1]) if probes else math.nan,
        "max_lambda_K1": _nanmax(lamk1),
        "final_lambda_K1": float(lamk1[-1]) if probes else math.nan,
        "edge_top": edge_top,
        "edge_rest": edge_rest,
        "max_lambda_max_over_edge_top": _nanmax(lam1) / edge_top,
        "max_lambda_K1_over_edge_rest": _nanmax(lamk1) / edge_rest,
    }
    later = [r for r in probes if r["step"] > 0]
    agree = []
    for a in ALPHAS:
        key = alpha_key(a)
        meas, quad = (
            column(later, f"loss_change_{key}", strict=False),
            column(later, f"loss_change_quad_{key}", strict=False),
        )
        loss = column(later, "measure_loss", strict=False)
        out[f"loss_change_{key}"] = float(np.mean(meas)) if later else math.nan
        out[f"loss_change_quad_{key}"] = float(np.mean(quad)) if later else math.nan
        out[f"loss_change_pct_{key}"] = float(np.mean(100 * meas / loss)) if later else math.nan
        ok = np.isfinite(meas) & np.isfinite(quad)
        agree += list(np.sign(meas[ok]) == np.sign(quad[ok]))
    out["sign_agreement_quad"] = float(np.mean(agree)) if agree else math.nan
    ac = column(later, "alpha_cross_quad", strict=False)
    out["alpha_cross_quad"] = float(np.median(ac[np.isfinite(ac)])) if np.isfinite(ac).any() else math.nan
    test = column(probes, "test_acc", strict=False)
    best = int(np.nanargmax(test)) if np.isfinite(test).any() else len(probes) - 1
    frob, dist = column(probes, "frobenius_hessian", strict=False), column(probes, "distance_from_init", strict=False)
    out.update(
        {
            "best_frobenius": float(frob[best]) if probes else math.nan,
            "final_frobenius": float(frob[-1]) if probes else math.nan,
            "best_test_acc": float(test[best]) if probes else math.nan,
            "final_test_acc": float(test[-1]) if probes else math.nan,
            "final_loss": float(probes[-1].get("measure_loss", math.nan)) if probes else math.nan,
            "best_distance_from_init": float(dist[best]) if probes else math.nan,
            "final_distance_from_init": float(dist[-1]) if probes else math.nan,
        }
    )
    return out


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
    """Train the study into ``out`` and write its CSVs, summary.json, report.md and figure."""
    out = open_study(out, "sharpest", preset.name, images, labels, test)
    n = len(images) if preset.n_train is None else min(preset.n_train, len(images))
    pts = points(preset, n, device)
    seed_list = seeds_for(seeds, preset.seeds)
    per_run = run_study(
        pts,
        seed_list,
        out,
        images,
        labels,
        summarise_run=summarise_run,
        test=test,
        progress=progress,
        executor=executor,
        source=source,
    )
    curves = {
        (p.label, s): _curve(out, p.label, s, p.cfg) for p in pts for s in seed_list
    }  # lambda_1 along training, for the figure
    return finish(
        out,
        preset.name,
        seed_list,
        per_run,
        pts,
        SIGNS,
        lambda s: report(preset, s),
        lambda s, path: figure(preset, pts, curves, s, path),
        "sharpest_study.png",
    )


def _curve(out, label: str, seed: int, cfg: TrainConfig) -> dict:
    rows = run_rows(out, label, seed)
    return {
        "step": column(rows, "step", strict=False),
        "lambda_max": column(rows, "lambda_max", strict=False),
        f"lambda_H_{cfg.nsgd_k + 1}": column(rows, f"lambda_H_{cfg.nsgd_k + 1}", strict=False),
        **{f"loss_change_{alpha_key(a)}": column(rows, f"loss_change_{alpha_key(a)}", strict=False) for a in ALPHAS},
    }


def figure(preset: Preset, pts: list[Point], curves: dict, s: dict, path: Path) -> None:
    """Left: lambda_1 along training per SGD eta (each seed a line) with 2/eta; centre: NSGD lambda_1 (solid)
    and lambda_{K+1} (dashed) per gamma with 2/eta; right: the loss change along e_1 against alpha,
    measured (points, mean +- 95% t over seeds) and the parabola's prediction (line), per SGD eta."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.0), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    sgd = [p for p in pts if "learning_rate" in p.knobs]
    nsgd = [p for p in pts if "gamma" in p.knobs]
    seeds = s["seeds"]
    for i, p in enumerate(sgd):
        c = colours[i % len(colours)]
        for j, sd in enumerate(seeds):
            cv = curves[(p.label, sd)]
            axes[0].plot(
                cv["step"], cv["lambda_max"], "-", color=c, lw=1, label=f"eta {p.cfg.lr:g}" if j == 0 else None
            )
        axes[0].axhline(2 / p.cfg.lr, color=c, ls=":", lw=1)
    axes[0].set(yscale="log", xlabel="step", ylabel="lambda_1 (dotted: 2/eta)", title=f"SGD, S = {preset.batch}")
    k1 = f"lambda_H_{preset.nsgd_k + 1}"
    for i, p in enumerate(nsgd):
        c = colours[i % len(colours)]
        for j, sd in enumerate(seeds):
            cv = curves[(p.label, sd)]
            axes[1].plot(
                cv["step"],
                cv["lambda_max"],
                "-",
                color=c,
                lw=1,
                label=f"gamma {p.knobs['gamma']:g}" if j == 0 else None,
            )
            axes[1].plot(cv["step"], cv[k1], "--", color=c, lw=0.8)
    axes[1].axhline(2 / preset.nsgd_lr, color="k", ls=":", lw=1)
    axes[1].set(
        yscale="log",
        xlabel="step",
        ylabel=f"lambda_1 (solid), lambda_{preset.nsgd_k + 1} (dashed); 2/eta dotted",
        title=f"NSGD, eta = {preset.nsgd_lr:g}, K = {preset.nsgd_k}",
    )
    by = {(r["label"], r["quantity"]): r for r in s["across_seeds"]}
    for i, p in enumerate(sgd):
        c = colours[i % len(colours)]
        m = [by.get((p.label, f"loss_change_{alpha_key(a)}")) for a in ALPHAS]
        q = [by.get((p.label, f"loss_change_quad_{alpha_key(a)}")) for a in ALPHAS]
        mean = np.array([r["mean"] if r else np.nan for r in m])
        err = np.array([[r["mean"] - r["lo"], r["hi"] - r["mean"]] if r else [np.nan] * 2 for r in m]).T
        axes[2].errorbar(ALPHAS, mean, yerr=np.nan_to_num(err), fmt="o", color=c, capsize=3, label=f"eta {p.cfg.lr:g}")
        axes[2].plot(ALPHAS, [r["mean"] if r else np.nan for r in q], "-", color=c, lw=1)
    axes[2].axhline(0, color="k", lw=0.6)
    axes[2].set(
        xscale="log",
        xlabel="alpha",
        ylabel="E[L(theta - alpha eta g_1 e_1) - L(theta)]",
        title="loss change along e_1 (points) vs parabola (lines)",
    )
    axes[2].set_yscale("symlog", linthresh=1e-2)
    axes[2].set_xticks(ALPHAS, [f"{a:g}" for a in ALPHAS])
    axes[2].minorticks_off()
    for ax in axes:
        ax.legend(fontsize=7)
    fig.suptitle(f"sharpest-directions study ({preset.name}, {len(seeds)} seeds)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(preset: Preset, s: dict) -> str:
    """Markdown: the SGD table (sharpness against 2/eta, the loss change along e_1 measured vs the
    parabola), the NSGD table (Table 2's columns and the edges), the orderings seed by seed."""
    by = {(r["label"], r["quantity"]): r for r in s["across_seeds"]}
    labels = list(dict.fromkeys(r["label"] for r in s["per_run"]))
    sgd = [lab for lab in labels if lab.startswith("sgd_")]
    nsgd = [lab for lab in labels if lab.startswith("nsgd_")]

    def table(rows, keys):
        lines = ["| point | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {lab} | " + " | ".join(cell(by.get((lab, k))) for k in keys) + " |" for lab in rows]
        return lines

    K1 = preset.nsgd_k + 1
    lines = [
        f"# Sharpest-directions study, preset `{preset.name}` ({len(s['seeds'])} seeds per point)\n",
        "Mean over seeds [95% t interval]. Probes at every epoch end; `edge_*` are R8's stability edges "
        f"(2/(gamma eta) along the top K = {preset.nsgd_k}, 2/eta beyond; gamma = 1 for SGD); "
        f"`lambda_K1` is lambda_{K1}.\n",
        f"## SGD, S = {preset.batch}: sharpness against 2/eta\n",
        *table(
            sgd, ("max_lambda_max", "final_lambda_max", "edge_rest", "max_lambda_max_over_edge_top", "final_test_acc")
        ),
        "",
        "## The loss change along e_1 (mean over the probes after step 0; paper, SimpleCNN, eta = 0.01: "
        "-2%, -2%, +2.1%, +11.1% at alpha = 0.25, 0.5, 2, 4)\n",
        "Measured (`loss_change_pct_*`: % of the loss) and what a parabola of curvature lambda_1 predicts from "
        "the same mini-batches (`loss_change_quad_*`, loss units, next to the measured `loss_change_*`); "
        "`sign_agreement_quad`: the fraction of (probe, alpha) where they have the same sign; `alpha_cross_quad`: "
        "where the parabola turns up (the paper's reading 'decrease below alpha = 1, increase above' is "
        "alpha_cross = 1).\n",
        *table(
            labels,
            [f"loss_change_pct_{alpha_key(a)}" for a in ALPHAS] + ["alpha_cross_quad", "sign_agreement_quad"],
        ),
        "",
        *table(labels, [f"{p}_{alpha_key(a)}" for a in (0.5, 1.0, 2.0) for p in ("loss_change", "loss_change_quad")]),
        "",
        f"## NSGD (eta = {preset.nsgd_lr:g}, K = {preset.nsgd_k}) against SGD at the same eta: Table 2's columns\n",
        "||H||_F from Hutchinson (ours; the paper: top-50 eigenvalues); 'best' = the probe with the best test "
        "accuracy (the paper selects on a validation set); loss = the measurement subset of the training set.\n",
        *table(
            nsgd + [label_sgd(preset.nsgd_lr)] if label_sgd(preset.nsgd_lr) in labels else nsgd,
            (
                "best_frobenius",
                "final_frobenius",
                "best_test_acc",
                "final_test_acc",
                "final_loss",
                "best_distance_from_init",
                "diverged",
            ),
        ),
        "",
        *table(
            nsgd,
            (
                "max_lambda_max",
                "edge_top",
                "max_lambda_max_over_edge_top",
                "max_lambda_K1",
                "edge_rest",
                "max_lambda_K1_over_edge_rest",
            ),
        ),
        "",
        "## Orderings (Kendall tau per seed)\n",
        "Predicted: smaller gamma, sharper and lower loss (the NSGD toy): tau < 0 for lambda_1 and ||H||_F, "
        "> 0 for the loss; larger eta, lower peak lambda_1 (Fig. 4).\n",
        *orderings_table(s["orderings"]),
    ]
    return "\n".join(lines) + "\n"
