"""The numba ensemble against exact moments, exact batch laws and its reproducibility contract."""

import itertools
import math

import numba
import numpy as np
import pytest

from valleysim.errors import UserInputError
from valleysim.quadratic import reshuffle
from valleysim.quadratic.integrator import simulate
from valleysim.quadratic.landscape import PerExampleQuadratic, generate
from valleysim.quadratic.second_moment import MomentMap
from valleysim.theory import variance_factor

K_SE = 5.0  # Monte Carlo tolerance in standard errors


def exact_mean_dist2(q, eta, S, scheme, t):
    """E||u_t||^2 = tr(T^t(P)) for u_0 ~ N(0, P), in the reduced coordinates."""
    m = MomentMap(q)
    sigma = np.eye(m.r)
    c = variance_factor(S, q.N, scheme)
    for _ in range(t):
        sigma = m.transition(sigma, eta, c)
    return np.trace(sigma)


@pytest.mark.parametrize("kind", ["diagonal", "dense", "rank_one"])
@pytest.mark.parametrize("scheme", ["without_replacement", "with_replacement"])
def test_mean_square_distance_matches_exact_recursion(kind, scheme):
    q = generate(kind, 10, 4 if kind != "rank_one" else 12, nonuniformity=0.6, seed=7)
    eta, S, t = 0.8, 3, 6
    rec = simulate(q, eta, S, steps=t, trajectories=20000, seed=11, scheme=scheme, record_every=t)
    d2 = rec.dist2[:, -1]
    expected = exact_mean_dist2(q, eta, S, scheme, t)
    se = d2.std(ddof=1) / np.sqrt(d2.size)
    assert abs(d2.mean() - expected) < K_SE * se, (d2.mean(), expected, se)


def test_reshuffle_epoch_matches_exact_epoch_map():
    q = generate("dense", 6, 2, nonuniformity=0.8, seed=5)
    eta, S = 0.9, 2
    M = reshuffle.epoch_matrices(q, eta, S)  # every permutation, equally likely; u_0 ~ N(0, I)
    expected = np.mean(np.einsum("pab,pab->p", M, M))  # E tr(M M^T)
    rec = simulate(q, eta, S, steps=3, trajectories=20000, seed=2, scheme="reshuffle", record_every=3)
    d2 = rec.dist2[:, -1]
    se = d2.std(ddof=1) / np.sqrt(d2.size)
    assert abs(d2.mean() - expected) < K_SE * se


def _batch_frequencies(scheme, N, S, n_traj):
    """1-D curvatures 2^i make the batch identifiable from one step: u_1 = 1 - eta h_B."""
    h = 2.0 ** np.arange(N)
    q = PerExampleQuadratic("diagonal", h[:, None])
    rec = simulate(q, 1.0 / h.sum(), S, steps=1, trajectories=n_traj, seed=3, scheme=scheme, w0=np.ones(1))
    sums = np.rint((1.0 - np.sqrt(rec.dist2[:, -1])) * h.sum() * S).astype(int)  # sum of 2^i over B
    return sums


def test_without_replacement_draws_uniform_subsets():
    N, S, R = 5, 2, 30000
    sums = _batch_frequencies("without_replacement", N, S, R)
    subsets = [sum(2**i for i in b) for b in itertools.combinations(range(N), S)]
    counts = np.array([np.sum(sums == s) for s in subsets])
    assert counts.sum() == R  # no repeated index, every batch is a proper subset
    expected = R / len(subsets)
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < 30.0  # df = 9: P(chi2 > 30) ~ 4e-4


def test_with_replacement_draws_multinomial():
    N, S, R = 4, 2, 30000
    sums = _batch_frequencies("with_replacement", N, S, R)
    probs = {}
    for b in itertools.product(range(N), repeat=S):
        key = sum(2**i for i in b)
        probs[key] = probs.get(key, 0) + N**-S
    counts = np.array([np.sum(sums == k) for k in probs])
    assert counts.sum() == R
    expected = R * np.array(list(probs.values()))
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < 30.0  # df = 9


