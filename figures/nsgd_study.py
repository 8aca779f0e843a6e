"""R8 (sharpest-directions-sgd-step.txt Secs. 3.2-4): loss change along e_1, SGD variants, NSGD gamma sweep.

Landscape: valleysim.nsgd.make_valley (D = 20: 2 sharp directions whose curvature c_k a(z_1) grows from
~5 to ~95 along the valley axis z_1, 18 flat ones; N = 100 examples). Panel 1: E[L(theta - alpha eta g1 e_1)
- L(theta)] over 10 mini-batches at states along SGD and NSGD(gamma = 0.01) trajectories (after burn-in),
with the local-quadratic closed form of proofs.nsgd evaluated with the measured lambda_1, G and g1. Panels 2-3:
loss and lambda_max vs step for NSGD with gamma in {0.01, 0.1, 1, 5} (gamma = 1 is SGD) and the SGD-top /
SGD-no-top / SGD-constant-top variants; dashed lines 2/eta and 2/(gamma eta).
"""

from __future__ import annotations

import math

import _common as C
import numpy as np
import sympy as sp

from proofs import nsgd as pn
from valleysim import argtypes
from valleysim import nsgd as ns
from valleysim.stats import mean_se


def main(argv=None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p.set_defaults(out=C.ROOT / "docs" / "figures" / "nsgd")
    p.add_argument("--eta", type=argtypes.positive, default=0.05, help="base learning rate")
    p.add_argument("--batch", type=argtypes.count, default=8, help="mini-batch size S")
    p.add_argument("--K", type=argtypes.count, default=2, help="number of top eigenvectors NSGD nudges")
    p.add_argument(
        "--recompute",
        type=argtypes.natural,
        default=0,
        help="NSGD eigenvector refresh in steps (0: once per epoch, N/S)",
    )
    args = p.parse_args(argv)
    timer = C.Timer()
    T, R, burn = (4000, 16, 500) if not args.quick else (800, 4, 200)
    land = ns.make_valley(seed=args.seed)
    eta, S, K = args.eta, args.batch, args.K
    recompute = args.recompute or math.ceil(land.N / S)
    every = 20

    # --- panel 1: loss change along e_1 -----------------------------------------------------------------
    dL = sp.lambdify((pn.alpha, pn.eta, pn.g1, pn.G, pn.lam), pn.loss_change)
    lc_rows, lc_data = [], {}
    runs = {}
    for name, kw in (
        ("SGD", dict(method="sgd")),
        ("NSGD g=.01", dict(method="nsgd", gamma=0.01, K=K)),
        ("NSGD own step", None),
    ):
        # "NSGD own step": the NSGD states again, but the multiple is of NSGD's own step gamma eta g1 along e_1
        if kw is not None:
            run = ns.simulate(
                land,
                method=kw.pop("method"),
                eta=eta,
                batch_size=S,
                steps=T,
                trajectories=min(R, 4),
                seed=args.seed + 100,
                record_every=50,
                keep_theta=True,
                recompute=recompute,
                **kw,
            )
            runs[name] = run["thetas"][run["steps"] >= burn].reshape(-1, land.D)
        th = runs.get(name, runs.get("NSGD g=.01"))
        eta_lc = eta if kw is not None else 0.01 * eta
        lc = ns.loss_change_along_top(land, th, eta=eta_lc, batch_size=S, seed=args.seed)
        al = lc["alphas"]
        quad = dL(
            al[None, None, :], eta_lc, lc["g1"][..., None], lc["G"][:, None, None], lc["lam"][:, None, None]
        ).mean(1)
        change, change_se = mean_se(lc["change"], axis=0)
        lc_data[name] = {
            "alphas": al,
            "change": change,
            "change_se": change_se,
            "rel_change_pct": 100 * lc["change"].mean(0) / land.loss(th).mean(),
            "quadratic_closed_form": quad.mean(0),
            "states": len(th),
            "eta_lambda1": float(eta_lc * lc["lam"].mean()),
            "step_rate": eta_lc,
            "loss": float(land.loss(th).mean()),
        }
        # root of the mean local-quadratic parabola -alpha r mean(g1 G) + 1/2 alpha^2 r^2 mean(lam g1^2)
        lc_data[name]["alpha_star_quadratic"] = float(
            2 * np.mean(lc["g1"] * lc["G"][:, None]) / (eta_lc * np.mean(lc["lam"][:, None] * lc["g1"] ** 2))
        )
        ch = lc_data[name]["change"]
        cross = [k for k in range(len(al) - 1) if ch[k] < 0 <= ch[k + 1]]
        lc_data[name]["alpha_star_measured"] = (
            float(al[cross[0]] - ch[cross[0]] * (al[cross[0] + 1] - al[cross[0]]) / (ch[cross[0] + 1] - ch[cross[0]]))
            if cross
            else None
        )
        for k, a in enumerate(al):
            lc_rows.append(
                {
                    "who": name,
                    "alpha": a,
                    "dL": lc_data[name]["change"][k],
                    "se": lc_data[name]["change_se"][k],
                    "pct": lc_data[name]["rel_change_pct"][k],
                    "quad": lc_data[name]["quadratic_closed_form"][k],
                }
            )
    print(f"loss change along e_1 (eta={eta}, S={S}; states after step {burn}):")
    for name, d in lc_data.items():
        print(
            f"  {name}: {d['states']} states, mean loss {d['loss']:.4g}, step rate {d['step_rate']:g}, "
            f"rate*lambda_1 = {d['eta_lambda1']:.3f}; sign change alpha* measured "
            f"{d['alpha_star_measured'] if d['alpha_star_measured'] is None else round(d['alpha_star_measured'], 3)}, "
            f"local-quadratic {d['alpha_star_quadratic']:.3f}"
        )
    print(
        C.table(
            lc_rows,
            [
                ("who", "run", ""),
                ("alpha", "alpha", ".2f"),
                ("dL", "E dL", ".4g"),
                ("se", "SE", ".2g"),
                ("pct", "% of L", ".3g"),
                ("quad", "quad. form", ".4g"),
            ],
        )
    )

    # --- panels 2-3: gamma sweep and the SGD variants ------------------------------------------------------
    with C.sweep_executor(args) as ex:
        sweep = ns.gamma_sweep(
            land,
            eta=eta,
            batch_size=S,
            steps=T,
            K=K,
            recompute=recompute,
            trajectories=R,
            seed=args.seed,
            record_every=every,
            executor=ex,
        )
    variants = {}
    for m in ("sgd_top", "sgd_no_top", "sgd_constant_top"):
        run = ns.simulate(
            land, method=m, eta=eta, batch_size=S, steps=T, K=K, trajectories=R, seed=args.seed, record_every=every
        )
        n = max(1, round(0.2 * len(run["steps"])))
        variants[m] = {
            "steps": run["steps"],
            "loss_curve": np.nanmean(run["loss"], 1),
            "lambda_curve": np.nanmean(run["lambda_max"], 1),
            "final_loss": float(np.nanmean(run["loss"][-1])),
            "lambda_max_reached": float(np.nanmean(run["lambda_max"][-n:])),
            "lambda_max_settled": ns.settled(run["lambda_max"]),
            "diverged": int(run["diverged"].sum()),
        }
    rows = [{"who": f"NSGD g={s['gamma']:g}", **s} for s in sweep] + [{"who": m, **v} for m, v in variants.items()]
    print(
        f"\nNSGD sweep (K={K}, recompute every {recompute} steps) and SGD variants: T={T}, R={R}, eta={eta}, "
        f"2/eta = {2 / eta:g}; lambda_max reached = mean over the last 20% of steps"
    )
    for r in rows:
        print(
            f"  {r['who']:>18}: final loss {r['final_loss']:.4g}  lambda_max reached {r['lambda_max_reached']:.2f}"
            + (" (still changing)" if r["lambda_max_settled"] is False else "")
            + f"  diverged {r['diverged']}/{R}"
        )

    # --- figure ----------------------------------------------------------------------------------------------
    fig, ax = C.plt.subplots(1, 3, figsize=(16, 4.6))
    for name, d in lc_data.items():
        ax[0].errorbar(d["alphas"], d["change"], 2 * d["change_se"], marker="o", capsize=3, label=f"{name} (measured)")
        ax[0].plot(d["alphas"], d["quadratic_closed_form"], "k:", lw=1)
    ax[0].axhline(0, color="grey", lw=0.6)
    ax[0].set_xscale("log")
    ax[0].set_xticks(list(ns.ALPHAS), [f"{a:g}" for a in ns.ALPHAS])
    ax[0].minorticks_off()
    ax[0].set_yscale("symlog", linthresh=1e-3)
    ax[0].set(
        xlabel=r"step multiple $\alpha$",
        ylabel=r"$E[L(\theta-\alpha\eta\tilde g_1 e_1) - L(\theta)]$",
        title="loss change along $e_1$ (dotted: quadratic form)",
    )
    ax[0].legend(fontsize=8)
    cmap = C.plt.get_cmap("viridis")
    for k, s in enumerate(sweep):
        col = cmap(k / max(len(sweep) - 1, 1))
        lab = f"NSGD $\\gamma$={s['gamma']:g}" + (" (= SGD)" if s["gamma"] == 1 else "")
        ax[1].plot(s["steps"], s["loss_curve"], color=col, label=lab)
        ax[2].plot(s["steps"], s["lambda_curve"], color=col, label=lab)
        if s["gamma"] != 1 and 2 / (s["gamma"] * eta) < 1.2 * land.a_hi:
            ax[2].axhline(2 / (s["gamma"] * eta), color=col, ls="--", lw=0.8)
    for m, st_ in zip(variants, (":", "-.", (0, (5, 1)))):
        ax[1].plot(variants[m]["steps"], variants[m]["loss_curve"], color="C3", ls=st_, label=m)
        ax[2].plot(variants[m]["steps"], variants[m]["lambda_curve"], color="C3", ls=st_, label=m)
    ax[2].axhline(2 / eta, color="k", ls="--", lw=0.8, label=r"$2/\eta$")
    ax[1].set(yscale="log", xlabel="step", ylabel="loss (ensemble mean)", title=f"speed (K={K}, $\\eta$={eta}, S={S})")
    ax[2].set(xlabel="step", ylabel=r"$\lambda_{\max}$", title="sharpness of the region reached")
    ax[1].legend(fontsize=7)
    ax[2].legend(fontsize=7, loc="center right")
    fig.tight_layout()
    data = {
        "settings": {
            "eta": eta,
            "S": S,
            "K": K,
            "T": T,
            "R": R,
            "burn_in": burn,
            "recompute": recompute,
            "seed": args.seed,
            "D": land.D,
            "N": land.N,
            "a_lo": land.a_lo,
            "a_hi": land.a_hi,
        },
        "loss_change_along_e1": lc_data,
        "gamma_sweep": sweep,
        "variants": variants,
    }
    C.save(fig, args.out, "nsgd_study", data, timer)
    return 0


if __name__ == "__main__":
    raise SystemExit(C.report_errors(main, prog=C.Path(__file__).name))
