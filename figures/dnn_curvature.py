"""The curvature toolkit along one real training run: the SLQ spectral density of H at every probe, the
whole negative mass and the trace (R5), the 25-batch Gram estimate of K against the exact K, and the
Gauss-Newton part of H (R6 on a network).

Reads a finished (or interrupted) ``valleysim dnn train`` directory whose probes include ``density``
(and, for the other panels, ``lanczos``, ``covariance``, ``exact_covariance``, ``gauss_newton``); writes
nothing into it. Prints one row per probe and writes ``dnn_curvature.png`` and ``.json`` to ``--out``::

    valleysim dnn train --data ../shared/data --model simplecnn --width 0.5 --eta 0.05 --batch 128 \\
        --probe-every 150 --no-probe-epochs --measure-size 256 --slq-starts 3 --slq-steps 40 \\
        --probes lanczos,negative,covariance,exact_covariance,gauss_newton,density --out RUN
    python figures/dnn_curvature.py --run RUN [--data ../shared/data --convergence 40,80,160]

``--convergence M1,M2,...`` (needs ``--data``) reruns the density probe of the last probe step on the
run's final weights with M Lanczos steps per start (same starts: seed cfg.seed + step), to show how far
the negative mass has converged in m (its quadrature bias is O(P L / m), see ``dnn/density.py``); the
run's own m must reproduce the stored row exactly, which the script checks and prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

import _common as C
import numpy as np
import torch

from dnn import density as D
from dnn.config import TrainConfig
from dnn.data import channel_stats, load_cifar10
from dnn.store import RunStore
from dnn.train import measurement_objective, read_run_checkpoint, run_model, weights_problem
from valleysim.errors import UserInputError
from valleysim.jsonout import read_json

DEFAULT_OUT = C.ROOT / "docs" / "figures" / "dnn_curvature"

COLUMNS = [
    ("step", "step", "d"),
    ("measure_loss", "loss", ".3f"),
    ("lambda_H_1", "lambda_H^1", ".3f"),
    ("slq_trace", "tr H (SLQ)", ".1f"),
    ("slq_trace_se", "+- SE", ".1f"),
    ("slq_neg_mass", "neg. mass", ".2f"),
    ("slq_neg_mass_se", "+- SE", ".2f"),
    ("lambda_K_gram_over_exact", "lamK gram/ex", ".3f"),
    ("trace_K_gram_over_exact", "trK gram/ex", ".3f"),
    ("cos_eK1_gram_exact", "cos eK1 g/ex", ".3f"),
    ("second_term_norm_eH1", "|(H-G)e1|/l1", ".3f"),
    ("cos_HG", "cos_HG", ".3f"),
    ("alpha_eH1_exact", "alpha_eH1", ".3f"),
]


def load(run: Path) -> tuple[RunStore, list[dict], dict, dict[int, D.SLQResult]]:
    """The run's store (opened read only), its rows with the density probe, its checkpoint and the density
    probe's quadrature per step from it."""
    if not (run / "config.json").is_file() or not (run / "checkpoint.pt").is_file():
        raise UserInputError(f"--run {run}: not a dnn train directory (needs config.json and checkpoint.pt)")
    store = RunStore(run, read_json(run / "config.json"), create=False)
    rows = [r for r in store.rows() if "slq_trace" in r]
    if not rows:
        raise UserInputError(f"--run {run}: no row has the density probe's columns (run it with --probes density)")
    ck = read_run_checkpoint(run)["state"]
    try:
        slq = {int(k): D.SLQResult.from_state(v) for k, v in ck["state"]["probe_state"].get("slq", {}).items()}
    except (AttributeError, KeyError, TypeError, ValueError):
        raise UserInputError(f"--run {run}: checkpoint.pt holds damaged density quadratures (slq)") from None
    return store, rows, ck, slq


