"""The valleysim command: JSON output checked against independent truth, user errors exit 2."""

import json

import numpy as np
import pytest

from valleysim.cli import main
from valleysim.theory import eta_star_1d, variance_factor


@pytest.mark.parametrize("eta", [0.6, 1.4])  # mean-square stable / unstable
def test_stability_json_one_dimensional(tmp_path, capsys, eta):
    h = np.array([0.5, 1.0, 1.5, 3.0, 0.2, 2.2])
    path = tmp_path / "H.npy"
    np.save(path, h)
    S = 2
    assert (
        main(["stability", "--hessians", str(path), "--batch", str(S), "--eta", str(eta), "--json", "--simulate"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    c = variance_factor(S, h.size)
    q_factor = (1 - eta * h.mean()) ** 2 + eta**2 * c * h.var()  # exact 1-D recursion by hand
    assert out["eta_star"] == pytest.approx(eta_star_1d(h.mean(), h.var(), c), rel=1e-10)
    assert out["spectral_radius"] == pytest.approx(q_factor, rel=1e-10)
    assert out["mean_square_stable"] is bool(q_factor <= 1)
    # Lyapunov exponent by hand: mean over the 15 pairs of log|1 - eta h_B|
    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6)]
    gamma = np.mean([np.log(abs(1 - eta * (h[i] + h[j]) / 2)) for i, j in pairs])
    assert out["lyapunov_exponent"] == pytest.approx(gamma, rel=1e-12)
    assert out["predicted_growth_rate"] == pytest.approx(np.log(q_factor), rel=1e-10)  # 1-D: no transient
    assert abs(out["simulated_growth_rate"] - out["predicted_growth_rate"]) < 5 * out["simulated_growth_rate_se"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--eta=-1", "--batch", "2"], "argument --eta: must be a finite number > 0"),
        (["--eta", "0.1", "--batch", "99"], "batch size S must be in 1..32"),
        (["--eta", "0.1", "--batch", "2", "--hessians", "/nonexistent.npy"], "not found"),
    ],
)
def test_user_errors_exit_2_without_traceback(installed, args, message):
    res = installed("stability", *args)
    assert res.returncode == 2
    assert message in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(
    "array, message",
    [
        (np.full((4, 2), np.nan), "finite"),
        (np.array([[[1.0, 2.0], [0.0, 1.0]]] * 3), "symmetric"),
        (-np.ones((5, 2)), "positive semi-definite"),
        (np.ones((2, 3, 3, 3)), "shape"),
    ],
)
def test_bad_hessian_files_are_named(tmp_path, installed, array, message):
    path = tmp_path / "bad.npy"
    np.save(path, array)
    res = installed("stability", "--hessians", path, "--eta", "0.1", "--batch", "1")
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


def test_the_demo_network_section_says_how_to_enable_it(monkeypatch):
    from valleysim.cli.dnn import network_section

    monkeypatch.delenv("VALLEYSIM_DATA", raising=False)
    summary, md = network_section(None, None)
    assert summary is None and "valleysim demo --data ../shared/data" in md and "$VALLEYSIM_DATA" in md
