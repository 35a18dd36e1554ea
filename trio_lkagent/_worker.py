"""The worker: one WebSocket to the LiveKit agent service, jobs as tasks in a nursery.

Task tree of a serving worker::

    serve()                         the caller's task
    |- jobs nursery
    |  |- _watchdog                 reports jobs that ignore cancellation failed
    |  '- _run_job(...)             one per running job:
    |     '- rooms nursery          the job's rooms (ctx.connect), left after
    |        |                      the final status is sent
    |        '- ctx.cancel_scope    termination, ctx.shutdown(), drain, deadline
    |           '- recovery policy  run_entrypoint: retries in place
    |              '- run_agent     handler hooks or the entrypoint, here or in
    |                               a job process (JobExecutor.PROCESS)
    '- root nursery
       |- WorkerResilience.run      resource sampling, health checks, limits
       |- process pool              job processes (JobExecutor.PROCESS only)
       '- _connection_manager       connect, register, reconnect with backoff
          '- session                one per connection
             |- io nursery (shielded)  trio-websocket's reader, closed last
             |- _writer             answers, job status updates and worker
             |                      status, in order
             |- _pinger             WorkerPing every ping_interval
             |- _expiry             releases reservations whose assignment never came
             |- _load_sampler       load_fn / periodic status report
             '- request handlers    one per pending availability request

Jobs live outside the connection: a reconnect does not touch them. All job
bookkeeping is delegated to the pure :class:`~._jobstate.JobStateMachine`.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import functools
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NoReturn

import attrs
import trio
import trio_websocket
from livekit.protocol import agent as agent_pb

from ._exceptions import (
    AuthenticationError,
    ConnectError,
    JobTimeoutError,
    LKAgentError,
    ProtocolError,
    RecoveryFailedError,
    ShutdownTimeoutError,
    WorkerNotConnectedError,
)
from ._job import AcceptInfo, JobContext, JobRequest
from ._jobstate import Decline, InvalidTransition, JobStateMachine, JobUpdate, Outcome
from ._logging import WS_LOGGER, bind_job, bind_worker, in_sdk_cleanup, unbind_worker
from ._logratelimit import LogLimiter
from ._options import JobExecutor, WorkerOptions
from ._protocol import decode, encode, message_kind
from ._telemetry import WorkerObserver, default_observers
from ._token import agent_token
from ._wsconn import SocketLost, WorkerSocket, open_worker_socket
from .processes._proc import JobProcess, SetupFn, run_setup
from .resilience._runtime import WorkerResilience

if TYPE_CHECKING:
    from .handlers import AgentHandler
    from .processes._pool import ProcessPool, ProcessPoolStatistics
    from .resilience import ResourceMonitor, ResourceSample

__all__ = ["Entrypoint", "RequestHandler", "Worker", "WorkerStatistics"]

logger = logging.getLogger("trio_lkagent.worker")

#: How much longer than ``shutdown_grace`` a cancelled job may take while it is in
#: the SDK's own shielded, bounded cleanups (unpublish 3 s, each native close 2 s)
#: before the watchdog reports it as ignoring cancellation.
SDK_CLEANUP_ALLOWANCE = 10.0
ws_logger = logging.getLogger(WS_LOGGER)

#: ``async def entrypoint(ctx: JobContext) -> None``: one call per job.
Entrypoint = Callable[[JobContext], Awaitable[None]]
#: ``async def on_request(req: JobRequest) -> None``: answers with accept/reject.
RequestHandler = Callable[[JobRequest], Awaitable[None]]


@attrs.frozen
class WorkerStatistics:
    """A snapshot of a worker's state, from :meth:`Worker.statistics`."""

    worker_id: str | None
    #: ``"connecting"``, ``"available"``, ``"full"``, ``"draining"`` or ``"stopped"``.
    status: str
    registered: bool
    load: float
    running_jobs: int
    reserved_jobs: int
    max_jobs: int
    jobs_started: int
    jobs_succeeded: int
    jobs_failed: int
    requests_declined: int
    reconnects: int
    #: Round trip of the last WorkerPing/WorkerPong, in seconds.
    ping_rtt: float | None
    #: Running job id -> room name.
    jobs: dict[str, str]
    #: Room events dropped for slow consumers in the jobs' rooms (``ctx.connect``).
    room_events_dropped: int = 0

    # -- draining ----------------------------------------------------------------------
    #: Set when the last drain reached ``drain_timeout`` with jobs still running
    #: (they were cancelled); ``drain(strict=True)`` makes ``serve`` raise it.
    drain_error: ShutdownTimeoutError | None = None

    # -- resilience (trio_lkagent.resilience) ------------------------------------------
    #: ``time.time()`` when ``serve`` started (None before).
    start_time: float | None = None
    #: Seconds since ``serve`` started.
    uptime: float = 0.0
    #: ``time.time()`` of the last job assignment (None before the first).
    last_job_time: float | None = None
    #: CPU of the worker's process tree, percent of one core (latest sample).
    cpu_percent: float = 0.0
    #: Resident memory of the worker's process tree, MB (latest sample).
    memory_mb: float = 0.0
    #: Bytes received from / sent to the agent service WebSocket (message payloads).
    network_bytes_in: int = 0
    network_bytes_out: int = 0
    #: The last reported loads, oldest first (at most 60).
    load_history: tuple[float, ...] = ()
    #: ``"connected"``, ``"connecting"`` or ``"stopped"`` (serving ended: the last
    #: statuses were sent and the socket closed for good, although ``serve`` may
    #: still wait for a job that ignored cancellation, see ``stuck_jobs``).
    connection_state: str = "connecting"
    #: ``time.time()`` of the last message from the server.
    last_heartbeat: float | None = None
    #: Why the worker declines jobs although it has capacity (a resource limit); None if not.
    full_reason: str | None = None
    #: The latest CPU/memory sample (None before the first).
    resources: ResourceSample | None = None
    #: Job entrypoints re-run by the recovery policy.
    job_retries: int = 0
    #: Recovery decisions taken, by action (``"retry"``, ``"backoff"``, ...).
    recovery_decisions: dict[str, int] = attrs.field(factory=dict)

    # -- per-job processes (trio_lkagent.processes) ------------------------------------
    #: The process executor's pool (idle, running with memory, crashes); None with tasks.
    processes: ProcessPoolStatistics | None = None

    # -- jobs that ignore cancellation (the watchdog) ----------------------------------
    #: Jobs reported failed because they ignored cancellation, whose tasks still
    #: run (the worker is unhealthy while there are any).
    stuck_jobs: int = 0