def convergence(store: RunStore, ck: dict, data: str, ms: list[int], last: dict) -> list[dict]:
    """SLQ of the final weights' H at each m in ``ms`` with the run's starts, seed (the last probe's) and torch
    thread count (environment.json), so the run's own m reproduces its row bit for bit."""
    run = store.dir
    env = run / "environment.json"  # the run's torch thread count: float32 reductions split by it
    threads = read_json(env).get("torch_threads") if env.is_file() else None
    if threads:
        torch.set_num_threads(int(threads))
    cfg = TrainConfig.from_stored(store.config)
    if ck["state"]["step"] != last["step"]:
        raise UserInputError(
            f"--run {run}: the checkpoint is at step {ck['state']['step']}, its last probe at "
            f"{last['step']}: --convergence needs a run whose last probe is its final state"
        )
    images, labels = load_cifar10(data, "train", label_order="auto")
    if cfg.n_train is not None:
        images, labels = images[: cfg.n_train], labels[: cfg.n_train]
    model = run_model(cfg, (images.shape[3], images.shape[1], images.shape[2]))
    problem = weights_problem(model, ck["model"])
    if problem:
        raise UserInputError(f"--run {run}: checkpoint.pt does not hold the weights of its config's model ({problem})")
    model.load_state_dict(ck["model"])
    obj = measurement_objective(cfg, model, images, labels, *channel_stats(images))
    out = []
    for m in ms:
        res = D.slq(obj.hvp, obj.theta0, n_starts=cfg.slq_starts, m=min(m, obj.dim), seed=cfg.seed + last["step"])
        row = {"steps": m, **D.probe_metrics(res, cfg.slq_rel_threshold)}
        if m == cfg.slq_steps:
            row["reproduces_run"] = row["slq_neg_mass"] == last["slq_neg_mass"]
        out.append(row)
        print(
            f"  m = {m:>4}: negative mass {row['slq_neg_mass']:.2f} +- {row['slq_neg_mass_se']:.2f}, trace "
            f"{row['slq_trace']:.2f} +- {row['slq_trace_se']:.2f}, log det above {row['slq_threshold']:.3g} "
            f"{row['slq_logdet']:.1f}, count above {row['slq_n_above']:.0f}"
            + (f"  (the run's m: equals its row: {row['reproduces_run']})" if "reproduces_run" in row else ""),
            flush=True,
        )
    return out


