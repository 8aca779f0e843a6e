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

   Part 1 also counts FLOPs (``torch.utils.flop_counter.FlopCounterMode``) of the loss, gradient, HVP
   and Gauss-Newton product G v, the implementation-independent ratios the measured times are held to.
4. The toolkit against the peers (``peers.py``: PyHessian 0.1, curvlinops, every product counted), on
   SimpleCNN width ``--peer-width`` (0.5) after ``train_steps`` SGD steps, ``--peer-examples`` (256)
   measurement images, float32, one model/data/weights for all: top-1 and top-5 eigenpairs (tol 1e-3,
   against our Lanczos at tol 1e-5), Hutchinson traces with one budget (``--trace-mv``), SLQ
   (``--slq-starts`` x ``--slq-steps``: trace, negative mass, copies of lambda_1 per start), and the
   top-5 of the exact gradient covariance K against the n x n Gram of the per-example gradients.
5. Dense float64 truth: an MLP 192-15-5-10 on 256 images pooled to 3x8x8 (P = 3,035) after 300 GD
   steps; top-5 and SLQ (m = 20 and 80, 10 starts) against the eigenvalues of the dense Hessian
   (density L1 error with one Gaussian kernel on every method's nodes, trace, negative mass).

    python benchmarks/bench_dnn.py [--quick] [--parts 1,2,3,4,5] [--data PATH] [--examples N] [--seeds S]
                                   [--out results.json]
"""

from __future__ import annotations

import os

THREADS = min(2, os.cpu_count() or 1)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import hashlib  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dnn import covariance, eigen  # noqa: E402
from dnn import density as density_mod  # noqa: E402
from dnn import probes as probes_mod  # noqa: E402
from dnn.data import batches, channel_stats, load_cifar10, measurement_subset, normalize, to_float_nchw  # noqa: E402
from dnn.models import build_model  # noqa: E402
from dnn.objective import Objective  # noqa: E402
from dnn.train import TrainConfig, seed_for  # noqa: E402
from valleysim.jsonout import atomic_write, dumps  # noqa: E402

import peers  # noqa: E402  (benchmarks/peers.py: PyHessian and curvlinops, products counted)

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


def flops(obj: Objective, v: torch.Tensor) -> dict:
    """Floating-point operations of the loss, gradient, HVP and G v over the objective's examples, counted by
    ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls, the ops that dominate)."""
    from torch.utils.flop_counter import FlopCounterMode

    out = {}
    for name, fn in (
        ("loss", obj.loss),
        ("grad", obj.grad),
        ("hvp", lambda: obj.hvp(v)),
        ("gnvp", lambda: obj.gnvp(v)),
    ):
        with FlopCounterMode(display=False) as fc:
            fn()
        out[name] = float(fc.get_total_flops())
    return out


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
            tgn, _ = best_seconds(lambda: obj.gnvp(v), r)
            fl = flops(obj, v)
            row.update(
                gnvp_s=tgn,
                gnvp_over_grad=tgn / tg,
                flops=fl,
                flops_hvp_over_grad=fl["hvp"] / fl["grad"],
                flops_gnvp_over_grad=fl["gnvp"] / fl["grad"],
                flops_grad_over_loss=fl["grad"] / fl["loss"],
            )
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
    """PyHessian's ``eigenvalues(top_n=1)`` (set-up of its create_graph gradient timed separately)."""
    ph = peers.PyHessian(model, x, y)
    try:
        r = ph.top(1, seed, tol)
    finally:
        ph.close()
    if "values" not in r:
        return {"error": r["error"]}
    return {"value": r["values"][0], "n_hvp": r["n_mv"], "seconds": r["seconds"], "setup_s": r["setup_s"]}


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


# --- part 4: the toolkit against the peers ---------------------------------------------------------


def _rel_errs(values, ref) -> float:
    """max_i |values_i - ref_i| / |ref_i| over the common leading entries."""
    k = min(len(values), len(ref))
    return max(abs(float(values[i]) - float(ref[i])) / abs(float(ref[i])) for i in range(k))


def _ours(fn) -> dict:
    t0 = time.perf_counter()
    out = fn()
    out["seconds"] = time.perf_counter() - t0
    return out


def _lanczos(matvec, like, k: int, seed: int, tol: float = 1e-3, max_iter: int = 100) -> dict:
    r = eigen.lanczos_top(matvec, like, k=k, tol=tol, max_iter=max_iter, seed=seed)
    return {"values": [float(v) for v in r.values], "n_mv": r.n_matvec, "converged": r.converged}


