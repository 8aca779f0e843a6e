"""Landscape construction: generators hit their targets, files load by shape, bad input is named."""

import numpy as np
import pytest

from valleysim.errors import UserInputError
from valleysim.quadratic.landscape import PerExampleQuadratic, generate, load_hessians


@pytest.mark.parametrize("kind", ["diagonal", "dense", "rank_one"])
def test_generated_top_curvature_is_exact_and_examples_psd(kind):
    q = generate(kind, 50, 6, lambda_max=3.5, nonuniformity=0.7, seed=5)
    assert np.linalg.eigvalsh(q.mean_hessian())[-1] == pytest.approx(3.5, rel=1e-12)
    assert np.all(np.linalg.eigvalsh(q.hessians()) >= -1e-12)


def test_diagonal_generator_spectrum_and_spread():
    q = generate("diagonal", 20000, 3, lambda_max=2.0, nonuniformity=0.5, condition=4.0, seed=0)
    np.testing.assert_allclose(q.data.mean(0), [2.0, 1.0, 0.5], rtol=1e-12)  # geometric, exact
    np.testing.assert_allclose(q.data.std(0) / q.data.mean(0), 0.5, rtol=0.05)  # Gamma shape 1/0.5^2


def test_load_by_shape(tmp_path):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((7, 3, 3))
    for arr, kind, D in [
        (rng.random(7), "diagonal", 1),
        (rng.random((7, 4)), "diagonal", 4),
        (A @ A.transpose(0, 2, 1), "dense", 3),
    ]:
        np.save(tmp_path / "h.npy", arr)
        q = load_hessians(tmp_path / "h.npy")
        assert (q.kind, q.N, q.D) == (kind, 7, D)
        np.testing.assert_allclose(
            q.hessians().reshape(7, -1)[:, :: D + 1],
            arr.reshape(7, -1) if arr.ndim < 3 else arr.reshape(7, -1)[:, :: D + 1],
        )


def test_indefinite_examples_with_psd_mean_are_accepted():
    q = PerExampleQuadratic("diagonal", np.array([[3.0], [-1.0]]))
    assert q.mean_hessian()[0, 0] == 1.0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(kind="dense", N=0, D=2), "N"),
        (dict(kind="dense", N=3, D=2, lambda_max=-1.0), "lambda_max"),
        (dict(kind="sparse", N=3, D=2), "kind"),
        (dict(kind="diagonal", N=3, D=2, condition=0.5), "condition"),
    ],
)
def test_generator_rejects_bad_parameters(kwargs, name):
    with pytest.raises(UserInputError, match=name):
        generate(kwargs.pop("kind"), kwargs.pop("N"), kwargs.pop("D"), **kwargs)
