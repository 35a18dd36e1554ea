"""The process executor: prewarmed job processes, one job each, supervised from a job's task.

Task tree (inside ``Worker.serve``)::

    root nursery
    '- serve_process_pool           owns the ResourcePool of idle processes
       '- ResourcePool maintenance  keeps num_idle_processes started (setup run)
    jobs nursery
    '- _run_job(ctx)                the job's task, holding its cancel scope
       '- ProcessPool.run(ctx)      takes a process, sends the job, relays logs,
                                    watches memory; on cancellation tells the
                                    child, waits a bounded grace, then kills

A process serves one job and exits: each job starts from the warm state (the
agent's modules imported, the setup hook's userdata) and its memory goes
back to the system when it ends.
"""

from __future__ import annotations

import base64
import logging
import math
import os
import pickle
import signal
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._exceptions import ConfigurationError, JobProcessError, ProtocolError
from ..resources import ResourcePool
from ._ipc import FrameChannel, Message
from ._proc import JobProcess, SetupFn

if TYPE_CHECKING:
    import multiprocessing.process

    from .._job import JobContext
    from .._options import WorkerOptions

__all__ = ["JobProcessInfo", "ProcessPool", "ProcessPoolStatistics", "serve_process_pool"]

logger = logging.getLogger("trio_lkagent.processes")

#: How often a running job process's memory is read.
MEMORY_INTERVAL = 0.5
#: After the grace: SIGKILL, then at most this long for the exit to be reported.
KILL_WAIT = 5.0


@attrs.frozen
class JobProcessInfo:
    """One running job process, in :class:`ProcessPoolStatistics`."""

    pid: int
    job_id: str
    #: Resident memory, MB (from /proc; 0 where unavailable).
    rss_mb: float


@attrs.frozen
class ProcessPoolStatistics:
    """The process executor's state, in ``WorkerStatistics.processes``."""

    start_method: str
    #: Warm processes waiting for a job.
    idle: int
    #: Processes starting (imports, setup hook).
    starting: int
    #: Job processes running, by job id.
    running: dict[str, JobProcessInfo]
    #: Processes started so far.
    started: int
    #: Job processes that died before reporting their job's outcome (crash,
    #: signal, memory limit): each one's job failed and a new process replaced it.
    crashed: int
    #: Of those, killed for exceeding ``job_memory_limit_mb``.
    memory_killed: int
    #: Processes killed because they did not stop within the grace.
    grace_killed: int
    #: Processes whose setup hook failed.
    setup_failures: int


