"""Runs that would mix data (issue 27, item 5), through the real ``valleysim dnn`` commands: the data a run
or a study was trained on is part of its identity, by content (a moved copy of the same tar is the same
data); a study directory knows which study it holds; a run's start (``--init-from``) is identified by its
content, so a moved weights file still resumes and a rewritten one is refused."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "dnn"))
from tiny_nets import noise_images  # noqa: E402

TRAIN = ["dnn", "train", "--model", "simplecnn", "--width", "0.125", "--batch", "4", "--measure-size", "4"]
TRAIN += ["--probes", "lanczos", "--top-k", "1", "--no-progress", "--test-size", "4"]
STUDY = ["dnn", "study", "break-even", "--preset", "smoke", "--seeds", "1", "--no-progress"]


def cifar_tar(path: Path, seed: int, n_train: int = 16, n_test: int = 4) -> Path:
    """An image-folder tar of noise PNGs (decoded exactly), two classes; another seed, other images."""
    with tarfile.open(path, "w") as tf:
        for split, n in (("train", n_train), ("test", n_test)):
            for i, img in enumerate(noise_images(n, seed + (split == "test"))):
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")
                info = tarfile.TarInfo(f"{split}/{('cat', 'dog')[i % 2]}/{i}.png")
                info.size = len(buf.getvalue())
                tf.addfile(info, io.BytesIO(buf.getvalue()))
    return path


@pytest.fixture
def tars(tmp_path, monkeypatch):
    """Two tars of different images, and the decoded-array cache under tmp_path (inherited by the commands)."""
    monkeypatch.setenv("VALLEYSIM_DATA_CACHE", str(tmp_path / "cache"))
    return cifar_tar(tmp_path / "a.tar", 0), cifar_tar(tmp_path / "b.tar", 10)


def refused(result, *words) -> str:
    """The error line of ``cli(...)`` (code, out, err) that must be a one-line refusal naming ``words``."""
    code, _, err = result
    assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err[-3000:]
    for w in words:
        assert w in err, err
    return err


def test_a_killed_run_resumes_only_on_its_own_data(tmp_path, monkeypatch, installed, cli, tars):
    """`dnn train` SIGKILLed after its first row: resumed on another tar it is refused (one line naming the
    run directory and --data, nothing written); resumed on a moved copy of its own tar it finishes; the
    finished run reopened on the other tar is refused as well."""
    a, b = tars
    argv = [*TRAIN, "--epochs", "10", "--max-steps", "30", "--probe-every", "5", "--no-probe-epochs", "--out", "run"]
    proc = installed.popen(*argv, "--data", a)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and metrics.read_bytes().count(b"\n") >= 1):
        time.sleep(0.005)
    proc.kill()
    proc.communicate()
    rows = metrics.read_bytes()
    assert 1 <= rows.count(b"\n") < 7, "the run was not killed part way"
    monkeypatch.chdir(tmp_path)
    refused(cli(*argv, "--data", b), "run holds a run trained on other data", "--data")
    assert metrics.read_bytes() == rows
    moved = tmp_path / "elsewhere" / "renamed.tar"
    moved.parent.mkdir()
    shutil.copy(a, moved)
    code, out, err = cli(*argv, "--data", moved)
    assert code == 0 and '"step": 30' in out and "7 rows" in out, err[-3000:]
    finished = {p: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    refused(cli(*argv, "--data", b), "run holds a run trained on other data")
    assert {p: p.read_bytes() for p in finished} == finished


def test_the_start_of_a_run_is_its_weights_not_their_path(tmp_path, monkeypatch, cli, tars):
    """--init-from by content: the same weights under another path reopen the finished run; other weights
    under the first path are refused (the old code did the opposite)."""
    import torch

    from dnn.models import build_model

    a, _ = tars
    monkeypatch.chdir(tmp_path)
    for seed, name in ((0, "w.pt"), (1, "other.pt")):
        torch.save(build_model("simplecnn", width=0.125, seed=seed).state_dict(), name)
    argv = [*TRAIN, "--max-steps", "2", "--data", a, "--out", "run"]
    first = cli(*argv, "--init-from", "w.pt")
    assert first[0] == 0, first[2][-3000:]
    os.rename("w.pt", "moved.pt")
    assert cli(*argv, "--init-from", "moved.pt") == first
    shutil.copy("other.pt", "moved.pt")
    refused(cli(*argv, "--init-from", "moved.pt"), "run holds a run with a different configuration", "init_from")


def test_a_study_directory_holds_one_study_on_one_data(tmp_path, monkeypatch, cli, tars):
    """A break-even study (the smoke preset cut to one run, from Python, on the tar's arrays): `dnn study
    break-even` resumed on another tar is refused (one line naming the directory and --data) instead of
    reading its finished run back and adding the others; `dnn study walk` into it is refused instead of
    overwriting its per_run.csv, summary.json and report.md."""
    import dataclasses

    from dnn import break_even_study as bes
    from dnn.data import DataSource

    a, b = tars
    monkeypatch.chdir(tmp_path)
    source = DataSource(str(a))  # what the command loads from --data a
    one_run = dataclasses.replace(
        bes.PRESETS["smoke"], bn_lr_grid=(), lr_grid=(0.05,), batch_grid=(8,), seeds=1, edge_sizes=()
    )
    bes.run(one_run, "st", *source.load("train"), test=source.load("test"), progress=False)
    study = json.loads(Path("st/study.json").read_text())
    assert study["study"] == "break-even" and study["preset"] == "smoke"
    results = {p: p.read_bytes() for p in Path("st").rglob("*") if p.is_file()}
    assert {"per_run.csv", "summary.json", "report.md"} <= {p.name for p in results}
    refused(cli(*STUDY, "--data", b, "--out", "st"), "st holds a break-even study of other data", "--data")
    walk = cli("dnn", "study", "walk", "--preset", "smoke", "--no-progress", "--data", a, "--out", "st")
    refused(walk, "st holds the break-even study with preset smoke, not the walk study")
    assert {p: p.read_bytes() for p in Path("st").rglob("*") if p.is_file()} == results
