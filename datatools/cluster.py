"""Where datatools.convert's shard tasks run: joblib's local workers or a Dask cluster.

``LocalPool`` is a joblib backend on this machine (loky, threading, ...): when a task fails,
joblib kills or joins the other workers before the error reaches the caller. ``DaskPool`` connects
a ``dask.distributed.Client`` to a running scheduler (or starts a LocalCluster) and submits one
future per shard. Not through joblib's dask backend: it never completes a task whose worker died
(dask reports that as the future's error, joblib waits for a result callback that never comes),
so joblib 1.6 hangs for ever where the run must stop with one line.

A worker that dies mid-task has its task retried on another worker by the scheduler, up to dask's
``distributed.scheduler.allowed-failures`` (3) times; the retry starts by removing what the dead
one left (``datatools.shards.convert_shard``). Beyond that the run stops (RunStopped, one line).
A task that has started on a cluster cannot be stopped from here (a worker runs it in a thread to
its end). So after any failure the pool cancels the tasks not yet started and waits for the
running ones: each finishes its shard (marked done, or removed by the task itself when it fails).
Only then may the converter remove unfinished shards and release the output lock; otherwise a
re-run could write a shard that a task of this run is still writing.

dask is imported only for a cluster run: joblib's local workers import this module too.
"""
from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import CancelledError
from typing import Any, Callable, Iterator, Protocol, Sequence

import joblib

from datatools.cli import RunStopped

__all__ = ["DASK", "LOCAL_BACKENDS", "BACKENDS", "ENV_SCHEDULER", "Pool", "LocalPool", "DaskPool",
           "open_pool"]

log = logging.getLogger(__name__)

DASK = "dask"
LOCAL_BACKENDS = ("loky", "threading", "multiprocessing", "sequential")
BACKENDS = LOCAL_BACKENDS + (DASK,)
ENV_SCHEDULER = "DASK_SCHEDULER_ADDRESS"    # dask's own variable for a scheduler's address
CONNECT_SECONDS = 30        # to reach the scheduler
WORKERS_SECONDS = 60        # for a first worker to join it
POLL_SECONDS = 0.5          # between looks at the tasks still running after a failure
REPORT_SECONDS = 10.0       # between lines saying so
RESUMES = "Shards marked done are kept: the same command resumes"


class Pool(Protocol):
    def imap_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any],
                       names: Sequence[str]) -> Iterator[Any]:
        """``fn(item)`` for every item, one task each, results as they finish; ``names`` (one
        per item) name a task in errors."""

    def stop(self) -> bool:
        """After a failure: True once none of the pool's tasks can still be running."""


class LocalPool:
    """A joblib backend on this machine."""

    def __init__(self, backend: str, workers: int) -> None:
        self.backend, self.workers = backend, workers

    def __enter__(self) -> "LocalPool":
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def __str__(self) -> str:
        return f"{self.workers} {self.backend} worker(s)"

    def imap_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any],
                       names: Sequence[str]) -> Iterator[Any]:
        """One task per item: a shard takes seconds to minutes, and a failure costs one shard."""
        with joblib.parallel_config(backend=self.backend, n_jobs=self.workers):
            parallel = joblib.Parallel(return_as="generator_unordered", batch_size=1)
        return parallel(joblib.delayed(fn)(item) for item in items)

    def stop(self) -> bool:
        return True


# A worker's task states from the moment it picks the task to run (before unpickling its function,
# which may import for seconds) until the function returns; a running task that is cancelled
# goes on as "cancelled" until then (dask's worker state machine).
EXECUTING = ("executing", "long-running", "cancelled", "resumed")


def _running_count(tag: str, dask_worker: Any = None) -> int:
    """Tasks of the DaskPool tagged ``tag`` this worker runs or is starting (``client.run`` passes
    ``dask_worker``)."""
    return sum(1 for key, ts in dask_worker.state.tasks.items()
               if str(key).endswith(f"-{tag}") and ts.state in EXECUTING)


