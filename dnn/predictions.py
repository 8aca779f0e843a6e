"""Toy-theory predictions from the measured rows of network runs, and the comparison statistics.

Pure arithmetic on the probe rows that ``valleysim dnn train`` stores (one dict per probe, keys of
:mod:`dnn.probes` and :mod:`dnn.train`: step, epoch, train_acc_running, measure_acc, lambda_max,
lambda_K, trace_K, trace_ratio, curvature_mean, curvature_var, ...). No torch. Every formula lives in
:mod:`valleysim.theory` or :mod:`valleysim.break_even`; this module only selects, aggregates and
compares.

Notation: eta learning rate, S batch size, N training-set size, c = c(S, N) =
``theory.variance_factor(S, N)``; along e_H^1 the per-example curvatures have mean lambda
(``curvature_mean``) and population variance s^2 (``curvature_var``).

Definitions used throughout
---------------------------
* stability factor (R1), per probe: q = (1 - eta lambda)^2 + eta^2 c s^2
  (``theory.stability_factor``); the second moment along e_H^1 is multiplied by q per step.
* break-even point: the first probe (in step order) on the sharp side of R1's edge with
  q >= ``q_threshold`` (default 0.95; q = 1 is the mean-square edge, the 5% margin absorbs
  measurement noise in lambda and s^2 since q only touches 1 from below in a self-stabilising
  run). "Sharp side": lambda > 0 and eta >= eta*/2, eta* = 2 lambda / (lambda^2 + c s^2)
  (``theory.eta_star_1d``), i.e. past the minimum of q over the step size, where q rises with
  the curvature; this excludes the flat side, where q -> 1 only because eta lambda << 1.
  With ``criterion="curvature"``: the first probe with lambda_max >= ``fraction`` * lambda*.
* early phase: the probes from the first one up to and including the earlier of (a) the
  break-even probe and (b) the first probe with train_acc_running >= ``max_acc`` (if given);
  every probe when neither happens.
* measured alpha (R2's assumption lambda_K = alpha lambda_H): alpha_t = lambda_K / lambda_max per
  early probe; summarised by the median and the interquartile range.
* maxima for the conjectures: max over the probes up to and including the first probe with
  train_acc_running >= ``max_acc`` (all probes when ``max_acc`` is None).
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
from scipy import stats

from valleysim import break_even as bes
from valleysim.errors import UserInputError, check_batch_size, check_int_range, check_positive
from valleysim.stats import mean_se
from valleysim.theory import break_even_curvature, eta_star_1d, stability_factor, variance_factor

__all__ = [
    "column",
    "stability_factors",
    "break_even_point",
    "early_phase_end",
    "alpha_ratio",
    "predicted_break_even_curvature",
    "run_maxima",
    "conjecture_orderings",
    "calibrate_toy",
    "comparison_table",
    "to_markdown",
    "CONJECTURE_SIGNS",
]

#: predicted sign of Kendall's tau between the noise knob (eta, or 1/S) and each measured maximum:
#: Conj. 1 -- max lambda_H^1, max lambda_K^1 fall with more noise; Conj. 2 -- max Tr K / lambda_K^1 rises.
CONJECTURE_SIGNS = {"max_lambda_max": -1, "max_lambda_K": -1, "max_trace_ratio": +1}
_CONJECTURE = {"max_lambda_max": "1", "max_lambda_K": "1", "max_trace_ratio": "2"}


# --------------------------------------------------------------------------------------------- input


def _check_run(eta, S, N) -> tuple[float, int, int]:
    eta = check_positive(eta, "eta")
    N = check_int_range(N, "training-set size N", 1)
    S = check_batch_size(S, N)
    return eta, S, N


def column(rows: Sequence[dict], key: str, *, strict: bool = True) -> np.ndarray:
    """rows[*][key] as floats (None, a NaN stored as JSON null -> NaN); a row without ``key``: a
    UserInputError naming it when ``strict``, NaN otherwise."""
    out = np.empty(len(rows))
    for i, r in enumerate(rows):
        if key not in r:
            if not strict:
                out[i] = math.nan
                continue
            raise UserInputError(f"rows[{i}] has no {key!r} (needed here); it has {sorted(r)[:12]}...")
        v = r[key]
        out[i] = math.nan if v is None else float(v)
    return out


def _rows(rows, keys: Iterable[str]) -> tuple[list[dict], dict[str, np.ndarray]]:
    """Checks rows (non-empty, dicts, steps non-decreasing) and returns the requested columns."""
    if rows is None or len(rows) == 0:
        raise UserInputError("rows must be a non-empty list of probe rows (dicts); got none")
    rows = list(rows)
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise UserInputError(f"rows[{i}] must be a dict of metrics; got {type(r).__name__}")
    cols = {k: column(rows, k) for k in dict.fromkeys(("step", *keys))}
    if np.any(np.diff(cols["step"]) < 0):
        raise UserInputError("rows must be in step order (non-decreasing 'step')")
    return rows, cols


def _opt(rows, key) -> np.ndarray:
    """Optional column: NaN where a row lacks ``key``."""
    return np.array([math.nan if r.get(key) is None else float(r[key]) for r in rows])


def _first(mask: np.ndarray) -> int | None:
    idx = np.flatnonzero(mask)
    return int(idx[0]) if idx.size else None


# --------------------------------------------------------------------------------------------- R1, R2


def stability_factors(rows, eta, S, N) -> np.ndarray:
    """(n_rows,) R1's q_t = (1 - eta lambda_t)^2 + eta^2 c(S, N) s_t^2 per probe, lambda_t =
    ``curvature_mean``, s_t^2 = ``curvature_var`` (``theory.stability_factor``); NaN where missing."""
    eta, S, N = _check_run(eta, S, N)
    _, cols = _rows(rows, ("curvature_mean", "curvature_var"))
    return np.asarray(
        stability_factor(eta, cols["curvature_mean"], cols["curvature_var"], variance_factor(S, N)), dtype=float
    )


def predicted_break_even_curvature(eta, S, N, alpha) -> float:
    """lambda*(eta, S) = 2/eta - alpha c(S, N) (``theory.break_even_curvature``); 2/eta at S = N (c = 0).

    The curvature at which q reaches 1 when the gradient variance along e_H^1 is lambda_K =
    alpha lambda_H (R2). May be <= 0 when alpha c >= 2/eta (no stable positive curvature).
    """
    eta, S, N = _check_run(eta, S, N)
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise UserInputError(f"alpha must be a finite number >= 0; got {alpha!r}") from None
    if not math.isfinite(a) or a < 0:
        raise UserInputError(f"alpha must be a finite number >= 0; got {alpha!r}")
    return float(break_even_curvature(eta, variance_factor(S, N), a))


def break_even_point(
    rows,
    eta,
    S,
    N,
    *,
    criterion: str = "stability",
    q_threshold: float = 0.95,
    lambda_star: float | None = None,
    fraction: float = 1.0,
) -> dict:
    """The first probe at which the run reaches the break-even point.

    criterion="stability": first probe with q_t >= q_threshold (``stability_factors``), lambda_t > 0
    and eta >= eta*_t / 2 (sharp side, module doc).
    criterion="curvature": first probe with lambda_max >= fraction * lambda_star.
    Returns {reached, index, step, epoch, train_acc_running, measure_acc, stability_factor,
    lambda_max, criterion}; when never reached, reached=False and every other value None.
    """
    eta, S, N = _check_run(eta, S, N)
    if criterion == "stability":
        q_threshold = check_positive(q_threshold, "q_threshold")
        q = stability_factors(rows, eta, S, N)
        rows, cols = _rows(rows, ("curvature_mean", "curvature_var"))
        lam, s2 = cols["curvature_mean"], cols["curvature_var"]
        with np.errstate(invalid="ignore"):
            sharp = (lam > 0) & (eta >= 0.5 * eta_star_1d(lam, s2, variance_factor(S, N)))
            hit = (q >= q_threshold) & sharp
    elif criterion == "curvature":
        if lambda_star is None:
            raise UserInputError("lambda_star is required with criterion='curvature'")
        lam_star = check_positive(lambda_star, "lambda_star")
        fraction = check_positive(fraction, "fraction")
        rows, cols = _rows(rows, ("lambda_max",))
        hit = cols["lambda_max"] >= fraction * lam_star
        q = _opt(rows, "stability_factor")
    else:
        raise UserInputError(f"criterion must be 'stability' or 'curvature'; got {criterion!r}")
    i = _first(hit)
    keys = ("index", "step", "epoch", "train_acc_running", "measure_acc", "stability_factor", "lambda_max")
    if i is None:
        return dict(dict.fromkeys(keys), reached=False, criterion=criterion)
    r = rows[i]
    out = {"reached": True, "criterion": criterion, "index": i, "step": r["step"], "stability_factor": float(q[i])}
    for k in ("epoch", "train_acc_running", "measure_acc", "lambda_max"):
        out[k] = None if r.get(k) is None else float(r[k])
    return out


def early_phase_end(rows, eta, S, N, *, max_acc: float | None = None, q_threshold: float = 0.95) -> dict:
    """Index (inclusive) of the last early-phase probe: the earlier of the break-even probe
    (q >= q_threshold) and the first probe with train_acc_running >= max_acc; the last probe when
    neither happens. Returns {end, reason: 'break_even' | 'accuracy' | 'all', break_even: dict}."""
    be = break_even_point(rows, eta, S, N, q_threshold=q_threshold)
    rows = list(rows)
    ends = []
    if be["reached"]:
        ends.append((be["index"], "break_even"))
    if max_acc is not None:
        acc = column(rows, "train_acc_running")
        i = _first(acc >= float(max_acc))
        if i is not None:
            ends.append((i, "accuracy"))
    end, reason = min(ends) if ends else (len(rows) - 1, "all")
    return {"end": end, "reason": reason, "break_even": be}


def alpha_ratio(rows, eta, S, N, *, max_acc: float | None = None, q_threshold: float = 0.95) -> dict:
    """Measured alpha = lambda_K / lambda_max over the early phase (``early_phase_end``).

    Returns {alpha (median), alpha_q25, alpha_q75, alpha_iqr, alpha_min, alpha_max, n, phase_end,
    phase_reason}; probes with a non-finite ratio or lambda_max <= 0 are skipped (alpha NaN if none).
    """
    rows, cols = _rows(rows, ("lambda_max", "lambda_K"))
    ph = early_phase_end(rows, eta, S, N, max_acc=max_acc, q_threshold=q_threshold)
    lh, lk = cols["lambda_max"][: ph["end"] + 1], cols["lambda_K"][: ph["end"] + 1]
    ok = np.isfinite(lh) & np.isfinite(lk) & (lh > 0)
    a = lk[ok] / lh[ok]
    out = {"n": int(a.size), "phase_end": ph["end"], "phase_reason": ph["reason"]}
    if a.size == 0:
        return dict(
            out,
            alpha=math.nan,
            alpha_q25=math.nan,
            alpha_q75=math.nan,
            alpha_iqr=math.nan,
            alpha_min=math.nan,
            alpha_max=math.nan,
        )
    q25, med, q75 = np.percentile(a, [25, 50, 75])
    return dict(
        out,
        alpha=float(med),
        alpha_q25=float(q25),
        alpha_q75=float(q75),
        alpha_iqr=float(q75 - q25),
        alpha_min=float(a.min()),
        alpha_max=float(a.max()),
    )


# --------------------------------------------------------------------------------------------- conjectures


def accuracy_window(rows, max_acc: float | None) -> tuple[list[dict], bool | None]:
    """(the rows up to and including the first with train_acc_running >= max_acc, whether one reached it):
    the break-even paper's window; all rows and None when max_acc is None."""
    rows, _ = _rows(rows, ())
    if max_acc is None:
        return rows, None
    i = _first(column(rows, "train_acc_running") >= float(max_acc))
    return (rows, False) if i is None else (rows[: i + 1], True)


