"""R8: sharpest directions and Nudged-SGD on a valley whose walls sharpen (sharpest-directions-sgd-step.txt).

The landscape (``SharpValley``): theta = (u_1..u_Ks, z_1..z_Df), Ks sharp and Df flat coordinates,
D = Ks + Df. With per-example offsets n_i (centred: sum_i n_i = 0) and curvatures

    h_k(z_1) = c_k a(z_1)  (sharp, k < Ks),   a(z) = a_lo + (a_hi - a_lo) sigmoid((z - mid) / width),
    h_j      = b_j         (flat, constant),

the per-example loss is L_i(theta) = 1/2 sum_d h_d [(theta_d - t_d - n_id)^2 - n_id^2] and the full loss
L = (1/N) sum_i L_i = 1/2 sum_d h_d (theta_d - t_d)^2 (targets t: 0 on the sharp coordinates). The walls
(the u block) sharpen as z_1 moves towards its target z_1* (= ``t[Ks]``) in the sharp region, so the
route to zero loss leads into a region of lambda_max ~ c_1 a_hi: a method whose effective rate along the
sharpest directions is too large for that region (eta lambda > 2) is pushed back by the term
1/2 a'(z_1) c_k u_k^2 and stalls at the edge of stability; which region is reached depends on the method.

Everything is exact and dense (D ~ 10-50): gradient, Hessian, eigenvectors (``numpy.linalg.eigh``,
ordered by decreasing |lambda| as in the paper). The mini-batch gradient needs only the batch mean of
the offsets, so a step is O(R (S + D)) plus the eigen-decompositions.

Optimisers (update theta <- theta - eta d, g the mini-batch gradient, E the top-K eigenvectors of H):

    sgd               d = g
    sgd_top           d = E E^T g                     (only the top-K components; paper's variant 1)
    sgd_no_top        d = g - E E^T g                 (top-K components removed; variant 3)
    sgd_constant_top  d = E_0 E_0^T g, E_0 the top-K eigenvectors at step 0 (the paper's variant 2,
                      "updates along the constant direction of the top eigenvector e_1(0)")
    nsgd              d = g - (1 - gamma) E E^T g     (rate gamma eta along E, eta elsewhere), E recomputed
                      every ``recompute`` steps (the paper: once per epoch)

The ensemble of R trajectories is vectorised numpy (no numba: the batched ``eigh`` dominates and is
already compiled); trajectory r draws its mini-batches from ``numpy.random.default_rng([seed, r])`` (S
distinct examples per step), so it is the same whatever R is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from valleysim.errors import UserInputError, check_int_range, check_positive
from valleysim.memory import F64, check_fits
from valleysim.stats import mean_se

METHODS = ("sgd", "sgd_top", "sgd_no_top", "sgd_constant_top", "nsgd")
ALPHAS = (0.25, 0.5, 1.0, 2.0, 4.0)
GAMMAS = (0.01, 0.1, 1.0, 5.0)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


@dataclass(frozen=True)
class SharpValley:
    """N per-example losses in D = Ks + Df dimensions (see module docstring)."""

    offsets: np.ndarray      # (N, D), centred over examples
    target: np.ndarray       # (D,), zeros on the sharp block
    c: np.ndarray            # (Ks,) sharp weights
    b: np.ndarray            # (Df,) flat curvatures (b[0] is z_1's)
    a_lo: float = 1.0
    a_hi: float = 100.0
    mid: float = 0.0
    width: float = 0.5

    def __post_init__(self):
        off = np.asarray(self.offsets, dtype=np.float64)
        c, b = np.asarray(self.c, dtype=np.float64), np.asarray(self.b, dtype=np.float64)
        t = np.asarray(self.target, dtype=np.float64)
        if c.ndim != 1 or b.ndim != 1 or c.size < 1 or b.size < 1:
            raise UserInputError(f"c and b must be non-empty vectors; got shapes {c.shape}, {b.shape}")
        D = c.size + b.size
        if off.ndim != 2 or off.shape[1] != D or off.shape[0] < 1:
            raise UserInputError(f"offsets must have shape (N, {D}); got {off.shape}")
        if t.shape != (D,):
            raise UserInputError(f"target must have shape ({D},); got {t.shape}")
        for name, arr in (("offsets", off), ("c", c), ("b", b), ("target", t)):
            if not np.all(np.isfinite(arr)):
                raise UserInputError(f"{name} must be finite")
        if np.any(c <= 0) or np.any(b <= 0):
            raise UserInputError("curvature weights c and b must be > 0")
        check_positive(self.a_lo, "a_lo")
        check_positive(self.width, "width")
        if not (np.isfinite(self.a_hi) and self.a_hi >= self.a_lo):
            raise UserInputError(f"a_hi must be finite and >= a_lo = {self.a_lo}; got {self.a_hi}")
        if not np.isfinite(self.mid):
            raise UserInputError(f"mid must be finite; got {self.mid}")
        off = off - off.mean(axis=0)
        t = t.copy()
        t[:c.size] = 0.0
        object.__setattr__(self, "offsets", off)
        object.__setattr__(self, "c", c)
        object.__setattr__(self, "b", b)
        object.__setattr__(self, "target", t)

    @property
    def N(self) -> int:
        return self.offsets.shape[0]

    @property
    def Ks(self) -> int:
        return self.c.size

    @property
    def D(self) -> int:
        return self.c.size + self.b.size

    # --- the sharpness profile along z_1 ---------------------------------------------------------
    def sharpness(self, z1):
        """a(z1), a'(z1), a''(z1)."""
        s = _sigmoid((np.asarray(z1, dtype=np.float64) - self.mid) / self.width)
        amp = self.a_hi - self.a_lo
        d1 = s * (1 - s)
        return (self.a_lo + amp * s, amp * d1 / self.width, amp * d1 * (1 - 2 * s) / self.width**2)

    def curvatures(self, theta):
        """h_d(theta), shape (..., D)."""
        theta = np.asarray(theta, dtype=np.float64)
        a, _, _ = self.sharpness(theta[..., self.Ks])
        return np.concatenate([a[..., None] * self.c, np.broadcast_to(self.b, theta.shape[:-1] + self.b.shape)], -1)

    def loss(self, theta) -> np.ndarray:
        """Full loss L(theta), theta of shape (..., D)."""
        theta = np.asarray(theta, dtype=np.float64)
        return 0.5 * np.sum(self.curvatures(theta) * (theta - self.target) ** 2, axis=-1)

    def example_losses(self, theta) -> np.ndarray:
        """L_i(theta) for every example, theta (D,) -> (N,) (for tests: their mean is ``loss``)."""
        theta = np.asarray(theta, dtype=np.float64)
        h = self.curvatures(theta)
        return 0.5 * np.sum(h * ((theta - self.target - self.offsets) ** 2 - self.offsets**2), axis=-1)

    def _grad_from_mean_offset(self, theta, nbar):
        """Mini-batch gradient given the batch mean of the offsets nbar (..., D) (zeros: full gradient)."""
        Ks = self.Ks
        a, da, _ = self.sharpness(theta[..., Ks])
        h = self.curvatures(theta)
        g = h * (theta - self.target - nbar)
        u, nu = theta[..., :Ks], nbar[..., :Ks]
        g[..., Ks] += 0.5 * da * np.sum(self.c * (u * u - 2.0 * u * nu), axis=-1)
        return g

    def grad(self, theta) -> np.ndarray:
        theta = np.asarray(theta, dtype=np.float64)
        return self._grad_from_mean_offset(theta, np.zeros_like(theta))

    def batch_grad(self, theta, idx) -> np.ndarray:
        """Mean gradient of the examples idx (..., S) at theta (..., D)."""
        theta = np.asarray(theta, dtype=np.float64)
        return self._grad_from_mean_offset(theta, self.offsets[idx].mean(axis=-2))

    def example_grads(self, theta) -> np.ndarray:
        """Per-example gradients (N, D) at theta (D,)."""
        theta = np.asarray(theta, dtype=np.float64)
        return self._grad_from_mean_offset(np.broadcast_to(theta, (self.N, self.D)), self.offsets)

    def hessian(self, theta) -> np.ndarray:
        """Exact Hessian of the full loss, (..., D, D)."""
        theta = np.asarray(theta, dtype=np.float64)
        Ks = self.Ks
        _, da, d2a = self.sharpness(theta[..., Ks])
        h = self.curvatures(theta)
        H = np.zeros(theta.shape + (self.D,))
        idx = np.arange(self.D)
        H[..., idx, idx] = h
        u = theta[..., :Ks]
        cross = da[..., None] * self.c * u
        H[..., :Ks, Ks] = cross
        H[..., Ks, :Ks] = cross
        H[..., Ks, Ks] += 0.5 * d2a * np.sum(self.c * u * u, axis=-1)
        return H

    def start(self, z1: float | None = None) -> np.ndarray:
        """The default start: u = 0.1, z_1 = z1 (default: the flat side, mid - 3 width), other z = 0."""
        theta = np.zeros(self.D)
        theta[:self.Ks] = 0.1
        theta[self.Ks] = self.mid - 3 * self.width if z1 is None else z1
        return theta


