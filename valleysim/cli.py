"""The ``valleysim`` command: demo, stability, phase-diagram, valley, break-even, walk, nsgd, dnn.

User errors print one line ``valleysim: error: ...`` and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from dnn import cli as dnn_cli
from valleysim import break_even_cli, nsgd_cli, valley_cli, walk_cli
from valleysim.errors import UserInputError, check_batch_size, check_int_range, check_positive
from valleysim.quadratic import KINDS, generate, load_hessians
from valleysim.theory import SCHEMES


def add_landscape_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("landscape (a file, or a generated one)")
    g.add_argument("--hessians", type=Path, help="per-example Hessians .npy: (N,), (N, D) diagonal or (N, D, D)")
    g.add_argument("--kind", choices=KINDS, default="diagonal", help="generated landscape kind (default diagonal)")
    g.add_argument("--n-examples", type=int, default=32, metavar="N", help="generated N (default 32)")
    g.add_argument("--dim", type=int, default=1, metavar="D", help="generated D (default 1)")
    g.add_argument("--lambda-max", type=float, default=1.0, help="top eigenvalue of the mean Hessian (default 1)")
    g.add_argument("--nonuniformity", type=float, default=0.5,
                   help="relative spread of per-example curvature (default 0.5)")
    g.add_argument("--condition", type=float, default=10.0, help="condition number of the mean spectrum")
    g.add_argument("--landscape-seed", type=int, default=0, help="seed of the generated landscape")


def landscape_from_args(args):
    if args.hessians is not None:
        return load_hessians(args.hessians)
    return generate(args.kind, args.n_examples, args.dim, lambda_max=args.lambda_max,
                    nonuniformity=args.nonuniformity, condition=args.condition, seed=args.landscape_seed)


def _json_float(x):
    if isinstance(x, (float, np.floating)) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def cmd_stability(args) -> int:
    check_int_range(args.n_steps, "--n-steps", 2)
    check_int_range(args.n_traj, "--n-traj", 2)
    from valleysim.stability import stability_report

    q = landscape_from_args(args)
    report = stability_report(q, args.eta, args.batch, args.scheme, simulate=args.simulate,
                              n_traj=args.n_traj, n_steps=args.n_steps, seed=args.seed)
    if args.json:
        print(json.dumps({k: _json_float(v) for k, v in report.items()}, indent=2))
    else:
        width = max(map(len, report))
        for k, v in report.items():
            print(f"{k:<{width}}  {v:.6g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return 0


def _grid(spec: str, name: str) -> np.ndarray:
    """'a:b:n' -> n log-spaced values in [a, b]; 'x,y,z' -> the list."""
    try:
        if ":" in spec:
            a, b, n = spec.split(":")
            a, b, n = check_positive(a, name), check_positive(b, name), int(n)
            if n < 1 or b < a:
                raise ValueError
            return np.geomspace(a, b, n)
        return np.array([float(v) for v in spec.split(",")])
    except ValueError:
        raise UserInputError(f"{name} must be 'min:max:count' (log-spaced) or a comma list; got {spec!r}") from None


def cmd_phase_diagram(args) -> int:
    from valleysim.phase_diagram import phase_diagram

    q = landscape_from_args(args)
    etas = _grid(args.etas, "--etas")
    for e in etas:
        check_positive(e, "--etas value")
    sizes = sorted({int(s) for s in _grid(args.batch_sizes, "--batch-sizes")})
    for s in sizes:
        check_batch_size(s, q.N, allow_above_n=args.scheme == "with_replacement")
    rows = phase_diagram(q, etas, sizes, args.out, scheme=args.scheme, n_traj=args.n_traj,
                         n_steps=args.n_steps, seed=args.seed, progress=not args.quiet)
    print(f"{len(rows)} grid points -> {Path(args.out).resolve()}")
    return 0


def cmd_demo(args) -> int:
    from valleysim.demo import run_demo

    run_demo(Path(args.out), quick=args.quick)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="valleysim", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="the main job: theory vs simulation on built-in landscapes, figures")
    d.add_argument("--out", default="results", help="output directory (default results/)")
    d.add_argument("--quick", action="store_true", help="smaller ensembles (about a minute)")
    d.set_defaults(func=cmd_demo)

    s = sub.add_parser("stability", help="exact mean-square and almost-sure stability at (eta, S)")
    add_landscape_args(s)
    s.add_argument("--eta", type=float, required=True, help="learning rate > 0")
    s.add_argument("--batch", type=int, required=True, metavar="S", help="batch size, 1..N")
    s.add_argument("--scheme", choices=SCHEMES, default="without_replacement")
    s.add_argument("--json", action="store_true", help="print one JSON object")
    s.add_argument("--simulate", action="store_true", help="attach a Monte Carlo second-moment growth rate")
    s.add_argument("--n-traj", type=int, default=20000, help="trajectories for --simulate (default 20000)")
    s.add_argument("--n-steps", type=int, default=12, help="steps for --simulate (default 12; longer windows are heavy-tailed)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_stability)

    ph = sub.add_parser("phase-diagram", help="sweep an (eta, S) grid: boundaries and divergence fraction")
    add_landscape_args(ph)
    ph.add_argument("--etas", default="0.05:5:24", help="'min:max:count' log grid or a comma list")
    ph.add_argument("--batch-sizes", default="1,2,4,8,16,32", help="comma list or 'min:max:count'")
    ph.add_argument("--scheme", choices=SCHEMES, default="without_replacement")
    ph.add_argument("--n-traj", type=int, default=128, help="simulated trajectories per point")
    ph.add_argument("--n-steps", type=int, default=1000, help="simulated steps per point")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--out", default="results/phase_diagram", help="output directory (resumes if present)")
    ph.add_argument("--quiet", action="store_true", help="no progress bar")
    ph.set_defaults(func=cmd_phase_diagram)

    valley_cli.add_parser(sub)
    break_even_cli.add_parser(sub)
    walk_cli.add_parser(sub)
    nsgd_cli.add_parser(sub)
    dnn_cli.add_parser(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UserInputError as err:
        print(f"valleysim: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("valleysim: interrupted (finished sweep points are kept; rerun to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
