"""Resumable sweeps over a grid of points through any ``concurrent.futures.Executor``.

Each finished point is appended to a JSON-lines store as one line
``{"point": {...}, "result": {...}}`` and flushed to disk at once, so an
interrupted sweep loses at most the points in flight. Rerunning with the
same store evaluates only the points whose key (the point as canonical
JSON) is not there yet. A torn last line (a kill mid-write) is dropped.

The default executor is a local process pool of single-threaded workers
(numba, OpenBLAS and torch each get one thread, so workers do not fight over
the cores) that runs again, on fresh workers, the tasks a killed worker took
down (:class:`LocalPool`). Any other ``Executor`` (a cluster backend: :mod:`valleysim.executors`)
can be passed in; ``fn`` and the points must then be picklable and
JSON-serialisable. Only this process writes the store, once per point, so a
point that an engine retries after a lost worker is still stored exactly once.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import BrokenExecutor, Executor, Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from valleysim.errors import warn
from valleysim.jsonout import dumps, read_jsonl, write_jsonl

_THREAD_VARS = ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def point_key(point: dict) -> str:
    """Canonical JSON of a point: its identity in the store."""
    return json.dumps(point, sort_keys=True, separators=(",", ":"))


def read_store(store: str | Path) -> tuple[dict[str, dict], list[dict], list[int], bool]:
    """``(done, kept, damaged, torn)`` of ``store``, read without writing: {point key: result} and the
    records of its intact lines, the numbers of damaged lines (not a ``{"point": ..., "result": ...}``
    record) and whether the final line was torn (no newline). Empty if it does not exist."""
    records, damaged, torn = read_jsonl(Path(store))
    done, kept = {}, []
    for line, rec in records:
        if isinstance(rec, dict) and isinstance(rec.get("point"), dict) and "result" in rec:
            done[point_key(rec["point"])] = rec["result"]
            kept.append(rec)
        else:
            damaged.append(line)
    return done, kept, damaged, torn


def load_store(store: str | Path) -> dict[str, dict]:
    """{point key: result} of the intact lines in ``store`` (:func:`read_store`; empty if it does not exist).

    A final line without its newline was torn by an interruption; a line that
    is not a ``{"point": ..., "result": ...}`` record was damaged. Either is
    dropped from the file (rewritten atomically, with a warning naming the
    lines) so that its point is computed again.
    """
    path = Path(store)
    done, kept, damaged, torn = read_store(path)
    if damaged or torn:
        write_jsonl(path, kept)
        if damaged:
            warn(
                f"{path}: dropped {len(damaged)} damaged line(s) (line {', '.join(map(str, sorted(damaged)))}); "
                "their points are computed again"
            )
    return done


def _die_with_parent() -> None:
    """A worker exits when the process that started it dies (SIGKILL included): Linux's parent-death
    signal, and a watchdog thread that polls the parent pid elsewhere (and as a fallback)."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="die-with-parent").start()


def _single_threaded_worker(counter=None) -> None:
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    _die_with_parent()
    if counter is not None:  # the worker's slot 0, 1, ...: which GPU it takes (valleysim.executors.worker_slot)
        with counter.get_lock():
            os.environ["VALLEYSIM_WORKER_SLOT"] = str(counter.value)
            counter.value += 1


class LostWorker(OSError):
    """A task whose worker process died (killed, out of memory) on every try: a fault of the machine, not
    of the input (the CLI: one line, exit 1)."""


def default_executor(max_workers: int | None = None) -> "LocalPool":
    """A pool of ``max_workers`` (default: all cores) fresh single-threaded processes, numbered by
    ``$VALLEYSIM_WORKER_SLOT`` in the order they start, that survives a lost worker (:class:`LocalPool`)."""
    return LocalPool(max_workers or os.cpu_count() or 1)


def _cancel(task: Future) -> None:
    """Cancel ``task`` and tell whoever waits for it (``as_completed``, ``wait``), which a bare ``cancel()``
    leaves to the executor (once per task: a second notice is an error)."""
    task.cancel()
    task.set_running_or_notify_cancel()


