"""The ``valleysim`` command: demo, stability, phase-diagram, valley, break-even, walk, nsgd, dnn.

One module per command group; each has ``add_parser(sub)``. User errors print one line
``valleysim <command>: error: ...`` and exit with code 2 (``errors.report_errors``). The command groups
(numpy and the rest) load inside ``main``, after its signal handlers and the address-space check.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

from valleysim.errors import Terminated, report_errors
from valleysim.memory import check_address_space


def cmd_demo(args) -> int:
    from valleysim.cli.demo import run_demo  # the main job (matplotlib and every toy) loads only here

    run_demo(args.out, quick=args.quick, data=args.data)
    return 0


def build_parser():
    """The argument parser of every command (a ``valleysim.argtypes.OneLineParser``)."""
    from valleysim import argtypes as T
    from valleysim.cli import break_even, dnn, nsgd, quadratic, valley, walk

    p = T.OneLineParser(prog="valleysim", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="the main job: theory vs simulation on built-in landscapes, figures")
    d.add_argument("--out", type=T.out_dir, default="results", help="output directory (default results/)")
    d.add_argument("--quick", action="store_true", help="smaller ensembles (about a minute)")
    d.add_argument(
        "--data", default=None, help="CIFAR-10 path for the network section (default $VALLEYSIM_DATA; none: skipped)"
    )
    d.set_defaults(func=cmd_demo)
    for group in (quadratic, valley, break_even, walk, nsgd, dnn):
        group.add_parser(sub)
    return p


HELD = {signal.SIGINT, signal.SIGTERM}  # the signals that wait while the libraries load


@contextlib.contextmanager
def _signals_held():
    """Ctrl-C and SIGTERM wait while the libraries load (numpy, scipy, sympy, numba: about 2 s) and act
    once they have: an import they interrupt ends in a traceback, or numpy's misleading ImportError ("do not
    import numpy from its source directory"). Only in the main thread, where Python acts on signals."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD)  # also what ``python -m valleysim`` held


def _run(argv) -> int:
    command = next((a for a in (sys.argv[1:] if argv is None else argv) if not str(a).startswith("-")), None)
    check_address_space(f"valleysim {command or ''}".strip(), networks=command in ("dnn", "demo"))
    with _signals_held():
        parser = build_parser()
    args = parser.parse_args(argv)
    return args.func(args)


def _terminate(signum, frame):
    """SIGTERM unwinds like Ctrl-C: the sweeps' finally blocks shut their pools down; finished points
    are already on disk."""
    raise Terminated()


@contextlib.contextmanager
def _signals():
    """SIGTERM raises ``Terminated``. A Ctrl-C or SIGTERM that Python drops because it was raised in a
    callback (llvmlite's ctypes callbacks while numba compiles: "Exception ignored ... SystemExit: 143",
    and the command ran on) is sent again, to be raised in the command's own code."""
    hook = sys.unraisablehook

    def send_again(unraisable):
        if not isinstance(unraisable.exc_value, (KeyboardInterrupt, Terminated)):
            return hook(unraisable)
        sig = signal.SIGTERM if isinstance(unraisable.exc_value, Terminated) else signal.SIGINT
        timer = threading.Timer(0.01, os.kill, (os.getpid(), sig))  # from outside the callback
        timer.daemon = True
        timer.start()

    previous = signal.signal(signal.SIGTERM, _terminate)
    sys.unraisablehook = send_again
    try:
        yield
    finally:
        sys.unraisablehook = hook
        signal.signal(signal.SIGTERM, previous)


def main(argv=None) -> int:
    if threading.current_thread() is not threading.main_thread():
        return report_errors(_run, argv)
    with _signals():
        return report_errors(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
