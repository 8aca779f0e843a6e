"""``TrainConfig``: everything that defines a training run, importable without torch.

``valleysim dnn train`` generates its options from these fields (``dnn.cli``); the checks that need the
torch modules (model and probe names, the device) import them when a config is built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

from valleysim.errors import UserInputError, check_int_range, check_positive, check_range, warn

__all__ = ["OPTIMIZERS", "TrainConfig", "stored_config"]

OPTIMIZERS = ("sgd", "nsgd", "gd", "gd-noise")
FLOAT32_SAFE = 1e30  # learning rates and other step factors torch's float32 optimiser can hold
MAX_WIDTH = 1e4  # width multipliers beyond it overflow layer sizes long before they could fit


@dataclass
class TrainConfig:
    """Everything that defines a run (stored in config.json; a resumed run must match)."""

    model: str = "simplecnn"
    width: float = 1.0
    optimizer: str = "sgd"
    lr: float = 0.01
    batch: int = 128
    momentum: float = 0.0
    weight_decay: float = 0.0
    epochs: int = 1
    max_steps: int | None = None
    n_train: int | None = None  # first n training examples (canonical order); None: all
    augment: bool = True
    label_smoothing: float = 0.0  # the training loss against smoothed targets (noise-hessian-spectrum's setting)
    loss: str = "cross_entropy"  # or "mse": 1/2 sum_c (f_c - t_c)^2 against the (smoothed) one-hot t (dnn.objective)
    drop_last: bool = True  # drop each epoch's last partial batch (its few examples make transient spikes)
    test_size: int | None = None  # first n test examples scored in every row; None: all given, 0: none
    nsgd_gamma: float = 0.01
    nsgd_k: int = 5
    nsgd_every: int = 100
    noise_std: float = 0.0  # gd-noise: sigma per coordinate
    probes: tuple[str, ...] = ("lanczos",)
    probe_params: str | None = None  # comma-separated fnmatch patterns of parameter / module names: every probe
    # measures the Hessian block of those parameters, the others held fixed (dnn.objective); None: all
    probe_every: int = 0  # steps; 0: off
    probe_epochs: bool = True
    probe_acc: tuple[float, ...] = ()
    acc_window: int = 50
    measure_fraction: float = 0.05
    measure_size: int | None = None
    measure_dtype: str = "float32"  # float64 for validation (3-5x slower on CPU)
    bn: str = "eval"
    top_k: int = 5
    lanczos_tol: float = 1e-3
    lanczos_max_iter: int = 100
    hutchinson_samples: int = 50
    slq_starts: int = 5  # density probe: Rademacher starts of stochastic Lanczos quadrature (>= 2 for an SE)
    slq_steps: int = 80  # density probe: Lanczos steps per start (capped at the parameter count)
    slq_rel_threshold: float = 1e-3  # density probe: log det / count over eigenvalues > this x the top Ritz value
    cov_batches: int = 25
    cov_batch: int = 128
    loss_change_batches: int = 10
    keep_every: int = 0  # steps between the model weights kept as weights/step{N}.pt (and step 0); 0: none
    seed: int = 0
    init_from: str | None = None  # a model state_dict (.pt) to start from instead of the seeded init
    device: str = "cpu"
    channels_last: bool | None = None  # None: on for SimpleCNN / VGG (3x3 convs ~2x faster), off for
    # ResNet-32 (slower step, MACHINE-NOTES) and the MLP

    def __post_init__(self):
        from dnn.models import MODELS
        from dnn.probes import PROBES
        from dnn.train import check_device

        self.probes = tuple(self.probes)
        self.probe_acc = tuple(float(a) for a in self.probe_acc)
        if self.model not in MODELS:
            raise UserInputError(f"unknown model {self.model!r}; choose from {', '.join(MODELS)}")
        if self.optimizer not in OPTIMIZERS:
            raise UserInputError(f"unknown optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}")
        unknown = [p for p in self.probes if p not in PROBES]
        if unknown:
            raise UserInputError(f"unknown probe(s) {', '.join(unknown)}; choose from {', '.join(PROBES)}")
        check_positive(self.lr, "learning rate --lr")
        check_device(self.device)
        for name, value in (
            ("lr", self.lr),
            ("weight_decay", self.weight_decay),
            ("noise_std", self.noise_std),
            ("nsgd_gamma x lr", self.nsgd_gamma * self.lr),
        ):
            if not value <= FLOAT32_SAFE:
                raise UserInputError(
                    f"{name} must be <= {FLOAT32_SAFE:g} (the optimiser works in float32); got {value!r}"
                )
        if not (isinstance(self.width, (int, float)) and 0 < self.width <= MAX_WIDTH):
            raise UserInputError(f"width must be in (0, {MAX_WIDTH:g}]; got {self.width!r}")
        for name in (
            "batch",
            "epochs",
            "acc_window",
            "top_k",
            "nsgd_every",
            "lanczos_max_iter",
            "hutchinson_samples",
            "slq_starts",
            "slq_steps",
            "cov_batch",
            "loss_change_batches",
        ):
            check_int_range(getattr(self, name), name, 1)
        check_int_range(self.cov_batches, "cov_batches (a covariance needs two gradients)", 2)
        check_int_range(self.probe_every, "probe_every (steps; 0: off)", 0)
        check_int_range(self.keep_every, "keep_every (steps; 0: off)", 0)
        if self.test_size is not None:
            check_int_range(self.test_size, "test_size (0: no test metrics)", 0)
        for name in ("momentum", "weight_decay", "noise_std", "slq_rel_threshold"):
            check_range(getattr(self, name), name, 0, math.inf)
        if not (isinstance(self.label_smoothing, (int, float)) and 0 <= self.label_smoothing < 1):
            raise UserInputError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        from dnn.objective import LOSSES

        if self.loss not in LOSSES:
            raise UserInputError(f"unknown loss {self.loss!r}; choose from {', '.join(LOSSES)}")
        if self.momentum >= 1:
            raise UserInputError(f"momentum must be in [0, 1), got {self.momentum}")
        check_positive(self.lanczos_tol, "lanczos_tol")
        if any(not (0 < a <= 1) for a in self.probe_acc):
            raise UserInputError(f"probe_acc thresholds must be in (0, 1], got {self.probe_acc}")
        if self.measure_dtype not in ("float32", "float64"):
            raise UserInputError(f"measure_dtype must be float32 or float64, got {self.measure_dtype!r}")
        if self.optimizer == "nsgd":
            check_positive(self.nsgd_gamma, "nsgd_gamma")
            if self.nsgd_k > self.top_k:
                raise UserInputError(
                    f"NSGD K = {self.nsgd_k} is larger than the eigenpairs computed "
                    f"(top_k = {self.top_k}); raise --top-k or lower --nsgd-k"
                )
        if self.optimizer == "gd-noise" and self.noise_std <= 0:
            raise UserInputError("gd-noise needs --noise-std > 0")
        if (
            self.bn == "batch"
            and self.model.endswith("-bn")
            and {"curvature", "covariance", "exact_covariance"} & set(self.probes)
        ):
            raise UserInputError(
                "the curvature, covariance and exact_covariance probes need independent examples: use --bn eval "
                "with a BatchNorm model"
            )
        if "alignment" in self.probes and not {"lanczos", "trace", "covariance"} <= set(self.probes):
            raise UserInputError("probe alignment needs lanczos, trace and covariance in --probes")
        needs_eigvecs = {"step", "curvature", "gauss_newton"} & set(self.probes)
        if needs_eigvecs and "lanczos" not in self.probes:
            raise UserInputError(
                f"probe(s) {', '.join(sorted(needs_eigvecs))} need the top eigenvectors: add 'lanczos' to --probes"
            )
        if self.probe_params is not None:
            self._check_probe_params()

    def _check_probe_params(self):
        """--probe-params against the model's parameter and module names (built on the meta device: free),
        and against what needs the full parameter vector."""
        import torch

        from dnn.models import build_model
        from dnn.objective import select_parameters

        if not isinstance(self.probe_params, str):
            raise UserInputError(f"--probe-params takes comma-separated patterns, got {self.probe_params!r}")
        if "walk" in self.probes:
            raise UserInputError(
                "--probe-params: the walk probe measures whole updates (the loss along them, the distance from "
                "init) in the full parameter space; drop walk from --probes or drop --probe-params"
            )
        if self.optimizer == "nsgd":
            raise UserInputError(
                "--probe-params: NSGD rescales the full gradient along the full Hessian's top eigenvectors, "
                "which a parameter block does not give; drop --probe-params or use another optimizer"
            )
        with torch.device("meta"):
            model = build_model(self.model, width=self.width)
        select_parameters(model, self.probe_params, what="--probe-params")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self, data: str) -> dict:
        """What a run directory's config.json records and a resumed or reopened run must match: the fields,
        with ``init_from`` by its file's content (``sha256:<hex>``: a moved copy is the same start, a rewritten
        file another), and ``data``, the digest of the data trained and scored on (:func:`dnn.data.data_digest`)."""
        d = self.as_dict()
        if self.init_from is not None:
            with open(self.init_from, "rb") as f:
                d["init_from"] = "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()
        return {**d, "data": data}

    @classmethod
    def from_stored(cls, config: dict) -> TrainConfig:
        """The config of a run from its config.json (:meth:`identity`): lists as tuples, ``data`` left out, and
        ``init_from`` None where it is stored by content (the run's checkpoint holds its weights)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items() if k in fields}
        if str(kw.get("init_from")).startswith("sha256:"):
            kw["init_from"] = None
        return cls(**kw)

    @staticmethod
    def defaults() -> dict:
        """{field: default}: what an option means in a stored config that predates it."""
        return {f.name: f.default for f in dataclasses.fields(TrainConfig)}


def stored_config(out, cfg: TrainConfig, data: str) -> dict:
    """The config a run in ``out`` stores (or is checked against): ``cfg.identity(data)``. A run stored with
    other data is refused by name. A run stored before runs recorded their data (no ``data`` key) keeps the
    config it was stored with (init_from by path), with a warning that its data cannot be checked."""
    from valleysim.jsonout import read_json

    path = Path(out) / "config.json"
    old = read_json(path) if path.is_file() else None
    if old is not None and "data" not in old:
        warn(f"{out} was started before runs recorded their data: it goes on without a check that it is this data")
        return cfg.as_dict()
    new = cfg.identity(data)
    if old is not None and old["data"] != data:
        raise UserInputError(
            f"{out} holds a run trained on other data (sha256 {str(old['data'])[:12]}..., this --data gives "
            f"{data[:12]}...); give the data it was trained on or a new --out"
        )
    return new
