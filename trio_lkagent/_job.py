"""What user code sees of a job: :class:`JobRequest` (before) and :class:`JobContext` (during)."""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, TypeAlias

import attrs
import trio
from livekit.protocol import agent as agent_pb

from ._options import JobType, to_job_type
from .processes._proc import JobProcess

if TYPE_CHECKING:
    from livekit import rtc

    from ._room import AutoSubscribe, Room
    from ._worker import Entrypoint, Worker
    from .handlers import AgentHandler, AutoDisconnect
    from .resilience import Checkpoint

__all__ = ["AcceptInfo", "JobContext", "JobRequest", "ShutdownCallback"]

logger = logging.getLogger("trio_lkagent.job")

#: ``async def cb(reason: str) -> None`` or ``async def cb() -> None``.
ShutdownCallback: TypeAlias = Callable[[str], Awaitable[None]] | Callable[[], Awaitable[None]]


@attrs.frozen
class AcceptInfo:
    """Who the agent will be in the room, as chosen when accepting the job."""

    identity: str
    name: str = ""
    metadata: str = ""
    attributes: Mapping[str, str] = attrs.field(factory=dict)
    # The agent chosen per request, its subscriptions and auto-disconnect rule.
    #: The entrypoint or handler for this job (None: the worker's own).
    entrypoint: Entrypoint | AgentHandler | None = attrs.field(default=None, eq=False)
    #: Default for ``ctx.connect`` (None: ``AutoSubscribe.AUDIO_ONLY``).
    auto_subscribe: AutoSubscribe | None = None
    #: None: ``AutoDisconnect.DEFAULT`` for handlers, ``NONE`` for entrypoints.
    auto_disconnect: AutoDisconnect | None = None
    #: Seconds the job may run; None: ``WorkerOptions.job_timeout``; ``math.inf``: no limit.
    timeout: float | None = None


class JobRequest:
    """An offer of a job from the server, handed to the worker's ``request_handler``.

    The handler answers exactly once with :meth:`accept` or :meth:`reject`. A
    handler that returns without answering, raises, or takes longer than
    ``WorkerOptions.request_timeout`` rejects the job (the server then offers it
    to another worker).
    """

    def __init__(self, job: agent_pb.Job, worker: Worker) -> None:
        self._job = job
        self._worker = worker
        self._answered = False

    @property
    def job(self) -> agent_pb.Job:
        """The protocol ``Job`` (id, type, room, participant, metadata, ...)."""
        return self._job

    @property
    def job_id(self) -> str:
        """The job's id (``AJ_...``)."""
        return self._job.id

    @property
    def room_name(self) -> str:
        """Name of the room the job is for."""
        return self._job.room.name

    @property
    def job_type(self) -> JobType:
        """ROOM, PUBLISHER or PARTICIPANT.

        Raises:
            InvalidJobTypeError: the server sent a type this SDK does not know.
        """
        return to_job_type(self._job.type)

    @property
    def answered(self) -> bool:
        """True once :meth:`accept` or :meth:`reject` was called."""
        return self._answered

    async def accept(
        self,
        *,
        identity: str = "",
        name: str = "",
        metadata: str = "",
        attributes: Mapping[str, str] | None = None,
        entrypoint: Entrypoint | AgentHandler | None = None,
        auto_subscribe: AutoSubscribe | None = None,
        auto_disconnect: AutoDisconnect | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - the job's deadline, not this call's
    ) -> None:
        """Take the job. The server answers with an assignment and the entrypoint runs.

        Args:
            identity: The agent participant's identity in the room
                (default ``agent-<job id>``).
            name: Display name.
            metadata: Participant metadata.
            attributes: Participant attributes.
            timeout: Seconds the job may run once assigned (its ``ctx.deadline``);
                None for ``WorkerOptions.job_timeout``, ``math.inf`` for no limit.
            entrypoint: The entrypoint function or handler object
                (:mod:`trio_lkagent.handlers`) to run this job with, instead of
                the worker's own.
            auto_subscribe: What the job's room subscribes to: the default of
                ``ctx.connect`` and what a handler's room is joined with
                (default ``AutoSubscribe.AUDIO_ONLY``).
            auto_disconnect: When the job leaves its room on its own
                (``AutoDisconnect``; default ``DEFAULT`` for handlers, ``NONE``
                for entrypoints).

        Raises:
            RuntimeError: the request was answered already.
            ValueError: *timeout* is not a number > 0.
            WorkerNotConnectedError: the connection the request came on is gone
                (the server forgot the request; nothing was sent).
        """
        if timeout is not None and not (
            isinstance(timeout, int | float) and not isinstance(timeout, bool) and timeout > 0
        ):
            raise ValueError(f"timeout must be a number > 0 (or None), got {timeout!r}")
        self._claim()
        info = AcceptInfo(
            identity=identity or f"agent-{self._job.id}",
            name=name,
            metadata=metadata,
            attributes=dict(attributes or {}),
            entrypoint=entrypoint,
            auto_subscribe=auto_subscribe,
            auto_disconnect=auto_disconnect,
            timeout=timeout,
        )
        await self._worker._answer(self._job, info)

    async def reject(self, *, terminate: bool = False) -> None:
        """Decline the job.

        Args:
            terminate: If true, ask the server to end the job (as successful)
                instead of offering it to another worker.

        Raises:
            RuntimeError: the request was answered already.
            WorkerNotConnectedError: the connection the request came on is gone.
        """
        self._claim()
        await self._worker._answer(self._job, None, terminate=terminate)

    def _claim(self) -> None:
        if self._answered:
            raise RuntimeError(f"job request {self._job.id} was already answered")
        self._answered = True


