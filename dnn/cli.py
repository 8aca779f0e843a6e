"""``valleysim dnn train``: train a network with probes on a schedule into a resumable run directory.

The data path comes from ``--data`` or ``$VALLEYSIM_DATA`` (any layout :mod:`dnn.data` accepts);
nothing is downloaded. Rerunning the same command on the same ``--out`` resumes.
"""

from __future__ import annotations

import argparse
import sys

from valleysim import argtypes as T
from valleysim.errors import UserInputError
from valleysim.jsonout import dumps

# torch and the dnn modules load only when a dnn command runs (3 s); the choices below are checked,
# with the full lists in the message, by dnn.train.TrainConfig.


def _csv(s: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in s.split(",") if x.strip())


def _floats(s: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(T.fraction(x) for x in _csv(s))
    except argparse.ArgumentTypeError:
        raise UserInputError(f"{name} must be a comma list of accuracies in (0, 1], got {s!r}") from None


def add_parser(sub) -> None:
    d = sub.add_parser("dnn", help="measurements on real networks (PyTorch)")
    dsub = d.add_subparsers(dest="dnn_command", required=True)
    t = dsub.add_parser("train", help="train on CIFAR-10 with probes on a schedule (resumable)",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--data", default=None, help="CIFAR-10 path (default $VALLEYSIM_DATA)")
    t.add_argument("--label-order", default="auto", help="label-order .npz restoring the original order "
                   "('auto': the one beside the data, 'none': class-major order)")
    t.add_argument("--out", type=T.out_dir, required=True, help="run directory (config.json, metrics.jsonl, checkpoint.pt)")
    t.add_argument("--model", default="simplecnn", help="simplecnn, simplecnn-bn, resnet32, resnet32-bn, vgg11, vgg11-bn, mlp")
    t.add_argument("--width", type=T.positive, default=1.0, help="channel/unit multiplier")
    t.add_argument("--optimizer", default="sgd", help="sgd, nsgd, gd, gd-noise")
    t.add_argument("--lr", type=T.positive, default=0.01)
    t.add_argument("--batch", type=T.count, default=128)
    t.add_argument("--momentum", type=T.nonnegative, default=0.0, help="in [0, 1)")
    t.add_argument("--weight-decay", type=T.nonnegative, default=0.0)
    t.add_argument("--epochs", type=T.count, default=1)
    t.add_argument("--max-steps", type=T.count, default=None)
    t.add_argument("--n-train", type=T.count, default=None, help="use the first n training examples")
    t.add_argument("--no-augment", action="store_true", help="no random crop / flip")
    t.add_argument("--nsgd-gamma", type=T.positive, default=0.01)
    t.add_argument("--nsgd-k", type=T.count, default=5)
    t.add_argument("--nsgd-every", type=T.count, default=100, help="steps between eigenvector recomputations")
    t.add_argument("--noise-std", type=T.nonnegative, default=0.0, help="gd-noise: sigma per coordinate")
    t.add_argument("--probes", default="lanczos",
                   help="comma list of lanczos, trace, covariance, step, curvature, walk, negative")
    t.add_argument("--probe-every", type=T.natural, default=0, help="probe every n steps (0: off)")
    t.add_argument("--no-probe-epochs", action="store_true", help="no probe at epoch ends")
    t.add_argument("--probe-acc", default="", help="probe when the running training accuracy first "
                   "reaches each of these, e.g. 0.6")
    t.add_argument("--measure-fraction", type=T.fraction, default=0.05)
    t.add_argument("--measure-size", type=T.count, default=None)
    t.add_argument("--measure-dtype", default="float32", choices=("float32", "float64"))
    t.add_argument("--bn", default="eval", help="BatchNorm policy for measurements: eval | batch")
    t.add_argument("--top-k", type=T.count, default=5)
    t.add_argument("--hutchinson-samples", type=T.count, default=50)
    t.add_argument("--cov-batches", type=T.integer(2), default=25, help="L mini-batch gradients for K")
    t.add_argument("--cov-batch", type=T.count, default=128, help="M, their batch size")
    t.add_argument("--seed", type=T.seed, default=0)
    t.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    c = dsub.add_parser("crosscheck", help="toy predictions (R1, R2, R5) next to real CIFAR-10 runs: a "
                        "Markdown report with tables and figures (resumable)",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    c.add_argument("--data", default=None, help="CIFAR-10 path (default $VALLEYSIM_DATA)")
    c.add_argument("--label-order", default="auto", help="as for dnn train")
    c.add_argument("--preset", default="quick", help="quick (2-core CPU, ~45 min) or paper (the papers' "
                   "settings; meant for a GPU)")
    c.add_argument("--out", type=T.out_dir, required=True, help="study directory (runs/, report.md, summary.json, figures)")
    c.add_argument("--device", default="cpu")
    c.add_argument("--no-toy", action="store_true", help="skip the calibrated R2 toy simulations")
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(func=cmd_crosscheck)


def config_from_args(a):
    from dnn.train import TrainConfig

    return TrainConfig(
        model=a.model, width=a.width, optimizer=a.optimizer, lr=a.lr, batch=a.batch, momentum=a.momentum,
        weight_decay=a.weight_decay, epochs=a.epochs, max_steps=a.max_steps, n_train=a.n_train,
        augment=not a.no_augment, nsgd_gamma=a.nsgd_gamma, nsgd_k=a.nsgd_k, nsgd_every=a.nsgd_every,
        noise_std=a.noise_std, probes=_csv(a.probes), probe_every=a.probe_every,
        probe_epochs=not a.no_probe_epochs, probe_acc=_floats(a.probe_acc, "--probe-acc"),
        measure_fraction=a.measure_fraction, measure_size=a.measure_size, measure_dtype=a.measure_dtype,
        bn=a.bn, top_k=a.top_k, hutchinson_samples=a.hutchinson_samples, cov_batches=a.cov_batches,
        cov_batch=a.cov_batch, seed=a.seed, device=a.device)


def cmd_train(a) -> int:
    from dnn.data import load_cifar10
    from dnn.train import train

    cfg = config_from_args(a)                           # checks every value and the device
    order = None if a.label_order == "none" else a.label_order
    images, labels = load_cifar10(a.data, "train", label_order=order)
    store = train(cfg, a.out, images, labels, progress=not a.no_progress)
    rows = store.rows()
    last = rows[-1] if rows else {}
    keys = ("step", "epoch", "measure_loss", "measure_acc", "lambda_max", "trace_hessian", "lambda_K",
            "trace_K", "trace_ratio", "alpha_star", "stability_factor", "diverged")
    print(dumps({k: last[k] for k in keys if k in last}), file=sys.stdout)
    print(f"{len(rows)} rows in {store.metrics_path}")
    return 0


def cmd_crosscheck(a) -> int:
    import dataclasses

    from dnn.crosscheck import PRESETS, run_crosscheck
    from dnn.data import load_cifar10
    from dnn.predictions import to_markdown
    from dnn.train import check_device

    if a.preset not in PRESETS:
        raise UserInputError(f"unknown preset {a.preset!r}; choose from {', '.join(PRESETS)}")
    check_device(a.device)
    preset = dataclasses.replace(PRESETS[a.preset])
    images, labels = load_cifar10(a.data, "train", label_order=None if a.label_order == "none" else a.label_order)
    summary = run_crosscheck(preset, a.out, images, labels, progress=not a.no_progress, toy=not a.no_toy,
                             device=a.device)
    print(to_markdown(summary["comparison"], ["label", "max_lambda_max", "lambda_star", "toy_max", "q_at_max",
                                              "max_lambda_K", "max_trace_ratio", "break_even_epoch"]))
    print(to_markdown(summary["orderings"], ["grid", "quantity", "tau", "agrees"]))
    print(f"report: {a.out}/report.md")
    return 0
