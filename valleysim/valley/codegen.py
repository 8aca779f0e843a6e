"""Compile a (landscape, noise model) pair to a numba ensemble integrator.

The sympy expressions (gradient, noise standard deviations, lambda_i, kink
arguments, observables, per-example gradients) are common-subexpression
eliminated and printed as straight-line numba code into a module file under
the kernel cache (``$VALLEYSIM_CACHE``, default ``~/.cache/valleysim``), named by
a hash of everything the code depends on. numba's on-disk cache
(``cache=True``) then makes a second run of the same landscape load the
compiled kernel instead of recompiling it. What runs is the source generated
now, never what the file holds (``compile_kernels``).

The generated ``run`` kernel advances R trajectories (``prange``; each has its
own counter-seeded generator, so results do not depend on the thread count)
over steps t_begin <= t < t_end, carrying their state across calls
(``valleysim.chunks``):

    x_{t+1} = x_t - eta (g_B(x_t)),  g_B = grad L + xi  (Gaussian)  or  mean of S example gradients

and for each trajectory records the observables (loss, trace, logdet, F) and the
coordinates every
``record_every`` steps of the measurement window, accumulates window sums
(theta_i^2, theta . g_B, |g_B|^2 over the theta block) and stops it at the first
step where a curvature lambda_i <= 0, a kink argument changes sign, or a
coordinate is not finite (``status`` = step, ``reason`` = code).
"""

from __future__ import annotations

import atexit
import hashlib
import inspect
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

import sympy as sp
from sympy.printing.pycode import PythonCodePrinter

from valleysim import rng
from valleysim.errors import warn
from valleysim.valley.landscape import ValleyLandscape, diff
from valleysim.valley.noise import SCALE, NoiseModel

CODEGEN_VERSION = "6"
#: ``reason`` codes of a stopped trajectory.
REASONS = {
    0: "completed",
    1: "curvature lambda_i <= 0 (left the valley)",
    2: "a kink argument changed sign",
    3: "diverged (non-finite or |x| > 1e100)",
}
#: Columns of the recorded observables.
OBSERVABLES = ("loss", "trace", "logdet", "f")


_FALLBACK: list[Path] = []  # the temporary cache of this process, once the configured one failed


def cache_dir() -> Path:
    """The kernel cache: ``$VALLEYSIM_CACHE``/kernels (default ~/.cache/valleysim/kernels) if this user owns it,
    no one else can write it and it can be written, else a temporary directory for this process, with a
    warning. (numba's index files there are pickles that its loader unpickles: the cache is as trusted as
    this user's own files, and a directory that others can write is not.)"""
    if _FALLBACK:
        return _FALLBACK[0]
    path = Path(os.environ.get("VALLEYSIM_CACHE", Path.home() / ".cache" / "valleysim")) / "kernels"
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        for d in (path, path / "__pycache__"):  # numba's cache of the kernels
            st = d.stat() if d.exists() else None
            if st is not None and (st.st_uid != os.getuid() or st.st_mode & 0o022):
                raise PermissionError(f"{d} is not this user's alone: uid {st.st_uid}, mode {st.st_mode & 0o777:o}")
        with tempfile.TemporaryFile(dir=path):
            pass
        return path
    except OSError as exc:
        _FALLBACK.append(Path(tempfile.mkdtemp(prefix="valleysim-kernels-")))
        atexit.register(shutil.rmtree, _FALLBACK[0], ignore_errors=True)
        warn(
            f"kernel cache {path} cannot be used ({exc.strerror or exc}); compiling into {_FALLBACK[0]} "
            "for this run (set $VALLEYSIM_CACHE to a directory of your own to keep compiled kernels)"
        )
        return _FALLBACK[0]


class _Printer(PythonCodePrinter):
    def _print_Symbol(self, expr):
        return self._names.get(expr, super()._print_Symbol(expr))


