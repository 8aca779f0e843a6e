"""Refuse sizes that cannot fit before allocating them.

``check_fits(nbytes, what)`` compares an estimate of what a computation will
hold in memory with what this machine has available (MemAvailable, capped by
a cgroup limit) and raises a ``UserInputError`` naming the sizes when the
estimate exceeds ``USABLE`` of it. Estimates are of the dominant arrays only;
they are meant to stop the hopeless (terabytes), not to budget to the byte.
"""

from __future__ import annotations

import os
from pathlib import Path

from valleysim.errors import UserInputError

USABLE = 0.8  # share of the available memory one run may plan to use
F64 = 8  # bytes per float64 / int64


def available_bytes() -> int:
    """Memory available to this process now: MemAvailable, capped by the cgroup limit if any."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError):
            avail = 2**63 - 1
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            avail = min(avail, int(text))
    return avail


def human(nbytes: float) -> str:
    """1234567 -> '1.2 MB' (powers of 1024, one decimal)."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(nbytes) < 1024 or unit == "PB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def check_fits(nbytes: float, what: str) -> None:
    """UserInputError if ``nbytes`` (an estimate) exceeds USABLE x the available memory."""
    avail = available_bytes()
    if nbytes > USABLE * avail:
        raise UserInputError(
            f"{what} needs about {human(nbytes)} of memory; this machine has "
            f"{human(avail)} available (at most {USABLE:.0%} of it is planned for one run)"
        )
