"""A phase diagram killed (SIGKILL) or terminated (SIGTERM) mid-sweep leaves no pool worker running, and
what it finished stays in the store; a rerun completes the grid with every point once (issue 18)."""

import json
import os
import signal
import subprocess
import sys
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


# --- a signal during a long numba kernel, or while numba compiles (issue 27) ---------------------------

KEPT = "(finished points and checkpoints are kept; rerun to resume)"
LINE = {signal.SIGINT: (130, f"valleysim: interrupted {KEPT}"), signal.SIGTERM: (143, f"valleysim: terminated {KEPT}")}
VALLEYSIM = (sys.executable, "-m", "valleysim")  # as conftest's `installed` runs it
VALLEY = ("valley", "--loss", "(1 + a**2)*x**2/2", "--nondegenerate", "x", "--degenerate", "a", "--init", "a=1")
VALLEY += ("--noise-scale", "0.05", "--eta", "0.01", "--trajectories", "16")  # stays in the valley for ever


def _start(argv, cwd, env=None):
    """``argv`` in its own process with Ctrl-C's default action (a parent that ignores SIGINT, as a shell's
    background job does, would pass that on)."""
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def _signalled(proc, sig, after: float, within: float = 10.0):
    """Send ``sig`` ``after`` seconds from now; (exit code, stdout, stderr, seconds it took to end)."""
    time.sleep(after)
    sent = time.time()
    proc.send_signal(sig)
    try:
        out, err = proc.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"still running {within} s after {sig.name}") from None
    return proc.returncode, out.decode(), err.decode(), time.time() - sent


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory):
    """A kernel cache holding VALLEY's compiled kernel, so the runs below are in the kernel within seconds."""
    cache = tmp_path_factory.mktemp("kernels")
    env = {**os.environ, "VALLEYSIM_CACHE": str(cache)}
    subprocess.run([*VALLEYSIM, *VALLEY, "--steps", "10", "--burn-in", "0"], env=env, check=True, timeout=600)
    return env


@pytest.mark.parametrize(
    "argv, sig",
    [
        (("stability", "--eta", "0.5", "--batch", "2", "--simulate", "--steps", "1e12"), signal.SIGINT),
        (("stability", "--eta", "0.5", "--batch", "2", "--simulate", "--steps", "1e12"), signal.SIGTERM),
        ((*VALLEY, "--steps", str(10**12)), signal.SIGINT),
        ((*VALLEY, "--steps", str(10**12)), signal.SIGTERM),
        (
            ("break-even", "--eta", "0.1", "--batch", "4", "--steps", str(10**12), "--trajectories", "16"),
            signal.SIGTERM,
        ),
        (("walk", "--steps", str(10**8), "--trajectories", "64"), signal.SIGINT),
    ],
    ids=["stability-INT", "stability-TERM", "valley-INT", "valley-TERM", "break-even-TERM", "walk-INT"],
)
def test_a_long_kernel_ends_on_a_signal(tmp_path, warm_cache, argv, sig):
    """The kernels run in chunks of about 0.2 s: the signal ends the command within seconds, with its exit
    code and one line (before: ran on for hours; SIGTERM: no line)."""
    proc = _start([*VALLEYSIM, *argv], tmp_path, warm_cache)
    code, out, err, took = _signalled(proc, sig, after=8.0)
    assert (code, err.strip()) == LINE[sig] and out == "" and took < 5.0, (code, err, took)


PYTHON_RUNS = {
    "quadratic": "from valleysim import quadratic as Q; q = Q.generate('diagonal', 32, 1)\n"
    "run = lambda steps: Q.simulate(q, 0.5, 2, steps=steps)",
    "valley": "from valleysim import valley as V\n"
    "L = V.ValleyLandscape.from_strings('(1 + a**2)*x**2/2', 'x', 'a', 'a=1')\n"
    "run = lambda steps: V.simulate(L, V.make_noise(L, 'sgd', scale=0.05), 0.01, steps=steps, trajectories=16)",
    "walk": "from valleysim import walk as W; L = W.WalkLandscape.make()\n"
    "run = lambda steps: W.simulate(L, 0.5, 4, steps=steps, n_rec=0)",
    "break_even": "from valleysim import break_even as B; L = B.SharpeningLandscape.make()\n"
    "run = lambda steps: B.simulate(L, 0.1, 4, steps=steps)",
}


