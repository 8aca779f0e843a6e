"""``valleysim dnn train``: train a network with probes on a schedule into a resumable run directory.

The data path comes from ``--data`` or ``$VALLEYSIM_DATA`` (any layout :mod:`dnn.data` accepts);
nothing is downloaded. Rerunning the same command on the same ``--out`` resumes.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from dnn.config import TrainConfig
from valleysim import argtypes as T
from valleysim.errors import UserInputError
from valleysim.executors import add_executor_options, sweep_executor
from valleysim.jsonout import dumps

# torch and the dnn modules load only when a dnn command runs (3 s): the options come from the torch-free
# dnn.config.TrainConfig, and its __post_init__ checks model, probe and device names (full lists in the message).

HELP = {
    "model": "simplecnn, simplecnn-bn, resnet32, resnet32-bn, vgg11, vgg11-bn, mlp",
    "width": "channel/unit multiplier",
    "optimizer": "sgd, nsgd, gd, gd-noise",
    "lr": "learning rate",
    "momentum": "in [0, 1)",
    "n_train": "use the first n training examples",
    "augment": "no random crop / flip",
    "drop_last": "keep each epoch's last partial batch (default: dropped)",
    "label_smoothing": "eps in [0, 1): train on targets smoothed by eps (torch cross_entropy label_smoothing)",
    "loss": "training and measurement loss: cross_entropy | mse (1/2 sum_c (f_c - t_c)^2 against the one-hot "
    "target t, smoothed by --label-smoothing; Cohen et al. 2021's square loss)",
    "test_size": "score the first n test examples in every row (default: the whole test set; 0: none)",
    "nsgd_every": "steps between eigenvector recomputations",
    "noise_std": "gd-noise: sigma per coordinate",
    "probes": "comma list of lanczos, trace, covariance, alignment, exact_covariance, gauss_newton, step, curvature, "
    "walk, negative, density",
    "probe_params": "run every probe on a block of parameters: comma-separated fnmatch patterns of parameter or "
    "module names, e.g. 'classifier' or 'features.0.*,*.bias' (the others held fixed; default: all)",
    "probe_every": "probe every n steps (0: off)",
    "keep_every": "keep the model weights every n steps (and at step 0) as weights/step{n}.pt in --out (0: none)",
    "probe_epochs": "no probe at epoch ends",
    "probe_acc": "probe when the running training accuracy first reaches each of these, e.g. 0.6",
    "acc_window": "batches in the running training accuracy that --probe-acc watches",
    "bn": "BatchNorm policy for measurements: eval | batch",
    "lanczos_tol": "relative residual tolerance of the Lanczos eigenpairs",
    "lanczos_max_iter": "Lanczos matrix-vector products at most",
    "slq_starts": "density probe: Rademacher starts of stochastic Lanczos quadrature (>= 2 for an SE)",
    "slq_steps": "density probe: Lanczos steps per start (capped at the parameter count)",
    "slq_rel_threshold": "density probe: slq_logdet / slq_n_above count eigenvalues above this x the top Ritz value",
    "cov_batches": "L mini-batch gradients for K",
    "cov_batch": "M, their batch size",
    "loss_change_batches": "mini-batch gradients of the step probe",
    "init_from": "model state_dict (.pt) to start from instead of the seeded init",
    "device": "cpu, cuda, cuda:1, ...",
    "channels_last": "channels-last memory format (auto: on for SimpleCNN / VGG, off for ResNet-32 and the MLP)",
}


def _file(text: str) -> str:
    if not Path(text).is_file():
        raise argparse.ArgumentTypeError(f"no such file {text!r}")
    return text


class _Spelled(argparse.Action):
    """Stores ``type(value)``; a bad value is named by the spelling given (``--eta`` or ``--lr``), not by
    both as argparse would."""

    def __init__(self, *args, type, **kw):
        super().__init__(*args, **kw)
        self.convert = type

    def __call__(self, parser, namespace, value, option_string=None):
        try:
            setattr(namespace, self.dest, self.convert(value))
        except argparse.ArgumentTypeError as err:
            raise argparse.ArgumentError(None, f"argument {option_string}: {err}") from None


TYPES = {"int": T.count, "float": T.positive}  # by annotation (others: str); OPTIONS overrides
OPTIONS = {
    "lr": dict(flags=("--eta", "--lr"), action=_Spelled, metavar="ETA"),
    "momentum": dict(type=T.nonnegative),
    "weight_decay": dict(type=T.nonnegative),
    "noise_std": dict(type=T.nonnegative),
    "slq_rel_threshold": dict(type=T.nonnegative),
    "probe_every": dict(type=T.natural),
    "test_size": dict(type=T.natural),
    "measure_fraction": dict(type=T.fraction),
    "measure_dtype": dict(choices=("float32", "float64")),
    "cov_batches": dict(type=T.integer(2)),
    "seed": dict(type=T.seed),
    "keep_every": dict(type=T.natural),
    "init_from": dict(type=_file),
    "probes": dict(type=T.comma_list(str, "probe names")),
    "probe_acc": dict(type=T.comma_list(T.fraction, "accuracies in (0, 1]", empty=True)),
    "channels_last": dict(choices=("auto", "on", "off"), default="auto"),
}
FROM_OPTION = {"channels_last": {"auto": None, "on": True, "off": False}.get}  # option value -> field value


def add_config_options(p: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field: ``--field-name`` (bools: ``--no-<name>`` where True by default),
    the type from the annotation unless OPTIONS says otherwise, dest the field name."""
    for f in dataclasses.fields(TrainConfig):
        name = f.name.replace("_", "-")
        kw = dict(dest=f.name, default=f.default, help=HELP.get(f.name))
        if f.type == "bool":
            name = f"no-{name}" if f.default else name
            kw.update(action="store_false" if f.default else "store_true")
        elif not isinstance(f.default, tuple):  # tuples: comma lists (OPTIONS)
            kw.update(type=TYPES.get(f.type.removesuffix(" | None")))
        kw.update(OPTIONS.get(f.name, {}))
        p.add_argument(*kw.pop("flags", (f"--{name}",)), **kw)


