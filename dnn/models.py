"""The papers' networks in plain PyTorch (no torchvision).

Names (:data:`MODELS`) and where they come from:

``simplecnn`` / ``simplecnn-bn``
    SimpleCNN of the break-even paper (App. C) and of the sharpest-directions paper (App. D),
    after the Keras ``cifar10_cnn`` example: conv3x3(32, 'same') - ReLU - conv3x3(32, 'same') - ReLU
    - maxpool 2 - conv3x3(64, 'same') - ReLU - conv3x3(64, 'same') - ReLU - maxpool 2 - flatten -
    dense 128 - ReLU - dense ``num_classes`` (logits; the softmax belongs to the loss). **The Keras
    example's dropout layers (0.25 after each pool, 0.5 after the dense layer) are left out** so that
    losses, gradients and Hessian measurements are deterministic functions of the parameters; neither
    paper's description lists dropout. Initialisation as Keras' defaults: Glorot-uniform weights,
    zero biases. ``-bn`` inserts ``BatchNorm2d`` after each conv (before its ReLU); the conv biases
    are kept (redundant under BN, but this keeps the variant "SimpleCNN plus BN layers").

``resnet32`` / ``resnet32-bn``
    CIFAR ResNet-32 (He et al. 2015, Sec. 4.2): conv3x3(16) stem, three stages of 5 basic blocks
    (two 3x3 convs each) with 16/32/64 channels, stride 2 in the first conv of stages 2 and 3, global
    average pooling, fc. 31 convs + 1 fc. Convs have no bias. Shortcuts are option A: identity,
    spatially subsampled (``x[:, :, ::2, ::2]``) and zero-padded in channels (new channels appended
    after the old ones) where a stage starts, so they carry no parameters (464,154 parameters for
    ``resnet32-bn`` at width 1, the usual "0.46M").

    ``resnet32-bn``: conv - BN - ReLU - conv - BN, add shortcut, ReLU. Convs He-normal
    (``kaiming_normal_``, mode ``fan_out``, ReLU gain), BN gamma 1 / beta 0, fc PyTorch default.

    ``resnet32`` (no BN; the sharpest-directions paper, footnote 2, omits BN and uses an
    initialisation scaled by depth): Fixup (Zhang, Dauphin & Ma 2019), as in its reference CIFAR
    code. Each residual branch computes
    ``scale * conv2(relu(conv1(x + b1a) + b1b) + b2a) + b2b`` and the block returns
    ``relu(branch + shortcut(x + b1a))``; the stem is ``relu(conv(x) + b1)`` and the head
    ``fc(avgpool(h) + b2)``. The scalar biases ``b*`` start at 0 and ``scale`` at 1 (5 scalars per
    block plus 2 in the trunk: 77). ``conv1`` of each branch is He-normal (mode ``fan_out``, std
    ``sqrt(2 / (c_out * 9))``) times ``L ** -0.5`` with ``L = 15`` residual branches (Fixup's
    ``L^(-1/(2m-2))`` with ``m = 2`` layers per branch); ``conv2`` of each branch is zero; the stem
    conv is He-normal (``fan_out``). **Deviation from Fixup:** the final fc keeps PyTorch's default
    init (uniform, bound ``1/sqrt(fan_in)``) instead of zero, so that the gradient at
    initialisation is not degenerate (with a zero fc every gradient except the fc bias and ``b2`` is
    zero). Because every ``conv2`` is zero, each branch outputs exactly 0 at init and the network
    is the stem followed by the (subsampled, padded) identity: the output scale at init does not
    depend on depth.

``vgg11`` / ``vgg11-bn``
    VGG-11 (Simonyan & Zisserman 2014, configuration A): conv3x3 64, M, 128, M, 256, 256, M, 512,
    512, M, 512, 512, M (conv 'same', ReLU after each conv; ``-bn``: conv - BN - ReLU). The
    classifier is adapted to CIFAR (the sharpest-directions paper "adapted the final classification
    layers for 10 classes"): the three ImageNet FC layers (4096-4096-1000) are replaced by one
    ``Linear(512*h*w, num_classes)`` on the flattened features, ``h = H // 32``, ``w = W // 32``
    (1x1 for 32x32 input). Initialisation as torchvision's VGG: convs He-normal (``fan_out``),
    biases 0, BN gamma 1 / beta 0, linear ``N(0, 0.01^2)`` with bias 0. Needs ``H, W >= 32``.

``mlp``
    The break-even paper's FashionMNIST MLP: flatten - 300 - ReLU - 100 - ReLU - ``num_classes``
    (784-300-100-10 for 28x28 input); Keras-default init (Glorot uniform, zero biases).

All ReLUs are out of place (in-place ops break ``torch.func`` transforms). Models without BN work
under ``torch.func.functional_call`` / ``vmap(grad(...))`` (per-example gradients).

``width`` multiplies every channel / hidden-unit count (``max(1, round(n * width))``; the output
layer keeps ``num_classes``), so tests can build tiny versions; the papers' models are width 1.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from valleysim.errors import UserInputError

MODELS: tuple[str, ...] = ("simplecnn", "simplecnn-bn", "resnet32", "resnet32-bn", "vgg11", "vgg11-bn", "mlp")

#: Natural input shape (C, H, W) of each model when ``input_shape`` is None.
DEFAULT_INPUT_SHAPE = {name: (3, 32, 32) for name in MODELS}
DEFAULT_INPUT_SHAPE["mlp"] = (1, 28, 28)

#: VGG-11 configuration A ("M" = 2x2 max-pool).
VGG11_CFG: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

RESNET32_BLOCKS_PER_STAGE = 5
RESNET32_NUM_BRANCHES = 3 * RESNET32_BLOCKS_PER_STAGE  # L in Fixup


def _scaled(n: int, width: float) -> int:
    return max(1, int(round(n * width)))


# ---------------------------------------------------------------------------------------------
# SimpleCNN


class SimpleCNN(nn.Module):
    """Keras-example CNN without dropout (see module docstring)."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], width: float, bn: bool):
        super().__init__()
        c, h, w = input_shape
        c1, c2, hid = _scaled(32, width), _scaled(64, width), _scaled(128, width)

        def block(cin: int, cout: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1)]
            if bn:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=False))
            return layers

        self.features = nn.Sequential(
            *block(c, c1),
            *block(c1, c1),
            nn.MaxPool2d(2),
            *block(c1, c2),
            *block(c2, c2),
            nn.MaxPool2d(2),
        )
        flat = c2 * (h // 4) * (w // 4)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hid), nn.ReLU(inplace=False), nn.Linear(hid, num_classes)
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# ---------------------------------------------------------------------------------------------
# ResNet-32 (CIFAR)


def _shortcut_a(x: torch.Tensor, stride: int, out_channels: int) -> torch.Tensor:
    """Option-A shortcut: strided identity, zero channels appended up to ``out_channels``."""
    if stride != 1:
        x = x[:, :, ::stride, ::stride]
    extra = out_channels - x.shape[1]
    if extra > 0:
        x = F.pad(x, (0, 0, 0, 0, 0, extra))
    return x


class BasicBlockBN(nn.Module):
    """conv-BN-ReLU-conv-BN + option-A shortcut, ReLU."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.cout = stride, cout
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + _shortcut_a(x, self.stride, self.cout))


class FixupBasicBlock(nn.Module):
    """Fixup basic block (no BN): scalar biases and multiplier around the two convs."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride, self.cout = stride, cout
        self.bias1a = nn.Parameter(torch.zeros(1))
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bias1b = nn.Parameter(torch.zeros(1))
        self.bias2a = nn.Parameter(torch.zeros(1))
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.scale = nn.Parameter(torch.ones(1))
        self.bias2b = nn.Parameter(torch.zeros(1))

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv1(x + self.bias1a) + self.bias1b)
        return self.conv2(out + self.bias2a) * self.scale + self.bias2b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.branch(x) + _shortcut_a(x + self.bias1a, self.stride, self.cout))


