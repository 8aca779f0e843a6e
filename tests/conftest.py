"""Shared test configuration: hypothesis without deadlines (numba compiles on first call), derandomized.

Derandomized: the examples are a function of the test, so CI is reproducible;
`pytest --hypothesis-profile=explore` draws new ones (and more of them).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "valleysim", deadline=None, max_examples=40, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("explore", deadline=None, max_examples=400, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("valleysim")


@pytest.fixture(scope="module")
def torch_one_thread():
    """One torch thread for the module (tiny tensors: faster, and steady when xdist runs 2 workers)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def cli(capsys):
    """The valleysim command in-process: cli(*argv) -> (exit code, stdout, stderr); usage errors that
    argparse reports by exiting come back as their exit code."""
    from valleysim.cli import main

    def run(*argv):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


VALLEYSIM = [sys.executable, "-m", "valleysim"]  # the command as a user runs it, in a separate process


@pytest.fixture
def installed(tmp_path):
    """The valleysim command in its own process, in ``tmp_path``: installed(*argv) -> CompletedProcess
    (text stdout / stderr); ``installed.popen(*argv)`` gives the raw Popen (byte pipes)."""

    def run(*argv, timeout: float = 300):
        return subprocess.run(
            [*VALLEYSIM, *map(str, argv)], cwd=tmp_path, capture_output=True, text=True, timeout=timeout
        )

    run.popen = lambda *argv: subprocess.Popen(
        [*VALLEYSIM, *map(str, argv)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    return run


FIGURES = Path(__file__).resolve().parents[1] / "figures"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def figure(tmp_path):
    """A figure script in its own process: figure(name, *argv) runs ``figures/<name>.py --quick --out
    tmp_path *argv``, checks that it wrote a PNG, and returns its JSON data (its stdout: ``figure.stdout``)."""

    def run(name: str, *argv) -> dict:
        res = subprocess.run(
            [sys.executable, str(FIGURES / f"{name}.py"), "--quick", "--out", str(tmp_path), *map(str, argv)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
        run.stdout = res.stdout
        png = tmp_path / f"{name}.png"
        assert png.stat().st_size > 10_000 and png.read_bytes()[:8] == PNG
        return json.loads((tmp_path / f"{name}.json").read_text())

    return run
