"""Training with probes on a schedule, resumable: SGD (momentum optional), NSGD, GD, GD + isotropic noise.

Update rules (theta (P,), g_B the mini-batch gradient of the mean loss ``cfg.loss``, lr eta):
  sgd       torch.optim.SGD on g_B (momentum mu, weight decay wd as torch defines them)
  nsgd      the same on g_B + (gamma - 1) E^T E g_B, E (K, P) the top-K Hessian eigenvectors of the
            measurement set, recomputed every ``nsgd_every`` steps (warm-started Lanczos): step
            gamma * eta along the sharpest K directions, eta elsewhere (R8)
  gd        the full gradient of the training set (chunks of ``batch`` examples, no augmentation)
  gd-noise  the full gradient + sigma xi, xi ~ N(0, I_P) drawn from a generator seeded by (seed, step)

Data order: epoch e shuffles and augments with a generator seeded by (seed, e), so a resumed run
regenerates the same batches (it skips the ones already taken). Probes run at step 0, every
``probe_every`` steps, at each epoch end (``probe_epochs``), when the running training accuracy
(last ``acc_window`` batches) first reaches each of ``probe_acc``, and at the end; each probe writes
one row (run config, step, epoch, accuracy, every probe's metrics) and a checkpoint. ``keep_every``
keeps the weights every that many steps in ``out/weights/`` (the valley study's projected path). A non-finite
loss stops the run with a final row ``diverged = step`` (a result, not a crash).
"""

from __future__ import annotations

import functools
import math
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dnn import probes as probes_mod
from dnn import step_probes
from dnn.config import OPTIMIZERS, TrainConfig, stored_config
from dnn.data import batches, channel_stats, data_digest, measurement_subset, normalize, to_float_nchw
from dnn.models import build_model, footprint
from dnn.objective import Objective, flat_params, per_example_loss
from dnn.store import RunStore, load_tensors, read_checkpoint, save_tensors
from dnn.walk_metrics import WalkTracker
from valleysim.errors import UserInputError, check_writable_dir
from valleysim.locking import DirectoryLock
from valleysim.memory import check_fits

__all__ = ["OPTIMIZERS", "TrainConfig", "read_run_checkpoint", "train", "seed_for", "weights_problem"]


