"""Reopening a finished run needs no write access (issue 18): rerunning ``phase-diagram`` on a finished
diagram and ``dnn train`` on a finished run prints the summary and writes nothing, no lock file either.

Three ways to catch a write, since root ignores permission bits: (a) every file's bytes and mtime (and the
directory's) before and after; (b) the command run in-process with every opening-for-write, rename, unlink
and mkdir under the directory recorded and refused; (c) where this process may mount, the directory
bind-mounted read-only and the real command run on it. A run that is not finished, in a read-only
directory, is one named line and exit 2."""

from __future__ import annotations

import builtins
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dnn"))
from tiny_nets import fake_batches_dir  # noqa: E402

PHASE = ["phase-diagram", "--etas", "0.1,1", "--batch-sizes", "1,2", "--trajectories", "4", "--steps", "10"]
PHASE += ["--quiet"]
TRAIN = ["dnn", "train", "--model", "simplecnn", "--width", "0.125", "--batch", "4", "--max-steps", "3"]
TRAIN += ["--measure-size", "6", "--probes", "lanczos", "--top-k", "1", "--no-progress"]

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | getattr(os, "O_TMPFILE", 0)


def snapshot(d: Path) -> dict:
    """{relative path: (mtime_ns, bytes)} of d and everything under it."""
    out = {".": (d.stat().st_mtime_ns, None)}
    for p in sorted(d.rglob("*")):
        st = p.stat()
        out[str(p.relative_to(d))] = (st.st_mtime_ns, p.read_bytes() if p.is_file() else None)
    return out


@pytest.fixture
def no_writes_under(monkeypatch):
    """no_writes_under(d) -> list: from then on every attempt to write under d is recorded there and
    raises PermissionError (what a read-only directory would answer)."""

    def install(d: Path) -> list:
        root, tried = str(d.resolve()), []

        def under(path) -> bool:
            try:
                return os.path.abspath(os.fspath(path)).startswith(root)
            except TypeError:  # a file descriptor
                return False

        def refuse(what, path):
            tried.append(f"{what} {path}")
            raise PermissionError(13, "Permission denied (test: read-only)", str(path))

        real_open, real_os_open = builtins.open, os.open

        def guarded_open(file, mode="r", *a, **kw):
            if any(c in mode for c in "wax+") and under(file):
                refuse(f"open({mode!r})", file)
            return real_open(file, mode, *a, **kw)

        def guarded_os_open(path, flags, *a, **kw):
            if flags & _WRITE_FLAGS and under(path):
                refuse("os.open", path)
            return real_os_open(path, flags, *a, **kw)

        monkeypatch.setattr(builtins, "open", guarded_open)
        monkeypatch.setattr(io, "open", guarded_open)
        monkeypatch.setattr(os, "open", guarded_os_open)
        for name in ("replace", "rename", "unlink", "remove", "mkdir", "rmdir", "truncate"):
            real = getattr(os, name)

            def guarded(path, *a, _real=real, _name=name, **kw):
                if under(path):
                    refuse(f"os.{_name}", path)
                return _real(path, *a, **kw)

            monkeypatch.setattr(os, name, guarded)
        return tried

    return install


def _read_only_mount(src: Path, dst: Path) -> bool:
    dst.mkdir()
    ok = subprocess.run(["mount", "--bind", str(src), str(dst)], capture_output=True).returncode == 0
    if ok and subprocess.run(["mount", "-o", "remount,bind,ro", str(dst)], capture_output=True).returncode:
        subprocess.run(["umount", str(dst)], capture_output=True)
        ok = False
    return ok


@pytest.fixture
def read_only_view(tmp_path):
    """read_only_view(d) -> a read-only bind mount of d (skips where this process cannot mount)."""
    mounts = []

    def make(src: Path) -> Path:
        dst = tmp_path / f"ro{len(mounts)}"
        if not _read_only_mount(src, dst):
            pytest.skip("cannot bind-mount read-only here (needs root and mount rights)")
        mounts.append(dst)
        try:
            (dst / "probe").touch()
        except OSError:
            return dst
        pytest.skip("the read-only bind mount accepts writes")

    yield make
    for m in mounts:
        subprocess.run(["umount", str(m)], capture_output=True)


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    d, _ = fake_batches_dir(tmp_path / "data")
    monkeypatch.setenv("VALLEYSIM_DATA_CACHE", str(tmp_path / "cache"))
    return ["--data", str(d)]


# ------------------------------------------------------------------ phase-diagram


