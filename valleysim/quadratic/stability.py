"""One stability report at (eta, S): exact mean-square, almost-sure, optional Monte Carlo."""

from __future__ import annotations

import numpy as np

from valleysim.errors import check_batch_size, check_int_range
from valleysim.quadratic import reshuffle
from valleysim.quadratic.landscape import PerExampleQuadratic, check_landscape
from valleysim.quadratic.lyapunov import (
    MC_STEPS,
    MC_TRAJECTORIES,
    lyapunov_exponent,
    mc_burn_in,
    mean_square_growth_mc,
)
from valleysim.quadratic.second_moment import MomentMap, mean_square
from valleysim.theory import check_scheme


def stability_report(
    q: PerExampleQuadratic,
    eta: float,
    S: int,
    scheme: str = "without_replacement",
    *,
    simulate: bool = False,
    n_traj: int = MC_TRAJECTORIES,
    n_steps: int = MC_STEPS,
    seed: int = 0,
) -> dict:
    """Everything known about SGD's stability at (eta, S) on ``q``.

    Keys: eta_star, spectral_radius (per step, of E u u^T), mean_square_stable,
    lyapunov_exponent (per step, of log||u||) with lyapunov_se and
    lyapunov_method, almost_sure_stable, lambda_max, nonuniformity,
    variance_factor, sharpness_bound, noise_bound; with ``simulate`` also
    the Monte Carlo per-step growth rate of E||u_t||^2 over the window
    [n_steps / 4, n_steps] (simulated_growth_rate, + _se) next to its exact
    value over the same window (predicted_growth_rate, from tr T^t(I); it
    tends to log spectral_radius as the window grows). Short windows keep the
    Monte Carlo honest: E||u_t||^2 is carried by ever rarer trajectories;
    simulated_effective_sample_size well below ~100 flags an estimate that
    the heavy tail has made unreliable.
    For 'reshuffle' the mean-square entries are per-step values of the exact
    epoch map (N <= 8) and None otherwise.
    """
    eta = check_landscape(q).check_eta(eta)
    check_scheme(scheme)
    S = check_batch_size(S, q.N, allow_above_n=scheme == "with_replacement")
    seed = check_int_range(seed, "seed", 0, 2**63 - 1)
    if simulate:
        n_traj, n_steps = check_int_range(n_traj, "n_traj", 2), check_int_range(n_steps, "n_steps", 2)
    out = {"kind": q.kind, "N": q.N, "D": q.D, "eta": float(eta), "batch_size": int(S), "scheme": scheme}
    moments = MomentMap(q)
    if scheme == "reshuffle":
        exact = q.N <= reshuffle.MAX_N
        rho = reshuffle.per_step_spectral_radius(q, eta, S) if exact else None
        ms = mean_square(q, eta, S, "without_replacement", moments)  # curvature facts and bounds
        ms.update(
            eta_star=reshuffle.eta_star(q, S) if exact else None,
            spectral_radius=rho,
            mean_square_stable=None if rho is None else bool(rho <= 1.0 + 1e-12),
        )
    else:
        ms = mean_square(q, eta, S, scheme, moments)
    out.update(ms)
    lyap = lyapunov_exponent(q, eta, S, scheme, seed=seed)
    out.update(
        lyapunov_exponent=lyap["value"],
        lyapunov_se=lyap["se"],
        lyapunov_method=lyap["method"],
        almost_sure_stable=bool(lyap["value"] < 0.0),
    )
    if simulate:
        t0 = mc_burn_in(n_steps)
        mc = mean_square_growth_mc(q, eta, S, scheme, n_steps=n_steps, burn_in=t0, n_traj=n_traj, seed=seed)
        predicted = None
        if scheme != "reshuffle":
            d2 = moments.mean_dist2(eta, out["variance_factor"], [t0, n_steps])
            predicted = float(np.log(d2[1] / d2[0]) / (n_steps - t0))
        out.update(
            simulated_growth_rate=mc["value"],
            simulated_growth_rate_se=mc["se"],
            simulated_effective_sample_size=mc["effective_sample_size"],
            predicted_growth_rate=predicted,
            log_spectral_radius=None if out["spectral_radius"] is None else float(np.log(out["spectral_radius"])),
        )
    return out
