"""A fake job context and room for fast unit tests of an entrypoint's logic.

No server, no WebRTC, no asyncio thread: :class:`FakeJobContext` *is* a
:class:`~trio_lkagent.JobContext` (a subclass: every property and method of the
real one works the same: ``job``, ``job_id``, ``room_name``, ``identity``,
``shutdown``, ``add_shutdown_callback``, ``sleep``) whose ``connect()`` yields a
:class:`FakeRoom` instead of joining. :class:`FakeRoom` *is* a
:class:`~trio_lkagent.Room` whose data-level API is simulated in memory:
``events()``, ``remote_participants``, ``wait_for_participant``,
``publish_data``, ``send_text``, ``register_rpc_method`` / ``perform_rpc``.
``publish_audio`` gives a real, unpublished audio output (kept in
:attr:`FakeRoom.audio_outputs`). Video, remote tracks and the native objects
(``rtc_room``, ``local_participant``, ``bridge``) need a real room: they raise
``NotImplementedError`` pointing at the end-to-end fixtures.

The test plays the other participants: :meth:`FakeRoom.join`,
:meth:`FakeRoom.leave`, :meth:`FakeRoom.send` (a ``DataReceived`` event),
:meth:`FakeRoom.call_rpc` (invokes the agent's handler), and reads what the
agent sent in :attr:`FakeRoom.sent`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from typing import Any, NoReturn, cast

import attrs
import trio
from livekit import rtc
from livekit.protocol import agent as agent_pb
from livekit.protocol import models as models_pb

from .._bridge import HandoffStatistics
from .._events import (
    DataReceived,
    Disconnected,
    ParticipantConnected,
    ParticipantDisconnected,
    ParticipantInfo,
    RoomEvent,
)
from .._job import AcceptInfo, JobContext
from .._options import JobType
from .._room import DEFAULT_EVENT_BUFFER, AutoSubscribe, Room, RoomStatistics, RpcHandler
from .._tracks import AudioOutput, open_audio_output

__all__ = ["FakeJobContext", "FakeParticipant", "FakeRoom", "SentData"]


@attrs.frozen
class SentData:
    """What the agent sent through the fake room.

    Attributes:
        payload: The bytes (text is UTF-8 encoded, as the real room does).
        topic: The topic ("" for none; ``send_text`` defaults to "").
        destination_identities: Recipients (empty: everyone).
        reliable: ``publish_data``'s flag (True for text streams).
        kind: ``"data"`` (``publish_data``) or ``"text"`` (``send_text``).
    """

    payload: bytes
    topic: str = ""
    destination_identities: tuple[str, ...] = ()
    reliable: bool = True
    kind: str = "data"

    @property
    def text(self) -> str:
        """The payload decoded as UTF-8."""
        return self.payload.decode()


@attrs.define
class FakeParticipant:
    """A remote participant of a :class:`FakeRoom`, with the attributes of
    ``livekit.rtc.RemoteParticipant`` that carry data (no tracks)."""

    identity: str
    name: str = ""
    kind: int = rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD
    metadata: str = ""
    attributes: dict[str, str] = attrs.field(factory=dict)
    sid: str = ""

    def info(self) -> ParticipantInfo:
        return ParticipantInfo(
            identity=self.identity,
            sid=self.sid or f"PA_{self.identity}",
            name=self.name,
            kind=self.kind,
            metadata=self.metadata,
            attributes=dict(self.attributes),
        )


def _needs_real_room(what: str) -> NoReturn:
    raise NotImplementedError(
        f"FakeRoom has no {what}: test media end to end with the `devserver`,"
        " `agent_worker` and `participant` fixtures (docs/testing.md)"
    )


class FakeRoom(Room):  # type: ignore[misc]  # the one sanctioned subclass of a final class
    """An in-memory :class:`~trio_lkagent.Room` for unit tests (see the module docs).

    Args:
        name: The room's name.
        metadata: The room's metadata.
        identity: The agent's identity (the sender of what it publishes).
    """

    def __init__(self, name: str = "test-room", *, metadata: str = "", identity: str = "agent"):
        # Deliberately not Room.__init__: there is no bridge nor native room.
        self._name = name
        self._metadata = metadata
        self._identity = identity
        self._participants: dict[str, FakeParticipant] = {}
        self._subscribers: list[trio.MemorySendChannel[RoomEvent]] = []
        self._backlog: list[RoomEvent] | None = []  # until the first events() call
        self._rpc: dict[str, RpcHandler] = {}
        self._changed = trio.Event()
        self._closed = False
        self._dropped = 0
        self._rpc_invocations = 0
        #: Everything the agent sent (``publish_data``, ``send_text``), oldest first.
        self.sent: list[SentData] = []
        #: Audio tracks the agent "published" (``publish_audio``), by name.
        self.audio_outputs: dict[str, AudioOutput] = {}
        #: ``(destination, method, payload) -> response`` answers to the agent's
        #: own ``perform_rpc`` calls; set by the test.
        self.rpc_answers: dict[tuple[str, str], Callable[[str], Awaitable[str]]] = {}

    # -- the real Room's API ---------------------------------------------------

    @property
    def rtc_room(self) -> rtc.Room:
        _needs_real_room("native room")

    @property
    def bridge(self) -> Any:
        _needs_real_room("asyncio bridge")

    @property
    def name(self) -> str:
        return self._name

    @property
    def metadata(self) -> str:
        return self._metadata

    @property
    def connection_state(self) -> int:
        state = rtc.ConnectionState
        return int(state.CONN_DISCONNECTED if self._closed else state.CONN_CONNECTED)

    @property
    def local_participant(self) -> rtc.LocalParticipant:
        _needs_real_room("local participant (use FakeRoom.sent)")

    @property
    def remote_participants(self) -> Mapping[str, rtc.RemoteParticipant]:
        return cast("Mapping[str, rtc.RemoteParticipant]", dict(self._participants))

    def statistics(self) -> RoomStatistics:
        return RoomStatistics(
            connection_state=self.connection_state,
            remote_participants=len(self._participants),
            events=HandoffStatistics(put=0, pending=0, batches=0, subscribers=()),
            events_dropped=self._dropped,
            rpc_invocations=self._rpc_invocations,
            streams_dropped=0,
        )

    def events(
        self, max_buffer_size: int = DEFAULT_EVENT_BUFFER
    ) -> trio.MemoryReceiveChannel[RoomEvent]:
        if self._closed:
            raise trio.ClosedResourceError("the room is closed")
        if max_buffer_size < 0:
            raise ValueError("max_buffer_size must be >= 0")
        send, receive = trio.open_memory_channel[RoomEvent](max_buffer_size)
        if self._backlog is not None:
            for event in self._backlog:
                self._deliver(send, event)
            self._backlog = None
        self._subscribers.append(send)
        self._wake()
        return receive

    async def wait_for_participant(
        self, identity: str | None = None, *, kind: int | Collection[int] | None = None
    ) -> rtc.RemoteParticipant:
        kinds = None if kind is None else ({kind} if isinstance(kind, int) else set(kind))
        while True:
            if self._closed:
                raise trio.ClosedResourceError("the room is closed")
            for p in self._participants.values():
                if (identity is None or p.identity == identity) and (
                    kinds is None or p.kind in kinds
                ):
                    await trio.lowlevel.checkpoint()
                    return cast("rtc.RemoteParticipant", p)
            await self._changed.wait()

    async def wait_disconnected(self) -> int:
        while not self._closed:
            await self._changed.wait()
        return int(rtc.DisconnectReason.CLIENT_INITIATED)

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            return
        self._closed = True
        for send in self._subscribers:
            send.close()
        self._subscribers.clear()
        self._wake()

    async def publish_data(
        self,
        payload: bytes | str,
        *,
        reliable: bool = True,
        destination_identities: Collection[str] = (),
        topic: str | None = None,
    ) -> None:
        await trio.lowlevel.checkpoint()
        self._check_open()
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        self.sent.append(
            SentData(data, topic or "", tuple(destination_identities), reliable, "data")
        )
        self._wake()

    async def send_text(
        self,
        text: str,
        *,
        topic: str = "",
        destination_identities: Collection[str] = (),
        attributes: Mapping[str, str] | None = None,
    ) -> rtc.TextStreamInfo:
        await trio.lowlevel.checkpoint()
        self._check_open()
        self.sent.append(
            SentData(text.encode(), topic, tuple(destination_identities), True, "text")
        )
        self._wake()
        return cast("rtc.TextStreamInfo", None)

    async def register_rpc_method(self, method: str, handler: RpcHandler) -> None:
        await trio.lowlevel.checkpoint()
        self._rpc[method] = handler

    async def unregister_rpc_method(self, method: str) -> None:
        await trio.lowlevel.checkpoint()
        self._rpc.pop(method, None)

    async def perform_rpc(
        self,
        destination_identity: str,
        method: str,
        payload: str,
        *,
        response_timeout: float | None = None,
    ) -> str:
        self._check_open()
        answer = self.rpc_answers.get((destination_identity, method))
        if answer is None or destination_identity not in self._participants:
            await trio.lowlevel.checkpoint()
            raise rtc.RpcError(rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD, "Method not supported")
        with trio.fail_after(10.0 if response_timeout is None else response_timeout):
            return await answer(payload)

    @contextlib.asynccontextmanager
    async def publish_audio(
        self,
        *,
        sample_rate: int = 48_000,
        num_channels: int = 1,
        name: str = "agent",
        source: int = rtc.TrackSource.SOURCE_MICROPHONE,
        queue_ms: int = 200,
        max_bitrate: int | None = None,
        dtx: bool | None = None,
        red: bool | None = None,
    ) -> AsyncIterator[AudioOutput]:
        """A real :class:`~trio_lkagent.AudioOutput` (native source, paced in real
        time) that is not published (the publish options are accepted and
        ignored); kept in :attr:`audio_outputs` by name."""
        self._check_open()
        async with open_audio_output(
            sample_rate=sample_rate, num_channels=num_channels, name=name, queue_ms=queue_ms
        ) as output:
            self.audio_outputs[name] = output
            yield output

    async def publish_video(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        _needs_real_room("media")

    # -- what the test does: play the other participants ---------------------------

    def join(
        self,
        identity: str,
        *,
        name: str = "",
        kind: int = rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD,
        metadata: str = "",
        attributes: Mapping[str, str] | None = None,
    ) -> FakeParticipant:
        """A participant joins: in ``remote_participants``, ``ParticipantConnected`` sent."""
        participant = FakeParticipant(identity, name, kind, metadata, dict(attributes or {}))
        self._participants[identity] = participant
        self.emit(
            ParticipantConnected(
                identity=identity,
                info=participant.info(),
                participant=cast("rtc.RemoteParticipant", participant),
            )
        )
        return participant

    def leave(self, identity: str) -> None:
        """A participant leaves: ``ParticipantDisconnected`` sent.

        Raises:
            KeyError: no such participant.
        """
        participant = self._participants.pop(identity)
        self.emit(
            ParticipantDisconnected(
                identity=identity,
                info=participant.info(),
                reason=int(rtc.DisconnectReason.CLIENT_INITIATED),
                participant=cast("rtc.RemoteParticipant", participant),
            )
        )

    def send(
        self, payload: bytes | str, *, sender: str = "", topic: str = "", reliable: bool = True
    ) -> None:
        """Data reaches the agent (a ``DataReceived`` event) from *sender*
        ("": the server API)."""
        participant = self._participants.get(sender)
        if sender and participant is None:
            raise KeyError(f"{sender!r} is not in the room: join() it first")
        self.emit(
            DataReceived(
                identity=sender,
                payload=payload.encode() if isinstance(payload, str) else bytes(payload),
                topic=topic,
                reliable=reliable,
                participant=cast("rtc.RemoteParticipant | None", participant),
            )
        )

    async def call_rpc(self, caller: str, method: str, payload: str = "") -> str:
        """*caller* calls the agent's RPC *method*; returns the handler's answer.

        Raises:
            livekit.rtc.RpcError: UNSUPPORTED_METHOD if the agent registered no
                handler; what the handler raised otherwise.
        """
        handler = self._rpc.get(method)
        if handler is None:
            await trio.lowlevel.checkpoint()
            raise rtc.RpcError(rtc.RpcError.ErrorCode.UNSUPPORTED_METHOD, "Method not supported")
        self._rpc_invocations += 1
        data = rtc.RpcInvocationData(
            request_id=f"fake-{method}",
            caller_identity=caller,
            payload=payload,
            response_timeout=10.0,
        )
        return await handler(data)

    async def wait_for_sent(self, count: int = 1) -> list[SentData]:
        """Wait until the agent has sent at least *count* items; returns :attr:`sent`."""
        while len(self.sent) < count:
            await self._changed.wait()
        return self.sent

    async def wait_for_subscriber(self) -> None:
        """Wait until the agent has called ``events()`` (so nothing emitted is missed
        by a subscriber made later than the test expects)."""
        while not self._subscribers:
            await self._changed.wait()

    def emit(self, event: RoomEvent) -> None:
        """Deliver any room event (``trio_lkagent.events``) to every subscriber."""
        if self._backlog is not None:
            self._backlog.append(event)
        for send in self._subscribers:
            self._deliver(send, event)
        self._wake()

    def disconnect(self) -> None:
        """The room goes away: ``Disconnected`` sent, then every event channel ends."""
        self.emit(Disconnected(reason=int(rtc.DisconnectReason.ROOM_DELETED)))
        for send in self._subscribers:
            send.close()
        self._subscribers.clear()
        self._closed = True
        self._wake()

    # -- internals ---------------------------------------------------------------------

    def _deliver(self, send: trio.MemorySendChannel[RoomEvent], event: RoomEvent) -> None:
        try:
            send.send_nowait(event)
        except trio.WouldBlock:
            self._dropped += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._subscribers.remove(send)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the room is closed")


class FakeJobContext(JobContext):
    """A :class:`~trio_lkagent.JobContext` whose ``connect()`` yields a :class:`FakeRoom`.

    Example::

        ctx = FakeJobContext(metadata='{"greeting": "hi"}')
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_entrypoint, entrypoint, ctx)
            await trio.testing.wait_all_tasks_blocked()
            ctx.fake_room.join("alice")
            ctx.fake_room.send("hello", sender="alice")
            ...
            ctx.shutdown()

    Args:
        room: The fake room (default: a new one named *room_name*).
        room_name: The job's room name.
        job_id: The job id.
        job_type: ROOM, PUBLISHER or PARTICIPANT.
        metadata: ``ctx.job.metadata``.
        identity: The agent's identity.
        participant_identity: For PUBLISHER/PARTICIPANT jobs: whose job it is.
    """

    def __init__(
        self,
        room: FakeRoom | None = None,
        *,
        room_name: str = "test-room",
        job_id: str = "AJ_fake",
        job_type: JobType = JobType.ROOM,
        metadata: str = "",
        identity: str = "agent",
        participant_identity: str = "",
    ) -> None:
        job = agent_pb.Job(
            id=job_id,
            type=int(job_type),  # type: ignore[arg-type]
            room=models_pb.Room(name=room.name if room is not None else room_name),
            metadata=metadata,
        )
        if participant_identity:
            job.participant.identity = participant_identity
        super().__init__(
            job=job,
            url="ws://fake.invalid",
            token="fake-token",
            worker_id="AW_fake",
            accept=AcceptInfo(identity=identity),
        )
        self.fake_room = room if room is not None else FakeRoom(room_name, identity=identity)

    @contextlib.asynccontextmanager
    async def connect(
        self,
        *,
        auto_subscribe: AutoSubscribe | None = None,
        connect_timeout: float = 10.0,
        options: rtc.RoomOptions | None = None,
    ) -> AsyncIterator[Room]:
        """Yield :attr:`fake_room` (as the real one yields the joined room)."""
        if self._room is not None:
            raise RuntimeError("this job is already connected to its room")
        await trio.lowlevel.checkpoint()
        self._room = self.fake_room
        try:
            yield self.fake_room
        finally:
            self._room = None
            with trio.CancelScope(shield=True):
                await self.fake_room.aclose()


async def run_entrypoint(
    entrypoint: Callable[[JobContext], Awaitable[None]], ctx: JobContext
) -> str | None:
    """Run *entrypoint* as the worker does: inside ``ctx.cancel_scope``, then the
    shutdown callbacks. Returns ``ctx.shutdown_reason`` (None if it returned on
    its own). Exceptions from the entrypoint propagate.
    """
    with ctx.cancel_scope:
        await entrypoint(ctx)
    await ctx._run_shutdown_callbacks(5.0)
    return ctx.shutdown_reason
