"""JSON output of results: non-finite floats become null (JSON has no NaN / inf)."""

from __future__ import annotations

import math


def json_safe(x):
    """``x`` with every non-finite float (also inside dicts, lists and tuples) replaced by None."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x
