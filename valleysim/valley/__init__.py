"""SGD in degenerate valleys (R3-R6, Wei & Schwab): L = L*(theta_hat) + 1/2 sum_i theta_i^2 lambda_i(theta_hat).

``landscape`` turns a sympy loss into gradient, Hessian and curvatures (and holds the catalogue);
``noise`` the gradient-noise models; ``codegen`` the generated, disk-cached numba kernel; ``theory``
the closed forms (stationary moments, spectral drift, Theorems 1-2, R5); ``sim`` the ensemble run, the
predictions along it and the summary; ``plots`` the figure.
"""

from __future__ import annotations

from valleysim.valley.landscape import CATALOGUE, ValleyLandscape, catalogue
from valleysim.valley.noise import NOISES, NoiseModel, make_noise
from valleysim.valley.sim import ValleyRun, predictions, simulate, summarise

__all__ = [
    "CATALOGUE",
    "ValleyLandscape",
    "catalogue",
    "NOISES",
    "NoiseModel",
    "make_noise",
    "ValleyRun",
    "simulate",
    "predictions",
    "summarise",
]
