"""``valleysim nsgd``: SGD / SGD-top / SGD-no-top / SGD-constant-top / Nudged-SGD on a sharpening valley (R8)."""

from __future__ import annotations

import argparse
import math

from valleysim import argtypes as T
from valleysim import nsgd as ns
from valleysim.jsonout import dumps
from valleysim.stats import mean_se


def add_parser(sub) -> None:
    v = sub.add_parser(
        "nsgd",
        help="Nudged-SGD and the sharpest-direction SGD variants on a sharpening valley (R8)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    v.add_argument("--method", default="nsgd", choices=ns.METHODS, help="optimiser")
    v.add_argument(
        "--gamma",
        type=T.positive,
        nargs="+",
        default=list(ns.GAMMAS),
        help="NSGD rate factor(s) along the top-K eigenvectors (nsgd only)",
    )
    v.add_argument("--K", type=T.count, default=ns.TOP_K, help="number of top Hessian eigenvectors")
    v.add_argument(
        "--recompute", type=T.natural, default=0, help="NSGD eigenvector refresh in steps (0: once per epoch)"
    )
    v.add_argument("--eta", type=T.positive, default=0.05, help="base learning rate > 0")
    v.add_argument("--batch", type=T.count, default=8, metavar="S", help="mini-batch size")
    v.add_argument("--steps", type=T.count, default=2000, help="steps T")
    v.add_argument("--trajectories", type=T.count, default=ns.TRAJECTORIES, help="ensemble size R")
    v.add_argument("--dim", type=T.integer(2), default=20, metavar="D", help="dimension")
    v.add_argument("--sharp", type=T.count, default=2, metavar="Ks", help="sharp directions")
    v.add_argument(
        "--n-examples", "--examples", dest="examples", type=T.count, default=100, metavar="N", help="examples"
    )
    v.add_argument("--a-hi", type=T.positive, default=100.0, help="wall curvature in the sharp region")
    v.add_argument("--seed", type=T.seed, default=0)
    v.add_argument("--json", action="store_true", help="print one JSON object")
    v.set_defaults(func=cmd_nsgd)


def cmd_nsgd(args) -> int:
    land = ns.make_valley(D=args.dim, Ks=args.sharp, N=args.examples, a_hi=args.a_hi, seed=args.seed)
    recompute = args.recompute or ns.epoch_steps(land.N, args.batch)
    gammas = args.gamma if args.method == "nsgd" else [1.0]
    rows = []
    for gm in gammas:
        run = ns.simulate(
            land,
            method=args.method,
            eta=args.eta,
            batch_size=args.batch,
            steps=args.steps,
            K=args.K,
            gamma=gm,
            recompute=recompute,
            trajectories=args.trajectories,
            seed=args.seed,
            keep_theta=True,
        )
        n = max(1, round(0.2 * len(run["steps"])))
        alive = ~run["diverged"]
        lc = (
            ns.loss_change_along_top(land, run["theta"][alive], eta=args.eta, batch_size=args.batch, seed=args.seed)
            if alive.any()
            else None
        )
        rows.append(
            {
                "method": args.method,
                "gamma": gm if args.method == "nsgd" else None,
                "final_loss": mean_se(run["loss"][-1])[0],  # over the trajectories alive
                "lambda_max_reached": mean_se(run["lambda_max"][-n:])[0],
                "lambda_max_settled": ns.settled(run["lambda_max"]),
                "diverged": int(run["diverged"].sum()),
                "loss_change_along_e1": None
                if lc is None
                else {f"{a:g}": float(c) for a, c in zip(lc["alphas"], lc["change"].mean(0))},
            }
        )
    out = {
        "D": land.D,
        "Ks": land.Ks,
        "N": land.N,
        "eta": args.eta,
        "S": args.batch,
        "K": args.K,
        "steps": args.steps,
        "trajectories": args.trajectories,
        "recompute": recompute,
        "runs": rows,
    }
    if args.json:
        print(dumps(out, indent=2))
        return 0
    print(
        f"sharpening valley D={land.D} (Ks={land.Ks} sharp), N={land.N}; eta={args.eta:g} (2/eta = {2 / args.eta:g}), "
        f"S={args.batch}, K={args.K}, T={args.steps}, R={args.trajectories}, eigenvectors every {recompute} steps"
    )
    for r in rows:
        who = f"{r['method']}" + (f" gamma={r['gamma']:g}" if r["gamma"] is not None else "")
        lce = r["loss_change_along_e1"] or {}
        fmt = lambda x: f"{x:.4g}" if math.isfinite(x) else "- (all diverged)"  # noqa: E731
        unsettled = " (still changing)" if r["lambda_max_settled"] is False else ""
        print(
            f"  {who:<22} final loss {fmt(r['final_loss'])}  lambda_max reached {fmt(r['lambda_max_reached'])}"
            f"{unsettled}  "
            f"diverged {r['diverged']}/{args.trajectories}"
        )
        if lce:
            print(
                "    loss change along e_1 at the final states, alpha: "
                + "  ".join(f"{a}: {v:.4g}" for a, v in lce.items())
            )
    return 0