def test_a_finished_phase_diagram_reopens_without_writing(tmp_path, cli, no_writes_under):
    out = tmp_path / "pd"
    code, first, err = cli(*PHASE, "--out", out)
    assert code == 0, err
    before = snapshot(out)
    tried = no_writes_under(out)
    code, again, err = cli(*PHASE, "--out", out)
    assert code == 0 and again == first and err == "", err
    assert tried == [] and snapshot(out) == before


def test_an_unfinished_phase_diagram_still_writes(tmp_path, cli):
    """The read-only path is taken only when nothing is missing: a lost figure or a torn store line is
    redone."""
    out = tmp_path / "pd"
    assert cli(*PHASE, "--out", out)[0] == 0
    (out / "phase_diagram.png").unlink()
    assert cli(*PHASE, "--out", out)[0] == 0 and (out / "phase_diagram.png").stat().st_size > 1000
    store = out / "sweep.jsonl"
    store.write_bytes(store.read_bytes() + b'{"point": {"task"')
    csv = (out / "phase_diagram.csv").read_bytes()
    assert cli(*PHASE, "--out", out)[0] == 0
    assert store.read_bytes().endswith(b"}\n") and (out / "phase_diagram.csv").read_bytes() == csv


def test_phase_diagram_on_a_read_only_mount(tmp_path, installed, read_only_view):
    assert installed(*PHASE, "--out", "pd").returncode == 0
    ro = read_only_view(tmp_path / "pd")
    before = snapshot(ro)
    done = installed(*PHASE, "--out", ro)
    assert done.returncode == 0 and "4 grid points" in done.stdout and done.stderr == "", done.stderr
    assert snapshot(ro) == before
    more = installed(*PHASE[:2], "0.1,1,3", *PHASE[3:], "--out", ro)  # a grid with points still to compute
    assert more.returncode == 2 and "Traceback" not in more.stderr and more.stderr.count("\n") == 1
    assert "is not writable" in more.stderr and "its sweep is not finished" in more.stderr, more.stderr


# ------------------------------------------------------------------ dnn train


def test_a_finished_training_run_reopens_without_writing(tmp_path, cli, cifar, no_writes_under):
    out = tmp_path / "run"
    code, first, err = cli(*TRAIN, *cifar, "--out", out)
    assert code == 0, err
    (out / ".lock").unlink()  # the lock file is a write of its own: it must not come back
    before = snapshot(out)
    tried = no_writes_under(out)
    code, again, err = cli(*TRAIN, *cifar, "--out", out)
    assert code == 0 and again == first and '"step": 3' in again and err == "", err
    assert tried == [] and snapshot(out) == before
    # a different configuration is refused by name, still without a write
    code, _, err = cli(*TRAIN, *cifar, "--lr", "0.5", "--out", out)
    assert code == 2 and "different configuration (differs in: lr)" in err and tried == []


def test_an_unfinished_run_in_an_unwritable_directory_is_one_named_line(tmp_path, cli, cifar, no_writes_under):
    """A run that is started but not finished (its config only) must write to resume: where it cannot,
    the refusal names the directory and why, before any work."""
    out = tmp_path / "run"
    assert cli(*TRAIN, *cifar, "--out", out)[0] == 0
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.json").write_bytes((out / "config.json").read_bytes())
    tried = no_writes_under(started)
    code, _, err = cli(*TRAIN, *cifar, "--out", started)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "is not writable" in err and "its run is not finished" in err, err
    assert sorted(p.name for p in started.iterdir()) == ["config.json"]
    assert tried and all(t.endswith(f" {started}") for t in tried), tried  # the writability probe only


def test_training_run_on_a_read_only_mount(tmp_path, installed, cifar, read_only_view):
    assert installed(*TRAIN, *cifar, "--out", "run").returncode == 0
    ro = read_only_view(tmp_path / "run")
    before = snapshot(ro)
    done = installed(*TRAIN, *cifar, "--out", ro)
    assert done.returncode == 0 and '"step": 3' in done.stdout and "Traceback" not in done.stderr, done.stderr
    assert snapshot(ro) == before
    # a run that is started but not finished (its config only) cannot resume there: one named line
    started = tmp_path / "started"
    started.mkdir()
    (started / "config.json").write_bytes((tmp_path / "run" / "config.json").read_bytes())
    ro2 = read_only_view(started)
    code = installed(*TRAIN, *cifar, "--out", ro2)
    assert code.returncode == 2 and code.stderr.count("\n") == 1 and "Traceback" not in code.stderr
    assert "is not writable" in code.stderr and "its run is not finished" in code.stderr, code.stderr
