"""SGD in degenerate valleys (R3-R6, Wei & Schwab): L = L*(theta_hat) + 1/2 sum_i theta_i^2 lambda_i(theta_hat).

``landscape`` turns a sympy loss into gradient, Hessian and curvatures (and holds the catalogue);
``noise`` the gradient-noise models; ``codegen`` the generated, disk-cached numba kernel; ``theory``
the closed forms (stationary moments, spectral drift, Theorems 1-2, R5); ``sim`` the ensemble run, the
predictions along it and the summary; ``plots`` the figure.
"""

from valleysim._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "landscape": ("CATALOGUE", "ValleyLandscape", "catalogue"),
        "noise": ("NOISES", "NoiseModel", "make_noise"),
        "sim": ("ValleyRun", "predictions", "simulate", "summarise"),
    },
)