def _slq(matvec, like, n_starts: int, m: int, seed: int) -> dict:
    """Our SLQ (full reorthogonalisation) as the peers' results are shaped: the quadrature and its matvecs."""
    r = density_mod.slq(matvec, like, n_starts=n_starts, m=m, seed=seed)
    return {"result": r, "n_mv": r.n_matvec}


def _slq_numbers(res: density_mod.SLQResult, lam1: float) -> dict:
    """trace and negative mass (estimate, SE over starts), the largest node and the number of nodes per
    start within 1e-3 |lambda_1| of lambda_1 (copies of the top eigenvalue: 1 when converged; more are
    the 'ghosts' of Lanczos without reorthogonalisation)."""
    tr, tr_se = density_mod.slq_trace(res)
    neg, neg_se = density_mod.negative_mass(res)
    copies = [int(np.sum(np.abs(t - lam1) <= 1e-3 * abs(lam1))) for t in res.nodes]
    return {
        "trace": tr,
        "trace_se": tr_se,
        "neg_mass": neg,
        "neg_mass_se": neg_se,
        "top_node": float(res.all_nodes().max()),
        "copies_of_lambda1": copies,
    }


def part_peers(model, x, y, *, k: int, trace_mv: int, slq_steps: int, slq_starts: int, seed: int) -> dict:
    """Every quantity by our code, PyHessian and curvlinops on one model, data and weights (float32)."""
    obj = Objective(model, x, y, dtype=torch.float32)
    th = obj.theta0
    ph = peers.PyHessian(model, obj.inputs, obj.targets)
    cl = peers.Curvlinops(model, obj.inputs, obj.targets, chunk=obj.chunk)
    H = cl.hessian() if not cl.error else None
    out = {"n": obj.n, "P": obj.dim, "seed": seed}
    try:
        t0 = time.perf_counter()
        ref = eigen.lanczos_top(obj.hvp, th, k=k, tol=1e-5, max_iter=200, seed=seed + 100)
        out["reference"] = {
            "values": [float(v) for v in ref.values],
            "n_mv": ref.n_matvec,
            "converged": ref.converged,
            "rel_residuals": [float(r / abs(v)) for r, v in zip(ref.residuals, ref.values)],
            "seconds": time.perf_counter() - t0,
        }
        lam = out["reference"]["values"]
        for kk in (1, k):
            row = {
                "ours": _ours(lambda: _lanczos(obj.hvp, th, kk, seed)),
                "pyhessian": ph.top(kk, seed),
                "curvlinops": cl.top(H, kk, seed) if H else {"error": cl.error},
            }
            for r in row.values():
                if "values" in r:
                    r["rel_err"] = _rel_errs(r["values"], lam)
            out[f"top{kk}"] = row
        hs = _ours(
            lambda: dict(
                zip(("value", "se", "n_mv"), eigen.hutchinson_trace(obj.hvp, th, n_samples=trace_mv, seed=seed))
            )
        )
        out["trace"] = {
            "ours": hs,
            "pyhessian": ph.trace(seed, max_iter=trace_mv),
            "curvlinops": cl.trace(H, trace_mv, seed) if H else {"error": cl.error},
            "curvlinops_hutchpp": cl.trace(H, 3 * (trace_mv // 3), seed, "hutchpp") if H else {"error": cl.error},
        }
        lam1 = lam[0]
        dens = {}

        dens["ours"] = _ours(lambda: _slq(obj.hvp, th, slq_starts, slq_steps, seed))
        dens["curvlinops"] = cl.slq(H, slq_steps, slq_starts, seed) if H else {"error": cl.error}
        dens["pyhessian"] = ph.density(seed, slq_steps, 1)
        for r in dens.values():
            if "result" in r:
                r.update(_slq_numbers(r.pop("result"), lam1))
        out["density"] = dens
        g = obj.grad()
        t0 = time.perf_counter()
        truth = covariance.exact_covariance(obj, k=k)
        kt = {
            "values": [float(v) for v in truth["eigenvalues_K"]],
            "trace": truth["trace_K"],
            "seconds": time.perf_counter() - t0,
        }
        kv = {
            "ours": _ours(lambda: _lanczos(lambda v: obj.covariance_vp(v, mean=g), th, k, seed)),
            "pyhessian": {"error": "PyHessian has no gradient-covariance operator"},
            "curvlinops": cl.covariance(cl.ef(), g, k, seed) if H else {"error": cl.error},
        }
        for r in kv.values():
            if "values" in r:
                r["rel_err"] = _rel_errs(r["values"], kt["values"])
        out["covariance"] = {"truth": kt, **kv}
    finally:
        ph.close()
    return out


# --- part 5: dense float64 truth on a tiny network ---------------------------------------------------


def tiny_problem(data: Data, n: int, width: float, steps: int, seed: int):
    """An MLP on ``n`` measurement images average-pooled to 3 x 8 x 8, after ``steps`` full-batch GD steps
    (lr 0.1) so the spectrum is off its initial shape; float64."""
    x = F.avg_pool2d(data.x[:n].float().contiguous(), 4)
    y = data.y[:n]
    model = build_model("mlp", input_shape=(3, 8, 8), width=width, seed=seed, dtype=torch.float64)
    x = x.double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x, y


def part_dense(model, x, y, *, k: int, slq_steps: list[int], slq_starts: int, seed: int) -> dict:
    """Top-k, SLQ (``slq_steps`` Lanczos steps, ``slq_starts`` starts) and PyHessian's density against the
    eigenvalues of the dense float64 Hessian (one chunk: the tiny MLP's HVP is overhead-bound)."""
    obj = Objective(model, x, y, dtype=torch.float64, chunk=x.shape[0])
    P = obj.dim
    t0 = time.perf_counter()
    Hd = eigen.dense_matrix(obj.hvp, obj.theta0)
    lam = np.linalg.eigvalsh(0.5 * (Hd + Hd.T).numpy())[::-1].copy()
    exact = density_mod.SLQResult([lam[::-1].copy()], [np.full(P, 1.0 / P)], P, P, P, 0, "exact")
    sigma = 1e-2 * float(lam[0] - lam[-1])
    grid = np.linspace(lam[-1] - 6 * sigma, lam[0] + 6 * sigma, 4000)
    phi = density_mod.density(exact, grid, sigma)
    dt = grid[1] - grid[0]
    out = {
        "P": P,
        "n": obj.n,
        "dense_s": time.perf_counter() - t0,
        "top": [float(v) for v in lam[:k]],
        "trace": float(lam.sum()),
        "neg_mass": float(lam[lam < 0].sum()),
        "n_negative": int((lam < 0).sum()),
        "sigma": sigma,
        "slq": [],
    }
    ph = peers.PyHessian(model, obj.inputs, obj.targets)
    cl = peers.Curvlinops(model, obj.inputs, obj.targets, chunk=obj.chunk)
    try:
        H = cl.hessian() if not cl.error else None
        tops = {
            "ours": _ours(lambda: _lanczos(obj.hvp, obj.theta0, k, seed)),
            "pyhessian": ph.top(k, seed),
            "curvlinops": cl.top(H, k, seed) if H else {"error": cl.error},
        }
        for r in tops.values():
            if "values" in r:
                r["rel_err"] = _rel_errs(r["values"], out["top"])
        out["top_k"] = tops
        for m in slq_steps:
            row = {"steps": m}
            runs = {
                "ours": _ours(lambda: _slq(obj.hvp, obj.theta0, slq_starts, m, seed)),
                "curvlinops": cl.slq(H, m, slq_starts, seed) if H else {"error": cl.error},
            }
            for name, r in runs.items():
                if "result" in r:
                    res = r.pop("result")
                    r.update(_slq_numbers(res, out["top"][0]))
                    r["density_l1"] = float(np.abs(density_mod.density(res, grid, sigma) - phi).sum() * dt)
                    r["trace_rel_err"] = abs(r["trace"] - out["trace"]) / abs(out["trace"])
                    r["neg_mass_rel_err"] = abs(r["neg_mass"] - out["neg_mass"]) / abs(out["neg_mass"])
                row[name] = r
            out["slq"].append(row)
        out["pyhessian_density"] = ph.density(seed, min(slq_steps), 1)
    finally:
        ph.close()
    return out


# --- reports -----------------------------------------------------------------------------------------


def report_cost(cost: dict) -> None:
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
    print(
        f"FLOPs (torch FlopCounterMode, convolutions and matmuls): gradient {c32['flops_grad_over_loss']:.2f}x the "
        f"loss, HVP {c32['flops_hvp_over_grad']:.2f}x the gradient, G v {c32['flops_gnvp_over_grad']:.2f}x; "
        f"measured time: HVP {c32['hvp_over_grad']:.2f}x, G v {c32['gnvp_over_grad']:.2f}x the gradient",
        flush=True,
    )


def report_iterations(it: dict, tr: dict, steps: int, n: int, ref_iter: int) -> None:
    ref = it["reference"]
    lam = ref["value"]
    print(
        f"\n2. HVPs to lambda_max after {steps} SGD steps (lr 0.05, batch 128; mean batch loss "
        f"{tr['loss_first']:.3f} -> {tr['loss_last']:.3f}); float32 objective on the {n} examples "
        f"(float64 is too slow here, see 1.)",
        flush=True,
    )
    print(
        f"reference lanczos_top(k=1, tol={ref['tol']:g}, max_iter={ref_iter}, seed 0): lambda_max = {lam:.6f}, "
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


def report_overhead(ov: dict, tr: dict, steps: int, n: int) -> None:
    step_s = ov["step_s"]
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


METHODS = {
    "ours": "valleysim (dnn.eigen / dnn.density / Objective)",
    "pyhessian": "PyHessian 0.1",
    "curvlinops": "curvlinops",
    "curvlinops_hutchpp": "curvlinops hutchpp_trace",
}


def _row(quantity: str, method: str, r: dict, value: str, accuracy: str) -> None:
    if "error" in r:
        cost = f"{r['n_mv']:>6}{r['seconds']:>9.1f}" if "n_mv" in r else f"{'-':>6}{'-':>9}"
        print(f"{quantity:<16}{METHODS[method]:<48}{cost}  fails: {r['error']}")
        return
    print(f"{quantity:<16}{METHODS[method]:<48}{r['n_mv']:>6}{r['seconds']:>9.1f}  {value}  {accuracy}")


def _values(r: dict) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in r["values"]) + "]"


def _pm(est: float, se: float) -> str:
    return f"{est:.4g} +- {se:.2g}" if math.isfinite(se) else f"{est:.4g}"


def report_peers(pe: dict) -> None:
    ref = pe["reference"]
    print(
        f"\n4. the toolkit against PyHessian 0.1 and curvlinops: SimpleCNN width {pe['width']:g} (P = {pe['P']:,}) "
        f"after {pe['train_steps']} SGD steps, {pe['n']} measurement examples, float32, one model/data/weights; "
        f"seed {pe['seed']} for every random start; reference top-5: lanczos_top(tol=1e-5) = {_values(ref)} "
        f"({ref['n_mv']} HVPs, converged {ref['converged']}, max relative residual {max(ref['rel_residuals']):.1e})"
    )
    print(f"{'quantity':<16}{'method':<48}{'HVPs':>6}{'seconds':>9}  numbers reported  accuracy")
    for kk in (1, len(ref["values"])):
        for m, r in pe[f"top{kk}"].items():
            _row(
                f"top-{kk} eigen",
                m,
                r,
                _values(r) if "values" in r else "",
                f"max rel err {r.get('rel_err', math.nan):.1e}",
            )
    for m, r in pe["trace"].items():
        _row("trace (Hutch.)", m, r, _pm(r.get("value", math.nan), r.get("se", math.nan)), "")
    for m, r in pe["density"].items():
        if "error" in r:
            _row("density (SLQ)", m, r, "", "")
            continue
        extra = f" (incl. {r['n_mv_boundaries']} for eigsh boundaries)" if "n_mv_boundaries" in r else ""
        _row(
            "density (SLQ)",
            m,
            r,
            f"tr {_pm(r['trace'], r['trace_se'])}, neg. mass {_pm(r['neg_mass'], r['neg_mass_se'])}, top node "
            f"{r['top_node']:.4f}",
            f"copies of lambda_1 per start {r['copies_of_lambda1']}{extra}",
        )
    cov = pe["covariance"]
    print(
        f"{'exact K truth':<16}{'per-example gradients, n x n Gram (float64)':<48}{'-':>6}"
        f"{cov['truth']['seconds']:>9.1f}  {_values(cov['truth'])}"
    )
    for m in ("ours", "pyhessian", "curvlinops"):
        r = cov[m]
        _row(
            "exact K top-5", m, r, _values(r) if "values" in r else "", f"max rel err {r.get('rel_err', math.nan):.1e}"
        )
    print(flush=True)


def report_dense(de: dict) -> None:
    print(
        f"\n5. dense float64 truth on a tiny network: MLP 192-15-5-10 (P = {de['P']:,}) on {de['n']} images pooled to "
        f"3x8x8 after 300 GD steps; dense Hessian ({de['P']} HVPs, {de['dense_s']:.1f} s): top-5 "
        f"[{', '.join(f'{v:.4f}' for v in de['top'])}], trace {de['trace']:.4f}, negative mass {de['neg_mass']:.4f} "
        f"({de['n_negative']} negative eigenvalues); density smoothed with sigma = {de['sigma']:.3g} (1% of the "
        f"spectral width), L1 distance to the exact smoothed density (the same kernel on every method's nodes)"
    )
    print(f"{'quantity':<16}{'method':<48}{'HVPs':>6}{'seconds':>9}  numbers reported  accuracy")
    for m, r in de["top_k"].items():
        _row("top-5 eigen", m, r, _values(r) if "values" in r else "", f"max rel err {r.get('rel_err', math.nan):.1e}")
    for row in de["slq"]:
        for m in ("ours", "curvlinops"):
            r = row[m]
            if "error" in r:
                _row(f"SLQ m={row['steps']}", m, r, "", "")
                continue
            _row(
                f"SLQ m={row['steps']}",
                m,
                r,
                f"tr {_pm(r['trace'], r['trace_se'])}, neg. mass {_pm(r['neg_mass'], r['neg_mass_se'])}",
                f"density L1 {r['density_l1']:.3f}, tr rel err {r['trace_rel_err']:.1e}, neg. mass rel err "
                f"{r['neg_mass_rel_err']:.1e}, copies of lambda_1 {r['copies_of_lambda1']}",
            )
    _row("density", "pyhessian", de["pyhessian_density"], "", "")
    print(flush=True)


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
    p.add_argument("--parts", default="1,2,3,4,5", help="comma-separated parts to run (default 1,2,3,4,5)")
    p.add_argument("--peer-examples", type=int, help="part 4: measurement examples (default 256, quick 64)")
    p.add_argument("--peer-width", type=float, default=0.5, help="part 4: SimpleCNN width (default 0.5)")
    p.add_argument("--trace-mv", type=int, help="part 4: HVP budget of each trace estimator (default 60, quick 12)")
    p.add_argument("--slq-steps", type=int, help="part 4: Lanczos steps per SLQ start (default 40, quick 10)")
    p.add_argument("--slq-starts", type=int, help="SLQ starts in parts 4 and 5 (default 3 / 10, quick 2 / 3)")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    try:
        parts = {int(t) for t in args.parts.split(",")}
    except ValueError:
        p.error(f"--parts must be comma-separated integers from 1 to 5, got {args.parts!r}")
    if not parts or not parts <= {1, 2, 3, 4, 5}:
        p.error(f"--parts must name parts from 1 to 5, got {args.parts!r}")
    q = args.quick
    n_peer = args.peer_examples or (64 if q else 256)
    trace_mv = args.trace_mv or (12 if q else 60)
    slq_steps = args.slq_steps or (10 if q else 40)
    slq_starts = args.slq_starts or (2 if q else 3)
    dense_starts = args.slq_starts or (3 if q else 10)
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

    result = {}
    if 1 in parts:  # cost (at initialisation)
        result["cost"] = part_cost(model, data, n64, repeat)
        report_cost(result["cost"])
    if parts & {2, 3}:  # one trained model and HVP cache for both
        tr = train_model(model, data, steps, seed=0)
        obj = Objective(model, data.x, data.y, dtype=torch.float32)
        hvp = CachedHVP(obj)
        result["training"] = tr
    if 2 in parts:
        result["iterations"] = it = part_iterations(obj, hvp, model, seeds, args.ref_tol, args.ref_iter, 1e-3)
        report_iterations(it, tr, steps, n, args.ref_iter)
    if 3 in parts:
        step_s = float(np.median(tr["step_s"][min(10, steps // 3) :]))
        result["overhead"] = ov = part_overhead(obj, hvp, model, step_s, 50000)
        report_overhead(ov, tr, steps, n)
    if 4 in parts:
        pmodel = build_model("simplecnn", width=args.peer_width, channels_last=True, seed=0)
        ptr = train_model(pmodel, data, steps, seed=0)
        pe = part_peers(
            pmodel,
            data.x[:n_peer],
            data.y[:n_peer],
            k=5,
            trace_mv=trace_mv,
            slq_steps=slq_steps,
            slq_starts=slq_starts,
            seed=1,
        )
        pe.update(width=args.peer_width, train_steps=steps, loss_last=ptr["loss_last"])
        result["peers"] = pe
        report_peers(pe)
    if 5 in parts:
        tmodel, tx, ty = tiny_problem(data, 256, width=0.05, steps=300, seed=0)
        result["dense"] = de = part_dense(
            tmodel, tx, ty, k=5, slq_steps=[10, 30] if q else [20, 80], slq_starts=dense_starts, seed=1
        )
        report_dense(de)
    load1 = os.getloadavg()
    total = time.perf_counter() - t_all
    print(
        f"\nload average {load0[0]:.2f} at start, {load1[0]:.2f} at end (2 CPUs; other jobs share this machine); "
        f"total {total:.0f} s"
    )
    result = {
        "config": {
            "parts": sorted(parts),
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
        **result,
    }
    if args.out:
        atomic_write(args.out, (dumps(result, indent=2) + "\n").encode())
    return result


if __name__ == "__main__":
    main()
