"""Benchmark: Hessian probes of SimpleCNN on CIFAR-10 -- HVP cost, iterations to lambda_max, tracking overhead.

Model: SimpleCNN (width 1, 32x32 inputs, channels_last), n measurement examples (default 2,560,
``measurement_subset`` of the CIFAR-10 training set from --data / $VALLEYSIM_DATA / ../shared/data;
seeded N(0, 1) images and random labels when no data is found -- the output says which). Torch runs
on ``THREADS`` = 2 threads with OPENBLAS_NUM_THREADS=1 (MACHINE-NOTES: scipy's OpenBLAS threads
fight torch's inside Lanczos).

1. Cost of one HVP against one full gradient over the same n examples: ``Objective.hvp(v)``
   (forward-over-reverse, chunks of 64) against ``Objective.grad()``, float32 (n examples) and
   float64 (fewer examples: float64 convolutions leave oneDNN and are 10-30x slower on this CPU),
   best of ``repeat`` after one warm-up. For reference a double-backward HVP (reverse-over-reverse:
   ``torch.autograd.grad`` of the gradient taken with ``create_graph=True``, same chunks), checked
   against ``Objective.hvp`` (relative 2-norm difference).
2. HVPs to lambda_max. The model is first trained for ``train_steps`` SGD steps (lr 0.05, batch 128,
   augmented training batches as in ``dnn.train``; seeded) so the top of the spectrum separates.
   Reference: ``lanczos_top(k=1)`` at a tight tolerance on the float32 objective (float64 is too slow
   here; tol 1e-5 is near float32's floor: the value is within ``residual`` of an eigenvalue, and
   within ``residual^2 / gap`` for an isolated one). Then, per seed of the random start:
   (a) ``lanczos_top(k=1, tol=1e-3)``; (b) PyHessian ``hessian(...).eigenvalues(maxIter=100,
   tol=1e-3, top_n=1)`` (the package; its HVPs counted by wrapping
   ``pyhessian.hessian.hessian_vector_product``; model in eval mode, float32, all n examples in
   one batch as its ``data=`` mode does; start vector from ``torch.manual_seed(seed)``);
   (c) ``dnn.eigen.power_iteration(tol=1e-3)`` (PyHessian's rule on ``Objective.hvp``).
   HVPs of the objective go through a cache keyed by the input vector's bytes: Lanczos with the
   same seed and a looser tolerance (or a larger k) builds the same Krylov vectors, so its HVPs are
   replayed from the reference run and charged at their measured time ("replayed" in the table).
   The tolerance sweep (which tol reaches relative error < 1e-3) uses the replay.
3. Tracking overhead at the papers' schedule. break-even-point.txt App. B: top eigenvalues of H by
   Lanczos on 5% of the training set, K's spectrum from L = 25 mini-batch gradients of M = 128;
   sharpest-directions-sgd-step.txt Sec. 2 / 4: top-K eigenpairs on ~5% of the data, tracked
   per epoch (and recomputed at the beginning of each epoch for NSGD). Schedule: one probe set per
   epoch = ``run_probes(("lanczos", "covariance"))`` with TrainConfig's defaults (top-5, tol 1e-3,
   max_iter 100, cold start -- the first probe of a run; later ones warm-start; L = 25, M = 128)
   on the measurement set (n = 2,560 ~ 5% of 50,000), float32. Training step: the median of the
   timed SGD steps of part 2 (batch 128, float32, channels_last, augmentation + normalisation as
   ``dnn.train``). Overhead = probe time / (391 steps x step time).

    python benchmarks/bench_dnn.py [--quick] [--data PATH] [--examples N] [--seeds S] [--out results.json]
"""

from __future__ import annotations

import os

THREADS = min(2, os.cpu_count() or 1)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import hashlib  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dnn import eigen  # noqa: E402
from dnn import probes as probes_mod  # noqa: E402
from dnn.data import batches, channel_stats, load_cifar10, measurement_subset, normalize, to_float_nchw  # noqa: E402
from dnn.models import build_model  # noqa: E402
from dnn.objective import Objective  # noqa: E402
from dnn.train import TrainConfig, seed_for  # noqa: E402
from valleysim.jsonout import atomic_write, dumps  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = math.ceil(50000 / 128)  # 391


