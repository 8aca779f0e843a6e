"""A walk with SGD (R9): Tables 1 and 2 of Xing et al. (2018) and the roles of eta, S and the noise's shape.

On ``valleysim.walk.WalkLandscape.make()`` (32 examples, a saturating wall along x with curvature ~0.91 at
the floor, slope 0.02 along y with barriers 0.02 high every 1 that fade above the floor, 8 weakly curved flat
directions), every run starts at x = 1, y = 0 and is split into 4 windows (the paper's "epochs"). Tables:

  T1  barriers crossed per window (paper Table 1)
  T2  average height above the valley floor per window, for several eta at S = 4 (paper Table 2)
  T3  eta x S grid: height, cos(g_{t-1}, g_t), distance from init, progress along the valley (paper Fig. 4)
  T4  GD damping (R7): quadratic wall cos = sign(1 - eta k); saturating wall: GD bounces for 2 < eta k < 4
  T5  SGD vs GD + isotropic noise of the same power at the start vs GD (paper Sec. 4)

Mean ± SE over trajectories; averages over the second half of the run unless per window.
"""

from __future__ import annotations

import math

import _common as C
import numpy as np

from valleysim.walk import TRACE_FIELDS, WalkLandscape, per_bin, simulate, summarise

F = {name: j for j, name in enumerate(TRACE_FIELDS)}
KEYS = (
    "height",
    "cos",
    "distance",
    "progress",
    "barriers_total",
    "final_loss",
    "flat_norm",
    "floor_rise_fraction",
    "wall_amplitude",
)


def _row(s: dict, **extra) -> dict:
    r = {k: s[k] for k in ("optimizer", "eta", "batch", "eta_k", "completed", "diverged")}
    for k in KEYS:
        r[k], r[k + "_se"] = s[k], s[k + "_se"]
    return r | extra


def _pm(m, se, fmt=".3g"):
    return f"{m:{fmt}} ± {se:.1g}" if np.isfinite(m) else "-"


def _simulate(land, opt, eta, S, steps, R, seed, **kw):
    """One (optimizer, eta, S) run of R trajectories (one for GD) in 4 windows."""
    return simulate(
        land,
        eta,
        optimizer=opt,
        steps=steps,
        trajectories=1 if opt == "gd" else R,
        batch_size=S,
        seed=seed,
        n_bins=4,
        **kw,
    )


def run_point(land, opt, eta, S, steps, R, seed) -> tuple[dict, dict]:
    """(per-window statistics, summary) of one run: a task of ``C.map_points``."""
    r = _simulate(land, opt, eta, S, steps, R, seed)
    return per_bin(r), summarise(r)


