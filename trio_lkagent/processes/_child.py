"""The job process: its own ``trio.run``, one job, the same :class:`JobContext` API.

Life of a job process::

    started (forkserver/spawn/fork) -> setup hook -> "ready"
    <- "start" (the job)  -> entrypoint in ctx.cancel_scope, shutdown callbacks
                          -> "done" (outcome) -> exit
    <- "shutdown"         cancels the entrypoint (termination, drain, worker stop)
    <- "exit" / EOF       an idle process leaves; a running job is shut down

Log records of every logger are sent to the worker as ``"log"`` messages
(bounded: beyond 1000 queued, records are dropped and counted), so the
worker's handlers print them with the job's context.
"""

from __future__ import annotations

import base64
import collections
import logging
import os
import signal
import socket
import threading
from typing import Any

import trio
from livekit.protocol import agent as agent_pb

from .._job import AcceptInfo, JobContext
from .._logging import bind_job
from .._options import JobExecutor
from ..resilience import Checkpoint, CheckpointStore, open_checkpoint_store
from ._ipc import FrameChannel, Message
from ._proc import JobProcess, SetupFn, run_setup

__all__ = ["child_main"]

logger = logging.getLogger("trio_lkagent.processes")

_MAX_QUEUED_LOGS = 1000


class _Outbox:
    """Messages to the worker, in order; log records may come from any thread."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._queue: collections.deque[Message] = collections.deque()
        self._logs = 0
        self.dropped = 0
        self._wake = trio.Event()
        self._lock = threading.Lock()
        self._sending = False

    def put(self, message: Message) -> None:
        with self._lock:
            if message["type"] == "log":
                if self._logs >= _MAX_QUEUED_LOGS:
                    self.dropped += 1
                    return
                self._logs += 1
            self._queue.append(message)
        try:
            self._token.run_sync_soon(self._wake.set)
        except trio.RunFinishedError:
            pass

    async def serve(self, channel: FrameChannel) -> None:
        """Send queued messages until cancelled (or the worker is gone)."""
        while True:
            while self._queue:
                with self._lock:
                    message = self._queue.popleft()
                    if message["type"] == "log":
                        self._logs -= 1
                self._sending = True
                try:
                    await channel.send(message)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                finally:
                    self._sending = False
            self._wake = trio.Event()
            if not self._queue:
                await self._wake.wait()

    async def flush(self) -> None:
        """Until every queued message is sent (a frame cut short would look like a crash)."""
        while self._queue or self._sending:  # noqa: ASYNC110 - filled from other threads too
            await trio.sleep(0.005)


class _ForwardHandler(logging.Handler):
    def __init__(self, outbox: _Outbox) -> None:
        super().__init__()
        self._outbox = outbox

    def emit(self, record: logging.LogRecord) -> None:
        try:
            exc_text = record.exc_text
            if record.exc_info and not exc_text:
                exc_text = logging.Formatter().formatException(record.exc_info)
            self._outbox.put(
                {
                    "type": "log",
                    "name": record.name,
                    "levelno": record.levelno,
                    "levelname": record.levelname,
                    "msg": record.getMessage(),
                    "exc_text": exc_text,
                    "created": record.created,
                    "pathname": record.pathname,
                    "lineno": record.lineno,
                    "funcName": record.funcName,
                }
            )
        except Exception:
            self.handleError(record)


def child_main(
    sock: socket.socket,
    entrypoint: Any,
    setup: SetupFn | None,
    log_level: int,
    shutdown_grace: float,
) -> None:
    """The job process's main function (the multiprocessing target)."""
    # Ctrl-C on the worker's terminal reaches the whole process group: the
    # worker drains and tells its jobs; the job processes must not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    code = trio.run(_main, sock, entrypoint, setup, log_level, shutdown_grace)
    logging.shutdown()
    os._exit(code)  # no atexit of the parent's copied state (fork), no stray threads


