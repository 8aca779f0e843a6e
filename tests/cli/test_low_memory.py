"""Under an address-space limit (ulimit -v) a command ends at once with one line (issue 27): before, at 400 MB
``stability`` spun forever in OpenBLAS's buffer allocation while scipy loaded, deaf to Ctrl-C; at 500 MB
it was an ImportError traceback."""

import resource
import subprocess
import sys

import pytest

from valleysim.memory import address_space_needed

STABILITY = ("stability", "--eta", "0.5", "--batch", "2")


def _limited(mb: int, *argv, cwd):
    """``valleysim *argv`` under RLIMIT_AS = ``mb`` MB (a hang fails the test by its timeout)."""

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (mb << 20, mb << 20))

    return subprocess.run(
        [sys.executable, "-m", "valleysim", *argv],
        cwd=cwd,
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("mb", [400, 500])
def test_an_address_space_too_small_is_one_line(tmp_path, mb):
    res = _limited(mb, *STABILITY, cwd=tmp_path)
    need, _ = address_space_needed(networks=False)
    assert res.returncode == 1 and res.stdout == "" and res.stderr.count("\n") == 1, res.stderr[-2000:]
    assert res.stderr.startswith(f"valleysim: error: out of memory (the address space is limited to {mb}.0 MB")
    assert f"needs about {need / 2**20:.1f} MB" in res.stderr


@pytest.mark.parametrize(
    "argv",
    [
        (*STABILITY, "--simulate"),
        (
            "valley",
            "--loss",
            "exp-toy",
            "--noise-scale",
            "0.05",
            "--eta",
            "0.1",
            "--steps",
            "50",
            "--burn-in",
            "5",
            "--trajectories",
            "16",
        ),
        ("walk", "--steps", "100", "--trajectories", "4"),
    ],
    ids=["stability", "valley", "walk"],
)
def test_the_toys_run_at_the_minimum_they_state(tmp_path, argv):
    need, _ = address_space_needed(networks=False)
    res = _limited(need >> 20, *argv, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]


def test_arrays_beyond_the_address_space_left_are_refused_before_the_run(tmp_path):
    """check_fits counts what ulimit -v leaves, not only the machine's free memory."""
    need, _ = address_space_needed(networks=False)
    res = _limited((need >> 20) + 200, *STABILITY, "--simulate", "--trajectories", "2000000", cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr[-2000:]
    assert "2000000 trajectories of 12 steps" in res.stderr and "available" in res.stderr


def test_a_library_that_cannot_be_mapped_is_one_line(capsys):
    """Past the check (a limit met, a later import larger than measured): dlopen's refusal is out of memory."""
    from valleysim.errors import report_errors

    def run():
        raise ImportError("/x/_qhull.so: failed to map segment from shared object")

    assert report_errors(run) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("valleysim: error: out of memory (/x/_qhull.so: failed to map segment") and err.count("\n") == 1
    )

    def missing():
        raise ImportError("No module named 'nothing'")

    with pytest.raises(ImportError):  # any other ImportError is a bug to show, not a machine limit
        report_errors(missing)
