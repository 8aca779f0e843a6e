"""``valleysim dnn ...``: the network commands, defined in :mod:`dnn.cli` (the only module of
``valleysim`` that imports ``dnn``; torch loads only when a dnn command runs)."""

from __future__ import annotations

from dnn.cli import add_parser

__all__ = ["add_parser"]
