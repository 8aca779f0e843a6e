"""Walks on the rough-floor valley: the numba kernel, ``simulate``, per-window metrics and ``summarise``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from valleysim import chunks
from valleysim.errors import (
    UserInputError,
    check_batch_size,
    check_instance,
    check_int_range,
    check_learning_rate,
    check_positive,
)
from valleysim.memory import F64, check_fits
from valleysim.rng import bounded, normal, seed_state
from valleysim.stats import mean_se
from valleysim.walk.landscape import WalkLandscape, _batch_grad, _full_loss
from valleysim.walk.metrics import BARRIER_RTOL, GRAD_ATOL, N_INTERP

OPTIMIZERS = ("gd", "sgd", "gd-noise")
_OPT_CODE = {"gd": 0, "sgd": 1, "gd-noise": 2}
TRACE_FIELDS = ("loss", "floor", "height", "cos", "dist", "x", "y", "barrier")
WINDOWS = ("second-half", "all")  # the steps ``summarise`` averages over
_BIN_FIELDS = 6  # height sum, cos sum, cos count, barriers, floor rises, barrier size sum


@njit(parallel=True, cache=True)
def _walk_kernel(
    k,
    a,
    e,
    slope,
    inv_w2,
    barrier,
    period,
    inv_h2,
    kappa,
    theta0,
    opt,
    eta,
    S,
    sigma,
    n_steps,
    t_begin,
    t_end,
    R,
    seed,
    n_interp,
    n_bins,
    n_rec,
    div_threshold,
    states,
    perms,
    gprevs,
    prev_floors,
    L0s,
    bins,
    bin_steps,
    theta_end,
    dist_end,
    div_step,
    traces,
    interp,
):
    """Steps t_begin <= t < t_end of every walk. Its state (theta in ``theta_end``, generator, permutation,
    the last gradient, floor and loss) is set up at t = 0 and carried from one call to the next; the last
    call (t_end = n_steps) also sets ``dist_end``."""
    N = k.shape[0]
    D = theta0.shape[0]
    for r in prange(R):
        if t_begin == 0:
            states[r] = seed_state(seed, r)
            perms[r] = np.arange(N)
            theta_end[r] = theta0
            div_step[r] = -1
            zsq0 = 0.0
            for d in range(2, D):
                zsq0 += theta0[d] * theta0[d]
            L0s[r] = _full_loss(theta0[0], theta0[1], zsq0, k, a, slope, inv_w2, barrier, period, inv_h2, kappa)
        state = states[r].copy()
        perm = perms[r].copy()
        allidx = np.arange(N)
        th = theta_end[r].copy()
        new = np.empty(D)
        g = np.empty(D)
        gprev = gprevs[r].copy()
        Ls = np.empty(n_interp + 2)
        prev_floor = prev_floors[r]
        L0 = L0s[r]
        stop = t_end if div_step[r] < 0 else t_begin  # a diverged walk stays where it stopped
        for t in range(t_begin, stop):
            b = (t * n_bins) // n_steps
            # the step's gradient
            if opt == 1:
                for j in range(S):  # partial Fisher-Yates: perm[:S] is a uniform S-subset
                    jj = j + bounded(state, N - j)
                    tmp = perm[j]
                    perm[j] = perm[jj]
                    perm[jj] = tmp
                _batch_grad(th[0], th[1], th, perm, S, k, a, e, slope, inv_w2, barrier, period, inv_h2, kappa, g)
            else:
                _batch_grad(th[0], th[1], th, allidx, N, k, a, e, slope, inv_w2, barrier, period, inv_h2, kappa, g)
                if opt == 2:
                    for d in range(D):
                        g[d] += sigma * normal(state)
            bad = False
            for d in range(D):
                new[d] = th[d] - eta * g[d]
                if not (abs(new[d]) <= div_threshold):  # also catches nan
                    bad = True
            if bad:
                div_step[r] = t + 1
                break
            # interpolate the full loss along the segment
            Ls[0] = L0
            for j in range(1, n_interp + 2):
                al = j / (n_interp + 1.0)
                zsq = 0.0
                for d in range(2, D):
                    zd = th[d] + al * (new[d] - th[d])
                    zsq += zd * zd
                Ls[j] = _full_loss(
                    th[0] + al * (new[0] - th[0]),
                    th[1] + al * (new[1] - th[1]),
                    zsq,
                    k,
                    a,
                    slope,
                    inv_w2,
                    barrier,
                    period,
                    inv_h2,
                    kappa,
                )
            L1 = Ls[n_interp + 1]
            fl = Ls[0]
            inner = -np.inf
            for j in range(1, n_interp + 2):
                if Ls[j] < fl:
                    fl = Ls[j]
                if j <= n_interp and Ls[j] > inner:
                    inner = Ls[j]
            top = max(L0, L1)
            height = 0.5 * (L0 + L1 - 2.0 * fl)
            crossed = inner > top + BARRIER_RTOL * (1.0 + abs(top))
            # cosine of consecutive step gradients
            c = np.nan
            if t > 0:
                dot = 0.0
                n0 = 0.0
                n1 = 0.0
                for d in range(D):
                    dot += gprev[d] * g[d]
                    n0 += gprev[d] * gprev[d]
                    n1 += g[d] * g[d]
                if n0 >= GRAD_ATOL * GRAD_ATOL and n1 >= GRAD_ATOL * GRAD_ATOL:
                    c = dot / math.sqrt(n0 * n1)
            bins[r, b, 0] += height
            if not np.isnan(c):
                bins[r, b, 1] += c
                bins[r, b, 2] += 1.0
            if crossed:
                bins[r, b, 3] += 1.0
                bins[r, b, 5] += inner - top
            if t > 0 and fl > prev_floor + BARRIER_RTOL * (1.0 + abs(prev_floor)):
                bins[r, b, 4] += 1.0
            bin_steps[r, b] += 1
            if r < n_rec:
                dist = 0.0
                for d in range(D):
                    dist += (th[d] - theta0[d]) ** 2
                traces[r, t, 0] = L0
                traces[r, t, 1] = fl
                traces[r, t, 2] = height
                traces[r, t, 3] = c
                traces[r, t, 4] = math.sqrt(dist)
                traces[r, t, 5] = th[0]
                traces[r, t, 6] = th[1]
                traces[r, t, 7] = 1.0 if crossed else 0.0
                for j in range(n_interp + 2):
                    interp[r, t, j] = Ls[j]
            prev_floor = fl
            for d in range(D):
                gprev[d] = g[d]
                th[d] = new[d]
            L0 = L1
        states[r] = state
        perms[r] = perm
        theta_end[r] = th
        gprevs[r] = gprev
        prev_floors[r] = prev_floor
        L0s[r] = L0
        if t_end == n_steps:
            dist = 0.0
            for d in range(D):
                dist += (th[d] - theta0[d]) ** 2
            dist_end[r] = math.sqrt(dist)


# --- the driver ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WalkRun:
    """An ensemble walk. R trajectories, T steps, n_bins windows of the run.

    bins:       (R, n_bins, 6) per window: sum of heights, sum of cosines, number of cosines,
                barriers crossed, floor rises, sum of barrier sizes
    bin_steps:  (R, n_bins) steps done in each window
    theta_end:  (R, D) last parameters (before a divergence: the last finite ones)
    dist_end:   (R,) ||theta_end - theta_0||
    diverged_step: (R,) first step whose parameters were non-finite or beyond div_threshold, -1 if none
    traces:     (n_rec, T, 8) per step of the first n_rec trajectories: TRACE_FIELDS at theta_t
                (height, floor, barrier of the segment t -> t+1; cos of g_{t-1}, g_t); nan after a divergence
    interp:     (n_rec, T, n_interp + 2) the full loss at interpolation_alphas along each segment
    """

    land: WalkLandscape
    optimizer: str
    eta: float
    batch: int | None
    sigma: float
    steps: int
    trajectories: int
    seed: int
    bins: np.ndarray
    bin_steps: np.ndarray
    theta_end: np.ndarray
    dist_end: np.ndarray
    diverged_step: np.ndarray
    traces: np.ndarray
    interp: np.ndarray


def isotropic_sigma(land: WalkLandscape, S: int, noise_factor: float = 1.0) -> float:
    """Per-coordinate std of gd-noise: D sigma^2 = noise_factor tr Cov[g_B(theta_0)] at batch size S."""
    noise_factor = check_positive(noise_factor, "noise_factor")
    return math.sqrt(noise_factor * land.noise_power(land.theta0, S) / land.D)


def simulate(
    land: WalkLandscape,
    eta: float,
    batch_size: int | None = None,
    *,
    optimizer: str = "sgd",
    steps: int,
    trajectories: int = 64,
    seed: int = 0,
    n_bins: int = 4,
    n_rec: int = 4,
    noise_factor: float = 1.0,
    n_interp: int = N_INTERP,
    div_threshold: float = 1e8,
) -> WalkRun:
    """Run ``trajectories`` walks of ``steps`` steps from theta_0 (see the package docstring); ``batch_size``
    is S for sgd and gd-noise (ignored by gd, which uses all N)."""
    check_instance(land, WalkLandscape, "land", "from WalkLandscape.make")
    if optimizer not in OPTIMIZERS:
        raise UserInputError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")
    eta = check_learning_rate(eta, "learning rate eta")
    steps = check_int_range(steps, "steps", 1, 10**8)
    R = check_int_range(trajectories, "trajectories", 1, 10**7)
    n_bins = check_int_range(n_bins, "n_bins", 1, steps)
    n_rec = check_int_range(n_rec, "n_rec", 0)
    n_interp = check_int_range(n_interp, "n_interp", 1, 1000)
    seed = check_int_range(seed, "seed", 0, 2**63 - 1)
    noise_factor = check_positive(noise_factor, "noise_factor")
    div_threshold = check_positive(div_threshold, "div_threshold")
    if optimizer == "gd":
        S = land.N
    else:
        if batch_size is None:
            raise UserInputError(
                f"optimizer {optimizer} needs a batch size S (gd-noise: its noise power is "
                "SGD's at batch S at the start)"
            )
        S = check_batch_size(batch_size, land.N)
    sigma = isotropic_sigma(land, S, noise_factor) if optimizer == "gd-noise" else 0.0
    n_rec = min(n_rec, R)
    check_fits(
        float(R) * (n_bins * (_BIN_FIELDS + 1) + land.D + 4 + land.N) * F64
        + float(n_rec) * steps * (len(TRACE_FIELDS) + n_interp + 2) * F64,
        f"{R} trajectories of {steps} steps in {n_bins} windows ({n_rec} traced)",
    )
    inv_w2, inv_h2 = land._scalars()
    bins = np.zeros((R, n_bins, _BIN_FIELDS))
    bin_steps = np.zeros((R, n_bins), dtype=np.int64)
    theta_end = np.empty((R, land.D))
    dist_end = np.empty(R)
    div_step = np.empty(R, dtype=np.int64)
    traces = np.full((n_rec, steps, len(TRACE_FIELDS)), np.nan)
    interp = np.full((n_rec, steps, n_interp + 2), np.nan)
    # the walks' state, carried from one chunk of steps to the next (valleysim.chunks); theta in theta_end
    states, perms = np.empty((R, 2), dtype=np.uint64), np.empty((R, land.N), dtype=np.int64)
    gprevs, prev_floors, L0s = np.zeros((R, land.D)), np.zeros(R), np.empty(R)

    def advance(t0, t1):
        _walk_kernel(
            land.k,
            land.a,
            land.e,
            land.slope,
            inv_w2,
            land.barrier,
            land.period,
            inv_h2,
            land.kappa,
            land.theta0,
            _OPT_CODE[optimizer],
            eta,
            S,
            sigma,
            steps,
            t0,
            t1,
            R,
            seed,
            n_interp,
            n_bins,
            n_rec,
            float(div_threshold),
            states,
            perms,
            gprevs,
            prev_floors,
            L0s,
            bins,
            bin_steps,
            theta_end,
            dist_end,
            div_step,
            traces,
            interp,
        )

    chunks.run_in_chunks(advance, 0, steps)
    return WalkRun(
        land,
        optimizer,
        eta,
        None if optimizer == "gd" else S,
        sigma,
        steps,
        R,
        seed,
        bins,
        bin_steps,
        theta_end,
        dist_end,
        div_step,
        traces,
        interp,
    )


def per_bin(run: WalkRun) -> dict:
    """Per window (mean ± SE over the trajectories that did not diverge): average height, average cos,
    barriers crossed, fraction of floor rises. Lists of (mean, se) of length n_bins."""
    _check_run(run)
    ok = run.diverged_step < 0
    b, n = run.bins[ok], run.bin_steps[ok].astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        cols = dict(
            height=b[..., 0] / n, cos=b[..., 1] / b[..., 2], barriers=b[..., 3], floor_rise_fraction=b[..., 4] / n
        )
    return {k: [mean_se(v[:, j]) for j in range(v.shape[1])] for k, v in cols.items()}


def summarise(run: WalkRun, window: str = "second-half") -> dict:
    """Mean ± SE over the trajectories that did not diverge. Averages over the steps of ``window``:
    ``second-half`` (the last n_bins // 2 windows, all when n_bins = 1) or ``all``."""
    _check_run(run)
    if window not in WINDOWS:
        raise UserInputError(f"window must be one of {', '.join(WINDOWS)}; got {window!r}")
    ok = run.diverged_step < 0
    nb = run.bins.shape[1]
    sel = slice(nb // 2, nb) if window == "second-half" and nb > 1 else slice(0, nb)
    b = run.bins[ok][:, sel].sum(axis=1)
    n = run.bin_steps[ok][:, sel].sum(axis=1).astype(float)
    ball = run.bins[ok].sum(axis=1)
    y0 = run.land.y0
    with np.errstate(invalid="ignore", divide="ignore"):
        metrics = dict(
            height=b[:, 0] / n,
            cos=b[:, 1] / b[:, 2],
            barriers_per_step=b[:, 3] / n,
            barriers_total=ball[:, 3],
            floor_rise_fraction=b[:, 4] / n,
            distance=run.dist_end[ok],
            progress=run.theta_end[ok, 1] - y0,
            final_loss=run.land.loss(run.theta_end[ok]),
            wall_amplitude=np.abs(run.theta_end[ok, 0]),
            flat_norm=np.linalg.norm(run.theta_end[ok, 2:], axis=1),
        )
    out = dict(
        optimizer=run.optimizer,
        eta=run.eta,
        batch=run.batch,
        eta_k=run.eta * run.land.floor_curvature(),
        sigma=run.sigma,
        steps=run.steps,
        trajectories=run.trajectories,
        seed=run.seed,
        window=window,
        completed=int(ok.sum()),
        diverged=int((~ok).sum()),
        first_divergence_step=int(run.diverged_step[~ok].min()) if (~ok).any() else None,
        landscape=run.land.params,
    )
    for key, v in metrics.items():
        m, se = mean_se(v)
        out[key], out[f"{key}_se"] = m, se
    return out


def _check_run(run) -> None:
    check_instance(run, WalkRun, "run", "from walk.simulate")
