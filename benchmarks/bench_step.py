"""Benchmark: one SGD step on per-example dense quadratics, numba vs numpy vs torch.

The step, for R trajectories at once (float64): draw a mini-batch B_r of S
examples without replacement for every trajectory r, then
u_r <- u_r - eta (1/S) sum_{i in B_r} H_i u_r.   Work: 2 S D^2 flops per
trajectory-step (the Hessian-vector products), the count behind GFLOP/s.

- numba: ``valleysim.quadratic.integrator.simulate``, the project's kernel (RNG, batch
  draw, update fused; blocks of trajectories in lockstep with the batch pairs
  sorted by example), timed for R x T after a compile call, at 1 and 2
  threads; the runs must agree bitwise.
- numpy / torch (CPU, same thread count), batches from a persistent (R, N)
  permutation per trajectory and a vectorised partial Fisher-Yates shuffle,
  then three formulations of sum_k H_{i_rk} u_r, checked against each other:
    gather   for each of the S slots gather H[idx] (R, D, D) and do a batched
             matrix-vector product (the obvious one; copies 537 MB a step);
    grouped  sort the R S (trajectory, example) pairs by example and do one
             (m_i, D) @ (D, D) product per H_i in a Python loop;
    padded   the same products as one batched matmul over all N H_i, the
             pairs of each H_i padded to the largest m_i.
  Timed on fewer steps (best of a few repeats) and scaled to R x T: the step
  cost does not depend on t.

Also measured in the same run: the float64 matmul rate (numpy, 2048^2), the
roofline the '% matmul' column refers to. Speed ratios are against the
fastest numpy and the fastest torch formulation of this run.

    python benchmarks/bench_step.py [--quick] [--out results.json]
"""

from __future__ import annotations

import os

THREADS = min(2, os.cpu_count() or 1)
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(THREADS))  # numpy's BLAS, before numpy loads

import argparse  # noqa: E402
import time  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from valleysim.jsonout import atomic_write, dumps  # noqa: E402
from valleysim.quadratic.integrator import simulate  # noqa: E402
from valleysim.quadratic.landscape import generate  # noqa: E402

D, N, S, R, T = 64, 1000, 16, 1024, 2000