def run_maxima(rows, *, max_acc: float | None = None) -> dict:
    """{max_lambda_max, max_lambda_K, max_trace_ratio, max_trace_K, max_lambda_K_gram, max_trace_K_gram, n,
    reached_max_acc}: nan-max over the probes of :func:`accuracy_window` (reached_max_acc None when
    max_acc is None). Absent keys give NaN."""
    window, reached = accuracy_window(rows, max_acc)
    out = {"n": len(window), "reached_max_acc": reached}
    for k in ("lambda_max", "lambda_K", "trace_ratio", "trace_K", "lambda_K_gram", "trace_K_gram"):
        v = _opt(window, k)
        v = v[np.isfinite(v)]
        out["max_" + k] = float(v.max()) if v.size else math.nan
    return out


def kendall_tau(x, y) -> tuple[float, float]:
    """Kendall tau-b and its two-sided p-value (NaN, NaN when x or y is constant)."""
    if np.unique(x).size < 2 or np.unique(y).size < 2:
        return math.nan, math.nan
    res = stats.kendalltau(x, y, variant="b")
    return float(res.statistic), float(res.pvalue)


def conjecture_orderings(runs: Sequence[dict], quantities: Sequence[str] = tuple(CONJECTURE_SIGNS)) -> list[dict]:
    """Kendall tau-b between the noise knob and each measured maximum, per grid.

    ``runs``: dicts with eta, S (or batch) and the maxima (``run_maxima`` keys). A learning-rate grid
    is every set of runs sharing S with >= 2 distinct eta (knob eta); a batch grid every set sharing
    eta with >= 2 distinct S (knob 1/S: more noise). Predicted sign (``CONJECTURE_SIGNS``): -1 for
    max lambda_max and max lambda_K (Conj. 1), +1 for max trace_ratio (Conj. 2). Runs with a NaN
    quantity are dropped for that quantity; a grid needs >= 2 left. Returns tidy rows {grid, fixed,
    knob, quantity, conjecture, predicted_sign, tau, p_value, n, agrees (tau * sign > 0)}.
    """
    if not runs:
        raise UserInputError("runs must be a non-empty list of run summaries")
    for q in quantities:
        if q not in CONJECTURE_SIGNS:
            raise UserInputError(f"quantities: unknown {q!r}; allowed {', '.join(CONJECTURE_SIGNS)}")
    etas, Ss = [], []
    for i, r in enumerate(runs):
        if "eta" not in r or ("S" not in r and "batch" not in r):
            raise UserInputError(f"runs[{i}] needs 'eta' and 'S' (or 'batch')")
        etas.append(check_positive(r["eta"], f"runs[{i}] eta"))
        Ss.append(check_int_range(r.get("S", r.get("batch")), f"runs[{i}] batch size S", 1))
    etas, Ss = np.array(etas), np.array(Ss)
    grids = []
    for S in sorted(set(Ss.tolist())):
        idx = np.flatnonzero(Ss == S)
        if np.unique(etas[idx]).size >= 2:
            grids.append(("learning_rate", f"S={S}", "eta", idx, etas[idx]))
    for eta in sorted(set(etas.tolist())):
        idx = np.flatnonzero(etas == eta)
        if np.unique(Ss[idx]).size >= 2:
            grids.append(("batch_size", f"eta={eta:g}", "1/S", idx, 1.0 / Ss[idx]))
    out = []
    for grid, fixed, knob_name, idx, knob in grids:
        for q in quantities:
            y = np.array([math.nan if runs[i].get(q) is None else float(runs[i][q]) for i in idx])
            ok = np.isfinite(y)
            if ok.sum() < 2:
                continue
            tau, p = kendall_tau(knob[ok], y[ok])
            sign = CONJECTURE_SIGNS[q]
            out.append(
                {
                    "grid": grid,
                    "fixed": fixed,
                    "knob": knob_name,
                    "quantity": q,
                    "conjecture": _CONJECTURE[q],
                    "predicted_sign": sign,
                    "tau": tau,
                    "p_value": p,
                    "n": int(ok.sum()),
                    "agrees": bool(np.isfinite(tau) and tau * sign > 0),
                }
            )
    return out


