"""Ensemble SGD on per-example quadratics: R trajectories x T steps in one numba kernel.

Each step draws a mini-batch B of size S and moves u = w - w* by
u <- u - eta (1/S) sum_{i in B} H_i u. Sampling schemes:

    without_replacement  a uniform S-subset, independently every step (default)
    with_replacement     S independent uniform indices every step
    reshuffle            a new random permutation every epoch, consumed in
                         floor(N/S) consecutive batches (the last N mod S
                         examples are dropped). A different process: batches
                         within an epoch are dependent, so the one-step
                         second-moment recursion does not apply.

Reproducibility: trajectory r draws from its own generator seeded by
(seed, r) (``valleysim.rng``), and its initial point comes from a numpy
Generator seeded by ``seed``; results do not depend on the thread count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from valleysim import chunks
from valleysim.errors import UserInputError, check_array, check_batch_size, check_int_range, check_positive
from valleysim.memory import F64, check_fits
from valleysim.quadratic.landscape import PerExampleQuadratic, check_landscape
from valleysim.rng import bounded, seed_state
from valleysim.theory import SCHEMES, check_scheme

_KIND_CODE = {"dense": 0, "diagonal": 1, "rank_one": 2}
BLOCK = 256  # trajectories a thread advances in lockstep, O(D) data (results do not depend on the blocking)
BLOCK_BYTES = 2**26  # at most this much per block for its trajectories' index permutations


@dataclass(frozen=True)
class Record:
    """What an ensemble run recorded. R trajectories, n recorded steps.

    steps:     (n,) step index t of each record (0 = initial point)
    dist2:     (R, n) squared distance ||P (w_t - w*)||^2 to the minimum manifold
    loss:      (R, n) full loss L(w_t)
    log_norm:  (R, n) log(||u_t|| / ||u_0||), u = P (w - w*)
    diverged_step: (R,) first step whose squared distance reached the divergence
               threshold or was not finite, -1 if none. Records from then on are inf.
    """

    steps: np.ndarray
    dist2: np.ndarray
    loss: np.ndarray
    log_norm: np.ndarray
    diverged_step: np.ndarray

    @property
    def diverged(self) -> np.ndarray:
        """(R,) bool: the trajectory diverged."""
        return self.diverged_step >= 0


@njit(inline="always")
def _draw_batch(state, scheme, perm, pos, S, N):
    """Fill perm so that the batch is perm[start:start+S]; returns (start, new pos)."""
    if scheme == 0:  # without replacement: partial Fisher-Yates on a persistent permutation
        for k in range(S):
            j = k + bounded(state, N - k)
            tmp = perm[k]
            perm[k] = perm[j]
            perm[j] = tmp
        return 0, pos
    if scheme == 1:  # with replacement: S independent indices written in front
        for k in range(S):
            perm[k] = bounded(state, N)
        return 0, pos
    if pos + S > N:  # reshuffle: new epoch
        for k in range(N - 1):
            j = k + bounded(state, N - k)
            tmp = perm[k]
            perm[k] = perm[j]
            perm[j] = tmp
        pos = 0
    return pos, pos + S


@njit(inline="always")
def _add_hvps(kind, data, i, users, u, g):
    """g[r] += H_i u[r] for every trajectory r in ``users``, for the three data layouts."""
    D = u.shape[1]
    if kind == 0:  # H_i symmetric: g_r += sum_b u_rb H_i[b, :], contiguous axpys that vectorise
        Hi = data[i]
        b = 0
        while b + 4 <= D:  # four rows of H_i stay in L1 while every user applies them
            h0, h1, h2, h3 = Hi[b], Hi[b + 1], Hi[b + 2], Hi[b + 3]
            for r in users:
                ur, gr = u[r], g[r]
                u0, u1, u2, u3 = ur[b], ur[b + 1], ur[b + 2], ur[b + 3]
                for a in range(D):  # left to right: rounds exactly like four one-row axpys
                    gr[a] = gr[a] + h0[a] * u0 + h1[a] * u1 + h2[a] * u2 + h3[a] * u3
            b += 4
        for c in range(b, D):
            hc = Hi[c]
            for r in users:
                urc, gr = u[r, c], g[r]
                for a in range(D):
                    gr[a] += hc[a] * urc
    elif kind == 1:
        for r in users:
            for a in range(D):
                g[r, a] += data[i, 0, a] * u[r, a]
    else:
        for r in users:
            dot = 0.0
            for a in range(D):
                dot += data[i, 0, a] * u[r, a]
            for a in range(D):
                g[r, a] += dot * data[i, 0, a]


@njit(inline="always")
def _quad(H, u):
    out = 0.0
    for a in range(u.shape[0]):
        acc = 0.0
        for b in range(u.shape[0]):
            acc += H[a, b] * u[b]
        out += u[a] * acc
    return out


@njit(inline="always")
def _record(H, u, scale, log_rel, j, r, rec, dist2, loss, log_norm):
    dist2[r, rec] = np.sum(u[j] * u[j]) * scale
    loss[r, rec] = 0.5 * _quad(H, u[j]) * scale
    log_norm[r, rec] = log_rel


@njit(parallel=True, cache=True)
def _ensemble_kernel(
    kind,
    data,
    H,
    eta,
    S,
    scheme,
    t_begin,
    t_end,
    rec_steps,
    seed,
    renormalize,
    threshold,
    block,
    u,
    states,
    perms,
    pos,
    alive,
    n0,
    log_acc,
    dist2,
    loss,
    log_norm,
    div_step,
):
    """Steps t_begin <= t < t_end (t = 0: the start, records only) of every trajectory. Its state (u
    from U0, generator, permutation, epoch position, alive, |u_0|, log-norm) lives in the arrays from
    ``u`` to ``log_acc``, set up at t = 0 and carried from one call to the next.

    Blocks of ``block`` trajectories advance in lockstep; within a step the
    (trajectory, example) pairs of all batches are sorted by example, so each
    H_i is read once per block and step (N H_i do not fit in cache). Every
    trajectory adds its H_i u in increasing example order: the result does
    not depend on the blocking or the thread count.
    """
    R, D = u.shape
    N = data.shape[0]
    n_rec = rec_steps.shape[0]
    n_blocks = (R + block - 1) // block
    first_rec = np.searchsorted(rec_steps, t_begin)
    for blk in prange(n_blocks):
        r0 = blk * block
        r1 = min(R, r0 + block)
        nb = r1 - r0
        if t_begin == 0:
            for j in range(r0, r1):
                states[j] = seed_state(seed, j)
                perms[j, :N] = np.arange(N)
                pos[j] = N  # forces a shuffle on the first reshuffle step
                alive[j] = True
                n0[j] = np.sqrt(np.sum(u[j] * u[j]))
                if renormalize and n0[j] > 0.0:
                    u[j] /= n0[j]
                log_acc[j] = 0.0  # renormalize: log(||u_t|| / ||u_0||), u kept at unit norm
                div_step[j] = -1
        st = states[r0:r1].copy()  # the block's state in local arrays while it runs
        pm = perms[r0:r1].copy()
        ps = pos[r0:r1].copy()
        ok = alive[r0:r1].copy()
        ub = u[r0:r1].copy()
        la = log_acc[r0:r1].copy()
        start = np.zeros(nb, dtype=np.int64)
        g = np.empty((nb, D))
        offset = np.empty(N + 1, dtype=np.int64)
        order = np.empty(nb * S, dtype=np.int64)
        rec = first_rec
        for t in range(t_begin, t_end):
            if t > 0:
                offset[:] = 0
                for j in range(nb):
                    if ok[j]:
                        start[j], ps[j] = _draw_batch(st[j], scheme, pm[j], ps[j], S, N)
                        for k in range(S):
                            offset[pm[j, start[j] + k] + 1] += 1
                for i in range(N):
                    offset[i + 1] += offset[i]
                for j in range(nb):  # counting sort: order[offset[i]:offset[i+1]] = trajectories using i
                    if ok[j]:
                        for k in range(S):
                            i = pm[j, start[j] + k]
                            order[offset[i]] = j
                            offset[i] += 1
                g[:] = 0.0
                lo = 0
                for i in range(N):  # offset[i] is now the end of example i's slice
                    _add_hvps(kind, data, i, order[lo : offset[i]], ub, g)
                    lo = offset[i]
                for j in range(nb):
                    if not ok[j]:
                        continue
                    for a in range(D):
                        ub[j, a] -= eta * (g[j, a] / S)
                    n2 = np.sum(ub[j] * ub[j])
                    if renormalize:
                        nrm = np.sqrt(n2)
                        la[j] += np.log(nrm)
                        if nrm > 0.0:
                            ub[j] /= nrm
                    elif not n2 < threshold:
                        ok[j] = False
                        div_step[r0 + j] = t
                        for q in range(rec, n_rec):
                            dist2[r0 + j, q] = np.inf
                            loss[r0 + j, q] = np.inf
                            log_norm[r0 + j, q] = np.inf
            if rec < n_rec and rec_steps[rec] == t:
                for j in range(nb):
                    if not ok[j]:
                        continue
                    if renormalize:
                        _record(
                            H,
                            ub,
                            n0[r0 + j] * n0[r0 + j] * np.exp(2.0 * la[j]),
                            la[j],
                            j,
                            r0 + j,
                            rec,
                            dist2,
                            loss,
                            log_norm,
                        )
                    else:
                        _record(
                            H,
                            ub,
                            1.0,
                            0.5 * np.log(np.sum(ub[j] * ub[j])) - np.log(n0[r0 + j]),
                            j,
                            r0 + j,
                            rec,
                            dist2,
                            loss,
                            log_norm,
                        )
                rec += 1
        states[r0:r1] = st
        perms[r0:r1] = pm
        pos[r0:r1] = ps
        alive[r0:r1] = ok
        u[r0:r1] = ub
        log_acc[r0:r1] = la


def block_size(kind: str, n_traj: int, N: int, S: int) -> int:
    """Trajectories per block of the kernel (any size gives the same results).

    Dense H_i (D^2 numbers each) dominate the memory traffic, and each block
    streams all of them once per step: one block per thread (fewer
    streams, more reuse of each H_i), as long as the block's permutations
    fit in BLOCK_BYTES. Diagonal and rank-one data are O(D) per example:
    blocks of BLOCK keep a block's state in cache.
    """
    if kind != "dense":
        return BLOCK
    threads = chunks.numba_threads()
    cap = max(BLOCK, BLOCK_BYTES // (8 * max(N, S)))
    n_blocks = threads * -(-n_traj // (threads * cap))
    return -(-n_traj // n_blocks)


def kernel_layout(q: PerExampleQuadratic) -> tuple[int, np.ndarray]:
    """(kind code, data as a 3-D array) as the kernel reads it: (N, D, D) or (N, 1, D)."""
    data = q.data if q.kind == "dense" else q.data[:, None, :]
    return _KIND_CODE[q.kind], np.ascontiguousarray(data)


def initial_points(q: PerExampleQuadratic, n_traj: int, seed: int, w0=None) -> np.ndarray:
    """(R, D) initial offsets u_0 = P (w_0 - w*), P the projector onto the non-flat subspace.

    ``w0`` None: u_0 ~ N(0, P) drawn per trajectory (E[u_0 u_0^T] = P);
    otherwise every trajectory starts at the given w0 (D,).
    """
    U = q.range_basis()
    if w0 is None:
        z = np.random.default_rng([seed, 0x5EED]).standard_normal((n_traj, U.shape[1]))
        return np.ascontiguousarray(z @ U.T)
    w0 = check_array(w0, "w0", (q.D,))
    u0 = U @ (U.T @ (w0 - q.w_star))
    if not np.any(u0):
        raise UserInputError("w0 lies on the minimum manifold: the distance stays 0")
    return np.ascontiguousarray(np.broadcast_to(u0, (n_traj, q.D)))


def simulate_bytes(q: PerExampleQuadratic, n_traj: int, batch_size: int, n_records: int) -> float:
    """Peak memory of ``simulate`` beyond the landscape, in bytes: per trajectory its records (3 of
    ``n_records``), start, state and gradient (D each) and a permutation of max(N, S)."""
    return float(n_traj) * (3.0 * n_records + 4.0 * q.D + max(q.N, batch_size) + 8) * F64


def simulate(
    q: PerExampleQuadratic,
    eta: float,
    batch_size: int,
    *,
    steps: int,
    trajectories: int = 256,
    seed: int = 0,
    record_every: int | None = None,
    scheme: str = "without_replacement",
    w0=None,
    renormalize: bool = False,
    divergence_threshold: float = 1e100,
) -> Record:
    """Run R = ``trajectories`` SGD trajectories for T = ``steps`` steps (see module docstring).

    ``renormalize``: rescale u to unit norm after every step and accumulate
    log||u|| instead (for Lyapunov exponents and mean-square growth without
    overflow; no divergence is flagged then). Records at t = 0, every
    ``record_every`` steps (default about 100 records) and at t = T.
    """
    eta = check_landscape(q).check_eta(eta)
    check_scheme(scheme)
    check_batch_size(batch_size, q.N, allow_above_n=scheme == "with_replacement")
    n_steps, n_traj = steps, trajectories
    check_int_range(n_steps, "steps", 0)
    check_int_range(n_traj, "trajectories", 1)
    check_int_range(seed, "seed", 0, 2**63 - 1)
    every = record_every or max(1, n_steps // 100)
    check_int_range(every, "record_every", 1)
    check_positive(divergence_threshold, "divergence_threshold")
    check_fits(
        simulate_bytes(q, n_traj, batch_size, n_steps // every + 2),
        f"{n_traj} trajectories of {n_steps} steps (S = {batch_size}, D = {q.D}, records every {every})",
    )
    steps = np.unique(np.r_[np.arange(0, n_steps + 1, every), n_steps]).astype(np.int64)
    q, factor = q.unit_scaled()  # outside [1e-100, 1e100]: the exactly rescaled problem, the same iterates
    eta = float(eta) * factor
    kind, data = kernel_layout(q)
    shape = (n_traj, steps.size)
    dist2, loss, log_norm = np.empty(shape), np.empty(shape), np.empty(shape)
    div_step = np.empty(n_traj, dtype=np.int64)
    # the trajectories' state, carried from one chunk of steps to the next (valleysim.chunks)
    u = initial_points(q, n_traj, seed, w0).copy()
    states = np.empty((n_traj, 2), dtype=np.uint64)
    perms = np.empty((n_traj, max(q.N, int(batch_size))), dtype=np.int64)
    pos = np.empty(n_traj, dtype=np.int64)
    alive = np.empty(n_traj, dtype=np.bool_)
    n0, log_acc = np.empty(n_traj), np.empty(n_traj)
    H, block = q.mean_hessian(), block_size(q.kind, n_traj, q.N, int(batch_size))

    def advance(t0, t1):
        _ensemble_kernel(
            kind,
            data,
            H,
            float(eta),
            int(batch_size),
            SCHEMES.index(scheme),
            t0,
            t1,
            steps,
            int(seed),
            bool(renormalize),
            float(divergence_threshold),
            block,
            u,
            states,
            perms,
            pos,
            alive,
            n0,
            log_acc,
            dist2,
            loss,
            log_norm,
            div_step,
        )

    chunks.run_in_chunks(advance, 0, n_steps + 1)
    if factor != 1.0:
        with np.errstate(over="ignore"):  # a loss beyond float64 is inf in the units given
            loss *= factor  # the loss is in the units of the H_i given
    return Record(steps, dist2, loss, log_norm, div_step)
