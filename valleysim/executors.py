"""Where a sweep's points run: the local process pool, dask.distributed, or Slurm through submitit.

``--executor`` (:func:`add_executor_options`, :func:`open_executor`) takes

    local             today's pool of single-threaded processes (the default; valleysim.runner)
    dask              a dask.distributed LocalCluster on this machine: ``--workers`` processes of
                      ``--threads-per-worker`` threads each; its dashboard address is printed
    dask://HOST:PORT  a running scheduler (``dask scheduler`` + ``dask worker tcp://HOST:PORT`` elsewhere);
                      what answers there must greet as one within seconds (:func:`check_dask_scheduler`)
    slurm             Slurm through submitit: one job per point, submitted as one array job
                      (``--slurm-partition``, ``--slurm-time`` minutes, ``--slurm-gpus``,
                      ``--slurm-array-parallelism``);
                      a preempted or timed-out point is requeued (submitit's checkpointing, up to 3 times);
                      refused in one line on a machine without ``sbatch`` / ``srun`` (``--slurm-cluster
                      local`` / ``debug`` run submitit's jobs here, for testing)

Every executor is a ``concurrent.futures.Executor`` to :func:`valleysim.runner.run_sweep`, which writes
each finished point once, from the driver, so a worker that dies loses nothing: the local pool runs its
tasks again on fresh workers (up to 3 times, :class:`valleysim.runner.LocalPool`), dask reschedules them
(up to ``distributed.scheduler.allowed-failures`` times), Slurm requeues the job, and a rerun of the
command computes only the points missing. Results come from (seed, point), never from the order of
completion: the same table on every executor and any number of workers.

dask and submitit are optional (``pip install valleysim[cluster]``); asking for them without it is a
named error.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import socket
import struct
import threading
import time
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from valleysim.errors import UserInputError

__all__ = [
    "ExecutorOptions",
    "add_executor_options",
    "options_from_args",
    "open_executor",
    "sweep_executor",
    "SubmititExecutor",
]

#: each worker process single-threaded (set before numba, OpenBLAS or torch load in it)
WORKER_ENV = {v: "1" for v in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
_DASK_URL = re.compile(r"^dask://([A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:]+\]):(\d{1,5})$")
_SLURM_PARTITION = re.compile(r"^[A-Za-z0-9_.\-]+(,[A-Za-z0-9_.\-]+)*$")
DASK_ANSWER_S = 5.0  # seconds a dask://HOST:PORT has to accept the connection, and as many to greet
SLURM_CLUSTERS = ("slurm", "local", "debug")  # submitit's: local / debug run the jobs on this machine
SLURM_REQUEUES = 3  # a preempted or timed-out job is requeued up to this many times


@dataclass(frozen=True)
class ExecutorOptions:
    """What :func:`open_executor` needs besides the spec (the CLI's flags; None: the engine's default)."""

    workers: int | None = None
    threads_per_worker: int = 1
    slurm_partition: str | None = None
    slurm_time: int = 60  # minutes per job
    slurm_gpus: int = 0  # GPUs per job
    slurm_array_parallelism: int = 64
    slurm_folder: str = "slurm_logs"
    slurm_cluster: str = "slurm"


def add_executor_options(p: argparse.ArgumentParser) -> None:
    """``--executor`` and the flags of the engines it names."""
    from valleysim import argtypes as T

    g = p.add_argument_group("where the points run (valleysim.executors)")
    g.add_argument("--executor", type=executor_spec, default="local", help="local | dask | dask://HOST:PORT | slurm")
    g.add_argument("--workers", type=T.count, default=None, help="worker processes (local, dask; default: the cores)")
    g.add_argument("--threads-per-worker", type=T.count, default=1, help="threads per dask worker")
    g.add_argument("--slurm-partition", type=slurm_partition, default=None, help="Slurm partition(s), a,b (slurm)")
    g.add_argument("--slurm-time", type=T.count, default=60, help="minutes per job (slurm)")
    g.add_argument("--slurm-gpus", type=T.natural, default=0, help="GPUs per job (slurm)")
    g.add_argument("--slurm-array-parallelism", type=T.count, default=64, help="jobs of the array at once (slurm)")
    g.add_argument("--slurm-folder", default="slurm_logs", help="submitit's job folder (slurm)")
    g.add_argument(
        "--slurm-cluster",
        choices=SLURM_CLUSTERS,
        default="slurm",
        help="slurm; local / debug run submitit's jobs on this machine (testing)",
    )


def executor_spec(text: str) -> str:
    """The --executor value, checked: local, dask, dask://HOST:PORT (port 1..65535) or slurm."""
    if text in ("local", "dask", "slurm"):
        return text
    m = _DASK_URL.match(text)
    if m and 1 <= int(m.group(2)) <= 65535:
        return text
    raise argparse.ArgumentTypeError(f"must be local, dask, dask://HOST:PORT or slurm; got {text!r}")


