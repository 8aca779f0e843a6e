"""``valleysim valley``: SGD in a degenerate valley, measured drift next to the derived one."""

from __future__ import annotations

import argparse

import numpy as np

from valleysim import argtypes as T
from valleysim.errors import UserInputError
from valleysim.jsonout import dumps, json_safe
from valleysim.valley import sim as vsim
from valleysim.valley.landscape import CATALOGUE, ValleyLandscape, catalogue
from valleysim.valley.noise import NOISES, make_noise


def add_parser(sub) -> None:
    v = sub.add_parser(
        "valley",
        help="trace / log-det drift in a degenerate valley: simulation vs theory (R3-R5)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    v.add_argument(
        "--loss", required=True, help=f"sympy expression of the loss, or a catalogue name: {', '.join(CATALOGUE)}"
    )
    v.add_argument("--nondegenerate", help="comma-separated non-degenerate coordinates theta (with an expression)")
    v.add_argument("--degenerate", help="comma-separated degenerate coordinates theta_hat (with an expression)")
    v.add_argument(
        "--init", default="", help="starting point, e.g. 't3=2,t4=2' (unnamed coordinates: catalogue default, or 0)"
    )
    v.add_argument("--noise", default="sgd", help=f"one of {', '.join(NOISES)}")
    v.add_argument("--noise-scale", type=T.positive, help="noise scale > 0 (default c(S, M) = (M - S) / (S (M - 1)))")
    v.add_argument("--eta", type=T.positive, required=True, help="learning rate > 0")
    v.add_argument("--batch", type=T.count, metavar="S", help="mini-batch size")
    v.add_argument(
        "--n-examples",
        "--dataset-size",
        dest="dataset_size",
        type=T.integer(2),
        metavar="M",
        help="training-set size (finite sums: their own)",
    )
    v.add_argument("--steps", type=T.count, default=1000, help="steps in the measurement window")
    v.add_argument(
        "--burn-in", type=T.natural, default=vsim.BURN_IN, help="steps before the window (equilibrates theta)"
    )
    v.add_argument("--trajectories", type=T.integer(2), default=vsim.TRAJECTORIES, help="ensemble size R (>= 2)")
    v.add_argument(
        "--record-every",
        type=T.count,
        help=f"record observables every k window steps (default steps/{vsim.RECORDS}; the predictions are "
        f"withheld when halving it would move them by more than {vsim.SCHEDULE_RTOL:g})",
    )
    v.add_argument("--seed", type=T.seed, default=0)
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.add_argument(
        "--out",
        "--plot",
        type=T.out_dir,
        metavar="DIR",
        help="write valley.png (trace and log-det with bands) and valley.json to DIR",
    )
    v.set_defaults(func=cmd_valley)


def landscape_from_args(args) -> ValleyLandscape:
    if args.loss in CATALOGUE:
        if args.nondegenerate is not None or args.degenerate is not None:
            raise UserInputError(
                f"--loss {args.loss} is a catalogue landscape with its own coordinates; "
                "drop --nondegenerate/--degenerate"
            )
        land = catalogue(args.loss)
    else:
        if not args.nondegenerate or not args.degenerate:
            raise UserInputError("an expression --loss needs --nondegenerate and --degenerate coordinate lists")
        land = ValleyLandscape.from_strings(args.loss, args.nondegenerate, args.degenerate)
    return land.with_init(args.init) if args.init else land


def cmd_valley(args) -> int:
    land = landscape_from_args(args)
    noise = make_noise(land, args.noise, scale=args.noise_scale, S=args.batch, M=args.dataset_size)
    run = vsim.simulate(
        land,
        noise,
        args.eta,
        steps=args.steps,
        burn_in=args.burn_in,
        trajectories=args.trajectories,
        seed=args.seed,
        record_every=args.record_every,
    )
    summary = {k: json_safe(v) for k, v in vsim.summarise(run).items()}
    if args.out is not None:
        from valleysim.valley.plots import plot_run

        args.out.mkdir(parents=True, exist_ok=True)
        plot_run(run, args.out / "valley.png")
        (args.out / "valley.json").write_text(dumps(summary, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(dumps(summary, indent=2))
    else:
        print(format_summary(summary))
        if args.out is not None:
            print(f"figure -> {(args.out / 'valley.png').resolve()}")
    return 0


def format_summary(s: dict) -> str:
    """Measured vs predicted, one line per quantity."""
    lines = [
        f"{s['landscape']}  noise={s['noise']} (scale {s['noise_scale']:.4g})  eta={s['eta']:g}  "
        f"steps={s['steps']} after burn-in {s['burn_in']}  trajectories {s['completed']}/{s['trajectories']}"
    ]
    if s.get("stopped"):
        lines.append(
            f"  {s['stopped']} trajectories stopped; first at step {s['first_stop_step']}: {s['first_stop_reason']}"
        )
    if "error" in s:
        return "\n".join(lines + [f"  {s['error']}"])
    lines.append(f"  {'quantity':<26}{'measured':>13}{'+- SE':>11}{'predicted':>13}{'leading order':>15}")
    for name in ("trace", "logdet", "f"):
        if f"{name}_drift_per_step" in s:
            lines.append(
                f"  {name + ' drift / step':<26}{s[f'{name}_drift_per_step']:>13.5g}"
                f"{s[f'{name}_drift_stderr']:>11.2g}{_fmt(s.get(f'{name}_drift_predicted'))}"
                f"{_fmt(s.get(f'{name}_drift_predicted_leading'), 15)}"
            )
    notes = [f"  note: {s['schedule_note']}"] if "schedule_note" in s else []
    if "prediction_note" in s:
        return "\n".join(lines + [f"  {s['prediction_note']}"] + notes)
    n = len(s["second_moments_measured"])
    for i, (m, se, p, pl) in enumerate(
        zip(
            s["second_moments_measured"],
            s["second_moments_stderr"],
            s["second_moments_predicted"] or [None] * n,
            s["second_moments_predicted_leading"] or [None] * n,
        )
    ):
        lines.append(f"  {f'<theta_{i + 1}^2>':<26}{m:>13.5g}{se:>11.2g}{_fmt(p)}{_fmt(pl, 15)}")
    lines.append(
        f"  {'FDR <theta.g> - eta/2 <g^2>':<26}{s['fdr_difference']:>13.3g}"
        f"{s['fdr_difference_stderr']:>11.2g}{_fmt(0.0)}"
    )
    ratio = s["neg_eig_sum"] / s["loss_excess"] if s["loss_excess"] else None  # L = L*: no ratio
    lines.append(
        f"  {'neg. eig. sum / (L - L*)':<26}{_fmt(ratio, 13)}{'':>11}{_fmt(s['neg_eig_slope_predicted'])}"
        + ("" if s["neg_eig_slope_exact_to_leading_order"] else "  (some A_i not NSD: approximate)")
    )
    if "equilibration_note" in s:
        lines.append(f"  note: {s['equilibration_note']}")
    return "\n".join(lines + notes)


def _fmt(x, width: int = 13) -> str:
    return f"{'-':>{width}}" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:>{width}.5g}"