def main(argv=None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.set_defaults(out=C.ROOT / "docs" / "figures" / "walk")
    args = p.parse_args(argv)
    timer = C.Timer()
    T, R = (2000, 64) if not args.quick else (400, 12)
    land = WalkLandscape.make()
    k = land.floor_curvature()
    seed = [args.seed]

    def run(opt, eta, S=None, **kw):  # T4, T5: in this process (their trajectories are plotted)
        seed[0] += 1
        return _simulate(land, opt, eta, S, T, R, seed[0], **kw)

    print(
        f"landscape: N={land.N}, wall curvature at the floor k={k:.4f}, D={land.D}; T={T} steps, "
        f"R={R} trajectories, 4 windows of {T // 4} steps\n"
    )
    data: dict = {"landscape": land.params, "floor_curvature": k, "steps": T, "trajectories": R}

    # --- T1: barriers crossed per window ---
    t1_cases = [
        ("sgd", 2.0, 4),
        ("sgd", 2.0, 1),
        ("sgd", 1.0, 4),
        ("gd-noise", 2.0, 4),
        ("gd-noise", 2.0, 1),
        ("gd", 2.0, None),
        ("gd", 1.0, None),
    ]
    # every run, in the order that fixes its seed (args.seed + 1, + 2, ...): T1, T2, then the T3 grid
    t2_etas = (1.0, 1.5, 2.0, 2.5)
    etas, Ss = (1.5, 2.0, 2.5), (1, 2, 4, 8, 16)
    grid_cases = [c for eta in etas for c in [*(("sgd", eta, S) for S in Ss), ("gd", eta, None)]]
    cases = [*t1_cases, *(("sgd", eta, 4) for eta in t2_etas), *grid_cases]
    calls = [(land, opt, eta, S, T, R, args.seed + 1 + i) for i, (opt, eta, S) in enumerate(cases)]
    results = iter(C.map_points(args, run_point, calls, desc="walk runs"))
    seed[0] += len(cases)

    t1 = []
    for opt, eta, S in t1_cases:
        pb, summary = next(results)
        t1.append(
            {
                "optimizer": opt,
                "eta": eta,
                "batch": S,
                **{f"w{j + 1}": pb["barriers"][j][0] for j in range(4)},
                **{f"w{j + 1}_se": pb["barriers"][j][1] for j in range(4)},
                "progress": summary["progress"],
            }
        )
    print("T1  barriers crossed per window of", T // 4, "steps (mean per trajectory)")
    print(_text_table(t1, ["w1", "w2", "w3", "w4"], "progress"))
    data["table1_barriers"] = t1

    # --- T2: height per window vs eta at S = 4 ---
    t2 = []
    for eta in t2_etas:
        pb, _ = next(results)
        t2.append(
            {
                "optimizer": "sgd",
                "eta": eta,
                "batch": 4,
                **{f"w{j + 1}": pb["height"][j][0] for j in range(4)},
                **{f"w{j + 1}_se": pb["height"][j][1] for j in range(4)},
            }
        )
    print("\nT2  average height above the valley floor per window, SGD S=4")
    print(_text_table(t2, ["w1", "w2", "w3", "w4"]))
    data["table2_height"] = t2

    # --- T3: eta x S grid ---
    grid = [_row(next(results)[1], **({"batch": land.N} if opt == "gd" else {})) for opt, _, _ in grid_cases]
    data["table3_grid"] = grid
    for key, name in (
        ("height", "height above floor"),
        ("cos", "cos(g_{t-1}, g_t)"),
        ("distance", "distance from init ||theta_T - theta_0||"),
        ("progress", "progress along the valley y_T - y_0"),
    ):
        print(f"\nT3  {name}: rows eta, columns S (last column GD, S = N = {land.N})")
        head = f"{'eta':>6} {'eta k':>6}" + "".join(f"{'S=' + str(S):>17}" for S in (*Ss, land.N))
        print(head)
        print("-" * len(head))
        for eta in etas:
            cells = [r for r in grid if r["eta"] == eta]
            print(f"{eta:>6g} {eta * k:>6.3g}" + "".join(f"{_pm(r[key], r[key + '_se']):>17}" for r in cells))

    # --- T4: GD damping ---
    quad = WalkLandscape.make(
        n_examples=1, k_spread=0.0, offset_std=0.0, slope=0.0, slope_std=0.0, width=math.inf, barrier=0.0, n_flat=0
    )
    t4 = []
    for ek in (0.5, 0.9, 1.5, 1.9):
        r = simulate(quad, ek, optimizer="gd", steps=30, trajectories=1, n_rec=1)
        cos = r.traces[0, 1:, F["cos"]]
        t4.append(
            {
                "wall": "quadratic",
                "eta_k": ek,
                "cos_mean": float(np.nanmean(cos)),
                "cos_predicted": float(np.sign(1 - ek)),
                "x_30": float(r.theta_end[0, 0]),
                "x_30_predicted": (1 - ek) ** 30,
                "height": summarise(r)["height"],
                "progress": 0.0,
            }
        )
    for eta in (1.0, 2.0, 2.5, 3.0, 3.5):
        s = summarise(run("gd", eta), window="all")  # GD stops at a minimum when eta k < 2: whole run
        t4.append(
            {
                "wall": "saturating (default)",
                "eta_k": eta * k,
                "cos_mean": s["cos"],
                "cos_predicted": None,
                "x_30": None,
                "x_30_predicted": None,
                "height": s["height"],
                "progress": s["progress"],
            }
        )
    print("\nT4  GD damping (R7): cos(g_{t-1}, g_t) of GD")
    print(
        C.table(
            t4,
            [
                ("eta_k", "eta k", ".3g"),
                ("cos_mean", "cos", ".4f"),
                ("cos_predicted", "predicted", ".0f"),
                ("x_30", "x_30", ".3e"),
                ("x_30_predicted", "(1-eta k)^30", ".3e"),
                ("height", "height", ".4f"),
                ("progress", "progress", ".2f"),
            ],
        )
    )
    print(
        "    rows 1-4: quadratic wall, 30 steps; rows 5-9: default landscape, whole run (GD bounces between "
        "the walls for eta k > 2,\n    stops in front of the first barrier below)"
    )
    data["table4_gd_damping"] = t4

    # --- T5: SGD vs GD + isotropic noise ---
    t5 = []
    traj = {}
    for eta in (1.8, 2.0, 2.2):
        for S in (2, 4):
            for opt in ("sgd", "gd-noise"):
                r = run(opt, eta, S, n_rec=4)
                t5.append(_row(summarise(r), sigma=r.sigma))
                if eta == 2.0 and S == 4:
                    traj[opt] = r
        r = run("gd", eta, n_rec=1)
        t5.append(_row(summarise(r), sigma=0.0))
        if eta == 2.0:
            traj["gd"] = r
    traj["gd-bounce"] = run("gd", 2.5, n_rec=1)
    print("\nT5  SGD vs GD + isotropic noise with SGD's noise power at the start (same eta, S) vs GD")
    print(
        C.table(
            t5,
            [
                ("eta", "eta", "g"),
                ("batch", "S", "g"),
                ("optimizer", "optimizer", ""),
                ("progress", "progress", ".2f"),
                ("progress_se", "± SE", ".2f"),
                ("height", "height", ".4f"),
                ("barriers_total", "barriers", ".2f"),
                ("distance", "distance", ".2f"),
                ("flat_norm", "|z_T|", ".3f"),
                ("final_loss", "final loss", ".3f"),
                ("cos", "cos", ".3f"),
            ],
        )
    )
    data["table5_sgd_vs_isotropic"] = t5

    # --- figure ---
    fig, ax = C.plt.subplots(2, 3, figsize=(15, 8.5))
    a = ax[0, 0]
    for S in Ss:
        rows = [r for r in grid if r["batch"] == S]
        a.errorbar(
            [r["eta"] for r in rows],
            [r["height"] for r in rows],
            [2 * r["height_se"] for r in rows],
            marker="o",
            capsize=3,
            label=f"S={S}",
        )
    a.set(xlabel="eta", ylabel="mean height above the floor", title="height grows with eta (and with 1/S)")
    a.legend(fontsize=8)
    a = ax[0, 1]
    for eta in etas:
        rows = [r for r in grid if r["eta"] == eta]
        a.errorbar(
            [r["batch"] for r in rows],
            [r["cos"] for r in rows],
            [2 * r["cos_se"] for r in rows],
            marker="o",
            capsize=3,
            label=f"eta={eta} (eta k={eta * k:.2f})",
        )
    a.set(
        xscale="log",
        xlabel="batch size S (S = N: GD)",
        ylabel="mean cos(g_{t-1}, g_t)",
        title="cosine of consecutive gradients",
    )
    a.legend(fontsize=8)
    a = ax[0, 2]
    for eta in etas:
        rows = [r for r in grid if r["eta"] == eta]
        a.errorbar(
            [r["batch"] for r in rows],
            [r["distance"] for r in rows],
            [2 * r["distance_se"] for r in rows],
            marker="o",
            capsize=3,
            label=f"eta={eta}",
        )
    a.set(
        xscale="log",
        xlabel="batch size S (S = N: GD)",
        ylabel="||theta_T - theta_0||",
        title=f"distance from init after {T} steps",
    )
    a.legend(fontsize=8)
    a = ax[1, 0]
    colors = {"sgd": "C0", "gd-noise": "C3", "gd": "k"}
    for opt, r in traj.items():
        if opt not in colors:
            continue
        for j in range(r.traces.shape[0]):
            a.plot(r.traces[j, :, F["y"]], color=colors[opt], lw=1, alpha=0.8, label=f"{opt}" if j == 0 else None)
    a.set(xlabel="step", ylabel="y (along the valley)", title="eta=2, S=4: SGD vs GD + isotropic noise vs GD")
    a.legend(fontsize=8)
    for a, opt, title in (
        (ax[1, 1], "gd-bounce", f"GD eta=2.5 (eta k={2.5 * k:.2f})"),
        (ax[1, 2], "sgd", "SGD eta=2, S=4"),
    ):
        r = traj[opt]
        n = min(40, T)
        L = r.interp[0, :n]
        m = L.shape[1] - 1
        xs = np.arange(n)[:, None] + np.arange(m + 1)[None, :] / m
        a.plot(xs.ravel(), L.ravel(), color="C0", lw=0.8, label="full loss along the segments")
        a.plot(np.arange(n), L[:, 0], "o", ms=3, color="C0")
        a.plot(np.arange(n) + 0.5, r.traces[0, :n, F["floor"]], "--", color="C1", label="valley floor")
        a.set(
            xlabel="iteration (10 interpolated points between iterates)",
            ylabel="full-batch loss",
            title=f"{title}: interpolation, first {n} steps",
        )
        a.legend(fontsize=8)
    fig.tight_layout()
    C.save(fig, args.out, "walk_tables", data, timer)
    return 0


def _text_table(rows, cols, extra=None) -> str:
    head = (
        f"{'optimizer':>10} {'eta':>5} {'S':>4}" + "".join(f"{c:>20}" for c in cols) + (f"{extra:>12}" if extra else "")
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['optimizer']:>10} {r['eta']:>5g} {str(r['batch'] or 'N'):>4}"
            + "".join(f"{_pm(r[c], r[c + '_se'], '.4g'):>20}" for c in cols)
            + (f"{r[extra]:>12.2f}" if extra else "")
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(C.report_errors(main, prog=C.Path(__file__).name))
