"""The exact covariance K v, the Gauss-Newton G v, the MSE loss and the exact_covariance / gauss_newton probes
against explicit float64 matrices on tiny networks. Independent truths: per-example gradients by
torch.autograd in a loop over examples (not vmap), Jacobians of the logits by
torch.autograd.functional.jacobian with H_out written out (diag(p) - p p^T, I), the Fisher as a sum over
classes of p_c grad log p_c grad log p_c^T, the second-order term of H - G by torch.autograd.functional.hessian
of r . z(theta) with the residual r held fixed, losses by hand."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from dnn import covariance, eigen
from dnn import probes as probes_mod
from dnn.config import TrainConfig
from dnn.objective import Objective, flat_params, model_state, per_example_loss
from valleysim.errors import UserInputError

from tiny_nets import data, nontrivial_bn, synthetic_images, tiny_net

pytestmark = pytest.mark.usefixtures("torch_one_thread")

LOSSES = [("cross_entropy", 0.0), ("cross_entropy", 0.2), ("mse", 0.0), ("mse", 0.1)]


def mlp(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3))


def bn_mlp(seed=0) -> nn.Module:
    """Linear(6 -> 5) + BatchNorm1d (non-trivial statistics) + Tanh + Linear(5 -> 3): P = 58, cheap dense truths."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3))
    nontrivial_bn(net[2])
    return net


def mlp_data(n=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def targets(y, C, eps):
    return (1 - eps) * F.one_hot(y, C).double() + eps / C


def hand_loss(z, y, loss, eps):
    """Per-example losses (m,) written out: -sum_c t_c log p_c, or 1/2 sum_c (z_c - t_c)^2."""
    t = targets(y, z.shape[1], eps)
    if loss == "cross_entropy":
        return -(t * torch.log_softmax(z, dim=1)).sum(1)
    return 0.5 * ((z - t) ** 2).sum(1)


def reference(net, bn="eval"):
    """A float64 copy in the mode of the bn policy (batch: no running statistics)."""
    net = copy.deepcopy(net).double()
    net.train(bn == "batch")
    if bn == "batch":
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.track_running_stats, m.running_mean, m.running_var = False, None, None
    return net


def logits_fn(net, x, bn="eval", group=4):
    """theta (P,) -> logits (n, C) of a float64 copy (batch statistics per ``group`` under bn='batch')."""
    net = reference(net, bn)
    names = [k for k, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    sizes = [p.numel() for _, p in net.named_parameters()]
    x = x.double()

    def f(t):
        params = {k: v.view(s) for k, v, s in zip(names, torch.split(t, sizes), shapes)}
        if bn == "batch":
            return torch.cat([functional_call(net, params, (x[s : s + group],)) for s in range(0, len(x), group)])
        return functional_call(net, params, (x,))

    return f


def loop_grads(net, x, y, loss, eps, theta=None):
    """(n, P) per-example gradients by an ordinary backward pass per example (eval mode)."""
    net = reference(net)
    if theta is not None:
        torch.nn.utils.vector_to_parameters(theta, net.parameters())
    rows = []
    for i in range(len(x)):
        li = hand_loss(net(x[i : i + 1].double()), y[i : i + 1], loss, eps).sum()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(li, list(net.parameters()))]))
    return torch.stack(rows)


def explicit_K(G):
    D = G - G.mean(0)
    return D.T @ D / G.shape[0]


def explicit_G(net, x, y, loss, bn="eval", group=4):
    """(1/n) sum_i J_i^T H_out,i J_i from the autograd Jacobian (n C, P) of the logits."""
    f = logits_fn(net, x, bn, group)
    theta = flat_params(net).double()
    z = f(theta).detach()
    n, C = z.shape
    J = torch.autograd.functional.jacobian(lambda t: f(t).reshape(-1), theta).reshape(n, C, -1)
    if loss == "mse":
        Hout = torch.eye(C, dtype=torch.float64).expand(n, C, C)
    else:
        p = torch.softmax(z, 1)
        Hout = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("icp,icd,idq->pq", J, Hout, J) / n


