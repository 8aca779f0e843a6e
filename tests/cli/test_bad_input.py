"""Careless and hostile input through the real command: one line naming the parameter, exit 2, nothing written.

Each case runs ``valleysim`` in-process (``main``, the installed entry point) in an empty working
directory; a few run as a subprocess of the installed module. The table holds the cases of issue 13
and the classes of a wider campaign (every numeric flag of every command with nan, inf, negative,
zero, 1e308, 1e-320, huge integers and non-numbers; paths; devices; stores).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from valleysim.runner import load_store, run_sweep

HUGE = "1e12"
QUICK_VALLEY = [
    "valley",
    "--loss",
    "abs-toy",
    "--eta",
    "0.01",
    "--noise-scale",
    "1",
    "--steps",
    "20",
    "--burn-in",
    "20",
    "--trajectories",
    "8",
]
QUICK_PHASE = [
    "phase-diagram",
    "--etas",
    "0.1,1",
    "--batch-sizes",
    "1,2",
    "--trajectories",
    "4",
    "--steps",
    "10",
    "--quiet",
]

CASES = [
    # sizes that cannot fit: refused with the estimate, before allocating
    (["stability", "--kind", "dense", "--dim", "20000", "--eta", "0.5", "--batch", "4"], "needs about"),
    (["stability", "--kind", "diagonal", "--dim", "200000", "--eta", "0.5", "--batch", "4"], "needs about"),
    (["stability", "--n-examples", "1e9", "--eta", "0.5", "--batch", "4"], "needs about"),
    (["stability", "--n-examples", HUGE, "--eta", "0.5", "--batch", "4"], "needs about"),
    (["stability", "--eta", "0.5", "--batch", "4", "--simulate", "--n-traj", "1e10"], "needs about"),
    (["phase-diagram", "--n-examples", HUGE, "--out", "pd"], "needs about"),
    (QUICK_PHASE + ["--trajectories", HUGE, "--out", "pd"], "needs about"),
    (QUICK_VALLEY + ["--trajectories", "1e10"], "needs about"),
    (QUICK_VALLEY + ["--steps", "1e8", "--record-every", "1"], "needs about"),
    (["break-even", "--eta", "0.1", "--batch", "8", "--n-examples", HUGE], "n_examples N must be in 2..2147483648"),
    (["break-even", "--eta", "0.1", "--batch", "8", "--steps", "100", "--trajectories", HUGE], "needs about"),
    (["walk", "--n-examples", HUGE], "n_examples must be in 1..2147483648"),
    (["walk", "--trajectories", "1e6", "--steps", "1e5", "--bins", "1e5"], "needs about"),
    (["nsgd", "--dim", HUGE], "needs about"),
    (["nsgd", "--examples", HUGE], "N must be in 2..2147483648"),
    (["nsgd", "--trajectories", HUGE, "--steps", "50"], "needs about"),
    # numbers
    (["stability", "--eta", "1e308", "--batch", "4"], "eta must be in"),
    (["stability", "--eta", "1e-320", "--batch", "4"], "eta must be in"),
    (["stability", "--eta", "nan", "--batch", "4"], "argument --eta: must be a finite number > 0"),
    (["stability", "--eta=-inf", "--batch", "4"], "argument --eta"),
    (["stability", "--eta", "abc", "--batch", "4"], "argument --eta: not a number"),
    (["stability", "--eta", "0.5", "--batch", "1.5"], "argument --batch: must be an integer"),
    (["stability", "--eta", "0.5", "--batch", "4", "--lambda-max", "1e308"], "lambda_max must be <= 1e+100"),
    (["stability", "--eta", "0.5", "--batch", "4", "--lambda-max", "1e-320"], "[1e-100, 1e100]"),
    (["stability", "--eta", "0.5", "--batch", "4", "--nonuniformity", "1e308"], "nonuniformity must be in"),
    (["stability", "--eta", "0.5", "--batch", "4", "--nonuniformity", "1e-320"], "nonuniformity must be in"),
    (["stability", "--eta", "0.5", "--batch", "4", "--condition", "0.5"], "condition must be in [1, 1e+100]"),
    (["stability", "--eta", "0.5", "--batch", "4", "--condition", "inf"], "argument --condition"),
    (["stability", "--eta", "0.5", "--batch", "4", "--landscape-seed", "-1"], "argument --landscape-seed"),
    (["stability", "--eta", "0.5", "--batch", "4", "--seed", "-99999999999999999999"], "argument --seed"),
    (["stability", "--eta", "0.5", "--batch", "4", "--seed", str(2**63)], "argument --seed"),
    (
        ["stability", "--eta", "0.5", "--batch", "4", "--steps", "1"],
        "argument --steps/--n-steps: must be an integer >= 2",
    ),
    (QUICK_PHASE + ["--batch-sizes", "nan", "--out", "pd"], "argument --batch-sizes: must be"),
    (QUICK_PHASE + ["--batch-sizes", "inf", "--out", "pd"], "argument --batch-sizes: must be"),
    (QUICK_PHASE + ["--batch-sizes", "1.5", "--out", "pd"], "--batch-sizes must be integers"),
    (QUICK_PHASE + ["--etas", "0.1:1:1e9", "--out", "pd"], "argument --etas: must be"),
    (QUICK_PHASE + ["--etas", "1:0.1:3", "--out", "pd"], "argument --etas: must be"),
    (QUICK_PHASE + ["--etas", "0,1", "--out", "pd"], "argument --etas: must be"),
    (QUICK_PHASE + ["--etas", "1e308", "--out", "pd"], "etas must be in"),
    (["break-even", "--eta", "1e308", "--batch", "8"], "eta must be a finite number in [1e-100, 1e+100]"),
    (["break-even", "--eta", "1e-320", "--batch", "8"], "eta must be a finite number in [1e-100, 1e+100]"),
    (["break-even", "--eta", "0.1", "--batch", "8", "--sigma", "1e308"], "sigma must be"),
    (["break-even", "--eta", "0.1", "--batch", "8", "--beta", "1e308"], "beta must be"),
    (["break-even", "--eta", "0.1", "--batch", "8", "--offset", "1e308"], "offset must be"),
    (["break-even", "--eta", "0.1", "--batch", "8", "--a0", "1e308"], "a0[0] must be"),
    (
        ["break-even", "--eta", "0.1", "--batch", "8", "--rates", "nan"],
        "argument --rates: must be a comma list of numbers >= 0",
    ),
    (["break-even", "--eta", "0.1", "--batch", "8", "--seed", "-1"], "argument --seed"),
    (["nsgd", "--batch", "0"], "argument --batch"),
    (["nsgd", "--batch", "101"], "batch size S must be in 1..100"),
    (["nsgd", "--gamma", "0"], "argument --gamma"),
    (["nsgd", "--seed", "-1"], "argument --seed"),
    (["nsgd", "--K", "0"], "argument --K"),
    (["walk", "--eta", "1e308"], "learning rate eta must be"),
    (["walk", "--wall-width", "1e308"], "wall width w must be"),
    (["walk", "--wall-width", "1e-320"], "wall width w must be"),
    (["walk", "--wall-width", "nan"], "wall width w must be"),
    (["walk", "--landscape-seed", "-1"], "argument --landscape-seed"),
    (["walk", "--slope", "inf"], "argument --slope"),
    (QUICK_VALLEY + ["--eta", "1e308"], "--eta must be"),
    (QUICK_VALLEY + ["--noise-scale", "nan"], "argument --noise-scale"),
    (QUICK_VALLEY + ["--record-every", "0"], "argument --record-every"),
    (QUICK_VALLEY + ["--record-every", "40"], "--record-every must be in 1..--steps"),
    (QUICK_VALLEY + ["--seed", "-1"], "argument --seed"),
    (QUICK_VALLEY + ["--init", "t3=nan"], "--init value for t3"),
    (QUICK_VALLEY + ["--init", "t3=1e400"], "--init value for t3"),
    (QUICK_VALLEY + ["--init", "t3"], "--init items must look like name=value"),
    (
        QUICK_VALLEY
        + [
            "--loss",
            "t1**2*t3",
            "--nondegenerate",
            "t1",
            "--degenerate",
            "t3",
            "--init",
            "t3=1",
            "--noise",
            "designed:lam9",
        ],
        "unknown name 'lam9'",
    ),
    (["dnn", "train", "--out", "r", "--lr", "0"], "argument --lr"),
    (["dnn", "train", "--out", "r", "--measure-fraction", "nan"], "argument --measure-fraction"),
    (["dnn", "train", "--out", "r", "--measure-fraction", "2"], "argument --measure-fraction"),
    (["dnn", "train", "--out", "r", "--max-steps", "-1"], "argument --max-steps"),
    (["dnn", "train", "--out", "r", "--nsgd-gamma", "inf"], "argument --nsgd-gamma"),
    (["dnn", "train", "--out", "r", "--momentum", "1"], "momentum must be in [0, 1)"),
    (["dnn", "train", "--out", "r", "--probe-acc", "2"], "argument --probe-acc: must be"),
    (["dnn", "train", "--out", "r", "--cov-batches", "1"], "argument --cov-batches"),
    (["dnn", "train", "--out", "r", "--seed", "-1"], "argument --seed"),
    (["dnn", "train", "--out", "r", "--model", "bogus"], "unknown model 'bogus'"),
    (["dnn", "train", "--out", "r", "--width", "1e308"], "width must be in (0, 10000]"),
    (["dnn", "train", "--out", "r", "--lr", "1e308"], "lr must be <= 1e+30"),
    (["dnn", "train", "--out", "r", "--weight-decay", "1e308"], "weight_decay must be <= 1e+30"),
    (["break-even", "--eta", "0.1", "--batch", "8", "--beta", "1e-320"], "beta must be 0 or in [1e-100, 1000]"),
    # devices: named before any work (no data is read: --data is not even given)
    (["dnn", "train", "--out", "r", "--device", "foo"], "--device 'foo' is not a device name"),
    (["dnn", "crosscheck", "--out", "r", "--device", "foo"], "--device 'foo' is not a device name"),
    # paths (a file "afile" exists in the working directory)
    (QUICK_PHASE + ["--out", "afile"], "is an existing file"),
    (QUICK_PHASE + ["--out", "afile/sub"], "is a file"),
    (QUICK_PHASE + ["--out", ""], "must name a directory"),
    (["demo", "--out", "afile", "--quick"], "is an existing file"),
    (["demo", "--out", "afile/sub/deeper", "--quick"], "is a file"),
    (QUICK_VALLEY + ["--plot", "afile"], "is an existing file"),
    (QUICK_VALLEY + ["--plot", "afile/x"], "is a file"),
    (["dnn", "train", "--out", "afile"], "is an existing file"),
    (["dnn", "crosscheck", "--out", "afile/x"], "is a file"),
    (["dnn", "crosscheck", "--out", "r", "--preset", "bogus"], "unknown preset 'bogus'"),
    # commands and choices
    (["bogus"], "invalid choice"),
    (["stability", "--eta", "0.5"], "the following arguments are required: --batch"),
    (["stability", "--eta", "0.5", "--batch", "4", "--kind", "bogus"], "argument --kind: invalid choice"),
    (["stability", "--eta", "0.5", "--batch", "4", "--hessians", "missing.npy"], "hessians file not found"),
    (["walk", "--optimizer", "bogus"], "argument --optimizer: invalid choice"),
    (["walk", "--steps", "1"], "--bins must be in 1..1 (at most one window per step of --steps); got 4"),
    (["stability", "--eta", "0.5", "--batch", "4", "--hessians", "."], "--hessians . is a directory"),
]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VALLEYSIM_DATA", raising=False)
    (tmp_path / "afile").write_text("x")
    return tmp_path


@pytest.mark.parametrize("argv, message", CASES, ids=[" ".join(a)[:80] for a, _ in CASES])
def test_bad_input_is_one_named_line_and_writes_nothing(workdir, cli, argv, message):
    code, out, err = cli(*argv)
    assert code == 2, (out, err)
    assert message in err, err
    assert err.count("\n") == 1 and err.startswith("valleysim"), err
    assert "Traceback" not in err
    assert sorted(p.name for p in workdir.iterdir()) == ["afile"], list(workdir.iterdir())


def test_unwritable_directories_are_refused(workdir, cli):
    import tempfile

    target = Path("/sys/valleysim-out")  # read-only for every user, root included
    try:
        with tempfile.TemporaryFile(dir="/sys"):
            pytest.skip("/sys is writable on this machine: no read-only place to test against")
    except OSError:
        pass
    for argv in (
        QUICK_PHASE + ["--out", str(target)],
        QUICK_VALLEY + ["--plot", str(target)],
        ["dnn", "train", "--out", str(target)],
    ):
        code, _, err = cli(*argv)
        assert code == 2 and "is not writable" in err and err.count("\n") == 1, err


def test_hessian_files_that_lie_or_lose_information_are_refused(workdir, cli):
    import struct

    np.save("C.npy", np.ones((4, 2, 2)) + 1j)  # the imaginary part would be dropped
    np.save("H.npy", np.ones((4, 2)))
    hdr = "{'descr': '<f8', 'fortran_order': False, 'shape': (100000, 1000, 1000), }"
    hdr += " " * (118 - len(hdr)) + "\n"
    Path("big.npy").write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(hdr)) + hdr.encode() + bytes(900))
    base = ("stability", "--eta", "0.1", "--batch", "2", "--hessians")
    for argv, message in (
        ((*base, "C.npy"), "hessians must be real numbers (integer or float); C.npy holds complex128"),
        (
            (*base, "big.npy"),
            "its header claims shape (100000, 1000, 1000) of float64 (800,000,000,000 bytes), the file holds 900 bytes",
        ),
        (
            (*base, "H.npy", "--kind", "dense", "--dim", "3"),
            "--hessians gives the landscape, --kind, --dim a generated",
        ),
    ):
        code, _, err = cli(*argv)
        assert code == 2 and message in err and err.count("\n") == 1, err
    code, out, _ = cli(*base, "H.npy")
    assert code == 0 and "mean_square_stable" in out


def test_hessians_with_huge_finite_values_are_refused(workdir, cli):
    np.save("H.npy", np.array([1e303, 2e303, 3e303]))  # eta* ~ 1e-303 and sums near overflow
    code, _, err = cli("stability", "--hessians", "H.npy", "--eta", "1e-303", "--batch", "1")
    assert code == 2 and "largest |entry| is 3e+303" in err and "rescale" in err
    np.save("H.npy", np.array([1e200, 2e200, 3e200]))  # within range: solved at unit scale (issue 18)
    code, out, err = cli("stability", "--hessians", "H.npy", "--eta", "1e-201", "--batch", "1")
    assert code == 0 and "mean_square_stable  True" in out, err


def test_unwritable_kernel_cache_falls_back_with_a_warning(workdir, cli, monkeypatch):
    monkeypatch.setenv("VALLEYSIM_CACHE", str(workdir / "afile"))  # under a file: cannot be created
    from valleysim.valley import codegen

    monkeypatch.setattr(codegen, "_FALLBACK", [])
    for name in [m for m in sys.modules if m.startswith("valleysim_kernel_")]:  # loaded by an earlier test
        monkeypatch.delitem(sys.modules, name)
    code, out, err = cli(*QUICK_VALLEY)
    assert code == 0 and "trace drift" in out
    assert err.startswith("valleysim: warning: kernel cache") and err.count("\n") == 1, err


def test_the_installed_command_reports_cleanly(tmp_path, installed):
    """The same rules through a real process (what a user runs): a traceback would show here."""
    for argv, message in (
        (["stability", "--kind", "dense", "--dim", "20000", "--eta", "0.5", "--batch", "4"], "needs about"),
        (["nsgd", "--batch", "0"], "argument --batch"),
        (["dnn", "train", "--out", "r", "--device", "cuda:7"], "--device cuda:7"),
    ):
        proc = installed(*argv, timeout=120)
        assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ stores


def _square(point):
    return {"y": point["x"] ** 2, "nan": float("nan"), "inf": float("inf")}


def test_sweep_store_writes_null_and_recomputes_damaged_lines(tmp_path, capsys):
    from concurrent.futures import ThreadPoolExecutor

    store = tmp_path / "sweep.jsonl"
    points = [{"x": i} for i in range(6)]
    with ThreadPoolExecutor(1) as ex:
        first = run_sweep(_square, points, store, executor=ex, progress=False)
    text = store.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert all(json.loads(line)["result"]["nan"] is None for line in text.splitlines())  # strict JSON
    assert first[2] == {"y": 4, "nan": None, "inf": None}  # as a resumed sweep reads it
    lines = text.splitlines(keepends=True)
    lost = sorted(json.loads(lines[i])["point"]["x"] for i in (2, 4))  # completion order, not point order
    lines[2] = '{"point": {"x": 2}, "res' + "\n"  # damaged in the middle
    lines[4] = "[1, 2]\n"  # valid JSON, not a record
    store.write_text("".join(lines) + '{"point": {"x"')  # and a torn last line
    assert len(load_store(store)) == 4
    assert "dropped 2 damaged line(s) (line 3, 5)" in capsys.readouterr().err
    assert len(store.read_text().splitlines()) == 4  # rewritten without them
    calls = []

    class Counting(ThreadPoolExecutor):
        def submit(self, fn, p):
            calls.append(p)
            return super().submit(fn, p)

    with Counting(1) as ex:
        again = run_sweep(_square, points, store, executor=ex, progress=False)
    assert again == first and sorted(p["x"] for p in calls) == lost


def test_damaged_sweep_config_is_named(workdir, cli):
    args = QUICK_PHASE + ["--out", "pd"]
    code, _, err = cli(*args)
    assert code == 0, err
    Path("pd/config.json").write_text('{"scheme": "without_replacement",\n "n_traj": 4,, }')
    code, _, err = cli(*args)
    assert code == 2 and "config.json is damaged (not valid JSON at line 2" in err and err.count("\n") == 1
    Path("pd/config.json").write_text("[1, 2]")  # valid JSON, not a config
    code, _, err = cli(*args)
    assert code == 2 and "config.json is damaged (not a JSON object)" in err and err.count("\n") == 1


def test_damaged_run_files_are_named(tmp_path):
    from dnn.store import RunStore, read_rows
    from valleysim.errors import UserInputError

    st = RunStore(tmp_path, {"a": 1})
    for i in range(3):
        st.append({"step": i, "loss": float("inf")})
    assert read_rows(st.metrics_path)[0]["loss"] is None  # one encoding: null
    lines = st.metrics_path.read_text().splitlines(keepends=True)
    st.metrics_path.write_text(lines[0] + "{oops\n" + lines[2])
    with pytest.raises(UserInputError, match="metrics.jsonl: line 2 damaged"):
        read_rows(st.metrics_path)
    (tmp_path / "config.json").write_text("{")
    with pytest.raises(UserInputError, match="config.json is damaged"):
        RunStore(tmp_path, {"a": 1})
    (tmp_path / "b").mkdir()
    st = RunStore(tmp_path / "b", {"a": 1})
    st.checkpoint_path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserInputError, match="checkpoint.pt cannot be read"):
        st.load_checkpoint()


@pytest.mark.parametrize(
    "exc, code, message",
    [
        (MemoryError(), 1, "out of memory"),
        (OSError(28, "No space left on device", "out/x"), 1, "No space left on device (out/x)"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_the_machine_failing_a_run_is_one_line_too(capsys, exc, code, message):
    from valleysim.errors import report_errors

    def run():
        raise exc

    assert report_errors(run) == code
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_closed_stdout_stops_quietly(installed):
    """`valleysim ... | head`: the reader goes away; no error line, exit 141 (SIGPIPE's shell code)."""
    proc = installed.popen("walk", "--steps", "50", "--trajectories", "4", "--json")
    proc.stdout.close()  # gone before the first line is written
    with proc.stderr:
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == ""
