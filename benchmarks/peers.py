"""PyHessian 0.1 and curvlinops (``curvlinops-for-pytorch``) behind one small interface, with every
matrix-vector product counted: the peers that ``bench_dnn.py`` parts 4-5 measure our probes against.

Both are bench-only extras (``pip install -e '.[bench]'``). Each call returns a plain dict with
``n_mv`` (matvecs, counted at the library's own product function), ``seconds`` and the numbers the
library reports, or ``{"error": ...}`` when the library cannot do it here (PyHessian 0.1's density
calls ``torch.eig``, removed from torch).

* PyHessian: ``hessian(model, CrossEntropyLoss(), data=(x, y))`` holds the create_graph gradient of
  all ``n`` examples at once (its ``data=`` mode; it has no chunking), and every product is a double
  backward of that graph (``pyhessian.hessian.hessian_vector_product``, counted by wrapping it).
  Random vectors come from the global torch RNG (seeded per call). Model: a float32/float64 eval copy.
* curvlinops: ``HessianLinearOperator``, ``EFLinearOperator`` (``(1/n) sum_i g_i g_i^T`` for the mean
  loss) over the same chunks as :class:`dnn.objective.Objective` (a list of ``(x, y)`` batches);
  products counted per column at ``_matmat``; eigenpairs by scipy ``eigsh`` on ``to_scipy()`` with a
  seeded start ``v0`` (ARPACK's own start otherwise), traces by its ``hutchinson_trace`` /
  ``hutchpp_trace``, spectra by its ``fast_lanczos`` (Papyan 2020's Lanczos, no reorthogonalisation)
  after ``approximate_boundaries`` (``eigsh`` for lambda_min and lambda_max) exactly as its
  ``lanczos_approximate_spectrum`` does. The gradient covariance K = EF - g g^T (curvlinops has the
  uncentred EF only) is ``EF`` minus the rank-one term, as a scipy ``LinearOperator``.
"""

from __future__ import annotations

import copy
import sys
import time
import warnings

import numpy as np
import torch

from dnn.density import SLQResult


def _available(name: str) -> str | None:
    try:
        __import__(name)
    except ImportError as err:  # a bench-only extra
        return f"{name} not importable ({err}); pip install -e '.[bench]'"
    return None


# --------------------------------------------------------------------------- PyHessian