def second_term(net, x, y, loss, eps, bn="eval", group=4):
    """(1/n) sum_i sum_c r_ic d^2 z_ic / dtheta^2, r = dl/dz (p - t or z - t) held fixed."""
    f = logits_fn(net, x, bn, group)
    theta = flat_params(net).double()
    z = f(theta).detach()
    t = targets(y, z.shape[1], eps)
    r = (torch.softmax(z, 1) if loss == "cross_entropy" else z) - t
    return torch.autograd.functional.hessian(lambda th: (r * f(th)).sum() / len(x), theta)


# --------------------------------------------------------------------------- the MSE loss


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_mse_loss_and_gradient_by_hand(eps):
    """L = (1/n) sum_i 1/2 sum_c (z_ic - t_ic)^2 (2/C x torch's mse_loss mean over classes), and its gradient
    J^T (z - t) / n from an ordinary backward pass."""
    net, (x, y) = tiny_net(bn=False), data()
    obj = Objective(net, x, y, chunk=5, loss="mse", label_smoothing=eps)
    net64 = reference(net)
    z = net64(x.double())
    t = targets(y, 4, eps)
    by_hand = 0.5 * ((z - t) ** 2).sum(1).mean()
    assert obj.loss() == pytest.approx(by_hand.item(), rel=1e-13)
    assert obj.loss() == pytest.approx(4 / 2 * F.mse_loss(z, t).item(), rel=1e-13)
    by_hand.backward()
    g_ref = torch.cat([p.grad.reshape(-1) for p in net64.parameters()])
    torch.testing.assert_close(obj.grad(), g_ref, rtol=1e-12, atol=1e-14)
    z2 = z.detach().requires_grad_()
    per_example_loss(z2, y, "mse", eps, reduction="sum").backward()
    torch.testing.assert_close(z2.grad, z.detach() - t, rtol=0, atol=1e-14)  # dl/dz = z - t
    assert obj.accuracy() == float((z.argmax(1) == y).double().mean())


def test_bad_loss_is_a_user_input_error():
    net, (x, y) = tiny_net(bn=False), data()
    with pytest.raises(UserInputError, match="loss must be one of cross_entropy, mse, got 'hinge'"):
        Objective(net, x, y, loss="hinge")
    with pytest.raises(UserInputError, match="loss 'l2'; choose from cross_entropy, mse"):
        TrainConfig(loss="l2")


# --------------------------------------------------------------------------- K v


@pytest.mark.parametrize("loss,eps", LOSSES)
def test_covariance_vp_against_explicit_per_example_gradients(loss, eps, monkeypatch):
    """K v and Tr K against the covariance of an autograd loop of per-example gradients (BN eval, ragged
    chunks, another theta, a subset, a block of vectors), one chunk of per-example gradients at a time."""
    net, (x, y) = tiny_net(bn=True), data(n=11)
    obj = Objective(net, x, y, chunk=4, loss=loss, label_smoothing=eps)
    gen = torch.Generator().manual_seed(7)
    theta = obj.theta0 + 0.2 * torch.randn(obj.dim, dtype=torch.float64, generator=gen)
    V = torch.randn(3, obj.dim, dtype=torch.float64, generator=gen)
    rows = []
    real = obj._grad_chunks

    def spy(th, idx):
        for G in real(th, idx):
            rows.append(G.shape[0])
            yield G

    monkeypatch.setattr(obj, "_grad_chunks", spy)
    for th in (None, theta):
        K = explicit_K(loop_grads(net, x, y, loss, eps, th))
        torch.testing.assert_close(obj.covariance_vp(V[0], theta=th), K @ V[0], rtol=1e-10, atol=1e-13)
        torch.testing.assert_close(obj.covariance_vp(V, theta=th), V @ K, rtol=1e-10, atol=1e-13)
        assert obj.covariance_trace(theta=th) == pytest.approx(float(torch.trace(K)), rel=1e-11)
    assert rows and max(rows) <= 4  # never more than a chunk of per-example gradients at once
    idx = torch.tensor([0, 3, 4, 9, 10])
    K_sub = explicit_K(loop_grads(net, x[idx], y[idx], loss, eps))
    torch.testing.assert_close(obj.covariance_vp(V[1], idx=idx), K_sub @ V[1], rtol=1e-10, atol=1e-13)
    g = obj.grad()
    torch.testing.assert_close(obj.covariance_vp(V[2], mean=g), obj.covariance_vp(V[2]), rtol=1e-12, atol=1e-15)
    with pytest.raises(UserInputError, match="v must have shape"):
        obj.covariance_vp(V[0, :-1])
    with pytest.raises(UserInputError, match="bn='eval'"):
        Objective(net, x, y, bn="batch", bn_batch=4).covariance_vp(V[0])