def make_valley(D: int = 20, Ks: int = 2, N: int = 100, *, a_lo: float = 1.0, a_hi: float = 100.0,
                mid: float = 0.0, width: float = 0.5, z1_target: float = 1.5, sharp_noise: float = 0.3,
                flat_noise: float = 1.0, seed: int = 0) -> SharpValley:
    """A SharpValley with c = geometric 1 ... 0.5, b = geometric 0.5 ... 0.05 (b_z1 = 0.5), z* ~ N(0, 0.5^2).

    Offsets: N(0, sharp_noise^2) on the sharp block, N(0, flat_noise^2) on the flat block, centred.
    """
    check_int_range(Ks, "Ks (sharp directions)", 1)
    check_int_range(D, "D", Ks + 1)
    check_int_range(N, "N", 2, 2**31)
    check_fits(3.0 * N * D * F64 + 4.0 * D * D * F64, f"a sharpening valley of N = {N} examples in D = {D}")
    for name, v in (("sharp_noise", sharp_noise), ("flat_noise", flat_noise)):
        if not (np.isfinite(v) and v >= 0):
            raise UserInputError(f"{name} must be a finite number >= 0; got {v!r}")
    rng = np.random.default_rng(seed)
    Df = D - Ks
    c = 0.5 ** (np.arange(Ks) / max(Ks - 1, 1)) if Ks > 1 else np.ones(1)
    b = 0.5 * 0.1 ** (np.arange(Df) / max(Df - 1, 1))
    target = np.zeros(D)
    target[Ks] = z1_target
    target[Ks + 1:] = 0.5 * rng.standard_normal(Df - 1)
    offsets = np.concatenate([sharp_noise * rng.standard_normal((N, Ks)), flat_noise * rng.standard_normal((N, Df))], 1)
    return SharpValley(offsets, target, c, b, a_lo, a_hi, mid, width)


