"""The break-even toy's simulator: the numba kernel, ``simulate``, break-even read off the dynamics,
``summarise``, ``sweep``."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from valleysim import chunks
from valleysim.break_even.landscape import SharpeningLandscape, check_landscape
from valleysim.break_even.theory import almost_sure_break_even, drift_steps, predicted_break_even, steps_for_break_even
from valleysim.errors import (
    check_array,
    check_finite,
    check_instance,
    check_int_range,
    check_learning_rate,
    check_list,
)
from valleysim.memory import F64, check_fits
from valleysim.rng import bounded, seed_state
from valleysim.stats import mean_se
from valleysim.theory import variance_factor

DIVERGE_AT = 1e8
TURN = 0.01  # growth has stopped once the curvature falls 1% below its running maximum
MAX_DEFAULT_STEPS = 5_000_000  # default run length cap (a stated cap: the summary says when it binds)
TRAJECTORIES = 128  # default ensemble size of ``simulate``, ``sweep`` and ``valleysim break-even``


# --------------------------------------------------------------------------------------------- kernel


@njit(parallel=True, cache=True)
def _kernel(
    a0,
    rates,
    f,
    b,
    beta,
    eta,
    S,
    n_steps,
    rec_every,
    seed,
    x0,
    z0,
    frozen,
    t_begin,
    t_end,
    late_from,
    states,
    perms,
    xs,
    zs,
    late_sum,
    X,
    Z,
    amax,
    t_amax,
    div,
):
    """Steps t_begin <= t < t_end (t = 0: the start) of every trajectory. Its state (x, z, generator,
    permutation, the running sum of max_j a_j from step late_from on) is set up at t = 0 and carried from
    one call to the next; X and Z (NaN-filled) receive the records."""
    R, k = xs.shape
    N = f.shape[0]
    for r in prange(R):
        if t_begin == 0:
            states[r] = seed_state(seed, r)
            perms[r] = np.arange(N)
            xs[r] = x0
            zs[r] = z0
            late_sum[r] = 0.0
            div[r] = -1
            t_amax[r] = 0
            m = -np.inf
            for j in range(k):
                m = max(m, a0[j] * math.exp(rates[j] * z0))
            amax[r] = m
            for j in range(k):
                X[r, 0, j] = x0[j]
            Z[r, 0] = z0
        if div[r] >= 0:
            continue
        state = states[r].copy()
        perm = perms[r].copy()
        x = xs[r].copy()
        z = zs[r]
        a = np.empty(k)
        gx = np.empty(k)
        for t in range(max(t_begin, 1), t_end):
            for j in range(k):
                a[j] = a0[j] * math.exp(rates[j] * z)
                gx[j] = 0.0
            gz = 0.0
            for p in range(S):
                if S < N:
                    q = p + bounded(state, N - p)
                    tmp = perm[p]
                    perm[p] = perm[q]
                    perm[q] = tmp
                i = perm[p]
                for j in range(k):
                    d = x[j] - b[i, j]
                    fd = f[i, j] * d
                    gx[j] += fd
                    gz += 0.5 * rates[j] * a[j] * fd * d
            bad = False
            for j in range(k):
                x[j] -= eta * a[j] * gx[j] / S
                if not (abs(x[j]) < 1e8):
                    bad = True
            if not frozen:
                z -= eta * (gz / S - beta)
                if not math.isfinite(z):
                    bad = True
            if bad:
                div[r] = t
                break
            m = -np.inf
            for j in range(k):
                m = max(m, a0[j] * math.exp(rates[j] * z))
            if m > amax[r]:
                amax[r] = m
                t_amax[r] = t
            if t > late_from:
                late_sum[r] += m
            if t % rec_every == 0:
                jr = t // rec_every
                for j in range(k):
                    X[r, jr, j] = x[j]
                Z[r, jr] = z
        states[r] = state
        perms[r] = perm
        xs[r] = x
        zs[r] = z


# --------------------------------------------------------------------------------------------- runs


@dataclass
class BreakEvenRun:
    """Raw output of ``simulate``: X (R, n_rec, k), Z (R, n_rec) at steps j * record_every (NaN after a
    divergence); max_curvature, step_of_max, plateau (R,: mean of max_j a_j over every step of the last
    half); diverged_step (R,) (-1: ran to the end)."""

    land: SharpeningLandscape
    eta: float
    S: int
    n_steps: int
    record_every: int
    seed: int
    X: np.ndarray
    Z: np.ndarray
    max_curvature: np.ndarray
    step_of_max: np.ndarray
    plateau: np.ndarray
    diverged_step: np.ndarray
    default_steps: bool = False  # the run length came from ``default_steps``

    @property
    def steps(self) -> np.ndarray:
        return np.arange(self.Z.shape[1]) * self.record_every

    @property
    def ok(self) -> np.ndarray:
        return self.diverged_step < 0

    def curvature(self) -> np.ndarray:
        """(R, n_rec) lambda_H^1 of the x-block, max_j a_j(z)."""
        return self.land.curvatures(self.Z).max(axis=-1)


def default_steps(land: SharpeningLandscape, eta: float, S: int) -> int:
    """``steps_for_break_even``, at most MAX_DEFAULT_STEPS (2000 without sharpening: nothing to reach)."""
    need = steps_for_break_even(land, eta, S)
    return 2000 if need is None else min(need, MAX_DEFAULT_STEPS)


def simulate(
    land: SharpeningLandscape,
    eta: float,
    batch_size: int,
    *,
    steps: int | None = None,
    trajectories: int = TRAJECTORIES,
    seed: int = 0,
    record_every: int | None = None,
    x0=None,
    z0: float = 0.0,
    frozen: bool = False,
) -> BreakEvenRun:
    """R trajectories of mini-batch SGD (S = ``batch_size`` of N without replacement) on ``land`` from (x0, z0)."""
    check_landscape(land)
    eta = check_learning_rate(eta)
    S = check_int_range(batch_size, "batch size S", 1, land.N)
    default = steps is None
    steps = default_steps(land, eta, S) if default else check_int_range(steps, "steps", 1)
    R = check_int_range(trajectories, "trajectories", 1)
    seed = check_int_range(seed, "seed", 0, 2**63 - 1)
    rec = max(1, steps // 500) if record_every is None else check_int_range(record_every, "record_every", 1, steps)
    n_rec = steps // rec + 1
    check_fits(
        float(R) * n_rec * (land.k + 1) * 12 * F64 + 2.0 * R * land.N * F64,
        f"{R} trajectories with {n_rec} records (k = {land.k}, N = {land.N})",
    )
    x0 = np.zeros(land.k) if x0 is None else check_array(x0, "x0", (land.k,))
    z0 = check_finite(z0, "z0")
    X, Z = np.full((R, n_rec, land.k), np.nan), np.full((R, n_rec), np.nan)
    amax, tmax, div = np.empty(R), np.empty(R, dtype=np.int64), np.empty(R, dtype=np.int64)
    # the trajectories' state, carried from one chunk of steps to the next (valleysim.chunks)
    states, perms = np.empty((R, 2), dtype=np.uint64), np.empty((R, land.N), dtype=np.int64)
    xs, zs, late_sum = np.empty((R, land.k)), np.empty(R), np.empty(R)

    def advance(t0, t1):
        _kernel(
            land.a0,
            land.rates,
            land.f,
            land.b,
            land.beta,
            eta,
            S,
            steps,
            rec,
            seed,
            x0,
            float(z0),
            bool(frozen),
            t0,
            t1,
            steps // 2,
            states,
            perms,
            xs,
            zs,
            late_sum,
            X,
            Z,
            amax,
            tmax,
            div,
        )

    chunks.run_in_chunks(advance, 0, steps + 1)
    late = late_sum / max(steps - steps // 2, 1)  # the plateau: mean of max_j a_j over the steps of the last half
    return BreakEvenRun(land, eta, S, steps, rec, seed, X, Z, amax, tmax, late, div, default_steps=default)


def spectra(run: BreakEvenRun, chunk: int = 4096) -> dict[str, np.ndarray]:
    """(R, n_rec) at the records: top full-Hessian eigenvalue, Tr(H), lambda_K^1, Tr(K), loss, Tr(H)/lambda_max."""
    _check_run(run)
    chunk = check_int_range(chunk, "chunk", 1)
    land = run.land
    x = run.X.reshape(-1, land.k)
    z = run.Z.reshape(-1)
    out = {k: np.full(z.shape, np.nan) for k in ("lambda_H", "trace_H", "lambda_K", "trace_K", "loss")}
    good = np.flatnonzero(np.isfinite(z))
    for s in range(0, good.size, chunk):
        g = good[s : s + chunk]
        H = land.hessian(x[g], z[g])
        K = land.gradient_covariance(x[g], z[g])
        out["lambda_H"][g] = np.linalg.eigvalsh(H)[:, -1]
        out["trace_H"][g] = np.trace(H, axis1=-2, axis2=-1)
        out["lambda_K"][g] = np.linalg.eigvalsh(K)[:, -1]
        out["trace_K"][g] = np.trace(K, axis1=-2, axis2=-1)
        out["loss"][g] = land.loss(x[g], z[g])
    out = {k: v.reshape(run.Z.shape) for k, v in out.items()}
    # the conditioning of the sharp block: Tr(H_xx) / lambda_max(H_xx)
    a = land.curvatures(run.Z)
    out["trace_ratio"] = a.sum(axis=-1) / a.max(axis=-1)
    out["trace_xx"] = a.sum(axis=-1)
    return out


def growth_stops(curv: np.ndarray) -> np.ndarray:
    """(R,) first record at which the curvature curv (R, n_rec) is TURN below its running maximum; -1 if never."""
    curv = check_array(curv, "curv", ("R", "n_rec"), finite=False)
    fell = curv < (1.0 - TURN) * np.maximum.accumulate(curv, axis=1)
    return np.where(fell.any(axis=1), fell.argmax(axis=1), -1)


def break_even_per_trajectory(curv: np.ndarray, record_every: int) -> dict[str, np.ndarray]:
    """Per trajectory of curv (R, n_rec): ``reached`` (growth stopped in the first half of the records),
    ``plateau`` (median of the last half) and ``steps`` (first recorded step at the plateau level); the
    last two NaN where not reached."""
    curv = check_array(curv, "curv", ("R", "n_rec"), finite=False)
    record_every = check_int_range(record_every, "record_every", 1)
    half = curv.shape[1] // 2
    turn = growth_stops(curv)
    reached = (turn >= 0) & (turn <= half)
    plateau = np.median(curv[:, half:], axis=1)
    at_level = curv >= plateau[:, None]
    steps = np.argmax(at_level, axis=1) * float(record_every)
    return {
        "reached": reached,
        "turned": turn >= 0,
        "plateau": np.where(reached, plateau, np.nan),
        "steps": np.where(reached, steps, np.nan),
    }


#: Quantities of the self-stabilised state: defined only where break-even was reached.
BREAK_EVEN_KEYS = ("curvature_at_break_even", "mean_late_curvature", "steps_to_break_even", "median_late_lambda_K")


def summarise(run: BreakEvenRun) -> dict:
    """Break-even quantities (mean ± SE over trajectories) next to lambda*; says when break-even was not reached.

    Maxima average every trajectory that did not diverge; the BREAK_EVEN_KEYS average the
    ``reached_trajectories`` that reached break-even in the first half of the run (None if none did,
    with the reason in ``note``).
    """
    _check_run(run)
    land, ok = run.land, run.ok
    c = variance_factor(run.S, land.N)
    lam = predicted_break_even(run.eta, run.S, land.N, land.sigma)
    need = steps_for_break_even(land, run.eta, run.S)
    out = {
        "eta": run.eta,
        "batch": run.S,
        "n_examples": land.N,
        "sigma": land.sigma,
        "offset": land.offset,
        "beta": land.beta,
        "a0": land.a0.tolist(),
        "rates": land.rates.tolist(),
        "variance_factor": c,
        "steps": run.n_steps,
        "steps_for_break_even": need,
        "steps_capped": bool(run.default_steps and need is not None and run.n_steps < need),
        "trajectories": int(ok.size),
        "diverged": int((~ok).sum()),
        "predicted_break_even": lam,
        "full_batch_edge": 2.0 / run.eta,
        "almost_sure_break_even": almost_sure_break_even(land, run.eta, run.S, samples=50_000),
    }
    out["first_divergence_step"] = int(run.diverged_step[~ok].min()) if (~ok).any() else None
    if ok.sum() < 1:
        out.update(reached=False, reached_trajectories=0, error="every trajectory diverged; nothing to average")
        return out
    curv = run.curvature()[ok]
    be = break_even_per_trajectory(curv, run.record_every)
    hit = be["reached"]
    out["reached_trajectories"] = int(hit.sum())
    out["reached"] = bool(hit.all())
    half = curv.shape[1] // 2
    sp = {k: v[ok] for k, v in spectra(run).items()}
    for name, vals in (
        ("max_curvature", run.max_curvature[ok]),
        ("curvature_at_break_even", be["plateau"][hit]),
        ("mean_late_curvature", run.plateau[ok][hit]),
        ("steps_to_break_even", be["steps"][hit]),
        ("max_lambda_H_full", np.nanmax(sp["lambda_H"], axis=1)),
        ("max_lambda_K", np.nanmax(sp["lambda_K"], axis=1)),
        ("median_late_lambda_K", np.nanmedian(sp["lambda_K"][hit, half:], axis=1)),
        ("max_trace_H", np.nanmax(sp["trace_xx"], axis=1)),
        ("max_trace_K", np.nanmax(sp["trace_K"], axis=1)),
        ("min_trace_ratio", np.nanmin(sp["trace_ratio"], axis=1)),
        ("final_trace_ratio", sp["trace_ratio"][:, -1]),
        ("final_loss", sp["loss"][:, -1]),
    ):
        out[name], out[name + "_se"] = mean_se(vals)
    out["max_over_predicted"] = out["max_curvature"] / lam
    out["plateau_over_predicted"] = out["curvature_at_break_even"] / lam if hit.any() else None
    if not hit.any():
        out.update({k: None for k in BREAK_EVEN_KEYS}, **{k + "_se": None for k in BREAK_EVEN_KEYS})
    note = _reach_note(out, be, run)
    if note:
        out["note"] = note
    return out


def _reach_note(out: dict, be: dict, run: BreakEvenRun) -> str | None:
    """Why break-even quantities are missing or partial (None when every trajectory reached it)."""
    n_ok, n_hit = be["reached"].size, int(be["reached"].sum())
    need = out["steps_for_break_even"]
    if n_hit == n_ok:
        return None
    if need is None:
        return "break-even not reached: no sharpening (beta = 0 or every rate 0), the curvature cannot grow"
    late = int((be["turned"] & ~be["reached"]).sum())
    what = (
        f"{n_ok - n_hit} of {n_ok} trajectories did not reach break-even in the first half of the run"
        if n_hit
        else f"break-even not reached in {out['steps']} steps"
    )
    why = f"the curvature rose to {out['max_curvature']:.4g} (lambda* = {out['predicted_break_even']:.4g})" + (
        f"; {late} turned back only in the last half, leaving no plateau to measure"
        if late
        else " without turning back"
    )
    need_txt = (
        f"the drift alone reaches lambda* in about {drift_steps(run.land, run.eta, run.S):.3g} steps: "
        f"rerun with --steps {need}"
    )
    partial = f"; the break-even quantities average the {n_hit} that did" if n_hit else ""
    capped = f" (the default run length is capped at {MAX_DEFAULT_STEPS:,} steps)" if out["steps_capped"] else ""
    return f"{what}{partial}: {why}; {need_txt}{capped}"


def sweep(
    etas,
    batch_sizes,
    land: SharpeningLandscape | None = None,
    *,
    steps: int | None = None,
    trajectories: int = TRAJECTORIES,
    seed: int = 0,
    keep_runs: bool = False,
    executor=None,
) -> list[dict]:
    """``summarise`` at every (eta, S) of the grid (same seed: common random numbers); rows in grid order.

    With keep_runs, each row carries its BreakEvenRun under "run" (for plots). ``executor`` (any
    ``concurrent.futures.Executor``, :mod:`valleysim.executors`): one task per point, the same rows.
    """
    land = SharpeningLandscape.make() if land is None else check_landscape(land)
    etas, batch_sizes = check_list(etas, "etas"), check_list(batch_sizes, "batch_sizes")
    fn = functools.partial(
        _sweep_point, land=land, steps=steps, trajectories=trajectories, seed=seed, keep_runs=keep_runs
    )
    grid = [(eta, S) for eta in etas for S in batch_sizes]
    return list(executor.map(fn, grid) if executor is not None else map(fn, grid))


def _check_run(run) -> None:
    check_instance(run, BreakEvenRun, "run", "from break_even.simulate")


def _sweep_point(point, *, land, steps, trajectories, seed, keep_runs) -> dict:
    eta, S = point
    run = simulate(land, eta, S, steps=steps, trajectories=trajectories, seed=seed)
    row = summarise(run)
    if keep_runs:
        row["run"] = run
    return row
