"""Tiny networks and data shared by the dnn tests (float64 dense truths stay cheap)."""

import numpy as np
import torch
from torch import nn


def tiny_net(bn: bool, seed: int = 0) -> nn.Module:
    """Conv(3->3, 3x3) [+ BN with non-trivial statistics] + ReLU + maxpool + Linear(27 -> 4), 6x6 inputs."""
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 3, 3, padding=1)]
    if bn:
        layers.append(nn.BatchNorm2d(3))
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 4)]
    net = nn.Sequential(*layers)
    if bn:
        with torch.no_grad():
            net[1].running_mean.uniform_(-0.5, 0.5)
            net[1].running_var.uniform_(0.5, 2.0)
            net[1].weight.uniform_(0.5, 1.5)
            net[1].bias.uniform_(-0.2, 0.2)
    return net


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
