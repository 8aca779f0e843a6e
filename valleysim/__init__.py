"""valleysim: SGD dynamics on analytic landscapes, held to the exact theory (see README, Architecture).

The public API, by toy (each a subpackage: landscape, theory, simulator, summary):

- ``valleysim.quadratic``: per-example quadratics (R1, R7): ``PerExampleQuadratic``, ``generate``,
  ``MomentMap`` (eta*, rho), ``stability_report``, ``simulate``; ``quadratic.phase_diagram``.
- ``valleysim.valley``: degenerate valleys (R3-R6): ``ValleyLandscape``, ``catalogue``, ``make_noise``,
  ``simulate``, ``summarise``.
- ``valleysim.break_even``: progressive sharpening to lambda* (R2): ``SharpeningLandscape``,
  ``predicted_break_even``, ``simulate``, ``summarise``, ``sweep``.
- ``valleysim.walk``: the rough-floor valley (R9): ``WalkLandscape``, ``simulate``, ``summarise``.
- ``valleysim.nsgd``: sharpest directions and Nudged-SGD (R8): ``make_valley``, ``simulate``,
  ``gamma_sweep``.
- shared, numba-free: ``theory`` (closed forms), ``stats``, ``jsonout``, ``errors``, ``runner``, ``expr``,
  ``rng`` (the counter-seeded generator of every kernel).

Names are loaded on first use (``valleysim.PerExampleQuadratic``), so ``import valleysim`` is cheap.
"""

from __future__ import annotations

import importlib

from valleysim._lazy import lazy_exports

SUBPACKAGES = ("quadratic", "valley", "break_even", "walk", "nsgd")
_exported, _names = lazy_exports(
    __name__,
    {
        "quadratic": (
            "PerExampleQuadratic",
            "generate",
            "load_hessians",
            "least_squares",
            "MomentMap",
            "stability_report",
        ),
        "valley": ("ValleyLandscape", "catalogue", "make_noise"),
        "break_even": ("SharpeningLandscape", "predicted_break_even"),
        "walk": ("WalkLandscape",),
        "nsgd": ("SharpValley", "make_valley"),
        "theory": ("variance_factor", "stability_factor", "eta_star_1d", "break_even_curvature"),
        "stats": ("mean_se",),
        "errors": ("UserInputError",),
        "runner": ("run_sweep",),
    },
)
__all__ = [*SUBPACKAGES, *_names]


def __getattr__(name: str):
    if name in SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    return _exported(name)


def __dir__():
    return sorted(__all__)
