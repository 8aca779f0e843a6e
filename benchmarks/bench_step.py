"""Benchmark: one SGD step on per-example dense quadratics, numba vs numpy vs torch.

The step, for R trajectories at once (float64): draw a mini-batch B_r of S
examples without replacement for every trajectory r, then
u_r <- u_r - eta (1/S) sum_{i in B_r} H_i u_r.   Work: 2 S D^2 flops per
trajectory-step (the Hessian-vector products).

- numba: ``valleysim.integrator.simulate``, the project's kernel (RNG, batch
  draw and update fused, prange over trajectories), at 1 and 2 threads; the
  two runs must agree bitwise.
- numpy / torch, two vectorised formulations each, batches from a persistent
  (R, N) permutation per trajectory and a vectorised partial Fisher-Yates
  shuffle: 'gather' (for each of the S slots gather H[idx], (R, D, D), and a
  batched matrix-vector product: the obvious one, memory-bound) and 'grouped'
  (sort the R S (trajectory, example) pairs by example and do one
  (m_i, D) @ (D, D) product per H_i: the same idea as the numba kernel).
  Timed on fewer steps and scaled to R x T (the step cost does not depend on t).

Also measured in the same run: the float64 matrix-multiply rate (2048^2
matmul), the roofline the GFLOP/s column is compared with. Ratios are
against the baselines measured in this run.

    python benchmarks/bench_step.py [--quick] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numba
import numpy as np
import torch

from valleysim.integrator import simulate
from valleysim.quadratic import generate

D, N, S, R, T = 64, 1000, 16, 1024, 2000


def matmul_gflops(n: int = 2048, repeat: int = 3) -> float:
    a = np.random.default_rng(0).standard_normal((n, n))
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(repeat))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def numpy_steps(H: np.ndarray, eta: float, n_steps: int, grouped: bool, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u = rng.standard_normal((R, D))
    perm = np.tile(np.arange(N), (R, 1))
    rows = np.arange(R)
    for _ in range(n_steps):
        for k in range(S):  # partial Fisher-Yates: perm[:, :S] becomes a uniform S-subset
            j = k + rng.integers(0, N - k, size=R)
            pk, pj = perm[rows, k], perm[rows, j]
            perm[rows, k], perm[rows, j] = pj, pk
        g = np.zeros((R, D))
        if grouped:  # sort (trajectory, example) pairs by example: one (m, D) @ (D, D) product per H_i
            ex, tr = perm[:, :S].ravel(), np.repeat(rows, S)
            o = np.argsort(ex, kind="stable")
            ex, tr = ex[o], tr[o]
            bounds = np.searchsorted(ex, np.arange(N + 1))
            for i in range(N):
                r = tr[bounds[i]:bounds[i + 1]]
                g[r] += u[r] @ H[i]  # H_i symmetric
        else:  # gather H[idx] (R, D, D) per batch slot, batched matrix-vector product
            for k in range(S):
                g += np.matmul(H[perm[:, k]], u[:, :, None])[:, :, 0]
        u -= (eta / S) * g
    return u


def torch_steps(H: torch.Tensor, eta: float, n_steps: int, grouped: bool, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(R, D, generator=gen, dtype=torch.float64)
    perm = torch.arange(N).repeat(R, 1)
    rows = torch.arange(R)
    for _ in range(n_steps):
        for k in range(S):
            j = k + torch.randint(0, N - k, (R,), generator=gen)
            pk, pj = perm[rows, k].clone(), perm[rows, j].clone()
            perm[rows, k], perm[rows, j] = pj, pk
        g = torch.zeros(R, D, dtype=torch.float64)
        if grouped:
            ex, tr = perm[:, :S].reshape(-1), rows.repeat_interleave(S)
            ex, o = torch.sort(ex, stable=True)
            tr = tr[o]
            bounds = torch.searchsorted(ex, torch.arange(N + 1)).tolist()
            for i in range(N):
                r = tr[bounds[i]:bounds[i + 1]]
                g[r] += u[r] @ H[i]
        else:
            for k in range(S):
                g += torch.bmm(H[perm[:, k]], u.unsqueeze(2)).squeeze(2)
        u -= (eta / S) * g
    return u


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="T = 200 numba steps, 10 baseline steps")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    n_steps = 200 if args.quick else T
    base_steps = 10 if args.quick else 40
    threads = min(2, os.cpu_count() or 1)
    q = generate("dense", N, D, seed=0)
    eta = 1.0 / np.linalg.eigvalsh(q.mean_hessian())[-1]
    flops = 2.0 * S * D * D * R * n_steps

    roof = matmul_gflops()
    print(f"float64 matmul (2048^2, numpy/OpenBLAS): {roof:.1f} GFLOP/s")
    simulate(q, eta, S, 2, n_traj=4, seed=1)  # compile (or load the cache)
    rows, finals = [], {}
    for k in sorted({1, threads}):
        numba.set_num_threads(k)
        t0 = time.perf_counter()
        rec = simulate(q, eta, S, n_steps, n_traj=R, seed=1, record_every=n_steps)
        rows.append({"impl": "numba (valleysim kernel)", "threads": k, "seconds": time.perf_counter() - t0})
        finals[k] = rec.dist2[:, -1].copy()
    bitwise = all(np.array_equal(finals[1], v) for v in finals.values())

    torch.set_num_threads(threads)
    Ht = torch.from_numpy(q.data)
    for name, fn, data, th in (("numpy", numpy_steps, q.data, "BLAS default"), ("torch", torch_steps, Ht, threads)):
        for grouped in (False, True):
            fn(data, eta, 2, grouped)
            sec = _timed(lambda: fn(data, eta, base_steps, grouped)) * n_steps / base_steps
            rows.append({"impl": f"{name} {'grouped by H_i' if grouped else 'gather H[idx]'}", "threads": th,
                         "seconds": sec})

    t_np = min(r["seconds"] for r in rows if r["impl"].startswith("numpy"))  # the faster formulation
    t_torch = min(r["seconds"] for r in rows if r["impl"].startswith("torch"))
    print(f"\nD={D} N={N} S={S} R={R} T={n_steps}  ({flops / 1e9:.1f} GFLOP of Hessian-vector products)")
    print(f"{'implementation':<28}{'threads':>13}{'seconds':>10}{'steps/s':>12}{'GFLOP/s':>9}"
          f"{'% matmul':>10}{'x numpy':>9}{'x torch':>9}")
    for r in rows:
        r.update(steps_per_s=R * n_steps / r["seconds"], gflops=flops / r["seconds"] / 1e9,
                 vs_numpy=t_np / r["seconds"], vs_torch=t_torch / r["seconds"])
        r["pct_matmul"] = 100 * r["gflops"] / roof
        print(f"{r['impl']:<28}{str(r['threads']):>13}{r['seconds']:>10.2f}{r['steps_per_s']:>12.3g}"
              f"{r['gflops']:>9.2f}{r['pct_matmul']:>9.1f}%{r['vs_numpy']:>9.2f}{r['vs_torch']:>9.2f}")
    print(f"\nnumba 1 vs {threads} threads bitwise identical: {bitwise}; ratios are against the faster numpy"
          " and the faster torch formulation")
    if not args.quick:
        print(f"(numpy and torch timed on {base_steps} steps, scaled to T = {n_steps})")
    result = {"config": {"D": D, "N": N, "S": S, "R": R, "T": n_steps}, "matmul_gflops": roof,
              "rows": rows, "numba_bitwise_across_threads": bitwise}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
    return result


if __name__ == "__main__":
    main()
