"""Running workers as a service: signals, the health server, supervised processes.

Task tree of ``trio-lkagent start`` (one process)::

    run_worker()
    '- nursery
       |- _on_signals            SIGTERM/SIGINT: drain, then cancel
       |- _watch_supervisor      (supervised children) stdin EOF: drain
       |- serve_health           /, /worker, /metrics
       |- exit_if_stuck          serving ended but a job ignores cancellation: exit 3
       '- worker.serve()         in the stop-now cancel scope

and of ``--processes N``::

    supervise()
    |- _forward_signals          SIGTERM/SIGINT -> SIGTERM to every child
    '- _keep_running(i)          one per process: start, wait, restart with backoff
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence

import trio

from ._config import ServiceConfig
from ._exceptions import ConfigurationError
from ._health import serve_health
from ._options import ReconnectPolicy
from ._worker import Worker

__all__ = [
    "EXIT_STUCK_JOBS",
    "SUPERVISED_ENV",
    "exit_if_stuck",
    "run_worker",
    "supervise",
]

logger = logging.getLogger("trio_lkagent.service")

#: Set (to the process index) in the environment of supervised worker processes.
SUPERVISED_ENV = "TRIO_LKAGENT_PROCESS_INDEX"
#: How crashed worker processes are restarted: 0.5 s doubling up to 30 s, the
#: count reset after a process stayed up for 30 s.
RESTART_POLICY = ReconnectPolicy(initial_delay=0.5, max_delay=30.0, stable_after=30.0)
#: Exit code of a worker process that stopped serving while jobs that ignored
#: cancellation still ran (their tasks cannot be stopped; see ``exit_if_stuck``).
EXIT_STUCK_JOBS = 3
#: How long the process waits, once only stuck jobs are left, before it exits:
#: a task that is ending after all gets this long to let ``serve`` return.
STUCK_EXIT_DELAY = 1.0

Say = Callable[[str], None]


def say(text: str) -> None:
    """Print a progress line to stdout at once (it may be a pipe)."""
    print(text, flush=True)


class _Stopper:
    """What the first and the second stop request do to a serving worker."""

    def __init__(self, worker: Worker, scope: trio.CancelScope, say: Say) -> None:
        self._worker = worker
        self._scope = scope
        self._say = say
        self.requests = 0

    def request(self, why: str) -> None:
        self.requests += 1
        worker = self._worker
        if self.requests == 1 and worker.worker_id is not None:
            running = worker.statistics().running_jobs
            worker.drain()
            self._say(
                f"{why}: draining ({running} job(s) running, up to"
                f" {worker.options.drain_timeout:g} s); repeat to stop at once"
            )
        else:
            if self.requests > 1:
                self._say(f"{why} again: cancelling running jobs now")
            self._scope.cancel()


class _Announce:
    """A ``task_status`` that reports the registration (``trio.TaskStatus``)."""

    def __init__(self, worker: Worker, say: Say) -> None:
        self._worker = worker
        self._say = say

    def started(self, value: str | None = None) -> None:
        opts = self._worker.options
        name = repr(opts.agent_name) if opts.agent_name else "'' (automatic dispatch)"
        self._say(
            f"worker {value} registered at {opts.agent_ws_url}, agent name {name}"
            f" (pid {os.getpid()})"
        )


async def _on_signals(stopper: _Stopper, *, task_status: trio.TaskStatus[None]) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        async for signum in signals:
            stopper.request(signal.Signals(signum).name)


async def _watch_supervisor(stopper: _Stopper) -> None:
    """A supervised child drains when its supervisor goes away (stdin reaches EOF)."""
    async with trio.lowlevel.FdStream(os.dup(0)) as stdin:
        while await stdin.receive_some():
            pass
    stopper.request("supervisor gone")


async def exit_if_stuck(
    worker: Worker, say: Say, *, summary: Callable[[], object] | None = None
) -> None:
    """End the process when serving is over but jobs that ignored cancellation still run.

    A job that catches ``trio.Cancelled`` and keeps running cannot be stopped
    or abandoned: its task holds ``serve``'s job nursery open, so ``serve``
    (and this process) would never return. The worker already reported such
    jobs ``JS_FAILED`` "job ignored cancellation" and logged where they are
    stuck; once the connection ended for good (the last statuses were sent and
    the socket closed, ``connection_state == "stopped"``) and no other job runs,
    nothing is left for the process to do. After :data:`STUCK_EXIT_DELAY` it
    says which jobs, flushes its output and leaves with :data:`EXIT_STUCK_JOBS`
    through :func:`os._exit`: the only way out, since a normal exit would wait
    for the stuck tasks (and for the native threads they hold) forever.

    *summary*, if given, is called just before that line (``dev`` prints its
    usual "worker drained" line there). Used by ``start`` and ``dev`` alike.

    Cancelled, as usual, when ``serve`` returns: it never fires without stuck jobs.
    """
    await worker._connection_ended.wait()  # serving is over: no reconnect will follow
    while True:
        stats = worker.statistics()
        # Jobs still unwinding are given shutdown_grace by the worker's watchdog, then
        # reported stuck; the poll runs only after serving ended, until serve returns.
        if stats.stuck_jobs and not stats.running_jobs and stats.connection_state == "stopped":
            await trio.sleep(STUCK_EXIT_DELAY)
            stats = worker.statistics()
            if stats.stuck_jobs and not stats.running_jobs:
                break
        await trio.sleep(0.1)
    # No job runs: what is left in stats.jobs are the stuck ones (their tasks still run).
    stuck = ", ".join(f"{job_id} (at {worker._job_location(job_id)})" for job_id in stats.jobs)
    message = (
        f"{stats.stuck_jobs} job(s) ignored cancellation and cannot be stopped: {stuck};"
        f" they were reported failed and the connection is closed; exiting with code"
        f" {EXIT_STUCK_JOBS}"
    )
    if summary is not None:
        summary()
    logger.critical("%s", message)
    say(f"worker stopped: {message}")
    logging.shutdown()  # flushes every handler: os._exit runs no atexit hook
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_STUCK_JOBS)


async def start_health(nursery: trio.Nursery, worker: Worker, host: str, port: int) -> str:
    """Start the health server in *nursery*; a port in use is a usage error naming the flag.

    Raises:
        ConfigurationError: ``health server port 8081 is in use: pass --health-port
            0 (any free port) or off``.
        OSError: other bind failures.
    """
    try:
        url: str = await nursery.start(serve_health, worker, host, port)
    except BaseException as exc:
        error = exc
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        if not (isinstance(error, OSError) and error.errno == errno.EADDRINUSE):
            raise
        raise ConfigurationError(
            f"health server port {port} is in use: pass --health-port 0 (any free port)"
            " or off, or set LIVEKIT_HEALTH_PORT"
        ) from None
    return url


async def run_worker(worker: Worker, config: ServiceConfig, *, say: Say = say) -> int:
    """Serve *worker* as a service until a signal drains it; returns the exit code.

    The first SIGTERM or SIGINT drains (running jobs finish, up to
    ``drain_timeout``, then are cancelled; statuses are reported); a second
    one cancels the jobs at once. A signal before the first registration stops
    at once (there is nothing to drain). Either way the exit code is 0.

    A job that ignores cancellation cannot be stopped: once serving is over
    (drained or cancelled, statuses sent, socket closed) and only such jobs
    are left, the process says which and exits with :data:`EXIT_STUCK_JOBS`
    (3) instead of returning (``exit_if_stuck``).

    Raises:
        AuthenticationError: the server refused the credentials.
        ConnectError: recovery is off (or ``max_attempts`` reached) and the
            connection failed.
    """
    stop_now = trio.CancelScope()
    stopper = _Stopper(worker, stop_now, say)
    async with trio.open_nursery() as nursery:
        await nursery.start(_on_signals, stopper)
        if os.environ.get(SUPERVISED_ENV):
            nursery.start_soon(_watch_supervisor, stopper)
        if config.health_port is not None:
            url = await start_health(nursery, worker, config.health_host, config.health_port)
            say(f"health server at {url} (/ /worker /metrics)")
        # It first runs once serve() has started (and reset a stopped worker's state).
        nursery.start_soon(exit_if_stuck, worker, say)
        with stop_now:
            await worker.serve(task_status=_Announce(worker, say))
        nursery.cancel_scope.cancel()
    stats = worker.statistics()
    say(
        f"worker stopped: {stats.jobs_started} job(s) run, {stats.jobs_succeeded} succeeded,"
        f" {stats.jobs_failed} failed"
    )
    return 0


async def supervise(argv: Sequence[str], config: ServiceConfig, *, say: Say = say) -> int:
    """Run ``config.processes`` worker processes (``trio-lkagent start`` each); restart crashes.

    Each child is this CLI with *argv* and ``--processes 1`` (and, when the
    health port is fixed, port + index). The first SIGTERM/SIGINT is forwarded
    as SIGTERM to every child (they drain); a second one is forwarded again
    (they cancel their jobs). Children run in their own session, so Ctrl-C in a
    terminal reaches them once, through here; if the supervisor dies, their
    stdin reaches EOF and they drain.

    Returns:
        0 when every child's last exit was 0, else 1.
    """
    count = config.processes
    stopping = trio.Event()
    children: dict[int, trio.Process] = {}
    last_codes: dict[int, int] = {}

    def child_argv(index: int) -> list[str]:
        args = [sys.executable, "-m", "trio_lkagent", *argv, "--processes", "1"]
        if config.health_port:
            args += ["--health-port", str(config.health_port + index)]
        return args

    async def keep_running(index: int) -> None:
        label = f"process {index + 1}/{count}"
        failures = 0
        env = {**os.environ, SUPERVISED_ENV: str(index)}
        while not stopping.is_set():
            proc = await trio.lowlevel.open_process(
                child_argv(index), stdin=subprocess.PIPE, env=env, start_new_session=True
            )
            children[index] = proc
            say(f"{label} started (pid {proc.pid})")
            started_at = trio.current_time()
            try:
                code = await proc.wait()
            finally:
                del children[index]
                with trio.CancelScope(shield=True):
                    if proc.returncode is None:  # we are being cancelled
                        proc.kill()
                        await proc.wait()
                    if proc.stdin is not None:
                        await proc.stdin.aclose()
            last_codes[index] = code
            if stopping.is_set():
                say(f"{label} (pid {proc.pid}) exited with code {code}")
                return
            if not config.recovery_enabled:
                say(f"{label} (pid {proc.pid}) exited with code {code}; recovery is off")
                return
            if trio.current_time() - started_at >= RESTART_POLICY.stable_after:
                failures = 0
            failures += 1
            delay = RESTART_POLICY.delay(failures)
            say(f"{label} (pid {proc.pid}) exited with code {code}; restarting in {delay:.1f} s")
            with trio.move_on_after(delay):
                await stopping.wait()

    async def forward_signals(*, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                again = " again" if stopping.is_set() else ""
                say(f"{name}{again}: forwarding SIGTERM to {len(children)} process(es)")
                stopping.set()
                for proc in list(children.values()):
                    if proc.returncode is None:
                        proc.send_signal(signal.SIGTERM)

    async with trio.open_nursery() as outer:
        await outer.start(forward_signals)
        async with trio.open_nursery() as nursery:
            for index in range(count):
                nursery.start_soon(keep_running, index)
        outer.cancel_scope.cancel()
    return 0 if all(code == 0 for code in last_codes.values()) else 1