def main(argv=None) -> int:
    p = C.T.OneLineParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, type=Path, help="a dnn train directory with density probes")
    p.add_argument("--out", type=C.T.out_dir, default=str(DEFAULT_OUT), help="output directory (PNG + JSON)")
    p.add_argument("--data", help="CIFAR-10 of the run (for --convergence)")
    p.add_argument("--convergence", help="comma-separated Lanczos step counts m to rerun the last density probe with")
    args = p.parse_args(argv)
    ms = []
    if args.convergence:
        try:
            ms = [int(t) for t in args.convergence.split(",")]
        except ValueError:
            ms = [0]
        if not ms or min(ms) < 1:
            raise UserInputError(f"--convergence must be comma-separated integers >= 1, got {args.convergence!r}")
        if not args.data:
            raise UserInputError("--convergence needs --data (the run's CIFAR-10)")
    timer = C.Timer()
    store, rows, ck, slq = load(args.run)
    steps = [r["step"] for r in rows if r["step"] in slq]
    print(f"{args.run}: {len(rows)} probes with the density probe, {len(steps)} quadratures in the checkpoint")
    print(C.table(rows, COLUMNS))
    conv = []
    if ms:
        print(f"negative mass of the last probe (step {rows[-1]['step']}) against the Lanczos steps m per start:")
        conv = convergence(store, ck, args.data, ms, rows[-1])

    fig, ax = C.plt.subplots(2, 2, figsize=(12, 8.5), constrained_layout=True)
    a = ax[0, 0]
    if steps:
        lo = min(float(slq[s].all_nodes().min()) for s in steps)
        hi = max(float(slq[s].all_nodes().max()) for s in steps)
        sigma = 1e-2 * (hi - lo)
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, 3000)
        cmap = C.plt.get_cmap("viridis")
        for i, s in enumerate(steps):
            phi = D.density(slq[s], grid, sigma)
            a.semilogy(
                grid, np.maximum(phi, 1e-8 * phi.max()), color=cmap(i / max(len(steps) - 1, 1)), lw=1, label=f"step {s}"
            )
        last = next(r for r in rows if r["step"] == steps[-1])
        tops = [last[k] for k in sorted(last) if k.startswith("lambda_H_") and k[9:].isdigit()]
        for j, lam in enumerate(tops):
            a.axvline(lam, color="C3", ls="--", lw=0.7, label=f"top Lanczos at step {steps[-1]}" if j == 0 else None)
        res = slq[steps[-1]]
        a.set_title(f"SLQ density of H (P = {res.dim:,}; {res.n_starts} starts x {res.steps} steps; sigma {sigma:.3g})")
    a.set(xlabel="eigenvalue", ylabel="density (integrates to 1)")
    a.legend(fontsize=7)

    x = [r["step"] for r in rows]

    def series(a, key, label, **kw):
        ys = [r.get(key) for r in rows]
        if all(v is None for v in ys):
            return
        y = np.array([np.nan if v is None else v for v in ys], float)
        se = np.array([np.nan if r.get(f"{key}_se") is None else r[f"{key}_se"] for r in rows], float)
        if np.isfinite(se).any():
            a.errorbar(x, y, yerr=2 * np.nan_to_num(se), marker="o", ms=3, capsize=2, label=f"{label} (2 SE)", **kw)
        else:
            a.plot(x, y, marker="o", ms=3, label=label, **kw)

    a = ax[0, 1]
    series(a, "slq_neg_mass", "whole negative mass (SLQ)")
    series(a, "neg_eig_sum", "sum of the most negative (Lanczos on -H)")
    for j, c in enumerate(conv):  # the last probe rerun with m steps per start
        a.errorbar(
            rows[-1]["step"] * (1 + 0.02 * (j + 1)),
            c["slq_neg_mass"],
            yerr=2 * c["slq_neg_mass_se"],
            marker="D",
            ms=4,
            capsize=2,
            color=f"C{3 + j}",
            label=f"last probe rerun, m = {c['steps']}",
        )
    a.axhline(0, color="k", lw=0.5)
    a.set(xlabel="step", ylabel="sum of negative eigenvalues", title="R5: negative mass of H")
    a.legend(fontsize=7)
    b = a.twinx()
    ys = [r.get("slq_trace") for r in rows]
    b.plot(x, ys, color="C7", ls=":", marker="s", ms=3, label="tr H (SLQ)")
    b.set_ylabel("tr H", color="C7")

    a = ax[1, 0]
    for key, label in (
        ("lambda_K_gram_over_exact", "lambda_K^1: Gram / exact"),
        ("trace_K_gram_over_exact", "Tr K: Gram / exact"),
        ("cos_eK1_gram_exact", "|cos(e_K^1 Gram, e_K^1 exact)|"),
    ):
        series(a, key, label)
    a.axhline(1, color="k", lw=0.5)
    a.set(xlabel="step", ylabel="ratio / cosine", title="K: 25-batch Gram estimate against the exact K")
    a.legend(fontsize=7)

    a = ax[1, 1]
    for key, label in (
        ("second_term_norm_eH1", "||(H - G) e_H^1|| / lambda_H^1"),
        ("cos_HG", "cos_HG = tr(HG)/(||H|| ||G||)"),
        ("cos_eG1_eH1", "|cos(e_G^1, e_H^1)|"),
        ("cos_eKx1_eH1", "|cos(e_K^1, e_H^1)| (exact K)"),
    ):
        series(a, key, label)
    a.set(xlabel="step", ylabel="size / cosine", title="R6: Gauss-Newton part and alignments")
    a.legend(fontsize=7)

    data = {
        "run": str(args.run),
        "rows": [{k: r.get(k) for k, _, _ in COLUMNS} for r in rows],
        "convergence": conv,
        "density": {str(s): {"nodes": slq[s].nodes, "weights": slq[s].weights, "dim": slq[s].dim} for s in steps},
    }
    C.save(fig, args.out, "dnn_curvature", data, timer)
    return 0


if __name__ == "__main__":
    raise SystemExit(C.report_errors(main, sys.argv[1:], prog=C.Path(__file__).name))
