"""Files of a dnn run directory and ``--init-from`` are untrusted input (issue 27): nothing in them runs,
and what does not fit ends in one named line.

A pickle payload (its ``__reduce__`` would create a marker file) in a finished run's checkpoint.pt, rerun
as the same command in its own process: exit 2, one line, and no marker. Checkpoints of the wrong structure,
bad ``--init-from`` files and a damaged environment.json: one line naming the file, exit 2. A full disk
while a checkpoint or kept weights are saved (a real tmpfs, where this process may mount one): one line
naming the file, exit 1, the previous checkpoint intact, and the run resumes once there is room."""

from __future__ import annotations

import copy
import io
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dnn"))
from tiny_nets import Payload, fake_batches_dir, synthetic_images  # noqa: E402

TRAIN = ["dnn", "train", "--model", "simplecnn", "--width", "0.125", "--batch", "4", "--max-steps", "3"]
TRAIN += ["--measure-size", "6", "--probes", "lanczos", "--top-k", "1", "--no-progress"]
TIMING = ("train_time_s", "probe_time_s")
NOISE = random.Random(0).randbytes(3000)  # random bytes as a file


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """(TRAIN with its --data, a finished run directory made by it) once per module."""
    root = tmp_path_factory.mktemp("finished")
    data, _ = fake_batches_dir(root / "data")
    argv = [*TRAIN, "--data", str(data)]
    env = {**os.environ, "VALLEYSIM_DATA_CACHE": str(root / "cache")}
    cmd = [sys.executable, "-m", "valleysim", *argv, "--out", str(root / "run")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return argv, root / "run"


@pytest.fixture
def run(finished, tmp_path, monkeypatch):
    """A fresh copy of the finished run: (its directory, the argv that reopens it)."""
    monkeypatch.setenv("VALLEYSIM_DATA_CACHE", str(tmp_path / "cache"))
    argv, src = finished
    out = tmp_path / "run"
    shutil.copytree(src, out)
    return out, [*argv, "--out", str(out)]


def one_line(err: str) -> bool:
    return err.count("\n") == 1 and "Traceback" not in err and err.startswith("valleysim: error: ")


# ------------------------------------------------------------------ code in a checkpoint never runs


def _replace(ck, marker):
    return {"state": Payload(marker), "n_rows": ck["n_rows"]}


def _inside(ck, marker):
    ck = copy.deepcopy(ck)
    ck["state"]["state"]["probe_state"]["eigvecs"] = Payload(marker)
    return ck


@pytest.mark.parametrize("make", [_replace, _inside, "bare pickle"])
def test_a_pickle_payload_in_a_checkpoint_never_runs(run, installed, tmp_path, make):
    out, argv = run
    marker = tmp_path / "MARKER"
    path = out / "checkpoint.pt"
    if make == "bare pickle":  # torch's legacy format: read by an unpickler before the format is checked
        import pickle

        path.write_bytes(pickle.dumps(Payload(marker), protocol=2))
    else:
        torch.save(make(torch.load(path, weights_only=True), marker), path)
    res = installed(*argv)
    assert not marker.exists(), "the payload ran"
    assert res.returncode == 2 and one_line(res.stderr), res.stderr
    assert f"{path} refused: it holds Python objects, not only tensors (posix.system)" in res.stderr, res.stderr


# ------------------------------------------------------------------ a checkpoint of the wrong structure


def _edit(fn):
    def make(ck):
        ck = copy.deepcopy(ck)
        fn(ck["state"])
        return ck

    return make


def _first_weight(st):
    k = next(iter(st["model"]))
    st["model"][k] = torch.zeros(2, 2)


WRONG = {
    "a dict of other keys": (lambda ck: {"x": 1}, "(no dict under 'state')"),
    "a bare tensor": (lambda ck: torch.zeros(3), "(no dict under 'state')"),
    "no state": (lambda ck: {"n_rows": ck["n_rows"]}, "(no dict under 'state')"),
    "n_rows a string": (lambda ck: {**ck, "n_rows": "2"}, "(no row count under 'n_rows')"),
    "no model": (_edit(lambda st: st.pop("model")), "no dicts under 'model', 'optimizer' and 'state'"),
    "no done": (_edit(lambda st: st["state"].pop("done")), "training state without a valid done"),
    "step a string": (_edit(lambda st: st["state"].update(step="3")), "without a valid step"),
    "another network": (_edit(_first_weight), "model: features.0.weight is (2, 2), the model's is (4, 3, 3, 3)"),
    "optimizer of another network": (
        _edit(lambda st: st["optimizer"]["param_groups"][0]["params"].pop()),
        "optimizer: its parameter groups are not the model's",
    ),
    "optimizer without a learning rate": (
        _edit(lambda st: st["optimizer"]["param_groups"][0].pop("lr")),
        "optimizer: a parameter group without the numbers lr, momentum, dampening, weight_decay",
    ),
    "a momentum buffer of another shape": (
        _edit(lambda st: st["optimizer"]["state"].update({0: {"momentum_buffer": torch.zeros(5)}})),
        "optimizer: the state of parameter 0 does not fit the model",
    ),
    "a running accuracy of strings": (
        _edit(lambda st: st["state"].update(acc_hist=["a"])),
        "acc_hist or fired holds something other than numbers",
    ),
    "a walk state of other keys": (
        _edit(lambda st: st["state"].update(walk={"theta_init": 1})),
        "walk: not a walk tracker's state",
    ),
    "eigenvectors of another size": (
        _edit(lambda st: st["state"]["probe_state"].update(eigvecs=torch.zeros(1, 5))),
        "probe_state eigvecs is (1, 5), not 2-D with",
    ),
}


@pytest.mark.parametrize("done", [True, False], ids=["finished", "to resume"])
@pytest.mark.parametrize("case", WRONG)
def test_a_checkpoint_of_the_wrong_structure_is_one_named_line(run, cli, case, done):
    """Refused whether the run would be reopened as finished or resumed."""
    out, argv = run
    path = out / "checkpoint.pt"
    make, message = WRONG[case]
    ck = torch.load(path, weights_only=True)
    ck["state"]["state"]["done"] = done
    torch.save(make(ck), path)
    code, _, err = cli(*argv)
    assert code == 2 and one_line(err), err
    assert f"{path} is not a checkpoint of this run" in err and message in err, err


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "cannot be read as a torch file (EOFError)"),
        (NOISE, "cannot be read as a torch file ("),
        (None, "cannot be read as a torch file (RuntimeError: PytorchStreamReader failed"),  # torn: first 3 kB
    ],
)
def test_an_unreadable_checkpoint_is_one_named_line(run, cli, content, message):
    out, argv = run
    path = out / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:3000] if content is None else content)
    code, _, err = cli(*argv)
    assert code == 2 and one_line(err) and f"{path} {message}" in err, err


