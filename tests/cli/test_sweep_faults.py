"""Faults around a sweep, each on the real command (issue 27): a local-pool worker killed mid-sweep (its
points run again on fresh workers; a worker lost on every try ends in one line and the rerun resumes); a
phase diagram's landscape.npz torn, swapped or written to a full disk; JSON nested 200,000 deep (or not
JSON) in a config.json or a store line."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import psutil
import pytest

from valleysim.errors import UserInputError
from valleysim.executors import ExecutorOptions, open_executor
from valleysim.quadratic.landscape import PerExampleQuadratic
from valleysim.quadratic.phase_diagram import _stored_landscape, evaluate_point, landscape_digest, phase_diagram

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dnn"))
from tiny_nets import fake_batches_dir, synthetic_images  # noqa: E402

PD = ["phase-diagram", "--kind", "diagonal", "--n-examples", "6", "--dim", "1", "--etas", "0.2:3:8"]
PD += ["--batch-sizes", "1,2,3", "--steps", "3000", "--trajectories", "64", "--quiet"]
N_POINTS = 3 + 8 * 3  # a per-S task for each batch size, and the grid
RETRY = "valleysim: warning: a worker process died (killed, or out of memory); its tasks run again on fresh workers"


def _pool_workers(pid: int) -> list[psutil.Process]:
    """The live pool workers of process ``pid`` (not its resource tracker, nor a dead worker)."""
    workers = []
    for kid in psutil.Process(pid).children():
        with contextlib.suppress(psutil.Error):
            if "spawn_main" in " ".join(kid.cmdline()):
                workers.append(kid)
    return workers


def error_line(err: str) -> str:
    """The message of a command's one-line error (``valleysim[ <cmd>]: error: <message>``)."""
    [line] = err.splitlines()
    prog, sep, message = line.partition(": error: ")
    assert prog.startswith("valleysim") and sep, line
    return message


