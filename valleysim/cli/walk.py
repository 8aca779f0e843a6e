"""``valleysim walk``: GD, SGD or GD + isotropic noise in a valley with walls and a rough floor (R9)."""

from __future__ import annotations

import argparse

from valleysim import argtypes as T
from valleysim.errors import UserInputError
from valleysim.jsonout import dumps
from valleysim.walk import OPTIMIZERS, WalkLandscape, per_bin, simulate, summarise


def add_parser(sub) -> None:
    w = sub.add_parser(
        "walk",
        help="a walk with SGD: height above the valley floor, barriers, cosine of "
        "consecutive gradients, distance travelled (R9)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    w.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="sgd",
        help="gd: full gradient; sgd: mini-batches of S without replacement; gd-noise: full gradient "
        "+ isotropic Gaussian noise with SGD's noise power at batch S at the start",
    )
    w.add_argument(
        "--eta",
        type=T.positive,
        default=2.0,
        help="learning rate > 0 (the wall's curvature at the floor "
        "is about 0.9: eta k < 1 over-damped, 1-2 under-damped, 2-4 GD bounces between the walls)",
    )
    w.add_argument(
        "--batch",
        type=T.count,
        metavar="S",
        default=4,
        help="mini-batch size (sgd; gd-noise: sets the noise power); ignored by gd",
    )
    w.add_argument("--steps", type=T.integer(1, 10**8), default=2000)
    w.add_argument("--trajectories", type=T.integer(1, 10**7), default=64, help="ensemble size R")
    w.add_argument("--seed", type=T.seed, default=0)
    w.add_argument(
        "--noise-factor",
        type=T.positive,
        default=1.0,
        help="gd-noise: total isotropic variance = factor x SGD's tr Cov at the start",
    )
    w.add_argument("--n-examples", type=T.count, default=32, help="N, examples in the finite sum")
    w.add_argument(
        "--wall-width", type=float, default=2.0, help="w of the saturating wall, in [1e-3, 1e6] (inf: quadratic)"
    )
    w.add_argument("--barrier", type=T.nonnegative, default=0.02, help="barrier height b on the floor")
    w.add_argument("--slope", type=T.finite, default=0.02, help="mean slope s along the floor")
    w.add_argument("--landscape-seed", type=T.seed, default=0, help="seed of the per-example k_i, a_i, e_i")
    w.add_argument(
        "--bins", type=T.count, default=4, help="windows of the run (the paper's epochs) for the per-window table"
    )
    w.add_argument("--json", action="store_true", help="print one JSON object")
    w.set_defaults(func=cmd_walk)


def cmd_walk(args) -> int:
    if args.bins > args.steps:
        raise UserInputError(
            f"--bins must be in 1..{args.steps} (at most one window per step of --steps); got {args.bins}"
        )
    land = WalkLandscape.make(
        n_examples=args.n_examples,
        width=args.wall_width,
        barrier=args.barrier,
        slope=args.slope,
        seed=args.landscape_seed,
    )
    run = simulate(
        land,
        args.eta,
        None if args.optimizer == "gd" else args.batch,
        optimizer=args.optimizer,
        steps=args.steps,
        trajectories=args.trajectories,
        seed=args.seed,
        n_bins=args.bins,
        n_rec=0,
        noise_factor=args.noise_factor,
    )
    summary = summarise(run)
    summary["per_window"] = {k: [{"mean": m, "se": se} for m, se in v] for k, v in per_bin(run).items()}
    if args.json:
        print(dumps(summary, indent=2))
    else:
        print(format_summary(summary))
    return 0


_ROWS = (
    ("height", "height above floor (mean/step)"),
    ("cos", "cos(g_{t-1}, g_t)"),
    ("barriers_total", "barriers crossed (whole run)"),
    ("floor_rise_fraction", "floor rises (fraction)"),
    ("distance", "||theta_T - theta_0||"),
    ("progress", "progress y_T - y_0"),
    ("final_loss", "final full loss"),
    ("wall_amplitude", "|x_T| (across the valley)"),
    ("flat_norm", "|z_T| (flat directions)"),
)


def format_summary(s: dict) -> str:
    """Mean ± SE over trajectories, one line per metric, then the per-window table."""
    head = (
        f"walk  optimizer={s['optimizer']}  eta={s['eta']:g} (eta k = {s['eta_k']:.3g})  "
        f"S={s['batch'] if s['batch'] is not None else 'N (full)'}  steps={s['steps']}  "
        f"trajectories {s['completed']}/{s['trajectories']}"
    )
    if s["optimizer"] == "gd-noise":
        head += f"  sigma={s['sigma']:.4g}/coordinate"
    lines = [head]
    if s["diverged"]:
        lines.append(f"  {s['diverged']} trajectories diverged; first at step {s['first_divergence_step']}")
    if s["completed"] == 0:
        return "\n".join(lines)
    lines.append("  averages over the second half of the run (cos, height, floor rises); end point values")
    for key, name in _ROWS:
        lines.append(f"  {name:<34}{s[key]:>12.5g} +- {s[key + '_se']:.2g}")
    pw = s["per_window"]
    nb = len(pw["height"])
    lines.append("  per window of steps: " + "  ".join(f"{'w' + str(j + 1):>16}" for j in range(nb)))
    for key in ("height", "cos", "barriers", "floor_rise_fraction"):
        cells = "  ".join(f"{c['mean']:>8.4g} +- {c['se']:<5.2g}" for c in pw[key])
        lines.append(f"  {key:<20} {cells}")
    return "\n".join(lines)
