"""Figures for valley runs: ensemble means with bands, and the integrated prediction."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy.integrate import cumulative_trapezoid  # noqa: E402

from valleysim.stats import mean_se  # noqa: E402
from valleysim.valley.sim import ValleyRun, predictions  # noqa: E402


def ensemble_band(run: ValleyRun, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(window steps (n_rec,), mean (n_rec,), standard error (n_rec,)) of observable ``name``."""
    y = run.observable(name)[run.completed]
    steps = np.arange(y.shape[1]) * run.record_every
    return (steps, *mean_se(y, axis=0))


def predicted_path(run: ValleyRun, name: str) -> np.ndarray | None:
    """f_start + the predicted one-step drift integrated along each trajectory, ensemble mean (n_rec,)."""
    if not run.land.valley_form:
        return None
    ok = run.completed
    drift = predictions(run, run.coords[ok][:, :, run.land.n :])[f"{name}_drift"]  # (R_ok, n_rec)
    start = run.observable(name)[ok][:, 0]
    cum = cumulative_trapezoid(drift, dx=run.record_every, axis=1, initial=0.0)
    return (start[:, None] + cum).mean(axis=0)


def plot_run(run: ValleyRun, path: Path, label: str | None = None, axes=None):
    """Trace and log-det against the window step: mean +- 2 SE band and the prediction (dashed)."""
    own = axes is None
    if own:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    label = label or run.noise.name
    for ax, name in zip(axes, ("trace", "logdet")):
        steps, mean, se = ensemble_band(run, name)
        (line,) = ax.plot(steps, mean, label=f"{label} (simulated)")
        ax.fill_between(steps, mean - 2 * se, mean + 2 * se, color=line.get_color(), alpha=0.25, lw=0)
        pred = predicted_path(run, name)
        if pred is not None:
            ax.plot(steps, pred, "--", color=line.get_color(), lw=1, label=f"{label} (theory)")
        ax.set_xlabel("step after burn-in")
        ax.set_ylabel({"trace": "Hessian trace  sum lambda_i", "logdet": "log det (non-degenerate)"}[name])
        ax.legend(fontsize=8)
    if own:
        fig.suptitle(f"{run.land.name}, eta = {run.eta:g}, {run.completed.sum()} trajectories; band = 2 SE")
        fig.savefig(path, dpi=120)
        plt.close(fig)
    return axes
