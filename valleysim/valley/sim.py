"""Simulate SGD in a valley and compare with the derived drift and moments (R3, R4, R5).

``simulate`` runs the compiled ensemble integrator (``valley.codegen``),
``summarise`` turns its records into measured quantities with standard errors
(over trajectories) next to the predictions of ``valley.theory``. Predictions
are evaluated along the recorded path of theta_hat at the recorded steps
of the measurement window and averaged over it: they depend on the recording
schedule, so the default (``default_record_every``, also the CLI's) records
the window ``RECORDS`` times, and ``summarise`` withholds them when halving
the schedule would move them by more than ``SCHEDULE_RTOL``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import sympy as sp

from valleysim import chunks
from valleysim.errors import UserInputError, check_array, check_instance, check_int_range, check_learning_rate
from valleysim.memory import F64, check_fits
from valleysim.stats import mean_se
from valleysim.valley import theory as vt
from valleysim.valley.codegen import OBSERVABLES, REASONS, compile_kernels
from valleysim.valley.landscape import ValleyLandscape, diff
from valleysim.valley.noise import SCALE, NoiseModel

#: Defaults of ``simulate``, shared with ``valleysim valley`` (its flags read them from here).
BURN_IN = 1000
TRAJECTORIES = 1024
RECORDS = 50  # records per window by default: ``default_record_every``
#: The window-averaged predictions follow the recorded path of theta_hat: too few records bias the trapezoid
#: over it (2 records made a trace drift 1.9x too large). They are reported when the schedule changes them
#: by at most this much (relative, ``schedule_error``).
SCHEDULE_RTOL = 0.01


def default_record_every(steps: int) -> int:
    """Record every max(1, steps // RECORDS) window steps: about RECORDS + 1 records."""
    return max(1, int(steps) // RECORDS)


@dataclass
class ValleyRun:
    """Raw output of ``simulate``.

    rec (R, n_rec, 4 + D): observables ``OBSERVABLES`` then the coordinates, every
    ``record_every`` steps of the window (record j at window step j * record_every;
    NaN after a trajectory stopped); acc (R, n + 2): window sums of theta_i^2,
    theta . g_B and |g_B|^2 (theta block); status (R,) the step a trajectory
    stopped at (-1: ran to the end) and reason (R,) the code in ``REASONS``.
    """

    land: ValleyLandscape
    noise: NoiseModel
    eta: float
    n_burn: int
    n_steps: int
    record_every: int
    rec: np.ndarray
    acc: np.ndarray
    status: np.ndarray
    reason: np.ndarray

    @property
    def completed(self) -> np.ndarray:
        return self.status < 0

    @property
    def coords(self) -> np.ndarray:
        """(R, n_rec, D) recorded coordinates."""
        return self.rec[:, :, len(OBSERVABLES) :]

    def observable(self, name: str) -> np.ndarray:
        """(R, n_rec) recorded observable ``name`` in ``OBSERVABLES``."""
        return self.rec[:, :, OBSERVABLES.index(name)]


def check_start(land: ValleyLandscape, noise: NoiseModel, eta: float) -> np.ndarray:
    """The starting point must lie in the valley: lambda_i > 0, kinks away from 0, F' >= 0."""
    x0 = np.asarray(land.init, dtype=float)
    at = dict(zip(land.coords, x0))
    if land.valley_form:
        lam = land.eval_lambdas(x0)
        bad = [f"lambda_{i + 1} = {v:.4g}" for i, v in enumerate(lam) if not v > 0]
        if bad:
            raise UserInputError(
                f"non-positive curvature at the initial point ({', '.join(bad)}); move --init into the valley"
            )
    for k in land.kinks:
        if float(k.subs(at)) == 0:
            raise UserInputError(f"the initial point sits on a kink ({k} = 0); move --init off it")
    if not noise.minibatch:
        v = np.array([float(e.subs({SCALE: noise.scale, **at})) for e in noise.variances])
        if np.any(~np.isfinite(v)) or np.any(v < 0):
            raise UserInputError(
                f"--noise {noise.name}: the noise variances at the initial point are {v}; "
                "designed noise needs dF/dlambda_i >= 0 (Theorem 2)"
            )
    return x0


def valley_bytes(land: ValleyLandscape, trajectories: int, n_records: int) -> float:
    """Memory of ``simulate`` and ``summarise``, in bytes: per trajectory and record the observables and
    coordinates, and the predictions (Hessians and their gradients, D^2 + D^3 numbers, a few copies)."""
    D = land.n + land.m
    per_record = len(OBSERVABLES) + D + 4.0 * (D**2 + D**3)
    return float(trajectories) * (n_records * per_record + 3.0 * D + max(land.n_examples, 1)) * F64


def simulate(
    land: ValleyLandscape,
    noise: NoiseModel,
    eta: float,
    *,
    steps: int,
    burn_in: int = BURN_IN,
    trajectories: int = TRAJECTORIES,
    seed: int = 0,
    record_every: int | None = None,
) -> ValleyRun:
    """R trajectories from ``land.init``: ``burn_in`` steps, then a window of ``steps`` steps, recorded every
    ``record_every`` steps (default ``default_record_every(steps)``)."""
    check_instance(land, ValleyLandscape, "land", "from ValleyLandscape.from_strings or catalogue")
    check_instance(noise, NoiseModel, "noise", "from make_noise(land, ...)")
    noise.check_for(land)
    eta = check_learning_rate(eta, "--eta")
    steps = check_int_range(steps, "--steps", 1)
    burn_in = check_int_range(burn_in, "--burn-in", 0)
    R = check_int_range(trajectories, "--trajectories", 2)
    record_every = default_record_every(steps) if record_every is None else record_every
    record_every = check_int_range(record_every, "--record-every", 1)
    if record_every > steps:
        raise UserInputError(f"--record-every must be in 1..--steps ({steps}); got {record_every}")
    seed = check_int_range(seed, "--seed", 0, 2**63 - 1)
    n_rec = steps // record_every + 1
    check_fits(
        valley_bytes(land, R, n_rec),
        f"{R} trajectories with {n_rec} records each (--trajectories, --steps / --record-every)",
    )
    x0 = check_start(land, noise, eta)
    kernels = compile_kernels(land, noise)
    rec = np.full((R, n_rec, len(OBSERVABLES) + land.n + land.m), np.nan)
    acc = np.zeros((R, land.n + 2))
    status = np.empty(R, dtype=np.int64)
    reason = np.empty(R, dtype=np.int64)
    X = np.tile(x0, (R, 1))
    data = land.data if land.finite_sum else np.zeros((1, 1))
    S = noise.S if noise.minibatch else 1
    # the trajectories' state, carried from one chunk of steps to the next (valleysim.chunks)
    points, states = np.empty_like(X), np.empty((R, 2), dtype=np.uint64)
    perms = np.empty((R, data.shape[0]), dtype=np.int64)

    def advance(t0, t1):
        kernels.run(
            X,
            eta,
            noise.scale,
            burn_in,
            steps,
            record_every,
            seed,
            data,
            S,
            t0,
            t1,
            points,
            states,
            perms,
            rec,
            acc,
            status,
            reason,
        )

    chunks.run_in_chunks(advance, 0, burn_in + steps + 1)
    return ValleyRun(land, noise, eta, burn_in, steps, record_every, rec, acc, status, reason)


def noise_covariance(run: ValleyRun, x: np.ndarray) -> np.ndarray:
    """Covariance of the gradient noise at points x (..., D) -> (..., D, D).

    Gaussian models: diag of their variances. True mini-batches: c(S, M) times
    the population covariance of the M per-example gradients.
    """
    land, noise = run.land, run.noise
    if not noise.minibatch:
        v = land._lambdify([e.subs(SCALE, noise.scale) for e in noise.variances])(x)
        return v[..., :, None] * np.eye(v.shape[-1])
    g = _example_gradients(land)(x)  # (..., M, D)
    g = g - g.mean(axis=-2, keepdims=True)
    return noise.scale * np.einsum("...ka,...kb->...ab", g, g) / land.n_examples


_EXAMPLE_CACHE: dict = {}


def _per_example(land: ValleyLandscape, name: str, exprs: list, shapes: list):
    """x (..., D) -> tuple of arrays (..., M, *shape), one per shape, of the per-example ``exprs`` (flat)."""
    if (land.key, name) not in _EXAMPLE_CACHE:
        f = sp.lambdify([list(land.coords), list(land.data_symbols)], exprs, "numpy")
        sizes = np.cumsum([0] + [int(np.prod(s)) for s in shapes])

        def call(x):
            x = np.asarray(x, dtype=float)
            lead = x.shape[:-1] + (land.n_examples,)
            out = np.stack(
                [
                    np.broadcast_to(np.asarray(v, dtype=float), lead)
                    for v in f(list(np.moveaxis(x, -1, 0)[..., None]), list(land.data.T))
                ],
                axis=-1,
            )
            return tuple(out[..., a:b].reshape(lead + s) for a, b, s in zip(sizes[:-1], sizes[1:], shapes))

        _EXAMPLE_CACHE[(land.key, name)] = call
    return _EXAMPLE_CACHE[(land.key, name)]


def _example_gradients(land: ValleyLandscape):
    """x (..., D) -> per-example gradients (..., M, D)."""
    g = [diff(land.loss, c) for c in land.coords]
    call = _per_example(land, "grad", g, [(len(g),)])
    return lambda x: call(x)[0]


def _example_jets(land: ValleyLandscape):
    """x (..., D) -> per-example gradients g (..., M, D), their theta-Jacobians J (..., M, D, n)
    and theta-Hessians T (..., M, D, n, n)."""
    g = [diff(land.loss, c) for c in land.coords]
    J = [[diff(ga, t) for t in land.theta] for ga in g]
    T = [[[diff(ga, t, u) for u in land.theta] for t in land.theta] for ga in g]
    D, n = len(g), land.n
    return _per_example(land, "jets", g + _flat(J) + _flat(T), [(D,), (D, n), (D, n, n)])


def _flat(nested) -> list:
    return [e for row in nested for e in (_flat(row) if isinstance(row, list) else [row])]


def predictions(run: ValleyRun, xhat: np.ndarray) -> dict:
    """Theory at frozen theta_hat = xhat (..., m), theta = 0: arrays with the leading shape.

    ``W``/``W_leading`` (..., n) stationary <theta_i^2> (exact in eta, leading
    order; NaN where no stationary state exists), ``{trace,logdet,f}_drift`` and
    ``_leading`` the expected one-step change, ``neg_eig_slope`` and
    ``schur_nsd`` (R5).
    """
    _check_run(run)
    land, eta = run.land, run.eta
    land.require_valley_form("the drift prediction")
    xhat = check_array(xhat, "xhat", ("...",) * (np.ndim(xhat) - 1) + (land.m,))
    x = np.concatenate([np.zeros(xhat.shape[:-1] + (land.n,)), xhat], axis=-1)
    lam, grad_lam = land.eval_lambdas(x), land.eval_grad_lambdas(x)
    cov = noise_covariance(run, x)  # at the floor point
    # W_ii depends on C_ii only (the Lyapunov solution is entrywise), and the theta_hat step on W_ii only
    C, C_hat = np.diagonal(cov[..., : land.n, : land.n], axis1=-2, axis2=-1), cov[..., land.n :, land.n :]
    diag = lambda a: a[..., :, None] * np.eye(a.shape[-1])  # noqa: E731
    stable = np.all((lam > 0) & (eta * lam < 2), axis=-1)
    W = np.full(lam.shape, np.nan)
    C_hat_W = np.full(C_hat.shape, np.nan)
    if run.noise.minibatch:  # multiplicative noise: W and C_hat to O(eta) more
        c, n = run.noise.scale, land.n
        for idx in np.array_split(np.flatnonzero(stable.ravel()), max(1, int(stable.sum()) // 8192)):
            C0, K = vt.minibatch_noise_response(*_example_jets(land)(x.reshape(-1, x.shape[-1])[idx]))
            W_full = vt.stationary_second_moments_minibatch(eta, c, C0, K, lam.reshape(-1, n)[idx])
            W.reshape(-1, n)[idx] = np.diagonal(W_full, axis1=-2, axis2=-1)
            C_hat_W.reshape((-1,) + C_hat.shape[len(stable.shape) :])[idx] = (
                c * (C0 + np.einsum("...ij,...ijab->...ab", W_full, K))[..., n:, n:]
            )
    else:
        W[stable] = np.diagonal(vt.stationary_second_moments(lam[stable], diag(C[stable]), eta), axis1=-2, axis2=-1)
        C_hat_W = C_hat
    W_leading = np.diagonal(vt.stationary_second_moments_leading(lam, diag(C), eta), axis1=-2, axis2=-1)
    out = {"W": W, "W_leading": W_leading}
    for name, f in _spectral_functions(land, run.noise).items():
        gf, hf = _spectral_derivatives(land, name, f)
        for suffix, w, ch in (("", W, C_hat_W), ("_leading", W_leading, C_hat)):
            out[f"{name}_drift{suffix}"] = vt.spectral_drift(eta, w, grad_lam, gf(x), hf(x), ch)
    out["neg_eig_slope"], out["schur_nsd"] = vt.negative_eigenvalue_slope(lam, grad_lam, land.eval_hess_lambdas(x), W)
    return out


def project_to_floor(land: ValleyLandscape, x: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Nearest minimum, by Newton steps restricted to the normal space (the n top Hessian directions).

    x (..., D) -> (..., D); NaN where the gradient does not vanish to 1e-10 (or x is NaN).
    """
    grad = land._lambdify(land.gradient)
    x = np.array(x, dtype=float)
    for _ in range(iterations):
        lam, V = np.linalg.eigh(land.eval_hessian(x))
        lam_N, V_N = lam[..., -land.n :], V[..., :, -land.n :]
        x = x - np.einsum("...ai,...i,...bi,...b->...a", V_N, 1.0 / lam_N, V_N, grad(x))
    return np.where(np.linalg.norm(grad(x), axis=-1, keepdims=True) < 1e-10, x, np.nan)


def manifold_trace_drift(run: ValleyRun, x: np.ndarray) -> np.ndarray:
    """Expected one-step change of tr H at the projection of x (..., D) onto the minimum manifold.

    ``valley.theory.manifold_drift`` at the projection, dotted with grad tr H there; NaN where x does not
    project onto a minimum.
    """
    land = run.land
    xs = project_to_floor(land, x)
    found = np.all(np.isfinite(xs), axis=-1)
    out = np.full(found.shape, np.nan)
    xs = xs[found]
    dH = land.eval_hessian_gradient(xs)
    dx, _ = vt.manifold_drift(run.eta, land.eval_hessian(xs), dH, noise_covariance(run, xs), land.n)
    out[found] = np.einsum("...aac,...c->...", dH, dx)
    return out


def _spectral_functions(land: ValleyLandscape, noise: NoiseModel) -> dict:
    lam = land.lambdas
    fs = {"trace": sp.Add(*lam), "logdet": sp.Add(*[sp.log(x) for x in lam])}
    if noise.f is not None:
        fs["f"] = noise.f
    return fs


_DERIV_CACHE: dict = {}


def _spectral_derivatives(land: ValleyLandscape, name: str, f: sp.Expr):
    """(grad_hat f, hess_hat f) as functions x (..., D) -> (..., m), (..., m, m); cached."""
    key = (land.key, name, sp.srepr(f))
    if key not in _DERIV_CACHE:
        _DERIV_CACHE[key] = (
            land._lambdify([diff(f, y) for y in land.theta_hat]),
            land._lambdify([[diff(f, y, z) for z in land.theta_hat] for y in land.theta_hat]),
        )
    return _DERIV_CACHE[key]


def _window_mean(a: np.ndarray) -> np.ndarray:
    """Trapezoid mean over the window axis (1) of a quantity known at equally spaced records."""
    return a[:, 0] if a.shape[1] == 1 else np.trapezoid(a, axis=1) / (a.shape[1] - 1)


def relaxation_steps(land: ValleyLandscape, eta: float) -> float:
    """Steps for E[theta_i^2] to relax by 1/e at the starting theta_hat, max over i:
    1 / (2 |log|1 - eta lambda_i||) (the second moment contracts by (1 - eta lambda_i)^2 per step)."""
    lam = np.asarray(land.eval_lambdas(np.asarray(land.init, dtype=float)), dtype=float)
    with np.errstate(divide="ignore"):
        rate = 2.0 * np.abs(np.log(np.abs(1.0 - eta * lam)))
    return float(np.max(1.0 / rate)) if np.all(rate > 0) else math.inf


def schedule_error(a: np.ndarray) -> float:
    """Relative error of the window mean of a prediction a (R, n_rec, ...) from recording the path only every
    record_every steps: |trapezoid over every record - over every second one| / 3 on the same (even) span
    (Richardson), over |the window mean|; the largest over the trailing axes (NaN entries, where the
    theory has no value, skipped); inf with 2 records."""
    m = np.mean(a, axis=0)
    k = (m.shape[0] - 1) // 2 * 2
    if k == 0:
        return math.inf
    fine = np.trapezoid(m[: k + 1], axis=0) / k
    coarse = np.trapezoid(m[: k + 1 : 2], axis=0) / (k // 2)
    moved = np.isfinite(fine) & (fine != coarse)
    with np.errstate(divide="ignore"):
        return float(np.max(np.abs(fine - coarse)[moved] / 3 / np.abs(fine[moved]), initial=0.0))


def _withhold(run: ValleyRun, out: dict, windowed: list) -> bool:
    """Whether the window means of the predictions ``windowed`` depend too much on the recording schedule
    to be reported; puts the schedule's error (and, when withheld, the reason) in ``out``."""
    error = 0.0 if run.record_every == 1 else max(schedule_error(a) for a in windowed)
    out["prediction_schedule_error"] = error
    if error > SCHEDULE_RTOL:
        why = (
            "too few to tell how much that schedule moves them"
            if math.isinf(error)
            else f"and halving that schedule would move them by {error:.2g} (relative; at most {SCHEDULE_RTOL:g})"
        )
        out["schedule_note"] = (
            f"predictions withheld: they average the theory along the path of theta_hat recorded every "
            f"{run.record_every} steps ({run.rec.shape[1]} records), {why}; rerun with a smaller record_every "
            f"(the default is {default_record_every(run.n_steps)})"
        )
    return error > SCHEDULE_RTOL


def _check_run(run) -> None:
    check_instance(run, ValleyRun, "run", "from valley.simulate")


def summarise(run: ValleyRun) -> dict:
    """Measured drifts, moments, FDR and negative eigenvalues, with SEs, next to the predictions.

    Drifts are (f_last - f_first) / (steps between them) per trajectory over the first and last records
    (the window's ends when ``record_every`` divides ``steps``); second moments and the FDR terms are
    window averages per trajectory; SEs are over the completed trajectories. Predictions are evaluated
    at every record of every trajectory and averaged over the window (``prediction_records`` records);
    ``prediction_schedule_error`` (``schedule_error``, 0 when every step is recorded) estimates how much
    the recording schedule moves them, and above SCHEDULE_RTOL the window-averaged ones are None and
    ``schedule_note`` says why.
    """
    _check_run(run)
    land, ok = run.land, run.completed
    R_ok = int(ok.sum())
    out = {
        "landscape": land.name,
        "valley_form": land.valley_form,
        "noise": run.noise.name,
        "noise_scale": run.noise.scale,
        "eta": run.eta,
        "batch": run.noise.S,
        "dataset_size": run.noise.M,
        "burn_in": run.n_burn,
        "steps": run.n_steps,
        "record_every": run.record_every,
        "prediction_records": int(run.rec.shape[1]),
        "trajectories": int(ok.size),
        "completed": R_ok,
        "stopped": int((~ok).sum()),
    }
    if not ok.all():
        first = int(np.argmin(np.where(ok, np.iinfo(np.int64).max, run.status)))
        out["first_stop_step"] = int(run.status[first])
        out["first_stop_reason"] = REASONS[int(run.reason[first])]
    if R_ok < 2:
        out["error"] = "fewer than 2 trajectories completed the run; nothing to average"
        return out
    rec = run.rec[ok]
    span = (rec.shape[1] - 1) * run.record_every  # steps from the first record to the last
    for name in ("trace", "logdet", "f"):
        col = OBSERVABLES.index(name)
        if np.all(np.isnan(rec[:, 0, col])):
            continue
        out[f"{name}_start"] = float(np.mean(rec[:, 0, col]))
        out[f"{name}_drift_per_step"], out[f"{name}_drift_stderr"] = mean_se((rec[:, -1, col] - rec[:, 0, col]) / span)
    if not land.valley_form:
        out["prediction_note"] = (
            f"{land.name} is not of the valley form; trace = tr H(x), predicted by the "
            "coordinate-free drift along the minimum manifold (valley.theory.manifold_drift)"
        )
        drift = manifold_trace_drift(run, rec[:, :, len(OBSERVABLES) :])
        lost = int(np.count_nonzero(np.isnan(drift)))
        if lost:
            out["prediction_note"] += (
                f"; {lost} of {drift.size} recorded points project onto no minimum (project_to_floor): no prediction"
            )
        withheld = _withhold(run, out, [drift]) or lost > 0
        out["trace_drift_predicted"] = None if withheld else float(np.mean(_window_mean(drift)))
        return out

    tau = relaxation_steps(land, run.eta)
    out["theta_relaxation_steps"] = tau
    if run.n_burn < 5 * tau:
        out["equilibration_note"] = (
            f"--burn-in {run.n_burn} is shorter than 5 relaxation times of theta "
            f"({tau:.3g} steps at the start): the second moments may not be stationary"
        )
    preds = predictions(run, rec[:, :, len(OBSERVABLES) + land.n :])  # each (R_ok, n_rec, ...)
    withheld = _withhold(run, out, [v for k, v in preds.items() if k.startswith("W") or "_drift" in k])

    def window(key: str, axis=None):
        """The prediction ``key`` averaged over the window and the trajectories."""
        return np.mean(_window_mean(preds[key]), axis=axis)

    for name in ("trace", "logdet", "f"):
        if f"{name}_drift" in preds:
            out[f"{name}_drift_predicted"] = None if withheld else float(window(f"{name}_drift"))
            out[f"{name}_drift_predicted_leading"] = None if withheld else float(window(f"{name}_drift_leading"))
    m2 = run.acc[ok, : land.n] / run.n_steps
    m2_mean, m2_se = mean_se(m2, axis=0)
    out["second_moments_measured"], out["second_moments_stderr"] = m2_mean.tolist(), m2_se.tolist()
    out["second_moments_predicted"] = None if withheld else window("W", axis=0).tolist()
    out["second_moments_predicted_leading"] = None if withheld else window("W_leading", axis=0).tolist()
    # FDR: <theta . g_B> = (eta / 2) <|g_B|^2> over the theta block
    lhs = run.acc[ok, land.n] / run.n_steps
    rhs = 0.5 * run.eta * run.acc[ok, land.n + 1] / run.n_steps
    out["fdr_theta_dot_grad"] = float(np.mean(lhs))
    out["fdr_half_eta_grad_sq"] = float(np.mean(rhs))
    out["fdr_difference"], out["fdr_difference_stderr"] = mean_se(lhs - rhs)
    # R5: negative eigenvalues of the full Hessian at the end of the run against the excess loss
    eig = np.linalg.eigvalsh(land.eval_hessian(rec[:, -1, len(OBSERVABLES) :]))
    out["neg_eig_sum"], out["neg_eig_sum_stderr"] = mean_se(np.where(eig < 0, eig, 0.0).sum(axis=1))
    out["loss_excess"], out["loss_excess_stderr"] = mean_se(rec[:, -1, 0] - float(land.floor_loss))
    out["neg_eig_slope_predicted"] = float(np.mean(preds["neg_eig_slope"][:, -1]))
    out["neg_eig_slope_exact_to_leading_order"] = bool(np.all(preds["schur_nsd"][:, -1]))
    return out
