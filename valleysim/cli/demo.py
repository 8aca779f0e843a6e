"""``valleysim demo``: the main job. Theory next to simulation on built-in landscapes.

Writes under ``out``: demo_summary.md / .json (the tables printed),
stability_vs_simulation.png, break_even.png, gd_damping.png, a phase
diagram per landscape (phase_<name>/), valley_exp_toy.png (trace and log det
under SGD-like vs isotropic noise) and proofs.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from valleysim import break_even, valley, walk  # noqa: E402
from valleysim.jsonout import dumps  # noqa: E402
from valleysim.quadratic.integrator import simulate  # noqa: E402
from valleysim.quadratic.landscape import PerExampleQuadratic, generate  # noqa: E402
from valleysim.quadratic.lyapunov import lyapunov_exponent, mean_square_growth_mc  # noqa: E402
from valleysim.quadratic.phase_diagram import phase_diagram  # noqa: E402
from valleysim.quadratic.second_moment import MomentMap, eta_star_dense  # noqa: E402
from valleysim.theory import break_even_curvature, eta_star_1d, gd_contraction, gd_damping_regime, variance_factor  # noqa: E402
from valleysim.valley.landscape import catalogue  # noqa: E402
from valleysim.valley.noise import make_noise  # noqa: E402
from valleysim.valley.plots import plot_run  # noqa: E402

LANDSCAPES = {
    "1-D, N=32": lambda: generate("diagonal", 32, 1, nonuniformity=0.6, seed=1),
    "diagonal D=8, N=200": lambda: generate("diagonal", 200, 8, nonuniformity=0.5, condition=20, seed=2),
    "dense D=16, N=400": lambda: generate("dense", 400, 16, nonuniformity=0.4, seed=3),
    "least squares N=64, D=128": lambda: generate("rank_one", 64, 128, seed=4),
}
ETA_FRACTIONS = (0.5, 0.9, 1.1)
MIN_ESS = 100  # below it the Monte Carlo mean square is ruled by its heavy tail (lyapunov.mean_square_growth_mc)


def _closed_form(q: PerExampleQuadratic, c: float) -> float | None:
    """eta* from the 1-D formula, worst coordinate (diagonal landscapes only)."""
    if q.kind != "diagonal":
        return None
    return float(np.min(eta_star_1d(q.data.mean(0), q.data.var(0), c)))


def stability_table(quick: bool) -> list[dict]:
    """eta* three ways, and exact vs Monte Carlo growth rates around it."""
    n_traj = 20_000 if quick else 200_000
    rows = []
    for name, make in LANDSCAPES.items():
        q = make()
        m = MomentMap(q)
        for S in (1, 8):
            c = variance_factor(S, q.N)
            es = m.eta_star(c)
            ref = eta_star_dense(q, c) if m.r <= 16 else None
            for frac in ETA_FRACTIONS:
                eta = frac * es
                ms = mean_square_growth_mc(q, eta, S, n_steps=12, burn_in=3, n_traj=n_traj, seed=7)
                d2 = m.mean_dist2(eta, c, [3, 12])
                lyap = lyapunov_exponent(q, eta, S, n_steps=2000 if quick else 4000, n_traj=128, seed=7)
                run = simulate(
                    q, eta, S, steps=2000, trajectories=256, seed=7, record_every=2000, divergence_threshold=1e12 * m.r
                )
                rows.append(
                    {
                        "landscape": name,
                        "S": S,
                        "eta": eta,
                        "eta_over_eta_star": frac,
                        "eta_star": es,
                        "eta_star_dense": ref,
                        "eta_star_closed_form": _closed_form(q, c),
                        "log_rho": float(np.log(m.spectral_radius(eta, c))),
                        "growth_exact": float(np.log(d2[1] / d2[0]) / 9),
                        "growth_mc": ms["value"],
                        "growth_mc_se": ms["se"],
                        "growth_mc_ess": ms["effective_sample_size"],
                        "lyapunov": lyap["value"],
                        "lyapunov_se": lyap["se"],
                        "lyapunov_method": lyap["method"],
                        "diverged_fraction": float(run.diverged.mean()),
                    }
                )
    return rows


def _fmt(x, spec=".4g"):
    return "-" if x is None or x != x else format(x, spec)  # None or NaN (e.g. GD stopped: no cosine)


def stability_markdown(rows: list[dict]) -> str:
    head = (
        "| landscape | S | eta/eta* | eta* (matrix-free) | eta* (dense ref.) | eta* (1-D formula) | "
        "log rho | growth 3..12 exact | growth 3..12 MC +- SE | ESS | z | Lyapunov gamma | diverged (T=2000) |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        z = (r["growth_mc"] - r["growth_exact"]) / r["growth_mc_se"] if r["growth_mc_se"] > 0 else float("nan")
        z_txt = f"{z:+.1f}" if r["growth_mc_ess"] >= MIN_ESS else "heavy tail"
        gam = _fmt(r["lyapunov"], "+.4f") + ("" if r["lyapunov_se"] == 0 else f" +- {r['lyapunov_se']:.1g}")
        lines.append(
            f"| {r['landscape']} | {r['S']} | {r['eta_over_eta_star']:.2f} | {r['eta_star']:.6g} | "
            f"{_fmt(r['eta_star_dense'], '.6g')} | {_fmt(r['eta_star_closed_form'], '.6g')} | "
            f"{r['log_rho']:+.4f} | {r['growth_exact']:+.4f} | {r['growth_mc']:+.4f} +- {r['growth_mc_se']:.3f} | "
            f"{r['growth_mc_ess']:.0f} | {z_txt} | {gam} | {r['diverged_fraction']:.2f} |"
        )
    return "\n".join(lines)


def plot_stability(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    x = np.array([r["growth_exact"] for r in rows])
    y = np.array([r["growth_mc"] for r in rows])
    err = np.array([r["growth_mc_se"] for r in rows])
    heavy = np.array([r["growth_mc_ess"] < MIN_ESS for r in rows])
    for k, name in enumerate(LANDSCAPES):
        sel = np.array([r["landscape"] == name for r in rows])
        ax.errorbar(
            x[sel & ~heavy], y[sel & ~heavy], yerr=2 * err[sel & ~heavy], fmt="o", capsize=3, color=f"C{k}", label=name
        )
        ax.plot(x[sel & heavy], y[sel & heavy], "o", mfc="none", color=f"C{k}")
    ax.plot([], [], "o", mfc="none", color="0.4", label=f"open: heavy tail (ESS < {MIN_ESS}), unreliable")
    lim = [min(x.min(), y.min()) - 0.1, max(x.max(), y.max()) + 0.1]
    ax.plot(lim, lim, "k--", lw=1, label="exact = simulated")
    ax.set(
        xlabel="exact growth rate of E||w - w*||^2 per step (steps 3..12)",
        ylabel="Monte Carlo estimate (+- 2 SE)",
        title="Second-moment recursion vs simulation",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def break_even_figure(path: Path, N: int = 1000, alpha: float = 1.0) -> None:
    """lambda*(eta, S) = 2/eta - alpha c(S, N) against eta for several S (R2)."""
    etas = np.geomspace(0.01, 1.0, 200)
    fig, ax = plt.subplots(figsize=(6, 4))
    for S in (1, 8, 32, 128, N):
        lam = break_even_curvature(etas, variance_factor(S, N), alpha)
        ax.plot(etas, np.where(lam > 0, lam, np.nan), label=f"S = {S}" + (" (GD: 2/eta)" if S == N else ""))
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="learning rate eta",
        ylabel="break-even curvature lambda*",
        title=f"lambda* = 2/eta - alpha c(S, N)   (alpha = {alpha}, N = {N})",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def gd_damping_table(path: Path) -> list[dict]:
    """R7: simulated GD (N = 1, so S = N) along one direction vs |1 - eta lambda|^t."""
    q = PerExampleQuadratic("diagonal", np.array([[1.0]]))
    rows = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for x in (0.5, 1.0, 1.5, 1.99, 2.05):
        run = simulate(q, x, 1, steps=30, trajectories=1, w0=np.ones(1), record_every=1)
        (line,) = ax.plot(
            run.steps, np.sqrt(run.dist2[0]), "o", ms=3, label=f"eta lambda = {x}: {gd_damping_regime(x, 1.0)}"
        )
        ax.plot(run.steps, gd_contraction(x, 1.0) ** run.steps, "-", lw=0.8, color=line.get_color())
        rows.append(
            {
                "eta_lambda": x,
                "regime": gd_damping_regime(x, 1.0),
                "contraction_exact": float(gd_contraction(x, 1.0)),
                "contraction_simulated": float(np.sqrt(run.dist2[0, 1] / run.dist2[0, 0])),
            }
        )
    ax.set(
        yscale="log",
        ylim=(1e-12, 1e2),
        xlabel="step t",
        ylabel="|w_t - w*| (dots: simulated)",
        title="GD damping regimes (R7); lines |1 - eta lambda|^t",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return rows


#: (landscape, noise, noise scale, eta, S) of the valley table: Theorem 1 with Gaussian and with true
#: mini-batch noise, Theorem 2 / Corollary 2.1 with isotropic noise, a curved manifold (not valley form).
VALLEY_RUNS = (
    ("abs-toy", "sgd", None, 0.01, 4),
    ("exp-toy", "sgd", None, 0.01, 4),
    ("exp-toy", "isotropic", 0.05, 0.01, None),
    ("regression-valley", "minibatch", None, 0.01, 4),
    ("diag-linear-net", "minibatch", None, 0.01, 4),
)


def valley_table(out: Path, quick: bool) -> list[dict]:
    """Drift of the Hessian trace and log det per step, measured (+- SE) and predicted (R3, R4)."""
    rows, exp_runs = [], []
    for name, noise_name, scale, eta, S in VALLEY_RUNS:
        land = catalogue(name)
        noise = make_noise(land, noise_name, scale=scale, S=S, M=None if land.finite_sum else 32)
        run = valley.simulate(
            land,
            noise,
            eta,
            steps=1000 if quick else 4000,
            burn_in=1000,
            trajectories=512 if quick else 2048,
            seed=0,
            record_every=100,
        )
        s = valley.summarise(run)
        for q in ("trace", "logdet"):
            if s.get(f"{q}_drift_predicted") is not None:
                rows.append(
                    {
                        "landscape": name,
                        "noise": noise_name,
                        "eta": eta,
                        "quantity": q,
                        "measured": s[f"{q}_drift_per_step"],
                        "se": s[f"{q}_drift_stderr"],
                        "predicted": s[f"{q}_drift_predicted"],
                        "z": (s[f"{q}_drift_per_step"] - s[f"{q}_drift_predicted"]) / s[f"{q}_drift_stderr"],
                    }
                )
        if name == "exp-toy":
            exp_runs.append(run)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    for run in exp_runs:
        plot_run(run, out / "valley_exp_toy.png", axes=axes)
    fig.suptitle(
        "exp-toy from the same start: SGD-like noise lowers the trace faster, isotropic noise the log det "
        "(band = 2 SE, dashed = theory)",
        fontsize=9,
    )
    fig.savefig(out / "valley_exp_toy.png", dpi=120)
    plt.close(fig)
    return rows


def valley_markdown(rows: list[dict]) -> str:
    """z = (measured - predicted) / SE."""
    lines = [
        "| landscape | noise | eta | drift of | measured / step | SE | predicted | rel. diff | z |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['landscape']} | {r['noise']} | {r['eta']} | {r['quantity']} | {r['measured']:.4g} | "
        f"{r['se']:.2g} | {r['predicted']:.4g} | {r['measured'] / r['predicted'] - 1:+.2%} | {r['z']:+.1f} |"
        for r in rows
    ]
    return "\n".join(lines)


def break_even_table(quick: bool) -> tuple[list[dict], str]:
    """R2: where progressive sharpening stops under SGD, against lambda*(eta, S) = 2/(eta (1 + c sigma^2))."""
    rows = break_even.sweep((0.1, 0.2), (2, 8, 64), trajectories=16 if quick else 64, seed=0)
    md = [
        "| eta | S | predicted lambda* | curvature where growth stops | max curvature | steps to break-even |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        plateau, steps = (
            (
                f"{r['curvature_at_break_even']:.3f} ± {r['curvature_at_break_even_se']:.2g}",
                f"{r['steps_to_break_even']:.0f}",
            )
            if r["reached"]
            else (f"not reached ({r['reached_trajectories']}/{r['trajectories'] - r['diverged']})", "-")
        )
        md.append(
            f"| {r['eta']} | {r['batch']} | {r['predicted_break_even']:.3f} | {plateau} | "
            f"{r['max_curvature']:.3f} ± {r['max_curvature_se']:.2g} | {steps} |"
        )
    notes = [f"eta={r['eta']} S={r['batch']}: {r['note']}" for r in rows if r.get("note")]
    return rows, "\n".join(md + ([""] + notes if notes else []))


def walk_table(quick: bool) -> tuple[list[dict], str]:
    """R9: SGD, GD and GD + isotropic noise of SGD's power on the rough valley floor (eta = 2, S = 4)."""
    land = walk.WalkLandscape.make()
    rows = [
        walk.summarise(
            walk.simulate(
                land,
                2.0,
                4,
                optimizer=opt,
                steps=1000 if quick else 2000,
                trajectories=1 if opt == "gd" else (16 if quick else 64),
                seed=0,
            )
        )
        for opt in ("sgd", "gd-noise", "gd")
    ]
    md = [
        "| optimizer | height above floor | cos(g_t-1, g_t) | barriers crossed | progress along the valley |",
        "|---|---|---|---|---|",
    ]
    md += [
        f"| {r['optimizer']} | {r['height']:.4f} | {_fmt(r['cos'], '.3f')} | {r['barriers_total']:.2f} | "
        f"{r['progress']:.2f} ± {r['progress_se']:.2g} |"
        for r in rows
    ]
    return rows, "\n".join(md)


