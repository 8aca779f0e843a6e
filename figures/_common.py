"""Small helpers shared by the valley figure scripts (argparse, fits, tables, output files)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402,F401  (re-exported for the scripts)
import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python figures/x.py` from a checkout without installing
    sys.path.insert(0, str(ROOT))

from valleysim import argtypes as T  # noqa: E402
from valleysim.errors import report_errors  # noqa: E402,F401  (re-exported for the scripts)
from valleysim.executors import add_executor_options, sweep_executor  # noqa: E402,F401  (re-exported)
from valleysim.jsonout import dumps  # noqa: E402

DEFAULT_OUT = ROOT / "docs" / "figures" / "valley"


def parser(description: str) -> argparse.ArgumentParser:
    p = T.OneLineParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=T.out_dir, default=str(DEFAULT_OUT), help="output directory (PNG + data file)")
    p.add_argument("--quick", action="store_true", help="small ensemble / short runs (< 30 s): a smoke test")
    p.add_argument("--seed", type=T.seed, default=0, help="base seed of the simulations")
    add_executor_options(p)
    return p


def map_points(args, fn, calls: list[tuple], desc: str = "points") -> list:
    """``[fn(*c) for c in calls]`` in the order of ``calls``: in this process for the default
    ``--executor local`` without ``--workers`` (each point then uses every numba thread), else one task
    per call on the executor the flags name (``fn`` must be a module-level function). Every call
    carries its own seed, so the results do not depend on the executor or the number of workers."""
    from concurrent.futures import as_completed

    from tqdm import tqdm

    with sweep_executor(args) as ex:
        if ex is None:
            return [fn(*c) for c in tqdm(calls, desc=desc, disable=len(calls) < 2)]
        futures = [ex.submit(fn, *c) for c in calls]
        with tqdm(total=len(futures), desc=desc) as bar:
            for f in as_completed(futures):
                bar.update()
        return [f.result() for f in futures]


def wls(X: np.ndarray, y: np.ndarray, se: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Weighted least squares y ~ X beta with weights 1/se^2.

    Returns (beta, SE of beta from the stated errors, chi^2 per degree of freedom).
    """
    X = np.atleast_2d(np.asarray(X, dtype=float).T).T
    w = 1.0 / np.asarray(se, dtype=float) ** 2
    A = X.T @ (w[:, None] * X)
    beta = np.linalg.solve(A, X.T @ (w * y))
    cov = np.linalg.inv(A)
    dof = max(len(y) - X.shape[1], 1)
    chi2 = float(np.sum(w * (y - X @ beta) ** 2) / dof)
    return beta, np.sqrt(np.diag(cov)), chi2


def ols_line(x: np.ndarray, y: np.ndarray) -> dict:
    """Ordinary least squares y = w x + b with the usual standard errors of w and b."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    X = np.column_stack([x, np.ones_like(x)])
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - X @ beta
    s2 = float(resid @ resid) / max(len(y) - 2, 1)
    se = np.sqrt(np.diag(s2 * np.linalg.inv(X.T @ X)))
    return {"w": float(beta[0]), "w_se": float(se[0]), "b": float(beta[1]), "b_se": float(se[1])}


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Fixed-width table; columns are (key, header, format spec)."""
    widths = [max(len(h), 11) for _, h, _ in columns]
    head = "  ".join(f"{h:>{w}}" for (_, h, _), w in zip(columns, widths))
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = []
        for (k, _, fmt), w in zip(columns, widths):
            v = r.get(k)
            cells.append(f"{'-':>{w}}" if v is None else f"{v:>{w}{fmt}}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def save(fig, out: Path, name: str, data: dict, timer) -> None:
    """Write out/name.png and out/name.json (NaN/inf -> null, numpy -> Python) and say so."""
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{name}.png", dpi=120)
    plt.close(fig)
    (out / f"{name}.json").write_text(dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}/{name}.png and .json  ({timer})")


def stopped_note(summaries: list[dict]) -> str:
    """One line on trajectories that left the valley / crossed a kink (or none did)."""
    bad = [s for s in summaries if s.get("stopped")]
    if not bad:
        return "stopped trajectories: none"
    return "stopped trajectories: " + "; ".join(
        f"eta={s['eta']:g} S={s.get('batch')}: {s['stopped']}/{s['trajectories']} "
        f"(first at step {s['first_stop_step']}: {s['first_stop_reason']})"
        for s in bad
    )


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __str__(self):
        return f"{time.perf_counter() - self.t0:.1f} s"
