"""``valleysim stability`` and ``valleysim phase-diagram``: SGD on per-example quadratics (R1, R7)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from valleysim import argtypes as T
from valleysim.errors import UserInputError, check_batch_size
from valleysim.executors import add_executor_options, sweep_executor
from valleysim.jsonout import dumps
from valleysim.quadratic.landscape import KINDS, NONUNIFORMITY_RANGE, generate, load_hessians
from valleysim.quadratic.lyapunov import MC_STEPS, MC_TRAJECTORIES
from valleysim.theory import SCHEMES


def add_parser(sub) -> None:
    s = sub.add_parser("stability", help="exact mean-square and almost-sure stability at (eta, S)")
    add_landscape_args(s)
    s.add_argument("--eta", type=T.positive, required=True, help="learning rate > 0")
    s.add_argument("--batch", type=T.count, required=True, metavar="S", help="batch size, 1..N")
    s.add_argument("--scheme", choices=SCHEMES, default="without_replacement")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--simulate", action="store_true", help="attach a Monte Carlo second-moment growth rate")
    s.add_argument(
        "--trajectories",
        "--n-traj",
        type=T.integer(2),
        default=MC_TRAJECTORIES,
        help=f"trajectories for --simulate (>= 2, default {MC_TRAJECTORIES})",
    )
    s.add_argument(
        "--steps",
        "--n-steps",
        type=T.integer(2),
        default=MC_STEPS,
        help=f"steps for --simulate (>= 2, default {MC_STEPS}; longer windows are heavy-tailed)",
    )
    s.add_argument("--seed", type=T.seed, default=0)
    s.set_defaults(func=cmd_stability)

    _add_phase_diagram(sub)


def _add_phase_diagram(sub) -> None:
    ph = sub.add_parser("phase-diagram", help="sweep an (eta, S) grid: boundaries and divergence fraction")
    add_landscape_args(ph)
    ph.add_argument("--etas", type=T.grid, default="0.05:5:24", help="'min:max:count' log grid or a comma list")
    ph.add_argument("--batch-sizes", type=T.grid, default="1,2,4,8,16,32", help="comma list or 'min:max:count'")
    ph.add_argument("--scheme", choices=SCHEMES, default="without_replacement")
    ph.add_argument(
        "--trajectories", "--n-traj", type=T.integer(2), default=128, help="simulated trajectories per point (>= 2)"
    )
    ph.add_argument("--steps", "--n-steps", type=T.integer(4), default=1000, help="simulated steps per point (>= 4)")
    ph.add_argument("--seed", type=T.seed, default=0)
    ph.add_argument(
        "--out", type=T.out_dir, default="results/phase_diagram", help="output directory (resumes if present)"
    )
    ph.add_argument("--quiet", action="store_true", help="no progress bar")
    add_executor_options(ph)
    ph.set_defaults(func=cmd_phase_diagram)


def add_landscape_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("landscape (a file, or a generated one)")
    g.add_argument("--hessians", type=Path, help="per-example Hessians .npy: (N,), (N, D) diagonal or (N, D, D)")
    g.add_argument("--kind", choices=KINDS, default=None, help="generated landscape kind (default diagonal)")
    g.add_argument("--n-examples", type=T.count, default=None, metavar="N", help="generated N (default 32)")
    g.add_argument("--dim", type=T.count, default=None, metavar="D", help="generated D (default 1)")
    g.add_argument("--lambda-max", type=T.positive, default=None, help="top eigenvalue of the mean Hessian (default 1)")
    g.add_argument(
        "--nonuniformity",
        type=T.positive,
        default=None,
        help=f"relative spread of per-example curvature, {NONUNIFORMITY_RANGE[0]:g}..."
        f"{NONUNIFORMITY_RANGE[1]:g} (default 0.5)",
    )
    g.add_argument("--condition", type=T.positive, default=None, help="condition number of the mean spectrum, >= 1")
    g.add_argument("--landscape-seed", type=T.seed, default=None, help="seed of the generated landscape")


#: the generated landscape's options and their defaults (None on the parser: "not given")
GENERATED = {
    "kind": "diagonal",
    "n_examples": 32,
    "dim": 1,
    "lambda_max": 1.0,
    "nonuniformity": 0.5,
    "condition": 10.0,
    "landscape_seed": 0,
}


def landscape_from_args(args):
    given = [k for k in GENERATED if getattr(args, k) is not None]
    if args.hessians is not None:
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise UserInputError(f"--hessians gives the landscape, {flags} a generated one: give one of them")
        return load_hessians(args.hessians)
    g = {k: GENERATED[k] if getattr(args, k) is None else getattr(args, k) for k in GENERATED}
    return generate(
        g["kind"],
        g["n_examples"],
        g["dim"],
        lambda_max=g["lambda_max"],
        nonuniformity=g["nonuniformity"],
        condition=g["condition"],
        seed=g["landscape_seed"],
    )


def cmd_stability(args) -> int:
    from valleysim.quadratic.stability import stability_report

    q = landscape_from_args(args)
    report = stability_report(
        q,
        args.eta,
        args.batch,
        args.scheme,
        simulate=args.simulate,
        n_traj=args.trajectories,
        n_steps=args.steps,
        seed=args.seed,
    )
    if args.json:
        print(dumps(report, indent=2))
    else:
        width = max(map(len, report))
        for k, v in report.items():
            print(f"{k:<{width}}  {v:.6g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return 0


def cmd_phase_diagram(args) -> int:
    from valleysim.quadratic.phase_diagram import phase_diagram

    etas, sizes = np.array(args.etas), np.array(args.batch_sizes)
    if np.any(sizes != np.round(sizes)):
        raise UserInputError(f"--batch-sizes must be integers; got {args.batch_sizes!r}")
    q = landscape_from_args(args)
    sizes = sorted({int(s) for s in sizes})
    for s in sizes:
        check_batch_size(s, q.N, allow_above_n=args.scheme == "with_replacement")
    with sweep_executor(args) as executor:
        rows = phase_diagram(
            q,
            etas,
            sizes,
            args.out,
            scheme=args.scheme,
            n_traj=args.trajectories,
            n_steps=args.steps,
            seed=args.seed,
            executor=executor,
            progress=not args.quiet,
        )
    print(f"{len(rows)} grid points -> {Path(args.out).resolve()}")
    return 0
