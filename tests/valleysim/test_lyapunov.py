"""Almost-sure growth: exact enumeration vs long random products, and Jensen's inequality."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from valleysim.quadratic.integrator import initial_points
from valleysim.quadratic.landscape import PerExampleQuadratic, generate
from valleysim.quadratic.lyapunov import lyapunov_exact, lyapunov_exponent, mean_square_growth_mc
from valleysim.quadratic.second_moment import MomentMap
from valleysim.theory import variance_factor


def test_exact_one_dimensional_value_by_hand():
    # h = (1, 3), S = 1 without replacement: gamma = (log|1 - eta| + log|1 - 3 eta|) / 2
    q = PerExampleQuadratic("diagonal", np.array([[1.0], [3.0]]))
    eta = 0.4
    assert lyapunov_exact(q, eta, 1) == pytest.approx(0.5 * (np.log(0.6) + np.log(0.2)), rel=1e-14)
    # with replacement, S = 2: batches {1,1}, {1,3} twice, {3,3}
    expected = 0.25 * np.log(0.6) + 0.5 * np.log(abs(1 - 0.8)) + 0.25 * np.log(abs(1 - 1.2))
    assert lyapunov_exact(q, eta, 2, "with_replacement") == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("scheme", ["without_replacement", "with_replacement", "reshuffle"])
def test_monte_carlo_agrees_with_enumeration(scheme):
    q = generate("diagonal", 12, 2, nonuniformity=0.9, seed=3)
    dense = PerExampleQuadratic("dense", q.hessians())  # same landscape, forced onto the MC path
    for eta in (0.8, 1.9):
        exact = lyapunov_exact(q, eta, 3, scheme)
        mc = lyapunov_exponent(dense, eta, 3, scheme, n_steps=3000, n_traj=256, seed=1)
        assert mc["method"] == "monte_carlo"
        assert abs(mc["value"] - exact) < 5 * mc["se"] + 2e-3, (eta, mc, exact)


@given(
    N=st.integers(2, 9),
    S=st.integers(1, 9),
    eta=st.floats(0.05, 4.0),
    seed=st.integers(0, 10**6),
    scheme=st.sampled_from(["without_replacement", "with_replacement"]),
)
def test_almost_sure_rate_below_mean_square_rate(N, S, eta, seed, scheme):
    """Jensen: 2 gamma <= log rho(T(eta)) (mean-square stable implies a.s. stable)."""
    S = min(S, N)
    q = generate("diagonal", N, 2, nonuniformity=1.0, seed=seed)
    gamma = lyapunov_exact(q, eta, S, scheme)
    rho = MomentMap(q).spectral_radius(eta, variance_factor(S, N, scheme))
    assert 2 * gamma <= np.log(rho) + 1e-9


def test_mean_square_growth_monte_carlo_light_tails():
    q = generate("dense", 20, 3, nonuniformity=0.3, seed=2)
    eta, S = 1.5, 4
    mc = mean_square_growth_mc(q, eta, S, n_steps=60, burn_in=20, n_traj=20000, seed=4)
    log_rho = np.log(MomentMap(q).spectral_radius(eta, variance_factor(S, 20)))
    assert abs(mc["value"] - log_rho) < 5 * mc["se"] + 1e-3, (mc, log_rho)


def test_effective_sample_size_flags_heavy_tails():
    # full batch (GD) in 1-D: psi_T = r^T psi_0, so the weights are psi_0^2 up to one factor
    q = PerExampleQuadratic("diagonal", np.array([[1.0], [3.0]]))
    gd = mean_square_growth_mc(q, 0.3, 2, n_steps=8, burn_in=2, n_traj=500, seed=1)
    z2 = initial_points(q, 500, seed=1)[:, 0] ** 2
    assert gd["effective_sample_size"] == pytest.approx(z2.sum() ** 2 / (z2 @ z2), rel=1e-9)
    # S = 1, one large curvature: E psi_T^2 rests on the rare paths that hit h = 10 often
    h = np.r_[np.full(31, 0.5), 10.0][:, None]
    heavy = mean_square_growth_mc(
        PerExampleQuadratic("diagonal", h), 0.6, 1, n_steps=12, burn_in=3, n_traj=20000, seed=1
    )
    assert heavy["effective_sample_size"] < 100