# ------------------------------------------------------------------ --init-from


def _weights(ck):
    return ck["state"]["model"]


def _save(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


INIT = {
    "random bytes": (lambda w: NOISE, "cannot be read as a torch file ("),
    "empty": (lambda w: b"", "cannot be read as a torch file (EOFError)"),
    "a list": (lambda w: _save([1, 2]), "does not hold this model's weights (a list, not a dict of weights)"),
    "other keys": (lambda w: _save({"a": torch.zeros(2)}), "(missing features.0.weight, features.0.bias, "),
    "a wrong shape": (
        lambda w: _save({**w, "features.0.weight": torch.zeros(7)}),
        "(features.0.weight is (7,), the model's is (4, 3, 3, 3))",
    ),
    "a whole checkpoint": (lambda w: _save({"state": {"model": w}, "n_rows": 2}), "unexpected state, n_rows)"),
}


@pytest.mark.parametrize("case", INIT)
def test_an_init_from_file_that_is_not_this_models_weights_is_one_line(run, cli, tmp_path, case):
    out, argv = run
    make, message = INIT[case]
    init = tmp_path / "init.pt"
    init.write_bytes(make(_weights(torch.load(out / "checkpoint.pt", weights_only=True))))
    code, _, err = cli(*argv[:-1], tmp_path / "new", "--init-from", init)
    assert code == 2 and one_line(err) and f"--init-from {init} " in err and message in err, err
    assert not (tmp_path / "new").exists()


def test_an_init_from_payload_never_runs(run, installed, cli, tmp_path):
    out, argv = run
    marker, init = tmp_path / "MARKER", tmp_path / "init.pt"
    weights = _weights(torch.load(out / "checkpoint.pt", weights_only=True))
    torch.save({**weights, "features.0.weight": Payload(marker)}, init)
    res = installed(*argv[:-1], tmp_path / "new", "--init-from", init)
    assert not marker.exists(), "the payload ran"
    assert res.returncode == 2 and one_line(res.stderr), res.stderr
    assert f"--init-from {init} refused: it holds Python objects, not only tensors (posix.system)" in res.stderr
    # the run's own final weights are a valid start: the checker refuses only what does not fit
    torch.save(weights, init)
    assert cli(*argv[:-1], tmp_path / "new", "--init-from", init)[0] == 0


# ------------------------------------------------------------------ environment.json


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"torch_version": ', "is damaged (not valid JSON at line 1, column 19"),
        ("[1]", "is damaged (not a JSON object)"),
    ],
)
def test_a_damaged_environment_json_is_one_named_line(run, cli, text, message):
    out, argv = run
    (out / "environment.json").write_text(text)
    code, _, err = cli(*argv)
    assert code == 2 and one_line(err) and f"{out / 'environment.json'} {message}" in err, err


