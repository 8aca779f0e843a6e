"""The walk study (walk-with-sgd.txt Tables 1-2, Figs. 1-5): the training loss interpolated between every
pair of consecutive iterates (the walk probe at every step), under SGD on a learning-rate grid at fixed S
and a batch-size grid at fixed eta, full-batch GD, and GD + isotropic noise of SGD's noise power, every
point under several seeds (:mod:`dnn.study`).

The interpolated loss is the mean cross-entropy of a fixed, seeded measurement subset of the training
set (``measure_size`` images, BatchNorm in eval mode; the paper: the whole training set), at the 10
points strictly between theta_t and theta_{t+1} and the two ends (:mod:`dnn.walk_metrics`, the toy's
definitions). Per run (:func:`summarise_run`), from the rows of every step after the first:

* per epoch e in ``table_epochs`` (the steps of epoch e): barrier crossings (count and fraction of the
  steps; Table 1), the mean height above the floor (Table 2), the mean cos(g_t-1, g_t);
* over the run: the barrier fraction, the mean height, the mean cosine over the second half of the
  steps, the final distance from the initialisation, the final loss (the measurement subset) and the
  final test accuracy.

GD + noise: theta <- theta - eta (g + sigma xi), xi ~ N(0, I_P), with sigma^2 P = c(S, N) Tr K at the
initialisation, the trace of the covariance of SGD's mini-batch gradient at batch ``noise_batch`` (K
estimated from 25 mini-batch gradients of the measurement set at seed 0's initialisation,
:func:`dnn.covariance.gradient_covariance`): the same noise power as SGD there, spread isotropically
(the paper: 0.1 and 0.05 of "the maximum gradient variance at initialisation").

Predicted orderings (Kendall tau per seed): the learning rate sets the height (tau(eta, height) > 0, the
paper's Table 2 and the toy); the batch size sets the distance travelled (tau(1/S, distance) > 0, both);
the cosine: the paper says S sets it and eta barely (tau(1/S, cos) > 0, tau(eta, cos) ~ 0), the toy says
eta matters as much (on a linear wall the correlation of consecutive gradients is -eta k / 2 at any S:
tau(eta, cos) < 0). Both taus are reported; which holds is read off the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnn.config import TrainConfig
from dnn.predictions import column
from dnn.study import Point, cell, finish, open_study, orderings_table, run_rows, run_study, seeds_for
from valleysim.theory import variance_factor

SIGNS = {
    "learning_rate": {"mean_height": +1, "final_distance": +1, "mean_cos": -1},
    "batch_size": {"mean_height": +1, "final_distance": +1, "mean_cos": +1},
    "batch_size_epochs": {"mean_height": +1, "final_distance": +1, "mean_cos": +1},
}


@dataclass(frozen=True, kw_only=True)
class Preset:
    """SGD at ``lr_grid`` (batch ``batch_fixed``) and ``batch_grid`` (rate ``lr_fixed``); GD and GD + noise
    at ``lr_fixed``; every run ``steps`` steps with the walk probe at every step."""

    name: str
    model: str = "simplecnn"
    width: float = 1.0
    n_train: int | None = None
    lr_grid: tuple[float, ...] = (0.02, 0.05, 0.1)
    batch_fixed: int = 128
    batch_grid: tuple[int, ...] = (32, 128, 512)
    lr_fixed: float = 0.05
    gd: bool = True  # GD and GD + noise at lr_fixed
    noise_batch: int = 128  # GD + noise has SGD's noise power at this batch size
    steps: int = 150
    measure_size: int | None = 128
    table_epochs: tuple[int, ...] = (1, 2, 5, 10)
    epoch_batch_grid: tuple[int, ...] = ()  # SGD at lr_fixed for `epochs_fixed` epochs at each S (same data seen)
    epochs_fixed: int = 2
    augment: bool = True
    seeds: int = 2
    test_size: int | None = 500

    def train_config(self, **kw) -> TrainConfig:
        base = dict(
            model=self.model,
            width=self.width,
            n_train=self.n_train,
            epochs=10**6,  # the run is `steps` long whatever S (GD: one step an epoch)
            max_steps=self.steps,
            probes=("walk",),
            probe_every=1,
            probe_epochs=False,
            measure_size=self.measure_size,
            augment=self.augment,
            test_size=self.test_size,
        )
        return TrainConfig(**{**base, **kw})


PRESETS = {
    # 2-core CPU: SimpleCNN at width 0.5 on the first 2,000 training images (15 steps an epoch at S = 128;
    # GD's step is then 0.6 s), the walk loss on 128 of them, 150 steps a run (the walk probe at every
    # step: 12 losses of the 128 images), 500 test images a row; 7 points x 2 seeds = 14 runs.
    # + the batch grid at a fixed 2 epochs (124, 30 and 6 steps at S = 32, 128, 512): 3 x 2 = 6 runs more.
    "quick": Preset(name="quick", width=0.5, n_train=2000, epoch_batch_grid=(32, 128, 512)),
    # tiny: the end-to-end test on synthetic 8x8 images (seconds)
    "smoke": Preset(
        name="smoke",
        width=0.125,
        lr_grid=(0.02, 0.05),
        batch_fixed=8,
        batch_grid=(4, 8),
        noise_batch=8,
        steps=6,
        measure_size=16,
        table_epochs=(1, 2),
        epoch_batch_grid=(4, 8),
        epochs_fixed=1,
        test_size=None,
    ),
    # the paper's VGG-11 on CIFAR-10 (S = 100, eta = 0.1; Table 2's eta = 0.05 and 0.1), 100 epochs of
    # SGD at S = 100 (45,000 steps), the walk loss on a 5% subset (the paper: all of it); 3 seeds. Meant
    # for a GPU; the GD runs are 45,000 full-batch steps.
    "paper": Preset(
        name="paper",
        model="vgg11",
        lr_grid=(0.01, 0.05, 0.1),
        batch_fixed=100,
        batch_grid=(25, 100, 400),
        lr_fixed=0.1,
        noise_batch=100,
        steps=45000,
        measure_size=2500,
        table_epochs=(1, 10, 25, 100),
        epoch_batch_grid=(25, 100, 400),
        epochs_fixed=10,
        seeds=3,
        test_size=None,
    ),
}


def label_sgd(eta: float, S: int, epochs: int | None = None) -> str:
    return f"sgd_lr{eta:g}_S{S}" + ("" if epochs is None else f"_ep{epochs}")


def points(p: Preset, noise_std: float | None = None, device: str = "cpu") -> list[Point]:
    """The SGD grid points at ``steps`` steps (knobs learning_rate eta, batch_size 1/S), the batch grid at
    ``epochs_fixed`` epochs (knob batch_size_epochs 1/S), then GD and GD + noise (no knob)."""
    grid: dict = {}
    for lr in p.lr_grid:
        grid.setdefault((lr, p.batch_fixed), {})["learning_rate"] = lr
    for b in p.batch_grid:
        grid.setdefault((p.lr_fixed, b), {})["batch_size"] = 1.0 / b
    pts = [
        Point(label_sgd(lr, b), p.train_config(lr=lr, batch=b, device=device), knobs)
        for (lr, b), knobs in sorted(grid.items())
    ]
    pts += [
        Point(
            label_sgd(p.lr_fixed, b, p.epochs_fixed),
            p.train_config(lr=p.lr_fixed, batch=b, epochs=p.epochs_fixed, max_steps=None, device=device),
            {"batch_size_epochs": 1.0 / b},
        )
        for b in p.epoch_batch_grid
    ]
    if p.gd:
        pts.append(Point("gd", p.train_config(lr=p.lr_fixed, batch=p.batch_fixed, optimizer="gd", device=device)))
        if noise_std is not None:
            pts.append(
                Point(
                    "gd_noise",
                    p.train_config(
                        lr=p.lr_fixed, batch=p.batch_fixed, optimizer="gd-noise", noise_std=noise_std, device=device
                    ),
                )
            )
    return pts


def sgd_noise_std(
    p: Preset,
    images,
    labels,
    seed: int = 0,
    device: str = "cpu",
    *,
    state_dict=None,
    label_smoothing: float = 0.0,
) -> dict:
    """sigma with sigma^2 P = c(S, N) Tr K at the seeded initialisation, or at the weights ``state_dict``
    (S = ``noise_batch``, N the training set, the loss smoothed by ``label_smoothing``): {noise_std,
    trace_K, P, c}. K from 25 mini-batch gradients of size min(128, n_measure - 1) of the measurement set
    (unbiased for Tr K, :func:`dnn.covariance.gradient_covariance`)."""
    import torch

    from dnn.covariance import gradient_covariance
    from dnn.data import channel_stats, measurement_subset
    from dnn.models import build_model
    from dnn.objective import Objective
    from dnn.train import _model_data

    n = len(images) if p.n_train is None else min(p.n_train, len(images))
    x, y = images[:n], labels[:n]
    cfg = p.train_config(lr=p.lr_fixed, batch=p.noise_batch, seed=seed, device=device)
    mean, std = channel_stats(x)
    model = build_model(cfg.model, input_shape=(x.shape[3], x.shape[1], x.shape[2]), width=cfg.width, seed=seed)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    idx = measurement_subset(n, cfg.measure_fraction, seed=seed, size=cfg.measure_size)
    obj = Objective(
        model,
        _model_data(x, mean, std, False, idx),
        torch.as_tensor(y[idx]),
        dtype=torch.float32,
        device=device,
        label_smoothing=label_smoothing,
    )
    obj.load(model)
    cov = gradient_covariance(obj, 25, min(128, obj.n - 1), seed=seed)
    c = variance_factor(p.noise_batch, n)
    P = obj.dim
    return {
        "noise_std": math.sqrt(c * float(cov["trace_K"]) / P),
        "trace_K": float(cov["trace_K"]),
        "P": P,
        "c": c,
    }


def _mean(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else math.nan


def summarise_run(rows: list[dict], cfg: TrainConfig, n_train: int, table_epochs) -> dict:
    """The per-run numbers of the module docstring (NaN where undefined: an epoch the run did not reach)."""
    probes = [r for r in rows if r.get("reason") != "diverged"]
    steps = [r for r in probes if r["step"] > 0]
    spe = (
        1
        if cfg.optimizer in ("gd", "gd-noise")
        else (n_train // cfg.batch if cfg.drop_last else -(-n_train // cfg.batch))
    )
    out = {
        "eta": cfg.lr,
        "S": n_train if cfg.optimizer in ("gd", "gd-noise") else cfg.batch,
        "noise_std": cfg.noise_std,
        "steps": probes[-1]["step"] if probes else 0,
        "diverged": float(any(r.get("reason") == "diverged" for r in rows)),
    }
    barrier, height, cos = (
        column(steps, "barrier", strict=False),
        column(steps, "height", strict=False),
        column(steps, "cos_consecutive", strict=False),
    )
    step_no = column(steps, "step", strict=False)
    for e in table_epochs:
        inside = (step_no > (e - 1) * spe) & (step_no <= e * spe)
        complete = inside.sum() == spe
        out[f"barriers_epoch{e}"] = float(np.nansum(barrier[inside])) if complete else math.nan
        out[f"barrier_fraction_epoch{e}"] = _mean(barrier[inside]) if complete else math.nan
        out[f"height_epoch{e}"] = _mean(height[inside]) if complete else math.nan
        out[f"cos_epoch{e}"] = _mean(cos[inside]) if complete else math.nan
    half = step_no > (out["steps"] / 2)
    loss_prev = column(steps, "loss_prev", strict=False)
    sizes = column(steps, "barrier_size", strict=False)
    crossed = barrier > 0
    out.update(
        {
            "barrier_fraction": _mean(barrier),
            "barrier_size_rel": _mean(sizes[crossed] / loss_prev[crossed]) if crossed.any() else math.nan,
            "mean_height": _mean(height),
            "mean_cos": _mean(cos[half]),
            "final_distance": float(probes[-1].get("distance_from_init", math.nan)) if probes else math.nan,
            "final_loss": float(probes[-1].get("measure_loss", math.nan)) if probes else math.nan,
            "final_test_acc": float(probes[-1].get("test_acc", math.nan)) if probes else math.nan,
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
    """Calibrate GD + noise, train the study into ``out``, write its CSVs, summary.json, report.md, figure."""
    from valleysim.jsonout import atomic_write, dumps, read_json

    out = open_study(out, "walk", preset.name, images, labels, test)
    n = len(images) if preset.n_train is None else min(preset.n_train, len(images))
    noise = None
    if preset.gd:
        cal = out / "noise_calibration.json"
        if cal.exists():  # a resumed study keeps the sigma its runs were started with
            noise = read_json(cal)
        else:
            noise = sgd_noise_std(preset, images, labels, device=device)
            atomic_write(cal, (dumps(noise, indent=2) + "\n").encode())
    pts = points(preset, noise["noise_std"] if noise else None, device)
    seed_list = seeds_for(seeds, preset.seeds)
    per_run = run_study(
        pts,
        seed_list,
        out,
        images,
        labels,
        summarise_run=lambda rows, cfg: summarise_run(rows, cfg, n, preset.table_epochs),
        test=test,
        progress=progress,
        executor=executor,
        source=source,
    )
    curves = {(p.label, s): _curve(out, p.label, s) for p in pts for s in seed_list}
    summary = finish(
        out,
        preset.name,
        seed_list,
        per_run,
        pts,
        SIGNS,
        lambda s: report(preset, s, noise),
        lambda s, path: figure(preset, pts, curves, s, path),
        "walk_study.png",
    )
    return {**summary, "noise_calibration": noise}


def _curve(out, label: str, seed: int) -> dict:
    rows = run_rows(out, label, seed)
    rows = [r for r in rows if r["step"] > 0]
    return {
        k: column(rows, k, strict=False)
        for k in ("step", "loss_prev", "floor", "cos_consecutive", "distance_from_init")
    }


def figure(preset: Preset, pts: list[Point], curves: dict, s: dict, path: Path) -> None:
    """The first seed of each point along the run: the loss at the iterates and the floor between them
    (top left), cos(g_t-1, g_t) smoothed over 10 steps (top right), the distance from the initialisation
    (bottom left); bottom right: the mean cosine of the second half against eta (S fixed) and against
    1/S (eta fixed), mean +- 95% t over seeds (Fig. 4's question)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    seed = s["seeds"][0]
    for i, p in enumerate(pts):
        c = colours[i % len(colours)]
        cv = curves[(p.label, seed)]
        axes[0, 0].plot(cv["step"], cv["loss_prev"], "-", color=c, lw=1, label=p.label)
        axes[0, 0].plot(cv["step"], cv["floor"], ":", color=c, lw=0.8)
        k = min(10, len(cv["step"])) or 1
        smooth = np.convolve(np.nan_to_num(cv["cos_consecutive"]), np.ones(k) / k, mode="valid")
        axes[0, 1].plot(cv["step"][k - 1 :], smooth, "-", color=c, lw=1, label=p.label)
        axes[1, 0].plot(cv["step"], cv["distance_from_init"], "-", color=c, lw=1, label=p.label)
    axes[0, 0].set(yscale="log", xlabel="step", ylabel="loss at theta_t (solid), floor (dotted)")
    axes[0, 1].set(xlabel="step", ylabel="cos(g_t-1, g_t), 10-step mean")
    axes[0, 1].axhline(0, color="k", lw=0.6)
    axes[1, 0].set(xlabel="step", ylabel="||theta_t - theta_0||")
    by = {(r["label"], r["quantity"]): r for r in s["across_seeds"]}
    ax = axes[1, 1]
    grids = (
        ("learning_rate", "eta", "o-"),
        ("batch_size", "1/S", "s--"),
        ("batch_size_epochs", "1/S, fixed epochs", "^:"),
    )
    for grid, name, marker in grids:
        q = "mean_cos"
        members = [p for p in pts if grid in p.knobs]
        x = [p.knobs[grid] for p in members]
        r = [by.get((p.label, q)) for p in members]
        m = np.array([v["mean"] if v else np.nan for v in r])
        err = np.array([[v["mean"] - v["lo"], v["hi"] - v["mean"]] if v else [np.nan] * 2 for v in r]).T
        if members:
            ax.errorbar(x, m, yerr=np.nan_to_num(err), fmt=marker, capsize=3, label=f"{q} vs {name}")
    ax.set(xscale="log", xlabel="knob: eta (S fixed) or 1/S (eta fixed)", ylabel="mean cos, second half")
    for a in axes.ravel():
        a.legend(fontsize=6)
    fig.suptitle(f"walk study ({preset.name}, {len(s['seeds'])} seeds; curves: seed {seed})", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(preset: Preset, s: dict, noise: dict | None) -> str:
    """Markdown: Tables 1-2 per epoch, the whole-run columns, GD vs SGD vs GD + noise, the orderings."""
    by = {(r["label"], r["quantity"]): r for r in s["across_seeds"]}
    labels = list(dict.fromkeys(r["label"] for r in s["per_run"]))

    def table(rows, keys):
        lines = ["| point | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {lab} | " + " | ".join(cell(by.get((lab, k))) for k in keys) + " |" for lab in rows]
        return lines

    ep = preset.table_epochs
    lines = [
        f"# Walk study, preset `{preset.name}` ({len(s['seeds'])} seeds per point)\n",
        f"Mean over seeds [95% t interval]. The interpolated loss is on {preset.measure_size or '5%'} fixed "
        "training images; every step is interpolated at 10 interior points. An epoch's cell is blank when the "
        "run did not complete that epoch.\n",
        "## Barrier crossings per epoch (Table 1; paper, VGG-11: 0, 0, 5, 13 of 450 steps at epochs 1, 10, 25, 100)\n",
        *table(labels, [f"barriers_epoch{e}" for e in ep] + ["barrier_fraction", "barrier_size_rel"]),
        "",
        "## Height above the floor per epoch (Table 2; paper, VGG-11 epoch 1: 0.0625 at eta 0.1, 0.0102 at 0.05)\n",
        *table(labels, [f"height_epoch{e}" for e in ep] + ["mean_height"]),
        "",
        "## Cosine of consecutive gradients and distance (Fig. 4), GD vs SGD vs GD + noise (Fig. 5)\n",
        *table(labels, [f"cos_epoch{e}" for e in ep] + ["mean_cos", "final_distance", "final_loss", "final_test_acc"]),
        "",
    ]
    if noise:
        lines += [
            f"GD + noise: sigma = {noise['noise_std']:.4g} per coordinate (sigma^2 P = c(S, N) Tr K with "
            f"S = {preset.noise_batch}, c = {noise['c']:.4g}, Tr K = {noise['trace_K']:.4g}, P = {noise['P']:,}: "
            "SGD's noise power at the initialisation, isotropic).\n",
        ]
    lines += [
        "## Orderings (Kendall tau per seed)\n",
        "Predicted: height rises with eta and with 1/S, distance rises with both; the cosine: the paper "
        "predicts tau(1/S, cos) > 0 and tau(eta, cos) ~ 0, the toy tau(eta, cos) < 0 (the sign column is the "
        "toy's for eta, the paper's for 1/S). `batch_size_epochs`: the batch grid run for "
        f"{preset.epochs_fixed} epochs at every S (the same examples seen; the `batch_size` grid fixes the steps).\n",
        *orderings_table(s["orderings"]),
    ]
    return "\n".join(lines) + "\n"
