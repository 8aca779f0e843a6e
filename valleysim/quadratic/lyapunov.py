"""Almost-sure (Lyapunov) growth and Monte Carlo mean-square growth.  [proofs.sgd_second_moment]

The typical trajectory grows like exp(gamma t) with
gamma = lim (1/t) log ||u_t||; for commuting (diagonal, incl. 1-D) H_i,
gamma = max_j E_B[log |1 - eta h_{B,j}|] exactly, the expectation over one
batch (for 'reshuffle' too: each reshuffled batch is marginally a uniform
S-subset and logs add). By Jensen gamma <= (1/2) log rho(T(eta)): mean-square
stability implies almost-sure stability, not conversely.
"""

from __future__ import annotations

import numpy as np

from valleysim.errors import UserInputError, check_int_range
from valleysim.quadratic.batches import MAX_BATCHES, count_batches, enumerate_batches
from valleysim.quadratic.integrator import Record, simulate
from valleysim.quadratic.landscape import PerExampleQuadratic, check_landscape
from valleysim.stats import mean_se

#: Defaults of ``mean_square_growth_mc``, shared with ``stability_report`` and ``valleysim stability --simulate``:
#: a short window (E||u_t||^2 is carried by ever rarer trajectories as t grows) and many trajectories.
MC_STEPS = 12
MC_TRAJECTORIES = 20000


def mc_burn_in(n_steps: int) -> int:
    """The Monte Carlo growth rate's default start of the window, n_steps / 4 (at least 1)."""
    return max(1, int(n_steps) // 4)


def lyapunov_exact(q: PerExampleQuadratic, eta: float, S: int, scheme: str = "without_replacement") -> float:
    """gamma = max_j E_B[log|1 - eta h_{B,j}|] by enumerating all batches (diagonal H_i only)."""
    eta = check_landscape(q).check_eta(eta)
    if q.kind != "diagonal":
        raise UserInputError(f"exact Lyapunov exponents need commuting (diagonal) H_i; q is {q.kind}")
    q, eta = q.unit_problem(eta)  # exact: the same products eta h
    one_step = "with_replacement" if scheme == "with_replacement" else "without_replacement"
    idx, prob = enumerate_batches(q.N, S, one_step)
    h_batch = q.data[idx].mean(axis=1)  # (B, D)
    moving = np.any(q.data != 0.0, axis=0)
    x = eta * h_batch[:, moving]
    with np.errstate(divide="ignore", invalid="ignore"):  # log|1 - x|, exact for tiny x (log1p)
        log_factor = np.where(x < 1.0, np.log1p(-np.minimum(x, 1.0)), np.log(np.abs(x - 1.0)))
    gam = prob @ log_factor
    return float(gam.max()) if gam.size else -np.inf


def _log_dist2(rec: Record) -> np.ndarray:
    """(R, n) log ||u_t||^2 from a renormalised record (no overflow)."""
    return 2.0 * rec.log_norm + np.log(rec.dist2[:, :1])


def lyapunov_exponent(
    q: PerExampleQuadratic,
    eta: float,
    S: int,
    scheme: str = "without_replacement",
    *,
    n_steps: int = 4000,
    burn_in: int = 500,
    n_traj: int = 256,
    seed: int = 0,
) -> dict:
    """The almost-sure growth rate per step of ||u_t||: {'value', 'se', 'method'}.

    Exact ('enumeration', se = 0) for diagonal H_i with at most MAX_BATCHES
    batches; otherwise ('monte_carlo') the mean over R independent
    renormalised trajectories of (log||u_T|| - log||u_{T0}||) / (T - T0),
    with its standard error.
    """
    _check_window(n_steps, burn_in, n_traj)
    one_step = "with_replacement" if scheme == "with_replacement" else "without_replacement"
    if q.kind == "diagonal" and count_batches(q.N, S, one_step) <= MAX_BATCHES:
        return {"value": lyapunov_exact(q, eta, S, scheme), "se": 0.0, "method": "enumeration"}
    rec = simulate(
        q, eta, S, steps=n_steps, trajectories=n_traj, seed=seed, scheme=scheme, record_every=burn_in, renormalize=True
    )
    t0 = int(np.searchsorted(rec.steps, burn_in))
    rates = (rec.log_norm[:, -1] - rec.log_norm[:, t0]) / (rec.steps[-1] - rec.steps[t0])
    value, se = mean_se(rates)
    return {"value": value, "se": se, "method": "monte_carlo"}


def mean_square_growth_mc(
    q: PerExampleQuadratic,
    eta: float,
    S: int,
    scheme: str = "without_replacement",
    *,
    n_steps: int = MC_STEPS,
    burn_in: int | None = None,
    n_traj: int = MC_TRAJECTORIES,
    seed: int = 0,
) -> dict:
    """Monte Carlo per-step growth rate of E||u_t||^2, to compare with log rho(T(eta)).

    Ratio estimator log(mean_r ||u_T||^2 / mean_r ||u_{T0}||^2) / (T - T0)
    from renormalised trajectories started at u_0 ~ N(0, P), with a
    delta-method standard error. Heavy tails (rho > 1 > exp(gamma)) make it
    biased low: the mean is carried by rare trajectories, and the standard
    error is then underestimated too. The diagnostic is the effective sample
    size (sum a)^2 / sum a^2 of the final weights a_r = ||u_T||^2: well
    below ~100 the estimate is not trustworthy whatever its SE says.
    The window is [burn_in, n_steps] (burn_in default ``mc_burn_in(n_steps)``).
    Returns {'value', 'se', 'spectral_radius_estimate', 'effective_sample_size'}.
    """
    burn_in = mc_burn_in(n_steps) if burn_in is None else burn_in
    _check_window(n_steps, burn_in, n_traj)
    rec = simulate(
        q, eta, S, steps=n_steps, trajectories=n_traj, seed=seed, scheme=scheme, record_every=burn_in, renormalize=True
    )
    t0 = int(np.searchsorted(rec.steps, burn_in))
    ld = _log_dist2(rec)
    a_log, b_log = ld[:, -1], ld[:, t0]
    a = np.exp(a_log - a_log.max())
    b = np.exp(b_log - b_log.max())
    n = a.size
    am, bm = a.mean(), b.mean()
    cov = np.cov(a, b, ddof=1)
    var_log_ratio = (cov[0, 0] / am**2 + cov[1, 1] / bm**2 - 2 * cov[0, 1] / (am * bm)) / n
    dt = rec.steps[-1] - rec.steps[t0]
    rate = (np.log(am) + a_log.max() - np.log(bm) - b_log.max()) / dt
    return {
        "value": float(rate),
        "se": float(np.sqrt(max(var_log_ratio, 0.0)) / dt),
        "spectral_radius_estimate": float(np.exp(rate)),
        "effective_sample_size": float(a.sum() ** 2 / (a @ a)),
    }


def _check_window(n_steps: int, burn_in: int, n_traj: int) -> None:
    """A window [burn_in, n_steps] of at least one step, over at least 2 trajectories (for a standard error)."""
    n_steps = check_int_range(n_steps, "n_steps", 1)
    check_int_range(burn_in, "burn_in", 0, n_steps - 1)
    check_int_range(n_traj, "n_traj", 2)