def test_same_seed_same_trajectories_for_any_thread_count():
    q = generate("dense", 30, 5, seed=1)
    before = numba.get_num_threads()
    runs = []
    try:
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            runs.append(simulate(q, 0.9, 4, steps=50, trajectories=33, seed=9, scheme="reshuffle", record_every=7))
    finally:
        numba.set_num_threads(before)
    for field in ("dist2", "loss", "log_norm", "diverged_step"):
        np.testing.assert_array_equal(getattr(runs[0], field), getattr(runs[1], field))
    other = simulate(q, 0.9, 4, steps=50, trajectories=33, seed=10, scheme="reshuffle", record_every=7)
    assert not np.array_equal(other.dist2, runs[0].dist2)


@pytest.mark.parametrize("scheme", ["without_replacement", "with_replacement"])
def test_trajectory_depends_only_on_seed_and_index(scheme):
    # the kernel's blocking follows R and the thread count; trajectory r must not
    q = generate("dense", 30, 5, seed=1)
    small = simulate(q, 0.9, 4, steps=50, trajectories=20, seed=9, scheme=scheme, record_every=7)
    large = simulate(q, 0.9, 4, steps=50, trajectories=700, seed=9, scheme=scheme, record_every=7)
    np.testing.assert_array_equal(small.dist2, large.dist2[:20])
    np.testing.assert_array_equal(small.log_norm, large.log_norm[:20])


def test_divergence_is_flagged_not_raised():
    q = PerExampleQuadratic("diagonal", np.array([[1.0], [3.0]]))
    rec = simulate(q, 1.5, 2, steps=500, trajectories=4, seed=0, w0=np.ones(1), divergence_threshold=1e50)
    # GD factor |1 - 1.5 * 2| = 2: ||u_t||^2 = 4^t crosses 1e50 first at t = ceil(50 / log10(4)) = 84
    assert np.all(rec.diverged_step == math.ceil(50 / np.log10(4.0)))
    assert np.all(np.isinf(rec.dist2[:, -1]))
    assert np.all(np.isfinite(rec.dist2[:, rec.steps < 84]))


def test_records_loss_and_log_norm_consistently():
    q = generate("rank_one", 8, 12, seed=4)
    rec = simulate(q, 0.5, 2, steps=40, trajectories=16, seed=0, record_every=10)
    np.testing.assert_allclose(rec.log_norm, 0.5 * np.log(rec.dist2 / rec.dist2[:, :1]), atol=1e-12)
    ren = simulate(q, 0.5, 2, steps=40, trajectories=16, seed=0, record_every=10, renormalize=True)
    np.testing.assert_allclose(ren.dist2, rec.dist2, rtol=1e-9)
    np.testing.assert_allclose(ren.loss, rec.loss, rtol=1e-9)
    np.testing.assert_allclose(ren.log_norm, rec.log_norm, atol=1e-9)  # both relative to ||u_0||
    # GD on the loss: 0 <= L <= lambda_max / 2 * dist2
    assert np.all(rec.loss <= 0.5 * np.linalg.eigvalsh(q.mean_hessian())[-1] * rec.dist2 * (1 + 1e-12))


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(eta=0.0), "eta"),
        (dict(eta=float("nan")), "eta"),
        (dict(batch_size=0), "batch size"),
        (dict(batch_size=11), "batch size"),
        (dict(scheme="bogus"), "scheme"),
        (dict(steps=-1), "steps"),
    ],
)
def test_bad_input_names_the_parameter(kwargs, name):
    q = generate("diagonal", 10, 2, seed=0)
    args = dict(eta=0.1, batch_size=2, steps=5) | kwargs
    with pytest.raises(UserInputError, match=name):
        simulate(q, args.pop("eta"), args.pop("batch_size"), **args)