#: The session ended and the worker should reconnect (a ConnectionLostError).
_ConnectionLost = SocketLost


class Worker:
    """A LiveKit agent worker: registers with the server and runs one task per job.

    Args:
        entrypoint: ``async def entrypoint(ctx: JobContext)``, called once per
            job, inside the job's cancel scope; or a handler object
            (:class:`trio_lkagent.handlers.AgentHandler`), whose
            ``on_job_request`` answers requests (unless *request_handler* is
            given) and whose hooks run the job (``docs/handlers.md``).
        options: Connection and capacity settings (default: ``WorkerOptions()``,
            which reads ``LIVEKIT_URL``/``LIVEKIT_API_KEY``/``LIVEKIT_API_SECRET``;
            missing ones are looked up again, and reported, when ``serve`` starts,
            so building a worker at import time needs no configuration).
        request_handler: ``async def on_request(req: JobRequest)``, which calls
            ``req.accept(...)`` or ``req.reject()``. Without one every job
            (within capacity) is accepted with identity ``agent-<job id>``.
        setup: ``def setup(proc: JobProcess)`` (or async): runs once per
            worker (task executor, before registering) or once per job
            process (process executor, before it takes a job) and fills
            ``proc.userdata``, which jobs see as ``ctx.proc.userdata``.

    Raises:
        ConfigurationError: invalid options (missing URL or keys: from ``serve``).

    Run it with ``trio.run(worker.serve)``, or inside an application with
    ``worker_id = await nursery.start(worker.serve)``.
    """

    def __init__(
        self,
        entrypoint: Entrypoint | AgentHandler,
        options: WorkerOptions | None = None,
        *,
        request_handler: RequestHandler | None = None,
        setup: SetupFn | None = None,
    ) -> None:
        # A handler object answers requests with its on_job_request.
        if request_handler is None and callable(getattr(entrypoint, "on_job_request", None)):
            request_handler = entrypoint.on_job_request  # type: ignore[union-attr]
        self._entrypoint = entrypoint
        self._setup = setup
        self._options = options if options is not None else WorkerOptions()
        self._request_handler = request_handler
        self._rng = random.Random()
        self._observers: list[WorkerObserver] = default_observers()
        self._proc = JobProcess()  # ctx.proc of task-executor jobs
        self._reset()

    def _reset(self) -> None:
        opts = self._options
        self._state = JobStateMachine(
            max_jobs=opts.max_jobs,
            load_threshold=opts.load_threshold,
            assignment_timeout=opts.assignment_timeout,
            request_timeout=opts.request_timeout,
        )
        self._serving = False
        self._stopped = False
        self._worker_id: str | None = None
        self._ws: WorkerSocket | None = None
        # Availability answers wait here for the writer (the reader never sends).
        self._answers: collections.deque[agent_pb.AvailabilityResponse] = collections.deque()
        self._peer_log = LogLimiter(logger, clock=lambda: trio.current_time())
        # Jobs reported failed because they ignored cancellation past the grace.
        self._abandoned: set[str] = set()
        self._cancel_deadlines: dict[str, float] = {}
        #: Job id -> the latest its watchdog waits for the SDK's own cleanups.
        self._cleanup_caps: dict[str, float] = {}
        self._wake_watchdog = trio.Event()
        self._jobs: dict[str, JobContext] = {}
        self._job_rooms: dict[str, str] = {}
        self._handler_scopes: dict[str, trio.CancelScope] = {}
        self._accepted: dict[str, AcceptInfo] = {}
        self._flush_lock = trio.Lock()
        self._drain_requested = trio.Event()
        self._jobs_closed = trio.Event()
        self._changed = trio.Event()
        self._cancel_new_jobs = False
        self._wake_writer = trio.Event()
        self._wake_expiry = trio.Event()
        self._outbox_progress = trio.Event()
        self._last_status: tuple[int, float, int] | None = None
        self._pings: dict[int, float] = {}
        self._ping_rtt: float | None = None
        self._reconnects = 0
        self._started = self._succeeded = self._failed = self._declined = 0
        self._room_events_dropped = 0
        self._resilience = WorkerResilience(self)
        self._drain_error: ShutdownTimeoutError | None = None
        self._strict_drain = False
        # The job runner: the entrypoint itself, or the process pool's run (PROCESS).
        self._job_runner: Entrypoint | AgentHandler = self._entrypoint
        self._process_pool: ProcessPool | None = None
        # Set once the connection manager ended for good (last statuses
        # flushed, socket closed); read by the service's stuck-job exit (_service.py).
        self._connection_ended = trio.Event()

    # -- public API ------------------------------------------------------------

    @property
    def options(self) -> WorkerOptions:
        """The options the worker was built with."""
        return self._options

    @property
    def worker_id(self) -> str | None:
        """The id the server gave at the last registration (``AW_...``), or None."""
        return self._worker_id

    def statistics(self) -> WorkerStatistics:
        """A frozen snapshot of the worker's state (for health checks and metrics)."""
        state = self._state
        if self._stopped:
            status = "stopped"
        elif state.draining or self._drain_requested.is_set():
            status = "draining"
        elif self._ws is None:
            status = "connecting"
        else:
            status = "full" if state.is_full else "available"
        return WorkerStatistics(
            worker_id=self._worker_id,
            status=status,
            registered=self._ws is not None,
            load=state.load,
            running_jobs=state.running,
            reserved_jobs=state.reserved,
            max_jobs=state.max_jobs,
            jobs_started=self._started,
            jobs_succeeded=self._succeeded,
            jobs_failed=self._failed,
            requests_declined=self._declined,
            reconnects=self._reconnects,
            ping_rtt=self._ping_rtt,
            jobs=dict(self._job_rooms),
            room_events_dropped=self._room_events_dropped
            + sum(ctx._events_dropped_now() for ctx in self._jobs.values()),
            processes=self._process_pool.statistics() if self._process_pool else None,
            drain_error=self._drain_error,
            **self._resilience.statistics_fields(),
            stuck_jobs=len(self._abandoned),
        )

    @property
    def resource_monitor(self) -> ResourceMonitor:
        """This worker's :class:`~trio_lkagent.resilience.ResourceMonitor`.

        Fed by the worker's own sampler every ``load_interval`` while serving.
        """
        return self._resilience.monitor

    def drain(self, *, strict: bool = False) -> None:
        """Stop taking jobs and let ``serve`` return once running jobs are done.

        The worker reports WS_FULL, declines new requests (and those whose
        handler is still deciding), waits for running jobs up to
        ``drain_timeout``, cancels the rest, reports their final statuses,
        closes the WebSocket with code 1000 and returns from ``serve``.
        Idempotent; a no-op when not serving.

        Args:
            strict: If ``drain_timeout`` passes with jobs still running, ``serve``
                raises :class:`ShutdownTimeoutError` (after the same clean
                shutdown) instead of returning. Either way the error is logged
                and kept in ``statistics().drain_error``.
        """
        if self._serving:
            self._strict_drain = self._strict_drain or strict
            self._drain_requested.set()

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, register and run jobs until drained or cancelled.

        ``task_status.started(worker_id)`` is called once the server confirmed
        the registration, so ``worker_id = await nursery.start(worker.serve)``
        returns a registered worker.

        Raises:
            ConfigurationError: no URL, API key or secret in the options nor in
                the environment (see :meth:`WorkerOptions.resolved`).
            AuthenticationError: the server refused the credentials (no retry).
            RecoveryFailedError: ``ReconnectPolicy.max_attempts`` connection
                attempts in a row failed (a :class:`ConnectError`; its
                ``__cause__`` is the last failure, e.g. :class:`ConnectionLostError`).
            ShutdownTimeoutError: ``drain(strict=True)`` was called and
                ``drain_timeout`` passed with jobs still running.
            RuntimeError: ``serve`` is already running on this worker.

        Cancellation:
            Running jobs are cancelled (reported JS_SUCCESS, the server's
            convention), their final statuses are sent and the socket closed
            with code 1000, all within ``shutdown_grace``; then Cancelled
            propagates.
        """
        if self._serving:
            raise RuntimeError("Worker.serve() is already running")
        if self._stopped:
            self._reset()
        self._options = self._options.resolved()  # lazy configuration: fail here, not at import
        self._serving = True
        log_token = bind_worker(self)
        try:
            await self._run_setup()
            async with trio.open_nursery() as root:
                root.start_soon(self._resilience.run, self._jobs_closed)
                try:
                    async with trio.open_nursery() as jobs:
                        self._jobs_nursery = jobs
                        watchdog = trio.CancelScope()
                        jobs.start_soon(self._watchdog, watchdog)
                        await self._start_executor(root)
                        worker_id = await root.start(self._serve_connection)
                        if self._process_pool is not None:
                            self._process_pool.warm()  # after registering, not before
                        task_status.started(worker_id)
                        await self._drain_requested.wait()
                        await self._drain()
                        # Every job ended or was abandoned (ignored cancellation): the
                        # session may close now, though an abandoned task still holds
                        # this nursery open until it ends (Trio cannot abandon a task).
                        watchdog.cancel()
                        self._cancel_new_jobs = True
                        self._jobs_closed.set()
                finally:
                    self._jobs_closed.set()
            if self._strict_drain and self._drain_error is not None:
                raise self._drain_error
        except BaseExceptionGroup as group:
            _raise_collapsed(group)
        finally:
            self._serving = False
            self._stopped = True
            self._ws = None
            unbind_worker(log_token)
            self._observe(lambda o: o.stopped())

    # -- job executor (trio_lkagent.processes) ------------------------------------

    async def _run_setup(self) -> None:
        """Task executor: the setup hook, once, before registering (process: in each child)."""
        if self._setup is not None and self._options.job_executor is JobExecutor.TASK:
            try:
                await run_setup(self._setup, self._proc)
            except Exception as exc:
                exc.add_note(f"raised by the setup hook {self._setup!r}; the worker did not start")
                raise

    async def _start_executor(self, root: trio.Nursery) -> None:
        """Process executor: start the pool of job processes (it lives until jobs end)."""
        if self._options.job_executor is JobExecutor.PROCESS:
            from .processes._pool import serve_process_pool

            self._process_pool = await root.start(
                serve_process_pool, self._options, self._entrypoint, self._setup, self._jobs_closed
            )
            self._job_runner = self._process_pool.run

    # -- draining ----------------------------------------------------------------

    async def _drain(self) -> None:
        opts = self._options
        logger.info("draining: %d running job(s)", self._state.running)
        for job_id in self._state.drain():
            scope = self._handler_scopes.get(job_id)
            if scope is not None:
                scope.cancel()
        self._notify()
        with trio.move_on_after(opts.drain_timeout) as waited:
            await self._wait_idle()
        if waited.cancelled_caught:
            self._drain_error = ShutdownTimeoutError(
                f"drain timeout ({opts.drain_timeout:g} s) reached with"
                f" {len(self._jobs)} job(s) still running: cancelled"
            )
            logger.warning("%s", self._drain_error)
            self._cancel_new_jobs = True  # a late assignment ends at once
            for ctx in list(self._jobs.values()):
                ctx.shutdown("worker drain timeout")
                self._arm_watchdog(ctx.job_id)
            await self._wait_idle()

    async def _wait_idle(self) -> None:
        """Until no job runs and no slot is reserved (reservations expire on their own)."""
        while self._state.running or self._state.reserved:
            self._changed = trio.Event()
            await self._changed.wait()

    # -- connection ---------------------------------------------------------------

    async def _serve_connection(self, task_status: trio.TaskStatus[str]) -> None:
        """The connection manager; marks the connection ended for good when it ends."""
        try:
            await self._connection_manager(task_status)
        finally:
            self._connection_ended.set()

    async def _connection_manager(self, task_status: trio.TaskStatus[str]) -> None:
        policy = self._options.reconnect
        failures = 0
        started = False
        last: BaseException | None = None
        while not self._jobs_closed.is_set():
            registered_at: float | None = None

            def on_registered(worker_id: str) -> None:
                nonlocal started, registered_at
                registered_at = trio.current_time()
                self._observe(lambda o: o.registered(worker_id))
                if not started:
                    started = True
                    task_status.started(worker_id)

            try:
                try:
                    await self._session(on_registered)
                except trio_websocket.ConnectionRejected as exc:
                    raise self._rejection_error(exc) from None
                return  # closed gracefully after draining
            except AuthenticationError:
                raise
            except (_ConnectionLost, ConnectError, ProtocolError) as exc:
                reason, last = str(exc), exc
            except (
                trio_websocket.HandshakeError,
                trio_websocket.ConnectionClosed,
                trio.BrokenResourceError,
                OSError,
            ) as exc:
                reason, last = f"{type(exc).__name__}: {exc}", exc
            self._resilience.connection_lost(reason)  # recovery: TERMINATE drains
            stable = registered_at is not None and (
                trio.current_time() - registered_at >= policy.stable_after
            )
            if stable:
                failures = 0
            failures += 1
            if policy.max_attempts is not None and failures >= policy.max_attempts:
                raise RecoveryFailedError(
                    f"giving up after {failures} failed connection attempt(s) to"
                    f" {self._options.agent_ws_url}: {reason}"
                ) from last
            delay = policy.delay(failures, self._rng)
            logger.warning(
                "connection to the agent service lost (%s); retry in %.2f s", reason, delay
            )
            with trio.move_on_after(delay):
                await self._jobs_closed.wait()  # serving ended: no point reconnecting
            self._reconnects += 1

    def _rejection_error(self, exc: trio_websocket.ConnectionRejected) -> LKAgentError:
        """Map a refused upgrade: 401/403 are fatal, anything else is retried."""
        url = self._options.agent_ws_url
        body = (exc.body or b"").decode("utf-8", "replace").strip()
        detail = f" ({body})" if body else ""
        if exc.status_code in (401, 403):
            return AuthenticationError(
                f"the server at {url} refused the API key {self._options.api_key!r}:"
                f" HTTP {exc.status_code}{detail}",
                status_code=exc.status_code,
                body=body,
            )
        return ConnectError(
            f"the server at {url} refused the upgrade: HTTP {exc.status_code}{detail}"
        )

    def _auth_headers(self) -> list[tuple[bytes, bytes]]:
        opts = self._options
        token = agent_token(opts.api_key, opts.api_secret)
        return [(b"authorization", b"Bearer " + token.encode())]

    async def _session(self, on_registered: Callable[[str], None]) -> None:
        """One connection's life: connect, register, serve; raises when it is lost."""
        try:
            await self._session_inner(on_registered)
        except BaseExceptionGroup as group:
            _raise_first(group)

    async def _session_inner(self, on_registered: Callable[[str], None]) -> None:
        # trio-websocket's reader task lives in a shielded nursery that is closed
        # last: when serve() is cancelled, the close handshake with the server
        # (after the final job statuses) can still complete.
        async with trio.open_nursery() as guard:
            io_scope: trio.CancelScope
            io_nursery, io_scope = await guard.start(_shielded_nursery)
            try:
                await self._session_body(io_nursery, on_registered)
            finally:
                io_scope.cancel()

    async def _session_body(
        self, io_nursery: trio.Nursery, on_registered: Callable[[str], None]
    ) -> None:
        opts = self._options
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(opts.connect_timeout):
                    ws = await open_worker_socket(
                        io_nursery,
                        opts.agent_ws_url,
                        extra_headers=self._auth_headers(),
                        max_message_size=opts.max_message_size,
                        send_timeout=opts.send_timeout,
                        close_timeout=opts.close_timeout,
                    )
            except trio.TooSlowError:
                raise ConnectError(
                    f"connecting to {opts.agent_ws_url} timed out after {opts.connect_timeout} s"
                ) from None
            try:
                worker_id = await self._register(ws)
                self._worker_id = worker_id
                self._ws = ws
                self._state.resync()
                self._answers.clear()
                self._last_status = None
                nursery.start_soon(self._writer, ws)
                nursery.start_soon(self._pinger, ws)
                nursery.start_soon(self._expiry)
                nursery.start_soon(self._load_sampler)
                on_registered(worker_id)
                logger.info("registered as %s at %s", worker_id, opts.agent_ws_url)
                with trio.CancelScope() as reader_scope:
                    nursery.start_soon(_cancel_when, self._jobs_closed, reader_scope)
                    await self._reader(ws, nursery)
                # Serving is over (jobs closed): report the last statuses, close cleanly.
                await self._flush(ws)
                # The close (1000, bounded) happens below, once the writer, pinger and
                # sampler are stopped: a send racing the close would end in an error.
                nursery.cancel_scope.cancel()
            finally:
                self._ws = None
                self._answers.clear()
                self._outbox_moved()
                for job_id in self._state.connection_lost():
                    logger.debug("reservation for job %s released: connection lost", job_id)
                    self._released(job_id, "connection lost")
                self._notify()
                # An effective deadline of -inf means we are being cancelled.
                cancelled = trio.current_effective_deadline() == -math.inf
                with trio.CancelScope(shield=True):
                    await self._close_on_exit(ws, cancelled=cancelled)

    async def _close_on_exit(self, ws: WorkerSocket, *, cancelled: bool) -> None:
        """Shielded. When cancelled, first report the jobs' ends; then close (bounded)."""
        if not ws.closed and cancelled:
            # Jobs end, or are reported abandoned by the watchdog at shutdown_grace.
            with trio.move_on_after(self._options.shutdown_grace + 0.5):
                await self._wait_jobs_reported()
                try:
                    await self._flush(ws)
                except SocketLost:
                    pass
        await ws.aclose(1000 if cancelled else 1001, "worker stopped" if cancelled else "")

    async def _wait_jobs_reported(self) -> None:
        """Until every job has its final status queued (ended, or abandoned)."""
        while self._state.running and not self._jobs_closed.is_set():
            self._changed = trio.Event()
            await self._changed.wait()

    async def _register(self, ws: WorkerSocket) -> str:
        opts = self._options
        await self._send(
            ws,
            agent_pb.WorkerMessage(
                register=agent_pb.RegisterWorkerRequest(
                    type=f"JT_{opts.job_type.name}",
                    agent_name=opts.agent_name,
                    version=opts.version,
                    namespace=opts.namespace,
                    ping_interval=math.ceil(opts.ping_interval),
                    allowed_permissions=opts.permissions.to_proto(),
                )
            ),
        )
        with trio.move_on_after(opts.register_timeout):
            while True:
                message = await self._receive(ws)
                if message is None:
                    continue
                if message.WhichOneof("message") == "register":
                    worker_id: str = message.register.worker_id
                    if not worker_id:
                        raise ProtocolError("register response without a worker id")
                    return worker_id
                logger.warning(
                    "ignoring %s message received before registration", message_kind(message)
                )
        raise _ConnectionLost(
            f"the server did not confirm registration within {opts.register_timeout} s"
        )

    async def _receive(self, ws: WorkerSocket) -> agent_pb.ServerMessage | None:
        """Next server message; None for a frame that could not be decoded (logged)."""
        data = await ws.get_message()  # SocketLost when closed
        self._resilience.received(len(data))
        try:
            message, _fmt = decode(data, agent_pb.ServerMessage)
        except ProtocolError as exc:
            self._peer_log.log(
                "bad frame", logging.WARNING, "ignoring a frame from the server: %s", exc
            )
            return None
        if self._options.websocket_debug:
            ws_logger.debug("<- %s", _redacted(message))
        return message

    async def _send(self, ws: WorkerSocket, message: Any) -> None:
        """Send within ``send_timeout``; raises SocketLost (reconnect) otherwise."""
        if self._options.websocket_debug:
            ws_logger.debug("-> %s", _redacted(message))
        data = encode(message, self._options.wire_format)
        self._resilience.sent(len(data))
        await ws.send(data)

    # -- the reader: dispatching server messages ---------------------------------

    async def _reader(self, ws: WorkerSocket, nursery: trio.Nursery) -> None:
        """Dispatch server messages. Never sends: answers go to the writer's outbox."""
        timeout = self._options.ping_timeout
        while True:
            with trio.move_on_after(timeout) as idle:
                message = await self._receive(ws)
            if idle.cancelled_caught:
                raise _ConnectionLost(f"no message from the server for {timeout:.0f} s")
            if message is None:
                continue
            kind = message.WhichOneof("message")
            if kind == "availability":
                self._on_availability(nursery, message.availability)
            elif kind == "assignment":
                self._on_assignment(message.assignment)
            elif kind == "termination":
                self._on_termination(message.termination.job_id)
            elif kind == "pong":
                sent = self._pings.pop(message.pong.last_timestamp, None)
                if sent is not None:
                    self._ping_rtt = trio.current_time() - sent
            elif kind == "register":
                self._peer_log.log(
                    "unexpected message", logging.WARNING, "ignoring a second register response"
                )
            else:
                self._peer_log.log(
                    "unexpected message", logging.INFO, "ignoring server message %r", kind
                )

    def _on_availability(
        self, nursery: trio.Nursery, request: agent_pb.AvailabilityRequest
    ) -> None:
        job = request.job
        if not job.id:
            # A job without an id cannot be assigned, reported or terminated.
            self._declined += 1
            self._peer_log.log(
                "invalid request",
                logging.WARNING,
                "declining an availability request without a job id",
            )
            self._queue_availability(job.id, None)
            return
        decline = self._state.request(job.id, trio.current_time())
        if decline is not Decline.DUPLICATE:
            self._observe(lambda o: o.job_requested(job))
        refusal = None if decline not in (None, Decline.FULL) else self._resilience.refusal(job)
        if refusal is not None:  # resilience: a resource limit, the load calculator
            if decline is None:
                self._state.rejected(job.id)
            self._declined += 1
            self._observe(lambda o: o.job_answered(job.id, False, refusal))
            self._peer_log.log(
                "decline: refusal", logging.INFO, "declining job %s: %s", job.id, refusal
            )
            self._queue_availability(job.id, None)
            self._notify()
            return
        if decline is not None:
            self._declined += 1
            if decline is not Decline.DUPLICATE:
                reason = decline.value
                self._observe(lambda o: o.job_answered(job.id, False, reason))
            self._peer_log.log(
                f"decline: {decline.value}",
                logging.INFO,
                "declining job %s: %s",
                job.id,
                decline.value,
            )
            # A duplicate is answered too (declined): the server waits for an answer
            # per request; the job's own slot (if any) is left as it is.
            self._queue_availability(job.id, None)
            return
        self._wake_expiry.set()
        if self._request_handler is None:
            self._answer_nowait(job, AcceptInfo(identity=f"agent-{job.id}"))
        else:
            nursery.start_soon(self._handle_request, job)
        self._notify()

    async def _handle_request(self, job: agent_pb.Job) -> None:
        assert self._request_handler is not None
        bind_job(job.id, job.room.name, self._worker_id or "")
        request = JobRequest(job, self)
        scope = trio.CancelScope(deadline=trio.current_time() + self._options.request_timeout)
        self._handler_scopes[job.id] = scope
        try:
            with scope:
                await self._request_handler(request)
        except Exception:
            logger.exception("request handler failed for job %s", job.id)
        finally:
            del self._handler_scopes[job.id]
        if not request.answered:
            why = "it did not answer"
            if scope.cancelled_caught:
                why = (
                    "the worker is draining"
                    if self._state.draining
                    else f"it did not answer within {self._options.request_timeout} s"
                )
            logger.warning("request handler for job %s: %s; rejecting", job.id, why)
            request._answered = True
            with contextlib.suppress(WorkerNotConnectedError):
                self._answer_nowait(job, None)

    async def _answer(
        self, job: agent_pb.Job, accept: AcceptInfo | None, *, terminate: bool = False
    ) -> None:
        """Answer a reserved job's request (from JobRequest): queued for the writer."""
        self._answer_nowait(job, accept, terminate=terminate)
        await trio.lowlevel.checkpoint()

    def _answer_nowait(
        self, job: agent_pb.Job, accept: AcceptInfo | None, *, terminate: bool = False
    ) -> None:
        """Queue the AvailabilityResponse for a reserved job; the writer sends it."""
        state = self._state
        if accept is not None:
            try:
                state.accepted(job.id, trio.current_time())
            except InvalidTransition:
                # Released meanwhile (draining, connection lost): decline instead.
                accept = None
            else:
                self._wake_expiry.set()
        if accept is None:
            try:
                state.rejected(job.id)
            except InvalidTransition:
                pass
            self._declined += 1
            self._notify()
        self._observe(
            lambda o: o.job_answered(job.id, accept is not None, "" if accept else "rejected")
        )
        if self._ws is None:
            # The server forgot the request with the connection: nothing to send.
            raise WorkerNotConnectedError(
                f"cannot answer job {job.id}: the connection it was offered on is gone"
            )
        if accept is not None:
            self._accepted[job.id] = accept
        self._queue_availability(job.id, accept, terminate=terminate)

    def _queue_availability(
        self, job_id: str, accept: AcceptInfo | None, *, terminate: bool = False
    ) -> None:
        """Queue an answer for the writer, ahead of any status update (wire order)."""
        response = agent_pb.AvailabilityResponse(job_id=job_id, available=accept is not None)
        if accept is not None:
            response.participant_identity = accept.identity
            response.participant_name = accept.name
            response.participant_metadata = accept.metadata
            response.participant_attributes.update(accept.attributes)
        elif terminate:
            response.terminate = True
        self._answers.append(response)
        self._wake_writer.set()

    def _on_assignment(self, assignment: agent_pb.JobAssignment) -> None:
        job = assignment.job
        if not job.id:
            self._peer_log.log(
                "invalid assignment", logging.WARNING, "ignoring an assignment without a job id"
            )
            return
        try:
            self._state.assign(job.id)
        except InvalidTransition as exc:
            self._peer_log.log("invalid assignment", logging.WARNING, "ignoring %s", exc)
            return
        self._observe(lambda o: o.job_assigned(job))
        accept = self._accepted.pop(job.id, None) or AcceptInfo(identity=f"agent-{job.id}")
        ctx = JobContext(
            job=job,
            url=assignment.url or self._options.url,
            token=assignment.token,
            worker_id=self._worker_id or "",
            accept=accept,
        )
        ctx._proc = self._proc
        timeout = accept.timeout if accept.timeout is not None else self._options.job_timeout
        if timeout is not None:  # the job's deadline: _run_job reports it as JobTimeoutError
            ctx.cancel_scope.deadline = trio.current_time() + timeout
            ctx._timeout = timeout
        self._jobs[job.id] = ctx
        self._job_rooms[job.id] = job.room.name
        if self._cancel_new_jobs:
            ctx.shutdown("worker drain timeout")
            self._arm_watchdog(job.id)
        self._started += 1
        self._resilience.job_assigned()
        self._jobs_nursery.start_soon(self._run_job, ctx, name=f"job {job.id}")
        self._notify()

    def _on_termination(self, job_id: str) -> None:
        try:
            running = self._state.terminate(job_id)
        except InvalidTransition as exc:
            # A job that has just ended is normal: the server saw its agent leave the
            # room before our final status arrived (the official worker ignores it too).
            if self._state.has_ended(job_id):
                logger.debug("ignoring %s", exc)
            else:
                self._peer_log.log("invalid termination", logging.WARNING, "ignoring %s", exc)
            return
        if running:
            logger.info("job %s terminated by the server", job_id)
            self._jobs[job_id].shutdown("terminated by the server")
            self._arm_watchdog(job_id)
        else:
            self._accepted.pop(job_id, None)
            self._released(job_id, "terminated before assignment")
            self._notify()

    # -- jobs -----------------------------------------------------------------------

    async def _run_job(self, ctx: JobContext) -> None:
        """Run one job to its single final status, then leave its room.

        The steps, from the outside in:

        - the *rooms* nursery holds the rooms ``ctx.connect`` joins, outside the
          job's cancel scope, so they are left only after the final status is on
          the wire (:meth:`_report_final`): the server fails a running job whose
          agent leaves the room first;
        - ``ctx.cancel_scope`` (termination, ``ctx.shutdown()``, drain, the job
          deadline) around the recovery policy's ``run_entrypoint``, which may
          run the agent again in place (retries);
        - ``run_agent`` runs the handler object's hooks or the plain entrypoint,
          in this task or, with the process executor, in a job process (the
          pool's ``run`` is ``self._job_runner``; the child runs the same
          ``run_agent``).

        The final status is recorded once by :meth:`_finish`, unless the
        watchdog already reported the job failed for ignoring cancellation.
        New job-runner steps belong inside the *rooms* nursery.
        """
        job_id = ctx.job_id
        outcome, error = Outcome.CANCELLED, ""
        bind_job(job_id, ctx.room_name, ctx.worker_id)
        self._observe(lambda o: o.job_started(ctx))
        grace = self._options.shutdown_grace

        async def body() -> None:
            from .handlers._runner import run_agent

            agent = functools.partial(run_agent, default=self._job_runner, grace=grace)
            await self._resilience.run_entrypoint(agent, ctx)

        try:
            async with trio.open_nursery() as rooms:
                ctx._rooms = rooms
                try:
                    outcome, error = await run_job_body(ctx, body)
                    if outcome is Outcome.CANCELLED and ctx._timed_out():
                        timed_out = JobTimeoutError(f"job timed out after {ctx._timeout:g} s")
                        outcome, error = Outcome.FAILED, str(timed_out)
                        ctx._shutdown_reason = ctx._shutdown_reason or error
                        logger.error("job %s failed: %s", job_id, error)
                    await ctx._run_shutdown_callbacks(grace)
                finally:
                    del self._jobs[job_id]
                    del self._job_rooms[job_id]
                    self._room_events_dropped += ctx._events_dropped
                    update = self._finish(job_id, outcome, error)
                    self._notify()
                    if update is not None:
                        await self._report_final(update)
                    ctx._leave()
        finally:
            self._observe(lambda o: o.job_ended(ctx, outcome.value, error))

    async def _report_final(self, update: JobUpdate) -> None:
        """Wait until the job's final *update* is sent, before its room is left.

        Shielded (the job may be ending by cancellation) and bounded by
        ``shutdown_grace``. Returns at once when the socket is down (the update
        stays queued and goes out after the next registration; the room is
        still left now) or when ``serve`` itself is being cancelled (the session
        sends it while closing the socket, after the jobs are gone).
        """
        if trio.current_effective_deadline() == -math.inf:
            return  # serve() is being cancelled: the writer is going away too
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self._options.shutdown_grace
            while self._ws is not None and self._state.is_pending(update):
                progress = self._outbox_progress
                await progress.wait()
        if scope.cancelled_caught:
            logger.warning(
                "job %s: final status not sent within %.1f s; leaving the room anyway",
                update.job_id,
                self._options.shutdown_grace,
            )

    def _finish(self, job_id: str, outcome: Outcome, error: str) -> JobUpdate | None:
        """Record a job's end (its final status) unless the watchdog already did (None)."""
        if job_id in self._abandoned:
            self._abandoned.discard(job_id)
            logger.warning("job %s, reported failed for ignoring cancellation, ended", job_id)
            return None
        return self._record_final(job_id, outcome, error)

    def _record_final(self, job_id: str, outcome: Outcome, error: str) -> JobUpdate:
        update = self._state.finish(job_id, outcome, error)
        if outcome is Outcome.FAILED:
            self._failed += 1
        else:
            self._succeeded += 1
        return update

    # -- jobs that ignore cancellation --------------------------------------------------
    #
    # A job that catches trio.Cancelled without re-raising cannot be stopped: Trio
    # has no way to kill or abandon a task. After shutdown_grace the watchdog
    # reports such a job JS_FAILED "job ignored cancellation", frees its slot, logs
    # where it is stuck and makes the worker unhealthy, so that the server, drain
    # and shutdown all go on on schedule. The task itself keeps running and holds
    # serve()'s job nursery open until it ends (docs/reliability.md).

    def _arm_watchdog(self, job_id: str) -> None:
        """*job_id* was asked to stop: it must end within ``shutdown_grace``."""
        if self._process_pool is not None:
            return  # per-job processes: the pool kills a process that does not stop
        if job_id not in self._cancel_deadlines:
            deadline = trio.current_time() + self._options.shutdown_grace
            self._cancel_deadlines[job_id] = deadline
            self._cleanup_caps[job_id] = deadline + SDK_CLEANUP_ALLOWANCE
            self._wake_watchdog.set()

    async def _watchdog(self, scope: trio.CancelScope) -> None:
        with scope:
            try:
                while True:
                    await self._watch_once()
            except trio.Cancelled:
                if not scope.cancel_called:
                    # serve() is cancelled: every job is being cancelled now.
                    with trio.CancelScope(shield=True):
                        for job_id in list(self._jobs):
                            self._arm_watchdog(job_id)
                        while any(job_id in self._jobs for job_id in self._cancel_deadlines):
                            await self._watch_once()
                raise

    async def _watch_once(self) -> None:
        deadline = min(self._cancel_deadlines.values(), default=math.inf)
        with trio.move_on_at(deadline):
            await self._wake_watchdog.wait()
        self._wake_watchdog = trio.Event()
        now = trio.current_time()
        for job_id, deadline in list(self._cancel_deadlines.items()):
            if job_id not in self._jobs or job_id in self._abandoned:
                del self._cancel_deadlines[job_id]
                self._cleanup_caps.pop(job_id, None)
            elif deadline > now:
                pass
            elif in_sdk_cleanup(job_id) and now < self._cleanup_caps[job_id]:
                # The job is in the SDK's own shielded, bounded cleanup (unpublish,
                # stream closes), not swallowing Cancelled: look again shortly.
                self._cancel_deadlines[job_id] = min(now + 0.25, self._cleanup_caps[job_id])
            else:
                del self._cancel_deadlines[job_id]
                del self._cleanup_caps[job_id]
                self._abandon(job_id)

    def _abandon(self, job_id: str) -> None:
        self._abandoned.add(job_id)
        logger.error(
            "job %s ignored cancellation for %.1f s (shutdown_grace): reported failed;"
            " its task is still running, at %s. Code that catches trio.Cancelled must"
            " re-raise it.",
            job_id,
            self._options.shutdown_grace,
            self._job_location(job_id),
        )
        self._record_final(job_id, Outcome.FAILED, "job ignored cancellation")
        self._notify()

    def _job_location(self, job_id: str) -> str:
        """Where the job's task is suspended (innermost frame), for the log."""
        for task in self._jobs_nursery.child_tasks:
            if task.name == f"job {job_id}":
                where = "?"
                for frame, lineno in task.iter_await_frames():
                    path = frame.f_code.co_filename
                    if f"{os.sep}trio{os.sep}" not in path:  # the innermost frame not in Trio
                        where = f"{path}:{lineno} in {frame.f_code.co_name}"
                return where
        return "?"

    # -- observers --------------------------------------------------------------------

    def add_observer(self, observer: WorkerObserver) -> None:
        """Report job lifecycle points to *observer* too (metrics, tracing).

        *observer* is a :class:`~trio_lkagent.WorkerObserver` (subclass it and
        override the points you need); its methods are called synchronously
        and must not block. An observer that raises is logged and ignored.
        """
        self._observers.append(observer)

    def remove_observer(self, observer: WorkerObserver) -> None:
        """Stop reporting to *observer* (no-op if it was not added)."""
        if observer in self._observers:
            self._observers.remove(observer)

    def _observe(self, call: Callable[[WorkerObserver], None]) -> None:
        for observer in self._observers:
            try:
                call(observer)
            except Exception:
                logger.exception("worker observer %r failed", observer)

    def _released(self, job_id: str, reason: str) -> None:
        self._observe(lambda o: o.job_released(job_id, reason))

    def with_options(self, **changes: Any) -> Worker:
        """A copy of this worker with some options replaced (for tests and tools).

        Example: ``worker.with_options(url=server.url, api_key="devkey",
        api_secret="secret", max_jobs=1)``. The copy has the same entrypoint and
        handlers and a fresh state; this worker is left as it was.

        Args:
            **changes: :class:`WorkerOptions` fields and their new values.

        Returns:
            The new worker (not serving).

        Raises:
            ConfigurationError: a value is invalid.
            TypeError: no such option.
        """
        options = attrs.evolve(self._options, **changes)
        clone = copy.copy(self)
        clone._observers = list(self._observers)
        clone._serving = False
        clone._set_options(options)
        return clone

    def _set_options(self, options: WorkerOptions) -> None:
        """Replace the options of a worker that is not serving (the CLI's overrides)."""
        if self._serving:
            raise RuntimeError("cannot change the options of a serving worker")
        self._options = options
        self._reset()

    # -- background tasks of a session ---------------------------------------------

    def _notify(self) -> None:
        """Job state changed: wake the writer (something to send) and drain waiters."""
        self._wake_writer.set()
        self._changed.set()
        self._wake_watchdog.set()

    async def _writer(self, ws: WorkerSocket) -> None:
        while True:
            await self._flush(ws)
            await self._wake_writer.wait()
            self._wake_writer = trio.Event()

    async def _flush(self, ws: WorkerSocket) -> None:
        """Send queued answers, then job updates in order, then the worker status."""
        state = self._state
        async with self._flush_lock:
            while self._answers:
                answer = self._answers[0]
                await self._send(ws, agent_pb.WorkerMessage(availability=answer))
                if self._answers and self._answers[0] is answer:
                    self._answers.popleft()
            while (update := state.peek_update()) is not None:
                await self._send(ws, agent_pb.WorkerMessage(update_job=update.to_proto()))
                state.pop_update()
                self._outbox_moved()
            await self._send_status(ws)

    def _outbox_moved(self) -> None:
        """An update was sent, or the socket went away: wake ``_report_final``."""
        self._outbox_progress.set()
        self._outbox_progress = trio.Event()

    async def _send_status(self, ws: WorkerSocket, *, force: bool = False) -> None:
        state = self._state
        current = (state.worker_status, round(state.load, 4), state.running + state.reserved)
        if current == self._last_status and not force:
            return
        self._last_status = current
        await self._send(
            ws,
            agent_pb.WorkerMessage(
                update_worker=agent_pb.UpdateWorkerStatus(
                    status=current[0], load=current[1], job_count=state.running
                )
            ),
        )

    async def _pinger(self, ws: WorkerSocket) -> None:
        while True:
            timestamp = int(time.time() * 1000)
            self._pings = {timestamp: trio.current_time()}
            await self._send(
                ws, agent_pb.WorkerMessage(ping=agent_pb.WorkerPing(timestamp=timestamp))
            )
            await trio.sleep(self._options.ping_interval)

    async def _expiry(self) -> None:
        state = self._state
        while True:
            with trio.move_on_at(state.next_deadline()):
                await self._wake_expiry.wait()
                self._wake_expiry = trio.Event()
            expired = state.expire(trio.current_time())
            for job_id in expired:
                self._accepted.pop(job_id, None)
                self._released(job_id, "expired")
                logger.warning(
                    "job %s: not answered or assigned in time (request_timeout %.1f s,"
                    " assignment_timeout %.1f s): slot released",
                    job_id,
                    self._options.request_timeout,
                    self._options.assignment_timeout,
                )
            if expired:
                self._notify()

    async def _load_sampler(self) -> None:
        opts = self._options
        while True:
            self._resilience.update_load()  # load_fn / load_calculator, load history
            self._last_status = None  # periodic report even when unchanged
            self._notify()
            await trio.sleep(opts.load_interval)


