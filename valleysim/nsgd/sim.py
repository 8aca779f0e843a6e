"""Ensembles of the R8 optimisers on a ``SharpValley``: ``simulate``, the loss change along e_1, the gamma sweep."""

from __future__ import annotations

import functools

import numpy as np

from valleysim.errors import (
    UserInputError,
    check_array,
    check_instance,
    check_int_range,
    check_list,
    check_positive,
    check_range,
)
from valleysim.memory import F64, check_fits
from valleysim.nsgd.directions import ALPHAS, METHODS, lambda_max, step_direction, top_eigen
from valleysim.nsgd.landscape import SharpValley
from valleysim.stats import mean_se

#: Defaults of ``simulate`` and ``gamma_sweep``, shared with ``valleysim nsgd`` (its flags read them from here).
GAMMAS = (0.01, 0.1, 1.0, 5.0)
TRAJECTORIES = 8
TOP_K = 2  # top Hessian eigenvectors K


def default_record_every(steps: int) -> int:
    """Record every max(1, steps // 50) steps: about 50 records."""
    return max(1, int(steps) // 50)


def epoch_steps(N: int, S: int) -> int:
    """Steps of one epoch, ceil(N / S): NSGD's default eigenvector refresh (the paper: once per epoch)."""
    return -(-int(N) // int(S))


# --- mini-batches --------------------------------------------------------------------------------------
_CHUNK = 256


class BatchStream:
    """Mini-batches of trajectory r: S distinct examples per step from default_rng([seed, r])."""

    def __init__(self, seed: int, r: int, N: int, S: int):
        N = check_int_range(N, "N", 1)
        S = check_int_range(S, "batch size S", 1, N)
        seed, r = check_int_range(seed, "seed", 0, 2**63 - 1), check_int_range(r, "trajectory r", 0, 2**63 - 1)
        self.rng, self.N, self.S = np.random.default_rng([seed, r]), N, S
        self.buf, self.pos = None, _CHUNK

    def next(self) -> np.ndarray:
        if self.S == self.N:
            return np.arange(self.N)
        if self.pos == _CHUNK:
            self.buf = np.argpartition(self.rng.random((_CHUNK, self.N)), self.S - 1, axis=1)[:, : self.S]
            self.pos = 0
        self.pos += 1
        return self.buf[self.pos - 1]


def _check_common(land: SharpValley, method: str, eta, S, K, gamma, recompute):
    check_instance(land, SharpValley, "land", "from make_valley or quadratic_valley")
    if method not in METHODS:
        raise UserInputError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    check_positive(eta, "eta")
    check_int_range(S, "batch size S", 1, land.N)
    check_int_range(K, "K (top directions)", 1, land.D)
    check_positive(gamma, "gamma")
    if recompute is not None:  # None: once per epoch
        check_int_range(recompute, "recompute (steps between eigen-decompositions)", 1)


@np.errstate(over="ignore", invalid="ignore")  # a diverging trajectory overflows: it is flagged, not warned
def simulate(
    land: SharpValley,
    eta: float,
    batch_size: int,
    *,
    method: str = "nsgd",
    steps: int,
    trajectories: int = TRAJECTORIES,
    seed: int = 0,
    record_every: int | None = None,
    theta0=None,
    K: int = TOP_K,
    gamma: float = 1.0,
    recompute: int | None = None,
    first: int = 0,
    blowup: float = 1e8,
    keep_theta: bool = False,
) -> dict:
    """Run R = ``trajectories`` trajectories (r = first .. first + R - 1) of ``method`` for T = ``steps`` steps.

    ``recompute`` applies to nsgd (default ``epoch_steps``; the others that need eigenvectors use them every
    step, as in the paper, except sgd_constant_top which keeps those of step 0); ``record_every`` defaults to
    ``default_record_every(steps)``. nsgd with gamma = 1 is sgd. A trajectory whose loss exceeds
    ``blowup`` times its initial loss (or turns non-finite) is frozen and marked diverged.

    Returns steps (n_rec,), loss and lambda_max (n_rec, R) at the recorded steps (nan once diverged),
    theta (R, D) final, diverged (R,), eig_steps (the steps at which eigenvectors were computed);
    with keep_theta also thetas (n_rec, R, D) at the recorded steps.
    """
    S, T, R = batch_size, steps, trajectories
    T = check_int_range(T, "steps", 0)
    _check_common(land, method, eta, S, K, gamma, recompute)
    record_every = default_record_every(T) if record_every is None else record_every
    recompute = epoch_steps(land.N, S) if recompute is None else recompute
    check_int_range(R, "trajectories", 1)
    check_int_range(record_every, "record_every", 1)
    check_int_range(seed, "seed", 0, 2**63 - 1)
    check_int_range(first, "first", 0, 2**63 - 1)
    check_positive(blowup, "blowup")
    n_rec = T // record_every + 2
    check_fits(
        float(R) * (n_rec * (land.D * keep_theta + 2) + 4.0 * land.D**2 + 60.0 * land.D) * F64
        + 2.0 * land.N * land.D * F64,
        f"{R} trajectories of {T} steps in D = {land.D} ({n_rec} records)",
    )
    theta = land.start() if theta0 is None else check_array(theta0, "theta0")
    if theta.shape not in ((land.D,), (R, land.D)):
        raise UserInputError(f"theta0 must have shape ({land.D},) or ({R}, {land.D}); got {theta.shape}")
    theta = np.array(np.broadcast_to(theta, (R, land.D)))
    streams = [BatchStream(seed, first + r, land.N, S) for r in range(R)]
    needs_eig = method != "sgd" and not (method == "nsgd" and gamma == 1.0)
    every = {"nsgd": recompute, "sgd_constant_top": None}.get(method, 1)
    L0 = land.loss(theta)
    alive = np.ones(R, dtype=bool)
    steps, losses, lmax, eig_steps, thetas = [], [], [], [], []
    E = None

    def record(t):
        steps.append(t)
        if keep_theta:
            thetas.append(theta.copy())
        losses.append(np.where(alive, land.loss(theta), np.nan))
        lmax.append(np.where(alive, lambda_max(land.hessian(theta)), np.nan))

    for t in range(T):
        if t % record_every == 0:
            record(t)
        idx = np.stack([s.next() for s in streams])
        g = land.batch_grad(theta, idx)
        if needs_eig and (E is None or (every is not None and t % every == 0)):
            E = top_eigen(land.hessian(theta), K)[1]
            eig_steps.append(t)
        d = step_direction(method, g, E, gamma)
        new = theta - eta * d
        Lnew = land.loss(new)
        bad = ~np.isfinite(Lnew) | (Lnew > blowup * np.maximum(L0, 1e-300))
        alive &= ~bad
        theta = np.where(alive[:, None], new, theta)
    record(T)
    return {
        "steps": np.array(steps),
        "loss": np.array(losses),
        "lambda_max": np.array(lmax),
        "theta": theta,
        "diverged": ~alive,
        "eig_steps": eig_steps,
        **({"thetas": np.array(thetas)} if keep_theta else {}),
    }


# --- Sec. 3.2: the loss change along e_1 --------------------------------------------------------------
def loss_change_along_top(
    land: SharpValley, theta, eta: float, batch_size: int, *, alphas=ALPHAS, n_batches: int = 10, seed: int = 0
) -> dict:
    """E[L(theta - alpha eta g1 e_1) - L(theta)], g1 = <g_B, e_1>, over n_batches mini-batches.

    theta (M, D) or (D,); e_1 the top (algebraically largest) eigenvector of H(theta). Returns
    change (M, n_alpha) (mean over batches), rel_change (change / L(theta)), per_batch
    (M, n_batches, n_alpha), g1 (M, n_batches), G (M,) = <grad L, e_1>, lam (M,) = lambda_1.
    """
    S = batch_size
    check_instance(land, SharpValley, "land", "from make_valley or quadratic_valley")
    check_positive(eta, "eta")
    check_int_range(S, "batch size S", 1, land.N)
    check_int_range(n_batches, "n_batches", 1)
    check_int_range(seed, "seed", 0, 2**63 - 1)
    al = check_array(alphas, "alphas", (None,))
    theta = np.atleast_2d(check_array(theta, "theta"))
    if theta.ndim != 2 or theta.shape[1] != land.D:
        raise UserInputError(f"theta must have shape ({land.D},) or (M, {land.D}); got {np.shape(theta)}")
    M = theta.shape[0]
    lam, E = top_eigen(land.hessian(theta), 1)
    e1 = E[..., 0, :]
    stream = BatchStream(seed, 0, land.N, S)
    idx = np.stack([stream.next() for _ in range(M * n_batches)]).reshape(M, n_batches, S)
    gB = land.batch_grad(np.broadcast_to(theta[:, None, :], (M, n_batches, land.D)), idx)
    g1 = np.einsum("mbd,md->mb", gB, e1)
    L = land.loss(theta)
    moved = theta[:, None, None, :] - (al[None, None, :, None] * eta * g1[..., None, None]) * e1[:, None, None, :]
    per = land.loss(moved) - L[:, None, None]
    change = per.mean(axis=1)
    return {
        "alphas": al,
        "change": change,
        "rel_change": change / L[:, None],
        "per_batch": per,
        "g1": g1,
        "G": np.einsum("md,md->m", land.grad(theta), e1),
        "lam": lam[:, 0],
    }


def settled(lambda_max: np.ndarray, tail: float = 0.2, rtol: float = 0.05) -> bool | None:
    """Whether the trajectory-mean of lambda_max (n_rec, R) is flat over the last ``tail`` of the records:
    the means of the two halves of that window agree to ``rtol``. None with < 4 records in the window or
    every trajectory diverged. A "lambda_max reached" of a curve still rising is reported as unsettled."""
    lambda_max = check_array(lambda_max, "lambda_max", ("n_rec", "R"), finite=False)
    tail, rtol = check_range(tail, "tail", 0, 1), check_range(rtol, "rtol", 0, 1)
    n = max(1, int(round(tail * lambda_max.shape[0])))
    curve = np.array([mean_se(row)[0] for row in lambda_max[-n:]])
    if n < 4 or not np.all(np.isfinite(curve)):
        return None
    a, b = curve[: n // 2].mean(), curve[n // 2 :].mean()
    return bool(abs(b - a) <= rtol * max(abs(a), abs(b)))


def gamma_sweep(
    land: SharpValley,
    eta: float,
    batch_size: int,
    *,
    steps: int,
    K: int = TOP_K,
    gammas=GAMMAS,
    recompute: int | None = None,
    trajectories: int = TRAJECTORIES,
    seed: int = 0,
    record_every: int | None = None,
    tail: float = 0.2,
    executor=None,
) -> list[dict]:
    """NSGD for each gamma: final loss and the lambda_max of the region reached (mean over the last
    ``tail`` of the recorded steps and over trajectories), plus the curves. ``executor``: one task per
    gamma (:mod:`valleysim.executors`), the same rows. Defaults as ``simulate``'s."""
    gammas, tail = check_list(gammas, "gammas"), check_range(tail, "tail", 0, 1)
    if tail == 0:
        raise UserInputError("tail must be in (0, 1]: the share of the records that lambda_max_reached averages")
    fn = functools.partial(
        _gamma_point,
        land=land,
        eta=eta,
        batch_size=batch_size,
        steps=steps,
        K=K,
        recompute=recompute,
        trajectories=trajectories,
        seed=seed,
        record_every=record_every,
        tail=tail,
    )
    return list(executor.map(fn, gammas) if executor is not None else map(fn, gammas))


def _gamma_point(gm, *, land, eta, batch_size, steps, K, recompute, trajectories, seed, record_every, tail) -> dict:
    res = simulate(
        land,
        eta,
        batch_size,
        method="nsgd",
        steps=steps,
        trajectories=trajectories,
        seed=seed,
        record_every=record_every,
        K=K,
        gamma=gm,
        recompute=recompute,
    )
    n = max(1, int(round(tail * len(res["steps"]))))
    return {
        "gamma": float(gm),
        "final_loss": float(np.nanmean(res["loss"][-1])),
        "final_loss_sd": float(np.nanstd(res["loss"][-1])),
        "lambda_max_reached": float(np.nanmean(res["lambda_max"][-n:])),
        "lambda_max_settled": settled(res["lambda_max"], tail),
        "peak_lambda_max": float(np.nanmax(np.nanmean(res["lambda_max"], axis=1))),
        "diverged": int(res["diverged"].sum()),
        "steps": res["steps"],
        "loss_curve": np.nanmean(res["loss"], axis=1),
        "lambda_curve": np.nanmean(res["lambda_max"], axis=1),
    }
