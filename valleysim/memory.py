"""Refuse sizes that cannot fit before allocating them.

``check_fits(nbytes, what)`` compares an estimate of what a computation will
hold in memory with what this machine has available (MemAvailable, capped by
a cgroup limit and by the address space left under ``ulimit -v``) and raises a
``UserInputError`` naming the sizes when the estimate exceeds ``USABLE`` of it.
Estimates are of the dominant arrays only; they are meant to stop the hopeless
(terabytes), not to budget to the byte.

``check_address_space`` refuses, before the libraries load, an address-space
limit below what they need: OpenBLAS (numpy's and scipy's) retries forever to
allocate a buffer it cannot get, in C, where not even Ctrl-C stops it.
"""

from __future__ import annotations

import os
import resource
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
    limit = address_space_limit()
    if limit is not None:
        avail = min(avail, max(0, limit - _address_space_used()))
    return avail


def address_space_limit() -> int | None:
    """The soft RLIMIT_AS (``ulimit -v``) in bytes; None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def _address_space_used() -> int:
    """This process's virtual size (VmSize) in bytes; 0 where /proc does not say."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


#: Address space (MB, VmPeak measured on Linux) of a small run with one thread in every pool: the toys load numpy,
#: scipy, sympy and numba; the network commands torch as well. Each further thread adds: OpenBLAS, in numpy's and
#: in scipy's copy, an 8 MB stack and a 32 MB buffer; numba and torch an 8 MB stack and a 64 MB malloc arena.
BASE_MB = {"toys": 520, "networks": 1480}
THREAD_MB = {"OpenBLAS": 80, "numba": 72, "torch": 72}


def _pool_size(*env_vars: str, cap: int | None = None) -> int:
    """Threads of a pool: the first of ``env_vars`` set to a positive integer, else the CPU count (at most cap)."""
    cpus = os.cpu_count() or 1
    for var in env_vars:
        value = os.environ.get(var, "").strip()
        if value.isdigit() and int(value) > 0:
            return min(int(value), cap) if cap else int(value)
    return cpus


def address_space_needed(networks: bool) -> tuple[int, dict[str, int]]:
    """(bytes, threads per pool) the toys (or, ``networks``, the network commands) need at this machine's
    thread counts: BASE_MB plus THREAD_MB for every thread beyond the first."""
    threads = {
        "OpenBLAS": _pool_size("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS", cap=os.cpu_count()),
        "numba": _pool_size("NUMBA_NUM_THREADS"),
    }
    if networks:
        threads["torch"] = _pool_size("OMP_NUM_THREADS")
    mb = BASE_MB["networks" if networks else "toys"] + sum(THREAD_MB[k] * (n - 1) for k, n in threads.items())
    return mb << 20, threads


def check_address_space(what: str, networks: bool = False) -> None:
    """MemoryError (one line at the command) if ``ulimit -v`` is below what ``what`` needs to load and run."""
    limit = address_space_limit()
    if limit is None:
        return
    need, threads = address_space_needed(networks)
    if limit < need:
        pools = ", ".join(f"{n} {k}" for k, n in threads.items())
        raise MemoryError(
            f"the address space is limited to {human(limit)} (ulimit -v {limit >> 10}); {what} needs about "
            f"{human(need)} with its thread pools ({pools} threads): raise the limit, or lower "
            "OPENBLAS_NUM_THREADS / NUMBA_NUM_THREADS" + (" / OMP_NUM_THREADS" if networks else "")
        )


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