class _Handle:
    """A started job process and our end of its socketpair."""

    def __init__(self, process: multiprocessing.process.BaseProcess, channel: FrameChannel) -> None:
        self.process = process
        self.channel = channel
        self.pid: int = process.pid or 0
        self.kill_reason: str | None = None
        self.exited = False
        self.closed = False

    def alive(self) -> bool:
        return not self.exited and self.process.exitcode is None

    def rss_mb(self) -> float:
        try:
            with open(f"/proc/{self.pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):
            return 0.0

    def kill(self, reason: str | None = None) -> None:
        if self.kill_reason is None:
            self.kill_reason = reason
        if not self.exited:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def wait(self) -> None:
        """Until the process has exited (and is reaped)."""
        if not self.exited:
            await trio.lowlevel.wait_readable(self.process.sentinel)
            self.process.join()
            self.exited = True

    def exit_reason(self) -> str:
        if self.kill_reason:
            return self.kill_reason
        code = self.process.exitcode
        if code is None:
            return "job process stopped answering"
        if code < 0:
            try:
                name = f" ({signal.Signals(-code).name})"
            except ValueError:
                name = ""
            return f"job process exited with signal {-code}{name}"
        if code:
            return f"job process exited with code {code}"
        return "job process exited before reporting its outcome"

    async def aclose(self) -> None:
        """Stop (an idle process is asked to exit; then killed), reap, release fds."""
        if self.closed:
            return
        self.closed = True
        with trio.CancelScope(shield=True):
            if not self.exited:
                with trio.move_on_after(2.0):
                    try:
                        await self.channel.send({"type": "exit"})
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    await self.wait()
            if not self.exited:
                self.kill()
                with trio.move_on_after(KILL_WAIT):
                    await self.wait()
            await self.channel.aclose()
            if self.exited:
                self.process.close()


class ProcessPool:
    """Runs jobs in prewarmed processes (``JobExecutor.PROCESS``).

    Made and owned by :func:`serve_process_pool`; the worker calls :meth:`run`
    for each job in place of the entrypoint.
    """

    def __init__(
        self, options: WorkerOptions, entrypoint: Callable[..., Any], setup: SetupFn | None
    ) -> None:
        import multiprocessing

        for what, fn in (("entrypoint", entrypoint), ("setup hook", setup)):
            if fn is None:
                continue
            try:
                pickle.dumps(fn)
            except Exception as exc:
                raise ConfigurationError(
                    f"with JobExecutor.PROCESS the {what} must be importable by the job"
                    f" process (a module-level function), got {fn!r}: {exc}"
                ) from None
        self._options = options
        self._entrypoint = entrypoint
        self._setup = setup
        self._mp: Any = multiprocessing.get_context(options.process_start_method)
        if options.process_start_method == "forkserver":
            # Imported once in the fork server, so every job process starts with
            # them (no effect if this process's fork server already runs).
            preload = ["trio_lkagent.processes._child"]
            for fn in (entrypoint, setup):
                module = getattr(fn, "__module__", None)
                if module and module != "__main__" and module not in preload:
                    preload.append(module)
            self._mp.set_forkserver_preload(["__main__", *preload])
        self._pool: ResourcePool[_Handle] | None = None
        self._running: dict[str, _Handle] = {}
        self._starting = 0
        self._started = self._crashed = self._memory_killed = 0
        self._grace_killed = self._setup_failures = 0

    def warm(self) -> None:
        """Start keeping ``num_idle_processes`` processes ready (the worker registered)."""
        if self._pool is not None:
            self._pool.min_size = self._options.num_idle_processes

    def statistics(self) -> ProcessPoolStatistics:
        """A frozen snapshot (processes, memory per running job, failures)."""
        pool = self._pool
        return ProcessPoolStatistics(
            start_method=self._options.process_start_method,
            idle=pool.available if pool is not None else 0,
            starting=self._starting,
            running={
                job_id: JobProcessInfo(h.pid, job_id, round(h.rss_mb(), 1))
                for job_id, h in self._running.items()
            },
            started=self._started,
            crashed=self._crashed,
            memory_killed=self._memory_killed,
            grace_killed=self._grace_killed,
            setup_failures=self._setup_failures,
        )

    # -- processes ----------------------------------------------------------------------

    async def _start(self) -> _Handle:
        """Start a process and wait until its setup hook has run ("ready")."""
        from ._child import child_main

        ours, theirs = socket.socketpair()
        process = self._mp.Process(
            target=child_main,
            args=(
                theirs,
                self._entrypoint,
                self._setup,
                logging.getLogger().getEffectiveLevel(),
                self._options.shutdown_grace,
            ),
            name="trio-lkagent job process",
            daemon=True,
        )
        self._starting += 1
        try:
            # Blocking (it talks to the fork server, or forks/execs): in a thread.
            await trio.to_thread.run_sync(process.start)
        except BaseException:
            self._starting -= 1
            ours.close()
            theirs.close()
            raise
        theirs.close()
        self._started += 1
        handle = _Handle(
            process, FrameChannel(trio.SocketStream(trio.socket.from_stdlib_socket(ours)))
        )
        try:
            while True:
                try:
                    message = await handle.channel.receive()
                except (trio.EndOfChannel, trio.BrokenResourceError, ProtocolError):
                    await handle.wait()
                    raise JobProcessError(
                        f"{handle.exit_reason()} while starting (setup hook or imports)"
                    ) from None
                if message["type"] == "log":
                    _emit(message, handle.pid)
                elif message["type"] == "ready":
                    return handle
                elif message["type"] == "setup_failed":
                    self._setup_failures += 1
                    error = message.get("error")
                    raise JobProcessError(f"the setup hook failed: {error}")  # noqa: TRY301
        except BaseException:
            await handle.aclose()
            raise
        finally:
            self._starting -= 1

    # -- jobs ---------------------------------------------------------------------------

    async def run(self, ctx: JobContext) -> None:
        """Run the job *ctx* in a prewarmed process (the worker's entrypoint for the job).

        Raises:
            JobProcessError: the entrypoint failed in the child (its error), or
                the process died (``"job process exited with signal 11"``).

        Cancellation:
            The child is told to shut the job down (its entrypoint is cancelled
            in its own Trio run, its shutdown callbacks run) and has
            ``shutdown_grace`` + 1 s to report; then it is killed.
        """
        assert self._pool is not None
        handle = await self._pool.take()
        ctx._proc = JobProcess(pid=handle.pid, executor=ctx.proc.executor)
        self._running[ctx.job_id] = handle
        try:
            try:
                await handle.channel.send(_start_message(ctx, self._options))
                result = await self._supervise(handle, ctx)
            except BaseException:
                # Cancelled (termination, drain, the worker stopping; from the
                # nursery, in a group), or our own failure: the child ends its job.
                with trio.CancelScope(shield=True):
                    await self._stop(handle, ctx)
                raise
        finally:
            if ctx._rooms is not None and not handle.exited:
                # The child may hold the job's room: it leaves once the worker
                # has sent the final status (ctx._leave), as a task job does.
                ctx._rooms.start_soon(self._release, handle, ctx)
            else:
                del self._running[ctx.job_id]
                await handle.aclose()
        if result["outcome"] == "failed":
            raise JobProcessError(str(result.get("error") or "the entrypoint failed"))

    async def _release(self, handle: _Handle, ctx: JobContext) -> None:
        """After the final status: tell the child to leave its room, let it exit."""
        try:
            with trio.move_on_after(self._options.shutdown_grace + 1):
                await ctx._left.wait()
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await handle.channel.send({"type": "leave"})
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                with trio.move_on_after(self._options.shutdown_grace + 2):
                    await self._drain_until_exit(handle)
                del self._running[ctx.job_id]
                await handle.aclose()

    async def _drain_until_exit(self, handle: _Handle) -> None:
        """Relay the child's last log records until it closes its end, then reap it."""
        while True:
            try:
                message = await handle.channel.receive()
            except (trio.EndOfChannel, trio.BrokenResourceError, ProtocolError):
                break
            if message["type"] == "log":
                _emit(message, handle.pid)
        await handle.wait()

    async def _supervise(self, handle: _Handle, ctx: JobContext) -> Message:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_memory, handle, ctx)
            result = await self._until_done(handle, ctx)
            nursery.cancel_scope.cancel()
        return result

    async def _until_done(self, handle: _Handle, ctx: JobContext) -> Message:
        while True:
            try:
                message = await handle.channel.receive()
            except (trio.EndOfChannel, trio.BrokenResourceError, ProtocolError) as exc:
                if isinstance(exc, ProtocolError):
                    logger.error("job %s: %s; killing its process", ctx.job_id, exc)  # noqa: TRY400
                    handle.kill()
                with trio.move_on_after(KILL_WAIT):
                    await handle.wait()
                if not handle.exited:
                    handle.kill()
                    await handle.wait()
                self._crashed += 1
                if handle.kill_reason and "memory" in handle.kill_reason:
                    self._memory_killed += 1
                reason = handle.exit_reason()
                logger.error("job %s: %s; a new process replaces it", ctx.job_id, reason)  # noqa: TRY400
                raise JobProcessError(reason) from None
            if message["type"] == "log":
                _emit(message, handle.pid)
            elif message["type"] == "done":
                if message.get("dropped"):
                    logger.warning(
                        "job %s: %d log record(s) of its process were dropped",
                        ctx.job_id,
                        message["dropped"],
                    )
                return message

    async def _stop(self, handle: _Handle, ctx: JobContext) -> None:
        """Shut the job down in the child; kill it after the grace."""
        grace = self._options.shutdown_grace + 1.0
        if handle.exited:
            return
        with trio.move_on_after(grace):
            try:
                reason = ctx.shutdown_reason or "job cancelled"
                await handle.channel.send({"type": "shutdown", "reason": reason})
                await self._until_done(handle, ctx)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError, JobProcessError):
                return
        self._grace_killed += 1
        logger.warning(
            "job %s: its process did not stop within %.1f s; killing it", ctx.job_id, grace
        )
        handle.kill(f"job process killed: it did not stop within {grace:.1f} s")

    async def _watch_memory(self, handle: _Handle, ctx: JobContext) -> None:
        opts = self._options
        limit = opts.job_memory_limit_mb if opts.job_memory_limit_mb is not None else math.inf
        warned = False
        while True:
            rss = handle.rss_mb()
            if rss > limit:
                logger.error(
                    "job %s: its process uses %.0f MB, over job_memory_limit_mb (%.0f); killing it",
                    ctx.job_id,
                    rss,
                    limit,
                )
                handle.kill(
                    f"job process exceeded the memory limit ({rss:.0f} MB > {limit:.0f} MB)"
                )
                return
            if rss > opts.job_memory_warn_mb and not warned:
                warned = True
                logger.warning(
                    "job %s: its process uses %.0f MB (job_memory_warn_mb %.0f)",
                    ctx.job_id,
                    rss,
                    opts.job_memory_warn_mb,
                )
            await trio.sleep(MEMORY_INTERVAL)


