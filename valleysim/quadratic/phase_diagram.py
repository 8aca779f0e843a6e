"""The (eta, S) phase diagram of SGD on a per-example quadratic.

For every batch size S (one sweep task each):
    eta_star          exact mean-square boundary (R1; first boundary of the
                      epoch map for 'reshuffle', exact for N <= 8 only)
    lyapunov_boundary first eta where the almost-sure exponent gamma reaches 0
                      (exact for diagonal H_i with enumerable batches, else from
                      the simulated gamma; lyapunov_boundary_method says which)
    sharpness_bound, noise_bound  the necessary conditions (one-step schemes)
For every grid point (eta, S):
    spectral_radius, mean_square_stable, lyapunov_exponent (+ se, method) and
    diverged_fraction: the share of ``n_traj`` simulated trajectories whose
    squared distance to the minimum manifold passed 1e12 r within ``n_steps``
    (r = dim of the non-flat subspace; they start at E||u_0||^2 = r).

Outputs in ``out_dir``: landscape.npz and config.json (what the sweep is of;
a mismatch refuses to resume), sweep.jsonl (the runner's store, resumable),
phase_diagram.csv (one tidy row per grid point) and phase_diagram.png.
Rerunning a finished sweep reads these files and writes nothing (no lock either): a finished
diagram in a read-only directory reopens.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import os
import zipfile
import zlib
from concurrent.futures import Executor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, FuncFormatter  # noqa: E402
from scipy.optimize import brentq  # noqa: E402

from valleysim.errors import (  # noqa: E402
    UserInputError,
    check_batch_size,
    check_int_range,
    check_list,
    check_path,
    check_writable_dir,
    warn,
)
from valleysim.jsonout import atomic_write, dumps, json_safe, read_json  # noqa: E402
from valleysim.locking import DirectoryLock  # noqa: E402
from valleysim.memory import check_fits  # noqa: E402
from valleysim.quadratic import reshuffle  # noqa: E402
from valleysim.quadratic.batches import MAX_BATCHES, count_batches  # noqa: E402
from valleysim.quadratic.integrator import simulate, simulate_bytes  # noqa: E402
from valleysim.quadratic.landscape import PerExampleQuadratic, check_landscape  # noqa: E402
from valleysim.quadratic.lyapunov import lyapunov_exact, lyapunov_exponent  # noqa: E402
from valleysim.quadratic.second_moment import MomentMap, mean_square_verdict, moment_map_bytes  # noqa: E402
from valleysim.runner import point_key, read_store, run_sweep  # noqa: E402
from valleysim.theory import check_scheme, necessary_eta_bounds, variance_factor  # noqa: E402

DIVERGENCE_FACTOR = 1e12


def landscape_digest(kind: str, data: np.ndarray, w_star: np.ndarray) -> str:
    """A landscape's identity: what config.json records and landscape.npz is checked against."""
    return hashlib.sha256(kind.encode() + data.tobytes() + w_star.tobytes()).hexdigest()


def _stored_landscape(path: Path) -> tuple[str, np.ndarray, np.ndarray] | None:
    """``(kind, data, w_star)`` in ``path``, read without pickle; None where it is not a whole landscape file
    (missing, torn by a kill or a full disk, not an npz of those arrays)."""
    try:
        with open(path, "rb") as fh:  # ours to close: np.load leaks the file of a torn zip
            z = np.load(fh, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):  # a bare .npy array
                return None
            with z:
                return str(z["kind"]), z["data"], z["w_star"]
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error):
        return None


def _write_landscape(q: PerExampleQuadratic, path: Path) -> None:
    buf = io.BytesIO()
    np.savez(buf, kind=q.kind, data=q.data, w_star=q.w_star)
    atomic_write(path, buf.getvalue())


def _landscape_refused(path, found: str | None, recorded: str) -> UserInputError:
    """The error for a landscape file that is damaged (``found`` None) or another landscape."""
    if found is None:
        return UserInputError(f"{path} is damaged (not a whole landscape file); rerun the command to write it again")
    return UserInputError(
        f"{path} holds another landscape than config.json records (sha256 {found[:12]}..., recorded "
        f"{recorded[:12]}...); delete it to have it written again from the command's flags, or choose another --out"
    )


@functools.lru_cache(maxsize=4)
def load_landscape(path: str, sha256: str) -> PerExampleQuadratic:
    """The landscape in a phase diagram's landscape.npz, checked against ``sha256`` (its config.json's):
    a damaged file or another landscape is a UserInputError naming the file, never computed on."""
    stored = _stored_landscape(Path(path))
    found = None if stored is None else landscape_digest(*stored)
    if found != sha256:
        raise _landscape_refused(path, found, sha256)
    return PerExampleQuadratic(*stored)


def _one_step(scheme: str) -> str:
    return "with_replacement" if scheme == "with_replacement" else "without_replacement"


