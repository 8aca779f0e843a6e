"""Benchmark: the valley integrator (exp-toy, Gaussian ``sgd`` noise) against numpy, and its machine limit.

The step, for R trajectories of the exponential toy (D = 4: t1, t2 | t3, t4),
x_{t+1} = x_t - eta (grad L(x_t) + xi_t),  xi_i ~ N(0, scale lambda_i) on t1, t2,
with the kernel's per-step checks (lambda_i > 0, |x_d| < 1e100) and its window
accumulators (theta_i^2, theta . g_B, |g_B|^2, every step).

- numba: ``simulate`` (the generated, cached kernel; one xoroshiro128+
  stream per trajectory, Box-Muller normals), R x T after a warm-up call, at 2
  and 1 threads; the records must agree bitwise between thread counts.
- numpy: the same step vectorised over trajectories ((4, R) arrays, in-place
  ufuncs, the two exponentials shared between gradient, lambda and noise std,
  normals from ``default_rng().standard_normal``, the same checks every step,
  a masked slow path for stopped trajectories). numpy's ufuncs use one thread.
- torch (CPU, float64): the same vectorised step, for reference.
  The vectorised versions draw other random numbers, so they are checked
  against numba in distribution: ensemble mean of the trace and of the window
  mean of theta_1^2 after T steps, difference in standard errors.

Machine limit: numba micro-benchmarks (ns per operation: exp, log, sqrt, one
ziggurat normal (valleysim.rng.normal), one scalar floating-point operation
from 12 independent multiply-add chains), at 1 and 2 threads, times the counts of
those operations in one step of the generated kernel (read from its source:
math.* calls, normal draws, arithmetic from the AST), gives an estimated
ns per trajectory-step; cycles use the "cpu MHz" of /proc/cpuinfo.

Compile cache: a fresh interpreter with an empty $VALLEYSIM_CACHE (codegen +
numba compile) against a second fresh interpreter on the same cache (load).

    python benchmarks/bench_valley.py [--quick] [--trajectories R] [--steps T] [--out results.json]
"""

from __future__ import annotations

import os

THREADS = min(2, os.cpu_count() or 1)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import ast  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numba  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit, prange  # noqa: E402

from valleysim.jsonout import atomic_write, dumps  # noqa: E402
from valleysim.rng import normal, seed_state  # noqa: E402
from valleysim.stats import mean_se  # noqa: E402
from valleysim.valley.codegen import OBSERVABLES, kernel_source  # noqa: E402
from valleysim.valley.landscape import catalogue  # noqa: E402
from valleysim.valley.noise import make_noise  # noqa: E402
from valleysim.valley.sim import simulate  # noqa: E402

LANDSCAPE, NOISE, SCALE_, ETA, SEED = "exp-toy", "sgd", 0.1, 0.01, 1
R_FULL, T_FULL = 4096, 10000
TRACE = OBSERVABLES.index("trace")