def best_seconds(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


# --- data ------------------------------------------------------------------------------------------


def find_data(arg: str | None) -> Path | None:
    for p in (arg, os.environ.get("VALLEYSIM_DATA"), ROOT.parent / "shared" / "data"):
        if p and Path(p).exists():
            return Path(p)
    return None


class Data:
    """The measurement set (normalised float32 NCHW, channels_last) and a training-batch stream."""

    def __init__(self, path: Path | None, n: int, seed: int = 0):
        self.path = path
        if path is not None:
            self.images, self.labels = load_cifar10(path, "train", label_order="auto")
            self.mean, self.std = channel_stats(self.images)
            idx = measurement_subset(len(self.images), size=n, seed=seed)
            self.x = normalize(to_float_nchw(self.images[idx]), self.mean, self.std)
            self.y = torch.as_tensor(self.labels[idx])
            self.source = f"CIFAR-10 train ({path}), measurement_subset(seed {seed}) of {n}"
        else:
            g = torch.Generator().manual_seed(seed)
            self.x = torch.randn(n, 3, 32, 32, generator=g)
            self.y = torch.randint(0, 10, (n,), generator=g)
            self.source = f"SYNTHETIC N(0,1) images, random labels (no CIFAR-10 found), {n} examples"
        self.x = self.x.contiguous(memory_format=torch.channels_last)

    def stream(self, seed: int):
        """Endless training batches of 128: augmented CIFAR-10 epochs as dnn.train does (real data);
        random batches of the synthetic set (no augmentation) otherwise."""
        epoch = 0
        while True:
            gen = torch.Generator().manual_seed(seed_for(seed, 1, epoch))
            if self.path is not None:
                yield from batches(
                    self.images,
                    self.labels,
                    128,
                    gen,
                    augment=True,
                    mean=self.mean,
                    std=self.std,
                    memory_format=torch.channels_last,
                )
            else:
                perm = torch.randperm(self.x.shape[0], generator=gen)
                for s in range(0, len(perm), 128):
                    yield self.x[perm[s : s + 128]], self.y[perm[s : s + 128]]
            epoch += 1


# --- HVPs ------------------------------------------------------------------------------------------


def double_backward_hvp(model, x, y, v: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """H v by reverse-over-reverse (create_graph gradient, then its vector-Jacobian product), chunked."""
    params = [p for p in model.parameters() if p.requires_grad]
    vs = [t.view_as(p) for t, p in zip(torch.split(v, [p.numel() for p in params]), params)]
    out = [torch.zeros_like(p) for p in params]
    for s in range(0, x.shape[0], chunk):
        loss = F.cross_entropy(model(x[s : s + chunk]), y[s : s + chunk], reduction="sum")
        g = torch.autograd.grad(loss, params, create_graph=True)
        hv = torch.autograd.grad(g, params, grad_outputs=vs)
        for o, h in zip(out, hv):
            o += h
    return torch.cat([o.reshape(-1) for o in out]) / x.shape[0]


class CachedHVP:
    """``obj.hvp`` with a cache keyed by the input's bytes; counts calls, computed HVPs and their seconds;
    a replayed HVP is charged the seconds it took when computed."""

    def __init__(self, obj: Objective):
        self.fn, self.cache = obj.hvp, {}  # the bound method (obj.hvp may later be set to self)
        self.reset()

    def reset(self):
        self.calls = self.computed = 0
        self.replayed_s = 0.0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        key = hashlib.sha1(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
        self.calls += 1
        hit = self.cache.get(key)
        if hit is None:
            t0 = time.perf_counter()
            w = self.fn(v)
            hit = (w, time.perf_counter() - t0)
            self.cache[key] = hit
            self.computed += 1
        else:
            self.replayed_s += hit[1]
        return hit[0].clone()


# --- part 1 ----------------------------------------------------------------------------------------


def part_cost(model, data: Data, n64: int, repeat: int) -> dict:
    res = {}
    for dt, n in ((torch.float32, data.x.shape[0]), (torch.float64, n64)):
        obj = Objective(model, data.x[:n], data.y[:n], dtype=dt)
        v = torch.randn(obj.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dt)
        obj.grad()
        obj.hvp(v)
        r = 1 if dt == torch.float64 else repeat
        tg, _ = best_seconds(obj.grad, r)
        th, hv = best_seconds(lambda: obj.hvp(v), r)
        row = {
            "dtype": str(dt).replace("torch.", ""),
            "n": n,
            "grad_s": tg,
            "hvp_s": th,
            "hvp_over_grad": th / tg,
            "repeat": r,
        }
        if dt == torch.float32:
            m = copy.deepcopy(model).to(dt).eval()
            x, y = obj.inputs, obj.targets
            double_backward_hvp(m, x, y, v)
            tdb, hdb = best_seconds(lambda: double_backward_hvp(m, x, y, v), r)
            row.update(double_backward_s=tdb, double_backward_over_grad=tdb / tg, double_backward_rel_diff=rel(hdb, hv))
        res[row["dtype"]] = row
    return res


# --- part 2 ----------------------------------------------------------------------------------------


def train_model(model, data: Data, steps: int, seed: int) -> dict:
    """``steps`` SGD steps (lr 0.05, batch 128) as dnn.train does them; returns per-step seconds."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    stream = data.stream(seed)
    times, losses = [], []
    model.train()
    for _ in range(steps):
        t0 = time.perf_counter()
        xb, yb = next(stream)
        opt.zero_grad(set_to_none=False)
        logits = model(xb)
        loss = F.cross_entropy(logits, yb)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        times.append(time.perf_counter() - t0)
    return {"step_s": times, "loss_first": float(np.mean(losses[:10])), "loss_last": float(np.mean(losses[-10:]))}


def pyhessian_top(model, x, y, seed: int, tol: float) -> dict:
    try:
        import pyhessian  # noqa: F401

        phmod = sys.modules["pyhessian.hessian"]
    except ImportError as err:
        return {"error": f"pyhessian not importable: {err}"}
    real = phmod.hessian_vector_product
    count = {"n": 0}

    def counted(gradsH, params, v):
        count["n"] += 1
        return real(gradsH, params, v)

    m = copy.deepcopy(model).float().eval()
    import warnings

    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
    phmod.hessian_vector_product = counted
    try:
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        h = phmod.hessian(m, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        t1 = time.perf_counter()
        vals, _ = h.eigenvalues(maxIter=100, tol=tol, top_n=1)
        t2 = time.perf_counter()
    finally:
        phmod.hessian_vector_product = real
    return {"value": float(vals[0]), "n_hvp": count["n"], "seconds": t2 - t1, "setup_s": t1 - t0}


def part_iterations(
    obj: Objective, hvp: CachedHVP, model, seeds: list[int], ref_tol: float, ref_iter: int, tol: float
) -> dict:
    th0 = obj.theta0
    hvp.reset()
    t0 = time.perf_counter()
    ref = eigen.lanczos_top(hvp, th0, k=1, tol=ref_tol, max_iter=ref_iter, seed=0)
    ref_s = time.perf_counter() - t0
    lam = float(ref.values[0])
    out = {
        "reference": {
            "value": lam,
            "n_hvp": ref.n_matvec,
            "converged": ref.converged,
            "tol": ref_tol,
            "rel_residual": float(ref.residuals[0] / abs(lam)),
            "seconds": ref_s,
            "dtype": "float32",
        },
        "runs": [],
        "sweep": [],
    }
    for s in seeds:
        hvp.reset()
        t0 = time.perf_counter()
        lz = eigen.lanczos_top(hvp, th0, k=1, tol=tol, max_iter=100, seed=s)
        wall = time.perf_counter() - t0
        replayed = hvp.calls - hvp.computed
        lz_s = wall + hvp.replayed_s  # wall holds the computed HVPs; replayed ones at their measured time
        row = {
            "seed": s,
            "lanczos": {
                "value": float(lz.values[0]),
                "n_hvp": lz.n_matvec,
                "rel_err": abs(float(lz.values[0]) - lam) / abs(lam),
                "seconds": lz_s,
                "replayed": replayed,
            },
        }
        hvp.reset()
        t0 = time.perf_counter()
        pv, _, pn = eigen.power_iteration(obj.hvp, th0, tol=tol, max_iter=100, seed=s)
        row["power"] = {
            "value": pv,
            "n_hvp": pn,
            "rel_err": abs(pv - lam) / abs(lam),
            "seconds": time.perf_counter() - t0,
        }
        ph = pyhessian_top(model, obj.inputs.float(), obj.targets, s, tol)
        if "value" in ph:
            ph["rel_err"] = abs(ph["value"] - lam) / abs(lam)
        row["pyhessian"] = ph
        out["runs"].append(row)
    for t in (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5):
        if t < ref_tol:
            break
        hvp.reset()
        lz = eigen.lanczos_top(hvp, th0, k=1, tol=t, max_iter=100, seed=0)
        e = abs(float(lz.values[0]) - lam) / abs(lam)
        out["sweep"].append({"tol": t, "n_hvp": lz.n_matvec, "rel_err": e, "replayed": hvp.calls - hvp.computed})
    return out


# --- part 3 ----------------------------------------------------------------------------------------


def part_overhead(obj: Objective, hvp: CachedHVP, model, step_s: float, n_train: int) -> dict:
    cfg = TrainConfig(model="simplecnn", lr=0.05, batch=128, probes=("lanczos", "covariance"))
    ctx = probes_mod.ProbeContext(cfg=cfg, model=model, objective=obj, step=0, n_train=n_train)
    obj.hvp = hvp  # instance attribute: the probes' HVPs go through the cache
    hvp.reset()
    times = {}
    try:
        t0 = time.perf_counter()
        m = probes_mod.PROBES["lanczos"](ctx)
        t1 = time.perf_counter()
        computed, calls, replayed_s = hvp.computed, hvp.calls, hvp.replayed_s
        mc = probes_mod.PROBES["covariance"](ctx)
        t2 = time.perf_counter()
    finally:
        del obj.hvp
    replayed = calls - computed
    lanczos_s = (t1 - t0) + replayed_s  # computed HVPs are in the wall time; replayed ones at their measured time
    times = {
        "lanczos_s": lanczos_s,
        "lanczos_n_hvp": m["lanczos_n_hvp"],
        "lanczos_replayed": replayed,
        "lanczos_converged": m["lanczos_converged"],
        "lambda_H": [m[f"lambda_H_{i + 1}"] for i in range(cfg.top_k)],
        "covariance_s": t2 - t1,
        "lambda_K": mc["lambda_K"],
        "trace_ratio": mc["trace_ratio"],
        "top_k": cfg.top_k,
        "L": cfg.cov_batches,
        "M": cfg.cov_batch,
        "tol": cfg.lanczos_tol,
    }
    probe_s = lanczos_s + (t2 - t1)
    epoch_s = STEPS_PER_EPOCH * step_s
    times.update(
        probe_s=probe_s,
        step_s=step_s,
        epoch_train_s=epoch_s,
        overhead=probe_s / epoch_s,
        probe_in_steps=probe_s / step_s,
    )
    return times


# --- main --------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="256 examples, 1 repeat, 30 training steps (smoke run)")
    p.add_argument("--data", help="CIFAR-10 (any layout dnn.data accepts); default $VALLEYSIM_DATA, ../shared/data")
    p.add_argument("--examples", type=int, help="measurement examples n (default 2560, quick 256)")
    p.add_argument("--f64-examples", type=int, help="examples for the float64 timing (default 128, quick 64)")
    p.add_argument("--repeat", type=int, help="timed repeats, best kept (default 3, quick 1)")
    p.add_argument("--train-steps", type=int, help="SGD steps before parts 2-3 (default 100, quick 30)")
    p.add_argument("--seeds", type=int, help="random starts in part 2 (default 1, quick 2)")
    p.add_argument("--ref-tol", type=float, default=1e-5, help="reference Lanczos tolerance (float32; default 1e-5)")
    p.add_argument("--ref-iter", type=int, default=100, help="reference Lanczos max HVPs (default 100)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    n = args.examples or (256 if args.quick else 2560)
    n64 = args.f64_examples or (64 if args.quick else 128)
    repeat = args.repeat or (1 if args.quick else 3)
    steps = args.train_steps or (30 if args.quick else 100)
    seeds = list(range(args.seeds or (2 if args.quick else 1)))
    torch.set_num_threads(THREADS)
    load0 = os.getloadavg()
    t_all = time.perf_counter()

    data = Data(find_data(args.data), n)
    model = build_model("simplecnn", channels_last=True, seed=0)
    print(
        f"SimpleCNN width 1, channels_last; {data.source}; torch {torch.__version__} on {THREADS} threads, "
        f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}; {os.cpu_count()} CPUs; "
        f"load average {load0[0]:.2f} at start",
        flush=True,
    )

    # 1. cost (at initialisation)
    cost = part_cost(model, data, n64, repeat)
    print("\n1. one HVP vs one full gradient (model at initialisation, chunks of 64, best of repeats after a warm-up)")
    print(
        f"{'dtype':<9}{'n':>6}{'repeat':>7}{'grad s':>9}{'HVP s':>9}{'HVP/grad':>10}{'dbl-bwd s':>11}{'dbl/grad':>10}"
    )
    for r in cost.values():
        db = (
            f"{r['double_backward_s']:>11.2f}{r['double_backward_over_grad']:>10.2f}"
            if "double_backward_s" in r
            else f"{'-':>11}{'-':>10}"
        )
        print(
            f"{r['dtype']:<9}{r['n']:>6}{r['repeat']:>7}{r['grad_s']:>9.2f}{r['hvp_s']:>9.2f}{r['hvp_over_grad']:>10.2f}{db}"
        )
    c32 = cost["float32"]
    print(
        f"double-backward (reverse-over-reverse) vs Objective.hvp (forward-over-reverse), float32: relative "
        f"difference {c32['double_backward_rel_diff']:.2e}; target HVP <= 3x gradient: "
        f"{'met' if c32['hvp_over_grad'] <= 3 else 'NOT met'} ({c32['hvp_over_grad']:.2f}x)",
        flush=True,
    )

    # 2. iterations
    tr = train_model(model, data, steps, seed=0)
    obj = Objective(model, data.x, data.y, dtype=torch.float32)
    hvp = CachedHVP(obj)
    print(
        f"\n2. HVPs to lambda_max after {steps} SGD steps (lr 0.05, batch 128; mean batch loss "
        f"{tr['loss_first']:.3f} -> {tr['loss_last']:.3f}); float32 objective on the {n} examples "
        f"(float64 is too slow here, see 1.)",
        flush=True,
    )
    it = part_iterations(obj, hvp, model, seeds, args.ref_tol, args.ref_iter, 1e-3)
    ref = it["reference"]
    lam = ref["value"]
    print(
        f"reference lanczos_top(k=1, tol={ref['tol']:g}, max_iter={args.ref_iter}, seed 0): lambda_max = {lam:.6f}, "
        f"{ref['n_hvp']} HVPs, converged {ref['converged']}, relative residual {ref['rel_residual']:.1e}, "
        f"{ref['seconds']:.1f} s"
    )
    print(
        f"{'seed':>4}  {'method':<34}{'lambda_max':>12}{'rel err':>10}{'HVPs':>6}{'seconds':>9}{'HVPs / PyHessian':>18}"
    )
    for row in it["runs"]:
        ph = row["pyhessian"]
        nph = ph.get("n_hvp")
        for key, label in (
            ("lanczos", "lanczos_top(k=1, tol=1e-3)"),
            ("pyhessian", "pyhessian eigenvalues(tol=1e-3)"),
            ("power", "dnn.eigen.power_iteration(tol=1e-3)"),
        ):
            r = row[key]
            if "error" in r:
                print(f"{row['seed']:>4}  {label:<34}{r['error']}")
                continue
            ratio = f"{r['n_hvp'] / nph:>18.2f}" if nph else f"{'-':>18}"
            note = (
                f"  ({r['replayed']} HVPs replayed from the reference, charged at measured time)"
                if r.get("replayed")
                else ""
            )
            if key == "pyhessian":
                note = f"  (+{r['setup_s']:.1f} s setup: forward + create_graph backward of all {n})"
            print(
                f"{row['seed']:>4}  {label:<34}{r['value']:>12.6f}{r['rel_err']:>10.1e}{r['n_hvp']:>6}"
                f"{r['seconds']:>9.1f}{ratio}{note}"
            )
    print(
        "Lanczos seed-0 tolerance sweep (replayed from the reference run): "
        + "; ".join(f"tol {s['tol']:g}: {s['n_hvp']} HVPs, rel err {s['rel_err']:.1e}" for s in it["sweep"])
    )
    good = [s for s in it["sweep"] if s["rel_err"] < 1e-3]
    if good:
        best = min(good, key=lambda s: s["n_hvp"])
        print(
            f"fewest Lanczos HVPs with rel err < 1e-3 (seed 0): {best['n_hvp']} (tol {best['tol']:g}, rel err "
            f"{best['rel_err']:.1e})"
        )
    lz_ok = [r for r in it["runs"] if "n_hvp" in r["pyhessian"]]
    if lz_ok:
        ratios = [r["lanczos"]["n_hvp"] / r["pyhessian"]["n_hvp"] for r in lz_ok]
        errs = [r["lanczos"]["rel_err"] for r in it["runs"]]
        print(
            f"target Lanczos rel. err <= 1e-3 with <= 1/3 of PyHessian's HVPs: HVP ratio "
            f"{', '.join(f'{x:.2f}' for x in ratios)}, rel err max {max(errs):.1e}: "
            f"{'met' if max(ratios) <= 1 / 3 and max(errs) <= 1e-3 else 'NOT met'}",
            flush=True,
        )

    # 3. overhead
    step_s = float(np.median(tr["step_s"][min(10, steps // 3) :]))
    ov = part_overhead(obj, hvp, model, step_s, 50000)
    print(
        f"\n3. tracking overhead at the papers' schedule: one probe set per epoch (top-{ov['top_k']} Lanczos "
        f"tol {ov['tol']:g}, cold start + K from L = {ov['L']} batches of M = {ov['M']}) on {n} examples (~5% of "
        f"CIFAR-10's 50,000), float32; {STEPS_PER_EPOCH} steps of batch 128 per epoch"
    )
    print(
        f"  SGD step (batch 128, float32, channels_last, augmented): {1e3 * step_s:.0f} ms (median of "
        f"{len(tr['step_s']) - min(10, steps // 3)} steps) -> epoch {ov['epoch_train_s']:.1f} s"
    )
    print(
        f"  Lanczos top-{ov['top_k']}: {ov['lanczos_n_hvp']} HVPs ({ov['lanczos_replayed']} replayed from part 2's "
        f"cache, charged at measured time), converged {ov['lanczos_converged']}, {ov['lanczos_s']:.1f} s; "
        f"covariance: {ov['covariance_s']:.1f} s; probe set {ov['probe_s']:.1f} s = "
        f"{ov['probe_in_steps']:.0f} SGD steps"
    )
    print(
        f"  overhead = probe time per epoch / training time per epoch = {ov['overhead']:.2f} "
        f"({100 * ov['overhead']:.0f}%)"
    )
    load1 = os.getloadavg()
    total = time.perf_counter() - t_all
    print(
        f"\nload average {load0[0]:.2f} at start, {load1[0]:.2f} at end (2 CPUs; other jobs share this machine); "
        f"total {total:.0f} s"
    )
    result = {
        "config": {
            "n": n,
            "n64": n64,
            "repeat": repeat,
            "train_steps": steps,
            "seeds": seeds,
            "data": data.source,
            "threads": THREADS,
            "loadavg": [load0[0], load1[0]],
            "torch": torch.__version__,
            "total_s": total,
        },
        "cost": cost,
        "training": tr,
        "iterations": it,
        "overhead": ov,
    }
    if args.out:
        atomic_write(args.out, (dumps(result, indent=2) + "\n").encode())
    return result


if __name__ == "__main__":
    main()