def lyapunov_boundary(
    q: PerExampleQuadratic,
    S: int,
    scheme: str,
    eta_lo: float,
    eta_hi: float,
    *,
    n_traj: int,
    n_steps: int,
    seed: int,
    n_grid: int = 400,
) -> tuple[float | None, str]:
    """First eta in [eta_lo, eta_hi] where the almost-sure exponent gamma(eta) reaches 0.

    Returns (eta or None, method). 'enumeration': exact gamma (diagonal H_i,
    enumerable batches) scanned on ``n_grid`` points and refined by brentq.
    'monte_carlo': the simulated gamma with common random numbers (the same
    seed at every eta, so gamma(eta) is continuous) scanned on 16 points and
    refined by brentq. None when gamma >= 0 already at eta_lo or < 0 on the
    whole range.
    """
    if q.kind == "diagonal" and count_batches(q.N, S, _one_step(scheme)) <= MAX_BATCHES:

        def gamma(e):
            return lyapunov_exact(q, e, S, scheme)

        method, xtol = "enumeration", 1e-12
    else:

        def gamma(e):
            return lyapunov_exponent(
                q, e, S, scheme, n_steps=n_steps, burn_in=max(1, n_steps // 4), n_traj=n_traj, seed=seed
            )["value"]

        method, n_grid, xtol = "monte_carlo", 16, 1e-6
    grid = np.geomspace(eta_lo, eta_hi, n_grid)
    first = gamma(grid[0])
    if first >= 0:
        return None, method
    prev = grid[0]
    for e in grid[1:]:
        if gamma(e) >= 0:
            return float(brentq(gamma, prev, e, xtol=xtol * e)), method
        prev = e
    return None, method


def evaluate_batch_size(
    point: dict,
    *,
    landscape: str,
    landscape_sha256: str,
    scheme: str,
    eta_lo: float,
    eta_hi: float,
    n_traj: int,
    n_steps: int,
    seed: int,
) -> dict:
    """Per-S quantities (module docstring) on the landscape file ``landscape`` (:func:`load_landscape`).
    point = {'task': 'batch', 'S': S}."""
    q, S = load_landscape(landscape, landscape_sha256), point["S"]
    out = {"eta_star": None, "sharpness_bound": None, "noise_bound": None}
    if scheme == "reshuffle":
        if q.N <= reshuffle.MAX_N:
            out["eta_star"] = json_safe(reshuffle.eta_star(q, S))
    else:
        m = MomentMap(q)
        c = variance_factor(S, q.N, scheme)
        sharp, noise = necessary_eta_bounds(m.lambda_max, m.nonuniformity(), c)
        out.update(eta_star=json_safe(m.eta_star(c)), sharpness_bound=json_safe(sharp), noise_bound=json_safe(noise))
    out["lyapunov_boundary"], out["lyapunov_boundary_method"] = lyapunov_boundary(
        q, S, scheme, eta_lo, eta_hi, n_traj=n_traj, n_steps=n_steps, seed=seed
    )
    return out


def evaluate_point(
    point: dict, *, landscape: str, landscape_sha256: str, scheme: str, n_traj: int, n_steps: int, seed: int
) -> dict:
    """Per-(eta, S) quantities (module docstring) on the landscape file ``landscape`` (:func:`load_landscape`).
    point = {'task': 'point', 'eta': eta, 'S': S}."""
    q, eta, S = load_landscape(landscape, landscape_sha256), point["eta"], point["S"]
    if scheme == "reshuffle":
        rho = reshuffle.per_step_spectral_radius(q, eta, S) if q.N <= reshuffle.MAX_N else None
    else:
        rho = MomentMap(q).spectral_radius(eta, variance_factor(S, q.N, scheme))
    lyap = lyapunov_exponent(q, eta, S, scheme, n_steps=n_steps, burn_in=max(1, n_steps // 4), n_traj=n_traj, seed=seed)
    r = q.range_basis().shape[1]
    run = simulate(
        q,
        eta,
        S,
        steps=n_steps,
        trajectories=n_traj,
        seed=seed,
        scheme=scheme,
        record_every=n_steps,
        divergence_threshold=DIVERGENCE_FACTOR * max(r, 1),
    )
    return {
        "spectral_radius": rho,
        "mean_square_stable": None if rho is None else bool(rho <= 1.0 + 1e-12),
        "lyapunov_exponent": lyap["value"],
        "lyapunov_se": lyap["se"],
        "lyapunov_method": lyap["method"],
        "almost_sure_stable": bool(lyap["value"] < 0),
        "diverged_fraction": float(run.diverged.mean()),
    }


def _evaluate(point: dict, **kw) -> dict:
    if point["task"] == "batch":  # its Lyapunov boundary is searched in the grid's range, part of its key
        return evaluate_batch_size(point, eta_lo=point["eta_lo"], eta_hi=point["eta_hi"], **kw)
    return evaluate_point(point, **kw)


def _sweep_config(q: PerExampleQuadratic, config: dict) -> dict:
    """What config.json records: the landscape (by its digest) and the sweep's options."""
    digest = landscape_digest(q.kind, q.data, q.w_star)
    return {"landscape_sha256": digest, "N": q.N, "D": q.D, "kind": q.kind, **config}


def _rows(sizes: list[int], grid: list[dict], results: list[dict], scheme: str) -> list[dict]:
    """The tidy rows (one per grid point) from the sweep's results, per-S ones first."""
    by_s = dict(zip(sizes, results[: len(sizes)]))
    rows = [{"eta": p["eta"], "S": p["S"], **by_s[p["S"]], **res} for p, res in zip(grid, results[len(sizes) :])]
    if scheme != "reshuffle":  # rho and eta* come from two computations: never report them in contradiction
        for r in rows:
            if r["spectral_radius"] is not None and r["eta_star"] is not None:
                r["mean_square_stable"] = mean_square_verdict(r["eta"], r["spectral_radius"], r["eta_star"])
    return rows


def _finished(out: Path, config: dict, sizes, points: list[dict], grid: list[dict], scheme: str) -> list | None:
    """The rows of a sweep that is already complete in ``out`` (its config, every point in the store, the
    CSV and the figure as they would be written), read without writing anything; None otherwise."""
    paths = [out / name for name in ("config.json", "landscape.npz", "phase_diagram.csv", "phase_diagram.png")]
    if not all(p.is_file() for p in paths) or read_json(paths[0]) != config:
        return None
    done, _, damaged, torn = read_store(out / "sweep.jsonl")
    if damaged or torn:
        return None
    keys = [point_key(p) for p in points]
    if any(k not in done for k in keys):
        return None
    rows = _rows(sizes, grid, [done[k] for k in keys], scheme)
    return rows if paths[2].read_bytes() == _csv_text(rows).encode("utf-8") else None


def _prepare(q: PerExampleQuadratic, out: Path, config: dict) -> Path:
    """Write landscape.npz and config.json (``config``: :func:`_sweep_config`), refusing to mix with a
    different sweep.

    landscape.npz is written atomically; one that a kill or a full disk left torn is written again from
    ``q`` (the command's landscape, which config.json records), and one that holds another landscape than
    config.json records is refused: the sweep's points are never computed on it."""
    cfg_path = out / "config.json"
    if cfg_path.exists():
        old = read_json(cfg_path)
        if old != config:
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise UserInputError(
                f"{out} holds a different sweep (differs in: {', '.join(diff)}); choose another --out or delete it"
            )
    out.mkdir(parents=True, exist_ok=True)
    path = out / "landscape.npz"
    stored = _stored_landscape(path)
    found = None if stored is None else landscape_digest(*stored)
    if found is None or not cfg_path.exists():  # none yet, torn, or left before any config was written
        if path.exists() and cfg_path.exists():
            warn(f"{path} was damaged (not a whole landscape file); written again from the command's landscape")
        _write_landscape(q, path)
    elif found != config["landscape_sha256"]:
        raise _landscape_refused(path, found, config["landscape_sha256"])
    text = dumps(config, indent=2)
    if not cfg_path.is_file() or cfg_path.read_text(encoding="utf-8") != text:
        atomic_write(cfg_path, text.encode("utf-8"))
    return path


def phase_diagram(
    q: PerExampleQuadratic,
    etas,
    batch_sizes,
    out_dir,
    *,
    scheme: str = "without_replacement",
    n_traj: int = 128,
    n_steps: int = 1000,
    seed: int = 0,
    executor: Executor | None = None,
    progress: bool = True,
) -> list[dict]:
    """Sweep the grid etas x batch_sizes; returns one dict per (eta, S) (tidy rows, S-major)."""
    check_landscape(q)
    check_scheme(scheme)
    etas = sorted({float(q.check_eta(e, "etas")) for e in check_list(etas, "etas")})
    allow = scheme == "with_replacement"
    sizes = sorted({int(check_batch_size(s, q.N, allow_above_n=allow)) for s in check_list(batch_sizes, "batch_sizes")})
    check_int_range(n_traj, "n_traj", 2)
    check_int_range(n_steps, "n_steps", 4)
    check_int_range(seed, "seed", 0, 2**63 - 1)
    workers = 1 if executor is not None else min(len(sizes) * (len(etas) + 1), os.cpu_count() or 1)
    check_fits(
        workers * (q.data.nbytes + moment_map_bytes(q.kind, q.N, q.D) + simulate_bytes(q, n_traj, max(sizes), 8)),
        f"a phase diagram of a {q.kind} landscape (N = {q.N}, D = {q.D}, {n_traj} trajectories) on {workers} worker(s)",
    )
    out = check_path(out_dir, "out_dir")
    eta_lo, eta_hi = etas[0] / 2, etas[-1] * 2
    config = {"scheme": scheme, "n_traj": n_traj, "n_steps": n_steps, "seed": seed}
    # per-S results depend on the grid's eta range: it is part of their key, so a resume with another
    # range recomputes them instead of reusing the old range's boundary
    per_s = [{"task": "batch", "S": s, "eta_lo": eta_lo, "eta_hi": eta_hi} for s in sizes]
    grid = [{"task": "point", "eta": e, "S": s} for s in sizes for e in etas]
    recorded = _sweep_config(q, config)
    rows = _finished(out, recorded, sizes, per_s + grid, grid, scheme)
    if rows is not None:  # nothing to do: read, do not write (a read-only directory reopens)
        return rows
    check_writable_dir(out, "--out", "its sweep is not finished")
    out.mkdir(parents=True, exist_ok=True)
    with DirectoryLock(out, "phase-diagram"):  # one writer: a second sweep into out is refused
        landscape = _prepare(q, out, recorded)
        digest = recorded["landscape_sha256"]
        fn = functools.partial(_evaluate, landscape=str(landscape.resolve()), landscape_sha256=digest, **config)
        results = run_sweep(
            fn, per_s + grid, out / "sweep.jsonl", executor=executor, progress=progress, desc="phase diagram"
        )
        rows = _rows(sizes, grid, results, scheme)
        _write_csv(rows, out / "phase_diagram.csv")
        plot_phase_diagram(rows, q, scheme, out / "phase_diagram.png")
    return rows


def _csv_text(rows: list[dict]) -> str:
    fh = io.StringIO(newline="")
    writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return fh.getvalue()


def _write_csv(rows: list[dict], path: Path) -> None:
    atomic_write(path, _csv_text(rows).encode("utf-8"))


def _edges(values: np.ndarray) -> np.ndarray:
    """Cell edges around log-spaced centres."""
    lv = np.log(values)
    if lv.size == 1:
        return np.exp(lv + np.array([-0.5, 0.5]))
    mid = (lv[1:] + lv[:-1]) / 2
    return np.exp(np.r_[2 * lv[0] - mid[0], mid, 2 * lv[-1] - mid[-1]])


def plot_phase_diagram(rows: list[dict], q: PerExampleQuadratic, scheme: str, path: Path) -> None:
    """Divergence fraction as cells; exact boundaries and necessary bounds as lines."""
    etas = np.array(sorted({r["eta"] for r in rows}))
    sizes = np.array(sorted({r["S"] for r in rows}))
    frac = np.full((etas.size, sizes.size), np.nan)
    for r in rows:
        frac[np.searchsorted(etas, r["eta"]), np.searchsorted(sizes, r["S"])] = r["diverged_fraction"]
    per_s = {r["S"]: r for r in rows}
    col = lambda key: np.array([np.nan if per_s[s][key] is None else per_s[s][key] for s in sizes])  # noqa: E731

    fig, ax = plt.subplots(figsize=(7, 5))
    mesh = ax.pcolormesh(_edges(sizes), _edges(etas), frac, cmap="Reds", vmin=0, vmax=1, shading="flat")
    fig.colorbar(mesh, ax=ax, label="fraction of simulated runs diverged")
    ax.plot(sizes, col("eta_star"), "k-o", ms=4, lw=2, label="mean-square boundary eta*(S) (exact)")
    methods = {per_s[s]["lyapunov_boundary_method"] for s in sizes}
    how = (
        {"enumeration": "exact", "monte_carlo": "simulated"}[methods.pop()]
        if len(methods) == 1
        else "exact where batches enumerable, else simulated"
    )
    ax.plot(sizes, col("lyapunov_boundary"), "b--s", ms=4, label=f"almost-sure boundary gamma = 0 ({how})")
    ax.plot(sizes, col("sharpness_bound"), ":", color="0.3", label="necessary: 2 / lambda_max(H)")
    ax.plot(sizes, col("noise_bound"), "-.", color="tab:green", label="necessary: 1 / (sqrt(c) s)")
    ax.set(
        xscale="log",
        yscale="log",
        xlim=_edges(sizes)[[0, -1]],
        ylim=_edges(etas)[[0, -1]],
        xlabel="batch size S",
        ylabel="learning rate eta",
        title=f"SGD phase diagram: {q.kind}, N = {q.N}, D = {q.D}, {scheme.replace('_', ' ')}",
    )
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xticks([], minor=True)
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:g}" if f"{y:.0e}"[0] in "25" else ""))
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    os.replace(tmp, path)  # a figure that exists is complete (a finished sweep is recognised by it)