def best_seconds(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


# --- vectorised baselines -------------------------------------------------------------------------


def numpy_run(R: int, T: int, eta: float, scale: float, x0, seed: int = 0) -> dict:
    """T steps of the exp-toy + sgd step for R trajectories at once (numpy, in place)."""
    rng = np.random.default_rng(seed)
    P = np.empty((4, R))
    P[:] = np.asarray(x0, dtype=float)[:, None]
    t1, t2, t3, t4 = P
    a, d, e0, e3 = (np.empty(R) for _ in range(4))
    LAM, SD, PG, Z = (np.empty((2, R)) for _ in range(4))
    lam0, lam1 = LAM
    GB = np.empty((4, R))
    acc = np.zeros((4, R))
    status = np.full(R, -1)
    live = None  # float mask once a trajectory has stopped (slow path)
    frozen = np.full((4, R), np.nan)
    for t in range(T + 1):
        # exps shared by gradient, lambda and noise std: e0 = exp(-t3 - t4), e3 = exp(-(t3 - t4)^2)
        np.add(t3, t4, out=a)
        np.negative(a, out=a)
        np.exp(a, out=e0)
        np.subtract(t3, t4, out=d)
        np.multiply(d, d, out=a)
        np.negative(a, out=a)
        np.exp(a, out=e3)
        np.multiply(e0, -4.0, out=lam0)  # lambda_1 = 8 - 4 e0
        lam0 += 8.0
        np.multiply(e3, 2.0, out=lam1)  # lambda_2 = 2 e3
        # the kernel's checks: lambda_i > 0 and |x_d| < 1e100 (NaN fails both: min/max propagate it)
        if not (LAM.min() > 0.0 and P.max() < 1e100 and P.min() > -1e100):
            bad = ~((LAM > 0.0).all(axis=0) & (np.abs(P) < 1e100).all(axis=0))
            if live is not None:
                bad &= live > 0
            status[bad] = t
            frozen[:, bad] = P[:, bad]
            P[:, bad] = np.asarray(x0, dtype=float)[:, None]  # park them at a valid point, frozen below
            live = np.ones(R) if live is None else live
            live[bad] = 0.0
            np.exp(-(t3 + t4), out=e0)  # lambda etc. again at the parked points
            np.subtract(t3, t4, out=d)
            np.exp(-d * d, out=e3)
            np.multiply(e0, -4.0, out=lam0)
            lam0 += 8.0
            np.multiply(e3, 2.0, out=lam1)
        if t == T:
            break
        rng.standard_normal(out=Z)
        np.multiply(LAM, scale, out=SD)  # sd_i = sqrt(scale lambda_i)
        np.sqrt(SD, out=SD)
        SD *= Z
        np.multiply(P[:2], LAM, out=GB[:2])  # g_1 = lambda_1 t1, g_2 = lambda_2 t2
        GB[:2] += SD
        np.multiply(t1, t1, out=a)  # g_3,4 = 2 e0 t1^2 -/+ (t3 - t4) lambda_2 t2^2
        a *= e0
        a += a
        np.multiply(t2, t2, out=PG[0])
        PG[0] *= d
        PG[0] *= lam1
        np.subtract(a, PG[0], out=GB[2])
        np.add(a, PG[0], out=GB[3])
        if live is not None:
            GB *= live
        np.multiply(P[:2], P[:2], out=PG)  # window sums, every step (burn-in 0)
        if live is not None:
            PG *= live
        acc[:2] += PG
        np.multiply(P[:2], GB[:2], out=PG)
        acc[2] += PG[0]
        acc[2] += PG[1]
        np.multiply(GB[:2], GB[:2], out=PG)
        acc[3] += PG[0]
        acc[3] += PG[1]
        GB *= eta
        P -= GB
    trace = LAM.sum(axis=0)
    if live is not None:
        P[:, live == 0] = frozen[:, live == 0]
        trace[live == 0] = np.nan
    return {"x": P.T.copy(), "trace": trace, "acc": acc.T.copy(), "status": status}


def torch_run(R: int, T: int, eta: float, scale: float, x0, seed: int = 0) -> dict:
    """The numpy step in torch (CPU, float64); stops raise (the slow path is numpy's)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    P = torch.tensor(np.tile(np.asarray(x0, dtype=float)[:, None], (1, R)))
    t1, t2, t3, t4 = P
    a, d, e0, e3 = (torch.empty(R, dtype=torch.float64) for _ in range(4))
    LAM, SD, PG, Z = (torch.empty(2, R, dtype=torch.float64) for _ in range(4))
    lam0, lam1 = LAM
    GB = torch.empty(4, R, dtype=torch.float64)
    acc = torch.zeros(4, R, dtype=torch.float64)
    for t in range(T + 1):
        torch.add(t3, t4, out=a).neg_()
        torch.exp(a, out=e0)
        torch.sub(t3, t4, out=d)
        torch.mul(d, d, out=a).neg_()
        torch.exp(a, out=e3)
        torch.mul(e0, -4.0, out=lam0).add_(8.0)
        torch.mul(e3, 2.0, out=lam1)
        if not (LAM.min().item() > 0.0 and P.abs().max().item() < 1e100):
            raise RuntimeError(f"torch baseline: a trajectory stopped at step {t}")
        if t == T:
            break
        torch.randn(2, R, generator=gen, dtype=torch.float64, out=Z)
        torch.mul(LAM, scale, out=SD).sqrt_().mul_(Z)
        torch.mul(P[:2], LAM, out=GB[:2]).add_(SD)
        torch.mul(t1, t1, out=a).mul_(e0).mul_(2.0)
        torch.mul(t2, t2, out=PG[0]).mul_(d).mul_(lam1)
        torch.sub(a, PG[0], out=GB[2])
        torch.add(a, PG[0], out=GB[3])
        acc[:2].addcmul_(P[:2], P[:2])
        acc[2].add_((P[:2] * GB[:2]).sum(0))
        acc[3].add_((GB[:2] * GB[:2]).sum(0))
        P.sub_(GB, alpha=eta)
    return {"x": P.T.numpy().copy(), "trace": LAM.sum(0).numpy().copy(), "acc": acc.T.numpy().copy()}


# --- micro-benchmarks of the step's operations (numba, blocks in prange) ----------------------------


@njit(parallel=True, cache=False)
def _mb_base(x, out):
    for b in prange(x.shape[0]):
        s = 0.0
        for i in range(x.shape[1]):
            s += x[b, i]
        out[b] = s


@njit(parallel=True)
def _mb_exp(x, out):
    for b in prange(x.shape[0]):
        s = 0.0
        for i in range(x.shape[1]):
            s += math.exp(x[b, i])
        out[b] = s


@njit(parallel=True)
def _mb_log(x, out):
    for b in prange(x.shape[0]):
        s = 0.0
        for i in range(x.shape[1]):
            s += math.log(x[b, i])
        out[b] = s


@njit(parallel=True)
def _mb_sqrt(x, out):
    for b in prange(x.shape[0]):
        s = 0.0
        for i in range(x.shape[1]):
            s += math.sqrt(x[b, i])
        out[b] = s


@njit(parallel=True)
def _mb_normal(x, out):
    """The kernel's normal: the ziggurat of valleysim.rng (one 64-bit draw in 99% of calls)."""
    for b in prange(x.shape[0]):
        state = seed_state(7, b)
        s = 0.0
        for i in range(x.shape[1]):
            s += normal(state)
        out[b] = s


@njit(parallel=True)
def _mb_flops(x, out):
    """12 independent scalar multiply-add chains (2 flops each, not fused, not vectorised)."""
    for b in prange(x.shape[0]):
        m, c = 0.999999, x[b, 0] * 1e-9
        a0, a1, a2, a3, a4, a5 = 1.0, 1.1, 1.2, 1.3, 1.4, 1.5
        a6, a7, a8, a9, a10, a11 = 1.6, 1.7, 1.8, 1.9, 2.0, 2.1
        for i in range(x.shape[1]):
            a0 = a0 * m + c
            a1 = a1 * m + c
            a2 = a2 * m + c
            a3 = a3 * m + c
            a4 = a4 * m + c
            a5 = a5 * m + c
            a6 = a6 * m + c
            a7 = a7 * m + c
            a8 = a8 * m + c
            a9 = a9 * m + c
            a10 = a10 * m + c
            a11 = a11 * m + c
        out[b] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11


@njit(cache=False)
def _mb_addchain(n):
    """One dependent chain of scalar adds (latency-bound: 3 cycles an add on Zen 3 / most x86)."""
    s = 0.0
    for i in range(n):
        s += 1e-9
    return s


def micro_benchmarks(n_blocks: int, n: int, repeat: int) -> dict:
    """ns per operation (aggregate over the threads in use) for each kind, at 1 and THREADS threads."""
    rng = np.random.default_rng(0)
    inputs = {
        "exp": -5.0 * rng.random((n_blocks, n)),
        "log": 1.0 - rng.random((n_blocks, n)),
        "sqrt": 1.0 + 10.0 * rng.random((n_blocks, n)),
    }
    fns = {
        "exp": (_mb_exp, 1),
        "log": (_mb_log, 1),
        "sqrt": (_mb_sqrt, 1),
        "normal": (_mb_normal, 1),
        "flop": (_mb_flops, 24),
    }
    out = np.empty(n_blocks)
    res = {}
    for k in sorted({1, THREADS}):
        numba.set_num_threads(k)
        base_x = inputs["exp"]
        _mb_base(base_x, out)
        base, _ = best_seconds(lambda: _mb_base(base_x, out), repeat)
        for name, (fn, per_iter) in fns.items():
            x = inputs.get(name, base_x)
            fn(x, out)
            sec, _ = best_seconds(lambda: fn(x, out), repeat)
            if name not in ("flop",):
                sec = max(sec - base, 0.0)  # minus the loop's own load + dependent add
            res.setdefault(name, {})[k] = sec / (n_blocks * n * per_iter) * 1e9
    numba.set_num_threads(THREADS)
    return res


def cpu_mhz() -> tuple[float, str]:
    try:
        with open("/proc/cpuinfo") as fh:
            vals = [float(m.group(1)) for m in re.finditer(r"cpu MHz\s*:\s*([0-9.]+)", fh.read())]
        if vals:
            return max(vals), "/proc/cpuinfo 'cpu MHz'"
    except OSError:
        pass
    return float("nan"), "unknown"


def addchain_mhz() -> float:
    """Clock estimate assuming a 3-cycle scalar FP add latency (cross-check of /proc/cpuinfo)."""
    n = 20_000_000
    _mb_addchain(10)
    sec, _ = best_seconds(lambda: _mb_addchain(n), 3)
    return 3 * n / sec / 1e6


# --- operation counts of one step, from the generated source ------------------------------------

_CALLS = ("exp", "log", "sqrt")


class _StepCounter(ast.NodeVisitor):
    """Counts per step: math.* calls, normal draws, scalar arithmetic (binary/unary ops,
    comparisons, augmented assignments, abs). Loop-invariant calls (arguments only
    constants or ``scale``) and all-constant subexpressions are hoisted/folded by LLVM: not counted.
    ``for _ in range(K)`` multiplies its body by K; the rare branches (recording,
    stopping, the last step) are skipped."""

    def __init__(self, functions: dict, D: int):
        self.functions, self.D = functions, D
        self.counts = {"exp": 0, "log": 0, "sqrt": 0, "normal": 0, "arith": 0}
        self.mult = 1

    @staticmethod
    def _invariant(node) -> bool:
        return all(
            isinstance(n, (ast.Constant, ast.operator, ast.unaryop, ast.expr_context, ast.Load))
            or (isinstance(n, ast.Name) and n.id == "scale")
            or isinstance(n, (ast.BinOp, ast.UnaryOp))
            for n in ast.walk(node)
        )

    def visit_Call(self, node):
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "math":
            if all(self._invariant(a) for a in node.args):
                return
            if f.attr in _CALLS:
                self.counts[f.attr] += self.mult
        elif isinstance(f, ast.Name) and f.id == "normal":
            self.counts["normal"] += self.mult
            return
        elif isinstance(f, ast.Name) and f.id == "abs":
            self.counts["arith"] += self.mult
        elif isinstance(f, ast.Name) and f.id in self.functions:
            for stmt in self.functions[f.id].body:
                self.visit(stmt)
            return
        self.generic_visit(node)

    def _arith(self, node):
        if not self._invariant(node):
            self.counts["arith"] += self.mult
        self.generic_visit(node)

    visit_BinOp = visit_UnaryOp = visit_Compare = _arith

    def visit_AugAssign(self, node):
        self.counts["arith"] += self.mult
        self.generic_visit(node)

    def visit_Subscript(self, node):
        self.visit(node.value)  # index arithmetic is integer/address work: skipped

    def visit_If(self, node):
        text = ast.unparse(node.test)
        if "record_every" in text or "code" in text or "n_total" in text:
            return  # rare branches
        self.generic_visit(node)

    def visit_For(self, node):
        it = node.iter
        k = 1
        if isinstance(it, ast.Call) and getattr(it.func, "id", "") == "range" and len(it.args) == 1:
            arg = it.args[0]
            if isinstance(arg, ast.Constant):
                k = int(arg.value)
            elif isinstance(arg, ast.Name) and arg.id == "D":
                k = self.D
        outer = self.mult
        self.mult = outer * k
        for stmt in node.body:
            self.visit(stmt)
        self.mult = outer


def step_counts(src: str, D: int) -> dict:
    tree = ast.parse(src)
    funcs = {f.name: f for f in tree.body if isinstance(f, ast.FunctionDef)}
    tloop = next(
        n
        for n in ast.walk(funcs["run"])
        if isinstance(n, ast.For) and isinstance(n.target, ast.Name) and n.target.id == "t"
    )
    c = _StepCounter({k: v for k, v in funcs.items() if k != "run"}, D)
    for stmt in tloop.body:
        c.visit(stmt)
    return dict(c.counts)


# --- compile cache ---------------------------------------------------------------------------------

_CHILD = """
import time
t0 = time.perf_counter()
from valleysim.valley.landscape import catalogue
from valleysim.valley.noise import make_noise
from valleysim.valley.sim import simulate
land = catalogue({land!r}); noise = make_noise(land, {noise!r}, scale={scale!r})
t1 = time.perf_counter()
simulate(land, noise, {eta!r}, steps=10, trajectories=8, seed=0)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def compile_cache_times() -> dict:
    code = _CHILD.format(land=LANDSCAPE, noise=NOISE, scale=SCALE_, eta=ETA)
    out = {}
    with tempfile.TemporaryDirectory(prefix="valleysim-cache-") as tmp:
        env = {**os.environ, "VALLEYSIM_CACHE": tmp}
        for label in ("cold", "warm"):
            t0 = time.perf_counter()
            p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            total = time.perf_counter() - t0
            imp, first = map(float, p.stdout.split())
            out[label] = {"process": total, "import": imp, "first_call": first}
    return out


# --- main --------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="R = 1024, T = 1000, fewer repeats (smoke run)")
    p.add_argument("--trajectories", type=int, help=f"R (default {R_FULL})")
    p.add_argument("--steps", type=int, help=f"T (default {T_FULL})")
    p.add_argument(
        "--repeat",
        type=int,
        help="rounds of timed runs, all implementations in turn (best is kept; default 3, quick 1)",
    )
    p.add_argument("--no-torch", action="store_true", help="skip the torch baseline")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    R = args.trajectories or (1024 if args.quick else R_FULL)
    T = args.steps or (1000 if args.quick else T_FULL)
    repeat = args.repeat or (1 if args.quick else 3)
    land = catalogue(LANDSCAPE)
    noise = make_noise(land, NOISE, scale=SCALE_)
    x0 = land.init
    D = land.n + land.m
    n_ts = R * T
    load0 = os.getloadavg()

    # all implementations round-robin, best of `repeat` rounds each (this VM's speed drifts by 20-30 %)
    def numba_at(k):
        def go():
            numba.set_num_threads(k)
            return simulate(land, noise, ETA, steps=T, burn_in=0, trajectories=R, seed=SEED, record_every=T)

        return go

    impls = {("numba kernel", k): numba_at(k) for k in ((THREADS, 1) if THREADS > 1 else (1,))}
    impls[("numpy vectorised", 1)] = lambda: numpy_run(R, T, ETA, SCALE_, x0, seed=SEED)
    if not args.no_torch:
        import torch

        torch.set_num_threads(1)  # elementwise ops on R = 4096 are below torch's parallel grain anyway
        impls[("torch vectorised", 1)] = lambda: torch_run(R, T, ETA, SCALE_, x0, seed=SEED)
    simulate(land, noise, ETA, steps=10, trajectories=8, seed=SEED)  # compile or load the cache
    numpy_run(R, 2, ETA, SCALE_, x0)
    if not args.no_torch:
        torch_run(R, 2, ETA, SCALE_, x0)
    best, out = {key: float("inf") for key in impls}, {}
    for _ in range(repeat):
        for key, fn in impls.items():
            sec, out[key] = best_seconds(fn, 1)
            best[key] = min(best[key], sec)
    numba.set_num_threads(THREADS)
    rows = [{"impl": impl, "threads": k, "seconds": best[(impl, k)]} for impl, k in impls]
    a, b = out[("numba kernel", THREADS)], out[("numba kernel", 1)]
    bitwise = all(
        np.array_equal(np.asarray(x).view(np.uint64), np.asarray(y).view(np.uint64))
        for x, y in ((a.rec, b.rec), (a.acc, b.acc), (a.status, b.status))
    )
    nb, npr, tr = a, out[("numpy vectorised", 1)], out.get(("torch vectorised", 1))
    load1 = os.getloadavg()

    # agreement in distribution (numba vs numpy / torch)
    ok = nb.completed
    checks = {}
    ref = {"trace": nb.rec[ok, -1, TRACE], "theta1^2": nb.acc[ok, 0] / T}
    for name, res in (("numpy", npr), ("torch", tr)):
        if res is None:
            continue
        alive = res.get("status", np.full(R, -1)) < 0
        other = {"trace": res["trace"][alive], "theta1^2": res["acc"][alive, 0] / T}
        for q in ref:
            m1, s1 = mean_se(ref[q])
            m2, s2 = mean_se(other[q])
            checks[f"{name} {q}"] = {
                "numba": m1,
                "other": m2,
                "z": (m2 - m1) / math.hypot(s1, s2),
                "se": math.hypot(s1, s2),
            }

    # machine limit
    src = kernel_source(land, noise)
    counts = step_counts(src, D)
    mb = micro_benchmarks(n_blocks=8 * THREADS, n=1 << 16 if not args.quick else 1 << 14, repeat=3)
    mhz, mhz_src = cpu_mhz()
    mhz_chain = addchain_mhz()
    cost_names = {"exp": "exp", "log": "log", "sqrt": "sqrt", "normal": "normal", "arith": "flop"}
    estimate = {k: sum(counts[c] * mb[cost_names[c]][k] for c in counts) for k in mb["exp"]}

    cache = compile_cache_times()

    # --- report ---
    t_np = next(r["seconds"] for r in rows if r["impl"] == "numpy vectorised")
    print(
        f"{LANDSCAPE} + {NOISE} noise (scale {SCALE_}), eta = {ETA}, D = {D}, R = {R}, T = {T}, burn-in 0, "
        f"record_every = T; {os.cpu_count()} CPUs; load average {load0[0]:.2f} before, {load1[0]:.2f} after"
    )
    print(f"\n{'implementation':<18}{'threads':>8}{'seconds':>9}{'ns/traj-step':>14}{'x numpy':>9}")
    for r in rows:
        r["ns_per_traj_step"] = r["seconds"] / n_ts * 1e9
        r["vs_numpy"] = t_np / r["seconds"]
        print(
            f"{r['impl']:<18}{r['threads']:>8}{r['seconds']:>9.2f}{r['ns_per_traj_step']:>14.1f}{r['vs_numpy']:>9.2f}"
        )
    print(
        f"(best of {repeat} rounds, implementations in turn; numba after a warm-up call, its seconds include "
        f"simulate's setup; numpy and torch run their elementwise ops on one thread)"
    )
    print(
        f"numba {THREADS} vs 1 threads: records, window sums and status bitwise identical: {bitwise}; "
        f"completed {int(ok.sum())}/{R}"
    )
    for name, c in checks.items():
        print(
            f"agreement {name:<16} numba {c['numba']:.6g}  other {c['other']:.6g}  "
            f"difference {c['z']:+.2f} standard errors"
        )

    print(
        f"\nmachine limit: operation costs (numba micro-benchmarks, ns per operation, aggregate over threads;"
        f" cycles at {mhz:.0f} MHz from {mhz_src}; a 3-cycle dependent-add chain gives {mhz_chain:.0f} MHz)"
    )
    ks = sorted(mb["exp"])
    hdr = "".join(f"{f'ns ({k} thr)':>12}" for k in ks)
    print(f"{'operation':<18}{'count/step':>11}{hdr}{'cycles (1)':>12}{'ns/step (1)':>13}")
    for c in counts:
        name = cost_names[c]
        vals = "".join(f"{mb[name][k]:>12.2f}" for k in ks)
        print(
            f"{c if c != 'arith' else 'arith (flop)':<18}{counts[c]:>11}{vals}"
            f"{mb[name][1] * mhz / 1e3:>12.1f}{counts[c] * mb[name][1]:>13.1f}"
        )
    print(
        f"\n{'':<18}{'threads':>8}{'measured ns':>13}{'cycles':>9}{'estimate ns':>13}{'cycles':>9}"
        f"{'estimate/measured':>19}"
    )
    limit = []
    for r in rows:
        if r["impl"] != "numba kernel":
            continue
        k = r["threads"]
        est = estimate[k]
        meas = r["ns_per_traj_step"]
        cyc = lambda ns: ns * mhz / 1e3 * (k if k > 1 else 1)  # noqa: E731  core-cycles per trajectory-step
        limit.append(
            {
                "threads": k,
                "measured_ns": meas,
                "estimate_ns": est,
                "measured_core_cycles": cyc(meas),
                "estimate_core_cycles": cyc(est),
                "pct": 100 * est / meas,
            }
        )
        print(
            f"{'numba per traj-step':<18}{k:>8}{meas:>13.1f}{cyc(meas):>9.0f}{est:>13.1f}{cyc(est):>9.0f}"
            f"{100 * est / meas:>18.0f}%"
        )
    print(
        "(ns per trajectory-step is wall time / (R T); cycles are core-cycles: ns x MHz x threads; the estimate "
        "is sum over operations of count x cost, scalar costs since the kernel is scalar per trajectory)"
    )

    print("\ncompile cache (fresh interpreter, $VALLEYSIM_CACHE empty, then the same cache again):")
    for label, c in cache.items():
        print(
            f"  {label:<5} import {c['import']:.2f} s, first simulate (R=8, T=10) {c['first_call']:.2f} s, "
            f"whole process {c['process']:.2f} s"
        )

    result = {
        "config": {
            "landscape": LANDSCAPE,
            "noise": NOISE,
            "scale": SCALE_,
            "eta": ETA,
            "R": R,
            "T": T,
            "repeat": repeat,
            "threads": THREADS,
            "loadavg": [load0[0], load1[0]],
        },
        "rows": rows,
        "bitwise_across_threads": bitwise,
        "agreement": checks,
        "counts": counts,
        "op_costs_ns": mb,
        "cpu_mhz": mhz,
        "cpu_mhz_source": mhz_src,
        "addchain_mhz": mhz_chain,
        "limit": limit,
        "compile_cache": cache,
    }
    if args.out:
        atomic_write(args.out, (dumps(result, indent=2) + "\n").encode())
    return result


if __name__ == "__main__":
    main()
