"""Break-even point (R2): simulated max curvature vs the predicted lambda*(eta, S) over an (eta, S) grid.

Landscape ``valleysim.break_even.SharpeningLandscape`` (N = 64, sigma = 1, offset 0.001,
beta = 0.001): the curvature a(z) = exp(z) grows as training drives z until SGD loses mean-square
stability along x; then bursts of x push z back. Prediction (R1 with s^2 = sigma^2 lambda^2):
lambda* = 2 / (eta (1 + c(S, N) sigma^2)), 2 / eta at S = N (GD). Left: max curvature and the
self-stabilised curvature (median over the last half) against lambda*. Middle: mean curvature
along training at S = 8. Right (Conjecture 2, two sharp directions with rates 1 and 1/2): max
Tr(H_xx) and min Tr(H_xx) / lambda_max over the grid.
"""

from __future__ import annotations

import _common as C
import numpy as np

from valleysim import argtypes as T
from valleysim import break_even as bes

ETAS = (0.05, 0.1, 0.2, 0.4)
BATCHES = (1, 2, 4, 8, 16, 64)


def main(argv=None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.set_defaults(out=C.ROOT / "docs" / "figures" / "break_even")
    p.add_argument("--trajectories", type=T.count, default=64, help="ensemble size per grid point")
    args = p.parse_args(argv)
    timer = C.Timer()
    etas, batches, R = (ETAS, BATCHES, args.trajectories) if not args.quick else ((0.1, 0.2, 0.4), (2, 8, 64), 8)

    land = bes.SharpeningLandscape.make(n_examples=64, sigma=1.0, offset=0.001, beta=0.001)
    land2 = bes.SharpeningLandscape.make(
        n_examples=64, sigma=1.0, offset=0.001, beta=0.001, a0=(1.0, 1.0), rates=(1.0, 0.5)
    )
    with C.sweep_executor(args) as ex:
        rows = bes.sweep(etas, batches, land, trajectories=R, seed=args.seed, keep_runs=True, executor=ex)
        rows2 = bes.sweep(
            etas,
            (batches[1], 8, 64) if not args.quick else (2, 64),
            land2,
            trajectories=max(R // 2, 4),
            seed=args.seed,
            executor=ex,
        )

    cols = [
        ("eta", "eta", "g"),
        ("batch", "S", "d"),
        ("predicted_break_even", "lambda*", ".3f"),
        ("max_curvature", "max curv", ".3f"),
        ("max_curvature_se", "SE", ".2g"),
        ("max_over_predicted", "max/pred", ".3f"),
        ("curvature_at_break_even", "plateau", ".3f"),
        ("curvature_at_break_even_se", "SE", ".2g"),
        ("plateau_over_predicted", "plat/pred", ".3f"),
        ("almost_sure_break_even", "a.s. edge", ".3f"),
        ("steps_to_break_even", "steps to BE", ".0f"),
        ("median_late_lambda_K", "lam_K (late)", ".3g"),
        ("diverged", "diverged", "d"),
    ]
    print(C.table(rows, cols))
    for r in rows:
        if r.get("note"):
            print(f"eta={r['eta']:g} S={r['batch']}: {r['note']}")
    print()
    print("Conjecture 2 (two sharp directions, rates 1 and 1/2):")
    print(
        C.table(
            rows2,
            [
                ("eta", "eta", "g"),
                ("batch", "S", "d"),
                ("predicted_break_even", "lambda*", ".3f"),
                ("max_trace_H", "max Tr(H)", ".3f"),
                ("max_trace_H_se", "SE", ".2g"),
                ("min_trace_ratio", "min Tr/lmax", ".4f"),
                ("final_trace_ratio", "final Tr/lmax", ".4f"),
                ("max_trace_K", "max Tr(K)", ".3g"),
            ],
        )
    )

    fig, ax = C.plt.subplots(1, 3, figsize=(16, 4.8))
    lam = np.array([r["predicted_break_even"] for r in rows])
    lim = [0.8 * lam.min(), 1.4 * lam.max()]
    ax[0].plot(lim, lim, "k--", lw=1, label="= lambda*")
    markers = dict(zip(batches, "os^vD*"))
    for S in batches:
        sub = [r for r in rows if r["batch"] == S]
        ax[0].errorbar(
            [r["predicted_break_even"] for r in sub],
            [r["max_curvature"] for r in sub],
            yerr=[2 * (r["max_curvature_se"] or 0) for r in sub],
            fmt=markers[S],
            ms=6,
            label=f"max, S={S}",
        )
        reached = [r for r in sub if r["reached"]]  # an unreached break-even has no plateau to plot
        ax[0].plot(
            [r["predicted_break_even"] for r in reached],
            [r["curvature_at_break_even"] for r in reached],
            markers[S],
            mfc="none",
            color="gray",
            ms=8,
        )
    ax[0].set(
        xscale="log",
        yscale="log",
        xlabel="predicted lambda* = 2 / (eta (1 + c sigma^2))",
        ylabel="simulated curvature (filled: max; open: plateau, where reached)",
        title="break-even curvature",
    )
    ax[0].legend(fontsize=7)
    for r in rows:
        if r["batch"] != (8 if 8 in batches else batches[0]):
            continue
        run = r["run"]
        curv = run.curvature()[run.ok]
        (line,) = ax[1].plot(run.steps * r["eta"], np.nanmean(curv, axis=0), lw=1, label=f"eta={r['eta']:g}")
        ax[1].axhline(r["predicted_break_even"], color=line.get_color(), ls="--", lw=0.8)
        ax[1].plot(run.steps * r["eta"], curv[0], color=line.get_color(), lw=0.4, alpha=0.5)
    ax[1].set(
        yscale="log",
        xlabel="eta x step",
        ylabel="lambda_H^1 = a(z)",
        title="curvature along training, S = 8 (mean, one run; dashed: lambda*)",
    )
    ax[1].legend(fontsize=7)
    for S in sorted({r["batch"] for r in rows2}):
        sub = [r for r in rows2 if r["batch"] == S]
        ax[2].plot([r["eta"] for r in sub], [r["max_trace_H"] for r in sub], "o-", label=f"max Tr(H), S={S}")
    ax2 = ax[2].twinx()
    for S in sorted({r["batch"] for r in rows2}):
        sub = [r for r in rows2 if r["batch"] == S]
        ax2.plot([r["eta"] for r in sub], [r["min_trace_ratio"] for r in sub], "s:", label=f"min Tr/lmax, S={S}")
    ax[2].set(xscale="log", yscale="log", xlabel="eta", ylabel="max Tr(H_xx)", title="Conjecture 2")
    ax2.set_ylabel("min Tr(H_xx) / lambda_max")
    ax[2].legend(fontsize=7, loc="upper center")
    ax2.legend(fontsize=7, loc="lower left")
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    for axis in (ax[0].xaxis, ax[0].yaxis, ax[1].yaxis, ax[2].xaxis, ax[2].yaxis):
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())
    ticks = [t for t in (1, 2, 3, 5, 10, 20, 30, 50) if lim[0] <= t <= lim[1]]
    ax[0].set_xticks(ticks)
    ax[0].set_yticks(ticks)
    ax[2].set_xticks(list(etas))
    fig.tight_layout()
    data = {
        "landscape": {"n_examples": 64, "sigma": 1.0, "offset": 0.001, "beta": 0.001},
        "rows": [{k: v for k, v in r.items() if k != "run"} for r in rows],
        "conjecture2_rows": rows2,
    }
    C.save(fig, args.out, "break_even_sweep", data, timer)
    return 0


if __name__ == "__main__":
    raise SystemExit(C.report_errors(main, prog=C.Path(__file__).name))
