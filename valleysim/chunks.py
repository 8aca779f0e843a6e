"""Long numba kernels run in chunks of steps, so that Ctrl-C and SIGTERM act within a fraction of a second.

A numba kernel holds the interpreter until it returns: a signal that arrives meanwhile is acted on
(KeyboardInterrupt, the command's SIGTERM exit) only once Python runs again. Every simulator therefore
advances its trajectories over consecutive ranges of steps, one kernel call each, carrying every
trajectory's state (its point, generator and permutation) across the calls in arrays. The results are
those of a single call: chunking only decides where the kernel pauses.

Every ensemble kernel is launched here, so this is also where numba's threads are kept from torch's:
numba's first parallel launch (or first thread query) in a process resets the OpenMP thread count that
torch shares (1 -> the core count), which would make a network run that calls a toy (the cross-check,
the edge analysis) run its later steps on other threads than it recorded, and its float32 sums other
than a rerun's.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable

import numba

SECONDS = 0.2  # the time a chunk aims at
GROWTH = 8  # a chunk has at most this many times the steps of the one before (the first is one step)


@contextlib.contextmanager
def torch_threads_kept():
    """torch's thread count (when torch is loaded) as it was before, whatever numba did inside."""
    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    try:
        yield
    finally:
        if threads is not None and torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def numba_threads() -> int:
    """``numba.get_num_threads()``: its first call launches numba's threads, so it keeps torch's count."""
    with torch_threads_kept():
        return numba.get_num_threads()


def run_in_chunks(advance: Callable[[int, int], object], begin: int, end: int) -> None:
    """``advance(t0, t1)`` over consecutive ranges [t0, t1) that cover [begin, end), each sized from the
    time the one before took to take about SECONDS. torch's thread count, when torch is loaded, is as
    before."""
    with torch_threads_kept():
        t, n = begin, 1
        while t < end:
            t1 = min(end, t + n)
            start = time.perf_counter()
            advance(t, t1)
            took = time.perf_counter() - start
            n = max(1, int((t1 - t) * min(GROWTH, SECONDS / max(took, 1e-9))))
            t = t1