async def serve_process_pool(
    options: WorkerOptions,
    entrypoint: Callable[..., Any],
    setup: SetupFn | None,
    until: trio.Event,
    *,
    task_status: trio.TaskStatus[ProcessPool] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Keep ``num_idle_processes`` job processes warm until *until* is set.

    ``task_status.started(pool)`` comes at once; the idle processes start when
    :meth:`ProcessPool.warm` is called (the worker calls it once registered:
    starting them would compete with registering for the CPU). A job that finds
    none idle starts its own.
    Idle processes are stopped when it ends.
    """
    executor = ProcessPool(options, entrypoint, setup)
    async with ResourcePool(
        executor._start,
        close=_Handle.aclose,
        min_size=0,  # raised by warm(): starting processes competes with registering
        max_size=options.num_idle_processes + options.max_jobs,
        max_idle_time=None,
        is_broken=lambda handle: not handle.alive(),
    ) as pool:
        executor._pool = pool
        task_status.started(executor)
        await until.wait()


def _start_message(ctx: JobContext, options: WorkerOptions) -> Message:
    accept = ctx.accept_info
    store = options.checkpoint_store
    # ctx.checkpoint in the child: a store another process can open (SQLite,
    # Redis) is opened there by URL; an in-memory one cannot be shared.
    shared = isinstance(store, str) and not store.startswith("memory:")
    checkpoint = ctx._checkpoint
    return {
        "checkpoint": {
            "url": store if shared else None,
            "scope": checkpoint.scope if checkpoint is not None else None,
            "resumed": ctx._resumed,
            "attempt": ctx._attempt,
        },
        "type": "start",
        "job": base64.b64encode(ctx.job.SerializeToString()).decode("ascii"),
        "url": ctx.url,
        "token": ctx.token,
        "worker_id": ctx.worker_id,
        "accept": {
            "identity": accept.identity,
            "name": accept.name,
            "metadata": accept.metadata,
            "attributes": dict(accept.attributes),
        },
    }


def _emit(message: Message, pid: int) -> None:
    """A child's log record, through the worker's loggers (with the job's context)."""
    name = str(message.get("name") or "root")
    target = logging.getLogger(name)
    levelno = int(message.get("levelno", logging.INFO))
    if not target.isEnabledFor(levelno):
        return
    record = logging.makeLogRecord(
        {
            "name": name,
            "levelno": levelno,
            "levelname": logging.getLevelName(levelno),
            "msg": message.get("msg", ""),
            "args": None,
            "exc_text": message.get("exc_text"),
            "created": message.get("created"),
            "pathname": message.get("pathname", ""),
            "lineno": message.get("lineno", 0),
            "funcName": message.get("funcName", ""),
            "process": pid,
            "processName": "job process",
        }
    )
    target.handle(record)
