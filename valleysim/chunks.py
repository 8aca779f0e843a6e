"""Long numba kernels run in chunks of steps, so that Ctrl-C and SIGTERM act within a fraction of a second.

A numba kernel holds the interpreter until it returns: a signal that arrives meanwhile is acted on
(KeyboardInterrupt, the command's SIGTERM exit) only once Python runs again. Every simulator therefore
advances its trajectories over consecutive ranges of steps, one kernel call each, carrying every
trajectory's state (its point, generator and permutation) across the calls in arrays. The results are
those of a single call: chunking only decides where the kernel pauses.
"""

from __future__ import annotations

import time
from typing import Callable

SECONDS = 0.2  # the time a chunk aims at
GROWTH = 8  # a chunk has at most this many times the steps of the one before (the first is one step)


def run_in_chunks(advance: Callable[[int, int], object], begin: int, end: int) -> None:
    """``advance(t0, t1)`` over consecutive ranges [t0, t1) that cover [begin, end), each sized from the
    time the one before took to take about SECONDS."""
    t, n = begin, 1
    while t < end:
        t1 = min(end, t + n)
        start = time.perf_counter()
        advance(t, t1)
        took = time.perf_counter() - start
        n = max(1, int((t1 - t) * min(GROWTH, SECONDS / max(took, 1e-9))))
        t = t1
