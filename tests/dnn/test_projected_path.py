"""dnn.projected_path on landscapes with known minima: GD's step count on a quadratic, the loss along a
segment, the recursion's splits on a ring of minima (chords sag below the floor by a known amount)."""

import math

import numpy as np
import pytest
import torch

from dnn.projected_path import project, projected_path, segment_losses


class Ring:
    """L(theta) = (|theta| - 1)^2 in 2-D: the minima form the unit circle; the chord between two minima an
    angle d apart passes |theta| = cos(d / 2) at its middle, loss (1 - cos(d / 2))^2 there."""

    device, dtype = torch.device("cpu"), torch.float64

    def loss(self, theta):
        return float((theta.norm() - 1) ** 2)

    def loss_and_grad(self, theta):
        r = theta.norm()
        return float((r - 1) ** 2), 2 * (r - 1) * theta / r


class Quadratic:
    device, dtype = torch.device("cpu"), torch.float64

    def __init__(self, a):
        self.a = torch.as_tensor(a, dtype=torch.float64)

    def loss(self, theta):
        return float(0.5 * (self.a * theta**2).sum())

    def loss_and_grad(self, theta):
        return self.loss(theta), self.a * theta


def test_gd_projection_step_count_on_a_quadratic():
    q, lr = Quadratic([2.0]), 0.1  # loss_t = L0 (1 - lr a)^(2t)
    th0 = torch.tensor([1.0], dtype=torch.float64)
    target = 1e-3
    want = math.ceil(math.log(target / 1.0) / (2 * math.log(0.8)))
    p = project(q, th0, lr=lr, momentum=0.0, target=target, max_steps=1000)
    assert p["reached"] and p["steps"] == want and p["loss"] == pytest.approx(0.8 ** (2 * want), rel=1e-12)
    short = project(q, th0, lr=lr, momentum=0.0, target=target, max_steps=want - 1)
    assert not short["reached"] and short["steps"] == want - 1
    heavy = project(q, th0, lr=lr, momentum=0.5, target=target, max_steps=1000)
    assert heavy["reached"] and heavy["steps"] < want  # momentum helps on this well-conditioned bowl


def test_segment_losses_on_a_quadratic():
    q = Quadratic([1.0, 3.0])
    a, b = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    t = np.linspace(0, 1, 10)
    np.testing.assert_allclose(segment_losses(q, a, b), 0.5 * ((1 - t) ** 2 + 3 * t**2), rtol=1e-14)


def test_recursion_splits_until_consecutive_minima_are_line_connected():
    ring = Ring()
    angles = np.linspace(0.0, np.pi, 9)  # kept states at steps 0..8, slightly off the ring
    states = {s: 1.1 * torch.tensor([math.cos(a), math.sin(a)], dtype=torch.float64) for s, a in enumerate(angles)}
    d = angles[1]  # the angle between kept neighbours
    sag = lambda k: (1 - math.cos(k * d / 2)) ** 2  # noqa: E731  the chord's worst loss over k neighbours
    threshold = 0.5 * (sag(1) + sag(2))  # neighbours are line connected, states two apart are not
    out = projected_path(
        list(states),
        states.__getitem__,
        ring,
        coarse=4,
        lr=0.2,
        momentum=0.0,
        target=1e-20,
        threshold=threshold,
        max_steps=10_000,
        n_points=9,  # the chord's middle is a sample point
        measure=lambda th: {"radius": float(th.norm())},
    )
    seg = {(s["step_a"], s["step_b"]): s for s in out["segments"]}
    # coarse pairs (0, 4), (4, 8) sag(4) > threshold -> split at 2 -> (0, 2) sag(2) > threshold -> split at 1
    assert set(seg) == {
        (0, 4),
        (0, 2),
        (0, 1),
        (1, 2),
        (2, 4),
        (2, 3),
        (3, 4),
        (4, 8),
        (4, 6),
        (4, 5),
        (5, 6),
        (6, 8),
        (6, 7),
        (7, 8),
    }
    for (a, b), s in seg.items():
        assert s["connected"] == (b - a == 1) and s["refined"] == (b - a > 1)
        assert s["max_loss"] == pytest.approx(sag(b - a), rel=1e-6)
    assert [p["step"] for p in out["points"]] == list(range(9))
    assert all(p["reached"] and p["radius"] == pytest.approx(1.0, abs=1e-6) for p in out["points"])
    # GD moves radially: each projection keeps its state's angle
    wide = projected_path(
        list(states),
        states.__getitem__,
        ring,
        coarse=8,
        lr=0.2,
        momentum=0.0,
        target=1e-20,
        threshold=1.0,
        max_steps=10_000,
    )
    assert [(s["step_a"], s["step_b"], s["connected"]) for s in wide["segments"]] == [(0, 8, True)]
    assert [p["step"] for p in wide["points"]] == [0, 8]