def add_parser(sub) -> None:
    d = sub.add_parser("dnn", help="measurements on real networks (PyTorch)")
    dsub = d.add_subparsers(dest="dnn_command", required=True)
    t = dsub.add_parser(
        "train",
        help="train on CIFAR-10 with probes on a schedule (resumable)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t.add_argument("--data", default=None, help="CIFAR-10 path (default $VALLEYSIM_DATA)")
    t.add_argument(
        "--label-order",
        default="auto",
        help="label-order .npz restoring the original order "
        "('auto': the one beside the data, 'none': class-major order)",
    )
    t.add_argument(
        "--out", type=T.out_dir, required=True, help="run directory (config.json, metrics.jsonl, checkpoint.pt)"
    )
    add_config_options(t)
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    c = dsub.add_parser(
        "crosscheck",
        help="toy predictions (R1, R2, R5) next to real CIFAR-10 runs: a "
        "Markdown report with tables and figures (resumable)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    c.add_argument("--data", default=None, help="CIFAR-10 path (default $VALLEYSIM_DATA)")
    c.add_argument("--label-order", default="auto", help="as for dnn train")
    c.add_argument(
        "--preset", default="quick", help="quick (2-core CPU, ~45 min) or paper (the papers' settings; meant for a GPU)"
    )
    c.add_argument(
        "--out", type=T.out_dir, required=True, help="study directory (runs/, report.md, summary.json, figures)"
    )
    c.add_argument("--device", default="cpu")
    c.add_argument("--no-toy", action="store_true", help="skip the calibrated R2 toy simulations")
    c.add_argument("--no-progress", action="store_true")
    add_executor_options(c)
    c.set_defaults(func=cmd_crosscheck)

    s = dsub.add_parser(
        "study",
        help="a network study with seeds and confidence intervals (resumable): report.md and tidy CSVs",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    s.add_argument("name", choices=STUDIES, help="break-even, sharpest, walk or valley (one per paper; see the README)")
    s.add_argument("--data", default=None, help="CIFAR-10 path (default $VALLEYSIM_DATA)")
    s.add_argument("--label-order", default="auto", help="as for dnn train")
    s.add_argument("--preset", default="quick", help="quick (2-core CPU) or paper (meant for a GPU)")
    s.add_argument("--seeds", type=T.count, default=None, help="seeds per grid point (default: the preset's)")
    s.add_argument("--out", type=T.out_dir, required=True, help="study directory (runs/, report.md, CSVs)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--no-progress", action="store_true")
    add_executor_options(s)
    s.set_defaults(func=cmd_study)


def config_from_args(a) -> TrainConfig:
    return TrainConfig(
        **{f.name: FROM_OPTION.get(f.name, lambda v: v)(getattr(a, f.name)) for f in dataclasses.fields(TrainConfig)}
    )


def cmd_train(a) -> int:
    from dnn.data import load_cifar10
    from dnn.train import train

    cfg = config_from_args(a)  # checks every value and the device
    order = None if a.label_order == "none" else a.label_order
    images, labels = load_cifar10(a.data, "train", label_order=order)
    test = None if cfg.test_size == 0 else load_cifar10(a.data, "test", label_order=order)
    store = train(cfg, a.out, images, labels, test=test, progress=not a.no_progress)
    rows = store.rows()
    last = rows[-1] if rows else {}
    keys = (
        "step",
        "epoch",
        "measure_loss",
        "measure_acc",
        "test_loss",
        "test_acc",
        "lambda_max",
        "trace_hessian",
        "lambda_K",
        "trace_K",
        "trace_ratio",
        "alpha_star",
        "stability_factor",
        "diverged",
    )
    print(dumps({k: last[k] for k in keys if k in last}), file=sys.stdout)
    print(f"{len(rows)} rows in {store.metrics_path}")
    return 0


#: study name -> its module under dnn (each has PRESETS and run(preset, out, images, labels, ...))
STUDIES = {
    "break-even": "break_even_study",
    "sharpest": "sharpest_study",
    "walk": "walk_study",
    "valley": "valley_study",
}


def data_source(a):
    """The --data / --label-order options as a :class:`dnn.data.DataSource` (the path resolved here, so
    workers on this machine read the same files; on other machines the path must be valid there too)."""
    from dnn.data import DataSource, resolve_data_path

    return DataSource(str(resolve_data_path(a.data).resolve()), None if a.label_order == "none" else a.label_order)


def cmd_study(a) -> int:
    import importlib

    from dnn.train import check_device

    study = importlib.import_module(f"dnn.{STUDIES[a.name]}")
    if a.preset not in study.PRESETS:
        raise UserInputError(f"unknown preset {a.preset!r}; choose from {', '.join(study.PRESETS)}")
    check_device(a.device)
    source = data_source(a)
    images, labels = source.load("train")
    test = source.load("test")
    with sweep_executor(a) as executor:  # None: the runs one after another in this process
        study.run(
            study.PRESETS[a.preset],
            a.out,
            images,
            labels,
            test=test,
            seeds=a.seeds,
            device=a.device,
            progress=not a.no_progress,
            executor=executor,
            source=source,
        )
    print((a.out / "report.md").read_text())
    return 0


def cmd_crosscheck(a) -> int:
    from dnn.crosscheck import PRESETS, run_crosscheck
    from dnn.predictions import to_markdown
    from dnn.train import check_device

    if a.preset not in PRESETS:
        raise UserInputError(f"unknown preset {a.preset!r}; choose from {', '.join(PRESETS)}")
    check_device(a.device)
    preset = dataclasses.replace(PRESETS[a.preset])
    source = data_source(a)
    images, labels = source.load("train")
    with sweep_executor(a) as executor:  # None: the runs one after another in this process
        summary = run_crosscheck(
            preset,
            a.out,
            images,
            labels,
            progress=not a.no_progress,
            toy=not a.no_toy,
            device=a.device,
            executor=executor,
            source=source,
        )
    print(
        to_markdown(
            summary["comparison"],
            [
                "label",
                "max_lambda_max",
                "lambda_star",
                "toy_max",
                "q_at_max",
                "max_lambda_K",
                "max_trace_ratio",
                "break_even_epoch",
            ],
        )
    )
    print(to_markdown(summary["orderings"], ["grid", "quantity", "tau", "agrees"]))
    print(f"report: {a.out}/report.md")
    return 0