@pytest.mark.parametrize("toy", PYTHON_RUNS)
def test_ctrl_c_stops_simulate_from_python(tmp_path, warm_cache, toy):
    """A notebook's interrupt (SIGINT) raises KeyboardInterrupt out of simulate() within a chunk."""
    script = (
        f"{PYTHON_RUNS[toy]}\nrun(10)\nprint('start', flush=True)\n"  # compiled (or loaded) before the long run
        f"try:\n    run({10**8 if toy == 'walk' else 10**12})\nexcept KeyboardInterrupt:\n    print('caught')\n"
    )
    proc = _start([sys.executable, "-c", script], tmp_path, warm_cache)
    assert proc.stdout.readline() == b"start\n"
    code, out, err, took = _signalled(proc, signal.SIGINT, after=2.0)
    assert (code, out, err) == (0, "caught\n", "") and took < 5.0, (code, out, err, took)


@pytest.mark.parametrize("after", [0.5, 1.0, 2.0, 4.0, 7.0])
def test_sigterm_while_numba_compiles_ends_the_command(tmp_path, after):
    """Empty caches: the signal lands in the imports or in numba's compiler (some of it in llvmlite's ctypes
    callbacks, where Python drops an exception: before, "Exception ignored ... SystemExit: 143" and exit 0)."""
    env = {**os.environ, "VALLEYSIM_CACHE": str(tmp_path / "cache"), "NUMBA_CACHE_DIR": str(tmp_path / "numba")}
    proc = _start([*VALLEYSIM, *VALLEY, "--steps", "100", "--burn-in", "0"], tmp_path, env)
    code, out, err, took = _signalled(proc, signal.SIGTERM, after=after, within=30.0)
    assert (code, err.strip()) == LINE[signal.SIGTERM], (code, err)


@pytest.mark.parametrize("after", [0.2, 0.5, 1.0, 1.5])
def test_ctrl_c_while_the_command_loads_is_one_line(tmp_path, after):
    """Ctrl-C in the imports (numpy, scipy, sympy, numba) waits until they have loaded: before, a
    KeyboardInterrupt traceback, numpy's "do not import numpy from its source directory" ImportError, or the
    line and then an exit by SIGINT."""
    proc = _start([*VALLEYSIM, "walk", "--steps", str(10**8)], tmp_path)
    code, out, err, took = _signalled(proc, signal.SIGINT, after=after)
    assert (code, err.strip()) == LINE[signal.SIGINT], (code, err)


CALLBACK_SWALLOWS = """
import ctypes, os, signal, sys, time
import valleysim.cli.walk as W

def walk(args):  # the command: a SIGTERM arrives while a C library calls back into Python
    def callback():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # the handler runs here, inside the callback
    ctypes.CFUNCTYPE(None)(callback)()
    time.sleep(5)
    print("ran on")
    return 0

W.cmd_walk = walk
from valleysim.cli import main
sys.exit(main(["walk"]))
"""


def test_a_signal_dropped_in_a_callback_is_sent_again(tmp_path):
    """Python drops (prints as "ignored") an exception raised in a ctypes callback; the command sends the
    signal again, so it still ends at once with 143 and its line (before: ran on, exit 0)."""
    res = subprocess.run([sys.executable, "-c", CALLBACK_SWALLOWS], capture_output=True, text=True, timeout=60)
    assert (res.returncode, res.stdout, res.stderr.strip()) == (143, "", LINE[signal.SIGTERM][1])