async def run_job_body(
    ctx: JobContext, body: Callable[[], Awaitable[object]]
) -> tuple[Outcome, str]:
    """Await *body* inside ``ctx.cancel_scope`` and say how it ended.

    Returns ``(RETURNED, "")``, ``(FAILED, description)`` for an ``Exception``
    (logged with its traceback), or ``(CANCELLED, "")`` when the job's own
    scope was cancelled. Anything else (an outer cancellation alone,
    ``KeyboardInterrupt``) propagates. Shared by the worker's job runner and
    the job process (``processes/_child.py``).
    """
    outcome, error = Outcome.CANCELLED, ""
    with ctx.cancel_scope:
        try:
            await body()
            outcome = Outcome.RETURNED
        except BaseException as exc:
            failure = _without_cancelled(exc)
            if failure is None or not isinstance(failure, Exception):
                raise
            # Cancellation is level-triggered: an outer one that arrived with
            # this failure is raised again at the next checkpoint.
            outcome, error = Outcome.FAILED, _describe(failure)
            logger.error(  # noqa: TRY400 - the traceback is the failure's, not exc's
                "job %s failed: %s", ctx.job_id, error, exc_info=failure
            )
    return outcome, error


async def _shielded_nursery(
    task_status: trio.TaskStatus[tuple[trio.Nursery, trio.CancelScope]],
) -> None:
    """A nursery outer cancellation does not reach; ends when its scope is cancelled."""
    with trio.CancelScope(shield=True) as scope:
        async with trio.open_nursery() as nursery:
            task_status.started((nursery, scope))
            await trio.sleep_forever()


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def _raise_first(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Raise the first leaf of *group* that is not a cancellation (else *group*).

    A session's tasks fail together: the first real error is the cause, the
    rest (and the Cancelled of its siblings) are consequences.
    """
    _, rest = group.split(trio.Cancelled)
    if rest is None:
        raise group
    leaves = _leaves(rest)
    for leaf in leaves:
        if isinstance(leaf, AuthenticationError):
            raise leaf from None
    raise leaves[0] from None


def _without_cancelled(exc: BaseException) -> BaseException | None:
    """*exc* with every trio.Cancelled removed (None if nothing else is left)."""
    if isinstance(exc, trio.Cancelled):
        return None
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)
        if rest is None:
            return None
        leaves = list(_leaves(rest))
        return leaves[0] if len(leaves) == 1 else rest
    return exc


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _raise_collapsed(group: BaseExceptionGroup[BaseException]) -> NoReturn:
    """Re-raise our own error plainly when it is the only non-cancellation in *group*."""
    _, rest = group.split(trio.Cancelled)
    if rest is not None:
        leaves = _leaves(rest)
        if len(leaves) == 1 and isinstance(leaves[0], LKAgentError):
            raise leaves[0] from leaves[0].__cause__  # keep its cause (RecoveryFailedError)
    raise group


def _redacted(message: Any) -> str:
    """One-line text of a protocol message with tokens replaced."""
    text = str(message).replace("\n", " ")
    if message.WhichOneof("message") == "assignment" and message.assignment.token:
        text = text.replace(message.assignment.token, "<redacted>")
    return text