def _block(assignments: list[tuple[str, sp.Expr]], names: dict, indent: str, sqrt_of: tuple = ()) -> list[str]:
    """cse'd straight-line code assigning each target its expression.

    Targets in ``sqrt_of`` get math.sqrt of their expression, applied after cse:
    sympy would rewrite sqrt(2 exp(-x)) as sqrt(2) exp(-x/2), an exponential
    more per step where a square root of a shared subexpression suffices.
    """
    printer = _Printer()
    printer._names = names
    reps, reduced = sp.cse([e for _, e in assignments], symbols=sp.numbered_symbols("c_"))
    lines = [f"{indent}{printer.doprint(s)} = {printer.doprint(e)}" for s, e in reps]
    lines += [
        f"{indent}{target} = " + (f"math.sqrt({printer.doprint(e)})" if target in sqrt_of else printer.doprint(e))
        for (target, _), e in zip(assignments, reduced)
    ]
    return lines


def _unpack(symbols, array: str, indent: str) -> tuple[list[str], dict]:
    names = {s: f"v_{s.name}" for s in symbols}
    return [f"{indent}{names[s]} = {array}[{k}]" for k, s in enumerate(symbols)], names


def kernel_source(land: ValleyLandscape, noise: NoiseModel) -> str:
    """Python source of the kernel module (see the module docstring)."""
    D, n = land.n + land.m, land.n
    lam = land.lambdas or []
    kinks = land.kinks
    ind = " " * 4
    unpack, names = _unpack(land.coords, "p", ind)
    names[SCALE] = "scale"

    # point(p, scale, g, sd, lam, kink): full gradient, noise sd, curvatures, kink arguments at p
    assign = [(f"g[{d}]", e) for d, e in enumerate(land.gradient)]
    sd = [] if noise.minibatch else [(f"sd[{d}]", v) for d, v in enumerate(noise.variances)]
    assign += sd + [(f"lam[{i}]", e) for i, e in enumerate(lam)] + [(f"kink[{k}]", e) for k, e in enumerate(kinks)]
    src = [
        "import math",
        "import numpy as np",
        "from numba import njit, prange",
        "from valleysim.rng import seed_state, normal, bounded",
        "",
        "",
        "@njit(cache=True, inline='always')",
        "def point(p, scale, g, sd, lam, kink):",
    ]
    src += unpack + _block(assign, names, ind, sqrt_of={t for t, v in sd if v != 0}) + ["    return 0", "", ""]

    # obs(p, out): loss, trace, logdet, F
    trace = sp.Add(*lam) if lam else land.hessian.trace()
    logdet = sp.Add(*[sp.log(x) for x in lam]) if lam else sp.nan
    F = noise.f if noise.f is not None else sp.nan
    src += ["@njit(cache=True)", "def obs(p, out):"] + unpack
    src += _block([("out[0]", land.full_loss), ("out[1]", trace), ("out[2]", logdet), ("out[3]", F)], names, ind)
    src += ["    return 0", "", ""]

    # ex_grad(p, x, g): per-example gradient at p for data row x (finite sums)
    if land.finite_sum:
        xs_unpack, xnames = _unpack(land.data_symbols, "x", ind)
        names_ex = {**names, **xnames}
        src += ["@njit(cache=True, inline='always')", "def ex_grad(p, x, g):"] + unpack + xs_unpack
        src += _block([(f"g[{d}]", diff(land.loss, c)) for d, c in enumerate(land.coords)], names_ex, ind)
        src += ["    return 0", "", ""]

    noisy = [] if noise.minibatch else [d for d, v in enumerate(noise.variances) if v != 0]
    if noise.minibatch:
        step = [
            "            for d in range(D):",
            "                gb[d] = 0.0",
            "            for j in range(S):",
            "                k = j + bounded(state, M - j)",
            "                tmp = perm[j]",
            "                perm[j] = perm[k]",
            "                perm[k] = tmp",
            "                ex_grad(p, data[perm[j]], ge)",
            "                for d in range(D):",
            "                    gb[d] += ge[d]",
            "            for d in range(D):",
            "                gb[d] /= S",
        ]
    else:
        step = [f"            gb[{d}] = g[{d}]" for d in range(D) if d not in noisy]
        step += [f"            gb[{d}] = g[{d}] + sd[{d}] * normal(state)" for d in noisy]
    src += (
        [
            "@njit(cache=True, parallel=True)",
            "def run(x0, eta, scale, n_burn, n_steps, record_every, seed, data, S, t_begin, t_end,",
            "        points, states, perms, rec, acc, status, reason):",
            "    R = x0.shape[0]",
            f"    D = {D}",
            "    M = data.shape[0]",
            "    n_total = n_burn + n_steps",
            "    for r in prange(R):",
            "        if t_begin == 0:",
            "            states[r] = seed_state(seed, r)",
            "            points[r] = x0[r]",
            "            perms[r] = np.arange(M)",
            "            status[r] = -1",
            "            reason[r] = 0",
            "        if status[r] >= 0:",
            "            continue",
            "        state = states[r].copy()",
            "        p = points[r].copy()",
            "        perm = perms[r].copy()",
            "        g = np.empty(D)",
            "        gb = np.empty(D)",
            "        ge = np.empty(D)",
            "        sd = np.zeros(D)",
            f"        lam = np.empty({max(n if lam else 0, 1)})",
            f"        kink = np.empty({max(len(kinks), 1)})",
            f"        kink0 = np.ones({max(len(kinks), 1)})",
            "        point(x0[r], scale, g, sd, lam, kink0)",
            "        for t in range(t_begin, t_end):",
            "            point(p, scale, g, sd, lam, kink)",
            "            code = 0",
            f"            for i in range({n if lam else 0}):",
            "                if not lam[i] > 0.0:",
            "                    code = 1",
            f"            for k in range({len(kinks)}):",
            "                if not kink[k] * kink0[k] > 0.0:",
            "                    code = 2",
            "            for d in range(D):",
            "                if not abs(p[d]) < 1e100:",
            "                    code = 3",
            "            if code > 0:",
            "                status[r] = t",
            "                reason[r] = code",
            "                break",
            "            w = t - n_burn",
            "            if w >= 0 and w % record_every == 0:",
            "                obs(p, rec[r, w // record_every])",
            "                for d in range(D):",
            f"                    rec[r, w // record_every, {len(OBSERVABLES)} + d] = p[d]",
            "            if t == n_total:",
            "                break",
        ]
        + step
        + [
            "            if w >= 0:",
            f"                for i in range({n}):",
            "                    acc[r, i] += p[i] * p[i]",
            f"                    acc[r, {n}] += p[i] * gb[i]",
            f"                    acc[r, {n + 1}] += gb[i] * gb[i]",
            "            for d in range(D):",
            "                p[d] -= eta * gb[d]",
            "        states[r] = state",
            "        points[r] = p",
            "        perms[r] = perm",
            "    return 0",
            "",
        ]
    )
    return "\n".join(src)


def _module_key(land: ValleyLandscape, noise: NoiseModel) -> str:
    deps = CODEGEN_VERSION + inspect.getsource(rng) + land.key + noise.key
    return hashlib.sha256(deps.encode()).hexdigest()[:20]


def compile_kernels(land: ValleyLandscape, noise: NoiseModel):
    """The kernel module for this landscape and noise model, run from its source as generated now.

    The cached file is only where the code lives for numba's cache (keyed on the file's path and
    modification time): one that differs from the generated source (edited, torn, from another version)
    is rewritten, atomically, before anything runs; Python's bytecode cache is not used.
    """
    key = _module_key(land, noise)
    name = f"valleysim_kernel_{key}"
    if name in sys.modules:
        return sys.modules[name]
    source = kernel_source(land, noise)
    path = cache_dir() / f"{name}.py"
    try:
        same = path.read_bytes() == source.encode()
    except OSError:
        same = False
    if not same:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(source, encoding="utf-8")
        os.replace(tmp, path)  # atomic: concurrent runs never see half a file
    module = types.ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module
