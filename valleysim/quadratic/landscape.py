"""Per-example quadratic landscapes L_i(w) = 1/2 (w - w*)^T H_i (w - w*).

A landscape is data, not a class hierarchy: ``PerExampleQuadratic`` holds
the per-example curvature in one of three layouts and the minimum w*.

    kind        data shape   H_i
    "diagonal"  (N, D)       diag(data[i])          (D = 1 is the 1-D case)
    "dense"     (N, D, D)    data[i]                (symmetric, maybe indefinite)
    "rank_one"  (N, D)       outer(data[i], data[i]) (least squares, x_i = data[i])

The minima form the affine manifold w* + null(H), H = (1/N) sum H_i; the
distance to it is ||P (w - w*)|| with P the projector onto range(H).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from valleysim.errors import (
    SCALE_LIMIT,
    UserInputError,
    check_array,
    check_instance,
    check_int_range,
    check_path,
    check_positive,
)
from valleysim.memory import F64, check_fits

KINDS = ("diagonal", "dense", "rank_one")
#: The largest |entry| of the H_i a landscape may have: float64's normal numbers with finite reciprocals and room
#: for sums (subnormal entries have lost digits; beyond 2**1000, eta* ~ 1 / scale and sums of H_i overflow).
HESSIAN_SCALE_RANGE = (2.0**-1000, 2.0**1000)
#: Within [1 / SCALE_LIMIT, SCALE_LIMIT] the simulators and the second-moment map work on the H_i as given
#: (squares of entries stay normal); outside it on the exactly rescaled problem (``unit_scaled``): SGD is
#: invariant under (H, eta) -> (2**-k H, 2**k eta), so eta* scales as 1 / scale, exactly for powers of 2.
NONUNIFORMITY_RANGE = (1e-6, 10.0)  # beyond 10 the spread saturates (one example holds the curvature)


@dataclass(frozen=True)
class PerExampleQuadratic:
    """N per-example quadratics in D dimensions (see module docstring)."""

    kind: str
    data: np.ndarray
    w_star: np.ndarray = field(default=None)  # (D,); zeros when None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise UserInputError(f"kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        data = np.ascontiguousarray(check_array(self.data, "hessians", finite=False))
        want = 3 if self.kind == "dense" else 2
        if data.ndim != want or data.shape[0] < 1 or data.shape[1] < 1:
            raise UserInputError(
                f"{self.kind} per-example curvature must have shape "
                f"{'(N, D, D)' if want == 3 else '(N, D)'}; got {data.shape}"
            )
        if not np.all(np.isfinite(data)):
            raise UserInputError("hessians must be finite (found NaN or inf)")
        if self.kind == "dense" and data.shape[1] != data.shape[2]:
            raise UserInputError(f"dense hessians must be square (N, D, D); got {data.shape}")
        k = _check_magnitude(self.kind, data)
        unit = np.ldexp(data, -k)  # exact: the checks below see the H_i at unit scale
        if self.kind == "dense":
            asym = np.abs(unit - unit.transpose(0, 2, 1)).max()
            if asym > 1e-10:
                raise UserInputError(
                    f"hessians must be symmetric; max |H_i - H_i^T| = {np.ldexp(asym, k):.3g} "
                    f"(largest |entry| {np.ldexp(np.abs(unit).max(), k):.3g})"
                )
            unit = 0.5 * (unit + unit.transpose(0, 2, 1))
            data = np.ldexp(unit, k)
        D = data.shape[1]
        w_star = np.zeros(D) if self.w_star is None else check_array(self.w_star, "w_star", (D,))
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "w_star", w_star)
        check_fits(landscape_bytes(self.kind, self.N, D), f"a {self.kind} landscape of N = {self.N}, D = {D}")
        if self.kind == "diagonal":
            evals = np.sort(unit.mean(axis=0))
        else:
            evals = np.linalg.eigvalsh(unit.mean(axis=0) if self.kind == "dense" else unit.T @ unit / self.N)
        tol = 1e-10 * max(np.abs(evals).max(), 1.0)
        if evals[0] < -tol:
            smallest = np.ldexp(evals[0], 2 * k if self.kind == "rank_one" else k)
            raise UserInputError(
                "the mean Hessian (1/N) sum H_i must be positive semi-definite; "
                f"its smallest eigenvalue is {smallest:.4g} (individual H_i may be indefinite)"
            )

    @property
    def N(self) -> int:
        return self.data.shape[0]

    @cached_property
    def scale(self) -> float:
        """Largest |entry| of any H_i."""
        return _scale(self.kind, self.data)

    @cached_property
    def _unit(self) -> tuple["PerExampleQuadratic", float]:
        s = float(np.abs(self.data).max())
        scale = s * s if self.kind == "rank_one" else s  # may underflow / overflow for rank_one: then rescale
        if 1 / SCALE_LIMIT <= scale <= SCALE_LIMIT:
            return self, 1.0
        k = int(np.frexp(s)[1])  # data / 2**k in [0.5, 1)
        unit = PerExampleQuadratic(self.kind, np.ldexp(self.data, -k), self.w_star)
        return unit, float(np.ldexp(1.0, 2 * k if self.kind == "rank_one" else k))

    def unit_scaled(self) -> tuple["PerExampleQuadratic", float]:
        """(q1, f): the same landscape with H_i = f q1.H_i, f a power of 2 (exact), q1 at unit scale; q itself
        and f = 1 when its scale is within [1 / SCALE_LIMIT, SCALE_LIMIT]. SGD with eta on q is SGD with
        eta f on q1: every dimensionless result is the same, eta* of q is eta* of q1 over f."""
        return self._unit

    def unit_problem(self, eta: float) -> tuple["PerExampleQuadratic", float]:
        """(q1, eta f) of :meth:`unit_scaled`: the problem at unit scale, exactly equivalent."""
        unit, f = self._unit
        return unit, float(eta) * f

    def check_eta(self, eta: float, name: str = "eta") -> float:
        """``eta`` finite > 0 with eta x ``scale`` in [1 / SCALE_LIMIT, SCALE_LIMIT]: beyond, squares of the
        steps overflow; below, no step moves w in float64."""
        eta = check_positive(eta, name)
        if self.scale > 0 and not 1 / SCALE_LIMIT <= eta * self.scale <= SCALE_LIMIT:
            big = np.finfo(np.float64).max
            lo, hi = 1 / SCALE_LIMIT / self.scale, min(SCALE_LIMIT / self.scale, big)
            raise UserInputError(
                f"{name} must be in [{max(lo, np.finfo(np.float64).tiny):.3g}, {hi:.3g}] on this landscape "
                "(eta x max|H_i| within "
                f"[1e-100, 1e100]; the sharpness bound 2 / lambda_max is "
                f"{2 / self.scale:.3g}); got {eta:g}"
            )
        return eta

    @property
    def D(self) -> int:
        return self.data.shape[1]

    def hessians(self) -> np.ndarray:
        """Dense per-example Hessians, shape (N, D, D)."""
        if self.kind == "dense":
            return self.data
        if self.kind == "diagonal":
            out = np.zeros((self.N, self.D, self.D))
            idx = np.arange(self.D)
            out[:, idx, idx] = self.data
            return out
        return self.data[:, :, None] * self.data[:, None, :]

    def mean_hessian(self) -> np.ndarray:
        """H = (1/N) sum_i H_i, shape (D, D)."""
        if self.kind == "dense":
            return self.data.mean(axis=0)
        if self.kind == "diagonal":
            return np.diag(self.data.mean(axis=0))
        return self.data.T @ self.data / self.N

    def range_basis(self) -> np.ndarray:
        """Orthonormal basis U (D, r) of span of all ranges of H_i (the non-flat subspace).

        For PSD H_i this is range(H); directions outside it never move.
        """
        if self.kind == "diagonal":
            nz = np.flatnonzero(np.any(self.data != 0.0, axis=0))
            return np.eye(self.D)[:, nz]
        stacked = self.data.reshape(-1, self.D)  # rows span the same space
        _, sv, vt = np.linalg.svd(stacked, full_matrices=False)
        r = int(np.sum(sv > 1e-10 * max(sv[0], 1e-300))) if sv.size else 0
        return vt[:r].T

    def reduced(self) -> "PerExampleQuadratic":
        """The same landscape restricted to range_basis(): w <- U^T (w - w*), dense or diagonal."""
        U = self.range_basis()
        if self.kind == "diagonal":
            return PerExampleQuadratic("diagonal", self.data @ U)
        if self.kind == "rank_one":
            return PerExampleQuadratic("rank_one", self.data @ U)
        return PerExampleQuadratic("dense", np.einsum("da,nde,eb->nab", U, self.data, U, optimize=True))

    def loss(self, w: np.ndarray) -> np.ndarray:
        """Full loss L(w) = 1/2 (w - w*)^T H (w - w*); w of shape (..., D)."""
        u = np.asarray(w) - self.w_star
        return 0.5 * np.einsum("...d,de,...e->...", u, self.mean_hessian(), u)


def _check_magnitude(kind: str, data: np.ndarray) -> int:
    """k with max |data| / 2**k in [0.5, 1); UserInputError when the H_i are all zero or their largest |entry|
    is outside HESSIAN_SCALE_RANGE (subnormal, or with an overflowing eta* or sum)."""
    s = float(np.abs(data).max()) if data.size else 0.0
    if s == 0.0:
        raise UserInputError(
            "hessians are all zero: no direction has curvature, so nothing moves and eta* is infinite "
            "(give at least one nonzero H_i)"
        )
    lo, hi = HESSIAN_SCALE_RANGE
    if kind == "rank_one":  # H_i = x_i x_i^T: the bounds apply to the squares
        if not np.sqrt(lo) <= s <= np.sqrt(hi):
            raise UserInputError(
                f"hessians: the largest |x_i| entry is {s:.3g}; it must lie in [{np.sqrt(lo):.3g}, {np.sqrt(hi):.3g}] "
                f"(H_i = x_i x_i^T within [{lo:.3g}, {hi:.3g}]; rescale x and eta)"
            )
    elif not lo <= s <= hi:
        why = "subnormal numbers below it have lost digits" if s < lo else "eta* ~ 1 / scale and sums would overflow"
        raise UserInputError(
            f"hessians: the largest |entry| is {s:.3g}; it must lie in [{lo:.3g}, {hi:.3g}] ({why}; "
            "rescale H and eta by the same factor)"
        )
    return int(np.frexp(s)[1])


def _scale(kind: str, data: np.ndarray) -> float:
    """Largest |entry| of any H_i from the layout's data (x_i x_i^T for rank_one)."""
    s = float(np.abs(data).max()) if data.size else 0.0
    return s * s if kind == "rank_one" else s


