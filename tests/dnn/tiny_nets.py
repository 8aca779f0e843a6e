"""Tiny networks and data shared by the dnn tests (float64 dense truths stay cheap), and fake CIFAR-10
batches in the real python-pickle format."""

import functools
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dnn.data import CIFAR10_CLASSES


@functools.lru_cache(maxsize=None)
def orthogonal(P: int, seed: int) -> np.ndarray:
    """A seeded orthogonal ``(P, P)`` matrix (QR of a Gaussian matrix), cached."""
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((P, P)))
    return Q


def tiny_net(bn: bool, seed: int = 0) -> nn.Module:
    """Conv(3->3, 3x3) [+ BN with non-trivial statistics] + ReLU + maxpool + Linear(27 -> 4), 6x6 inputs."""
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 3, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(3))
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 4)]
    net = nn.Sequential(*layers)
    if bn:
        nontrivial_bn(net[1])
    return net


def nontrivial_bn(bn: nn.Module) -> nn.Module:
    """Draws a BatchNorm layer's running statistics and affine parameters away from their trivial defaults
    (global torch RNG), so eval-mode BN is a real affine map in the tests."""
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return bn


def data(n=12, seed=1):
    """(x (n, 3, 6, 6), y (n,) in 0..3), seeded."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=g), torch.randint(0, 4, (n,), generator=g)


def synthetic_images(n=48, seed=0):
    """uint8 (n, 8, 8, 3) images whose mean colour depends on the label (learnable), labels int64 in 0..3."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    base = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200], [128, 128, 128]])[y]
    x = np.clip(base[:, None, None, :] + rng.normal(0, 40, (n, 8, 8, 3)), 0, 255).astype(np.uint8)
    return x, y.astype(np.int64)


def noise_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def fake_batch(n: int, seed: int, name: str):
    """A batch in the real CIFAR-10 python format: dict with bytes keys, data (n, 3072) uint8 in
    CHW row order, labels a list of ints."""
    rng = np.random.default_rng(seed)
    imgs = noise_images(n, seed + 100)
    labels = [int(v) for v in rng.integers(0, 10, n)]
    d = {
        b"batch_label": name.encode(),
        b"labels": labels,
        b"data": imgs.transpose(0, 3, 1, 2).reshape(n, 3072).copy(),
        b"filenames": [f"img_{seed}_{i}.png".encode() for i in range(n)],
    }
    return pickle.dumps(d, protocol=2), imgs, np.array(labels, np.int64)


def fake_batches_dir(root: Path, per_batch: int = 3):
    """A ``cifar-10-batches-py`` directory of 5 training batches of ``per_batch`` noise images and a test
    batch of 4; returns it and the arrays each split must load as."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    expect = {}
    tr_i, tr_l = [], []
    for i in range(1, 6):
        raw, im, lab = fake_batch(per_batch, i, f"training batch {i} of 5")
        (d / f"data_batch_{i}").write_bytes(raw)
        tr_i.append(im)
        tr_l.append(lab)
    raw, im, lab = fake_batch(4, 99, "testing batch 1 of 1")
    (d / "test_batch").write_bytes(raw)
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CIFAR10_CLASSES]}, protocol=2))
    expect["train"] = (np.concatenate(tr_i), np.concatenate(tr_l))
    expect["test"] = (im, lab)
    return d, expect


class Payload:
    """A pickle payload: unpickling it runs ``touch MARKER`` (tests assert that it never does)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os
        import shlex

        return os.system, (f"touch {shlex.quote(str(self.marker))}",)
