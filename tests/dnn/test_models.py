"""dnn.models: shapes, hand-counted parameter numbers, BN placement, seeding, dtypes, memory
format, Fixup init scale, input errors, per-example gradients under torch.func."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from dnn.models import MODELS, build_model, last_bn_scale
from valleysim.errors import UserInputError

TINY = 1 / 8
SMALL_SHAPE = {"simplecnn": (3, 8, 8), "resnet32": (3, 8, 8), "vgg11": (3, 32, 32), "mlp": (1, 6, 6)}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _base(name: str) -> str:
    return name.removesuffix("-bn")


def _nparams(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _conv(cin: int, cout: int, bias: bool = True) -> int:
    return cin * cout * 9 + (cout if bias else 0)


def _lin(fin: int, fout: int) -> int:
    return fin * fout + fout


def _tiny(name: str, **kw) -> nn.Module:
    return build_model(name, width=TINY, input_shape=SMALL_SHAPE[_base(name)], **kw)


def _x(name: str, n: int = 3, dtype=torch.float32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *SMALL_SHAPE[_base(name)]), generator=g, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# shapes and parameter counts


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("num_classes", [10, 7])
def test_output_shape_tiny(name, num_classes):
    model = _tiny(name, num_classes=num_classes)
    out = model(_x(name, n=4))
    assert out.shape == (4, num_classes)
    assert torch.isfinite(out).all()


def test_default_input_shapes():
    assert build_model("mlp", width=TINY)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert build_model("simplecnn", width=TINY)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_param_count_simplecnn():
    # the brief's formula: two 32-filter convs, two 64-filter convs, 64*8*8 -> 128 -> 10
    want = (
        3 * 32 * 9
        + 32
        + 32 * 32 * 9
        + 32
        + 32 * 64 * 9
        + 64
        + 64 * 64 * 9
        + 64
        + 64 * 8 * 8 * 128
        + 128
        + 128 * 10
        + 10
    )
    assert want == 591_274
    assert _nparams(build_model("simplecnn")) == want
    bn = 2 * (32 + 32 + 64 + 64)  # gamma and beta per channel
    assert _nparams(build_model("simplecnn-bn")) == want + bn
    # flatten size follows input_shape: 16x16 input -> 4x4 after two pools, 1 channel input
    want16 = _conv(1, 32) + _conv(32, 32) + _conv(32, 64) + _conv(64, 64) + _lin(64 * 4 * 4, 128) + _lin(128, 10)
    assert _nparams(build_model("simplecnn", input_shape=(1, 16, 16))) == want16


def test_param_count_resnet32():
    convs = _conv(3, 16, False)
    convs += 10 * _conv(16, 16, False)
    convs += _conv(16, 32, False) + 9 * _conv(32, 32, False)
    convs += _conv(32, 64, False) + 9 * _conv(64, 64, False)
    fc = _lin(64, 10)
    bn = 2 * (16 + 10 * 16 + 10 * 32 + 10 * 64)  # stem BN + two per block
    assert convs + fc + bn == 464_154  # the "0.46M" of He et al. (2015), Table 6
    m = build_model("resnet32-bn")
    assert _nparams(m) == convs + fc + bn
    fixup_scalars = 15 * 5 + 2  # bias1a, bias1b, bias2a, scale, bias2b per block; bias1, bias2
    assert _nparams(build_model("resnet32")) == convs + fc + fixup_scalars


@pytest.mark.parametrize("name", ["resnet32", "resnet32-bn"])
def test_resnet32_has_31_convs_and_one_fc(name):
    m = _tiny(name)
    assert sum(isinstance(x, nn.Conv2d) for x in m.modules()) == 31
    assert sum(isinstance(x, nn.Linear) for x in m.modules()) == 1
    assert sum(isinstance(x, nn.BatchNorm2d) for x in m.modules()) == (31 if name.endswith("-bn") else 0)


def test_param_count_vgg11():
    chans = [64, 128, 256, 256, 512, 512, 512, 512]
    convs, cin = 0, 3
    for c in chans:
        convs += _conv(cin, c)
        cin = c
    fc = _lin(512 * 1 * 1, 10)
    assert _nparams(build_model("vgg11")) == convs + fc
    assert _nparams(build_model("vgg11-bn")) == convs + fc + 2 * sum(chans)
    # 64x64 input: features 512 x 2 x 2
    assert _nparams(build_model("vgg11", input_shape=(3, 64, 64))) == convs + _lin(512 * 4, 10)


def test_param_count_mlp():
    assert _nparams(build_model("mlp")) == 784 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10
    assert _nparams(build_model("mlp", input_shape=(3, 4, 5), num_classes=3)) == _lin(60, 300) + _lin(300, 100) + _lin(
        100, 3
    )


def test_width_scales_counts():
    m = build_model("mlp", width=0.5)
    assert [x.out_features for x in m.modules() if isinstance(x, nn.Linear)] == [150, 50, 10]
    m = build_model("mlp", width=1e-6)  # rounds to at least one unit
    assert [x.out_features for x in m.modules() if isinstance(x, nn.Linear)] == [1, 1, 10]


def test_no_inplace_relu():
    for name in MODELS:
        for m in _tiny(name).modules():
            if isinstance(m, nn.ReLU):
                assert not m.inplace


# ---------------------------------------------------------------------------------------------
# BN placement and last_bn_scale


@pytest.mark.parametrize("name", MODELS)
def test_bn_only_in_bn_variants(name):
    m = _tiny(name)
    bns = [x for x in m.modules() if isinstance(x, nn.BatchNorm2d)]
    if name.endswith("-bn"):
        assert bns
        assert last_bn_scale(m) is bns[-1].weight
        # the last BN sits after the last conv
        mods = list(m.modules())
        last_conv = max(i for i, x in enumerate(mods) if isinstance(x, nn.Conv2d))
        assert mods.index(bns[-1]) > last_conv
        assert bns[-1].weight.shape == (bns[-1].num_features,)
    else:
        assert not bns
        assert last_bn_scale(m) is None


def test_bn_counts():
    assert sum(isinstance(x, nn.BatchNorm2d) for x in _tiny("simplecnn-bn").modules()) == 4
    assert sum(isinstance(x, nn.BatchNorm2d) for x in _tiny("vgg11-bn").modules()) == 8


# ---------------------------------------------------------------------------------------------
# seeding, dtypes, memory format


@pytest.mark.parametrize("name", MODELS)
def test_seed_reproducible_and_distinct(name):
    a, b, c = _tiny(name, seed=3), _tiny(name, seed=3), _tiny(name, seed=4)
    pa, pb, pc = (list(m.parameters()) for m in (a, b, c))
    assert all(torch.equal(x, y) for x, y in zip(pa, pb, strict=True))
    assert any(not torch.equal(x, y) for x, y in zip(pa, pc, strict=True))


def test_global_rng_untouched():
    torch.manual_seed(123)
    want = torch.rand(5)
    torch.manual_seed(123)
    build_model("simplecnn", width=TINY, seed=9)
    assert torch.equal(torch.rand(5), want)


@pytest.mark.parametrize("name", MODELS)
def test_float64_forward(name):
    m = _tiny(name, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in m.parameters())
    out = m(_x(name, dtype=torch.float64))
    assert out.dtype == torch.float64 and torch.isfinite(out).all()
    # same initial values as the float32 model (created in float32, then cast)
    m32 = _tiny(name)
    for p64, p32 in zip(m.parameters(), m32.parameters(), strict=True):
        assert torch.equal(p64, p32.double())


@pytest.mark.parametrize("name", [n for n in MODELS if n != "mlp"])
def test_channels_last_matches_contiguous(name):
    ref = _tiny(name, dtype=torch.float64)
    cl = _tiny(name, dtype=torch.float64, channels_last=True)
    convs = [m for m in cl.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    x = _x(name, dtype=torch.float64)
    ref.eval(), cl.eval()  # BN in eval mode (running stats) so both see the same statistics
    with torch.no_grad():
        torch.testing.assert_close(cl(x.contiguous(memory_format=torch.channels_last)), ref(x), rtol=1e-10, atol=1e-12)
    ref.train(), cl.train()
    with torch.no_grad():
        torch.testing.assert_close(cl(x.contiguous(memory_format=torch.channels_last)), ref(x), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Fixup ResNet-32 at init


def test_fixup_init_structure():
    m = build_model("resnet32", width=0.25, input_shape=(3, 16, 16))
    blocks = [b for b in m.modules() if hasattr(b, "branch")]
    assert len(blocks) == 15
    for b in blocks:
        assert torch.count_nonzero(b.conv2.weight) == 0
        w = b.conv1.weight
        fan_out = w.shape[0] * 9
        want_std = (2 / fan_out) ** 0.5 * 15**-0.5
        assert 0.6 * want_std < w.std().item() < 1.4 * want_std
        assert b.scale.item() == 1.0 and b.bias1a.item() == b.bias2b.item() == 0.0
    assert torch.count_nonzero(m.fc.weight) > 0  # fc NOT zero (deviation from Fixup, documented)


def test_fixup_output_scale_and_gradients_at_init():
    """Each branch is exactly zero at init, so the network is stem + identity: the logits equal
    fc(bias2 + mean(relu(stem(x))), subsampled and zero-padded) and their scale is that of a
    2-layer net, independent of depth. Bound: for unit-variance pixels the stem pre-activations have
    variance 27 * 2 / 144 = 0.375 (He fan_out init), so pooled ReLU features are ~0.24 on the 16
    stem channels (48 padded channels are 0); the default fc weights have variance 1 / (3 * 64), so
    logits have std ~ sqrt(16 * 0.24^2 / 192) ~ 0.07 (~0.1 measured): < 1 with a wide margin.
    Re-initialising every branch with plain He init (no L^-1/2, conv2 not zero) gives logits of
    std ~ 40, i.e. the bound does separate a depth-scaled init from an unscaled one."""
    torch.manual_seed(0)
    m = build_model("resnet32", input_shape=(3, 16, 16), dtype=torch.float64)
    x = torch.randn(16, 3, 16, 16, dtype=torch.float64)
    out = m(x)
    assert torch.isfinite(out).all()
    assert 1e-3 < out.std().item() < 1.0
    with torch.no_grad():
        h = F.relu(m.conv1(x) + m.bias1)[:, :, ::4, ::4]  # two stride-2 stages
        h = F.pad(h, (0, 0, 0, 0, 0, 64 - 16))
        torch.testing.assert_close(out, m.fc(h.mean(dim=(2, 3)) + m.bias2))
    # gradients at init are non-degenerate: fc and every branch's conv2 get signal
    loss = F.cross_entropy(out, torch.arange(16) % 10)
    loss.backward()
    assert m.fc.weight.grad.abs().sum() > 0
    blocks = [b for b in m.modules() if hasattr(b, "branch")]
    for b in blocks:
        assert b.conv2.weight.grad.abs().sum() > 0
    # contrast: the same network with plain He init in every branch blows the bound
    with torch.no_grad():
        for b in blocks:
            nn.init.kaiming_normal_(b.conv1.weight, mode="fan_out", nonlinearity="relu")
            nn.init.kaiming_normal_(b.conv2.weight, mode="fan_out", nonlinearity="relu")
        assert m(x).std().item() > 10.0


# ---------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize(
    "kwargs, param",
    [
        (dict(name="resnet18"), "model name"),
        (dict(name="simplecnn", width=0), "width"),
        (dict(name="simplecnn", width=-1.0), "width"),
        (dict(name="simplecnn", width=float("nan")), "width"),
        (dict(name="simplecnn", input_shape=(3, 32)), "input_shape"),
        (dict(name="simplecnn", input_shape=(3, 0, 32)), "input_shape"),
        (dict(name="simplecnn", input_shape=(3, 2, 2)), "input_shape"),
        (dict(name="vgg11", input_shape=(3, 16, 16)), "input_shape"),
        (dict(name="mlp", input_shape=()), "input_shape"),
        (dict(name="mlp", input_shape=5), "input_shape"),
        (dict(name="mlp", num_classes=0), "num_classes"),
        (dict(name="mlp", seed=-1), "seed"),
        (dict(name="mlp", dtype=torch.int64), "dtype"),
    ],
)
def test_bad_input_names_parameter(kwargs, param):
    name = kwargs.pop("name")
    with pytest.raises(UserInputError, match=param) as info:
        build_model(name, **kwargs)
    if param == "model name":
        for allowed in MODELS:
            assert allowed in str(info.value)


# ---------------------------------------------------------------------------------------------
# per-example gradients via torch.func


@pytest.mark.parametrize("name", ["simplecnn", "mlp", "resnet32"])
def test_per_example_grads_match_loop(name):
    model = _tiny(name, dtype=torch.float64)
    x = _x(name, n=4, dtype=torch.float64)
    y = torch.tensor([0, 3, 7, 9])
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_fn(p, xi, yi):
        out = functional_call(model, p, (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    per_ex = vmap(grad(loss_fn), in_dims=(None, 0, 0))(params, x, y)
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for k, p in model.named_parameters():
            torch.testing.assert_close(per_ex[k][i], p.grad, rtol=1e-10, atol=1e-12)