# --------------------------------------------------------------------------------------------- calibrated toy


def _slope_se(t: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least squares y = b0 + g t: (g, SE(g), b0); SE NaN with fewer than 3 points."""
    tm = t.mean()
    sxx = np.sum((t - tm) ** 2)
    g = float(np.sum((t - tm) * (y - y.mean())) / sxx)
    b0 = float(y.mean() - g * tm)
    if t.size < 3:
        return g, math.nan, b0
    resid = y - b0 - g * t
    return g, float(math.sqrt(np.sum(resid**2) / (t.size - 2) / sxx)), b0


def calibrate_toy(
    rows,
    eta,
    S,
    N,
    *,
    max_acc: float | None = None,
    q_threshold: float = 0.95,
    trajectories: int = 16,
    steps: int | None = None,
    max_steps: int = 200_000,
    offset: float = 1e-3,
    landscape_seed: int = 0,
    seed: int = 0,
) -> dict:
    """Fit R2's sharpening toy (``valleysim.break_even.SharpeningLandscape``, one sharp direction) to the
    early phase of a network run, simulate it at the same (eta, S, N), and return its predictions.

    Measured (early phase, ``early_phase_end``):
      g, SE(g): least-squares slope of log lambda_max against step (sharpening rate per step);
      lambda_0 = exp(fit intercept at the first early step): the curvature the toy starts from;
      sigma^2 = median over early probes of curvature_var / curvature_mean^2.
    Mapping (toy: a(z) = a0 exp(r z), dz/dt = eta (beta - 1/2 r a (x^2 + B)) per step):
      N, S, eta the network's (so c(S, N) is the same); sigma = sqrt(sigma^2), so the toy's
      per-example curvature spread along its sharp direction, s^2 = sigma^2 a^2, matches the
      network's relative spread; a0 = lambda_0; r = 1 (only r beta is identifiable from a rate);
      one toy step = one network step, and beta solves d log a / dt = g at the toy's stationary
      noise floor at a0:  beta = g / (r eta) + 1/2 r a0 (B + E[x^2]_floor),
      E[x^2]_floor = eta^2 c V / (1 - q(a0)) (``frozen_second_moment`` as t -> inf).
    Not matched: the size of the gradient noise (``offset`` fixes the toy's noise floor; the
    network's lambda_K enters only through alpha in lambda*), the network's other directions, the
    acceleration or slowing of the sharpening (the toy's rate is constant until the edge), and the
    strength of the push-back (r). Needs g > 0 and at least 2 early probes with lambda_max > 0.

    Returns the fit (rate, rate_se, lambda_0, sigma2, sigma2_q25/q75, n_fit), the landscape
    parameters (beta, a0, sigma, offset), the toy's lambda* (``predicted_break_even``, = 2/(eta (1 +
    c sigma^2))), the toy's alpha-based equivalent, and the toy's outcome over the trajectories that
    did not diverge: toy_max_curvature (mean of per-trajectory maxima; _se), toy_step_of_max (network
    steps, offset by the first early step), toy_reached (trajectories that reached break-even in the
    first half of the run, ``valleysim.break_even.break_even_per_trajectory``) and over those
    toy_settled_curvature (median of the last half) and toy_break_even_step (first record reaching the
    settled level; both NaN when none reached, with ``toy_note``), toy_diverged. The toy runs
    ``valleysim.break_even.default_steps``, at most ``max_steps`` (``toy_steps``).
    """
    eta, S, N = _check_run(eta, S, N)
    if N < 2:
        raise UserInputError(f"training-set size N must be >= 2 for the toy; got {N}")
    trajectories = check_int_range(trajectories, "trajectories", 1)
    rows, cols = _rows(rows, ("lambda_max", "curvature_mean", "curvature_var"))
    ph = early_phase_end(rows, eta, S, N, max_acc=max_acc, q_threshold=q_threshold)
    sl = slice(0, ph["end"] + 1)
    t, lam = cols["step"][sl], cols["lambda_max"][sl]
    ok = np.isfinite(t) & np.isfinite(lam) & (lam > 0)
    if ok.sum() < 2 or np.unique(t[ok]).size < 2:
        raise UserInputError(
            "rows: the early phase needs >= 2 probes at distinct steps with lambda_max > 0 "
            f"to fit a sharpening rate; got {int(ok.sum())}"
        )
    t0 = float(t[ok][0])
    g, g_se, b0 = _slope_se(t[ok] - t0, np.log(lam[ok]))
    if not g > 0:
        raise UserInputError(
            f"rows: lambda_max does not grow over the early phase (fitted rate {g:.3g} per step); "
            "the sharpening toy cannot be calibrated"
        )
    m, v = cols["curvature_mean"][sl], cols["curvature_var"][sl]
    okc = np.isfinite(m) & np.isfinite(v) & (m != 0)
    if not okc.any():
        raise UserInputError("rows: no early probe with finite curvature_mean != 0 and curvature_var")
    rel = v[okc] / m[okc] ** 2
    s2q25, s2, s2q75 = (float(x) for x in np.percentile(rel, [25, 50, 75]))
    a0 = math.exp(b0)
    sigma = math.sqrt(s2)
    c = variance_factor(S, N)
    land0 = bes.SharpeningLandscape.make(
        n_examples=N, sigma=sigma, offset=offset, beta=0.0, a0=(a0,), rates=(1.0,), landscape_seed=landscape_seed
    )
    q0 = bes.frozen_q(land0, eta, S, 0.0)
    floor = float(np.asarray(bes.frozen_second_moment(land0, eta, S, 0.0, np.inf))) if q0 < 1 else math.inf
    beta = g / eta + 0.5 * a0 * (float(land0.B[0]) + floor)
    lam_star = bes.predicted_break_even(eta, S, N, sigma)
    out = {
        "eta": eta,
        "S": S,
        "N": N,
        "variance_factor": c,
        "rate": g,
        "rate_se": g_se,
        "lambda_0": a0,
        "sigma2": s2,
        "sigma2_q25": s2q25,
        "sigma2_q75": s2q75,
        "n_fit": int(ok.sum()),
        "t0": t0,
        "phase_end": ph["end"],
        "phase_reason": ph["reason"],
        "beta": beta,
        "a0": a0,
        "sigma": sigma,
        "offset": float(offset),
        "rates": 1.0,
        "q_at_start": q0,
        "toy_lambda_star": lam_star,
        "toy_alpha_equivalent": s2 * lam_star,
    }
    if not (math.isfinite(floor) and q0 < 1):
        return dict(
            out,
            error="the toy is mean-square unstable at the starting curvature (q(a0) >= 1)",
            toy_max_curvature=math.nan,
            toy_settled_curvature=math.nan,
        )
    land = bes.SharpeningLandscape.make(
        n_examples=N, sigma=sigma, offset=offset, beta=beta, a0=(a0,), rates=(1.0,), landscape_seed=landscape_seed
    )
    n_steps = min(bes.default_steps(land, eta, S), max_steps) if steps is None else check_int_range(steps, "steps", 1)
    run = bes.simulate(land, eta, S, steps=n_steps, trajectories=trajectories, seed=seed)
    good = run.ok
    out.update(toy_steps=n_steps, toy_trajectories=trajectories, toy_diverged=int((~good).sum()))
    if not good.any():
        return dict(
            out, error="every toy trajectory diverged", toy_max_curvature=math.nan, toy_settled_curvature=math.nan
        )
    be = bes.break_even_per_trajectory(run.curvature()[good], run.record_every)
    hit = be["reached"]
    mx, se = mean_se(run.max_curvature[good])
    out.update(
        toy_max_curvature=mx,
        toy_max_curvature_se=se,
        toy_step_of_max=t0 + float(np.median(run.step_of_max[good])),
        toy_reached=int(hit.sum()),
        toy_settled_curvature=float(np.mean(be["plateau"][hit])) if hit.any() else math.nan,
        toy_break_even_step=t0 + float(np.median(be["steps"][hit])) if hit.any() else math.nan,
    )
    if not hit.all():
        out["toy_note"] = (
            f"{int((~hit).sum())} of {hit.size} toy trajectories did not reach break-even in the "
            f"first half of {n_steps} steps (settled values average the rest; none: NaN)"
        )
    return out


# --------------------------------------------------------------------------------------------- table


def comparison_table(
    runs: Sequence[dict], *, toy: bool = True, q_threshold: float = 0.95, toy_kwargs: dict | None = None
) -> list[dict]:
    """One row per run: measured next to predicted.

    ``runs``: dicts {rows, eta, S (or batch), N, optional label, optional max_acc (early-phase
    accuracy cut, also used for the maxima)}. Columns: label, eta, S, N, max_lambda_max,
    max_lambda_K, max_trace_ratio (``run_maxima``), alpha (+ IQR, ``alpha_ratio``), lambda_star
    (``predicted_break_even_curvature`` from alpha), two_over_eta, max_over_lambda_star, toy_max,
    toy_settled, toy_lambda_star (``calibrate_toy``; NaN with its error when it cannot be
    calibrated), q_at_max (stability factor at the probe of max_lambda_max), q_median_after (median q
    over the probes after the break-even probe), break-even step/epoch/train_acc/measure_acc.
    """
    if not runs:
        raise UserInputError("runs must be a non-empty list")
    table = []
    for i, run in enumerate(runs):
        for k in ("rows", "eta", "N"):
            if k not in run:
                raise UserInputError(f"runs[{i}] has no {k!r}")
        S = run.get("S", run.get("batch"))
        if S is None:
            raise UserInputError(f"runs[{i}] has no 'S' (or 'batch')")
        eta, S, N = _check_run(run["eta"], S, run["N"])
        rows, max_acc = list(run["rows"]), run.get("max_acc")
        mx = run_maxima(rows, max_acc=max_acc)
        al = alpha_ratio(rows, eta, S, N, max_acc=max_acc, q_threshold=q_threshold)
        be = break_even_point(rows, eta, S, N, q_threshold=q_threshold)
        q = stability_factors(rows, eta, S, N)
        lmax = column(rows, "lambda_max")[: mx["n"]]  # the probes run_maxima looked at
        i_max = int(np.nanargmax(lmax)) if np.isfinite(lmax).any() else None
        after = q[be["index"] + 1 :] if be["reached"] else np.array([])
        after = after[np.isfinite(after)]
        lam_star = predicted_break_even_curvature(eta, S, N, al["alpha"]) if math.isfinite(al["alpha"]) else math.nan
        row = {
            "label": run.get("label", f"eta={eta:g} S={S}"),
            "eta": eta,
            "S": S,
            "N": N,
            "max_lambda_max": mx["max_lambda_max"],
            "max_lambda_K": mx["max_lambda_K"],
            "max_trace_ratio": mx["max_trace_ratio"],
            "alpha": al["alpha"],
            "alpha_iqr": al["alpha_iqr"],
            "lambda_star": lam_star,
            "two_over_eta": 2.0 / eta,
            "max_over_lambda_star": mx["max_lambda_max"] / lam_star
            if lam_star and math.isfinite(lam_star)
            else math.nan,
            "q_at_max": float(q[i_max]) if i_max is not None else math.nan,
            "q_median_after": float(np.median(after)) if after.size else math.nan,
            "break_even_step": be["step"],
            "break_even_epoch": be["epoch"],
            "break_even_train_acc": be["train_acc_running"],
            "break_even_measure_acc": be["measure_acc"],
        }
        if toy:
            try:
                cal = calibrate_toy(rows, eta, S, N, max_acc=max_acc, q_threshold=q_threshold, **(toy_kwargs or {}))
            except UserInputError as e:
                cal = {"error": str(e)}
            row.update(
                toy_max=cal.get("toy_max_curvature", math.nan),
                toy_settled=cal.get("toy_settled_curvature", math.nan),
                toy_lambda_star=cal.get("toy_lambda_star", math.nan),
                toy_rate=cal.get("rate", math.nan),
                toy_sigma2=cal.get("sigma2", math.nan),
                toy_error=cal.get("error"),
            )
        table.append(row)
    return table


def _fmt(v, digits: int) -> str:
    if v is None:
        return "-"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "nan" if math.isnan(v) else f"{float(v):.{digits}g}"
    return str(v).replace("|", "\\|")


def to_markdown(table: Sequence[dict], columns: Sequence[str] | None = None, digits: int = 4) -> str:
    """A GitHub Markdown table of ``table`` (columns: the given ones, else the union in first-seen order;
    floats to ``digits`` significant digits, None as '-')."""
    if not table:
        return ""
    if columns is None:
        columns = list(dict.fromkeys(k for r in table for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in table:
        lines.append("| " + " | ".join(_fmt(r.get(c), digits) for c in columns) + " |")
    return "\n".join(lines) + "\n"