def _stored(store) -> list[dict]:
    return [json.loads(line) for line in store.read_text().splitlines()] if store.exists() else []


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The CSV of the same sweep, undisturbed."""
    out = tmp_path_factory.mktemp("reference") / "pd"
    res = subprocess.run([sys.executable, "-m", "valleysim", *PD, "--out", str(out)], capture_output=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return (out / "phase_diagram.csv").read_bytes()


def test_a_pool_worker_killed_mid_sweep_is_replaced_and_the_sweep_finishes(installed, tmp_path, reference):
    proc = installed.popen(*PD, "--out", "pd")  # the sweep's own pool (no --workers)
    store = tmp_path / "pd" / "sweep.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and len(_stored(store)) < 1:
        time.sleep(0.05)
    _pool_workers(proc.pid)[0].kill()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()
    assert err.decode().splitlines() == [f"{RETRY} (retry 1 of 3)"]
    keys = [json.dumps(r["point"], sort_keys=True) for r in _stored(store)]
    assert len(keys) == len(set(keys)) == N_POINTS  # every point, once
    assert (tmp_path / "pd" / "phase_diagram.csv").read_bytes() == reference


def test_pool_workers_lost_on_every_try_end_in_one_line_and_the_rerun_resumes(installed, tmp_path, reference):
    proc = installed.popen(*PD, "--out", "pd", "--workers", "2")  # open_executor's local pool
    killed = set()
    while proc.poll() is None:  # every worker of every fresh pool, as soon as it starts
        with contextlib.suppress(psutil.Error):  # the command may exit meanwhile
            for w in _pool_workers(proc.pid):
                if w.pid not in killed:
                    killed.add(w.pid)
                    w.kill()
        time.sleep(0.02)
    err = proc.communicate()[1].decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    *warnings, line = err.splitlines()
    assert warnings == [f"{RETRY} (retry {k} of 3)" for k in (1, 2, 3)]
    message = error_line(line)
    assert message.startswith(f"{N_POINTS} point(s) lost (") and message.endswith(
        "a worker process died (killed, or out of memory) on each of 4 tries; the 0 finished points are kept in "
        "pd/sweep.jsonl: rerun the command to compute the rest"
    )
    rerun = installed(*PD, "--out", "pd", "--workers", "2")
    assert rerun.returncode == 0, rerun.stderr
    assert (tmp_path / "pd" / "phase_diagram.csv").read_bytes() == reference


@pytest.mark.slow
@pytest.mark.usefixtures("torch_one_thread")  # the in-process runs as in the single-threaded workers
def test_a_network_study_on_the_local_pool_survives_a_killed_worker(tmp_path, capsys):
    """``dnn study --workers N`` sends its runs to the same pool: 4 runs on 2 workers, one worker SIGKILLed
    once a run has written rows; its runs go to fresh workers and resume from their checkpoints; the table
    equals the in-process one."""
    from dnn import break_even_study as bes

    x, y = synthetic_images(40)
    preset = dataclasses.replace(bes.PRESETS["smoke"], bn_lr_grid=(), edge_sizes=(), lr_grid=(0.05,), max_steps=6)
    here = bes.run(preset, tmp_path / "here", x, y, progress=False)
    got = {}
    with open_executor("local", ExecutorOptions(workers=2)) as ex:
        t = threading.Thread(
            target=lambda: got.update(s=bes.run(preset, tmp_path / "pool", x, y, progress=False, executor=ex))
        )
        t.start()
        deadline = time.time() + 120
        while time.time() < deadline and not any(
            len(p.read_text().splitlines()) >= 2 for p in (tmp_path / "pool").rglob("metrics.jsonl")
        ):
            time.sleep(0.05)
        _pool_workers(os.getpid())[0].kill()
        t.join(300)
        assert not t.is_alive()
    assert got["s"]["per_run"] == here["per_run"]
    assert f"{RETRY} (retry 1 of 3)" in capsys.readouterr().err.splitlines()


H = np.array([0.3, 0.8, 1.1, 2.6, 0.5, 1.7])
H_OTHER = np.array([3.0, 0.1, 0.2, 0.4, 5.0, 0.9])
SMALL = ["phase-diagram", "--batch-sizes", "1,2", "--steps", "50", "--trajectories", "8", "--quiet"]


def _sweep(q, out, etas=(0.5, 1.0)):
    with ThreadPoolExecutor(1) as threads:
        return phase_diagram(q, list(etas), [1, 2], out, n_traj=8, n_steps=50, seed=0, progress=False, executor=threads)


def _npz_of(q) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, kind=q.kind, data=q.data, w_star=q.w_star)
    return buf.getvalue()


def test_a_torn_or_foreign_landscape_file_is_written_again_from_the_flags(tmp_path, capsys):
    """landscape.npz cut at any length, random bytes, a bare .npy, or an npz whose object array would
    unpickle code (it never runs): the resumed sweep writes the file again from its landscape (a warning
    line) and gives the fresh sweep's rows."""
    q = PerExampleQuadratic("diagonal", H[:, None])
    fresh = _sweep(q, tmp_path / "fresh", etas=(0.5, 1.0, 2.0))
    out = tmp_path / "pd"
    _sweep(q, out)
    whole = (out / "landscape.npz").read_bytes()
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    payload = tmp_path / "payload.npz"
    np.savez(payload, kind="diagonal", data=np.array([Payload()], dtype=object), w_star=np.zeros(1))
    np.save(tmp_path / "bare.npy", H)
    damaged = [whole[:n] for n in (0, 1, 30, 100, 300, len(whole) // 2, len(whole) - 1)]
    damaged += [np.random.default_rng(0).bytes(900), (tmp_path / "bare.npy").read_bytes(), payload.read_bytes()]
    for content in damaged:
        (out / "landscape.npz").write_bytes(content)
        (out / "phase_diagram.csv").unlink(missing_ok=True)  # unfinished: the sweep resumes
        capsys.readouterr()
        rows = _sweep(q, out, etas=(0.5, 1.0, 2.0))
        assert rows == fresh
        assert capsys.readouterr().err.splitlines() == [
            f"valleysim: warning: {out / 'landscape.npz'} was damaged (not a whole landscape file); written again "
            "from the command's landscape"
        ]
        assert landscape_digest(*_stored_landscape(out / "landscape.npz")) == landscape_digest(
            "diagonal", q.data, q.w_star
        )
    assert not marker.exists()


def test_a_swapped_landscape_file_is_refused_in_one_line(tmp_path, cli, monkeypatch):
    """Another landscape's landscape.npz in a sweep's directory: the resumed sweep (a wider grid) is refused,
    nothing is computed on it (the old code computed the new points on it, exit 0)."""
    monkeypatch.chdir(tmp_path)
    np.save("h.npy", H)
    code, _, err = cli(*SMALL, "--hessians", "h.npy", "--etas", "0.5,1", "--out", "pd")
    assert code == 0, err
    Path("pd/landscape.npz").write_bytes(_npz_of(PerExampleQuadratic("diagonal", H_OTHER[:, None])))
    stored = Path("pd/sweep.jsonl").read_bytes()
    code, _, err = cli(*SMALL, "--hessians", "h.npy", "--etas", "0.5,1,2", "--out", "pd")
    assert code == 2
    message = error_line(err)
    assert message.startswith("pd/landscape.npz holds another landscape than config.json records")
    assert message.endswith("delete it to have it written again from the command's flags, or choose another --out")
    assert Path("pd/sweep.jsonl").read_bytes() == stored  # no point computed on it


def test_a_worker_never_computes_on_a_landscape_file_that_is_not_the_recorded_one(tmp_path):
    """The workers read landscape.npz themselves (on a cluster, from a shared disk): each checks it against
    the digest the driver recorded, so a file swapped or torn mid-sweep is a named error, not wrong rows."""
    q, other = (PerExampleQuadratic("diagonal", h[:, None]) for h in (H, H_OTHER))
    path = tmp_path / "landscape.npz"
    path.write_bytes(_npz_of(other))
    kw = dict(scheme="without_replacement", n_traj=4, n_steps=8, seed=0)
    point = {"task": "point", "eta": 0.5, "S": 1}
    digest = landscape_digest(q.kind, q.data, q.w_star)
    with pytest.raises(UserInputError, match="landscape.npz holds another landscape than config.json records"):
        evaluate_point(point, landscape=str(path), landscape_sha256=digest, **kw)
    path.write_bytes(_npz_of(q)[:200])
    with pytest.raises(UserInputError, match="landscape.npz is damaged"):
        evaluate_point(point, landscape=str(path), landscape_sha256=digest, **kw)
    path.write_bytes(_npz_of(q))
    assert evaluate_point(point, landscape=str(path), landscape_sha256=digest, **kw)["spectral_radius"] > 0


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(kib) -> a directory on a tmpfs of that size (a disk that fills up); resize(kib) grows it.
    Skips where this process cannot mount."""
    mounts = []

    def make(kib: int):
        d = tmp_path / f"disk{len(mounts)}"
        d.mkdir()
        if subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(d)], capture_output=True
        ).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root and mount rights)")
        mounts.append(d)
        return d

    def resize(d, kib: int):
        subprocess.run(["mount", "-o", f"remount,size={kib}k", str(d)], check=True, capture_output=True)

    make.resize = resize
    yield make
    for d in mounts:
        subprocess.run(["umount", str(d)], capture_output=True)


def test_a_full_disk_while_the_landscape_is_written_is_one_line_and_leaves_nothing_torn(cli, small_disk):
    disk = small_disk(8)  # two pages: the lock file's and one, for a landscape of 600 doubles (4.8 kB)
    argv = ["phase-diagram", "--kind", "diagonal", "--n-examples", "600", "--dim", "1", "--etas", "0.5,1"]
    argv += ["--batch-sizes", "1", "--steps", "20", "--trajectories", "4", "--quiet", "--out", disk / "pd"]
    code, _, err = cli(*argv)
    assert code == 1
    assert error_line(err) == f"No space left on device ({disk / 'pd' / 'landscape.npz'})"
    assert sorted(p.name for p in (disk / "pd").iterdir()) == [".lock"]  # no torn landscape.npz, no .tmp
    small_disk.resize(disk, 4096)  # room made: the rerun works
    code, _, err = cli(*argv)
    assert code == 0, err
    assert (disk / "pd" / "phase_diagram.csv").is_file()


def test_a_full_disk_while_points_are_stored_names_the_store_and_the_rerun_completes(cli, small_disk):
    disk = small_disk(16)  # room for the lock, the landscape, the config and one page (4 kB) of the store
    argv = [*PD, "--steps", "20", "--etas", "0.2:3:12", "--out", disk / "pd"]
    code, _, err = cli(*argv)
    assert code == 1
    assert error_line(err) == f"No space left on device ({disk / 'pd' / 'sweep.jsonl'})"
    small_disk.resize(disk, 4096)
    code, _, err = cli(*argv)
    assert code == 0, err
    keys = [json.dumps(r["point"], sort_keys=True) for r in _stored(disk / "pd" / "sweep.jsonl")]
    assert len(keys) == len(set(keys)) == 3 + 12 * 3


DEEP = "[" * 200_000 + "]" * 200_000  # json.loads: RecursionError


def test_deep_json_in_a_phase_diagrams_config_is_one_line(tmp_path, cli):
    out = tmp_path / "pd"
    code, _, err = cli(*SMALL, "--etas", "0.5,1", "--out", out)
    assert code == 0, err
    (out / "phase_diagram.csv").unlink()
    for text in (DEEP, '{"a":' * 101 + "1" + "}" * 101):  # and nested 101 deep: within json's reach, past ours
        (out / "config.json").write_text(text)
        code, _, err = cli(*SMALL, "--etas", "0.5,1", "--out", out)
        assert code == 2
        assert error_line(err) == (
            f"{out / 'config.json'} is damaged (JSON nested deeper than 100 levels); delete it or choose another "
            "directory"
        )


def test_deep_lines_in_a_sweep_store_are_dropped_and_computed_again(tmp_path, cli):
    """A line nested 200,000 deep, and a record that json reads but that nests 500 deep (the store's
    rewrite overflowed on it), are damaged lines: dropped with a warning, their points computed again."""
    out = tmp_path / "pd"
    code, _, err = cli(*SMALL, "--etas", "0.5,1", "--out", out)
    assert code == 0, err
    store = out / "sweep.jsonl"
    lines = store.read_text().splitlines(keepends=True)
    deep_record = '{"point": {"task": "x", "a": ' + "[" * 500 + "]" * 500 + '}, "result": {}}\n'
    store.write_text(lines[0] + DEEP + "\n" + deep_record + "".join(lines[2:]))
    (out / "phase_diagram.csv").unlink()
    code, _, err = cli(*SMALL, "--etas", "0.5,1", "--out", out)
    assert code == 0, err
    assert err.splitlines() == [
        f"valleysim: warning: {store}: dropped 2 damaged line(s) (line 2, 3); their points are computed again"
    ]
    assert sorted(store.read_text().splitlines()) == sorted(s.rstrip("\n") for s in lines)  # line 1 recomputed


TRAIN = ["dnn", "train", "--model", "simplecnn", "--width", "0.125", "--batch", "4", "--max-steps", "2"]
TRAIN += ["--measure-size", "6", "--probes", "lanczos", "--top-k", "1", "--no-progress"]


@pytest.mark.parametrize(
    "text, damage",
    [
        (DEEP, "JSON nested deeper than 100 levels"),
        (
            '{"lr": 0.1,, "seed": 0}',
            "not valid JSON at line 1, column 12: Expecting property name enclosed in double quotes",
        ),
    ],
    ids=["deep", "invalid"],
)
def test_a_damaged_config_of_a_network_run_is_one_line(tmp_path, cli, monkeypatch, text, damage):
    data, _ = fake_batches_dir(tmp_path / "data")
    monkeypatch.setenv("VALLEYSIM_DATA_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    code, _, err = cli(*TRAIN, "--data", data, "--out", out)
    assert code == 0, err
    (out / "config.json").write_text(text)
    code, _, err = cli(*TRAIN, "--data", data, "--out", out)
    assert code == 2
    assert error_line(err) == f"{out / 'config.json'} is damaged ({damage}); delete it or choose another directory"
