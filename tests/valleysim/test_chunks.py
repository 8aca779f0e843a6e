"""Every toy's kernel runs in chunks of steps (valleysim.chunks): any chunking gives the numbers of one
kernel call, bit for bit, records at the same steps, divergences and stops included."""

import math
from dataclasses import fields

import numpy as np
import pytest

from valleysim import chunks


def _one_call(advance, begin, end):
    advance(begin, end)


def _ragged(advance, begin, end):
    """Chunks of 1, 2, 3, 1, 2, 3, ... steps."""
    t, n = begin, 0
    while t < end:
        t1 = min(end, t + 1 + n % 3)
        advance(t, t1)
        t, n = t1, n + 1


def _arrays(result) -> dict:
    items = result.items() if isinstance(result, dict) else ((f.name, getattr(result, f.name)) for f in fields(result))
    return {k: v for k, v in items if isinstance(v, np.ndarray)}


def _same_for_any_chunking(monkeypatch, run):
    """run() under one kernel call, chunks of 1-3 steps and the default chunking: identical arrays."""
    monkeypatch.setattr(chunks, "run_in_chunks", _one_call)
    whole = _arrays(run())
    monkeypatch.setattr(chunks, "run_in_chunks", _ragged)
    ragged = _arrays(run())
    monkeypatch.undo()
    default = _arrays(run())
    assert whole.keys() == ragged.keys() == default.keys() and whole
    for name, value in whole.items():
        for other in (ragged[name], default[name]):
            assert other.dtype == value.dtype and np.array_equal(value, other, equal_nan=True), name
    return whole


@pytest.mark.parametrize("kind", ["dense", "diagonal", "rank_one"])
@pytest.mark.parametrize("scheme", ["without_replacement", "with_replacement", "reshuffle"])
@pytest.mark.parametrize("renormalize", [False, True])
def test_quadratic(monkeypatch, kind, scheme, renormalize):
    from valleysim.quadratic.integrator import simulate
    from valleysim.quadratic.landscape import generate

    q = generate(kind, 12, 5, seed=3)
    kw = dict(steps=40, trajectories=300, seed=5, scheme=scheme, renormalize=renormalize, record_every=7)
    eta = 1.0 if renormalize else 2.5  # 2.5: most trajectories pass 1e6 (the records from then on are inf)
    out = _same_for_any_chunking(monkeypatch, lambda: simulate(q, eta, 3, divergence_threshold=1e6, **kw))
    assert (out["diverged_step"] >= 0).any() != renormalize


@pytest.mark.parametrize(
    "name, noise",
    [("exp-toy", "isotropic"), ("abs-toy", "isotropic"), ("regression-valley", "minibatch")],
)
def test_valley(monkeypatch, name, noise):
    from valleysim.valley import catalogue, make_noise
    from valleysim.valley.sim import simulate

    land = catalogue(name)
    nm = make_noise(land, noise, S=2) if noise == "minibatch" else make_noise(land, noise, scale=3.0)
    out = _same_for_any_chunking(
        monkeypatch, lambda: simulate(land, nm, 0.1, steps=60, burn_in=9, trajectories=32, seed=1, record_every=4)
    )
    if name == "abs-toy":  # trajectories that stop (at a kink) stop at the same step
        assert 0 < (out["status"] >= 0).sum() < 32


@pytest.mark.parametrize("optimizer", ["gd", "sgd", "gd-noise"])
def test_walk(monkeypatch, optimizer):
    from valleysim.walk import WalkLandscape
    from valleysim.walk.sim import simulate

    land = WalkLandscape.make(n_examples=8, seed=3)
    _same_for_any_chunking(
        monkeypatch,
        lambda: simulate(land, 1.8, 3, optimizer=optimizer, steps=50, trajectories=6, seed=4, n_bins=3, n_rec=2),
    )


def test_walk_divergence(monkeypatch):
    from valleysim.walk import WalkLandscape
    from valleysim.walk.sim import simulate

    land = WalkLandscape.make(n_examples=8, seed=3, width=math.inf)  # quadratic walls: eta k > 2 diverges
    out = _same_for_any_chunking(
        monkeypatch, lambda: simulate(land, 3.0, 3, optimizer="sgd", steps=60, trajectories=4, seed=1, n_rec=2)
    )
    assert (out["diverged_step"] > 0).all() and len(set(out["diverged_step"])) > 1


@pytest.mark.parametrize("eta, S, frozen", [(0.1, 4, False), (1.9, 2, False), (0.1, 4, True)])
def test_break_even(monkeypatch, eta, S, frozen):
    from valleysim.break_even import SharpeningLandscape
    from valleysim.break_even.sim import simulate

    land = SharpeningLandscape.make(n_examples=16, sigma=0.5, a0=(1.0, 0.5), rates=(1.0, 2.0), beta=0.01)
    z0 = land.z_of_curvature(1.5 * 2 / eta) if frozen else 0.0  # frozen above the edge: every one diverges
    out = _same_for_any_chunking(
        monkeypatch,
        lambda: simulate(land, eta, S, steps=301, trajectories=9, seed=9, record_every=13, z0=z0, frozen=frozen),
    )
    assert (out["diverged_step"] >= 0).all() == frozen


def test_chunks_cover_the_range_and_grow_to_the_time_aimed_at(monkeypatch):
    seen = []
    chunks.run_in_chunks(lambda t0, t1: seen.append((t0, t1)), 5, 10**6)
    assert seen[0] == (5, 6) and seen[-1][1] == 10**6
    assert all(a[1] == b[0] for a, b in zip(seen, seen[1:]))
    sizes = [t1 - t0 for t0, t1 in seen]
    assert all(b <= chunks.GROWTH * a for a, b in zip(sizes, sizes[1:-1]))
    assert len(seen) < 10  # instant chunks: each GROWTH times the one before
    monkeypatch.setattr(chunks, "SECONDS", 0.0)
    seen.clear()
    chunks.run_in_chunks(lambda t0, t1: seen.append((t0, t1)), 0, 5)
    assert seen == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]


@pytest.mark.parametrize(
    "toy",
    [
        "from valleysim import break_even as be\n"
        "be.simulate(be.SharpeningLandscape.make(n_examples=16), 0.1, 4, steps=200, trajectories=8)\n",
        # dense Hessians: the block size asks numba for its thread count before the kernel runs
        "from valleysim import quadratic as qd\n"
        "qd.simulate(qd.generate('dense', 8, 3), 0.1, 2, steps=50, trajectories=8)\n",
    ],
    ids=["break-even", "quadratic-dense"],
)
def test_a_toy_run_leaves_torchs_thread_count_alone(toy):
    """numba's first parallel launch in a process resets the OpenMP thread count torch shares: in a fresh
    process with torch on one thread that has run a convolution, a toy's simulation leaves it at one
    (the cross-check's and the break-even edge analysis's runs after a toy recorded one thread and ran on
    two)."""
    import subprocess
    import sys

    torch_first = (
        "import torch; torch.set_num_threads(1); torch.nn.Conv2d(3, 8, 3)(torch.randn(8, 3, 32, 32)).sum().backward()\n"
    )
    script = torch_first + toy + "print(torch.get_num_threads())\n"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "1"
