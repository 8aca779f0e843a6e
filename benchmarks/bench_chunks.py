"""Benchmark: the cost of running every toy's kernel in chunks of steps (``valleysim.chunks``).

Each toy's ``simulate`` runs its kernel over consecutive ranges of steps, each sized to take about
``chunks.SECONDS``, so that Ctrl-C and SIGTERM act between them. Here every toy runs a workload of a
few seconds both ways, interleaved (chunked, one call, chunked, one call, ...) after a warm-up call that
compiles: the ratio chunked / one call, its minimum and median over the repeats. The two must give the
same arrays, bit for bit (checked).

    python benchmarks/bench_chunks.py [--repeats 5] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import fields

import numpy as np

from valleysim import break_even, chunks, quadratic, valley, walk


def _one_call(advance, begin, end):
    advance(begin, end)


def workloads(scale: float) -> dict:
    """name -> simulate call of about ``scale`` x a few seconds on two cores."""
    q = quadratic.generate("dense", 64, 16, seed=0)
    v = valley.catalogue("exp-toy")
    vn = valley.make_noise(v, "isotropic", scale=0.05)
    w = walk.WalkLandscape.make()
    b = break_even.SharpeningLandscape.make()
    n = lambda steps: max(1, int(steps * scale))  # noqa: E731
    return {
        "quadratic (dense, D 16, N 64, S 8, R 512)": lambda: quadratic.simulate(
            q, 0.5, 8, steps=n(4000), trajectories=512, renormalize=True
        ),
        "valley (exp-toy, R 1024)": lambda: valley.simulate(v, vn, 0.01, steps=n(20000), trajectories=1024),
        "walk (sgd, S 4, R 64)": lambda: walk.simulate(w, 0.5, 4, steps=n(20000), n_rec=0),
        "break-even (S 4, R 256)": lambda: break_even.simulate(b, 0.1, 4, steps=n(100000), trajectories=256),
    }


def _arrays(result) -> list[np.ndarray]:
    return [getattr(result, f.name) for f in fields(result) if isinstance(getattr(result, f.name), np.ndarray)]


def timed(run, whole: bool):
    chunked = chunks.run_in_chunks
    if whole:
        chunks.run_in_chunks = _one_call
    try:
        start = time.perf_counter()
        result = run()
        return time.perf_counter() - start, result
    finally:
        chunks.run_in_chunks = chunked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="a tenth of the work")
    args = ap.parse_args()
    print(f"{'toy':45s} {'chunked s':>10s} {'one call s':>10s} {'ratio min':>10s} {'median':>8s}")
    for name, run in workloads(0.1 if args.quick else 1.0).items():
        timed(run, whole=True)  # compile or load
        ratios, a_times, b_times = [], [], []
        for _ in range(args.repeats):
            a, ra = timed(run, whole=False)
            b, rb = timed(run, whole=True)
            assert all(np.array_equal(x, y, equal_nan=True) for x, y in zip(_arrays(ra), _arrays(rb))), name
            a_times.append(a)
            b_times.append(b)
            ratios.append(a / b)
        print(
            f"{name:45s} {min(a_times):10.3f} {min(b_times):10.3f} {min(ratios):10.3f} {statistics.median(ratios):8.3f}"
        )


if __name__ == "__main__":
    main()
