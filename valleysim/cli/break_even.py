"""``valleysim break-even``: progressive sharpening stopped by SGD at the break-even point (R2).

One (eta, S): simulated max curvature, the curvature where growth stops, the
steps to reach it, next to lambda*(eta, S) = 2 / (eta (1 + c sigma^2)).
The landscape, the simulator and the grid sweep (``sweep``) are in ``valleysim.break_even``.
"""

from __future__ import annotations

import argparse

from valleysim import argtypes as T
from valleysim import break_even as bes
from valleysim.errors import UserInputError
from valleysim.jsonout import dumps, json_safe

KEYS = (
    "max_curvature",
    "curvature_at_break_even",
    "mean_late_curvature",
    "steps_to_break_even",
    "max_lambda_H_full",
    "max_lambda_K",
    "median_late_lambda_K",
    "max_trace_H",
    "max_trace_K",
    "min_trace_ratio",
    "final_trace_ratio",
    "final_loss",
)


def add_parser(sub) -> None:
    b = sub.add_parser(
        "break-even",
        help="progressive sharpening vs the break-even curvature lambda*(eta, S) (R2)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    b.add_argument("--eta", type=T.positive, required=True, help="learning rate in [1e-100, 1e100]")
    b.add_argument("--batch", type=T.count, required=True, metavar="S", help="mini-batch size, 1..N (N: full-batch GD)")
    b.add_argument("--n-examples", type=T.integer(2), default=64, metavar="N", help="training-set size")
    b.add_argument(
        "--sigma", type=T.nonnegative, default=1.0, help="per-example curvature spread: s = sigma x mean curvature"
    )
    b.add_argument(
        "--offset",
        type=T.nonnegative,
        default=0.001,
        help="scale of the per-example minima b_i (gradient noise at the full-batch minimum)",
    )
    b.add_argument(
        "--beta",
        type=T.nonnegative,
        default=0.001,
        help="drive: the loss falls by beta per unit of z (speed of sharpening)",
    )
    b.add_argument(
        "--a0",
        type=T.comma_list(T.positive, "numbers > 0"),
        default="1",
        help="starting curvatures of the sharp directions, comma list",
    )
    b.add_argument(
        "--rates",
        type=T.comma_list(T.nonnegative, "numbers >= 0"),
        default="1",
        help="d log a_j / dz of the sharp directions, comma list (several: Conjecture 2)",
    )
    b.add_argument("--landscape-seed", type=T.seed, default=0)
    b.add_argument(
        "--steps",
        type=T.count,
        help="SGD steps (default: 2.5 x the drift time to lambda* + 500, at "
        f"most {bes.MAX_DEFAULT_STEPS:,}; the summary says when that is too few)",
    )
    b.add_argument("--trajectories", type=T.count, default=bes.TRAJECTORIES, help="ensemble size R")
    b.add_argument("--seed", type=T.seed, default=0)
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.set_defaults(func=cmd_break_even)


def landscape_from_args(args) -> bes.SharpeningLandscape:
    a0, rates = args.a0, args.rates
    if len(a0) != len(rates):
        raise UserInputError(f"--a0 and --rates must have the same length; got {len(a0)} and {len(rates)}")
    return bes.SharpeningLandscape.make(
        n_examples=args.n_examples,
        sigma=args.sigma,
        offset=args.offset,
        beta=args.beta,
        a0=a0,
        rates=rates,
        landscape_seed=args.landscape_seed,
    )


def cmd_break_even(args) -> int:
    land = landscape_from_args(args)
    run = bes.simulate(land, args.eta, args.batch, steps=args.steps, trajectories=args.trajectories, seed=args.seed)
    s = {k: json_safe(v) for k, v in bes.summarise(run).items()}
    print(dumps(s, indent=2) if args.json else format_summary(s))
    return 0


def format_summary(s: dict) -> str:
    steps = f"steps={s['steps']}" + (" (capped default)" if s.get("steps_capped") else "")
    lines = [
        f"break-even  eta={s['eta']:g}  S={s['batch']}/N={s['n_examples']} (c={s['variance_factor']:.4g})  "
        f"sigma={s['sigma']:g}  beta={s['beta']:g}  {steps}  trajectories={s['trajectories']}",
        f"  predicted_break_even = {s['predicted_break_even']:.5g}   (full-batch edge 2/eta = "
        f"{s['full_batch_edge']:.5g}; almost-sure edge {_num(s['almost_sure_break_even'], '.5g')})",
    ]
    if s["diverged"]:
        lines.append(f"  diverged: {s['diverged']} trajectories, first at step {s['first_divergence_step']}")
    if "error" in s:
        return "\n".join(lines + [f"  {s['error']}"])
    lines.append(
        f"  reached break-even: {'yes' if s['reached'] else 'NO'} ({s['reached_trajectories']} of "
        f"{s['trajectories'] - s['diverged']} trajectories)"
    )
    for k in KEYS:
        v, se = s.get(k), s.get(k + "_se")
        if len(s["a0"]) == 1 and k in ("max_trace_H", "min_trace_ratio", "final_trace_ratio"):
            continue  # one sharp direction: Tr(H_xx) = lambda_max
        lines.append(
            f"  {k:<24} = " + ("not reached" if v is None else f"{v:.5g}") + ("" if se is None else f" +- {se:.2g}")
        )
    lines.append(
        f"  max / predicted = {s['max_over_predicted']:.4f}   curvature_at_break_even / predicted = "
        f"{_num(s['plateau_over_predicted'], '.4f')}"
    )
    if s.get("note"):
        lines.append(f"  note: {s['note']}")
    return "\n".join(lines)


def _num(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)
