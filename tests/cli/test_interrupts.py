"""A phase diagram killed (SIGKILL) or terminated (SIGTERM) mid-sweep leaves no pool worker running, and
what it finished stays in the store; a rerun completes the grid with every point once (issue 18)."""

import json
import signal
import time

import psutil
import pytest

ARGV = ("phase-diagram", "--kind", "dense", "--n-examples", "64", "--dim", "6", "--etas", "0.05:5:12")
SLOW = ("--batch-sizes", "1,2,4", "--trajectories", "256", "--steps", "4000", "--workers", "2", "--quiet")


def _wait_for_workers(proc, n=2, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        kids = [k for k in psutil.Process(proc.pid).children(recursive=True) if "spawn" in " ".join(k.cmdline())]
        if len(kids) >= n:
            return kids
        time.sleep(0.2)
    raise AssertionError("the pool's workers did not start")


def _gone(procs, timeout=15):
    gone, alive = psutil.wait_procs(procs, timeout=timeout)
    return not alive


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_exit_with_the_command(installed, tmp_path, sig):
    proc = installed.popen(*ARGV, *SLOW, "--out", "pd")
    workers = _wait_for_workers(proc)
    store = tmp_path / "pd" / "sweep.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (store.exists() and store.read_text().count("\n") >= 1):
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert _gone(workers), f"pool workers outlived the command after {sig.name}"
    done = [json.loads(line) for line in store.read_text().splitlines()]
    assert done and all("result" in r for r in done)
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM and b"Traceback" not in err