def quadratic_valley(h, offsets, target=None) -> SharpValley:
    """A pure quadratic (a_lo = a_hi = 1): curvatures h = (sharp c..., flat b...), first coordinate sharp."""
    h = np.asarray(h, dtype=np.float64)
    return SharpValley(offsets, np.zeros(h.size) if target is None else target, h[:1], h[1:], 1.0, 1.0)


# --- eigenvectors and step directions ----------------------------------------------------------------
def top_eigen(H, K: int):
    """Top-K eigenpairs by decreasing |lambda|: (values (..., K), vectors (..., D, K))."""
    w, V = np.linalg.eigh(H)
    order = np.argsort(-np.abs(w), axis=-1, kind="stable")[..., :K]
    vals = np.take_along_axis(w, order, axis=-1)
    vecs = np.take_along_axis(V, order[..., None, :], axis=-1)
    return vals, vecs


def lambda_max(H) -> np.ndarray:
    """The largest-|lambda| eigenvalue lambda_1 (..., )."""
    return top_eigen(H, 1)[0][..., 0]


def _project(E, g):
    """E E^T g for E (..., D, K), g (..., D)."""
    return np.einsum("...dk,...k->...d", E, np.einsum("...dk,...d->...k", E, g))


def step_direction(method: str, g, E=None, gamma: float = 1.0):
    """The direction d (theta <- theta - eta d) of ``method`` given g and the eigenvectors it uses."""
    if method == "sgd" or (method == "nsgd" and gamma == 1.0):
        return np.array(g, dtype=np.float64, copy=True)
    p = _project(E, g)
    if method in ("sgd_top", "sgd_constant_top"):
        return p
    if method == "sgd_no_top":
        return g - p
    if method == "nsgd":
        return g - (1.0 - gamma) * p
    raise UserInputError(f"method must be one of {', '.join(METHODS)}; got {method!r}")