def slurm_partition(text: str) -> str:
    """A --slurm-partition value: Slurm partition names (letters, digits, ``_.-``), comma-separated."""
    if not _SLURM_PARTITION.match(text):
        raise argparse.ArgumentTypeError(
            f"must be partition names (letters, digits, _ . -) separated by commas; got {text!r}"
        )
    return text


def options_from_args(a) -> ExecutorOptions:
    return ExecutorOptions(
        workers=a.workers,
        threads_per_worker=a.threads_per_worker,
        slurm_partition=a.slurm_partition,
        slurm_time=a.slurm_time,
        slurm_gpus=a.slurm_gpus,
        slurm_array_parallelism=a.slurm_array_parallelism,
        slurm_folder=a.slurm_folder,
        slurm_cluster=a.slurm_cluster,
    )


def _need(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserInputError(
            f"--executor needs {module.split('.')[0]}: pip install 'valleysim[cluster]' (dask[distributed], submitit)"
        ) from None


@contextlib.contextmanager
def sweep_executor(args) -> Iterator[Executor | None]:
    """A command's executor from its parsed flags: None (the sweep's own local pool) for ``--executor local``
    without ``--workers``, else :func:`open_executor`."""
    if args.executor == "local" and args.workers is None:
        yield None
    else:
        with open_executor(args.executor, options_from_args(args)) as ex:
            yield ex


@contextlib.contextmanager
def open_executor(
    spec: str, opts: ExecutorOptions = ExecutorOptions(), log: Callable[[str], None] = print
) -> Iterator[Executor]:
    """The executor named by ``spec`` (module docstring), shut down (cluster closed, client disconnected,
    pending jobs cancelled) on exit."""
    spec = executor_spec(spec)
    if spec == "local":
        from valleysim.runner import default_executor

        pool = default_executor(opts.workers)
        try:
            yield pool
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    elif spec.startswith("dask"):
        distributed = _need("distributed")
        cluster = None
        if spec == "dask":
            cluster = distributed.LocalCluster(
                n_workers=opts.workers or os.cpu_count() or 1,
                threads_per_worker=opts.threads_per_worker,
                processes=True,
                dashboard_address=":0",
                env=WORKER_ENV,
            )
            address = cluster
        else:
            check_dask_scheduler(spec)
            address = "tcp://" + spec.removeprefix("dask://")
        try:
            client = distributed.Client(address, timeout="10s")
        except OSError as err:
            if cluster is not None:
                cluster.close()
            raise UserInputError(f"--executor {spec}: no dask scheduler answers there ({err})") from None
        log(f"dask: {len(client.scheduler_info()['workers'])} worker(s); dashboard {client.dashboard_link}")
        try:
            yield client.get_executor()
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    else:
        ex = slurm_executor(opts)
        log(f"submitit ({opts.slurm_cluster}): job files in {Path(opts.slurm_folder).resolve()}")
        pool = SubmititExecutor(ex)
        try:
            yield pool
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def check_dask_scheduler(spec: str, timeout_s: float = DASK_ANSWER_S) -> None:
    """UserInputError, in words, unless a dask scheduler answers at ``spec`` (dask://HOST:PORT) within
    ``timeout_s`` seconds to connect and as many to greet: a scheduler sends its handshake as soon as a
    connection opens (an 8-byte frame length, then the count of msgpack frames). distributed's own connect
    waits for that handshake without a bound and reads any first 8 bytes as a length to allocate."""
    host, port = _DASK_URL.match(spec).groups()
    where = f"--executor {spec}"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as conn:
            greeting, deadline = b"", time.monotonic() + timeout_s
            with contextlib.suppress(TimeoutError):
                while len(greeting) < 16 and (left := deadline - time.monotonic()) > 0:
                    conn.settimeout(left)
                    chunk = conn.recv(256)
                    if not chunk:  # closed
                        break
                    greeting += chunk
    except TimeoutError:
        raise UserInputError(
            f"{where}: no dask scheduler answers there (connect timed out after {timeout_s:g} s)"
        ) from None
    except OSError as err:
        raise UserInputError(f"{where}: no dask scheduler answers there ({err.strerror or err})") from None
    if not greeting:
        raise UserInputError(
            f"{where}: something accepted the connection but sent nothing in {timeout_s:g} s: not a dask "
            "scheduler (one greets at once)"
        )
    nbytes, n_frames = struct.unpack("<QQ", greeting[:16].ljust(16, b"\0"))
    if not (16 <= nbytes <= 2**20 and 1 <= n_frames <= 64):
        shown = greeting.split(b"\n")[0][:60].decode("ascii", "replace").strip()
        raise UserInputError(f"{where}: something that is not a dask scheduler answered there (it sent {shown!r})")


def slurm_executor(opts: ExecutorOptions):
    """submitit's executor for ``--executor slurm``, its parameters set (and checked by submitit's own
    validation): Slurm itself for ``--slurm-cluster slurm`` (refused in one line where ``sbatch`` or
    ``srun`` is missing, never submitit's silent fall-back to local jobs), else its local / debug one."""
    submitit = _need("submitit")
    params = dict(timeout_min=opts.slurm_time, slurm_array_parallelism=opts.slurm_array_parallelism)
    if opts.slurm_cluster != "slurm":
        ex = submitit.AutoExecutor(folder=opts.slurm_folder, cluster=opts.slurm_cluster)
        ex.update_parameters(**params)
        return ex
    missing = [cmd for cmd in ("sbatch", "srun") if shutil.which(cmd) is None]
    if missing:
        raise UserInputError(
            f"--executor slurm: no Slurm on this machine ({' and '.join(missing)} not on PATH); run the command "
            "on a Slurm login node, or use --executor local or dask"
        )
    ex = submitit.AutoExecutor(folder=opts.slurm_folder, cluster="slurm", slurm_max_num_timeout=SLURM_REQUEUES)
    if opts.slurm_gpus:
        params["gpus_per_node"] = opts.slurm_gpus
    if opts.slurm_partition:
        params["slurm_partition"] = opts.slurm_partition
    ex.update_parameters(**params)
    return ex


def worker_slot() -> int | None:
    """This worker's number: ``$VALLEYSIM_WORKER_SLOT`` (the local pool), the dask worker's name when it is
    an integer (a LocalCluster's), ``$SLURM_LOCALID`` (a Slurm task); None outside a worker."""
    if "VALLEYSIM_WORKER_SLOT" in os.environ:
        return int(os.environ["VALLEYSIM_WORKER_SLOT"])
    with contextlib.suppress(ImportError, ValueError, TypeError):
        from distributed import get_worker

        return int(get_worker().name)
    if "SLURM_LOCALID" in os.environ:
        return int(os.environ["SLURM_LOCALID"])
    return None


def pinned_device(device: str, n_gpus: int, slot: int | None) -> str:
    """One GPU per worker: a bare ``cuda`` becomes ``cuda:<slot mod n_gpus>`` on a machine with several
    GPUs; any other device (cpu, cuda:N) is kept."""
    if device != "cuda" or n_gpus <= 1 or slot is None:
        return device
    return f"cuda:{slot % n_gpus}"


@dataclass(frozen=True)
class _Refused:
    """A job's UserInputError, returned instead of raised: submitit turns a raised exception into the text of
    its traceback, and the driver should print the error's one line, as it does for the other executors."""

    error: UserInputError


class _Requeueable:
    """``fn(*args)`` as a submitit job that Slurm may preempt or time out: its checkpoint resubmits the
    same call (a point is recomputed from (seed, point), so a rerun gives the same result)."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        os.environ.update(WORKER_ENV)
        try:
            return self.fn(*args, **kwargs)
        except UserInputError as err:
            return _Refused(err)

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


@contextlib.contextmanager
def _sbatch_refusal():
    """A submission that ``sbatch`` refuses (an unknown partition, a time over the limit) as one line with
    its reason (submitit's own print of sbatch's stderr is held back: the line carries it)."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    except (FailedJobError, FailedSubmissionError) as err:
        reason = " ".join(str(err).split()) or "no reason given"
        raise UserInputError(f"--executor slurm: the jobs were not submitted: {reason}") from None


def _job_failure(job, exc: BaseException) -> BaseException:
    """What a job's failure means to the sweep: a job that ended without a result (killed by Slurm after its
    requeues, cancelled, out of memory) is a lost worker (one line naming its log, exit 1; the other points
    go on and a rerun computes it); an exception the point raised stays itself."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    from valleysim.runner import LostWorker

    if isinstance(exc, UncompletedJobError) and not isinstance(exc, FailedJobError):
        return LostWorker(f"job {job.job_id} ended without a result (its log: {job.paths.stdout})")
    return exc


class SubmititExecutor(Executor):
    """A submitit executor as a ``concurrent.futures.Executor``: ``submit`` returns a Future that a polling
    thread completes from the job's state; :meth:`submit_all` sends many calls as one array job."""

    def __init__(self, executor, poll_s: float = 0.5):
        self.executor, self.poll_s = executor, poll_s
        self._pending: list[tuple[object, Future]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _track(self, job) -> Future:
        fut: Future = Future()
        fut.set_running_or_notify_cancel()
        with self._lock:
            self._pending.append((job, fut))
        return fut

    def submit(self, fn, /, *args, **kwargs) -> Future:
        with _sbatch_refusal():
            return self._track(self.executor.submit(_Requeueable(fn), *args, **kwargs))

    def submit_all(self, fn, items) -> list[Future]:
        """One future per item, ``fn(item)`` for each, submitted as one array job."""
        wrapped = _Requeueable(fn)
        with _sbatch_refusal(), self.executor.batch():
            jobs = [self.executor.submit(wrapped, item) for item in items]
        return [self._track(job) for job in jobs]

    def _poll(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                pending = list(self._pending)
            for job, fut in pending:
                if job.done():
                    try:
                        result = job.result()
                    except BaseException as exc:  # the job's exception, or submitit's failure report
                        fut.set_exception(_job_failure(job, exc))
                    else:
                        if isinstance(result, _Refused):
                            fut.set_exception(result.error)
                        else:
                            fut.set_result(result)
                    with self._lock:
                        self._pending.remove((job, fut))
            time.sleep(self.poll_s)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if cancel_futures:
            with self._lock:
                pending, self._pending = list(self._pending), []
            for job, fut in pending:
                with contextlib.suppress(Exception):
                    job.cancel()
                fut.cancel() or fut.set_exception(RuntimeError("cancelled at shutdown"))
        elif wait:
            while True:
                with self._lock:
                    if not self._pending:
                        break
                time.sleep(self.poll_s)
        self._stop.set()