class LocalPool(Executor):
    """A ``ProcessPoolExecutor`` of single-threaded spawned workers that retries what a lost worker takes
    down. A worker that dies (SIGKILL, the out-of-memory killer) breaks a process pool: every task it
    held, running or queued, fails with ``BrokenProcessPool``. This pool then starts a fresh one and
    resubmits them, up to ``retries`` times a task (as dask reschedules a lost worker's tasks), and fails
    a task that has been lost more often with :class:`LostWorker`."""

    def __init__(self, max_workers: int, retries: int = 3):
        self.max_workers, self.retries = max_workers, retries
        self._lock = threading.Lock()
        self._closed = False
        self._announced = 0  # the highest retry a warning has told of
        self._pool = self._fresh_pool()

    def _fresh_pool(self) -> ProcessPoolExecutor:
        ctx = multiprocessing.get_context("spawn")
        return ProcessPoolExecutor(
            max_workers=self.max_workers,
            mp_context=ctx,
            initializer=_single_threaded_worker,
            initargs=(ctx.Value("i", 0),),
        )

    def _replace(self, broken: ProcessPoolExecutor, tries: int) -> None:
        """A fresh pool in place of ``broken`` (once per break; the broken one stops its own workers), told
        in one warning per retry level (pools that break before their tasks fail repeat a level)."""
        if self._pool is broken and not self._closed:
            if tries > self._announced:
                warn(
                    f"a worker process died (killed, or out of memory); its tasks run again on fresh workers "
                    f"(retry {tries} of {self.retries})"
                )
                self._announced = tries
            self._pool = self._fresh_pool()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        outer: Future = Future()
        self._send(outer, (fn, args, kwargs), 0)
        return outer

    def _send(self, outer: Future, call: tuple, tries: int) -> None:
        fn, args, kwargs = call
        with self._lock:
            if self._closed:
                _cancel(outer)
                return
            try:
                inner = self._pool.submit(fn, *args, **kwargs)
            except BrokenProcessPool:  # broken before its tasks' failures arrived
                self._replace(self._pool, max(tries, 1))
                inner = self._pool.submit(fn, *args, **kwargs)
            pool = self._pool
        outer.add_done_callback(lambda f: f.cancelled() and inner.cancel())
        inner.add_done_callback(lambda f: self._settle(f, outer, call, tries, pool))

    def _settle(self, inner: Future, outer: Future, call: tuple, tries: int, pool: ProcessPoolExecutor) -> None:
        """``outer`` from its try ``inner``: its result or error, or another try after a lost worker."""
        if outer.cancelled() or inner.cancelled():
            _cancel(outer)
            return
        exc = inner.exception()
        if isinstance(exc, BrokenProcessPool):
            if tries < self.retries:
                with self._lock:
                    self._replace(pool, tries + 1)
                self._send(outer, call, tries + 1)
                return
            exc = LostWorker(f"a worker process died (killed, or out of memory) on each of {tries + 1} tries")
        outer.set_exception(exc) if exc is not None else outer.set_result(inner.result())

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            pool = self._pool
        pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def _append_line(fh, line: str, path: Path) -> None:
    """``line`` and a newline appended to the store and fsynced; a failed write (a full disk) is an OSError
    naming the store (a torn line it may leave is dropped when the sweep resumes)."""
    data = (line + "\n").encode("utf-8")
    try:
        while data:
            data = data[fh.write(data) :]
        os.fsync(fh.fileno())
    except OSError as err:
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None


def is_lost_worker(exc: BaseException) -> bool:
    """Whether ``exc`` says that the worker running a task died: :class:`LocalPool` after its retries,
    another process pool, dask after its allowed failures."""
    killed = getattr(sys.modules.get("distributed"), "KilledWorker", None)
    return isinstance(exc, (LostWorker, BrokenExecutor)) or (killed is not None and isinstance(exc, killed))


def run_sweep(
    fn: Callable[[dict], dict],
    points: list[dict],
    store: str | Path,
    *,
    executor: Executor | None = None,
    progress: bool = True,
    desc: str = "sweep",
) -> list[dict]:
    """Evaluate ``fn(point)`` for every point not yet in ``store``; return all results in order.

    points: JSON-serialisable dicts (duplicates are evaluated once).
    fn:     point -> JSON-serialisable dict; a module-level function (or a
            ``functools.partial`` of one) so that worker processes can load it.
            Results come back as stored (``valleysim.jsonout``: NaN / inf -> None),
            the same in a fresh and in a resumed sweep.
    An executor passed in is left running; the default pool is shut down.
    If a point raises, the points already finished are kept, the rest are
    cancelled and the first error is re-raised. Points whose workers died on
    every try (:class:`LocalPool` retries them first) end the sweep, after the
    others, with one :class:`LostWorker` naming them.
    """
    path = Path(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = load_store(path)
    todo = {point_key(p): p for p in points if point_key(p) not in done}
    if todo:
        own = executor is None
        pool = default_executor(min(len(todo), os.cpu_count() or 1)) if own else executor
        try:
            items = list(todo.items())
            if hasattr(pool, "submit_all"):  # one array job on Slurm (valleysim.executors.SubmititExecutor)
                futures = dict(zip(pool.submit_all(fn, [p for _, p in items]), (k for k, _ in items)))
            else:
                futures = {pool.submit(fn, p): k for k, p in items}
            error, lost, why = None, [], None
            with (
                open(path, "ab", buffering=0) as fh,  # unbuffered: a failed write leaves nothing to flush
                tqdm(total=len(points), initial=len(points) - len(todo), desc=desc, disable=not progress) as bar,
            ):
                for fut in as_completed(futures):
                    key = futures[fut]
                    try:
                        result = fut.result()
                    except BaseException as exc:
                        if is_lost_worker(exc):  # the machine's fault: the other points go on
                            lost.append(key)
                            why = why or (str(exc) if isinstance(exc, LostWorker) and str(exc) else None)
                            continue
                        error = error or exc  # keep what finishes, cancel the rest, re-raise the first
                        for pending in futures:
                            pending.cancel()
                        continue
                    line = dumps({"point": todo[key], "result": result})
                    _append_line(fh, line, path)
                    done[key] = json.loads(line)["result"]  # as a resumed sweep will read it back
                    bar.update()
            if error is not None:
                raise error
            if lost:
                shown = ", ".join(lost[:3]) + (", ..." if len(lost) > 3 else "")
                why = why or "their worker processes died (killed, or out of memory) on every try"
                raise LostWorker(
                    f"{len(lost)} point(s) lost ({shown}): {why}; the {len(done)} finished points are kept in "
                    f"{path}: rerun the command to compute the rest"
                )
        finally:
            if own:
                pool.shutdown(wait=True, cancel_futures=True)
    return [done[point_key(p)] for p in points]
