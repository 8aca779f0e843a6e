"""The demo's network section: full-batch GD on a narrow SimpleCNN sharpens to the edge of stability.

R1 with c = 0 (S = N): along the top Hessian eigenvector GD multiplies the error by 1 - eta lambda per
step, so the one-step stability factor is q = (1 - eta lambda_max)^2 (``theory.stability_factor`` with
s^2 = 0) and the edge is lambda_max = 2 / eta (q = 1). Progressive sharpening drives lambda_max up to
that edge, where GD stops sharpening and hovers around it (Cohen et al.'s edge of stability, the
break-even point of R2 at S = N).

The run: ``valleysim dnn train`` with ``optimizer = gd`` on the first ``n_train`` CIFAR-10 images (no
augmentation), top-1 Lanczos on the whole training set every ``probe_every`` steps, test accuracy on
the first ``test_size`` test images. The summary reads the edge off the rows: the first probe with
lambda_max >= ``REACHED`` x 2 / eta, then the median (and quartiles) of eta lambda_max / 2 over the
probes after it. Those probes come from one run and are correlated, so they get quartiles, not an SE.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dnn.config import TrainConfig
from valleysim.theory import stability_factor

REACHED = 0.9  # lambda_max within 10% of 2 / eta counts as having reached the edge

DEFAULTS = dict(
    model="simplecnn",
    width=0.25,
    optimizer="gd",
    lr=0.02,
    epochs=400,  # GD: one step per epoch
    n_train=1000,
    augment=False,
    probes=("lanczos",),
    probe_every=20,
    probe_epochs=False,
    measure_size=1000,
    top_k=1,
    lanczos_tol=1e-3,
    test_size=1000,
    seed=0,
)


def config(**overrides) -> TrainConfig:
    """The demo's run (``DEFAULTS``) with ``overrides`` (TrainConfig fields)."""
    return TrainConfig(**{**DEFAULTS, **overrides})


def summarise(rows: list[dict], eta: float) -> dict:
    """The edge of stability read off probe rows (each with ``step`` and ``lambda_max``) of a GD run at ``eta``.

    ``edge`` = 2 / eta; per row ``ratio`` = lambda_max / edge and ``q`` = (1 - eta lambda_max)^2;
    ``reached_step``: the first step with ratio >= REACHED (None: not reached); after it the median
    and quartiles of the ratio and the fraction of probes with q > 1 (GD unstable along e_1 there).
    """
    edge = 2.0 / eta
    probes = [r for r in rows if r.get("lambda_max") is not None and math.isfinite(r["lambda_max"])]
    table = [
        dict(
            step=r["step"],
            lambda_max=r["lambda_max"],
            ratio=r["lambda_max"] / edge,
            q=float(stability_factor(eta, r["lambda_max"], 0.0, 0.0)),
            loss=r.get("measure_loss"),
            test_acc=r.get("test_acc"),
        )
        for r in probes
    ]
    first = next((i for i, t in enumerate(table) if t["ratio"] >= REACHED), None)
    out = dict(eta=eta, edge=edge, probes=table, reached=first is not None, reached_step=None)
    if first is None:
        top = max((t["lambda_max"] for t in table), default=math.nan)
        out["note"] = (
            f"lambda_max stayed below {REACHED:g} x 2/eta = {REACHED * edge:.4g} (max {top:.4g} over "
            f"{len(table)} probes): train longer to reach the edge"
        )
        return out
    after = np.array([t["ratio"] for t in table[first:]])
    q_after = np.array([t["q"] for t in table[first:]])
    q25, q50, q75 = np.quantile(after, [0.25, 0.5, 0.75])
    out.update(
        reached_step=table[first]["step"],
        probes_after=int(after.size),
        median_ratio=float(q50),
        ratio_q25=float(q25),
        ratio_q75=float(q75),
        fraction_unstable=float(np.mean(q_after > 1.0)),
    )
    return out


def run(images, labels, out: str | Path, *, test=None, progress: bool = False, **overrides) -> dict:
    """Train the demo's GD run into ``out`` (resumable) and summarise it (``summarise``)."""
    from dnn.train import train

    cfg = config(**overrides)
    store = train(cfg, out, images, labels, test=test, progress=progress)
    return dict(summarise(store.rows(), cfg.lr), config=cfg.as_dict(), run_dir=str(out))


def markdown(s: dict, every: int = 2) -> str:
    """The summary line and every ``every``-th probe as a table."""
    c = s["config"]
    head = (
        f"{c['model']} (width {c['width']:g}), full-batch GD on the first {c['n_train']} CIFAR-10 images, "
        f"eta = {s['eta']:g} (2/eta = {s['edge']:.4g}), {c['epochs']} steps, top-1 Lanczos on the whole "
        f"training set every {c['probe_every']} steps.\n\n"
    )
    if s["reached"]:
        head += (
            f"lambda_max reached {REACHED:g} x 2/eta at step {s['reached_step']}; over the {s['probes_after']} "
            f"probes after it lambda_max / (2/eta) has median {s['median_ratio']:.3f} (quartiles "
            f"{s['ratio_q25']:.3f}-{s['ratio_q75']:.3f}; correlated probes of one run, so no SE) and R1's factor "
            f"q = (1 - eta lambda_max)^2 exceeds 1 at {s['fraction_unstable']:.0%} of them.\n\n"
        )
    else:
        head += f"Edge not reached: {s['note']}.\n\n"
    lines = [
        "| step | lambda_max | lambda_max / (2/eta) | R1 factor q | training loss | test acc |",
        "|---|---|---|---|---|---|",
    ]
    for t in s["probes"][::every] + ([s["probes"][-1]] if (len(s["probes"]) - 1) % every else []):
        acc = "-" if t["test_acc"] is None else f"{t['test_acc']:.3f}"
        lines.append(
            f"| {t['step']} | {t['lambda_max']:.2f} | {t['ratio']:.3f} | {t['q']:.3f} | {t['loss']:.4f} | {acc} |"
        )
    return head + "\n".join(lines)


def plot(s: dict, path: Path) -> None:
    """lambda_max against the step with the edge 2 / eta; the training loss on the right axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [t["step"] for t in s["probes"]]
    fig, ax = plt.subplots(figsize=(6.4, 3.6), constrained_layout=True)
    ax.plot(steps, [t["lambda_max"] for t in s["probes"]], "o-", ms=3, label=r"$\lambda_{max}$ (Lanczos)")
    ax.axhline(s["edge"], color="k", ls="--", lw=1, label=r"$2/\eta$ (R1: q = 1)")
    ax.set(xlabel="GD step", ylabel=r"$\lambda_{max}$ of the training loss", title="edge of stability on a network")
    ax2 = ax.twinx()
    ax2.plot(steps, [t["loss"] for t in s["probes"]], color="C3", lw=1, label="training loss")
    ax2.set(ylabel="training loss")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower right")
    fig.savefig(path, dpi=120)
    plt.close(fig)
