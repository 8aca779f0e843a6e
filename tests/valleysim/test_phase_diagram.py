"""Phase diagram against closed forms and by-hand enumeration (1-D), resume, CLI output."""

import csv
import itertools
import json
from concurrent.futures import Executor

import numpy as np
import pytest

from valleysim.cli import main
from valleysim.errors import UserInputError
from valleysim.quadratic.landscape import PerExampleQuadratic
from valleysim.quadratic.phase_diagram import phase_diagram
from valleysim.theory import eta_star_1d, stability_factor, variance_factor

H = np.array([0.3, 0.8, 1.1, 2.6, 0.5, 1.7])  # 1-D per-example curvatures, N = 6
ETAS = [0.4, 1.0, 1.6, 2.4, 4.0]
SIZES = [1, 2, 3, 6]


def gamma_by_hand(eta, S):
    """E_B log|1 - eta h_B| over all S-subsets."""
    with np.errstate(divide="ignore"):  # -inf where a batch lands on 1 / h_B
        return np.mean([np.log(abs(1 - eta * np.mean(H[list(B)]))) for B in itertools.combinations(range(H.size), S)])


class RefusingExecutor(Executor):
    def submit(self, fn, *args, **kwargs):
        raise AssertionError("a finished sweep must not recompute any point")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("pd")
    q = PerExampleQuadratic("diagonal", H[:, None])
    rows = phase_diagram(q, ETAS, SIZES, out, n_traj=64, n_steps=400, seed=1, progress=False)  # default pool
    return q, out, rows


def test_boundaries_match_closed_forms(sweep):
    _, _, rows = sweep
    assert len(rows) == len(ETAS) * len(SIZES)
    for r in rows:
        c = variance_factor(r["S"], H.size)
        assert r["eta_star"] == pytest.approx(eta_star_1d(H.mean(), H.var(), c), rel=1e-9)
        assert r["spectral_radius"] == pytest.approx(stability_factor(r["eta"], H.mean(), H.var(), c), rel=1e-9)
        assert r["mean_square_stable"] is bool(r["eta"] <= r["eta_star"])
        gamma = gamma_by_hand(r["eta"], r["S"])
        if np.isfinite(gamma):
            assert r["lyapunov_exponent"] == pytest.approx(gamma, rel=1e-12)
        else:  # -inf: some batch lands exactly on the minimum; JSON null + the flag
            assert gamma == -np.inf and r["lyapunov_exponent"] is None
        assert r["almost_sure_stable"] is bool(gamma < 0)
        assert r["sharpness_bound"] == pytest.approx(2 / H.mean())
        b = r["lyapunov_boundary"]
        assert abs(gamma_by_hand(b, r["S"])) < 1e-9
        assert all(gamma_by_hand(e, r["S"]) < 0 for e in np.linspace(ETAS[0] / 2, b, 50)[:-1])


def test_divergence_fraction_follows_almost_sure_exponent(sweep):
    _, _, rows = sweep
    for r in rows:
        if r["mean_square_stable"]:
            assert r["diverged_fraction"] == 0.0
        if r["lyapunov_exponent"] is not None and r["lyapunov_exponent"] * 400 > 3 * np.log(1e12):
            assert r["diverged_fraction"] == 1.0


def test_outputs_and_resume(sweep):
    q, out, rows = sweep
    with open(out / "phase_diagram.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(rows) and float(table[0]["eta"]) == rows[0]["eta"]
    assert (out / "phase_diagram.png").stat().st_size > 10_000
    again = phase_diagram(
        q, ETAS, SIZES, out, n_traj=64, n_steps=400, seed=1, progress=False, executor=RefusingExecutor()
    )
    assert again == rows
    with pytest.raises(UserInputError, match="different sweep.*n_steps"):
        phase_diagram(q, ETAS, SIZES, out, n_traj=64, n_steps=401, seed=1, progress=False)


def test_cli_phase_diagram_dense(tmp_path, capsys):
    out = tmp_path / "pd"
    argv = [
        "phase-diagram",
        "--kind",
        "dense",
        "--n-examples",
        "12",
        "--dim",
        "3",
        "--etas",
        "0.5:3:3",
        "--batch-sizes",
        "1,12",
        "--trajectories",
        "32",
        "--steps",
        "300",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["N"], cfg["D"], cfg["kind"]) == (12, 3, "dense")
    with open(out / "phase_diagram.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 6
    full = [r for r in table if r["S"] == "12"]
    assert all(float(r["eta_star"]) == pytest.approx(float(r["sharpness_bound"]), rel=1e-8) for r in full)  # GD
    # Jensen (gamma <= log(rho) / 2): the almost-sure boundary lies at or beyond the mean-square one
    assert {r["lyapunov_boundary_method"] for r in table} == {"monte_carlo"}
    assert all(float(r["lyapunov_boundary"]) >= 0.98 * float(r["eta_star"]) for r in table)


@pytest.mark.parametrize(
    "argv, message",
    [(["--etas", "0:1:3"], "--etas"), (["--batch-sizes", "0,2"], "batch"), (["--etas", "a,b"], "--etas")],
)
def test_cli_phase_diagram_bad_input(tmp_path, cli, argv, message):
    code, _, err = cli("phase-diagram", "--out", tmp_path / "x", *argv)
    assert code == 2 and message in err and not (tmp_path / "x").exists()


def test_a_resume_with_another_eta_range_recomputes_the_boundary(tmp_path):
    """The per-S Lyapunov boundary is searched within the grid's eta range: a resume into the same
    directory with a wider range must give the fresh run's boundary, not the narrow range's."""
    q = PerExampleQuadratic("diagonal", H[:, None])
    kw = dict(n_traj=16, n_steps=200, seed=1, progress=False)
    narrow = phase_diagram(q, [0.5], [2], tmp_path / "x", **kw)
    wide = phase_diagram(q, [0.05, 0.5, 5.0], [2], tmp_path / "x", **kw)
    fresh = phase_diagram(q, [0.05, 0.5, 5.0], [2], tmp_path / "fresh", **kw)
    assert narrow[0]["lyapunov_boundary"] is None  # not inside [0.25, 1]
    assert wide == fresh
    assert abs(gamma_by_hand(wide[0]["lyapunov_boundary"], 2)) < 1e-9  # the exact boundary, inside [0.025, 10]


def test_a_second_sweep_into_a_busy_directory_is_refused(tmp_path):
    from valleysim.locking import DirectoryLock

    q = PerExampleQuadratic("diagonal", H[:, None])
    (tmp_path / "x").mkdir()
    with DirectoryLock(tmp_path / "x", "phase-diagram"):
        with pytest.raises(UserInputError, match=r"in use by another phase-diagram \(pid \d+\)"):
            phase_diagram(q, [0.5], [2], tmp_path / "x", n_traj=4, n_steps=8, progress=False)
    assert not (tmp_path / "x" / "sweep.jsonl").exists()
