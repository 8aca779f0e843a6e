"""``valleysim dnn train`` options are generated from TrainConfig: one per field, typed and range-checked."""

import argparse
import dataclasses
import subprocess
import sys

import pytest

from dnn.cli import config_from_args
from dnn.train import TrainConfig
from valleysim.cli import build_parser, main

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


def _subparser(p: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[name]


def _config(*argv: str) -> TrainConfig:
    return config_from_args(build_parser().parse_args(["dnn", "train", "--out", "r", *argv]))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_field_has_exactly_one_option():
    actions = _subparser(_subparser(build_parser(), "dnn"), "train")._actions
    for name in FIELDS:
        assert [a.dest for a in actions].count(name) == 1, name
    flags = {a.dest: a.option_strings for a in actions}
    assert flags["lr"] == ["--eta", "--lr"]
    assert flags["augment"] == ["--no-augment"] and flags["probe_epochs"] == ["--no-probe-epochs"]
    assert flags["channels_last"] == ["--channels-last"] and flags["init_from"] == ["--init-from"]
    assert {"data", "label_order", "out", "no_progress"} <= set(flags)


def test_no_options_give_the_default_config(workdir):
    assert _config() == TrainConfig()


def test_every_field_can_be_set(workdir):
    (workdir / "init.pt").write_bytes(b"")
    argv = [
        "--model",
        "vgg11-bn",
        "--width",
        "0.5",
        "--optimizer",
        "gd-noise",
        "--eta",
        "0.2",
        "--batch",
        "64",
        "--momentum",
        "0.9",
        "--weight-decay",
        "5e-4",
        "--epochs",
        "3",
        "--max-steps",
        "40",
        "--n-train",
        "1000",
        "--no-augment",
        "--no-drop-last",
        "--test-size",
        "100",
        "--nsgd-gamma",
        "0.5",
        "--nsgd-k",
        "2",
        "--nsgd-every",
        "20",
        "--noise-std",
        "0.1",
        "--probes",
        "lanczos, trace,step",
        "--probe-params",
        "features.0,*.bias",
        "--probe-every",
        "10",
        "--no-probe-epochs",
        "--probe-acc",
        "0.5,0.8",
        "--acc-window",
        "20",
        "--measure-fraction",
        "0.1",
        "--measure-size",
        "256",
        "--measure-dtype",
        "float64",
        "--bn",
        "batch",
        "--top-k",
        "3",
        "--lanczos-tol",
        "1e-4",
        "--lanczos-max-iter",
        "50",
        "--hutchinson-samples",
        "20",
        "--slq-starts",
        "3",
        "--slq-steps",
        "12",
        "--slq-rel-threshold",
        "0.01",
        "--cov-batches",
        "10",
        "--cov-batch",
        "32",
        "--label-smoothing",
        "0.1",
        "--loss",
        "mse",
        "--loss-change-batches",
        "4",
        "--keep-every",
        "5",
        "--seed",
        "7",
        "--init-from",
        "init.pt",
        "--device",
        "cpu:0",
        "--channels-last",
        "on",
    ]
    expected = dict(
        model="vgg11-bn",
        width=0.5,
        optimizer="gd-noise",
        lr=0.2,
        batch=64,
        momentum=0.9,
        weight_decay=5e-4,
        epochs=3,
        max_steps=40,
        n_train=1000,
        augment=False,
        label_smoothing=0.1,
        loss="mse",
        drop_last=False,
        test_size=100,
        nsgd_gamma=0.5,
        nsgd_k=2,
        nsgd_every=20,
        noise_std=0.1,
        probes=("lanczos", "trace", "step"),
        probe_params="features.0,*.bias",
        probe_every=10,
        probe_epochs=False,
        probe_acc=(0.5, 0.8),
        acc_window=20,
        measure_fraction=0.1,
        measure_size=256,
        measure_dtype="float64",
        bn="batch",
        top_k=3,
        lanczos_tol=1e-4,
        lanczos_max_iter=50,
        hutchinson_samples=20,
        slq_starts=3,
        slq_steps=12,
        slq_rel_threshold=0.01,
        cov_batches=10,
        cov_batch=32,
        loss_change_batches=4,
        keep_every=5,
        seed=7,
        init_from="init.pt",
        device="cpu:0",
        channels_last=True,
    )
    assert list(expected) == FIELDS
    assert all(expected[f.name] != f.default for f in dataclasses.fields(TrainConfig))
    got = _config(*argv).as_dict()
    assert got == expected
    assert {k: type(v) for k, v in got.items()} == {k: type(v) for k, v in expected.items()}


def test_eta_and_lr_are_the_same_option(workdir):
    assert _config("--lr", "0.1") == _config("--eta", "0.1") == TrainConfig(lr=0.1)


@pytest.mark.parametrize(
    "argv, field, value",
    [
        ([], "augment", True),
        (["--no-augment"], "augment", False),
        ([], "probe_epochs", True),
        (["--no-probe-epochs"], "probe_epochs", False),
        ([], "channels_last", None),
        (["--channels-last", "auto"], "channels_last", None),
        (["--channels-last", "on"], "channels_last", True),
        (["--channels-last", "off"], "channels_last", False),
    ],
)
def test_flags_and_the_tri_state(workdir, argv, field, value):
    assert getattr(_config(*argv), field) is value


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lanczos-tol", "-1"], "argument --lanczos-tol: must be a finite number > 0"),
        (["--acc-window", "0"], "argument --acc-window: must be an integer >= 1"),
        (["--lanczos-max-iter", "1.5"], "argument --lanczos-max-iter: must be an integer"),
        (["--loss-change-batches", "0"], "argument --loss-change-batches: must be an integer >= 1"),
        (["--init-from", "missing.pt"], "argument --init-from: no such file 'missing.pt'"),
        (["--channels-last", "maybe"], "argument --channels-last: invalid choice: 'maybe'"),
        (["--eta", "0"], "argument --eta: must be a finite number > 0"),
        (["--lr", "-1"], "argument --lr: must be a finite number > 0"),
        (["--probe-every", "-1"], "argument --probe-every: must be an integer >= 0"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_flag(workdir, capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(["dnn", "train", "--out", "r", *argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith(f"valleysim dnn train: error: {message}") and err.count("\n") == 1, err
    assert list(workdir.iterdir()) == []


def test_a_bad_probe_acc_names_the_flag_and_the_entry(workdir, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["dnn", "train", "--out", "r", "--probe-acc", "0.5,2"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.startswith(
        "valleysim dnn train: error: argument --probe-acc: must be a comma "
        "list of accuracies in (0, 1]; got '0.5,2' (entry '2')"
    )


def test_the_parser_does_not_import_torch():
    code = "import sys; from valleysim.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == "False\n", proc.stderr
