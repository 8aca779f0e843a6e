"""R6 on a concrete model: H = G - (1/N) sum hess p_k / p_k and K = G - g g^T (proofs.gauss_newton).

Truths: the sympy derivation itself, and for a softmax classifier (3 classes,
2 features, 6 parameters, N = 6 examples) central finite differences of the
loss and of p_k, per-example gradients in closed form, and the mini-batch
gradient covariance by enumerating every batch drawn without replacement.
"""

import itertools

import numpy as np

from proofs import gauss_newton
from valleysim.theory import variance_factor

rng = np.random.default_rng(11)
X = rng.normal(size=(6, 2))  # (N, features)
Y = np.array([0, 1, 2, 0, 1, 2])  # labels
W0 = rng.normal(size=6)  # (classes * features,) flattened weights


def probs(w, k):
    z = w.reshape(3, 2) @ X[k]
    e = np.exp(z - z.max())
    return e / e.sum()


def p_label(w, k):
    return probs(w, k)[Y[k]]


def loss(w):
    return -np.mean([np.log(p_label(w, k)) for k in range(len(Y))])


def example_grads(w):
    """grad l_k = (softmax - onehot) x_k^T, (N, 6)."""
    out = []
    for k in range(len(Y)):
        r = probs(w, k) - np.eye(3)[Y[k]]
        out.append(np.outer(r, X[k]).ravel())
    return np.array(out)


def fd_hessian(f, w, h=1e-4):
    d = len(w)
    E = np.eye(d) * h
    return np.array(
        [
            [
                (f(w + E[a] + E[b]) - f(w + E[a] - E[b]) - f(w - E[a] + E[b]) + f(w - E[a] - E[b])) / (4 * h * h)
                for b in range(d)
            ]
            for a in range(d)
        ]
    )


def test_sympy_derivation_holds():
    gauss_newton.derive()  # raises on any failed step


def test_hessian_decomposition_on_a_softmax_classifier():
    gk = example_grads(W0)
    g = gk.mean(axis=0)
    G = gk.T @ gk / len(Y)
    second = -np.mean([fd_hessian(lambda w, k=k: p_label(w, k), W0) / p_label(W0, k) for k in range(len(Y))], axis=0)
    H = fd_hessian(loss, W0)
    np.testing.assert_allclose(H, G + second, atol=1e-6)
    K = np.cov(gk.T, ddof=0)
    np.testing.assert_allclose(K, G - np.outer(g, g), atol=1e-12)
    assert np.min(np.linalg.eigvalsh(G)) > -1e-12  # negative curvature only from term 2


def test_minibatch_gradient_covariance_is_c_times_centred_K():
    gk = example_grads(W0)
    N, S = len(Y), 2
    batches = np.array([gk[list(b)].mean(axis=0) for b in itertools.combinations(range(N), S)])
    cov = np.cov(batches.T, ddof=0)
    K = np.cov(gk.T, ddof=0)
    np.testing.assert_allclose(cov, variance_factor(S, N) * K, atol=1e-12)
    G = gk.T @ gk / N
    assert np.abs(cov - variance_factor(S, N) * G).max() > 1e-3  # the uncentred G is not the covariance
