"""Where the grid's tasks run: in this process, or on Dask workers (local or a cluster).

Every executor runs the same pure task functions (:mod:`bench.tasks`) and hands each
result to the driver's callbacks as it arrives; only the driver writes records.

- :class:`InProcess` (``--executor inprocess``, the default): tasks in order in this
  process, no other process started; a task's limit is enforced by ``SIGALRM``.
- :class:`DaskExecutor`: ``--executor local --workers N`` starts a ``LocalCluster`` of
  N single-threaded worker processes (torch gets ``cores / N`` threads each);
  ``--executor dask --scheduler tcp://HOST:PORT`` uses a running cluster. Shared pieces
  are submitted first and feed the batches that need them (Dask passes the result
  along, so workers never repeat a piece). Limits and faults are the executor's:
  a task past its limit kills its own worker process (its nanny starts a fresh one)
  after flagging a Dask ``Event``, and is recorded as ``timeout`` without running
  again; a worker killed for any other reason (SIGKILL, out of memory) has its tasks
  retried on the others by the scheduler (up to ``distributed.scheduler.allowed-
  failures`` times; past that the batch is recorded as ``error``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
import uuid
from collections import Counter
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Protocol

from bench.errors import CertbenchError
from bench.tasks import BatchResult, BatchTask, SharedOutcome, SharedTask, run_batch, run_shared

EXECUTORS = ("inprocess", "local", "dask")
# Batches submitted to Dask and not yet collected, per worker: enough to keep every worker
# busy while results come back, few enough that their inputs stay small.
BATCHES_IN_FLIGHT = 4

BatchDone = Callable[[BatchTask, BatchResult], None]
PieceDone = Callable[[SharedTask, SharedOutcome], None]


class ExecutorError(CertbenchError, RuntimeError):
    """The executor cannot start (Dask missing, no scheduler at the address): one line."""


class Executor(Protocol):
    workers: int

    def execute(self, pieces: dict[str, SharedTask], batches: list[BatchTask],
                batch_done: BatchDone, piece_done: PieceDone) -> None:
        """Run every batch (and the pieces they need); call back as each finishes."""


class InProcess:
    """Tasks one after another in this process (today's behaviour; nothing started)."""

    workers = 1

    def execute(self, pieces: dict[str, SharedTask], batches: list[BatchTask],
                batch_done: BatchDone, piece_done: PieceDone) -> None:
        remaining = _uses(batches)
        outcomes: dict[str, SharedOutcome] = {}
        for batch in batches:
            for key in batch.shared:
                if key not in outcomes:
                    outcomes[key] = run_shared(pieces[key])
                    piece_done(pieces[key], outcomes[key])
            result = run_batch(batch, *[outcomes[key] for key in batch.shared])
            for key in batch.shared:          # free a piece once no batch needs it
                remaining[key] -= 1
                if remaining[key] == 0:
                    del outcomes[key]
            batch_done(batch, result)
        for key in [k for k in pieces if k not in remaining]:     # pieces no batch needs
            piece_done(pieces[key], run_shared(pieces[key]))


    def map(self, function: Callable[[Any], Any], tasks: list[Any],
            done: Callable[[Any, Any], None]) -> None:
        """``done(task, function(task))`` for each task, in order."""
        for task in tasks:
            done(task, function(task))


def _uses(batches: list[BatchTask]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for batch in batches:
        for key in batch.shared:
            counts[key] = counts.get(key, 0) + 1
    return counts


def _kill_own_worker(flag: Any) -> None:
    """Past the limit: flag the task as timed out, then end this worker process (a
    running C call cannot be interrupted any other way; the nanny starts a new one)."""
    try:
        flag.set()
    finally:
        os.kill(os.getpid(), signal.SIGKILL)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3       # glibc mallopt parameters


def undo_malloc_trim() -> None:
    """On a worker started with ``MALLOC_TRIM_THRESHOLD_`` (Dask's nanny sets 65536), let
    glibc keep freed memory again: with it set, every large torch temporary was mapped
    afresh and SDP rounds ran 1.75x slower; these thresholds (64 MiB mapped, 256 MiB
    kept) brought them back to normal speed. Elsewhere, or off glibc, nothing happens."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, 64 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 256 << 20)
    except (OSError, AttributeError):
        pass
    os.environ.pop("MALLOC_TRIM_THRESHOLD_")          # once per process


def guarded(function: Callable[..., Any], task: Any, flag_name: str, threads: int | None,
            *args: Any) -> Any:
    """Run ``function(task, *args)`` on a Dask worker under ``task.limit``, with torch on
    ``threads`` threads (``None``: as the worker is).

    If an earlier attempt of this task was stopped at its limit (its ``Event`` is set),
    return ``task.timed_out()`` without running it again.
    """
    undo_malloc_trim()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if task.limit is None:
        return function(task, *args)
    from distributed import Event

    flag = Event(flag_name)
    if flag.is_set():
        return task.timed_out()
    timer = threading.Timer(task.limit, _kill_own_worker, args=(flag,))
    timer.daemon = True
    timer.start()
    try:
        return function(task, *args)
    finally:
        timer.cancel()


class DaskExecutor:
    """Tasks on the workers of a Dask ``client``."""

    def __init__(self, client: Any, threads: int | None = None) -> None:
        self.client = client
        self.threads = threads              # torch threads per task (None: the worker's)
        self.workers = max(1, len(client.scheduler_info().get("workers", {})))

    def execute(self, pieces: dict[str, SharedTask], batches: list[BatchTask],
                batch_done: BatchDone, piece_done: PieceDone) -> None:
        """Every piece at once, then the batches in order, at most
        :data:`BATCHES_IN_FLIGHT` per worker submitted and not yet collected: a batch
        carries its inputs, and submitting a whole report's 660,000 samples at once held
        them all in this process (the scheduler's copy included) and ran 24 GB out of
        memory."""
        run = uuid.uuid4().hex[:12]           # task keys of this run, apart from others'
        futures = {key: self._submit(run_shared, piece, f"certbench-{run}-shared-{number}")
                   for number, (key, piece) in enumerate(pieces.items())}
        needed = Counter(key for batch in batches for key in batch.shared)
        owner: dict[Any, tuple[Any, Callable[[Any, Any], None]]] = {
            future: (pieces[key], piece_done) for key, future in futures.items()}
        for key in [key for key in futures if not needed[key]]:
            del futures[key]                  # a piece no batch needs runs on its own
        waiting = iter(enumerate(batches))

        def submit_next() -> Any | None:
            number, batch = next(waiting, (None, None))
            if batch is None:
                return None
            future = self._submit(run_batch, batch, f"certbench-{run}-batch-{number}",
                                  *[futures[key] for key in batch.shared])
            owner[future] = (batch, batch_done)
            for key in batch.shared:          # released once its last batch is submitted
                needed[key] -= 1
                if not needed[key]:
                    del futures[key]
            return future

        for _ in range(BATCHES_IN_FLIGHT * self.workers):
            submit_next()
        self._collect(owner, submit_next)

    def map(self, function: Callable[[Any], Any], tasks: list[Any],
            done: Callable[[Any, Any], None]) -> None:
        """``done(task, function(task))`` for each task as it finishes, on the workers
        under each task's ``limit``; a task lost with its workers gets
        ``task.lost(message)``."""
        run = uuid.uuid4().hex[:12]
        self._collect({self._submit(function, task, f"certbench-{run}-task-{number}"):
                       (task, done) for number, task in enumerate(tasks)})

    def _submit(self, function: Callable[..., Any], task: Any, name: str,
                *inputs: Any) -> Any:
        """``function(task, *inputs)`` on a worker, guarded; ``inputs`` may be futures."""
        return self.client.submit(guarded, function, task, name, self.threads, *inputs,
                                  key=name, pure=False)

    @staticmethod
    def _collect(owner: dict[Any, tuple[Any, Callable[[Any, Any], None]]],
                 submit_next: Callable[[], Any | None] | None = None) -> None:
        """Hand each future's result to its callback as it finishes; a task whose
        workers were lost (``KilledWorker`` and the like) gets ``task.lost(message)``.
        With ``submit_next``, each finished task other than a shared piece makes room
        for the next batch, which it submits (``None`` when none is left)."""
        from distributed import as_completed

        queue = as_completed(list(owner))
        for future in queue:
            task, done = owner.pop(future)
            piece = isinstance(task, SharedTask)
            if submit_next is not None and not piece:
                following = submit_next()
                if following is not None:
                    queue.add(following)
            done(task, _result_or_lost(future, task))
            if not piece:     # a piece may feed batches not yet submitted: it is released
                future.release()      # when the last reference to it goes


def _result_or_lost(future: Any, task: Any) -> Any:
    """The future's result, or ``task.lost(message)`` if its workers were lost."""
    try:
        return future.result()
    except Exception as exc:                  # noqa: BLE001 - KilledWorker, a lost worker
        return task.lost(f"{type(exc).__name__}: {exc}"[:500])


def local_cluster(workers: int, dashboard: bool = True) -> tuple[Any, Any]:
    """``(LocalCluster, Client)`` of ``workers`` processes, one task at a time each.

    Dask's nannies set ``MALLOC_TRIM_THRESHOLD_=65536`` in a worker's environment (and
    in the environment of the process that runs them): glibc then returns freed memory
    at once and maps large blocks afresh each time, which made torch's SDP rounds 1.75x
    slower here. These workers start with no such variable (on other workers
    :func:`undo_malloc_trim` corrects it); torch's threads are set per task
    (:func:`guarded`).
    """
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ": {}}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0" if dashboard else None,
                               silence_logs=logging.CRITICAL)
    client = Client(cluster)
    client.wait_for_workers(workers)
    return cluster, client


@contextmanager
def executor(kind: str = "inprocess", *, workers: int | None = None,
             threads: int | None = None, scheduler: str | None = None,
             echo: Callable[[str], None] = print) -> Iterator[Executor]:
    """The executor ``kind`` (see the module doc), shut down on leaving. ``threads``: torch
    threads per task on the workers (default: cores / workers locally, the worker's own
    setting on a cluster)."""
    if kind == "inprocess":
        yield InProcess()
        return
    if kind not in EXECUTORS:
        raise ExecutorError(f"unknown executor {kind!r}; one of {', '.join(EXECUTORS)}")
    try:
        from distributed import Client
    except ImportError:
        raise ExecutorError("the Dask executors need dask.distributed: pip install "
                            "'dask[distributed]'") from None
    if kind == "local":
        count = workers or os.cpu_count() or 1
        threads = threads or max(1, (os.cpu_count() or 1) // count)
        cluster, client = local_cluster(count)
        echo(f"Dask: {count} local workers ({threads} thread{'s' * (threads > 1)} each); "
             f"dashboard {client.dashboard_link}")
        try:
            yield DaskExecutor(client, threads)
        finally:
            client.close()
            cluster.close()
        return
    if not scheduler:
        raise ExecutorError("--executor dask needs --scheduler tcp://HOST:PORT (start one "
                            "with `dask scheduler`)")
    try:
        client = Client(scheduler, timeout="10s")
    except (OSError, TimeoutError, ValueError) as exc:      # ValueError: a malformed address
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ExecutorError(f"no Dask scheduler at {scheduler} ({first})") from None
    found = len(client.scheduler_info().get("workers", {}))
    echo(f"Dask: scheduler {scheduler}, {found} workers; dashboard {client.dashboard_link}")
    if found == 0:
        echo("Dask: no workers yet; tasks wait until one connects (`dask worker "
             f"{scheduler}`)")
    try:
        yield DaskExecutor(client, threads)
    finally:
        client.close()
