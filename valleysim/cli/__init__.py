"""The ``valleysim`` command: demo, stability, phase-diagram, valley, break-even, walk, nsgd, dnn.

One module per command group; each has ``add_parser(sub)``. User errors print one line
``valleysim <command>: error: ...`` and exit with code 2 (``errors.report_errors``).
"""

from __future__ import annotations

import signal
import sys
import threading

from valleysim import argtypes as T
from valleysim.cli import break_even, dnn, nsgd, quadratic, valley, walk
from valleysim.errors import report_errors

COMMAND_GROUPS = (quadratic, valley, break_even, walk, nsgd, dnn)


def cmd_demo(args) -> int:
    from valleysim.cli.demo import run_demo  # the main job (matplotlib and every toy) loads only here

    run_demo(args.out, quick=args.quick, data=args.data)
    return 0


def build_parser() -> T.OneLineParser:
    p = T.OneLineParser(prog="valleysim", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="the main job: theory vs simulation on built-in landscapes, figures")
    d.add_argument("--out", type=T.out_dir, default="results", help="output directory (default results/)")
    d.add_argument("--quick", action="store_true", help="smaller ensembles (about a minute)")
    d.add_argument(
        "--data", default=None, help="CIFAR-10 path for the network section (default $VALLEYSIM_DATA; none: skipped)"
    )
    d.set_defaults(func=cmd_demo)
    for group in COMMAND_GROUPS:
        group.add_parser(sub)
    return p


def _terminate(signum, frame):
    """SIGTERM unwinds like Ctrl-C: the sweeps' finally blocks shut their pools down; finished points
    are already on disk."""
    raise SystemExit(128 + signum)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is not threading.main_thread():
        return report_errors(args.func, args)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return report_errors(args.func, args)
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