# --------------------------------------------------------------------------- G v


@pytest.mark.parametrize(
    "loss,eps,bn",
    [("cross_entropy", 0.0, "eval"), ("cross_entropy", 0.2, "batch"), ("mse", 0.1, "eval"), ("mse", 0.0, "batch")],
)
def test_gnvp_against_explicit_jacobian(loss, eps, bn):
    """G v against J^T H_out J built from the autograd Jacobian of the logits (bn='batch': of the
    group-normalised logits); G is symmetric positive semi-definite."""
    net, (x, y) = tiny_net(bn=True), data(n=10)
    obj = Objective(net, x, y, chunk=4, bn=bn, bn_batch=2, loss=loss, label_smoothing=eps)
    G = explicit_G(net, x, y, loss, bn, group=2)
    v = torch.randn(obj.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(obj.gnvp(v), G @ v, rtol=1e-10, atol=1e-13)
    idx = torch.tensor([2, 3, 6, 7])  # whole groups of 2
    torch.testing.assert_close(
        obj.gnvp(v, idx=idx), explicit_G(net, x[idx], y[idx], loss, bn, group=2) @ v, rtol=1e-10, atol=1e-13
    )
    torch.testing.assert_close(G, G.T, rtol=0, atol=1e-13)
    assert float(torch.linalg.eigvalsh(G)[0]) > -1e-12


def test_cross_entropy_gauss_newton_is_the_fisher_whatever_the_smoothing():
    """For cross-entropy G = (1/n) sum_i sum_c p_ic grad log p_ic grad log p_ic^T (the Fisher, classes drawn
    from the model), by autograd per example and class; smoothing the targets leaves G unchanged."""
    net, (x, y) = tiny_net(bn=True), data(n=6)
    net64 = reference(net)
    params = list(net64.parameters())
    F_mat = 0
    for i in range(6):
        logp = torch.log_softmax(net64(x[i : i + 1].double())[0], 0)
        for c in range(4):
            gc = torch.cat([g.reshape(-1) for g in torch.autograd.grad(logp[c], params, retain_graph=True)])
            F_mat = F_mat + logp[c].exp().detach() * torch.outer(gc, gc)
    F_mat = F_mat / 6
    v = torch.randn(F_mat.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    for eps in (0.0, 0.3):
        obj = Objective(net, x, y, label_smoothing=eps)
        torch.testing.assert_close(obj.gnvp(v), F_mat @ v, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("loss,eps,bn", [("mse", 0.0, "eval"), ("mse", 0.1, "batch"), ("cross_entropy", 0.1, "eval")])
def test_hessian_is_gauss_newton_plus_the_residual_term(loss, eps, bn):
    """H - G = (1/n) sum_i sum_c r_ic d^2 z_ic/dtheta^2 (r = z - t for MSE): the dense H of hvp minus the
    explicit G, and minus the dense G of gnvp."""
    net, (x, y) = bn_mlp(), mlp_data(8)
    obj = Objective(net, x, y, chunk=4, bn=bn, bn_batch=4, loss=loss, label_smoothing=eps)
    H = eigen.dense_matrix(obj.hvp, obj.theta0)
    S = second_term(net, x, y, loss, eps, bn, group=4)
    G = explicit_G(net, x, y, loss, bn, group=4)
    torch.testing.assert_close(H - G, S, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(H - eigen.dense_matrix(obj.gnvp, obj.theta0), S, rtol=1e-9, atol=1e-11)
    assert float(torch.linalg.matrix_norm(S)) > 1e-3 * float(torch.linalg.matrix_norm(H))  # a real second term


@pytest.mark.parametrize("loss,eps", LOSSES)
def test_a_linear_model_has_H_equal_to_G(loss, eps):
    """z = W x + b is linear in theta: d^2 z/dtheta^2 = 0, so H = G (for MSE H = (1/n) sum_i J_i^T J_i)."""
    torch.manual_seed(0)
    net = nn.Linear(6, 3)
    x, y = mlp_data(9)
    obj = Objective(net, x, y, chunk=4, loss=loss, label_smoothing=eps)
    H = eigen.dense_matrix(obj.hvp, obj.theta0)
    G = eigen.dense_matrix(obj.gnvp, obj.theta0)
    torch.testing.assert_close(H, G, rtol=1e-12, atol=1e-14)
    if loss == "mse":  # J_i = [x_i^T (x) I_3, I_3]: H = (1/n) sum_i [x_i; 1][x_i; 1]^T (x) I_3, row-major W
        X1 = torch.cat([x.double(), torch.ones(9, 1, dtype=torch.float64)], 1)
        M = X1.T @ X1 / 9
        P = torch.zeros(21, 21, dtype=torch.float64)
        P[:18, :18] = torch.kron(torch.eye(3, dtype=torch.float64), M[:6, :6])
        P[18:, 18:] = torch.eye(3, dtype=torch.float64)
        P[:18, 18:] = torch.kron(torch.eye(3, dtype=torch.float64), M[:6, 6:])
        P[18:, :18] = P[:18, 18:].T
        torch.testing.assert_close(H, P, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------------------- Hutchinson products


def test_hutchinson_products_are_unbiased_for_explicit_matrices():
    """Same probes for A, B: tr A, tr B, tr(AB) within 5 SE of the truth (S = 400, P = 7), cos_AB = tr(AB) /
    (||A||_F ||B||_F) of the estimates, and the block size does not change the probes."""
    gen = torch.Generator().manual_seed(0)
    Ma, Mb = (
        torch.randn(7, 7, dtype=torch.float64, generator=gen),
        torch.randn(7, 7, dtype=torch.float64, generator=gen),
    )
    A, B = Ma @ Ma.T, Mb @ Mb.T + Ma @ Ma.T
    ops = {"A": lambda Z: Z @ A, "B": lambda Z: Z @ B}
    like = torch.zeros(7, dtype=torch.float64)
    r = covariance.hutchinson_products(ops, like, n_samples=400, seed=3)
    for key, truth in (("trace_A", A.trace()), ("trace_B", B.trace()), ("trace_AB", (A @ B).trace())):
        assert abs(r[key] - float(truth)) < 5 * r[f"{key}_se"], key
    assert r["cos_AB"] == pytest.approx(r["trace_AB"] / (r["frobenius_A"] * r["frobenius_B"]), rel=1e-12)
    assert r["c_fit_AB"] == pytest.approx(r["trace_AB"] / r["frobenius_A"] ** 2, rel=1e-12)
    assert r["frobenius_A"] == pytest.approx(float(torch.linalg.matrix_norm(A)), rel=0.15)
    r1 = covariance.hutchinson_products(ops, like, n_samples=400, seed=3, block=1)
    assert r1["trace_AB"] == pytest.approx(r["trace_AB"], rel=1e-12)
    np.testing.assert_allclose(
        r["samples"]["trace_A"] - r["samples"]["trace_B"],
        r1["samples"]["trace_A"] - r1["samples"]["trace_B"],
        rtol=1e-12,
    )


# --------------------------------------------------------------------------- probes


def probe_cfg(**kw):
    base = dict(
        model="mlp",
        probes=("lanczos", "trace", "covariance", "exact_covariance", "gauss_newton"),
        top_k=3,
        lanczos_tol=1e-10,
        lanczos_max_iter=200,
        hutchinson_samples=120,
        cov_batches=4,
        cov_batch=4,
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_probes_against_dense_K_G_H(loss):
    """exact_covariance and gauss_newton through the registry against eigh of the explicit K (autograd loop),
    G (autograd Jacobian) and H (autograd Hessian), float64 MLP with P = 43."""
    net, (x, y) = mlp(), mlp_data(16)
    obj = Objective(net, x, y, chunk=16, loss=loss)
    c = probe_cfg(loss=loss)
    out = probes_mod.run_probes(c.probes, probes_mod.ProbeContext(cfg=c, model=net, objective=obj))
    K = explicit_K(loop_grads(net, x, y, loss, 0.0))
    G = explicit_G(net, x, y, loss)
    H = torch.autograd.functional.hessian(lambda t: hand_loss(logits_fn(net, x)(t), y, loss, 0.0).mean(), obj.theta0)
    (wK, VK), (wG, VG), (wH, VH) = (torch.linalg.eigh(A) for A in (K, G, H))
    eK, eG, eH = VK[:, -5:].flip(1).T, VG[:, -3:].flip(1).T, VH[:, -3:].flip(1).T  # rows, largest first
    for i in range(5):
        assert out[f"lambda_Kx_{i + 1}"] == pytest.approx(float(wK[-1 - i]), rel=1e-7)
    for i in range(3):
        assert out[f"lambda_G_{i + 1}"] == pytest.approx(float(wG[-1 - i]), rel=1e-7)
    assert out["lambda_K_exact"] == out["lambda_Kx_1"] and out["lambda_G"] == out["lambda_G_1"]
    assert out["trace_K_exact"] == pytest.approx(float(K.trace()), rel=1e-11)
    assert out["lambda_K_gram_over_exact"] == pytest.approx(out["lambda_K"] / float(wK[-1]), rel=1e-7)
    assert out["trace_K_gram_over_exact"] == pytest.approx(out["trace_K"] / float(K.trace()), rel=1e-10)
    assert 0 <= out["cos_eK1_gram_exact"] <= 1
    lam1 = float(wH[-1])
    assert out["alpha_eH1_exact"] == pytest.approx(float(eH[0] @ K @ eH[0]) / lam1, rel=1e-6)
    assert out["cos_eKx1_eH1"] == pytest.approx(float(abs(eK[0] @ eH[0])), abs=1e-6)
    assert out["overlap_Kx_H"] == pytest.approx(float(((eH @ eK.T) ** 2).sum()) / 5, abs=1e-6)
    assert out["cos_eG1_eH1"] == pytest.approx(float(abs(eG[0] @ eH[0])), abs=1e-6)
    assert out["overlap_G_H"] == pytest.approx(float(((eH @ eG.T) ** 2).sum()) / 3, abs=1e-6)
    assert out["cos_eG1_eKx1"] == pytest.approx(float(abs(eG[0] @ eK[0])), abs=1e-6)
    r = (H - G) @ eH[0]
    assert out["second_term_norm_eH1"] == pytest.approx(float(r.norm()) / lam1, rel=1e-6, abs=1e-9)
    assert out["second_term_eH1"] == pytest.approx(float(eH[0] @ r) / lam1, rel=1e-6, abs=1e-9)
    for key, truth in (
        ("trace_G", G.trace()),
        ("trace_H_minus_G", (H - G).trace()),
        ("trace_HG", (H @ G).trace()),
        ("trace_HKx", (H @ K).trace()),
        ("trace_GKx", (G @ K).trace()),
    ):
        assert abs(out[key] - float(truth)) < 5 * out[f"{key}_se"], key
    assert out["cos_HKx"] == pytest.approx(out["trace_HKx"] / (out["frobenius_H"] * out["frobenius_Kx"]), rel=1e-12)
    true_cos = float((H @ K).trace() / (torch.linalg.matrix_norm(H) * torch.linalg.matrix_norm(K)))
    assert abs(out["cos_HKx"] - true_cos) < 0.1
    assert all(math.isfinite(float(v)) for v in out.values())


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_new_probes_leave_the_model_bit_identical(loss):
    net, (x, y) = tiny_net(bn=True), data()
    net.train(True)
    before = model_state(net)
    obj = Objective(net, x, y, loss=loss, dtype=torch.float32)
    c = probe_cfg(model="simplecnn-bn", loss=loss, lanczos_tol=1e-3, lanczos_max_iter=30, hutchinson_samples=3)
    state: dict = {}
    for step in (0, 1):  # the second probe time warm-starts from the first's eigenvectors
        ctx = probes_mod.ProbeContext(cfg=c, model=net, objective=obj.load(net), state=state, step=step)
        out = probes_mod.run_probes(c.probes, ctx)
        for k in ("lambda_K_exact", "trace_K_exact", "lambda_G", "trace_H_minus_G", "cos_HKx", "alpha_eH1_exact"):
            assert math.isfinite(out[k]), k
        assert all(math.isfinite(float(v)) for v in out.values())
    assert {"eigvecs_Kx", "eigvecs_G"} <= set(state)
    after = model_state(net)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert net.training and next(net.parameters()).dtype == torch.float32


def test_probe_dependencies_are_named():
    with pytest.raises(UserInputError, match="gauss_newton need the top eigenvectors: add 'lanczos'"):
        TrainConfig(probes=("gauss_newton",))
    with pytest.raises(UserInputError, match="exact_covariance probes need independent examples"):
        TrainConfig(model="simplecnn-bn", bn="batch", probes=("exact_covariance",))
    TrainConfig(model="simplecnn-bn", bn="batch", probes=("lanczos", "gauss_newton"))  # G is defined there


# --------------------------------------------------------------------------- training with MSE


def test_mse_runs_train_on_the_mse_loss(tmp_path):
    """A GD step of an MSE run is theta - eta grad of Objective(loss='mse') on the training set; a short SGD run
    with the new probes writes finite rows whose measure_loss is the MSE; a run stored before the loss option
    existed resumes (its config lacks the key), and another loss on the same directory is refused."""
    from dnn.data import channel_stats, normalize, to_float_nchw
    from dnn.models import build_model
    from dnn.train import train

    x, y = synthetic_images(24)
    common = dict(model="simplecnn", width=0.125, batch=8, measure_size=12, channels_last=False, augment=False)
    c = TrainConfig(**common, loss="mse", optimizer="gd", lr=0.05, epochs=1, probes=())
    train(c, tmp_path / "gd", x, y, progress=False)
    model0 = build_model("simplecnn", input_shape=(3, 8, 8), width=0.125, seed=0)
    mean, std = channel_stats(x)
    obj = Objective(model0, normalize(to_float_nchw(x), mean, std), torch.as_tensor(y), loss="mse")
    expected = obj.theta0 - c.lr * obj.grad()
    model0.load_state_dict(torch.load(tmp_path / "gd" / "checkpoint.pt", weights_only=True)["state"]["model"])
    torch.testing.assert_close(flat_params(model0).double(), expected, rtol=0, atol=2e-6)
    ce_grad = Objective(
        build_model("simplecnn", input_shape=(3, 8, 8), width=0.125, seed=0), obj.inputs, obj.targets
    ).grad()
    assert float((ce_grad - obj.grad()).norm()) > 0.1 * float(obj.grad().norm())  # not the cross-entropy step

    sgd = TrainConfig(
        **common,
        loss="mse",
        lr=0.05,
        max_steps=2,
        probes=("lanczos", "exact_covariance", "gauss_newton"),
        top_k=2,
        lanczos_max_iter=20,
        hutchinson_samples=2,
    )
    rows = train(sgd, tmp_path / "sgd", x, y, test=synthetic_images(10, seed=4), progress=False).rows()
    assert [r["step"] for r in rows] == [0, 2] and all(r["loss"] == "mse" for r in rows)
    for r in rows:
        assert all(math.isfinite(r[k]) for k in ("measure_loss", "test_loss", "lambda_G", "lambda_K_exact"))
    assert 0.3 < rows[0]["measure_loss"] < 1.5  # 1/2 ||z - e_y||^2 at init (~1/2), not a cross-entropy (~log 10)

    ce = TrainConfig(**common, lr=0.05, max_steps=1, probes=())
    rows = train(ce, tmp_path / "old", x, y, progress=False).rows()
    import json

    path = tmp_path / "old" / "config.json"
    stored = json.loads(path.read_text())
    del stored["loss"]  # a run from before the option
    path.write_text(json.dumps(stored))
    assert train(ce, tmp_path / "old", x, y, progress=False).rows() == rows
    with pytest.raises(UserInputError, match="differs in: loss"):
        train(TrainConfig(**common, lr=0.05, max_steps=1, probes=(), loss="mse"), tmp_path / "old", x, y)
