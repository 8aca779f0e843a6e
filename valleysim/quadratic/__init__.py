"""SGD on per-example quadratics (R1, R2's lambda*, R7): L(w) = (1/N) sum_i 1/2 (w - w*)^T H_i (w - w*).

``landscape`` holds the H_i (``PerExampleQuadratic``); ``second_moment`` the exact mean-square map T(eta)
and eta*; ``lyapunov`` the almost-sure exponents; ``integrator`` the numba ensemble simulator;
``stability`` one report at (eta, S); ``phase_diagram`` the resumable (eta, S) sweep and its figure;
``batches`` and ``reshuffle`` exact enumerations (the oracles).
"""

from __future__ import annotations

from valleysim.quadratic.landscape import KINDS, PerExampleQuadratic, generate, least_squares, load_hessians
from valleysim.quadratic.integrator import Record, simulate
from valleysim.quadratic.second_moment import MomentMap, eta_star_dense, mean_square
from valleysim.quadratic.lyapunov import lyapunov_exact, lyapunov_exponent, mean_square_growth_mc
from valleysim.quadratic.stability import stability_report

__all__ = [
    "KINDS",
    "PerExampleQuadratic",
    "generate",
    "least_squares",
    "load_hessians",
    "Record",
    "simulate",
    "MomentMap",
    "eta_star_dense",
    "mean_square",
    "lyapunov_exact",
    "lyapunov_exponent",
    "mean_square_growth_mc",
    "stability_report",
]
