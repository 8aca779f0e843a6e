"""Lazy re-exports for package ``__init__`` files (PEP 562): a name loads its module on first use.

So importing one numba-free module of a toy (``valleysim.walk.metrics``, ``valleysim.nsgd.directions``,
``valleysim.break_even.theory``) does not compile or even import the toy's numba kernels.
"""

from __future__ import annotations

import importlib


def lazy_exports(package: str, table: dict[str, tuple[str, ...]]):
    """(__getattr__, __all__) for ``package`` re-exporting ``table``: {module (relative): names}."""
    where = {name: f"{package}.{module}" for module, names in table.items() for name in names}

    def __getattr__(name: str):
        if name in where:
            return getattr(importlib.import_module(where[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__, list(where)