class ResNet32(nn.Module):
    """CIFAR ResNet-32; ``bn=False`` gives the Fixup-initialised variant (module docstring)."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], width: float, bn: bool):
        super().__init__()
        self.bn = bn
        c = input_shape[0]
        widths = [_scaled(16, width), _scaled(32, width), _scaled(64, width)]
        self.conv1 = nn.Conv2d(c, widths[0], 3, padding=1, bias=False)
        if bn:
            self.bn1 = nn.BatchNorm2d(widths[0])
        else:
            self.bias1 = nn.Parameter(torch.zeros(1))
        block = BasicBlockBN if bn else FixupBasicBlock
        cin = widths[0]
        stages = []
        for i, cout in enumerate(widths):
            blocks = []
            for j in range(RESNET32_BLOCKS_PER_STAGE):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(cin, cout, stride))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        if not bn:
            self.bias2 = nn.Parameter(torch.zeros(1))
        self.fc = nn.Linear(widths[2], num_classes)  # PyTorch default init in both variants

        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():
            if isinstance(m, BasicBlockBN):
                nn.init.kaiming_normal_(m.conv1.weight, mode="fan_out", nonlinearity="relu")
                nn.init.kaiming_normal_(m.conv2.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, FixupBasicBlock):
                nn.init.kaiming_normal_(m.conv1.weight, mode="fan_out", nonlinearity="relu")
                with torch.no_grad():
                    m.conv1.weight.mul_(RESNET32_NUM_BRANCHES**-0.5)
                nn.init.zeros_(m.conv2.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bn:
            x = F.relu(self.bn1(self.conv1(x)))
        else:
            x = F.relu(self.conv1(x) + self.bias1)
        x = self.layer3(self.layer2(self.layer1(x)))
        x = x.mean(dim=(2, 3))
        if not self.bn:
            x = x + self.bias2
        return self.fc(x)


# ---------------------------------------------------------------------------------------------
# VGG-11


class VGG11(nn.Module):
    """VGG-11 (config A) with a single linear classifier for CIFAR (module docstring)."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int], width: float, bn: bool):
        super().__init__()
        c, h, w = input_shape
        layers: list[nn.Module] = []
        cin = c
        for v in VGG11_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            else:
                cout = _scaled(int(v), width)
                layers.append(nn.Conv2d(cin, cout, 3, padding=1))
                if bn:
                    layers.append(nn.BatchNorm2d(cout))
                layers.append(nn.ReLU(inplace=False))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(cin * h * w, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


# ---------------------------------------------------------------------------------------------
# MLP


class MLP(nn.Module):
    """flatten - 300 - ReLU - 100 - ReLU - num_classes (break-even paper, FashionMNIST)."""

    def __init__(self, num_classes: int, input_shape: tuple[int, ...], width: float):
        super().__init__()
        d = math.prod(input_shape)
        h1, h2 = _scaled(300, width), _scaled(100, width)
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(d, h1),
            nn.ReLU(inplace=False),
            nn.Linear(h1, h2),
            nn.ReLU(inplace=False),
            nn.Linear(h2, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ---------------------------------------------------------------------------------------------
# Factory


def _check_input_shape(name: str, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    if input_shape is None:
        return DEFAULT_INPUT_SHAPE[name]
    conv = name != "mlp"
    need = "a tuple (C, H, W) of 3 positive integers" if conv else "a non-empty tuple of positive integers"
    try:
        if isinstance(input_shape, (str, bytes)) or any(isinstance(s, bool) for s in input_shape):
            raise TypeError
        shape = tuple(operator.index(s) for s in input_shape)
    except TypeError:
        raise UserInputError(f"input_shape must be {need}; got {input_shape!r}") from None
    if not shape or any(s < 1 for s in shape) or (conv and len(shape) != 3):
        raise UserInputError(f"input_shape must be {need}; got {input_shape!r}")
    if conv:
        min_hw = {"simplecnn": 4, "vgg11": 32, "resnet32": 1}[name.removesuffix("-bn")]
        if shape[1] < min_hw or shape[2] < min_hw:
            raise UserInputError(
                f"input_shape for {name} needs H and W >= {min_hw} (it max-pools to at least 1x1); got {input_shape!r}"
            )
    return shape


def build_model(
    name: str,
    *,
    num_classes: int = 10,
    input_shape: Sequence[int] | None = None,
    width: float = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> nn.Module:
    """Build model ``name`` (one of :data:`MODELS`), initialised from ``seed``.

    ``input_shape``: per-example shape (C, H, W) (any shape for ``mlp``, which flattens); None is
    the model's natural default (3, 32, 32) or (1, 28, 28) for ``mlp``. ``width`` > 0 multiplies
    channel / unit counts (rounded, at least 1). The initialisation draws from the global RNG inside
    ``torch.random.fork_rng`` seeded with ``seed``, so the caller's RNG state is untouched and the
    same arguments give bitwise-identical parameters. Parameters are created in float32 and then
    cast to ``dtype`` (so float64 models hold exactly the float32 initial values).
    ``channels_last`` converts conv models with ``memory_format=torch.channels_last`` (no-op for
    ``mlp``). The model is returned in training mode.
    """
    if not isinstance(name, str) or name.lower() not in MODELS:
        raise UserInputError(f"model name must be one of {', '.join(MODELS)}; got {name!r}")
    name = name.lower()
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise UserInputError(f"num_classes must be an integer >= 1; got {num_classes!r}")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or width <= 0:
        raise UserInputError(f"width must be a finite number > 0; got {width!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UserInputError(f"seed must be an integer >= 0; got {seed!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise UserInputError(
            f"dtype must be a floating-point torch dtype (torch.float32, torch.float64); got {dtype!r}"
        )
    shape = _check_input_shape(name, input_shape)
    base, bn = name.removesuffix("-bn"), name.endswith("-bn")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if base == "simplecnn":
            model: nn.Module = SimpleCNN(num_classes, shape, width, bn)
        elif base == "resnet32":
            model = ResNet32(num_classes, shape, width, bn)
        elif base == "vgg11":
            model = VGG11(num_classes, shape, width, bn)
        else:
            model = MLP(num_classes, shape, width)
    model = model.to(dtype=dtype)
    if channels_last and base != "mlp":
        model = model.to(memory_format=torch.channels_last)
    return model


def footprint(
    name: str, *, num_classes: int = 10, input_shape: Sequence[int] | None = None, width: float = 1.0
) -> tuple[int, int]:
    """(parameters, activation numbers per example) of ``build_model(name, ...)``, counted on the meta
    device: nothing is allocated, so it is safe for sizes that would not fit."""
    acts = [0]

    def count(_module, _inputs, output):
        acts[0] += output.numel() if isinstance(output, torch.Tensor) else 0

    with torch.device("meta"):
        model = build_model(name, num_classes=num_classes, input_shape=input_shape, width=width)
        leaves = [m for m in model.modules() if not list(m.children())]
        hooks = [m.register_forward_hook(count) for m in leaves]
        shape = _check_input_shape(name.lower(), input_shape)
        model(torch.empty(1, *shape))
    for h in hooks:
        h.remove()
    return sum(p.numel() for p in model.parameters()), acts[0]


def last_bn_scale(model: nn.Module) -> torch.Tensor | None:
    """Weight (gamma) of the last BatchNorm layer in module order; None if the model has none."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
            last = m
    return None if last is None else last.weight
