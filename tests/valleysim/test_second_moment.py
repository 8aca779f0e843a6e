"""The second-moment map against exact batch enumeration, the Kronecker reference and theorems."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from valleysim.quadratic.landscape import PerExampleQuadratic, generate, least_squares
from valleysim.quadratic.second_moment import MomentMap, dense_transition, eta_star_dense, mean_square
from valleysim.theory import eta_star_1d, necessary_eta_bounds, variance_factor

KINDS = ["diagonal", "dense", "rank_one"]


def enumerated_step(q, eta, S, scheme, sigma):
    """E_B[(I - eta H_B) Sigma (I - eta H_B)] by listing every subset or every ordered tuple."""
    Hs, eye = q.hessians(), np.eye(q.D)
    if scheme == "without_replacement":
        batches = list(itertools.combinations(range(q.N), S))
    else:
        batches = list(itertools.product(range(q.N), repeat=S))
    out = np.zeros_like(sigma)
    for b in batches:
        M = eye - eta * Hs[list(b)].mean(axis=0)
        out += M @ sigma @ M.T
    return out / len(batches)


def random_sigma(D, seed):
    A = np.random.default_rng(seed).standard_normal((D, D))
    return A @ A.T


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scheme", ["without_replacement", "with_replacement"])
@pytest.mark.parametrize("S", [1, 2, 4])
def test_one_step_map_equals_enumeration(kind, scheme, S):
    # D = 5 > N = 4 makes the rank-one landscape genuinely over-parameterised.
    q = generate(kind, 4, 5 if kind == "rank_one" else 3, nonuniformity=0.8, seed=S)
    red = q.reduced()
    sigma = random_sigma(red.D, 1)
    c = variance_factor(S, q.N, scheme)
    expected = enumerated_step(red, 0.7, S, scheme, sigma)
    np.testing.assert_allclose(MomentMap(q).transition(sigma, 0.7, c), expected, rtol=1e-12, atol=1e-12)
    via_kron = (dense_transition(q, 0.7, c) @ sigma.reshape(-1)).reshape(sigma.shape)
    np.testing.assert_allclose(via_kron, expected, rtol=1e-12, atol=1e-12)


def test_least_squares_manifold_and_reduction():
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((3, 6)), rng.standard_normal(3)
    q = least_squares(X, y)
    np.testing.assert_allclose(X @ q.w_star, y, atol=1e-12)  # w* interpolates
    np.testing.assert_allclose(q.w_star, np.linalg.pinv(X) @ y, atol=1e-12)  # minimum norm
    assert MomentMap(q).r == 3  # the flat directions (null space of X) are removed
    U = q.range_basis()
    np.testing.assert_allclose(U @ U.T @ X.T, X.T, atol=1e-12)
    w = q.w_star + rng.standard_normal(6)
    np.testing.assert_allclose(q.loss(w), 0.5 * np.mean((X @ w - y) ** 2), rtol=1e-12)


landscapes = st.builds(
    lambda kind, N, D, nu, seed: generate(kind, N, D, nonuniformity=nu, seed=seed),
    st.sampled_from(KINDS),
    st.integers(2, 8),
    st.integers(1, 4),
    st.floats(0.1, 2.0),
    st.integers(0, 2**31 - 1),
)


@given(q=landscapes, data=st.data())
def test_eta_star_theorems(q, data):
    S = data.draw(st.integers(1, q.N), label="S")
    m = MomentMap(q)
    c = variance_factor(S, q.N)
    es = m.eta_star(c)
    # matrix-free equals the dense generalized-eigenvalue reference
    assert es == pytest.approx(eta_star_dense(q, c), rel=1e-8)
    # the boundary: rho(T(eta*)) = 1, stable just below, unstable just above
    assert m.spectral_radius(es, c) == pytest.approx(1.0, abs=1e-8)
    assert m.spectral_radius(0.99 * es, c) < 1.0 < m.spectral_radius(1.01 * es, c)
    # necessary conditions
    sharp, noise = necessary_eta_bounds(m.lambda_max, m.nonuniformity(), c)
    assert es <= sharp * (1 + 1e-9) and es <= noise * (1 + 1e-9)
    # full batch: eta* = 2 / lambda_max exactly
    assert m.eta_star(variance_factor(q.N, q.N)) == pytest.approx(2.0 / m.lambda_max, rel=1e-9)
    # monotone in S
    if S < q.N:
        assert m.eta_star(variance_factor(S + 1, q.N)) >= es * (1 - 1e-10)


def test_commonly_cited_nonuniformity_bound_is_not_necessary():
    """proofs/ERRATA.md item 7: s^2 = lambda_max(E[(H_i - H)^2]) does not give a necessary bound."""
    q = generate("rank_one", 10, 2, nonuniformity=0.6262589118729796, seed=3)
    c = variance_factor(2, 10)  # S = 2
    Hs = q.hessians()
    H = Hs.mean(axis=0)
    s_wu = np.sqrt(np.linalg.eigvalsh(np.mean([(A - H) @ (A - H) for A in Hs], axis=0))[-1])
    eta = 1.01 / (np.sqrt(c) * s_wu)  # violates the cited condition eta^2 c s_wu^2 <= 1
    rho = np.max(np.abs(np.linalg.eigvals(dense_transition(q, eta, c))))  # Kronecker reference
    assert rho < 1.0  # yet mean-square stable
    assert eta_star_dense(q, c) > eta
    m = MomentMap(q)
    _, noise = necessary_eta_bounds(m.lambda_max, m.nonuniformity(), c)
    assert eta_star_dense(q, c) <= noise  # the bound with s^2 = rho(N) holds


@given(
    N=st.integers(2, 30),
    S=st.integers(1, 30),
    nu=st.floats(0.05, 3.0),
    seed=st.integers(0, 10**6),
    scheme=st.sampled_from(["without_replacement", "with_replacement"]),
)
def test_one_dimensional_formula_equals_general(N, S, nu, seed, scheme):
    S = min(S, N)
    q = generate("diagonal", N, 1, lambda_max=2.0, nonuniformity=nu, seed=seed)
    h = q.data[:, 0]
    c = variance_factor(S, N, scheme)
    assert MomentMap(q).eta_star(c) == pytest.approx(eta_star_1d(h.mean(), h.var(), c), rel=1e-10)


@given(
    q=st.builds(
        lambda N, D, seed: generate("diagonal", N, D, nonuniformity=0.9, seed=seed),
        st.integers(2, 10),
        st.integers(2, 5),
        st.integers(0, 10**6),
    ),
    S=st.integers(1, 10),
)
def test_diagonal_is_worst_coordinate(q, S):
    S = min(S, q.N)
    c = variance_factor(S, q.N)
    per_coord = eta_star_1d(q.data.mean(0), q.data.var(0), c)
    assert MomentMap(q).eta_star(c) == pytest.approx(per_coord.min(), rel=1e-10)


def test_matrix_free_matches_reference_at_larger_size():
    # exercises the Arnoldi path (r^2 >= 64) and the r^4 moment matrix
    q = generate("dense", 40, 9, nonuniformity=0.6, seed=3)
    m = MomentMap(q)
    c = variance_factor(5, 40)
    assert m.eta_star(c) == pytest.approx(eta_star_dense(q, c), rel=1e-8)
    rho_ref = np.max(np.abs(np.linalg.eigvals(dense_transition(q, 1.1, c))))
    assert m.spectral_radius(1.1, c) == pytest.approx(rho_ref, rel=1e-8)


def test_indefinite_examples_allowed_and_singular_directions_unstable():
    # H_1 = diag(1, 1), H_2 = diag(1, -1): mean diag(1, 0) is PSD; the second
    # coordinate has zero mean curvature but noise, so eta* = 0.
    q = PerExampleQuadratic("diagonal", np.array([[1.0, 1.0], [1.0, -1.0]]))
    assert MomentMap(q).eta_star(variance_factor(1, 2)) == 0.0
    assert not mean_square(q, 0.1, 1)["mean_square_stable"]
