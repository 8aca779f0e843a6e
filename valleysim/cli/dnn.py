"""``valleysim dnn ...`` (defined in :mod:`dnn.cli`) and the demo's network section: the only module of
``valleysim`` that imports ``dnn`` (torch loads only when a network runs)."""

from __future__ import annotations

import os
from pathlib import Path

from dnn.cli import add_parser

__all__ = ["add_parser", "network_section"]


def network_section(data, out: Path, quick: bool = False) -> tuple[dict | None, str]:
    """The demo's edge-of-stability run (:mod:`dnn.edge_of_stability`) on CIFAR-10 at ``data`` (default
    ``$VALLEYSIM_DATA``): (summary, Markdown). Without a data path: (None, how to enable it)."""
    data = data or os.environ.get("VALLEYSIM_DATA")
    if not data:
        return None, (
            "skipped: no CIFAR-10 path. Run `valleysim demo --data ../shared/data` (or set $VALLEYSIM_DATA; "
            "`make demo` passes ../shared/data when it exists) to add a network run (~3 minutes)."
        )
    from dnn import edge_of_stability as eos
    from dnn.data import load_cifar10

    images, labels = load_cifar10(data, "train", label_order="auto")
    test = load_cifar10(data, "test", label_order="auto")
    s = eos.run(images, labels, out / "network_eos", test=test, progress=True, **({"epochs": 200} if quick else {}))
    eos.plot(s, out / "network_eos.png")
    return s, eos.markdown(s)