async def _main(
    sock: socket.socket,
    entrypoint: Any,
    setup: SetupFn | None,
    log_level: int,
    shutdown_grace: float,
) -> int:
    channel = FrameChannel(trio.SocketStream(trio.socket.from_stdlib_socket(sock)))
    outbox = _Outbox(trio.lowlevel.current_trio_token())
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(_ForwardHandler(outbox))
    root.setLevel(log_level)
    proc = JobProcess(pid=os.getpid(), executor=JobExecutor.PROCESS)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.serve, channel)
        try:
            if setup is not None:
                await run_setup(setup, proc)
        except Exception as exc:
            from .._worker import _describe

            logger.exception("the setup hook failed in job process %d", proc.pid)
            outbox.put({"type": "setup_failed", "error": _describe(exc)})
            await _finish(outbox, nursery)
            return 1
        outbox.put({"type": "ready", "pid": proc.pid})
        try:
            message = await channel.receive()
        except (trio.EndOfChannel, trio.BrokenResourceError):
            message = {"type": "exit"}
        if message["type"] != "start":
            await _finish(outbox, nursery)
            return 0
        ctx = _context(message)
        ctx._proc = proc
        bind_job(ctx.job_id, ctx.room_name, ctx.worker_id)
        leave = trio.Event()
        nursery.start_soon(_listen, channel, ctx, leave)
        # As in the worker's own job runner: the room (ctx.connect) is held
        # outside the job's cancel scope and left only once the worker says the
        # final status is out ("leave"): a server fails a running job whose
        # agent leaves the room first.
        store = _attach_checkpoint(ctx, message.get("checkpoint") or {})
        async with trio.open_nursery() as rooms:
            ctx._rooms = rooms
            try:
                outcome, error = await _run_entrypoint(entrypoint, ctx, shutdown_grace)
            finally:
                if store is not None:
                    with trio.CancelScope(shield=True), trio.move_on_after(5):
                        await store.aclose()
            outbox.put(
                {"type": "done", "outcome": outcome, "error": error, "dropped": outbox.dropped}
            )
            with trio.move_on_after(shutdown_grace + 5):
                await leave.wait()
            ctx._leave()
        await _finish(outbox, nursery)
    return 0


async def _finish(outbox: _Outbox, nursery: trio.Nursery) -> None:
    with trio.move_on_after(5):
        await outbox.flush()
    nursery.cancel_scope.cancel()


def _attach_checkpoint(ctx: JobContext, info: dict[str, Any]) -> CheckpointStore | None:
    """``ctx.checkpoint`` backed by the worker's store, opened here by its URL."""
    ctx._resumed = bool(info.get("resumed"))
    ctx._attempt = int(info.get("attempt") or 1)
    url, scope = info.get("url"), info.get("scope")
    if not url or not scope:
        return None  # ctx.checkpoint raises: the worker's store is in its memory
    store = open_checkpoint_store(str(url))
    ctx._checkpoint = Checkpoint(store, str(scope))
    return store


def _context(message: Message) -> JobContext:
    job = agent_pb.Job()
    job.ParseFromString(base64.b64decode(message["job"]))
    accept = message["accept"]
    return JobContext(
        job=job,
        url=message["url"],
        token=message["token"],
        worker_id=message["worker_id"],
        accept=AcceptInfo(
            identity=accept["identity"],
            name=accept["name"],
            metadata=accept["metadata"],
            attributes=dict(accept["attributes"]),
        ),
    )


async def _listen(channel: FrameChannel, ctx: JobContext, leave: trio.Event) -> None:
    """The worker's orders: "shutdown" cancels the job, "leave" lets its room go.

    Losing the worker does both.
    """
    while True:
        try:
            message = await channel.receive()
        except (trio.EndOfChannel, trio.BrokenResourceError):
            ctx.shutdown("the worker process went away")
            leave.set()
            return
        if message["type"] in ("shutdown", "exit"):
            ctx.shutdown(str(message.get("reason") or "shutdown requested"))
        if message["type"] in ("leave", "exit"):
            leave.set()


async def _run_entrypoint(entrypoint: Any, ctx: JobContext, grace: float) -> tuple[str, str]:
    """The job's agent (a handler object's hooks or the entrypoint), as in the worker."""
    from .._worker import run_job_body
    from ..handlers._runner import run_agent

    outcome, error = await run_job_body(ctx, lambda: run_agent(ctx, entrypoint, grace=grace))
    await ctx._run_shutdown_callbacks(grace)
    return outcome.value, error