class DaskPool:
    """A Client to the scheduler at ``address``, or to a LocalCluster of ``workers`` one-thread
    processes when ``address`` is None; a context manager that closes what it opened."""

    def __init__(self, address: str | None, workers: int) -> None:
        self.address, self.workers = address, workers
        self._tag = uuid.uuid4().hex
        self._cluster: Any = None       # a LocalCluster this pool started
        self._client: Any = None
        self._pending: set[Any] = set()     # futures not finished

    def __enter__(self) -> "DaskPool":
        from dask.distributed import Client, LocalCluster

        if self.address is not None:
            _check_address(self.address)
        try:
            if self.address is None:
                # No dashboard; the scheduler's HTTP server (health checks) on a free local port,
                # and its start-up lines unsaid (this process logs at INFO).
                logging.getLogger("distributed").setLevel(logging.WARNING)
                self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1,
                                             dashboard_address=None,
                                             scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})
            self._client = Client(self._cluster or self.address, timeout=CONNECT_SECONDS,
                                  set_as_default=False)
            self._client.wait_for_workers(1, timeout=WORKERS_SECONDS)
        except BaseException as exc:
            self.__exit__()
            if self.address is not None and isinstance(exc, OSError):   # TimeoutError included
                raise ValueError(self._unreachable()) from None
            raise
        return self

    def _unreachable(self) -> str:
        if self._client is None:
            return (f"cannot reach the dask scheduler at {self.address!r} within {CONNECT_SECONDS} s: "
                    f"check --scheduler / ${ENV_SCHEDULER}")
        return (f"no dask worker joined the scheduler at {self.address} within {WORKERS_SECONDS} s: "
                f"start some with `dask worker {self.address}`")

    def __exit__(self, *exc_info: object) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            # Its workers go with it: one still busy exiting after the nanny's 4 s is killed, no news.
            logging.getLogger("distributed").setLevel(logging.ERROR)
            self._cluster.close()
        self._client = self._cluster = None

    def __str__(self) -> str:
        cores = self._client.ncores()
        return (f"the dask cluster at {self._client.scheduler.address} ({len(cores)} worker(s), "
                f"{sum(cores.values())} thread(s))")

    def imap_unordered(self, fn: Callable[[Any], Any], items: Sequence[Any],
                       names: Sequence[str]) -> Iterator[Any]:
        """A task's own error is raised as it was; a task whose workers kept dying is one line
        (RunStopped)."""
        from dask.distributed import KilledWorker, as_completed

        self._pending = {self._client.submit(fn, item, key=f"{name}-{self._tag}")
                         for item, name in zip(items, names)}
        try:
            for future in as_completed(list(self._pending), loop=self._client.loop):
                self._pending.discard(future)
                yield future.result()
        except KilledWorker as exc:
            raise RunStopped(f"dask workers died {exc.allowed_failures + 1} time(s) running "
                             f"{self._name(exc.task)} (the last: {exc.last_worker.address}); see that "
                             f"worker's log. {RESUMES}") from None
        except CancelledError as exc:       # the scheduler lost it (restarted, connection lost)
            raise RunStopped(f"the dask cluster dropped {self._name(getattr(exc, 'key', '?'))}: {exc}. "
                             f"{RESUMES}") from None

    def _name(self, key: str) -> str:
        return key.removesuffix(f"-{self._tag}")

    def stop(self) -> bool:
        """Cancel the tasks not started, then wait for the running ones to end. False if that
        cannot be told (the scheduler is gone): their shards must then be left alone."""
        last_report = 0.0
        try:
            self._client.cancel(list(self._pending))    # those not started never start
            while running := sum(n for n in self._client.run(_running_count, self._tag,
                                                             on_error="return").values()
                                 if isinstance(n, int)):
                if time.monotonic() - last_report >= REPORT_SECONDS:
                    last_report = time.monotonic()
                    log.warning("waiting for %d shard task(s) still running on the dask cluster to "
                                "finish their shard", running)
                time.sleep(POLL_SECONDS)
        except OSError as exc:
            log.warning("cannot tell whether shard tasks of this run still run on the dask cluster "
                        "(%s): let them end before re-running", exc)
            return False
        return True


def _check_address(address: str) -> None:
    """A scheduler address the Client can try (a malformed one leaves a Client that times out
    while the interpreter exits): ``tcp://host:port`` or ``host:port``."""
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        parse_host_port(location)
    except ValueError:
        scheme = ""
    if scheme != "tcp":
        raise ValueError(f"--scheduler {address!r}: expected tcp://HOST:PORT, e.g. tcp://10.0.0.1:8786")


def open_pool(backend: str, workers: int, scheduler: str | None) -> LocalPool | DaskPool:
    """The pool for ``--backend``: a Dask cluster (``scheduler``'s, else a LocalCluster of
    ``workers`` processes) or a local joblib backend of ``workers`` processes or threads."""
    return DaskPool(scheduler, workers) if backend == DASK else LocalPool(backend, workers)