def best_seconds(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_gflops(n: int = 2048) -> float:
    a = np.random.default_rng(0).standard_normal((n, n))
    a @ a
    return 2 * n**3 / best_seconds(lambda: a @ a, 3) / 1e9


def np_draw(perm, rng, rows):
    """Partial Fisher-Yates on each row of perm: perm[:, :S] becomes a uniform S-subset."""
    for k in range(S):
        j = k + rng.integers(0, N - k, size=R)
        pk, pj = perm[rows, k], perm[rows, j]
        perm[rows, k], perm[rows, j] = pj, pk
    return perm[:, :S]


def np_gather(H, u, idx):
    g = np.zeros((R, D))
    for k in range(S):
        g += np.matmul(H[idx[:, k]], u[:, :, None])[:, :, 0]
    return g


def np_grouped(H, u, idx):
    g = np.zeros((R, D))
    ex, tr = idx.ravel(), np.repeat(np.arange(R), S)
    o = np.argsort(ex, kind="stable")
    ex, tr = ex[o], tr[o]
    bounds = np.searchsorted(ex, np.arange(N + 1))
    for i in range(N):
        r = tr[bounds[i] : bounds[i + 1]]
        g[r] += u[r] @ H[i]  # H_i symmetric
    return g


def np_padded(H, u, idx):
    ex = idx.ravel()
    counts = np.bincount(ex, minlength=N)
    o = np.argsort(ex, kind="stable")
    slot = np.empty(R * S, dtype=np.int64)  # rank of each pair among the pairs of its example
    slot[o] = np.arange(R * S) - (np.cumsum(counts) - counts)[ex[o]]
    Up = np.zeros((N, counts.max(), D))
    Up[ex, slot] = np.repeat(u, S, axis=0)
    return np.matmul(Up, H)[ex, slot].reshape(R, S, D).sum(axis=1)


def t_draw(perm, gen, rows):
    for k in range(S):
        j = k + torch.randint(0, N - k, (R,), generator=gen)
        pk, pj = perm[rows, k].clone(), perm[rows, j].clone()
        perm[rows, k], perm[rows, j] = pj, pk
    return perm[:, :S]


def t_gather(H, u, idx):
    g = torch.zeros(R, D, dtype=torch.float64)
    for k in range(S):
        g += torch.bmm(H[idx[:, k]], u.unsqueeze(2)).squeeze(2)
    return g


def t_grouped(H, u, idx):
    g = torch.zeros(R, D, dtype=torch.float64)
    ex, tr = idx.reshape(-1), torch.arange(R).repeat_interleave(S)
    ex, o = torch.sort(ex, stable=True)
    tr = tr[o]
    bounds = torch.searchsorted(ex, torch.arange(N + 1)).tolist()
    for i in range(N):
        r = tr[bounds[i] : bounds[i + 1]]
        g[r] += u[r] @ H[i]
    return g


def t_padded(H, u, idx):
    ex = idx.reshape(-1)
    counts = torch.bincount(ex, minlength=N)
    exs, o = torch.sort(ex, stable=True)
    slot = torch.empty(R * S, dtype=torch.int64)
    slot[o] = torch.arange(R * S) - (torch.cumsum(counts, 0) - counts)[exs]
    Up = torch.zeros(N, int(counts.max()), D, dtype=torch.float64)
    Up[ex, slot] = u.repeat_interleave(S, dim=0)
    return torch.bmm(Up, H)[ex, slot].reshape(R, S, D).sum(dim=1)


BASELINES = {
    "numpy": {"gather": np_gather, "grouped": np_grouped, "padded": np_padded},
    "torch": {"gather": t_gather, "grouped": t_grouped, "padded": t_padded},
}


def run_baseline(lib: str, hvp, H, eta: float, n_steps: int):
    """n_steps SGD steps for R trajectories with the given HVP formulation; returns u."""
    if lib == "numpy":
        rng = np.random.default_rng(0)
        u, perm, rows = rng.standard_normal((R, D)), np.tile(np.arange(N), (R, 1)), np.arange(R)
        draw = np_draw
    else:
        rng = torch.Generator().manual_seed(0)
        u = torch.randn(R, D, generator=rng, dtype=torch.float64)
        perm, rows, draw = torch.arange(N).repeat(R, 1), torch.arange(R), t_draw
    for _ in range(n_steps):
        u -= (eta / S) * hvp(H, u, draw(perm, rng, rows))
    return u


def check_baselines(H: np.ndarray) -> None:
    """All formulations give the same sum_k H_{i_rk} u_r (to rounding) on one batch."""
    rng = np.random.default_rng(1)
    u = rng.standard_normal((R, D))
    idx = np_draw(np.tile(np.arange(N), (R, 1)), rng, np.arange(R))
    ref = np.einsum("rkab,rb->ra", H[idx[:64]], u[:64])
    for lib, forms in BASELINES.items():
        for name, hvp in forms.items():
            out = (
                hvp(H, u, idx)
                if lib == "numpy"
                else hvp(torch.from_numpy(H), torch.from_numpy(u), torch.from_numpy(idx)).numpy()
            )
            assert np.allclose(out[:64], ref, rtol=1e-12, atol=1e-12), (lib, name)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="T = 200 numba steps, 5 baseline steps")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    n_steps = 200 if args.quick else T
    base_steps = 5 if args.quick else 20
    q = generate("dense", N, D, seed=0)
    eta = 1.0 / np.linalg.eigvalsh(q.mean_hessian())[-1]
    flops = 2.0 * S * D * D * R * n_steps
    torch.set_num_threads(THREADS)

    roof = matmul_gflops()
    print(f"float64 matmul (2048^2, numpy/OpenBLAS, {THREADS} threads): {roof:.1f} GFLOP/s")
    simulate(q, eta, S, steps=2, trajectories=4, seed=1)  # compile (or load the cache)
    setup = best_seconds(lambda: simulate(q, eta, S, steps=0, trajectories=R, seed=1), 2)
    rows, finals = [], []
    for k in sorted({1, THREADS}):
        numba.set_num_threads(k)
        runs = []
        for _ in range(2):
            t0 = time.perf_counter()
            rec = simulate(q, eta, S, steps=n_steps, trajectories=R, seed=1, record_every=n_steps)
            runs.append(time.perf_counter() - t0)
            finals.append(rec.dist2[:, -1])
        rows.append({"impl": "numba kernel", "threads": k, "seconds": min(runs)})
    bitwise = all(np.array_equal(finals[0], f) for f in finals)

    check_baselines(q.data)
    Ht = torch.from_numpy(q.data)
    for lib, H in (("numpy", q.data), ("torch", Ht)):
        for name, hvp in BASELINES[lib].items():
            run_baseline(lib, hvp, H, eta, 1)
            sec = best_seconds(lambda: run_baseline(lib, hvp, H, eta, base_steps), 2)
            rows.append({"impl": f"{lib} {name}", "threads": THREADS, "seconds": sec * n_steps / base_steps})

    t_np = min(r["seconds"] for r in rows if r["impl"].startswith("numpy"))
    t_torch = min(r["seconds"] for r in rows if r["impl"].startswith("torch"))
    print(f"\nD={D} N={N} S={S} R={R} T={n_steps}  ({flops / 1e9:.1f} GFLOP of Hessian-vector products)")
    print(
        f"{'implementation':<16}{'threads':>8}{'seconds':>10}{'steps/s':>11}{'GFLOP/s':>9}"
        f"{'% matmul':>10}{'x numpy':>9}{'x torch':>9}"
    )
    for r in rows:
        r.update(
            steps_per_s=R * n_steps / r["seconds"],
            gflops=flops / r["seconds"] / 1e9,
            vs_numpy=t_np / r["seconds"],
            vs_torch=t_torch / r["seconds"],
        )
        r["pct_matmul"] = 100 * r["gflops"] / roof
        print(
            f"{r['impl']:<16}{r['threads']:>8}{r['seconds']:>10.2f}{r['steps_per_s']:>11.3g}"
            f"{r['gflops']:>9.2f}{r['pct_matmul']:>9.1f}%{r['vs_numpy']:>9.2f}{r['vs_torch']:>9.2f}"
        )
    print(
        f"\nseconds are for R x T trajectory-steps (steps/s counts trajectory-steps); numba: best of 2 "
        f"full runs; numpy and torch: best of 2 timings of {base_steps} steps, scaled to T = {n_steps}."
    )
    print(f"numba seconds include simulate()'s setup (initial points, range basis): {setup:.2f} s at T = 0.")
    print("x numpy / x torch: against the fastest numpy and the fastest torch formulation above.")
    print(f"numba 1 vs {THREADS} threads (4 runs) bitwise identical: {bitwise}")
    result = {
        "config": {"D": D, "N": N, "S": S, "R": R, "T": n_steps, "baseline_steps": base_steps},
        "matmul_gflops": roof,
        "numba_setup_seconds": setup,
        "rows": rows,
        "numba_bitwise_across_threads": bitwise,
    }
    if args.out:
        atomic_write(args.out, (dumps(result, indent=2) + "\n").encode())
    return result


if __name__ == "__main__":
    main()