# ------------------------------------------------------------------ a full disk while saving


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(kib) -> a tmpfs of that size (skips where this process cannot mount); .grow(kib)."""
    d = tmp_path / "disk"
    d.mkdir()

    def mount(kib: int) -> Path:
        if subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(d)], capture_output=True
        ).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
        return d

    mount.grow = lambda kib: subprocess.run(["mount", "-o", f"remount,size={kib}k", str(d)], check=True)
    yield mount
    subprocess.run(["umount", "--lazy", str(d)], capture_output=True)  # even while a failed write holds a file


@pytest.mark.parametrize("keep", [False, True], ids=["checkpoint", "kept weights"])
def test_a_full_disk_while_saving_is_one_named_line_and_the_run_resumes(finished, run, cli, small_disk, keep):
    """Room for the run's first checkpoint (and first kept weights), not for the next: the failed save is
    named, the checkpoint before it is intact, and with more room the run resumes to the rows of the
    uninterrupted run."""
    from dnn.store import read_rows

    src = finished[1]
    ck_bytes = (src / "checkpoint.pt").stat().st_size
    w_bytes = len(_save(_weights(torch.load(src / "checkpoint.pt", weights_only=True))))
    kib = (ck_bytes + (w_bytes if keep else 0)) // 1024 + 24  # the small files take a page each
    out = small_disk(kib) / "run"
    argv = [*finished[0], "--out", out, *(["--keep-every", "1"] if keep else [])]
    code, _, err = cli(*argv)
    failed = out / "weights" / "step0000001.pt" if keep else out / "checkpoint.pt"
    assert code == 1 and one_line(err) and f"No space left on device ({failed})" in err, err
    assert not list(out.rglob("*.tmp"))  # no half-written temporary file left behind
    ck = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ck["n_rows"] == 1 and ck["state"]["state"]["step"] == 0  # the first probe's checkpoint, intact
    small_disk.grow(4096)
    code, _, err = cli(*argv)
    assert code == 0, err
    strip = lambda rows: [{k: v for k, v in r.items() if k not in (*TIMING, "keep_every")} for r in rows]  # noqa: E731
    assert strip(read_rows(out / "metrics.jsonl")) == strip(read_rows(src / "metrics.jsonl"))


# ------------------------------------------------------------------ the studies' readers of a run's checkpoint


def _payload_run(run_dir: Path, marker: Path) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text("{}")  # a run's files as the readers find them: config, rows, checkpoint
    (run_dir / "metrics.jsonl").write_text('{"step": 3}\n')
    torch.save({"state": {"model": Payload(marker)}, "n_rows": 1}, run_dir / "checkpoint.pt")


def test_the_break_even_edge_analysis_never_runs_a_checkpoint(tmp_path):
    from dnn import break_even_study as bes
    from dnn.study import run_dir
    from valleysim.errors import UserInputError

    preset = bes.PRESETS["smoke"]
    pts = [p for p in bes.points(preset) if "batch_size" in p.knobs][:1]  # the first run the analysis reads
    marker = tmp_path / "MARKER"
    _payload_run(run_dir(tmp_path, pts[0].label, 0), marker)
    x, y = synthetic_images(16)
    with pytest.raises(UserInputError, match="checkpoint.pt refused: it holds Python objects"):
        bes.batch_size_effect(preset, tmp_path, pts, [0], x, y, progress=False)
    assert not marker.exists()


def test_the_crosscheck_final_model_never_runs_a_checkpoint(tmp_path):
    from dnn.crosscheck import _save_final_model
    from valleysim.errors import UserInputError

    marker = tmp_path / "MARKER"
    _payload_run(tmp_path / "r5_pretrain", marker)
    with pytest.raises(UserInputError, match="checkpoint.pt refused: it holds Python objects"):
        _save_final_model(tmp_path / "r5_pretrain", tmp_path / "model.pt")
    assert not marker.exists() and not (tmp_path / "model.pt").exists()
    torch.save({"state": {"model": {}}, "n_rows": 1}, tmp_path / "r5_pretrain" / "checkpoint.pt")  # no optimizer
    with pytest.raises(UserInputError, match="not a checkpoint of this run .no dicts under 'model', 'optimizer'"):
        _save_final_model(tmp_path / "r5_pretrain", tmp_path / "model.pt")