class JobContext:
    """Everything a job's entrypoint needs: the job, where to connect, how to stop.

    The entrypoint runs inside the job's own cancel scope: a termination from the
    server, :meth:`shutdown`, draining or the worker stopping cancels it. Cleanup
    belongs in ``try/finally`` or ``async with`` blocks of the entrypoint; the
    :meth:`add_shutdown_callback` list exists for code ported from other SDKs.
    """

    def __init__(
        self,
        *,
        job: agent_pb.Job,
        url: str,
        token: str,
        worker_id: str,
        accept: AcceptInfo,
    ) -> None:
        self._job = job
        self._url = url
        self._token = token
        self._worker_id = worker_id
        self._accept = accept
        self._cancel_scope = trio.CancelScope()
        self._shutdown_reason: str | None = None
        #: Seconds the job may run, set at assignment (None: no limit).
        self._timeout: float | None = None
        self._callbacks: list[ShutdownCallback] = []
        self._room: Room | None = None
        #: Set by the worker's job runner: the nursery that holds the job's rooms,
        #: outside the job's cancel scope, so that the room is left only after
        #: the job's final status reached the server (see ``Worker._run_job``).
        #: None for a context built outside a worker: the block then owns the room.
        self._rooms: trio.Nursery | None = None
        #: The room held in that nursery and the event that makes it leave.
        self._held_room: tuple[Room, trio.Event] | None = None
        #: Room events dropped for slow consumers in rooms this job has left.
        self._events_dropped = 0
        #: Set by the worker (task executor) or the job process (process executor).
        self._proc = JobProcess()
        #: Set by _leave (process executor: then the job process leaves its room).
        self._left = trio.Event()
        # The target of a participant/publisher job (ctx.participant); set when the room changes.
        self._participant: rtc.RemoteParticipant | None = None
        self._room_changed = trio.Event()
        # resilience: set by the worker before the entrypoint runs
        self._checkpoint: Checkpoint | None = None
        self._resumed = False
        self._attempt = 1

    @property
    def job(self) -> agent_pb.Job:
        """The protocol ``Job`` as assigned."""
        return self._job

    @property
    def job_id(self) -> str:
        """The job's id."""
        return self._job.id

    @property
    def job_type(self) -> JobType:
        """ROOM, PUBLISHER or PARTICIPANT.

        Raises:
            InvalidJobTypeError: the server sent a type this SDK does not know.
        """
        return to_job_type(self._job.type)

    @property
    def room_name(self) -> str:
        """Name of the room to join."""
        return self._job.room.name

    @property
    def url(self) -> str:
        """The LiveKit URL to join the room at."""
        return self._url

    @property
    def token(self) -> str:
        """The room join token the server issued for the agent participant."""
        return self._token

    @property
    def worker_id(self) -> str:
        """Id of the worker running the job (``AW_...``)."""
        return self._worker_id

    @property
    def identity(self) -> str:
        """The agent participant's identity (as accepted)."""
        return self._accept.identity

    @property
    def accept_info(self) -> AcceptInfo:
        """Identity, name, metadata and attributes chosen when accepting."""
        return self._accept

    @property
    def shutdown_reason(self) -> str | None:
        """Why the job is stopping, once it is; None while it runs normally.

        ``"job timed out after N s"`` once :attr:`deadline` has passed.
        """
        if self._shutdown_reason is None and self._timed_out_now():
            return f"job timed out after {self._timeout:g} s"
        return self._shutdown_reason

    @property
    def deadline(self) -> float:
        """When the job times out, on Trio's clock (``math.inf``: no limit).

        Set at assignment from ``req.accept(timeout=...)`` or
        ``WorkerOptions.job_timeout``; it is the deadline of :attr:`cancel_scope`,
        so code may compare it with ``trio.current_time()`` or move it.
        """
        return self._cancel_scope.deadline

    @property
    def cancel_scope(self) -> trio.CancelScope:
        """The job's cancel scope: cancelling it ends the job (as :meth:`shutdown` does)."""
        return self._cancel_scope

    @property
    def proc(self) -> JobProcess:
        """The process the job runs in: ``pid`` and ``userdata`` (filled by the setup hook)."""
        return self._proc

    @property
    def room(self) -> Room:
        """The room joined with :meth:`connect`, inside its ``async with`` block.

        Raises:
            RuntimeError: Not inside ``async with ctx.connect()``.
        """
        if self._room is None:
            raise RuntimeError("not connected: use `async with ctx.connect() as room:`")
        return self._room

    @property
    def participant(self) -> rtc.RemoteParticipant:
        """The participant a PARTICIPANT job is for, or the publisher of a PUBLISHER job.

        Handlers get it already waited for in ``on_job_assigned``; an entrypoint
        waits with ``await ctx.wait_for_participant(ctx.job.participant.identity)``
        (which also sets it). Its tracks: ``ctx.participant.track_publications``.

        Raises:
            RuntimeError: a ROOM job, or the participant has not been waited for.
        """
        if self._participant is None:
            raise RuntimeError(
                f"no target participant for this {self.job_type.name} job"
                if self.job_type is JobType.ROOM
                else "the target participant is not in the room yet"
            )
        return self._participant

    @asynccontextmanager
    async def connect(
        self,
        *,
        auto_subscribe: AutoSubscribe | None = None,
        connect_timeout: float = 10.0,
        options: rtc.RoomOptions | None = None,
    ) -> AsyncIterator[Room]:
        """Join the job's room (:func:`~trio_lkagent.open_room` with the job's URL and token).

        The room belongs to the job, not to the block: leaving the block ends
        :attr:`room`, and the agent leaves the room when the job ends, right
        after the job's final status (``JS_SUCCESS``, or ``JS_FAILED`` with the
        error) reached the server. LiveKit's server fails a running job whose
        agent leaves its room ("agent worker left the room"); this ordering is
        what lets a job that ends by itself be recorded as it ended. Entering
        ``connect()`` again in the same job enters the same room again (leaving
        it would end the job on the server).

        Args:
            auto_subscribe: Remote tracks to subscribe to by ourselves
                (default ``AutoSubscribe.AUDIO_ONLY``).
            connect_timeout: Deadline for joining, in seconds.
            options: Further ``livekit.rtc.RoomOptions``.

        Yields:
            The connected :class:`~trio_lkagent.Room`, also available as :attr:`room`.

        Raises:
            ConnectError: Joining failed or timed out.
            RuntimeError: Already connected.

        Cancellation:
            The job's cancellation (termination, shutdown, timeout) leaves the
            block; the room is left after the final status, shielded and bounded.
            When ``serve`` itself is cancelled, the room is left at once and the
            final status is sent when the worker closes its socket.
        """
        from ._room import AutoSubscribe, open_room

        if self._room is not None:
            raise RuntimeError("this job is already connected to its room")
        opening = functools.partial(
            open_room,
            self._url,
            self._token,
            auto_subscribe=auto_subscribe
            or self._accept.auto_subscribe
            or AutoSubscribe.AUDIO_ONLY,
            connect_timeout=connect_timeout,
            options=options,
        )
        if self._rooms is None:
            async with opening() as room:
                self._room = room
                self._notify_room_changed()
                try:
                    yield room
                finally:
                    self._events_dropped += room.statistics().events_dropped
                    self._room = None
                    self._notify_room_changed()
            return
        if self._held_room is None:
            self._held_room = await self._rooms.start(self._hold_room, opening)
        room = self._held_room[0]  # still in it since an earlier block: enter it again
        self._room = room
        self._notify_room_changed()
        try:
            yield room
        finally:
            self._events_dropped += room.statistics().events_dropped
            self._room = None
            self._notify_room_changed()

    def _notify_room_changed(self) -> None:
        self._room_changed.set()
        self._room_changed = trio.Event()

    async def _hold_room(
        self,
        opening: Callable[[], AbstractAsyncContextManager[Room]],
        *,
        task_status: trio.TaskStatus[tuple[Room, trio.Event]],
    ) -> None:
        """Join, hand the room to ``connect``, and stay until the job runner says leave.

        Runs in the job runner's room nursery: leaving ``async with ctx.connect()``
        does not leave the room; the job's end does, after its final status is
        on the wire (:meth:`_leave`). Errors while joining reach ``connect``'s
        caller through ``nursery.start``; errors while leaving are logged.
        """
        leave = trio.Event()
        started = False
        try:
            async with opening() as room:
                task_status.started((room, leave))
                started = True
                await leave.wait()
        except Exception:
            if not started:
                raise
            logger.exception("leaving the room of job %s failed", self.job_id)

    def _leave(self) -> None:
        """The job's final status is out (or cannot be sent): leave the held room."""
        self._left.set()
        if self._held_room is not None:
            self._held_room[1].set()

    async def wait_for_participant(
        self,
        identity: str | None = None,
        *,
        kind: int | Collection[int] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - a convenience helper, as the seeds have it
    ) -> rtc.RemoteParticipant:
        """Wait for a remote participant in the job's room (see ``Room.wait_for_participant``).

        Args:
            identity: The identity wanted; None for anyone.
            kind: ``livekit.rtc.ParticipantKind`` value(s); None for any.
            timeout: Give up after this many seconds (None: wait as long as the job runs).

        Raises:
            trio.TooSlowError: *timeout* passed.
            RuntimeError: Not connected (use :meth:`connect` first).
        """
        with trio.fail_after(math.inf if timeout is None else timeout):
            participant = await self.room.wait_for_participant(identity, kind=kind)
        if identity and identity == self._job.participant.identity:
            self._participant = participant
        return participant

    async def publish_data(
        self,
        payload: bytes | str,
        *,
        reliable: bool = True,
        destination_identities: Collection[str] = (),
        topic: str | None = None,
    ) -> None:
        """Send a data packet in the job's room (see ``Room.publish_data``)."""
        await self.room.publish_data(
            payload, reliable=reliable, destination_identities=destination_identities, topic=topic
        )

    def shutdown(self, reason: str = "") -> None:
        """End the job: cancel its scope. The job is reported as successful.

        Safe to call several times and from any task of the trio run; the first
        reason is kept.
        """
        if self._shutdown_reason is None:
            self._shutdown_reason = reason or "shutdown requested"
        self._cancel_scope.cancel()

    def add_shutdown_callback(self, callback: ShutdownCallback) -> None:
        """Run ``await callback(reason)`` (or ``callback()``) after the entrypoint ends.

        Callbacks run in the order added, under a shield bounded by
        ``WorkerOptions.shutdown_grace``, before the final status is reported.
        A callback that raises is logged and does not change the job's status.
        """
        self._callbacks.append(callback)

    async def sleep(self, seconds: float) -> None:
        """Sleep; returns early with :class:`trio.Cancelled` when the job is ended.

        The seeds' ``JobContext.Sleep``: in Trio every sleep is cancellable, so
        this is ``trio.sleep``, kept for code ported from them.
        """
        await trio.sleep(seconds)

    # -- resilience (trio_lkagent.resilience) -------------------------------------

    @property
    def checkpoint(self) -> Checkpoint:
        """This job's checkpoint: ``await save(key, value)``, ``await load(key, default)``,
        ``await clear()``.

        Keyed by namespace, agent name and room (and participant identity for
        JT_PARTICIPANT jobs), so a job dispatched again for the same room after
        its worker died finds what the dead one saved. Stored in
        ``WorkerOptions.checkpoint_store`` (``LIVEKIT_CHECKPOINT_URL``).

        Raises:
            RuntimeError: the job was not started by a worker.
        """
        if self._checkpoint is None:
            raise RuntimeError("no checkpoint store: this job was not started by a worker")
        return self._checkpoint

    @property
    def resumed(self) -> bool:
        """True if a checkpoint of this job's identity existed when it started."""
        return self._resumed

    @property
    def attempt(self) -> int:
        """Which run of the entrypoint this is: 1, then 2, ... when recovery retries it."""
        return self._attempt

    def _timed_out(self) -> bool:
        """True if the job's cancel scope ended it by reaching :attr:`deadline`.

        A :meth:`shutdown` (termination, draining) that came first is not a timeout.
        """
        return self._cancel_scope.cancelled_caught and self._timed_out_now()

    def _timed_out_now(self) -> bool:
        return (
            self._timeout is not None
            and self._shutdown_reason is None
            and trio.current_time() >= self._cancel_scope.deadline
        )

    def _events_dropped_now(self) -> int:
        """Room events dropped so far, in the room joined now and those left."""
        room = self._room
        return self._events_dropped + (room.statistics().events_dropped if room else 0)

    async def _run_shutdown_callbacks(self, grace: float) -> None:
        if not self._callbacks:
            return
        reason = self._shutdown_reason or "job ended"
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + grace
            for callback in self._callbacks:
                try:
                    if len(inspect.signature(callback).parameters) >= 1:
                        await callback(reason)  # type: ignore[call-arg]
                    else:
                        await callback()  # type: ignore[call-arg]
                except Exception:
                    logger.exception("shutdown callback %r of job %s failed", callback, self.job_id)
        if scope.cancelled_caught:
            logger.warning(
                "shutdown callbacks of job %s did not finish within %.1f s", self.job_id, grace
            )
