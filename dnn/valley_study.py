"""The valley study (noise-hessian-spectrum.txt Secs. 2-4, Figs. 2-3): a small network trained with
label smoothing to a minimum, then SGD at several learning rates, GD and GD + isotropic noise of SGD's
noise power from that minimum, every point under several seeds (:mod:`dnn.study`).

1. **The minimum.** SGD with momentum on the first ``n_train`` training images (no augmentation: a fixed
   data set has a true minimum; label smoothing eps so that it is a finite point, the paper's reason)
   for ``min_steps`` steps, seed 0; its weights are ``minimum.pt``. The smoothed cross-entropy is
   bounded below by the entropy of the smoothed target, L_floor = -(1 - eps + eps/C) log(1 - eps + eps/C)
   - (C - 1)(eps/C) log(eps/C), reached only by a network that outputs the smoothed target on every
   example; ``loss - L_floor`` is the excess loss the R5 fit uses.
2. **From it**, with the measurement set = the whole training set (the loss is the training loss):
   SGD at ``lr_grid`` (batch ``batch``), GD and GD + noise at ``lr_fixed`` (sigma^2 P = c(S, N) Tr K at the
   minimum, the same calibration as the walk study, :func:`dnn.walk_study.sgd_noise_std`). Probes every
   ``probe_every`` steps: top-k Lanczos, Hutchinson Tr H and ||H||_F, K from 25 mini-batch gradients, the
   alignment of K with H (:func:`dnn.covariance.alignment`), the top-k most negative eigenvalues.

Per run (:func:`summarise_run`):

* ``trace_drift``: the least-squares slope of Tr H against the step over the probes (per step), and
  ``trace_drift_over_eta2`` = trace_drift / eta^2 (R3: at leading order the drift is linear in eta^2 at
  fixed S, Fig. 2b); ``logdet_drift``: the same for log det of the top-k part, sum_i log lambda_i over the
  top-k eigenvalues above ``1e-6 lambda_1`` (R4: isotropic noise lowers it);
* the alignment means over the probes: cos_HK (1 iff K = c H, the paper's assumption), c_fit_HK,
  |cos(e_K^1, e_H^1)|, the overlap of K's top 5 with H's top k, alpha along e_H^1;
* R5: the least-squares line neg_eig_sum = w (loss - L_floor) + b over the probes after step 0 (w, b; the
  paper, Fig. 2a: w = -40.07, b ~ 0), where neg_eig_sum sums the top-k most negative eigenvalues only (a
  lower bound on the whole negative mass, which needs a spectral density: not built).

What the theory does not give here: the leading-order drift itself needs the derivatives of the
non-degenerate eigenvalues along the degenerate directions (a third-derivative contraction); it is not
measured, so only its eta^2 scaling and its sign (SGD: Tr H falls) are tested.

3. **The projected path** (Figs. 1, 3; :mod:`dnn.projected_path`): each SGD run keeps its weights every
   ``keep_every`` steps; each kept state is projected by GD to the minimum's loss, consecutive projections
   are tested for line connectedness (recursively refined, the paper's scheme), and Tr H and the test loss
   are measured at the projections (:func:`projected_paths`, :func:`path_summary`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dnn.config import TrainConfig
from dnn.predictions import column
from dnn.study import Point, cell, finish, open_study, orderings_table, run_rows, run_study, seeds_for

SIGNS = {"learning_rate": {"trace_drift": -1, "final_trace": -1, "mean_loss": +1}}


def smoothed_entropy(eps: float, n_classes: int = 10) -> float:
    """L_floor: the entropy of the eps-smoothed one-hot target (torch's label smoothing), the infimum of the
    smoothed cross-entropy."""
    hi, lo = 1.0 - eps + eps / n_classes, eps / n_classes
    return -(hi * math.log(hi) + ((n_classes - 1) * lo * math.log(lo) if lo > 0 else 0.0))


@dataclass(frozen=True, kw_only=True)
class Preset:
    name: str
    model: str = "simplecnn"
    width: float = 0.25
    n_train: int = 500
    label_smoothing: float = 0.1
    min_lr: float = 0.05
    min_momentum: float = 0.9
    min_batch: int = 50
    min_steps: int = 1500
    lr_grid: tuple[float, ...] = (0.02, 0.05, 0.1)
    lr_fixed: float = 0.05
    batch: int = 50
    steps: int = 300
    probe_every: int = 100
    top_k: int = 5
    lanczos_tol: float = 1e-2
    hutchinson_samples: int = 20
    cov_batch: int = 50
    seeds: int = 2
    test_size: int | None = 1000
    keep_every: int = 50  # SGD runs keep their weights this often: the states of the projected path
    path_coarse: int = 2  # the path's coarse pairs are this many kept states apart (the paper: epochs)
    project_max_steps: int = 300  # GD steps at most per projection (heavy ball at min_lr, min_momentum)
    connect_factor: float = 2.0  # line connected: excess loss <= this x the minimum's excess at all 10 points

    def train_config(self, **kw) -> TrainConfig:
        base = dict(
            model=self.model,
            width=self.width,
            n_train=self.n_train,
            augment=False,
            label_smoothing=self.label_smoothing,
            batch=self.batch,
            epochs=10**6,
            max_steps=self.steps,
            probes=("lanczos", "trace", "covariance", "alignment", "negative"),
            probe_every=self.probe_every,
            probe_epochs=False,
            measure_size=self.n_train,
            top_k=self.top_k,
            lanczos_tol=self.lanczos_tol,
            hutchinson_samples=self.hutchinson_samples,
            cov_batch=self.cov_batch,
            test_size=self.test_size,
        )
        return TrainConfig(**{**base, **kw})

    def minimum_config(self, device: str = "cpu") -> TrainConfig:
        return self.train_config(
            lr=self.min_lr,
            momentum=self.min_momentum,
            batch=self.min_batch,
            max_steps=self.min_steps,
            probes=(),
            probe_every=0,
            seed=0,
            device=device,
        )


PRESETS = {
    # 2-core CPU: SimpleCNN at width 0.25 on the first 500 training images (all of them measured), label
    # smoothing 0.1; the minimum: 1,500 SGD steps (momentum 0.9, eta 0.05, S 50); then 300 steps per run,
    # probes every 100 (top-5 Lanczos at tolerance 1e-2, 20 Hutchinson probes, K from 25 batches of 50, the
    # 5 most negative eigenvalues); 5 points x 2 seeds = 10 runs.
    "quick": Preset(name="quick"),
    # tiny: the end-to-end test on synthetic 8x8 images (seconds)
    "smoke": Preset(
        name="smoke",
        width=0.125,
        n_train=24,
        min_batch=8,
        min_steps=20,
        lr_grid=(0.02, 0.05),
        batch=8,
        steps=6,
        probe_every=3,
        top_k=2,
        lanczos_tol=1e-3,
        hutchinson_samples=3,
        cov_batch=4,
        test_size=None,
        keep_every=2,
        project_max_steps=20,
    ),
    # the paper's Fig. 2a setting as far as this data allows (it used MNIST, a 6,220-parameter MLP): 500
    # images, GD-like minimum (10,000 steps), longer runs, 3 seeds. Meant for a GPU.
    "paper": Preset(
        name="paper",
        width=1.0,
        min_steps=10000,
        lr_grid=(0.01, 0.05, 0.1),
        steps=5000,
        probe_every=250,
        top_k=20,
        lanczos_tol=1e-3,
        hutchinson_samples=50,
        seeds=3,
        test_size=None,
        keep_every=250,
    ),
}


def label_sgd(eta: float) -> str:
    return f"sgd_lr{eta:g}"


def points(p: Preset, minimum: str, noise_std: float, device: str = "cpu") -> list[Point]:
    """SGD at each learning rate (knob learning_rate), GD and GD + noise at lr_fixed, all from ``minimum``."""
    pts = [
        Point(
            label_sgd(lr),
            p.train_config(lr=lr, init_from=minimum, keep_every=p.keep_every, device=device),
            {"learning_rate": lr},
        )
        for lr in p.lr_grid
    ]
    pts.append(Point("gd", p.train_config(lr=p.lr_fixed, optimizer="gd", init_from=minimum, device=device)))
    pts.append(
        Point(
            "gd_noise",
            p.train_config(lr=p.lr_fixed, optimizer="gd-noise", noise_std=noise_std, init_from=minimum, device=device),
        )
    )
    return pts


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 2 or np.ptp(x[ok]) == 0:
        return math.nan
    return float(np.polyfit(x[ok], y[ok], 1)[0])


def logdet_top(rows: list[dict], k: int) -> np.ndarray:
    """sum_i log lambda_i over lambda_H_1..k of each row, the eigenvalues above 1e-6 lambda_1 only."""
    lam = np.stack([column(rows, f"lambda_H_{i + 1}", strict=False) for i in range(k)], axis=1)
    keep = lam > 1e-6 * lam[:, :1]
    return np.where(keep, np.log(np.where(keep, lam, 1.0)), 0.0).sum(axis=1)


def summarise_run(rows: list[dict], cfg: TrainConfig, floor: float) -> dict:
    """The per-run numbers of the module docstring (NaN where undefined)."""
    probes = [r for r in rows if r.get("reason") != "diverged"]
    step = column(probes, "step", strict=False)
    tr = column(probes, "trace_hessian", strict=False)
    loss = column(probes, "measure_loss", strict=False)
    ld = logdet_top(probes, cfg.top_k) if probes else np.zeros(0)
    later = step > 0
    neg = column(probes, "neg_eig_sum", strict=False)
    x, y = loss[later] - floor, neg[later]
    ok = np.isfinite(x) & np.isfinite(y)
    fit = np.polyfit(x[ok], y[ok], 1) if ok.sum() >= 2 and np.ptp(x[ok]) > 0 else (math.nan, math.nan)
    drift = _slope(step, tr)
    out = {
        "eta": cfg.lr,
        "S": cfg.batch,
        "noise_std": cfg.noise_std,
        "steps": probes[-1]["step"] if probes else 0,
        "diverged": float(any(r.get("reason") == "diverged" for r in rows)),
        "initial_trace": float(tr[0]) if probes else math.nan,
        "final_trace": float(tr[-1]) if probes else math.nan,
        "trace_drift": drift,
        "trace_drift_over_eta2": drift / cfg.lr**2,
        "logdet_drift": _slope(step, ld),
        "mean_loss": float(np.nanmean(loss[later])) if later.any() else math.nan,
        "excess_loss": float(np.nanmean(loss[later])) - floor if later.any() else math.nan,
        "r5_slope": float(fit[0]),
        "r5_intercept": float(fit[1]),
        "final_test_acc": float(probes[-1].get("test_acc", math.nan) or math.nan) if probes else math.nan,
    }
    for k in ("cos_HK", "c_fit_HK", "cos_eK1_eH1", "overlap_K_H", "alpha_eH1"):
        v = column(probes, k, strict=False)
        out[f"mean_{k}"] = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
    return out


def find_minimum(preset: Preset, out: Path, images, labels, *, device: str = "cpu", progress: bool = True) -> dict:
    """Trains (or reads back) the minimum into ``out/minimum``; writes ``out/minimum.pt`` (its weights) and
    returns {path, loss, floor, steps}."""
    from dnn.store import save_tensors
    from dnn.train import train
    from valleysim.jsonout import atomic_write

    store = train(preset.minimum_config(device), out / "minimum", images, labels, progress=progress)
    path = out / "minimum.pt"
    if not path.exists():
        save_tensors(store.load_checkpoint()["model"], path)
    last = store.rows()[-1]
    info = {
        "path": str(path),
        "loss": last["measure_loss"],
        "accuracy": last["measure_acc"],
        "floor": smoothed_entropy(preset.label_smoothing),
        "steps": last["step"],
    }
    atomic_write(out / "minimum.json", (json.dumps(info, indent=2) + "\n").encode())
    return info


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
    """The minimum, the noise calibration at it, the runs from it; writes the CSVs, summary.json, report.md,
    the figure; returns the summary (with ``minimum`` and ``noise_calibration``)."""
    from dnn.store import load_tensors
    from dnn.walk_study import Preset as WalkPreset
    from dnn.walk_study import sgd_noise_std
    from valleysim.jsonout import atomic_write, dumps, read_json

    out = open_study(out, "valley", preset.name, images, labels, test)
    minimum = find_minimum(preset, out, images, labels, device=device, progress=progress)
    cal = out / "noise_calibration.json"
    if cal.exists():
        noise = read_json(cal)
    else:
        wp = WalkPreset(
            name="valley-calibration",
            model=preset.model,
            width=preset.width,
            n_train=preset.n_train,
            noise_batch=preset.batch,
            measure_size=preset.n_train,
        )
        state = load_tensors(minimum["path"], minimum["path"])
        noise = sgd_noise_std(
            wp, images, labels, device=device, state_dict=state, label_smoothing=preset.label_smoothing
        )
        atomic_write(cal, (dumps(noise, indent=2) + "\n").encode())
    pts = points(preset, minimum["path"], noise["noise_std"], device)
    seed_list = seeds_for(seeds, preset.seeds)
    floor = minimum["floor"]
    per_run = run_study(
        pts,
        seed_list,
        out,
        images,
        labels,
        summarise_run=lambda rows, cfg: summarise_run(rows, cfg, floor),
        test=test,
        progress=progress,
        executor=executor,
        source=source,
    )
    paths = projected_paths(preset, out, pts, seed_list, images, labels, test, minimum, progress=progress)
    for r in per_run:
        r.update(path_summary(paths.get((r["label"], r["seed"])), floor))
    curves = {(p.label, s): _curve(out, p.label, s, preset.top_k) for p in pts for s in seed_list}
    summary = finish(
        out,
        preset.name,
        seed_list,
        per_run,
        pts,
        SIGNS,
        lambda s: report(preset, s, minimum, noise),
        lambda s, path: figure(preset, pts, curves, s, floor, path),
        "valley_study.png",
    )
    if paths:
        path_figure(preset, paths, floor, out / "projected_path.png")
    return {**summary, "minimum": minimum, "noise_calibration": noise}


def projected_paths(preset: Preset, out: Path, pts, seeds, images, labels, test, minimum: dict, progress=True) -> dict:
    """{(label, seed): dnn.projected_path.projected_path(...)} for every run that kept its weights (the SGD
    grid): projections by heavy-ball GD on the training loss to the minimum's loss, the threshold of line
    connectedness at ``connect_factor`` x the minimum's excess loss, and at each projection the Hutchinson
    Tr H (+- SE, ``hutchinson_samples`` probes) and the test loss / accuracy (plain cross-entropy on the
    first ``test_size`` test images). Cached per run in ``out/projected/<label>_seed<k>.json``."""
    import dataclasses

    import torch
    from tqdm import tqdm

    from dnn.data import channel_stats
    from dnn.eigen import hutchinson_trace_frobenius
    from dnn.objective import Objective
    from dnn.projected_path import projected_path
    from dnn.store import load_tensors
    from dnn.study import run_dir
    from dnn.train import _model_data, measurement_objective, run_model, uses_channels_last
    from valleysim.jsonout import atomic_write, dumps, read_json

    runs = [(p, sd) for p in pts if p.cfg.keep_every for sd in seeds]
    if not runs:
        return {}
    (out / "projected").mkdir(exist_ok=True)
    x, y = images[: preset.n_train], labels[: preset.n_train]
    mean, std = channel_stats(x)
    floor = minimum["floor"]
    target, threshold = minimum["loss"], floor + preset.connect_factor * (minimum["loss"] - floor)
    found = {}
    for p, sd in tqdm(runs, desc="projected paths", disable=not progress):
        cache = out / "projected" / f"{p.label}_seed{sd}.json"
        if cache.exists():
            found[(p.label, sd)] = read_json(cache)
            continue
        cfg = dataclasses.replace(p.cfg, seed=sd)
        shape = (x.shape[3], x.shape[1], x.shape[2])
        model = run_model(cfg, shape).to(torch.device(cfg.device))
        obj = measurement_objective(cfg, model, x, y, mean, std, size=len(x))
        tst = None
        if test is not None and preset.test_size != 0:
            k = len(test[0]) if preset.test_size is None else preset.test_size
            tx = _model_data(test[0][:k], mean, std, uses_channels_last(cfg))
            tst = Objective(model, tx, torch.as_tensor(np.asarray(test[1][:k])), dtype=obj.dtype, device=obj.device)
        weights = run_dir(out, p.label, sd) / "weights"
        steps = sorted(int(f.stem.removeprefix("step")) for f in weights.glob("step*.pt"))

        def load(step: int):
            path = weights / f"step{step:07d}.pt"
            model.load_state_dict(load_tensors(path, str(path), cfg.device))
            return obj.load(model).theta0.clone()

        def measure(theta):
            tr = hutchinson_trace_frobenius(
                lambda v: obj.hvp(v, theta=theta), theta, n_samples=preset.hutchinson_samples, seed=sd
            )
            m = {"trace_hessian": tr["trace"], "trace_hessian_se": tr["trace_se"]}
            if tst is not None:
                m.update(test_loss=tst.loss(theta), test_acc=tst.accuracy(theta))
            return m

        res = projected_path(
            steps,
            load,
            obj,
            coarse=preset.path_coarse,
            lr=preset.min_lr,
            momentum=preset.min_momentum,
            target=target,
            threshold=threshold,
            max_steps=preset.project_max_steps,
            measure=measure,
        )
        res.update(target=target, threshold=threshold)
        atomic_write(cache, (dumps(res, indent=1) + "\n").encode())
        found[(p.label, sd)] = res
    return found


def path_summary(path: dict | None, floor: float) -> dict:
    """Per run: path_points (projected states), path_reached (fraction whose GD reached the target),
    path_connected (fraction of the finest segments, those not split further, that are line connected),
    path_max_excess (the largest excess loss on any finest segment), path_trace_drift (slope of Tr H
    against the step over the projections, per step), path_trace_first / _last."""
    if path is None:
        return {}
    pts, finest = path["points"], [s for s in path["segments"] if not s["refined"]]
    step = np.array([q["step"] for q in pts], dtype=float)
    tr = np.array([q["trace_hessian"] for q in pts], dtype=float)
    return {
        "path_points": float(len(pts)),
        "path_reached": float(np.mean([q["reached"] for q in pts])),
        "path_connected": float(np.mean([s["connected"] for s in finest])) if finest else math.nan,
        "path_max_excess": max(s["max_loss"] for s in finest) - floor if finest else math.nan,
        "path_trace_drift": _slope(step, tr),
        "path_trace_first": float(tr[0]),
        "path_trace_last": float(tr[-1]),
    }


def path_figure(preset: Preset, paths: dict, floor: float, path: Path) -> None:
    """Figs. 1 and 3 of the paper: along each projected path (every run), the training excess loss at the
    projections with each finest segment's worst excess loss, the test loss, and Tr H +- SE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    labels = list(dict.fromkeys(lab for lab, _ in paths))
    for (lab, sd), res in paths.items():
        c = f"C{labels.index(lab)}"
        name = lab if sd == min(s for lb, s in paths if lb == lab) else None
        pts = res["points"]
        step = [q["step"] for q in pts]
        axes[0].plot(step, [q["loss"] - floor for q in pts], "o-", color=c, ms=3, lw=1, label=name)
        for s in (s for s in res["segments"] if not s["refined"]):
            axes[0].plot([s["step_a"], s["step_b"]], [s["max_loss"] - floor] * 2, "-", color=c, lw=3, alpha=0.3)
        if "test_loss" in pts[0]:
            axes[1].plot(step, [q["test_loss"] for q in pts], "o-", color=c, ms=3, lw=1, label=name)
        axes[2].errorbar(
            step,
            [q["trace_hessian"] for q in pts],
            yerr=[q["trace_hessian_se"] for q in pts],
            color=c,
            lw=1,
            capsize=2,
            label=name,
        )
    threshold = next(iter(paths.values()))["threshold"]
    axes[0].axhline(threshold - floor, color="k", ls="--", lw=0.8, label="connectedness threshold")
    axes[0].set(xlabel="step of the SGD run", ylabel="excess training loss (bars: worst on the segment)", yscale="log")
    axes[1].set(xlabel="step of the SGD run", ylabel="test loss at the projection")
    axes[2].set(xlabel="step of the SGD run", ylabel="Tr H at the projection (+- SE)")
    for a in axes:
        a.legend(fontsize=6)
    fig.suptitle(f"projected paths ({preset.name}): GD projections of the kept SGD states", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _curve(out, label: str, seed: int, k: int) -> dict:
    rows = run_rows(out, label, seed)
    cv = {key: column(rows, key, strict=False) for key in ("step", "trace_hessian", "trace_hessian_se")}
    cv.update({key: column(rows, key, strict=False) for key in ("measure_loss", "neg_eig_sum", "cos_HK", "c_fit_HK")})
    cv["logdet_top"] = logdet_top(rows, k)
    return cv


def figure(preset: Preset, pts: list[Point], curves: dict, s: dict, floor: float, path: Path) -> None:
    """Tr H +- SE along the run (every seed) per point; log det of the top-k part; R5: neg_eig_sum
    against loss - L_floor over every probe after step 0; cos_HK along the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, p in enumerate(pts):
        c = colours[i % len(colours)]
        for j, sd in enumerate(s["seeds"]):
            cv = curves[(p.label, sd)]
            lab = p.label if j == 0 else None
            axes[0, 0].errorbar(
                cv["step"],
                cv["trace_hessian"],
                yerr=np.nan_to_num(cv["trace_hessian_se"]),
                color=c,
                lw=1,
                capsize=2,
                label=lab,
            )
            axes[0, 1].plot(cv["step"], cv["logdet_top"], "-", color=c, lw=1, label=lab)
            later = cv["step"] > 0
            axes[1, 0].plot(cv["measure_loss"][later] - floor, cv["neg_eig_sum"][later], "o", color=c, ms=3, label=lab)
            axes[1, 1].plot(cv["step"], cv["cos_HK"], "-", color=c, lw=1, label=lab)
    axes[0, 0].set(xlabel="step", ylabel="Tr H (Hutchinson +- SE)")
    axes[0, 1].set(xlabel="step", ylabel=f"log det, top {preset.top_k}")
    axes[1, 0].set(xlabel="loss - L_floor", ylabel=f"sum of the {preset.top_k} most negative eigenvalues")
    axes[1, 1].set(xlabel="step", ylabel="cos_HK = tr(HK)/(||H||_F ||K||_F)")
    for a in axes.ravel():
        a.legend(fontsize=6)
    fig.suptitle(f"valley study ({preset.name}, {len(s['seeds'])} seeds)", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(preset: Preset, s: dict, minimum: dict, noise: dict) -> str:
    by = {(r["label"], r["quantity"]): r for r in s["across_seeds"]}
    labels = list(dict.fromkeys(r["label"] for r in s["per_run"]))

    def table(keys):
        lines = ["| point | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        lines += [f"| {lab} | " + " | ".join(cell(by.get((lab, k))) for k in keys) + " |" for lab in labels]
        return lines

    lines = [
        f"# Valley study, preset `{preset.name}` ({len(s['seeds'])} seeds per point)\n",
        f"The minimum: {preset.model} at width {preset.width:g}, the first {preset.n_train} training images, label "
        f"smoothing {preset.label_smoothing:g}, {minimum['steps']} SGD steps (momentum {preset.min_momentum:g}, eta "
        f"{preset.min_lr:g}, S {preset.min_batch}): loss {minimum['loss']:.4f} (L_floor = {minimum['floor']:.4f}), "
        f"training accuracy {minimum['accuracy']:.3f}. From it: {preset.steps} steps per run, probes every "
        f"{preset.probe_every}. GD + noise: sigma = {noise['noise_std']:.4g} (sigma^2 P = c(S, N) Tr K at the "
        f"minimum, S = {preset.batch}, Tr K = {noise['trace_K']:.4g}, P = {noise['P']:,}).\n",
        "Mean over seeds [95% t interval].\n",
        "## Hessian trace and log-determinant drift (R3, R4)\n",
        *table(
            (
                "initial_trace",
                "final_trace",
                "trace_drift",
                "trace_drift_over_eta2",
                "logdet_drift",
                "mean_loss",
                "excess_loss",
            )
        ),
        "",
        "## Alignment of the gradient covariance K with H (the paper's assumption C ~ c H)\n",
        *table(("mean_cos_HK", "mean_c_fit_HK", "mean_cos_eK1_eH1", "mean_overlap_K_H", "mean_alpha_eH1")),
        "",
        "## R5: the most negative eigenvalues against the excess loss (paper, Fig. 2a: w = -40.07, b ~ 0)\n",
        f"neg_eig_sum = w (loss - L_floor) + b per run over its probes after step 0; neg_eig_sum sums the "
        f"{preset.top_k} most negative eigenvalues only (a lower bound on the negative mass).\n",
        *table(("r5_slope", "r5_intercept", "final_test_acc")),
        "",
        "## The projected path (paper, Figs. 1 and 3)\n",
        f"Every {preset.keep_every} steps of each SGD run projected by GD (momentum {preset.min_momentum:g}, eta "
        f"{preset.min_lr:g}, at most {preset.project_max_steps} steps) to the minimum's loss {minimum['loss']:.4f}; "
        f"consecutive projections line connected when the loss at 10 points of the segment stays within "
        f"{preset.connect_factor:g} x the minimum's excess loss; pairs {preset.path_coarse} kept states apart are "
        "split recursively until connected or adjacent. Tr H at the projections (Hutchinson).\n",
        *table(
            (
                "path_points",
                "path_reached",
                "path_connected",
                "path_max_excess",
                "path_trace_first",
                "path_trace_last",
                "path_trace_drift",
            )
        ),
        "",
        "## Orderings (Kendall tau per seed)\n",
        "Predicted along eta (S fixed): the trace falls faster (tau(eta, drift) < 0) and ends lower, the loss "
        "equilibrates higher.\n",
        *orderings_table(s["orderings"]),
    ]
    return "\n".join(lines) + "\n"