def nsgd_direction(g, E, gamma: float):
    """NSGD's direction g - (1 - gamma) E E^T g."""
    return step_direction("nsgd", g, E, gamma)


# --- mini-batches --------------------------------------------------------------------------------------
_CHUNK = 256


class BatchStream:
    """Mini-batches of trajectory r: S distinct examples per step from default_rng([seed, r])."""

    def __init__(self, seed: int, r: int, N: int, S: int):
        self.rng, self.N, self.S = np.random.default_rng([seed, r]), N, S
        self.buf, self.pos = None, _CHUNK

    def next(self) -> np.ndarray:
        if self.S == self.N:
            return np.arange(self.N)
        if self.pos == _CHUNK:
            self.buf = np.argpartition(self.rng.random((_CHUNK, self.N)), self.S - 1, axis=1)[:, :self.S]
            self.pos = 0
        self.pos += 1
        return self.buf[self.pos - 1]


def _check_common(land: SharpValley, method: str, eta, S, K, gamma, recompute):
    if method not in METHODS:
        raise UserInputError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    check_positive(eta, "eta")
    check_int_range(S, "batch size S", 1, land.N)
    check_int_range(K, "K (top directions)", 1, land.D)
    check_positive(gamma, "gamma")
    check_int_range(recompute, "recompute (steps between eigen-decompositions)", 1)


@np.errstate(over="ignore", invalid="ignore")   # a diverging trajectory overflows: it is flagged, not warned
def simulate(land: SharpValley, method: str, *, eta: float, S: int, T: int, theta0=None, K: int = 1,
             gamma: float = 1.0, recompute: int = 1, R: int = 1, seed: int = 0, record_every: int = 10,
             first: int = 0, blowup: float = 1e8, keep_theta: bool = False) -> dict:
    """Run R trajectories (r = first .. first + R - 1) of ``method`` for T steps.

    ``recompute`` applies to nsgd (the others that need eigenvectors use them every step, as in the
    paper, except sgd_constant_top which keeps those of step 0). A trajectory whose loss exceeds
    ``blowup`` times its initial loss (or turns non-finite) is frozen and marked diverged.

    Returns steps (n_rec,), loss and lambda_max (n_rec, R) at the recorded steps (nan once diverged),
    theta (R, D) final, diverged (R,), eig_steps (the steps at which eigenvectors were computed);
    with keep_theta also thetas (n_rec, R, D) at the recorded steps.
    """
    _check_common(land, method, eta, S, K, gamma, recompute)
    check_int_range(T, "T (steps)", 0)
    check_int_range(R, "R (trajectories)", 1)
    check_int_range(record_every, "record_every", 1)
    n_rec = T // record_every + 2
    check_fits(float(R) * (n_rec * (land.D * keep_theta + 2) + 4.0 * land.D**2 + 60.0 * land.D) * F64
               + 2.0 * land.N * land.D * F64, f"{R} trajectories of {T} steps in D = {land.D} ({n_rec} records)")
    theta = np.array(land.start() if theta0 is None else theta0, dtype=np.float64)
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
    return {"steps": np.array(steps), "loss": np.array(losses), "lambda_max": np.array(lmax), "theta": theta,
            "diverged": ~alive, "eig_steps": eig_steps, **({"thetas": np.array(thetas)} if keep_theta else {})}


