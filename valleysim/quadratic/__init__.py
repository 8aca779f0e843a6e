"""SGD on per-example quadratics (R1, R2's lambda*, R7): L(w) = (1/N) sum_i 1/2 (w - w*)^T H_i (w - w*).

``landscape`` holds the H_i (``PerExampleQuadratic``); ``second_moment`` the exact mean-square map T(eta)
and eta*; ``lyapunov`` the almost-sure exponents; ``integrator`` the numba ensemble simulator;
``stability`` one report at (eta, S); ``phase_diagram`` the resumable (eta, S) sweep and its figure;
``batches`` and ``reshuffle`` exact enumerations (the oracles).
"""

from valleysim._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "landscape": ("KINDS", "PerExampleQuadratic", "generate", "least_squares", "load_hessians"),
        "integrator": ("Record", "simulate"),
        "second_moment": ("MomentMap", "eta_star_dense", "mean_square"),
        "lyapunov": ("lyapunov_exact", "lyapunov_exponent", "mean_square_growth_mc"),
        "stability": ("stability_report",),
    },
)