class PyHessian:
    """A ``pyhessian.hessian`` object on an eval copy of ``model`` (dtype of ``x``) with counted products."""

    def __init__(self, model, x, y):
        self.error = _available("pyhessian")
        if self.error:
            return
        self.mod = sys.modules["pyhessian.hessian"]
        self.real = self.mod.hessian_vector_product
        self.count = 0

        def counted(gradsH, params, v):
            self.count += 1
            return self.real(gradsH, params, v)

        self.mod.hessian_vector_product = counted
        warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
        m = copy.deepcopy(model).to(x.dtype).eval()
        t0 = time.perf_counter()
        self.h = self.mod.hessian(m, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        self.setup_s = time.perf_counter() - t0

    def close(self):
        if not self.error:
            self.mod.hessian_vector_product = self.real

    def _run(self, seed: int, fn) -> dict:
        if self.error:
            return {"error": self.error}
        torch.manual_seed(seed)
        self.count = 0
        t0 = time.perf_counter()
        try:
            out = fn()
        except Exception as err:  # the library's own failure is the result
            msg = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            return {"error": msg, "n_mv": self.count, "seconds": time.perf_counter() - t0}
        out.update(n_mv=self.count, seconds=time.perf_counter() - t0, setup_s=self.setup_s)
        return out

    def top(self, k: int, seed: int, tol: float = 1e-3, max_iter: int = 100) -> dict:
        """``eigenvalues(maxIter, tol, top_n=k)``: power iteration with deflation, one value at a time."""

        def fn():
            vals, _ = self.h.eigenvalues(maxIter=max_iter, tol=tol, top_n=k)
            return {"values": [float(v) for v in vals]}

        return self._run(seed, fn)

    def trace(self, seed: int, max_iter: int = 100, tol: float = 1e-3) -> dict:
        """``trace(maxIter, tol)``: Hutchinson (Rademacher), stopped when the running mean changes by < tol
        relative; the samples give the SE."""

        def fn():
            s = np.asarray(self.h.trace(maxIter=max_iter, tol=tol), dtype=np.float64)
            se = float(s.std(ddof=1) / np.sqrt(s.size)) if s.size > 1 else float("nan")
            return {"value": float(s.mean()), "se": se}

        return self._run(seed, fn)

    def density(self, seed: int, steps: int, n_starts: int) -> dict:
        """``density(iter, n_v)``: nodes and weights per start (its SLQ)."""

        def fn():
            nodes, weights = self.h.density(iter=steps, n_v=n_starts)
            return {"nodes": nodes, "weights": weights}

        return self._run(seed, fn)


# --------------------------------------------------------------------------- curvlinops


class Counted:
    """Counts the columns a curvlinops operator multiplies (``_matmat`` on the instance)."""

    def __init__(self, op):
        self.op, self.count, real = op, 0, op._matmat

        def matmat(M):
            self.count += int(M[0].shape[-1])
            return real(M)

        op._matmat = matmat

    def scipy(self):
        return self.op.to_scipy()


class Curvlinops:
    """curvlinops operators of ``model`` (eval copy in the dtype of ``x``) on ``x, y`` in chunks."""

    def __init__(self, model, x, y, chunk: int = 64):
        self.error = _available("curvlinops")
        if self.error:
            return
        import curvlinops

        self.lib = curvlinops
        self.model = copy.deepcopy(model).to(x.dtype).eval()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.data = [(x[s : s + chunk], y[s : s + chunk]) for s in range(0, x.shape[0], chunk)]
        self.loss = torch.nn.CrossEntropyLoss()
        self.n = int(x.shape[0])
        self.dim = sum(p.numel() for p in self.params)
        self.dtype = x.dtype

    def _op(self, cls):
        return Counted(cls(self.model, self.loss, self.params, self.data, num_data=self.n, check_deterministic=False))

    def hessian(self) -> Counted:
        return self._op(self.lib.HessianLinearOperator)

    def ef(self) -> Counted:
        return self._op(self.lib.EFLinearOperator)

    def _v0(self, seed: int) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal(self.dim)

    def _timed(self, counted: Counted, fn) -> dict:
        if self.error:
            return {"error": self.error}
        counted.count = 0
        t0 = time.perf_counter()
        out = fn()
        out.update(n_mv=counted.count, seconds=time.perf_counter() - t0)
        return out

    def top(self, counted: Counted, k: int, seed: int, tol: float = 1e-3, linop=None) -> dict:
        """scipy ``eigsh(k, which='LA', tol, v0)`` (ARPACK, implicitly restarted Lanczos, ncv = max(2k+1, 20))."""
        from scipy.sparse.linalg import eigsh

        def fn():
            A = linop if linop is not None else counted.scipy()
            vals = eigsh(A, k=k, which="LA", tol=tol, v0=self._v0(seed), return_eigenvectors=False)
            return {"values": sorted((float(v) for v in vals), reverse=True)}

        return self._timed(counted, fn)

    def covariance(self, ef: Counted, g: torch.Tensor, k: int, seed: int, tol: float = 1e-3) -> dict:
        """Top-k of K = EF - g g^T (``g`` the mean gradient, flat in parameter order) by ``eigsh``."""
        from scipy.sparse.linalg import LinearOperator

        A = ef.scipy()
        gn = g.detach().double().cpu().numpy()

        def mv(v):
            v = np.asarray(v).ravel()
            return A @ v - gn * (gn @ v)

        K = LinearOperator(A.shape, matvec=mv, dtype=A.dtype)
        return self.top(ef, k, seed, tol, linop=K)

    def trace(self, counted: Counted, n_mv: int, seed: int, method: str = "hutchinson") -> dict:
        """``hutchinson_trace(A, n_mv)`` or ``hutchpp_trace(A, n_mv)`` (Rademacher, global torch RNG)."""

        def fn():
            torch.manual_seed(seed)
            f = self.lib.hutchinson_trace if method == "hutchinson" else self.lib.hutchpp_trace
            return {"value": float(f(counted.op, n_mv))}

        return self._timed(counted, fn)

    def slq(self, counted: Counted, steps: int, n_starts: int, seed: int) -> dict:
        """``approximate_boundaries`` then ``fast_lanczos`` per start, as ``lanczos_approximate_spectrum``;
        its nodes (Ritz values) and Gauss weights (first components squared) as an :class:`SLQResult`."""
        from curvlinops.papyan2020traces.spectrum import approximate_boundaries, fast_lanczos

        def fn():
            torch.manual_seed(seed)
            lo, hi = approximate_boundaries(counted.op)
            n_bounds = counted.count
            nodes, weights = [], []
            for _ in range(n_starts):
                evals, evecs = fast_lanczos(counted.op, steps)
                nodes.append(evals.double().cpu().numpy())
                weights.append((evecs[0] ** 2).double().cpu().numpy())
            res = SLQResult(nodes, weights, self.dim, counted.count, steps, seed, "gaussian")
            return {"result": res, "boundaries": (float(lo), float(hi)), "n_mv_boundaries": n_bounds}

        return self._timed(counted, fn)