# --- Sec. 3.2: the loss change along e_1 --------------------------------------------------------------
def loss_change_along_top(land: SharpValley, theta, *, eta: float, S: int, alphas=ALPHAS, n_batches: int = 10,
                          seed: int = 0) -> dict:
    """E[L(theta - alpha eta g1 e_1) - L(theta)], g1 = <g_B, e_1>, over n_batches mini-batches.

    theta (M, D) or (D,); e_1 the top (largest |lambda|) eigenvector of H(theta). Returns
    change (M, n_alpha) (mean over batches), rel_change (change / L(theta)), per_batch
    (M, n_batches, n_alpha), g1 (M, n_batches), G (M,) = <grad L, e_1>, lam (M,) = lambda_1.
    """
    check_positive(eta, "eta")
    check_int_range(S, "batch size S", 1, land.N)
    check_int_range(n_batches, "n_batches", 1)
    al = np.asarray(alphas, dtype=np.float64)
    if al.ndim != 1 or not np.all(np.isfinite(al)):
        raise UserInputError("alphas must be a finite 1-D sequence")
    theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
    M = theta.shape[0]
    lam, E = top_eigen(land.hessian(theta), 1)
    e1 = E[..., 0]
    stream = BatchStream(seed, 0, land.N, S)
    idx = np.stack([stream.next() for _ in range(M * n_batches)]).reshape(M, n_batches, S)
    gB = land.batch_grad(np.broadcast_to(theta[:, None, :], (M, n_batches, land.D)), idx)
    g1 = np.einsum("mbd,md->mb", gB, e1)
    L = land.loss(theta)
    moved = theta[:, None, None, :] - (al[None, None, :, None] * eta * g1[..., None, None]) * e1[:, None, None, :]
    per = land.loss(moved) - L[:, None, None]
    change = per.mean(axis=1)
    return {"alphas": al, "change": change, "rel_change": change / L[:, None], "per_batch": per, "g1": g1,
            "G": np.einsum("md,md->m", land.grad(theta), e1), "lam": lam[:, 0]}


def settled(lambda_max: np.ndarray, tail: float = 0.2, rtol: float = 0.05) -> bool | None:
    """Whether the trajectory-mean of lambda_max (n_rec, R) is flat over the last ``tail`` of the records:
    the means of the two halves of that window agree to ``rtol``. None with < 4 records in the window or
    every trajectory diverged. A "lambda_max reached" of a curve still rising is reported as unsettled."""
    n = max(1, int(round(tail * lambda_max.shape[0])))
    curve = np.array([mean_se(row)[0] for row in lambda_max[-n:]])
    if n < 4 or not np.all(np.isfinite(curve)):
        return None
    a, b = curve[: n // 2].mean(), curve[n // 2:].mean()
    return bool(abs(b - a) <= rtol * max(abs(a), abs(b)))


def gamma_sweep(land: SharpValley, *, eta: float, S: int, T: int, K: int, gammas=GAMMAS, recompute: int = 1,
                R: int = 8, seed: int = 0, record_every: int = 20, tail: float = 0.2) -> list[dict]:
    """NSGD for each gamma: final loss and the lambda_max of the region reached (mean over the last
    ``tail`` of the recorded steps and over trajectories), plus the curves."""
    out = []
    for gm in gammas:
        res = simulate(land, "nsgd", eta=eta, S=S, T=T, K=K, gamma=gm, recompute=recompute, R=R, seed=seed,
                       record_every=record_every)
        n = max(1, int(round(tail * len(res["steps"]))))
        out.append({"gamma": float(gm), "final_loss": float(np.nanmean(res["loss"][-1])),
                    "final_loss_sd": float(np.nanstd(res["loss"][-1])),
                    "lambda_max_reached": float(np.nanmean(res["lambda_max"][-n:])),
                    "lambda_max_settled": settled(res["lambda_max"], tail),
                    "peak_lambda_max": float(np.nanmax(np.nanmean(res["lambda_max"], axis=1))),
                    "diverged": int(res["diverged"].sum()), "steps": res["steps"],
                    "loss_curve": np.nanmean(res["loss"], axis=1), "lambda_curve": np.nanmean(res["lambda_max"], axis=1)})
    return out
