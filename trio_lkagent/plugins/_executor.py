"""The inference executor: CPU-bound engine calls off the Trio loop, shared by jobs.

STT and VAD inference is CPU work; run in the Trio loop it stalls every job of the
worker. :func:`open_inference_executor` opens one executor for a whole worker (open it
around ``worker.serve()`` and hand it to the plugins your jobs build):

* **threads** for engines that release the GIL while they compute (onnxruntime,
  WebRTC's VAD, numpy on large arrays): ``await executor.run_sync(fn, *args)``.
* **worker processes** (trio-parallel) for engines that hold it (pocketsphinx):
  ``await executor.run_process(fn, *args)``; *fn* and its arguments are pickled, so
  they must be module-level functions and plain data.

Both are bounded (``threads`` / ``processes`` calls at once; the rest wait their
turn, in order) and cancellable: a call still waiting for its turn is cancelled at
once; a thread call that is running finishes (a thread cannot be killed, and the
executor joins every thread it started), and a process call that is running is
killed with its worker process (a fresh one replaces it). Warm start: the processes
are started, and the ``warmup`` functions run in each of them (load a model into
:func:`process_cache`), before the block's body runs, so the first job does not pay
for them.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import attrs
import trio

__all__ = [
    "ExecutorStatistics",
    "InferenceExecutor",
    "open_inference_executor",
    "process_cache",
]

T = TypeVar("T")

_CACHE: dict[object, Any] = {}


def process_cache(key: object, factory: Callable[[], T]) -> T:
    """Return the object cached under *key* in this process, building it once.

    Engines that run in the executor's worker processes keep their loaded model
    here, so only the first call in each process (or the warmup) pays for loading.

    Args:
        key: A hashable key naming the model and its configuration.
        factory: Builds the object when it is not cached yet.
    """
    try:
        return _CACHE[key]  # type: ignore[no-any-return]
    except KeyError:
        value = _CACHE[key] = factory()
        return value


def _init(warmups: Sequence[Callable[[], object]]) -> bool:
    for fn in warmups:
        fn()
    return True


def _hold() -> int:
    import os

    # Hold the worker a moment so that concurrent warmups land on distinct processes.
    time.sleep(0.05)
    return os.getpid()


@attrs.frozen
class ExecutorStatistics:
    """An executor's load.

    Attributes:
        threads: Thread calls allowed at once.
        processes: Process calls allowed at once.
        threads_busy: Thread calls running now.
        processes_busy: Process calls running now.
        waiting: Calls waiting for their turn now.
        completed: Calls that returned or raised.
        cancelled: Calls cancelled (waiting or running).
        busy_seconds: Total seconds spent in calls.
    """

    threads: int
    processes: int
    threads_busy: int
    processes_busy: int
    waiting: int
    completed: int
    cancelled: int
    busy_seconds: float


class InferenceExecutor:
    """Runs engine calls on bounded threads and worker processes.

    Built by :func:`open_inference_executor`, which owns the worker processes.
    """

    def __init__(self, threads: int, processes: int, context: Any | None) -> None:
        self._threads = trio.CapacityLimiter(max(threads, 1))
        self._processes = trio.CapacityLimiter(max(processes, 1))
        self._n_threads = threads
        self._n_processes = processes
        self._context = context
        self._waiting = 0
        self._completed = 0
        self._cancelled = 0
        self._busy = 0.0
        self._closed = False

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on one of the executor's threads.

        For engines that release the GIL. Calls beyond ``threads`` wait their turn.

        Raises:
            trio.ClosedResourceError: The executor's block has exited.

        Cancellation:
            Immediate while waiting for a thread; a running call finishes first.
        """
        if self._closed:
            raise trio.ClosedResourceError("the inference executor is closed")
        if self._n_threads == 0:
            raise RuntimeError("this executor has no threads (threads=0)")
        return await self._accounted(self._threads, lambda: trio.to_thread.run_sync(fn, *args))

    async def run_process(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in one of the executor's worker processes.

        For engines that hold the GIL. *fn* must be importable (module level) and
        *args* picklable.

        Raises:
            trio.ClosedResourceError: The executor's block has exited.
            trio_parallel.BrokenWorkerError: The worker process died.

        Cancellation:
            Immediate: a running call's process is killed (and replaced).
        """
        if self._closed:
            raise trio.ClosedResourceError("the inference executor is closed")
        if self._context is None:
            raise RuntimeError("this executor has no worker processes (processes=0)")
        context = self._context
        return await self._accounted(
            self._processes, lambda: context.run_sync(fn, *args, kill_on_cancel=True)
        )

    async def _accounted(
        self, limiter: trio.CapacityLimiter, call: Callable[[], Awaitable[T]]
    ) -> T:
        """``await call()`` once *limiter* has room, keeping the waiting, busy,
        completed and cancelled counters."""
        self._waiting += 1
        waiting = True
        try:
            async with limiter:
                self._waiting -= 1
                waiting = False
                start = time.perf_counter()
                try:
                    return await call()
                finally:
                    self._busy += time.perf_counter() - start
                    self._completed += 1
        except trio.Cancelled:
            self._cancelled += 1
            raise
        finally:
            if waiting:
                self._waiting -= 1

    def statistics(self) -> ExecutorStatistics:
        """Return the executor's current load and counters."""
        return ExecutorStatistics(
            threads=self._n_threads,
            processes=self._n_processes,
            threads_busy=self._threads.borrowed_tokens if self._n_threads else 0,
            processes_busy=self._processes.borrowed_tokens if self._n_processes else 0,
            waiting=self._waiting,
            completed=self._completed,
            cancelled=self._cancelled,
            busy_seconds=self._busy,
        )


@asynccontextmanager
async def open_inference_executor(
    *,
    threads: int = 2,
    processes: int = 1,
    warmup: Sequence[Callable[[], object]] = (),
    idle_timeout: float = 600.0,
) -> AsyncIterator[InferenceExecutor]:
    """Open an inference executor shared by every job that uses it.

    Args:
        threads: Thread calls at once (0: none; ``run_sync`` then refuses).
        processes: Worker processes (0: none; ``run_process`` then refuses).
        warmup: Module-level functions run once in each worker process before the
            block's body starts (load models into :func:`process_cache`).
        idle_timeout: Seconds an idle worker process lives before it exits (a new
            one starts, and warms up again, on demand).

    Yields:
        The executor. Leaving the block waits for running thread calls, and stops
        the worker processes.
    """
    if threads < 0 or processes < 0:
        raise ValueError("threads and processes must be >= 0")
    if any(not callable(fn) for fn in warmup):
        raise TypeError("warmup must be a sequence of functions")
    if processes == 0:
        executor = InferenceExecutor(threads, 0, None)
        try:
            yield executor
        finally:
            executor._closed = True
        return

    try:
        import trio_parallel
    except ImportError as exc:
        raise ImportError(
            "trio-parallel is not installed (needed for processes > 0):"
            " pip install 'trio-lkagent[parallel]'"
        ) from exc

    init = functools.partial(_init, tuple(warmup))
    async with trio_parallel.open_worker_context(idle_timeout=idle_timeout, init=init) as context:
        executor = InferenceExecutor(threads, processes, context)
        # Warm start: start every worker process now (each runs the warmups in init).
        async with trio.open_nursery() as nursery:
            for _ in range(processes):
                nursery.start_soon(executor.run_process, _hold)
        try:
            yield executor
        finally:
            executor._closed = True
