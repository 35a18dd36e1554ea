"""The agent service: worker connections, the worker pool, job requests, terminations.

This is Go's ``pkg/service/agentservice.go`` (``AgentHandler``) together with
``pkg/agent/worker.go`` (``Worker``) and the job-launching half of
``pkg/agent/client.go``. The rules themselves (selection, grouping, token, state
transitions) live in :mod:`._dispatch`; this module does the I/O and the tasks.

Task layout:

- each connection runs in the task hypercorn gave its ASGI call: handshake, then
  a read loop that handles every worker message inline;
- each job request (availability -> answer -> assignment, retried on other
  workers) is one task in the dev server's nursery, bounded by
  ``job_request_timeout`` like Go's psrpc deadline;
- sends to a worker are serialized by a per-connection lock, in the connection's
  current wire format.

Where the dev server keeps more *records* than Go (it never sends differently):

- a job that finds no worker is recorded as ``JS_FAILED`` with reason
  ``JSR_NO_CAPACITY`` (Go logs and forgets it);
- after a server-side termination the job stays open until the worker reports its
  final status, which is recorded (Go records SUCCESS -- FAILED for "agent worker
  left the room" -- at once and ignores the worker's later report); if the worker
  disconnects first, Go's outcome is recorded;
- a job whose worker disconnected keeps its state, as in Go, and loses its worker:
  it can no longer be terminated, and no other connection may report its status.
  Go's ``Worker.UpdateJobStatus`` only takes updates for the connection's own
  ``runningJobs`` ("received job update for unknown job" otherwise), so a worker
  that reconnects cannot finish a job it started on its previous connection, and
  another worker of the same group cannot "hijack" it. Such reports are ignored
  as in Go and kept in ``ServerJob.ignored_updates`` for inspection.

Where the dev server keeps fewer records than it would by default: ended jobs and
disconnected workers are kept up to ``retain_ended`` (count) and
``retain_ended_for`` (age) each, and ``SimulateJobRequest`` is rate-limited per
worker (``simulate_job_rate``), so a long run or a flood cannot grow memory
without bound.
"""

from __future__ import annotations

import collections
import logging
import math
import random
import time
from collections.abc import Iterator
from typing import Protocol

import attrs
import jwt
import trio
from livekit.protocol import agent as agent_pb
from livekit.protocol import models as models_pb

from .._exceptions import ProtocolError
from .._logratelimit import LogLimiter
from .._protocol import WireFormat, decode, encode, message_kind
from . import _dispatch as rules
from ._auth import Grants
from ._config import DevServerConfig
from ._explain import explain_no_worker, explain_rejection
from ._ids import AGENT_JOB_PREFIX, AGENT_WORKER_PREFIX, new_guid
from ._state import Changes, Counters, Faults
from ._transport import WebSocketTransport

__all__ = [
    "AgentService",
    "JobListener",
    "ServerJob",
    "ServerWorker",
    "Termination",
]

logger = logging.getLogger("trio_lkagent.devserver")

#: WebSocket close codes the dev server uses for worker errors (Go drops the socket).
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_GOING_AWAY = 1001
#: Largest number of received messages a ServerWorker keeps for inspection.
RECEIVED_LOG_SIZE = 1000
#: Bound on sending one message while shielded (Go's close write timeout).
_SHIELDED_SEND_TIMEOUT = 5.0


def _now_ns() -> int:
    return time.time_ns()