def landscape_bytes(kind: str, N: int, D: int) -> float:
    """Memory a landscape and its mean / range computations hold, in bytes: the data and ~6 (D, D)
    matrices (the second-moment map needs ~30 more: ``second_moment.moment_map_bytes``)."""
    return (float(N) * D * (D if kind == "dense" else 1) + 6.0 * D * D) * F64


def _npy_header(path: Path) -> tuple[tuple, np.dtype]:
    """(shape, dtype) from a .npy header, checked against the file's size before any array is allocated
    (a 1 KB file whose header claims 745 GiB is refused here, not by the allocator)."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read(fh)
            offset = fh.tell()
    except (ValueError, OSError, SyntaxError) as err:
        raise UserInputError(f"hessians file {path} is not a readable .npy array: {err}") from None
    need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    have = path.stat().st_size - offset
    if dtype.hasobject or need != have:
        raise UserInputError(
            f"hessians file {path}: its header claims shape {shape} of {dtype} ({need:,} bytes), "
            f"the file holds {have:,} bytes of data"
        )
    return shape, dtype


def load_hessians(path: str | Path) -> PerExampleQuadratic:
    """Per-example Hessians from ``.npy``: (N,) 1-D, (N, D) diagonal, (N, D, D) dense."""
    path = check_path(path, "--hessians")
    if path.is_dir():
        raise UserInputError(f"--hessians {path} is a directory, not a .npy file")
    if not path.is_file():
        raise UserInputError(f"--hessians file not found: {path}")
    shape, dtype = _npy_header(path)
    if dtype.kind not in "iuf":  # complex: the imaginary part would be dropped; bool, str, object: not numbers
        raise UserInputError(f"hessians must be real numbers (integer or float); {path} holds {dtype}")
    check_fits(3.0 * F64 * int(np.prod(shape, dtype=np.float64)), f"the hessians in {path} (shape {shape})")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise UserInputError(f"hessians file {path} is not a readable .npy array: {err}") from None
    if arr.ndim in (1, 2, 3) and arr.size and not np.any(arr):
        raise UserInputError(
            f"--hessians {path}: every entry is zero (no curvature: nothing moves and eta* is infinite, "
            "so there is no stability boundary); give at least one nonzero H_i"
        )
    if arr.ndim == 1:
        return PerExampleQuadratic("diagonal", arr[:, None])
    if arr.ndim == 2:
        return PerExampleQuadratic("diagonal", arr)
    if arr.ndim == 3:
        return PerExampleQuadratic("dense", arr)
    raise UserInputError(f"hessians must have shape (N,), (N, D) or (N, D, D); {path} has {arr.shape}")


def least_squares(X: np.ndarray, y: np.ndarray) -> PerExampleQuadratic:
    """Over-parameterised least squares L_i(w) = 1/2 (x_i . w - y_i)^2 as rank-one quadratics.

    Needs an interpolating solution (X w = y solvable); w* is the minimum-norm one.
    """
    X = check_array(X, "X", ("N", "D"))
    y = check_array(y, "y", (X.shape[0],))
    if not X.size:
        raise UserInputError(f"X must have at least one example and one dimension; got shape {X.shape}")
    w_star, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = np.abs(X @ w_star - y).max()
    if resid > 1e-8 * max(np.abs(y).max(), 1.0):
        raise UserInputError(
            "X w = y has no exact solution (max residual "
            f"{resid:.3g}); per-example quadratics need an interpolating least-squares problem"
        )
    return PerExampleQuadratic("rank_one", X, w_star)


def _spectrum(D: int, lambda_max: float, condition: float) -> np.ndarray:
    """Geometric spectrum from lambda_max down to lambda_max / condition, shape (D,)."""
    if D == 1:
        return np.array([lambda_max])
    return lambda_max * condition ** (-np.arange(D) / (D - 1))


def generate_bytes(kind: str, N: int, D: int, nonuniformity: float = 0.5) -> float:
    """Peak memory of ``generate`` (its largest arrays), in bytes."""
    if kind == "diagonal":
        return 3.0 * N * D * F64
    if kind == "dense":
        m = max(1, round(2.0 / nonuniformity**2))
        return (3.0 * N * D * D + N * m * D + 2.0 * D * D) * F64
    return (3.0 * N * D + 3.0 * D * D) * F64


def generate(
    kind: str,
    N: int,
    D: int,
    *,
    lambda_max: float = 1.0,
    nonuniformity: float = 0.5,
    condition: float = 10.0,
    seed: int = 0,
) -> PerExampleQuadratic:
    """Random per-example quadratics with a controlled mean spectrum and spread.

    The mean Hessian's top eigenvalue is exactly ``lambda_max``; its spectrum
    is the geometric one lambda_max ... lambda_max / condition (exactly for
    diagonal, in expectation otherwise). ``nonuniformity`` is the relative
    spread of per-example curvature; all H_i are PSD:

    - diagonal: h_ij = lam_j g_ij / mean_i(g_ij), g ~ Gamma(1 / nonuniformity^2),
      so std_i(h_ij) / lam_j ~= nonuniformity.
    - dense: H_i = (1/m) sum_k a_ik a_ik^T, a ~ N(0, C) (Wishart, m =
      max(1, round(2 / nonuniformity^2)) so the spread of v^T H_i v is ~
      nonuniformity), then rescaled so the mean's top eigenvalue is lambda_max.
    - rank_one: x_i ~ N(0, C), y = X w_true, rescaled likewise (minima form an
      affine manifold of dimension D - N when N < D).
    """
    if kind not in KINDS:
        raise UserInputError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    check_int_range(N, "N", 1)
    check_int_range(D, "D", 1)
    check_positive(lambda_max, "lambda_max")
    if lambda_max > SCALE_LIMIT:
        raise UserInputError(f"lambda_max must be <= {SCALE_LIMIT:g}; got {lambda_max:g}")
    if lambda_max < 1 / SCALE_LIMIT:
        raise UserInputError(f"lambda_max must be in [1e-100, 1e100]; got {lambda_max:g}")
    lo, hi = NONUNIFORMITY_RANGE
    if not lo <= check_positive(nonuniformity, "nonuniformity") <= hi:
        raise UserInputError(f"nonuniformity must be in [{lo:g}, {hi:g}]; got {nonuniformity:g}")
    if not 1 <= check_positive(condition, "condition") <= SCALE_LIMIT:
        raise UserInputError(f"condition must be in [1, {SCALE_LIMIT:g}]; got {condition:g}")
    check_int_range(seed, "landscape seed", 0)
    check_fits(generate_bytes(kind, N, D, nonuniformity), f"a {kind} landscape of N = {N}, D = {D}")
    rng = np.random.default_rng(seed)
    lam = _spectrum(D, lambda_max, condition)
    if kind == "diagonal":
        g = rng.gamma(1.0 / nonuniformity**2, size=(N, D))
        return PerExampleQuadratic("diagonal", lam * g / g.mean(axis=0))
    Q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    C_half = Q * np.sqrt(lam)  # C = Q diag(lam) Q^T
    if kind == "dense":
        m = max(1, round(2.0 / nonuniformity**2))
        A = rng.standard_normal((N, m, D)) @ C_half.T
        H = np.einsum("nkd,nke->nde", A, A) / m
        H *= lambda_max / np.linalg.eigvalsh(H.mean(axis=0))[-1]
        return PerExampleQuadratic("dense", H)
    X = rng.standard_normal((N, D)) @ C_half.T
    X *= np.sqrt(lambda_max / np.linalg.eigvalsh(X.T @ X / N)[-1])
    return least_squares(X, X @ rng.standard_normal(D))


def check_landscape(q) -> PerExampleQuadratic:
    """``q`` must be a PerExampleQuadratic."""
    check_instance(q, PerExampleQuadratic, "q", "from generate, load_hessians or least_squares")
    return q