def seed_for(*keys: int) -> int:
    """A 63-bit seed from integer keys (numpy SeedSequence): independent streams per (seed, epoch) etc."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def check_device(name: str, what: str = "--device") -> torch.device:
    """``name`` as a torch device this machine has (cpu, cuda, cuda:N, ...); UserInputError otherwise."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise UserInputError(f"{what} {name!r} is not a device name (cpu, cuda, cuda:N, mps)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserInputError(f"{what} {name}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserInputError(f"{what} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise UserInputError(f"{what} {name}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise UserInputError(f"{what} {name!r}: only cpu, cuda and mps devices are supported")
    return dev


def train_bytes(cfg: TrainConfig, params: int, acts: int) -> float:
    """Peak memory of a run, in bytes, from the model's ``footprint`` (params, activations per example): the
    parameters about 4 times in float32 (model, gradient, momentum, the objective's copy) plus, in the
    measurement dtype, the Lanczos basis (lanczos_max_iter + top_k vectors) and the covariance probe's
    cov_batches gradients; the activations of max(batch, 64) examples, 4 times (forward, backward, double
    backward)."""
    m = 8 if cfg.measure_dtype == "float64" else 4
    vectors = cfg.lanczos_max_iter + cfg.top_k + 4 + (cfg.cov_batches if "covariance" in cfg.probes else 0)
    # a chunk of per-example gradients (the objective's 64) for exact K; 8 Hutchinson probes x 4 for G
    vectors += (64 if "exact_covariance" in cfg.probes else 0) + (32 if "gauss_newton" in cfg.probes else 0)
    return float(params) * (4 * 4 + m * vectors) + 4.0 * 4 * acts * max(cfg.batch, 64)


def _model_data(images, mean, std, channels_last: bool, idx=None) -> torch.Tensor:
    """uint8 NHWC -> normalised float32 NCHW (no augmentation), in the model's memory format."""
    x = normalize(to_float_nchw(images if idx is None else images[idx]), mean, std)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def environment() -> dict:
    """What a run's numbers depend on beyond its config: torch's version and intra-op thread count (float32
    reductions split differently across threads, so 1- and 2-thread runs diverge after tens of steps)."""
    return {"torch_version": torch.__version__, "torch_threads": torch.get_num_threads()}


def check_environment(run_dir: Path, record: bool = True) -> None:
    """Records :func:`environment` in ``run_dir/environment.json`` at the start (``record`` False: writes
    nothing, for a finished run reopened). Under another environment it warns: on a resume, that the
    continued run is no longer bitwise the uninterrupted one; on a reopened finished run, that its rows are
    shown as stored."""
    import json

    from valleysim.errors import warn
    from valleysim.jsonout import atomic_write, read_json

    path, now = Path(run_dir) / "environment.json", environment()
    if not path.exists():
        if record:
            atomic_write(path, (json.dumps(now, indent=1) + "\n").encode())
        return
    was = read_json(path)
    diff = {k: (was.get(k), v) for k, v in now.items() if was.get(k) != v}
    if diff:
        what = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in diff.items())
        tail = (
            "the resumed run will not be bitwise the uninterrupted one"
            if record
            else "its rows were computed there and are shown as stored"
        )
        warn(f"{run_dir} was started with another environment ({what}): {tail}")


def uses_channels_last(cfg: TrainConfig) -> bool:
    """cfg.channels_last, or its default: on for SimpleCNN / VGG, off for ResNet-32 and the MLP."""
    return cfg.channels_last if cfg.channels_last is not None else cfg.model.startswith(("simplecnn", "vgg"))


def run_model(cfg: TrainConfig, input_shape, num_classes: int = 10) -> torch.nn.Module:
    """The run's network at its seeded initialisation (on the CPU)."""
    return build_model(
        cfg.model,
        num_classes=num_classes,
        input_shape=input_shape,
        width=cfg.width,
        seed=cfg.seed,
        channels_last=uses_channels_last(cfg),
    )


def measurement_objective(cfg: TrainConfig, model, images, labels, mean, std, size: int | None = None) -> Objective:
    """The probes' Objective on the run's measurement subset of ``images`` (the training set, uint8 NHWC),
    normalised by the training statistics ``mean``, ``std``; ``size`` overrides cfg.measure_size (a
    subset of that size drawn with the run's seed, :func:`dnn.data.measurement_subset`); theta is the block
    of cfg.probe_params (all parameters when None)."""
    idx = measurement_subset(
        len(images), cfg.measure_fraction, seed=cfg.seed, size=cfg.measure_size if size is None else size
    )
    return Objective(
        model,
        _model_data(images, mean, std, uses_channels_last(cfg), idx),
        torch.as_tensor(labels[idx]),
        dtype=torch.float64 if cfg.measure_dtype == "float64" else torch.float32,
        device=torch.device(cfg.device),
        bn=cfg.bn,
        bn_batch=cfg.batch,
        label_smoothing=cfg.label_smoothing,
        params=cfg.probe_params,
        loss=cfg.loss,
    )


def train(
    cfg: TrainConfig,
    out: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    progress: bool = True,
    input_shape=None,
    num_classes: int = 10,
) -> RunStore:
    """Trains (or resumes) the run ``cfg`` in ``out`` on ``images`` uint8 (N, H, W, C), ``labels`` (N,).

    ``test`` (images, labels): every probe row gets ``test_loss`` and ``test_acc`` on its first
    ``cfg.test_size`` examples (all when None; 0: none), normalised with the training statistics,
    BatchNorm in eval mode. Returns the store; rows via ``store.rows()``. Resumes from
    ``out/checkpoint.pt`` if present; a run in ``out`` with another config, another start (``init_from`` by
    content) or other data (the arrays trained and scored on, :func:`dnn.data.data_digest`) is refused.
    """
    if cfg.n_train is not None:
        if not (1 <= cfg.n_train <= len(images)):
            raise UserInputError(f"n_train must be in 1..{len(images)}, got {cfg.n_train}")
        images, labels = images[: cfg.n_train], labels[: cfg.n_train]
    if cfg.batch > len(images):
        raise UserInputError(f"batch {cfg.batch} is larger than the training set ({len(images)})")
    if test is not None and cfg.test_size is not None and cfg.test_size > len(test[0]):
        raise UserInputError(f"test_size must be in 0..{len(test[0])} (the test set given); got {cfg.test_size}")
    device = check_device(cfg.device)
    input_shape = input_shape or (images.shape[3], images.shape[1], images.shape[2])
    params, acts = footprint(cfg.model, num_classes=num_classes, input_shape=input_shape, width=cfg.width)
    check_fits(
        train_bytes(cfg, params, acts),
        f"training {cfg.model} at width {cfg.width:g} ({params:,} parameters, batch {cfg.batch})",
    )
    mean, std = channel_stats(images)
    channels_last = uses_channels_last(cfg)
    model = run_model(cfg, input_shape, num_classes).to(device)
    if cfg.init_from is not None:
        if not Path(cfg.init_from).is_file():
            raise UserInputError(f"--init-from: no such file {cfg.init_from}")
        weights = load_tensors(cfg.init_from, f"--init-from {cfg.init_from}", device)
        problem = weights_problem(model, weights)
        if problem:
            raise UserInputError(f"--init-from {cfg.init_from} does not hold this model's weights ({problem})")
        model.load_state_dict(weights)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    n = len(images)
    if cfg.optimizer in ("gd", "gd-noise"):
        steps_per_epoch = 1
    else:
        steps_per_epoch = n // cfg.batch if cfg.drop_last else math.ceil(n / cfg.batch)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)

    objective = measurement_objective(cfg, model, images, labels, mean, std)
    scored = None if test is None or cfg.test_size == 0 else (test[0][: cfg.test_size], test[1][: cfg.test_size])
    config = stored_config(out, cfg, data_digest(images, labels, scored))  # refuses a run on other data
    # everything above validated the options and the data: only now is --out touched
    fits = functools.partial(checkpoint_problem, model=model, opt=opt, dim=objective.dim)
    finished = RunStore.finished(out, config, TrainConfig.defaults(), done=_is_done, check=fits, map_location=device)
    if finished is not None:  # nothing to do: read it, write nothing (no lock: a read-only directory reopens)
        check_environment(finished.dir, record=False)
        return finished
    check_writable_dir(out, "--out", "its run is not finished")
    Path(out).mkdir(parents=True, exist_ok=True)
    lock = DirectoryLock(out, "dnn train").acquire()  # one writer per run directory, before any file
    try:
        store = RunStore(out, config, defaults=TrainConfig.defaults())
        check_environment(store.dir)
        state = dict(
            step=0,
            epoch=0,
            batch_in_epoch=0,
            acc_hist=[],
            fired=[],
            probe_state={},
            nsgd_vectors=None,
            nsgd_step=None,
            walk=None,
            wall=0.0,
            probe_time=0.0,
            done=False,
            last_loss=float("nan"),
        )
        ck = store.load_checkpoint(map_location=device, check=fits)
        if ck is not None:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            state = ck["state"]
        if state["done"]:
            return store
        walk = (
            WalkTracker.from_state(state["walk"])
            if state["walk"] is not None
            else WalkTracker(objective.load(model).theta0.clone())
        )
        acc_hist = deque(state["acc_hist"], maxlen=cfg.acc_window)
        full_x = full_y = None
        test_x = test_y = None
        if scored is not None:
            test_x = _model_data(scored[0], mean, std, channels_last).to(device)
            test_y = torch.as_tensor(np.asarray(scored[1])).to(device)
        if cfg.optimizer in ("gd", "gd-noise"):
            full_x, full_y = (
                _model_data(images, mean, std, channels_last).to(device),
                torch.as_tensor(labels).to(device),
            )

        def keep():
            """The model's weights at this step as weights/step{N:07d}.pt (atomic; a replayed step rewrites the
            same weights)."""
            if cfg.keep_every and state["step"] % cfg.keep_every == 0:
                path = store.dir / "weights" / f"step{state['step']:07d}.pt"
                path.parent.mkdir(exist_ok=True)
                save_tensors(model.state_dict(), path)

        def checkpoint():
            state.update(acc_hist=list(acc_hist), walk=walk.state())
            store.save_checkpoint(dict(model=model.state_dict(), optimizer=opt.state_dict(), state=state))

        def probe(reason: str):
            t0 = time.perf_counter()
            train_time = (t0 - t_start) - state["probe_time"]  # wall time so far minus earlier probes
            objective.load(model)
            ctx = probes_mod.ProbeContext(
                cfg=cfg,
                model=model,
                objective=objective,
                state=state["probe_state"],
                walk=walk,
                step=state["step"],
                n_train=n,
            )
            metrics = probes_mod.run_probes(cfg.probes, ctx)
            row = dict(
                cfg.as_dict(),
                step=state["step"],
                epoch=state["step"] / steps_per_epoch,
                reason=reason,
                train_loss_batch=state["last_loss"],
                train_acc_running=float(np.mean(acc_hist)) if acc_hist else float("nan"),
                measure_loss=objective.loss(),
                measure_acc=objective.accuracy(),
                **metrics,
            )
            if test_x is not None:
                row["test_loss"], row["test_acc"] = evaluate(model, test_x, test_y, max(cfg.batch, 256), cfg.loss)
            state["probe_time"] += time.perf_counter() - t0
            state["wall"] = time.perf_counter() - t_start
            row.update(
                train_time_s=train_time,
                probe_time_s=state["probe_time"],
                probes=",".join(cfg.probes),
                probe_acc=list(cfg.probe_acc),
            )
            state["last_probe"] = state["step"]
            store.append(row)
            checkpoint()

        t_start = time.perf_counter() - state["wall"]
        bar = tqdm(total=total_steps, initial=state["step"], disable=not progress, unit="step", desc=cfg.model)
        if state["step"] == 0 and store.n_rows == 0:
            keep()
            probe("start")
        while state["step"] < total_steps:
            epoch = state["epoch"]
            if cfg.optimizer in ("gd", "gd-noise"):
                stream = iter([(full_x, full_y)])
            else:
                gen = torch.Generator().manual_seed(seed_for(cfg.seed, 1, epoch))
                stream = batches(
                    images,
                    labels,
                    cfg.batch,
                    gen,
                    augment=cfg.augment,
                    drop_last=cfg.drop_last,
                    mean=mean,
                    std=std,
                    device=device,
                    memory_format=torch.channels_last if channels_last else torch.contiguous_format,
                )
                for _ in range(state["batch_in_epoch"]):
                    next(stream)
            for xb, yb in stream:
                theta_before = (
                    (walk.theta_after if walk.theta_after is not None else walk.theta_init)
                    if "walk" in cfg.probes
                    else None
                )  # the parameters now: what the last update left
                model.train()
                opt.zero_grad(set_to_none=False)
                if cfg.optimizer in ("gd", "gd-noise"):
                    loss, correct = _full_gradient(model, xb, yb, cfg.batch, cfg.label_smoothing, cfg.loss)
                else:
                    logits = model(xb)
                    loss_t = per_example_loss(logits, yb, cfg.loss, cfg.label_smoothing, reduction="mean")
                    loss_t.backward()
                    loss, correct = float(loss_t.detach()), float((logits.argmax(1) == yb).float().mean())
                if not math.isfinite(loss):
                    state["wall"] = time.perf_counter() - t_start
                    store.append(
                        dict(
                            cfg.as_dict(),
                            step=state["step"],
                            epoch=state["step"] / steps_per_epoch,
                            reason="diverged",
                            diverged=state["step"],
                            train_loss_batch=loss,
                            probes=",".join(cfg.probes),
                            probe_acc=list(cfg.probe_acc),
                        )
                    )
                    state["done"] = True
                    checkpoint()
                    bar.close()
                    return store
                _modify_gradient(cfg, model, objective, state)
                if "walk" in cfg.probes:
                    g_step = objective.vector([p.grad for p in model.parameters()])
                opt.step()
                state["last_loss"] = loss
                acc_hist.append(correct)
                state["step"] += 1
                state["batch_in_epoch"] += 1
                if "walk" in cfg.probes:
                    walk.update(theta_before, flat_params(model).double(), g_step)
                keep()
                state["wall"] = time.perf_counter() - t_start
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", acc=f"{np.mean(acc_hist):.2f}")
                due = []
                if cfg.probe_every and state["step"] % cfg.probe_every == 0:
                    due.append("every")
                running = float(np.mean(acc_hist))
                for a in cfg.probe_acc:
                    if (
                        a not in state["fired"]
                        and running >= a
                        and len(acc_hist) >= min(cfg.acc_window, steps_per_epoch)
                    ):
                        state["fired"].append(a)
                        due.append(f"acc>={a:g}")
                if state["step"] == total_steps:
                    due.append("end")
                if due:
                    probe("+".join(due))
                if state["step"] >= total_steps:
                    break
            else:  # the epoch ran to its end
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
                if (
                    cfg.probe_epochs
                    and steps_per_epoch > 1
                    and state["step"] < total_steps
                    and state.get("last_probe") != state["step"]
                ):  # GD: every step is an epoch
                    probe("epoch")
        state["done"] = True
        checkpoint()
        bar.close()
        return store
    finally:
        lock.release()


def _is_done(checkpoint_state: dict) -> bool:
    """A checkpoint's run has finished (ran to the end or diverged)."""
    return bool(checkpoint_state["state"]["done"])


#: the training state in a checkpoint (besides the model's and the optimizer's): key -> its types
_STATE_TYPES = {
    "step": int,
    "epoch": int,
    "batch_in_epoch": int,
    "acc_hist": list,
    "fired": list,
    "probe_state": dict,
    "nsgd_vectors": (torch.Tensor, type(None)),
    "nsgd_step": (int, type(None)),
    "walk": (dict, type(None)),
    "wall": (int, float),
    "probe_time": (int, float),
    "done": bool,
    "last_loss": (int, float),
}
#: the SGD options an optimizer state's parameter group must hold (numbers)
_SGD_OPTIONS = ("lr", "momentum", "dampening", "weight_decay")


def weights_problem(model: torch.nn.Module, weights) -> str | None:
    """What keeps ``weights`` from being ``model``'s state dict (a phrase), or None: the same names, each a
    tensor of the model's shape."""
    if not isinstance(weights, dict):
        return f"a {type(weights).__name__}, not a dict of weights"
    want = model.state_dict()
    missing, extra = [k for k in want if k not in weights], [str(k) for k in weights if k not in want]
    if missing or extra:
        return ", ".join(f"{what} {_few(ks)}" for what, ks in (("missing", missing), ("unexpected", extra)) if ks)
    for k, v in want.items():
        w = weights[k]
        if not isinstance(w, torch.Tensor) or w.shape != v.shape:
            got = tuple(w.shape) if isinstance(w, torch.Tensor) else f"a {type(w).__name__}"
            return f"{k} is {got}, the model's is {tuple(v.shape)}"
    return None


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def checkpoint_problem(ck: dict, model=None, opt=None, dim: int | None = None) -> str | None:
    """What keeps a checkpoint's state ``ck`` from being a training run's (a phrase), or None: dicts under
    model, optimizer and state, the training state of :data:`_STATE_TYPES`. Given the run's ``model``,
    ``opt`` and probe dimension ``dim`` (for a run to resume), the weights, the optimizer's parameter groups
    and momentum buffers, and every vector of the state (walk, NSGD, the probes' eigenvectors) fit them."""
    if not all(isinstance(ck.get(k), dict) for k in ("model", "optimizer", "state")):
        return "no dicts under 'model', 'optimizer' and 'state'"
    st = ck["state"]
    wrong = [k for k, types in _STATE_TYPES.items() if not isinstance(st.get(k, ...), types)]
    if wrong:
        return f"training state without a valid {_few(wrong)}"
    if not all(isinstance(a, (int, float)) for a in st["acc_hist"] + st["fired"]):
        return "acc_hist or fired holds something other than numbers"
    if model is None:
        return None
    problem = weights_problem(model, ck["model"])
    if problem:
        return f"model: {problem}"
    problem = _optimizer_problem(ck["optimizer"], opt)
    if problem:
        return f"optimizer: {problem}"
    walk = st["walk"] or {}
    if walk and not (
        all(k in walk for k in WalkTracker._STATE)
        and isinstance(walk["theta_init"], torch.Tensor)
        and type(walk["steps"]) is int
        and isinstance(walk["cos_last"], (int, float))
    ):
        return "walk: not a walk tracker's state"
    vectors = {
        "nsgd_vectors": (st["nsgd_vectors"], 2),
        **{f"probe_state {k}": (v, 2) for k, v in st["probe_state"].items() if k != "slq"},
        **{f"walk {k}": (walk[k], 1) for k in ("theta_init", "theta_before", "theta_after", "g_last") if k in walk},
    }
    for name, (v, ndim) in vectors.items():
        if v is not None and not (isinstance(v, torch.Tensor) and v.ndim == ndim and v.shape[-1] == dim):
            got = tuple(v.shape) if isinstance(v, torch.Tensor) else f"a {type(v).__name__}"
            return f"{name} is {got}, not {ndim}-D with {dim} columns"
    return None


def _optimizer_problem(sd: dict, opt: torch.optim.Optimizer) -> str | None:
    """What keeps ``sd`` from being a state dict of ``opt`` (an SGD) (a phrase), or None."""
    groups = sd.get("param_groups")
    if not (isinstance(groups, list) and isinstance(sd.get("state"), dict)):
        return "no 'param_groups' list and 'state' dict"
    if not all(
        isinstance(g, dict) and isinstance(g.get("params"), list) and all(type(i) is int for i in g["params"])
        for g in groups
    ) or [len(g["params"]) for g in groups] != [len(g["params"]) for g in opt.param_groups]:
        return "its parameter groups are not the model's"
    if not all(isinstance(g.get(k), (int, float)) for g in groups for k in _SGD_OPTIONS):
        return f"a parameter group without the numbers {', '.join(_SGD_OPTIONS)}"
    shapes = dict(
        zip(
            (i for g in groups for i in g["params"]),
            (p.shape for g in opt.param_groups for p in g["params"]),
        )
    )
    for i, s in sd["state"].items():
        buf = s.get("momentum_buffer") if isinstance(s, dict) else ...
        if i not in shapes or not (buf is None or isinstance(buf, torch.Tensor) and buf.shape == shapes[i]):
            return f"the state of parameter {str(i)[:40]} does not fit the model"
    return None


def read_run_checkpoint(run_dir: str | Path, map_location="cpu") -> dict:
    """The checkpoint of the dnn train run in ``run_dir`` as stored (``{"state": {"model", "optimizer",
    "state"}, "n_rows"}``), read without running code; one that is not a training run's is a UserInputError
    naming the file."""
    return read_checkpoint(Path(run_dir) / "checkpoint.pt", map_location, check=checkpoint_problem)


@torch.no_grad()
def evaluate(model, x, y, chunk: int, loss: str = "cross_entropy") -> tuple[float, float]:
    """(mean ``loss`` (unsmoothed targets), accuracy) of ``model`` in eval mode on (x, y), in chunks (float64
    loss); the mode is restored."""
    was_training = model.training
    model.eval()
    total, correct = 0.0, 0
    for s in range(0, x.shape[0], chunk):
        logits = model(x[s : s + chunk])
        total += float(per_example_loss(logits.double(), y[s : s + chunk], loss, reduction="sum"))
        correct += int((logits.argmax(1) == y[s : s + chunk]).sum())
    model.train(was_training)
    return total / x.shape[0], correct / x.shape[0]


def _full_gradient(
    model, x, y, chunk: int, label_smoothing: float = 0.0, loss_name: str = "cross_entropy"
) -> tuple[float, float]:
    """Accumulates d(mean loss)/dtheta over all of (x, y) into .grad; returns (loss, accuracy)."""
    n = x.shape[0]
    total, correct = 0.0, 0
    for s in range(0, n, chunk):
        logits = model(x[s : s + chunk])
        loss = per_example_loss(logits, y[s : s + chunk], loss_name, label_smoothing, reduction="sum") / n
        loss.backward()
        total += float(loss.detach())
        correct += int((logits.argmax(1) == y[s : s + chunk]).sum())
    return total, correct / n


def _modify_gradient(cfg: TrainConfig, model, objective: Objective, state: dict) -> None:
    """NSGD's rescaling along the top-K eigenvectors, or GD's isotropic noise, in place on .grad."""
    if cfg.optimizer not in ("nsgd", "gd-noise"):
        return
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.cat([p.grad.reshape(-1) for p in params])
    if cfg.optimizer == "nsgd":
        if state["nsgd_step"] is None or state["step"] - state["nsgd_step"] >= cfg.nsgd_every:
            probed = state["probe_state"].get("eigvecs")
            if state.get("last_probe") == state["step"] and probed is not None:  # the lanczos probe just ran here
                E = probed[: cfg.nsgd_k]
            else:
                objective.load(model)
                E = probes_mod.top_eigenpairs(objective, cfg, state["nsgd_vectors"], k=cfg.nsgd_k).vectors
            state["nsgd_vectors"], state["nsgd_step"] = E.to(g.device, g.dtype), state["step"]
        g = step_probes.nsgd_direction(g, state["nsgd_vectors"], cfg.nsgd_gamma).to(g.dtype)
    else:
        gen = torch.Generator(device=g.device).manual_seed(seed_for(cfg.seed, 2, state["step"]))
        g = g + cfg.noise_std * torch.randn(g.shape, generator=gen, device=g.device, dtype=g.dtype)
    for p, gp in zip(params, torch.split(g, [p.numel() for p in params])):
        p.grad.copy_(gp.view_as(p.grad))