class _Violation(Exception):
    """The worker broke the protocol: close its connection with *code*."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@attrs.frozen
class Termination:
    """A server-side end of a job: why, and when (``trio.current_time()``)."""

    reason: rules.TerminateReason
    state_reason: agent_pb.JobStateReason
    at: float


class ServerJob:
    """A job as the dev server tracks it.

    Attributes:
        job: The ``Job`` proto; ``job.state`` is the server's view (status,
            error, worker_id, participant_identity, started/ended/updated_at, reason).
        status_history: ``JS_PENDING``, then each status the worker reported
            (``UpdateJobStatus``) and each end the server decided (no worker took
            the job, ``terminate`` in the availability answer, termination
            followed by a disconnect); a repeated status appears once. Unlike
            ``job.state.status``, which is ``JS_RUNNING`` from the moment the
            assignment is sent (as in Go), ``JS_RUNNING`` appears here only once
            the worker says the job runs.
        attempted_worker_ids: Workers the job was offered to, in order.
        availability_answers: ``(worker_id, AvailabilityResponse)`` received.
        accepted_identity: The participant identity the accepting worker chose.
        token: The room token sent in the ``JobAssignment``.
        updates: ``(worker_id, UpdateJobStatus)`` the server accepted for this job.
        late_updates: ``(worker_id, UpdateJobStatus)`` received after the job had
            ended (a worker's own report of a terminated job): ignored, as in Go.
        termination: Set when the server ended the job.
        launched: Whether the job request succeeded (a worker took it, or asked
            to end it with ``terminate``), as opposed to finding no worker.
        simulated: Created by a worker's ``SimulateJobRequest``.
    """

    def __init__(self, job: agent_pb.Job, *, simulated: bool = False) -> None:
        self.job = job
        if not job.HasField("state"):
            job.state.status = agent_pb.JS_PENDING
            job.state.updated_at = _now_ns()
        self.status_history: list[agent_pb.JobStatus] = [job.state.status]
        self.attempted_worker_ids: list[str] = []
        self.availability_answers: list[tuple[str, agent_pb.AvailabilityResponse]] = []
        self.accepted_identity: str | None = None
        self.token: str | None = None
        self.updates: list[tuple[str, agent_pb.UpdateJobStatus]] = []
        self.late_updates: list[tuple[str, agent_pb.UpdateJobStatus]] = []
        #: Reports from a connection that does not hold the job (ignored, as Go does).
        self.ignored_updates: list[tuple[str, agent_pb.UpdateJobStatus]] = []
        self.termination: Termination | None = None
        self.launched = False
        self.simulated = simulated
        self.launch_done = trio.Event()

    @property
    def id(self) -> str:
        """The job id (``AJ_...``)."""
        return self.job.id

    @property
    def status(self) -> agent_pb.JobStatus:
        """The current status."""
        return self.job.state.status

    @property
    def ended(self) -> bool:
        """Whether the job reached ``JS_SUCCESS`` or ``JS_FAILED``."""
        return rules.job_status_is_ended(self.job.state.status)

    @property
    def worker_id(self) -> str:
        """The worker the job was assigned to ("" before assignment)."""
        return self.job.state.worker_id

    @property
    def room_name(self) -> str:
        """The job's room."""
        return self.job.room.name

    @property
    def dispatch_id(self) -> str:
        """The dispatch that created the job ("" for simulated jobs)."""
        return self.job.dispatch_id

    @property
    def agent_name(self) -> str:
        """The agent name the job asks for."""
        return self.job.agent_name

    def _set_status(
        self, status: agent_pb.JobStatus, *, error: str | None = None, now_ns: int | None = None
    ) -> None:
        now = _now_ns() if now_ns is None else now_ns
        state = self.job.state
        state.status = status
        state.updated_at = now
        if error is not None:
            state.error = error
        if rules.job_status_is_ended(status) and not state.ended_at:
            state.ended_at = now
        self._note_status()

    def _note_status(self) -> None:
        if self.status_history[-1] != self.job.state.status:
            self.status_history.append(self.job.state.status)

    def __repr__(self) -> str:
        status = agent_pb.JobStatus.Name(self.status)
        return f"<ServerJob {self.id} {status} room={self.room_name!r} worker={self.worker_id!r}>"


class _AvailabilitySlot:
    """Where the reader puts a worker's answer for the job request waiting on it."""

    def __init__(self) -> None:
        self.ready = trio.Event()
        self.response: agent_pb.AvailabilityResponse | None = None

    def deliver(self, response: agent_pb.AvailabilityResponse | None) -> None:
        if not self.ready.is_set():
            self.response = response
            self.ready.set()


_UNSET = object()


class _Connection:
    """One accepted ``/agent`` WebSocket (before and after registration)."""

    def __init__(self, transport: WebSocketTransport, grants: Grants, counters: Counters) -> None:
        self.transport = transport
        self.grants = grants
        self.counters = counters
        # Go assigns the worker id at the upgrade (MakeWorkerRegistration).
        self.worker_id = new_guid(AGENT_WORKER_PREFIX)
        try:
            self.protocol = int(transport.query("protocol") or 0)
        except ValueError:
            self.protocol = 0
        self.wire_format = WireFormat.PROTOBUF
        self.send_lock = trio.Lock()
        self.scope = trio.CancelScope()
        self.close_request: object = _UNSET  # None: abort; (code, reason): close frame
        self.done = trio.Event()

    async def send(self, message: agent_pb.ServerMessage) -> bool:
        """Send *message* in the current wire format; False if the socket is gone."""
        async with self.send_lock:
            return await self._send_locked(encode(message, self.wire_format))

    async def send_raw(self, data: bytes | str) -> bool:
        """Send *data* as one frame as it is; False if the socket is gone."""
        async with self.send_lock:
            return await self._send_locked(data)

    async def _send_locked(self, payload: bytes | str) -> bool:
        try:
            await self.transport.send(payload)
        except (trio.ClosedResourceError, trio.BrokenResourceError) as exc:
            logger.debug("error writing to websocket of %s: %r", self.worker_id, exc)
            return False
        self.counters.frames_out += 1
        self.counters.bytes_out += len(payload)
        return True

    def request_close(self, code: int | None, reason: str = "") -> None:
        """Ask the connection's task to end: abrupt when *code* is None."""
        if self.close_request is _UNSET:
            self.close_request = None if code is None else (code, reason)
        self.scope.cancel()

    async def finish(self) -> None:
        """Carry out the requested close (shielded by the caller)."""
        request = self.close_request
        if self.transport.closed or request is _UNSET:
            if not self.transport.closed:
                await self.transport.close(1000, "")
            return
        if request is None:
            if self.transport.abort():
                return
            request = (1011, "connection dropped")
        assert isinstance(request, tuple)
        await self.transport.close(*request)


class ServerWorker:
    """A registered worker connection, as the dev server tracks it.

    A worker that reconnects registers again and gets a new ``ServerWorker`` with a
    new id, as in Go; the old one stays in ``DevServer.workers`` with
    ``connected = False``.

    Attributes:
        worker_id: ``AW_...``, sent in ``RegisterWorkerResponse``.
        register: The ``RegisterWorkerRequest`` it sent.
        permissions: The permissions its agents get (its ``allowed_permissions``,
            or Go's defaults).
        protocol: The ``protocol`` query parameter of its upgrade.
        api_key: The key its token was signed with (its assignment tokens use it).
        status: Last ``WorkerStatus`` (``WS_AVAILABLE`` until told otherwise).
        load: Last reported load.
        job_count: Last reported job count (Go ignores it; kept for tests).
        last_update: The last ``UpdateWorkerStatus``.
        wire_format: The format the server answers in (follows the last frame).
        connected: Whether the connection is open.
        close_code: How the connection ended: the peer's close code, the server's,
            or 1006 without a close frame; None while open.
        close_reason: The reason sent with it.
        pings: ``WorkerPing`` received.
        pongs: ``WorkerPong`` sent.
        running_job_ids: Jobs running on this connection (assigned and not ended).
        job_ids: Every job assigned to this connection, in order.
        received: The last :data:`RECEIVED_LOG_SIZE` messages it sent.
    """

    def __init__(
        self,
        conn: _Connection,
        register: agent_pb.RegisterWorkerRequest,
        jobs: dict[str, ServerJob],
    ) -> None:
        self._conn = conn
        self._jobs = jobs
        self._pending: dict[str, _AvailabilitySlot] = {}
        self.worker_id = conn.worker_id
        self.register = register
        self.key = rules.WorkerKey.of_registration(register)
        self.permissions = rules.effective_permissions(register)
        self.protocol = conn.protocol
        self.api_key = conn.grants.api_key
        self.status: agent_pb.WorkerStatus = agent_pb.WS_AVAILABLE
        self.load = 0.0
        self.job_count = 0
        self.last_update: agent_pb.UpdateWorkerStatus | None = None
        self.connected = True
        self.close_code: int | None = None
        self.close_reason = ""
        self.pings = 0
        self.pongs = 0
        self.running_job_ids: set[str] = set()
        self.job_ids: list[str] = []
        self.received: collections.deque[agent_pb.WorkerMessage] = collections.deque(
            maxlen=RECEIVED_LOG_SIZE
        )
        self.registered_at = trio.current_time()
        #: Wall-clock ns of the disconnection (for record retention), 0 while connected.
        self.disconnected_at = 0
        # SimulateJobRequest token bucket: (tokens, last refill time).
        self._simulate_budget = (0.0, -math.inf)

    @property
    def agent_name(self) -> str:
        """The agent name it registered with ("" = automatic dispatch)."""
        return self.register.agent_name

    @property
    def namespace(self) -> str:
        """Its (deprecated) namespace."""
        return self.register.namespace

    @property
    def job_type(self) -> agent_pb.JobType:
        """The job type it serves."""
        return self.register.type

    @property
    def deployment(self) -> str:
        """Its deployment."""
        return self.register.deployment

    @property
    def wire_format(self) -> WireFormat:
        """The format the server currently answers in."""
        return self._conn.wire_format

    @property
    def jobs(self) -> list[ServerJob]:
        """The jobs assigned to this connection, in order."""
        return [self._jobs[job_id] for job_id in self.job_ids if job_id in self._jobs]

    async def send(self, message: agent_pb.ServerMessage) -> bool:
        """Send *message* in the worker's wire format; False if the socket is gone."""
        return await self._conn.send(message)

    def __repr__(self) -> str:
        state = "connected" if self.connected else f"closed({self.close_code})"
        return f"<ServerWorker {self.worker_id} {self.agent_name!r} {state}>"


class JobListener(Protocol):
    """What the rooms want to hear from the agent service (Go's ``handleNewJobs``)."""

    def job_launched(self, job: ServerJob) -> None:
        """A job request succeeded: a worker runs *job* (or ended it at once)."""


class AgentService:
    """The ``/agent`` endpoint and the worker pool.

    Args:
        config: Server settings.
        nursery: Where job request tasks run (the dev server's).
        server_info: Sent in every ``RegisterWorkerResponse``.
        rng: Drives worker selection; seed it for reproducible tests.
        faults: Fault injection switches, read at each decision.
        changes: Notified on every state change.
        counters: Statistics.
    """

    def __init__(
        self,
        *,
        config: DevServerConfig,
        nursery: trio.Nursery,
        server_info: models_pb.ServerInfo,
        rng: random.Random,
        faults: Faults,
        changes: Changes,
        counters: Counters,
    ) -> None:
        self._config = config
        self._nursery = nursery
        self._server_info = server_info
        self._rng = rng
        self._faults = faults
        self._changes = changes
        self._counters = counters
        #: Explanations of dispatch decisions (no worker, type mismatch, rejection).
        self.notes: collections.deque[str] = collections.deque(maxlen=1000)
        self._keys = {config.api_key: config.api_secret}
        self._listener: JobListener | None = None
        #: Every worker that ever registered, by id.
        self.workers: dict[str, ServerWorker] = {}
        #: Every job, by id, in creation order.
        self.jobs: dict[str, ServerJob] = {}
        self._groups: dict[rules.WorkerKey, list[ServerWorker]] = {}
        self._job_to_worker: dict[str, ServerWorker] = {}
        self._connections: set[_Connection] = set()
        self._closing: tuple[int, str] | None = None
        self._log = LogLimiter(logger, clock=trio.current_time)
        self._prune_calls = 0

    def set_listener(self, listener: JobListener) -> None:
        """Tell *listener* about every launched job."""
        self._listener = listener

    # -- connections -------------------------------------------------------------

    async def serve_connection(self, transport: WebSocketTransport, grants: Grants) -> None:
        """Serve one accepted ``/agent`` WebSocket until it closes.

        Cancellation: the connection is closed (1001) and the worker deregistered.
        """
        conn = _Connection(transport, grants, self._counters)
        self._connections.add(conn)
        if self._closing is not None:
            conn.request_close(*self._closing)
        worker: ServerWorker | None = None
        try:
            with conn.scope:
                try:
                    register = await self._handshake(conn)
                    if register is not None:
                        worker = await self._register(conn, register)
                        await self._read_loop(worker)
                except _Violation as violation:
                    self._counters.protocol_violations += 1
                    logger.warning(
                        "closing agent connection %s (%s): %s",
                        conn.worker_id,
                        transport.client,
                        violation.reason,
                    )
                    conn.request_close(violation.code, violation.reason)
        finally:
            with trio.CancelScope(shield=True):
                if conn.close_request is _UNSET and not transport.closed:
                    conn.close_request = (CLOSE_GOING_AWAY, "server shutting down")
                if worker is not None:
                    self._deregister(worker)
                with trio.move_on_after(1):
                    await conn.finish()
                if worker is not None:
                    worker.close_code = transport.close_code
                    worker.close_reason = transport.close_reason
                self._connections.discard(conn)
                conn.done.set()
                self._changes.notify()

    async def close_all(self, code: int, reason: str) -> None:
        """Close every agent connection with *code* and wait until they are gone.

        Connections accepted afterwards are closed the same way at once.
        """
        self._closing = (code, reason)
        conns = list(self._connections)
        for conn in conns:
            conn.request_close(code, reason)
        for conn in conns:
            await conn.done.wait()

    async def drop(self, worker_id: str, code: int | None, reason: str = "") -> None:
        """Close one worker's connection (abruptly when *code* is None) and wait for it."""
        worker = self.workers[worker_id]
        if not worker.connected:
            return
        worker._conn.request_close(code, reason)
        await worker._conn.done.wait()

    async def send_raw(self, worker_id: str, data: bytes | str) -> bool:
        """Send *data* as one frame to a worker; False if its socket is gone."""
        return await self.workers[worker_id]._conn.send_raw(data)

    def _receive_frame(self, conn: _Connection, data: bytes | str) -> agent_pb.WorkerMessage:
        self._counters.frames_in += 1
        self._counters.bytes_in += len(data)
        # Go switches the answer format before decoding (wsprotocol.go).
        conn.wire_format = WireFormat.JSON if isinstance(data, str) else WireFormat.PROTOBUF
        try:
            message, _ = decode(data, agent_pb.WorkerMessage)
        except ProtocolError as exc:
            self._counters.malformed_frames += 1
            raise _Violation(CLOSE_INVALID_PAYLOAD, str(exc)) from None
        return message

    async def _handshake(self, conn: _Connection) -> agent_pb.RegisterWorkerRequest | None:
        """Wait for a valid ``RegisterWorkerRequest`` (``HandshakeAgentWorker``)."""
        with trio.move_on_after(self._config.register_timeout):
            while True:
                data = await conn.transport.receive()
                if data is None:
                    return None
                message = self._receive_frame(conn, data)
                kind = message_kind(message)
                if kind == "register":
                    error = rules.validate_registration(message.register)
                    if error is not None:
                        raise _Violation(CLOSE_POLICY_VIOLATION, error)
                    if self._faults.withhold_register:
                        logger.info("fault: not answering the registration of %s", conn.worker_id)
                        continue
                    return message.register
                if kind == "ping":
                    await self._pong(conn, None, message.ping)
                    continue
                raise _Violation(CLOSE_POLICY_VIOLATION, _unhandled(kind))
        logger.info("agent connection %s did not register in time", conn.worker_id)
        conn.request_close(None)
        return None

    async def _register(
        self, conn: _Connection, register: agent_pb.RegisterWorkerRequest
    ) -> ServerWorker:
        await conn.send(
            agent_pb.ServerMessage(
                register=agent_pb.RegisterWorkerResponse(
                    worker_id=conn.worker_id, server_info=self._server_info
                )
            )
        )
        worker = ServerWorker(conn, register, self.jobs)
        self.workers[worker.worker_id] = worker
        self._groups.setdefault(worker.key, []).append(worker)
        self._counters.registrations += 1
        logger.info(
            "worker registered: %s agent_name=%r namespace=%r type=%s",
            worker.worker_id,
            worker.agent_name,
            worker.namespace,
            agent_pb.JobType.Name(worker.job_type),
        )
        self._changes.notify()
        return worker

    def _deregister(self, worker: ServerWorker) -> None:
        """``AgentHandler.deregisterWorker`` + ``Worker.Close``."""
        worker.connected = False
        worker.disconnected_at = _now_ns()
        group = self._groups.get(worker.key, [])
        if worker in group:
            group.remove(worker)
            if not group:
                del self._groups[worker.key]
        for slot in list(worker._pending.values()):
            slot.deliver(None)  # ErrWorkerClosed for the waiting job request
        now = _now_ns()
        for job_id in sorted(worker.running_job_ids):
            job = self.jobs[job_id]
            if self._job_to_worker.get(job_id) is worker:
                del self._job_to_worker[job_id]
            if job.termination is not None and not job.ended:
                status, error = rules.termination_outcome(job.termination.reason)
                job._set_status(status, error=error, now_ns=now)
            # Otherwise Go keeps the job's last state; it has no worker any more.
        logger.info("worker deregistered: %s", worker.worker_id)
        self._prune_records()
        self._changes.notify()

    async def _read_loop(self, worker: ServerWorker) -> None:
        conn = worker._conn
        while True:
            data = await conn.transport.receive()
            if data is None:
                return
            message = self._receive_frame(conn, data)
            worker.received.append(message)
            await self._handle(worker, message)

    async def _handle(self, worker: ServerWorker, message: agent_pb.WorkerMessage) -> None:
        """``DispatchWorkerSignal`` on a registered worker."""
        kind = message_kind(message)
        if kind == "availability":
            self._on_availability(worker, message.availability)
        elif kind == "update_job":
            self._on_update_job(worker, message.update_job)
        elif kind == "update_worker":
            self._on_update_worker(worker, message.update_worker)
        elif kind == "ping":
            await self._pong(worker._conn, worker, message.ping)
        elif kind == "simulate_job":
            self._on_simulate_job(worker, message.simulate_job)
        elif kind == "migrate_job":
            logger.debug(
                "migrate_job from %s ignored (not implemented, as in Go)", worker.worker_id
            )
        else:
            # A second register, or a message type this server does not know.
            raise _Violation(CLOSE_POLICY_VIOLATION, _unhandled(kind, registered=True))

    async def _pong(
        self, conn: _Connection, worker: ServerWorker | None, ping: agent_pb.WorkerPing
    ) -> None:
        self._counters.pings += 1
        if worker is not None:
            worker.pings += 1
        if self._faults.withhold_pong:
            self._changes.notify()
            return
        pong = agent_pb.WorkerPong(
            last_timestamp=ping.timestamp, timestamp=time.time_ns() // 1_000_000
        )
        if await conn.send(agent_pb.ServerMessage(pong=pong)):
            self._counters.pongs += 1
            if worker is not None:
                worker.pongs += 1
        self._changes.notify()

    def _on_availability(
        self, worker: ServerWorker, response: agent_pb.AvailabilityResponse
    ) -> None:
        slot = worker._pending.pop(response.job_id, None)
        if slot is None:
            self._counters.ignored_messages += 1
            logger.warning(
                "received availability response for unknown job %s from %s",
                response.job_id,
                worker.worker_id,
            )
            return
        slot.deliver(response)

    def _on_update_worker(self, worker: ServerWorker, update: agent_pb.UpdateWorkerStatus) -> None:
        if update.HasField("status"):
            worker.status = update.status
        worker.load = update.load
        worker.job_count = update.job_count
        worker.last_update = update
        self._changes.notify()

    def _on_update_job(self, worker: ServerWorker, update: agent_pb.UpdateJobStatus) -> None:
        job = self.jobs.get(update.job_id)
        if job is None or job.ended or job.id not in worker.running_job_ids:
            # Go's Worker.UpdateJobStatus: only the connection running the job
            # may report it ("received job update for unknown job").
            self._counters.ignored_messages += 1
            if job is not None:
                (job.late_updates if job.ended else job.ignored_updates).append(
                    (worker.worker_id, update)
                )
                self._changes.notify()
            self._log.log(
                "unknown job update",
                logging.DEBUG,
                "received job update for unknown job %s from %s",
                update.job_id,
                worker.worker_id,
            )
            return
        if rules.apply_job_update(job.job.state, update, _now_ns()):
            worker.running_job_ids.discard(job.id)
            self._job_to_worker.pop(job.id, None)
        job._note_status()
        job.updates.append((worker.worker_id, update))
        self._changes.notify()

    def _on_simulate_job(self, worker: ServerWorker, request: agent_pb.SimulateJobRequest) -> None:
        """``Worker.HandleSimulateJob``: offer a test job to this worker only (rate-limited)."""
        config = self._config
        now = trio.current_time()
        tokens, last = worker._simulate_budget
        tokens = min(
            float(config.simulate_job_burst), tokens + (now - last) * config.simulate_job_rate
        )
        if tokens < 1:
            worker._simulate_budget = (tokens, now)
            self._counters.ignored_messages += 1
            self._log.log(
                "simulate_job rate",
                logging.WARNING,
                "ignoring simulate_job from %s: over %g per second",
                worker.worker_id,
                config.simulate_job_rate,
            )
            return
        worker._simulate_budget = (tokens - 1, now)
        job = agent_pb.Job(
            id=new_guid(AGENT_JOB_PREFIX),
            type=agent_pb.JT_PUBLISHER if request.HasField("participant") else agent_pb.JT_ROOM,
            namespace=worker.namespace,
            agent_name=worker.agent_name,
        )
        job.room.CopyFrom(request.room)
        if request.HasField("participant"):
            job.participant.CopyFrom(request.participant)
        server_job = self._add_job(job, simulated=True)
        self._nursery.start_soon(self._run_simulated_job, worker, server_job)

    async def _run_simulated_job(self, worker: ServerWorker, job: ServerJob) -> None:
        try:
            job.attempted_worker_ids.append(worker.worker_id)
            failure = await self._assign_job(worker, job)
            if failure is not None:
                logger.error("unable to simulate job %s: %s", job.id, failure.value)
                self._fail_launch(job, failure.value)
        finally:
            job.launch_done.set()

    # -- jobs --------------------------------------------------------------------

    def _note(self, note: str) -> None:
        logger.warning("%s", note)
        self.notes.append(note)
        self._changes.notify()

    def registered_keys(self) -> list[rules.WorkerKey]:
        """The groups that have at least one registered, connected worker."""
        return list(self._groups)

    def group(self, key: rules.WorkerKey) -> list[ServerWorker]:
        """The connected workers of one group, in registration order."""
        return list(self._groups.get(key, ()))

    def _add_job(self, job: agent_pb.Job, *, simulated: bool = False) -> ServerJob:
        self._prune_records()
        server_job = ServerJob(job, simulated=simulated)
        self.jobs[job.id] = server_job
        self._changes.notify()
        return server_job

    def _prune_records(self) -> None:
        """Forget the oldest ended jobs and disconnected workers beyond the retention."""
        config = self._config
        limit, age = config.retain_ended, config.retain_ended_for
        if limit is None and age is None:
            return
        # Amortized: one pass per `step` calls, so records exceed the limit by < step.
        self._prune_calls += 1
        if self._prune_calls < max(1, (limit if limit is not None else 1000) // 10):
            return
        self._prune_calls = 0
        cutoff = _now_ns() - int(age * 1e9) if age is not None else None
        ended = [job for job in self.jobs.values() if job.ended]
        drop = ended[: max(0, len(ended) - limit)] if limit is not None else []
        if cutoff is not None:
            drop += [job for job in ended[len(drop) :] if 0 < job.job.state.ended_at < cutoff]
        owners = set()
        for job in drop:
            del self.jobs[job.id]
            owners.add(job.worker_id)
        gone = [w for w in self.workers.values() if not w.connected]
        drop_workers = gone[: max(0, len(gone) - limit)] if limit is not None else []
        if cutoff is not None:
            drop_workers += [w for w in gone[len(drop_workers) :] if 0 < w.disconnected_at < cutoff]
        for worker in drop_workers:
            del self.workers[worker.worker_id]
        for worker_id in owners:
            owner = self.workers.get(worker_id)
            if owner is not None:
                owner.job_ids = [job_id for job_id in owner.job_ids if job_id in self.jobs]

    def launch_jobs(self, request: rules.JobRequest) -> list[ServerJob]:
        """Request one job per namespace for *request* (``agentClient.LaunchJob``).

        Never blocks: each job request runs as a task. A group without any worker
        gets no job at all (in Go the request has no handler and is dropped).

        Returns:
            The jobs created (``JS_PENDING``).
        """
        namespaces = rules.dispatch_namespaces(
            self.registered_keys(), request.agent_name, request.job_type
        )
        if namespaces is None:
            note = explain_no_worker(
                self.registered_keys(), request.agent_name, request.job_type, request.room.name
            )
            if note is not None:
                self._note(note)
            logger.info(
                "not dispatching agent job since no worker is available: agent_name=%r type=%s"
                " room=%r",
                request.agent_name,
                agent_pb.JobType.Name(request.job_type),
                request.room.name,
            )
            return []
        jobs = []
        for namespace in namespaces:
            key = rules.WorkerKey(
                request.agent_name, namespace, request.job_type, request.deployment
            )
            if key not in self._groups:
                logger.debug("no worker serves %s: no job requested", key)
                continue
            job = rules.new_job(request, job_id=new_guid(AGENT_JOB_PREFIX), namespace=namespace)
            server_job = self._add_job(job)
            self._counters.job_requests += 1
            self._nursery.start_soon(self._request_job, server_job)
            jobs.append(server_job)
        if not jobs:
            note = explain_no_worker(
                self.registered_keys(), request.agent_name, request.job_type, request.room.name
            )
            if note is not None:
                self._note(note)
        return jobs

    async def _request_job(self, job: ServerJob) -> None:
        """``AgentHandler.JobRequest``: offer *job* to workers of its group until one takes it."""
        key = rules.WorkerKey.of_job(job.job)
        attempted: set[str] = set()
        failure = ""
        timeout = self._config.job_request_timeout
        try:
            with trio.move_on_after(math.inf if timeout is None else timeout) as deadline:
                while True:
                    worker, why = rules.select_worker_weighted_by_load(
                        self.group(key), attempted, self._rng
                    )
                    if worker is None:
                        failure = why
                        break
                    attempted.add(worker.worker_id)
                    job.attempted_worker_ids.append(worker.worker_id)
                    self._changes.notify()
                    outcome = await self._assign_job(worker, job)
                    if outcome is None:
                        return
                    logger.warning(
                        "failed to assign job %s to worker %s: %s",
                        job.id,
                        worker.worker_id,
                        outcome.value,
                    )
                    if outcome is rules.AssignFailure.NOT_AVAILABLE:
                        self._note(explain_rejection(job.id, worker.worker_id, job.agent_name))
                    if not rules.retry_after(
                        outcome,
                        retry_on_availability_timeout=self._config.retry_on_availability_timeout,
                    ):
                        failure = outcome.value
                        break
            if deadline.cancelled_caught:
                failure = rules.AssignFailure.DEADLINE_EXCEEDED.value
            if not job.launched:
                logger.warning("no worker available to handle job %s: %s", job.id, failure)
                self._fail_launch(job, failure)
        finally:
            job.launch_done.set()

    def _fail_launch(self, job: ServerJob, error: str) -> None:
        self._counters.job_requests_failed += 1
        job.job.state.reason = agent_pb.JSR_NO_CAPACITY
        job._set_status(agent_pb.JS_FAILED, error=error)
        self._changes.notify()

    async def _assign_job(self, worker: ServerWorker, job: ServerJob) -> rules.AssignFailure | None:
        """``Worker.AssignJob``: None once the job runs (or ended on ``terminate``)."""
        if job.id in worker._pending:
            return rules.AssignFailure.DUPLICATE
        slot = _AvailabilitySlot()
        worker._pending[job.id] = slot
        try:
            if self._faults.availability_delay > 0:
                await trio.sleep(self._faults.availability_delay)
            # The job as offered: Go fills the state before asking (status RUNNING).
            offered = agent_pb.Job()
            offered.CopyFrom(job.job)
            now = _now_ns()
            offered.state.Clear()
            offered.state.worker_id = worker.worker_id
            offered.state.updated_at = now
            offered.state.started_at = now
            offered.state.status = agent_pb.JS_RUNNING
            if not worker.connected:
                return rules.AssignFailure.WORKER_CLOSED
            await worker.send(
                agent_pb.ServerMessage(availability=agent_pb.AvailabilityRequest(job=offered))
            )
            with trio.move_on_after(self._config.availability_timeout):
                await slot.ready.wait()
            if not slot.ready.is_set():
                return rules.AssignFailure.AVAILABILITY_TIMEOUT
            answer = slot.response
            if answer is None:
                return rules.AssignFailure.WORKER_CLOSED
            job.availability_answers.append((worker.worker_id, answer))
            if answer.terminate:
                offered.state.ended_at = now
                offered.state.status = agent_pb.JS_SUCCESS
                self._record_launch(job, offered.state, worker, running=False)
                return None
            if not answer.available:
                return rules.AssignFailure.NOT_AVAILABLE
            offered.state.participant_identity = answer.participant_identity
            attributes = dict(answer.participant_attributes)
            attributes[rules.AGENT_NAME_ATTRIBUTE] = worker.agent_name
            try:
                token = rules.build_agent_token(
                    api_key=worker.api_key,
                    api_secret=self._keys[worker.api_key],
                    room_name=offered.room.name,
                    identity=answer.participant_identity,
                    name=answer.participant_name,
                    metadata=answer.participant_metadata,
                    attributes=attributes,
                    permissions=worker.permissions,
                )
            except (ValueError, TypeError, KeyError, jwt.PyJWTError):
                logger.exception("failed to build agent token for job %s", job.id)
                return rules.AssignFailure.TOKEN_ERROR
            # Recorded before sending: the worker may report RUNNING before this
            # task runs again.
            job.token = token
            job.accepted_identity = answer.participant_identity
            self._record_launch(job, offered.state, worker, running=True)
            with trio.CancelScope(shield=True):
                if self._faults.withhold_assignment:
                    logger.info("fault: not sending the assignment of job %s", job.id)
                else:
                    with trio.move_on_after(_SHIELDED_SEND_TIMEOUT):
                        # In OSS the url is unset: the worker uses its own server URL.
                        await worker.send(
                            agent_pb.ServerMessage(
                                assignment=agent_pb.JobAssignment(job=offered, token=token)
                            )
                        )
            return None
        finally:
            if worker._pending.get(job.id) is slot:
                del worker._pending[job.id]

    def _record_launch(
        self, job: ServerJob, state: agent_pb.JobState, worker: ServerWorker, *, running: bool
    ) -> None:
        job.job.state.CopyFrom(state)
        if not running:
            job._note_status()  # ended at once (terminate); RUNNING waits for the worker
        job.launched = True
        worker.job_ids.append(job.id)
        if running:
            worker.running_job_ids.add(job.id)
            if not job.simulated:
                self._job_to_worker[job.id] = worker
        logger.info("assigned job %s to worker %s", job.id, worker.worker_id)
        if self._listener is not None and not job.simulated:
            self._listener.job_launched(job)
        self._changes.notify()

    def is_live(self, job_id: str) -> bool:
        """Whether the server can still terminate *job_id* (its worker holds it)."""
        job = self.jobs.get(job_id)
        worker = self._job_to_worker.get(job_id)
        return (
            job is not None
            and worker is not None
            and worker.connected
            and job.termination is None
            and not job.ended
        )

    async def terminate_job(
        self,
        job_id: str,
        reason: rules.TerminateReason,
        state_reason: agent_pb.JobStateReason = agent_pb.JSR_UNSPECIFIED,
    ) -> agent_pb.JobState:
        """Send ``JobTermination`` for a running job (``AgentHandler.JobTerminate``).

        Raises:
            KeyError: the job is unknown, ended, already terminated, or its worker
                is gone (Go: "no worker for jobID" / "no running job for given jobID").
        """
        if not self.is_live(job_id):
            raise KeyError(f"no running job for given jobID: {job_id!r}")
        job = self.jobs[job_id]
        worker = self._job_to_worker[job_id]
        job.termination = Termination(reason, state_reason, trio.current_time())
        job.job.state.reason = state_reason
        job.job.state.updated_at = _now_ns()
        self._changes.notify()
        if await worker.send(
            agent_pb.ServerMessage(termination=agent_pb.JobTermination(job_id=job_id))
        ):
            self._counters.terminations_sent += 1
        # Go records the outcome at once (``Worker.TerminateJob`` -> UpdateJobStatus):
        # the job leaves the worker's running jobs; its later reports are ignored.
        status, error = rules.termination_outcome(reason)
        job._set_status(status, error=error)
        worker.running_job_ids.discard(job_id)
        if self._job_to_worker.get(job_id) is worker:
            del self._job_to_worker[job_id]
        self._changes.notify()
        state = agent_pb.JobState()
        state.CopyFrom(job.job.state)
        return state

    def iter_jobs(self, *, room_sid: str) -> Iterator[ServerJob]:
        """The (non-simulated) jobs of one room incarnation."""
        for job in self.jobs.values():
            if not job.simulated and job.job.room.sid == room_sid:
                yield job


def _unhandled(kind: str | None, *, registered: bool = False) -> str:
    if kind is None:
        return "unknown worker signal"
    if kind == "register" and registered:
        return "unimplemented worker signal: Register (already registered)"
    return f"unimplemented worker signal: {kind}"