def run_demo(out: Path, quick: bool = False, data=None) -> dict:
    """The main job into ``out``; the network section runs when ``data`` (or ``$VALLEYSIM_DATA``) names CIFAR-10."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    print("valleysim demo: SGD stability on per-example quadratics (theory vs simulation)\n")
    rows = stability_table(quick)
    table = stability_markdown(rows)
    print(table, "\n")
    plot_stability(rows, out / "stability_vs_simulation.png")
    damping = gd_damping_table(out / "gd_damping.png")
    damping_md = "\n".join(
        ["| eta lambda | regime | |1 - eta lambda| | simulated |", "|---|---|---|---|"]
        + [
            f"| {r['eta_lambda']} | {r['regime']} | {r['contraction_exact']:.4f} | {r['contraction_simulated']:.4f} |"
            for r in damping
        ]
    )
    print(damping_md, "\n")
    break_even_figure(out / "break_even.png")
    print("degenerate valleys: drift of the Hessian trace and log det per step (R3, R4)\n")
    valley_rows = valley_table(out, quick)
    valley_md = valley_markdown(valley_rows)
    print(valley_md, "\n")
    print("break-even: progressive sharpening stops at lambda*(eta, S) (R2)\n")
    be_rows, be_md = break_even_table(quick)
    print(be_md, "\n")
    print("a walk with SGD on a rough valley floor, eta = 2, S = 4 (R9)\n")
    walk_rows, walk_md = walk_table(quick)
    print(walk_md, "\n")
    phases = {}
    for name, grid in (
        ("1-D, N=32", (np.geomspace(0.2, 4.0, 16), [1, 2, 4, 8, 16, 32])),
        ("least squares N=64, D=128", (np.geomspace(0.05, 3.0, 12), [1, 4, 16, 64])),
    ):
        slug = "phase_" + "".join(ch if ch.isalnum() else "_" for ch in name).strip("_").lower()
        phase_rows = phase_diagram(
            LANDSCAPES[name](),
            grid[0],
            grid[1],
            out / slug,
            n_traj=64 if quick else 128,
            n_steps=500 if quick else 1000,
            seed=0,
        )
        phases[name] = str(out / slug / "phase_diagram.png")
        print(f"phase diagram {name}: {len(phase_rows)} points -> {phases[name]}")
    from valleysim.cli.dnn import network_section

    print("\na network at the edge of stability: full-batch GD, lambda_max against 2/eta (R1, R7)\n")
    network, network_md = network_section(data, out, quick)
    print(network_md, "\n")
    from proofs.__main__ import main as proofs_main

    proofs_main(["--out", str(out / "proofs.md")])
    summary = {
        "stability": rows,
        "gd_damping": damping,
        "valley_drift": valley_rows,
        "break_even": be_rows,
        "walk": walk_rows,
        "phase_diagrams": phases,
        "network_edge_of_stability": network,
        "seconds": round(time.time() - t0, 1),
    }
    (out / "demo_summary.json").write_text(dumps(summary, indent=2))
    (out / "demo_summary.md").write_text(
        "# valleysim demo\n\n## Stability: theory vs simulation\n\n"
        + table
        + "\n\n## GD damping (R7)\n\n"
        + damping_md
        + "\n\n## Degenerate valleys: trace and log det drift (R3, R4)\n\n"
        + valley_md
        + "\n\n## Break-even point (R2)\n\n"
        + be_md
        + "\n\n## A walk with SGD (R9)\n\n"
        + walk_md
        + "\n\n## A network at the edge of stability (R1, R7)\n\n"
        + network_md
        + "\n"
    )
    print(f"\nwrote {out}/ in {summary['seconds']} s")
    return summary
