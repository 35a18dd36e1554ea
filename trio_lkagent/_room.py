"""Rooms from Trio: ``open_room``, room events as memory channels, data, RPC and streams.

A :class:`Room` wraps one ``livekit.rtc.Room`` that lives on the asyncio bridge. Task
tree while a room is open::

    open_room()                     the caller's task (the ``async with`` body)
    '- room nursery
       |- RPC handlers              one Trio task per incoming call (TrioPortal)
       '- (nothing else: events need no task)

Events need no task of their own: the rtc room's ``emit`` is replaced, on the asyncio
thread, by a dispatcher that builds a frozen event (:mod:`._events`) and puts it into
a :class:`~._bridge.Handoff`; the hand-off fans it out to every channel returned by
:meth:`Room.events`, then the original ``emit`` runs for any ``rtc`` callbacks.

Slow consumers: each :meth:`Room.events` channel holds ``max_buffer_size`` events.
When a consumer is that far behind, *newer* events are dropped for that consumer
only, and counted (:meth:`Room.statistics`). The native thread and the other
consumers never wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final, Generic, TypeVar, final

import attrs
import trio
from livekit import rtc

from ._bridge import AsyncioBridge, Handoff, HandoffStatistics, TrioPortal, open_bridge
from ._events import (
    BUILDERS,
    ROOM_BUILDERS,
    Disconnected,
    RoomEvent,
    TrackPublished,
)
from ._exceptions import ConnectError
from ._logging import sdk_cleanup
from ._publish import publish_options
from ._tracks import (
    AudioOutput,
    VideoOutput,
    add_native_cleanup,
    close_native,
    open_audio_output,
    open_owned_nursery,
    open_video_output,
)

__all__ = [
    "AutoSubscribe",
    "ByteStream",
    "Room",
    "RoomStatistics",
    "RpcHandler",
    "TextStream",
    "open_room",
]

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: Budget of the shielded disconnect when leaving a room.
DISCONNECT_TIMEOUT: Final = 3.0
#: After unpublishing, the native client renegotiates once its 150 ms debounce
#: (``PUBLISHER_NEGOTIATION_FREQUENCY``) has passed. Disconnecting before that makes
#: it log "peer connection is closed, cannot create offer", possibly after the program
#: has ended; so leaving waits until this long after the last unpublish.
UNPUBLISH_SETTLE: Final = 0.3
#: How long the bridge's shutdown waits for a cancelled join still under way (it is
#: never cancelled natively, see ``Room._abandon_connect``).
ABANDONED_JOIN_WAIT: Final = 2.0
#: Default size of each :meth:`Room.events` channel.
DEFAULT_EVENT_BUFFER: Final = 256

#: ``async def handler(data: livekit.rtc.RpcInvocationData) -> str``, a Trio coroutine.
RpcHandler = Callable[[rtc.RpcInvocationData], Awaitable[str]]


class AutoSubscribe(enum.Enum):
    """Which remote tracks the room subscribes to by itself (as livekit-agents has it).

    Anything but ``SUBSCRIBE_ALL`` connects with native auto-subscription off and
    subscribes to matching publications as they are published (and to those that
    existed when we joined).
    """

    SUBSCRIBE_ALL = "subscribe_all"
    SUBSCRIBE_NONE = "subscribe_none"
    AUDIO_ONLY = "audio_only"
    VIDEO_ONLY = "video_only"


_KINDS: Final[Mapping[AutoSubscribe, frozenset[int]]] = {
    AutoSubscribe.SUBSCRIBE_ALL: frozenset({rtc.TrackKind.KIND_AUDIO, rtc.TrackKind.KIND_VIDEO}),
    AutoSubscribe.SUBSCRIBE_NONE: frozenset(),
    AutoSubscribe.AUDIO_ONLY: frozenset({rtc.TrackKind.KIND_AUDIO}),
    AutoSubscribe.VIDEO_ONLY: frozenset({rtc.TrackKind.KIND_VIDEO}),
}


@attrs.frozen
class RoomStatistics:
    """A snapshot of a room's counters, from :meth:`Room.statistics`.

    Attributes:
        connection_state: ``livekit.rtc.ConnectionState`` value.
        remote_participants: Remote participants in the room now.
        events: The event hand-off: events put, pending, batches, and per
            subscriber (one per :meth:`Room.events` call) delivered/dropped.
        events_dropped: Events dropped over all subscribers (slow consumers).
        rpc_invocations: RPC calls handed to our handlers.
        streams_dropped: Incoming text/byte streams dropped because their channel
            was full or closed (they are closed, the sender sees them aborted).
    """

    connection_state: int
    remote_participants: int
    events: HandoffStatistics
    events_dropped: int
    rpc_invocations: int
    streams_dropped: int


class _DataStream(trio.abc.ReceiveChannel[T], Generic[T]):
    """An incoming data stream whose chunks are read from Trio, one round trip each."""

    def __init__(self, bridge: AsyncioBridge, reader: Any, identity: str) -> None:
        self._bridge = bridge
        self._reader = reader
        self._identity = identity

    @property
    def identity(self) -> str:
        """The sender's identity."""
        return self._identity

    @property
    def topic(self) -> str:
        """The topic it was sent under."""
        return str(self._reader.info.topic)

    @property
    def stream_id(self) -> str:
        """The stream's id."""
        return str(self._reader.info.stream_id)

    @property
    def attributes(self) -> Mapping[str, str]:
        """Attributes the sender attached."""
        return dict(self._reader.info.attributes or {})

    async def receive(self) -> T:
        """Wait for the next chunk.

        Raises:
            trio.EndOfChannel: The stream is complete.
            trio.BrokenResourceError: The sender aborted it or the room disconnected.

        Cancellation:
            A checkpoint; a chunk being read when cancelled is lost.
        """
        try:
            chunk: T | None = await self._bridge.run(_next_chunk, self._reader)
        except rtc.StreamError as exc:
            raise trio.BrokenResourceError(f"data stream failed: {exc.description}") from exc
        if chunk is None:
            raise trio.EndOfChannel
        return chunk

    async def aclose(self) -> None:
        """Stop reading; the rest of the stream is discarded. Idempotent."""
        try:
            await self._bridge.call(self._reader.close)
        except trio.ClosedResourceError:
            await trio.lowlevel.checkpoint()

    def _close_threadsafe(self) -> None:
        try:
            self._bridge.loop.call_soon_threadsafe(self._reader.close)
        except RuntimeError:  # the loop is closed: the reader went with it
            pass


async def _next_chunk(reader: Any) -> Any:  # asyncio
    try:
        return await reader.__anext__()
    except StopAsyncIteration:
        return None


async def _read_all_bytes(reader: rtc.ByteStreamReader) -> bytes:  # asyncio
    return b"".join([chunk async for chunk in reader])


@final
class TextStream(_DataStream[str]):
    """An incoming text stream (``send_text`` / ``stream_text`` by someone else).

    ``async for chunk in stream`` yields text chunks; :meth:`read_all` the rest.
    """

    @property
    def info(self) -> rtc.TextStreamInfo:
        """The native stream info (id, topic, timestamp, size, attributes)."""
        info: rtc.TextStreamInfo = self._reader.info
        return info

    async def read_all(self) -> str:
        """Read the rest of the stream and return it.

        Raises:
            trio.BrokenResourceError: The sender aborted or the room disconnected.
        """
        try:
            text: str = await self._bridge.run(self._reader.read_all)
        except rtc.StreamError as exc:
            raise trio.BrokenResourceError(f"text stream failed: {exc.description}") from exc
        return text


@final
class ByteStream(_DataStream[bytes]):
    """An incoming byte stream (``send_bytes`` / ``send_file`` by someone else)."""

    @property
    def info(self) -> rtc.ByteStreamInfo:
        """The native stream info (id, name, mime type, topic, size, attributes)."""
        info: rtc.ByteStreamInfo = self._reader.info
        return info

    @property
    def name(self) -> str:
        """The file name the sender gave."""
        return self.info.name

    async def read_all(self) -> bytes:
        """Read the rest of the stream and return it.

        Raises:
            trio.BrokenResourceError: The sender aborted or the room disconnected.
        """
        try:
            return await self._bridge.run(_read_all_bytes, self._reader)
        except rtc.StreamError as exc:
            raise trio.BrokenResourceError(f"byte stream failed: {exc.description}") from exc


@final
class Room:
    """A LiveKit room joined from Trio. Obtain it with :func:`open_room`.

    The ``livekit.rtc`` objects behind it (``rtc_room``, participants, publications,
    tracks) belong to the asyncio bridge. Reading their attributes from Trio is fine;
    their async methods must go through this class (or ``room.bridge``).
    """

    def __init__(
        self,
        bridge: AsyncioBridge,
        rtc_room: rtc.Room,
        nursery: trio.Nursery,
        auto_subscribe: AutoSubscribe,
    ) -> None:
        """Private: use :func:`open_room`."""
        self._bridge = bridge
        self._rtc = rtc_room
        self._nursery = nursery
        self._portal = TrioPortal(nursery)
        self._token = trio.lowlevel.current_trio_token()
        # Events from joining until the owner's first events() call are held for it.
        self._handoff = Handoff[RoomEvent](backlog=DEFAULT_EVENT_BUFFER)
        self._subscribe_kinds = _KINDS[auto_subscribe]
        self._manual_subscribe = auto_subscribe is not AutoSubscribe.SUBSCRIBE_ALL
        self._changed = trio.Event()
        self._disconnect_reason: int | None = None
        self._closed = False
        self._unregister_cleanup: Callable[[], None] = lambda: None
        self._rpc_invocations = 0
        self._streams_dropped = 0
        self._last_unpublish = -math.inf  # trio.current_time() of our last unpublish

    # ------------------------------------------------------------------ state

    @property
    def rtc_room(self) -> rtc.Room:
        """The ``livekit.rtc.Room`` (owned by the bridge's asyncio loop)."""
        return self._rtc

    @property
    def bridge(self) -> AsyncioBridge:
        """The asyncio bridge the room lives on, to call other ``livekit.rtc`` APIs."""
        return self._bridge

    @property
    def name(self) -> str:
        """The room's name."""
        return self._rtc.name

    @property
    def metadata(self) -> str:
        """The room's metadata."""
        return self._rtc.metadata

    @property
    def connection_state(self) -> int:
        """``livekit.rtc.ConnectionState`` value."""
        return int(self._rtc.connection_state)

    @property
    def local_participant(self) -> rtc.LocalParticipant:
        """Our own participant (identity, sid, publications).

        Raises:
            RuntimeError: The room was never connected.
        """
        try:
            participant: rtc.LocalParticipant = self._rtc.local_participant
        except Exception as exc:  # livekit raises a bare Exception
            raise RuntimeError("the room is not connected") from exc
        return participant

    @property
    def remote_participants(self) -> Mapping[str, rtc.RemoteParticipant]:
        """The remote participants by identity: a snapshot copy, taken now."""
        return dict(self._rtc.remote_participants)

    def statistics(self) -> RoomStatistics:
        """Return the room's counters, including events dropped for slow consumers."""
        events = self._handoff.statistics()
        return RoomStatistics(
            connection_state=self.connection_state,
            remote_participants=len(self._rtc.remote_participants),
            events=events,
            events_dropped=sum(s.dropped for s in events.subscribers),
            rpc_invocations=self._rpc_invocations,
            streams_dropped=self._streams_dropped,
        )

    # ------------------------------------------------------------------ events

    def events(
        self, max_buffer_size: int = DEFAULT_EVENT_BUFFER
    ) -> trio.MemoryReceiveChannel[RoomEvent]:
        """Subscribe to the room's events from now on.

        Every call creates an independent subscriber that receives every event, in
        order. The first call also receives, first, the events that happened since
        the room was joined (up to :data:`DEFAULT_EVENT_BUFFER` of them), so
        subscribing right after ``open_room`` misses nothing. To see the current
        state as well, subscribe first and then read :attr:`remote_participants`:
        an event for a participant already in that snapshot may follow (or precede
        it), so handle joins idempotently.

        Args:
            max_buffer_size: Events held for this consumer. Once it is full,
                newer events are dropped for this consumer only (counted in
                :meth:`statistics`); the native thread never waits.

        Returns:
            A receive channel; it ends (``EndOfChannel``) when the room closes.
            Close it to unsubscribe.

        Raises:
            trio.ClosedResourceError: The room is closed.
            ValueError: *max_buffer_size* is negative.
        """
        return self._handoff.subscribe(max_buffer_size)

    def _install(self) -> None:  # asyncio thread, via bridge.call
        rtc_room = self._rtc
        original_emit: Callable[..., None] = rtc_room.emit
        # livekit's EventEmitter keeps its callbacks in ``_events`` (name -> callbacks);
        # looking there first skips a call per event when nobody registered one. If
        # that private attribute is missing, every event goes to the original emit.
        listeners: Mapping[str, object] | None = getattr(rtc_room, "_events", None)
        if not isinstance(listeners, dict):
            listeners = None
        builders = BUILDERS
        room_builders = ROOM_BUILDERS
        put = self._handoff.put
        hooks: dict[str, Callable[[Any], None]] = {
            "track_published": self._on_track_published,
            "participant_connected": self._on_membership,
            "disconnected": self._on_disconnected,
        }

        def emit(name: str, *args: Any) -> None:
            builder = builders.get(name)
            try:
                event: RoomEvent | None
                if builder is not None:
                    event = builder(*args)
                else:
                    room_builder = room_builders.get(name)
                    event = room_builder(rtc_room) if room_builder is not None else None
                if event is not None:
                    put(event)
                    hook = hooks.get(name)
                    if hook is not None:
                        hook(event)
            except Exception:
                logger.exception("could not translate the room event %r", name)
            if listeners is None or name in listeners:
                original_emit(name, *args)  # callbacks registered on the rtc room itself

        rtc_room.emit = emit  # type: ignore[method-assign,assignment]

    def _on_track_published(self, event: TrackPublished) -> None:  # asyncio thread
        if self._manual_subscribe and event.track.kind in self._subscribe_kinds:
            event.publication.set_subscribed(True)

    def _on_membership(self, _event: object) -> None:  # asyncio thread
        try:
            self._token.run_sync_soon(self._wake_waiters)
        except trio.RunFinishedError:
            pass

    def _on_disconnected(self, event: Disconnected) -> None:  # asyncio thread
        self._disconnect_reason = event.reason
        self._on_membership(event)

    def _wake_waiters(self) -> None:  # Trio thread
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for_participant(
        self, identity: str | None = None, *, kind: int | Collection[int] | None = None
    ) -> rtc.RemoteParticipant:
        """Wait until a remote participant matching *identity* and *kind* is in the room.

        Returns at once if one is there already.

        Args:
            identity: The identity wanted; None for anyone.
            kind: A ``livekit.rtc.ParticipantKind`` value or several (e.g.
                ``{PARTICIPANT_KIND_STANDARD, PARTICIPANT_KIND_SIP}``); None for any.

        Returns:
            The ``livekit.rtc.RemoteParticipant``.

        Raises:
            trio.BrokenResourceError: The room disconnected while waiting.
            trio.ClosedResourceError: The room was closed.

        Cancellation:
            A checkpoint. Put a deadline around it: ``with trio.fail_after(30): ...``.
        """
        kinds = None if kind is None else ({kind} if isinstance(kind, int) else set(kind))
        while True:
            if self._closed:
                raise trio.ClosedResourceError("the room is closed")
            for participant in list(self._rtc.remote_participants.values()):
                if (identity is None or participant.identity == identity) and (
                    kinds is None or participant.kind in kinds
                ):
                    await trio.lowlevel.checkpoint()
                    return participant
            if self._disconnect_reason is not None:
                raise trio.BrokenResourceError("the room disconnected")
            await self._changed.wait()

    async def wait_disconnected(self) -> int:
        """Wait until the room is disconnected (by the server, or by closing it).

        Returns:
            The ``livekit.rtc.DisconnectReason`` value.

        Cancellation:
            A checkpoint.
        """
        while self._disconnect_reason is None and not self._closed:
            await self._changed.wait()
        await trio.lowlevel.checkpoint()
        return self._disconnect_reason or 0

    # ------------------------------------------------------------------ connection

    async def _connect(
        self, url: str, token: str, options: rtc.RoomOptions | None, connect_timeout: float
    ) -> None:
        options = dataclasses.replace(
            options if options is not None else rtc.RoomOptions(),
            auto_subscribe=not self._manual_subscribe,
        )
        if options.connect_timeout is None:
            options.connect_timeout = connect_timeout  # per native attempt
        with trio.move_on_after(connect_timeout) as scope:
            await self._bridge.run(self._connect_on_loop, url, token, options)
        if scope.cancelled_caught:
            raise ConnectError(f"could not connect to the room within {connect_timeout:g} s")

    async def _connect_on_loop(
        self, url: str, token: str, options: rtc.RoomOptions
    ) -> None:  # asyncio task, via bridge.run
        connecting = asyncio.ensure_future(self._connect_native(url, token, options))
        try:
            await asyncio.shield(connecting)
        except asyncio.CancelledError:
            self._abandon_connect(connecting)
            raise

    def _abandon_connect(self, connecting: asyncio.Future[None]) -> None:  # asyncio thread
        """Let a cancelled join finish on the loop, then leave the room if it got in.

        ``rtc.Room.connect`` must not be cancelled once started: if the native side's
        ConnectCallback has been sent, it waits for the SDK's ReadyForRoomEventRequest
        (sent at the end of ``connect``) and, when none comes, panics and SIGTERMs the
        whole process ("timed out waiting for ReadyForRoomEventRequest after
        ConnectCallback", livekit rust-sdks#1188). That is what cancelling a job
        while it joins its room would do. So the join runs on, unowned by Trio; a
        room that got in is disconnected at once, and the bridge's shutdown waits up
        to :data:`ABANDONED_JOIN_WAIT` for all of it. A join that succeeds even later,
        after the bridge is gone, still trips livekit's timeout: there is no native
        way to cancel a join in livekit 1.2.
        """
        logger.debug("abandoning a join of %s; it leaves once it gets in", self._rtc)
        loop = self._bridge.loop
        settled: asyncio.Future[None] = loop.create_future()
        unregister = add_native_cleanup(self._bridge, "room", _wait_abandoned_join, settled)

        def settle(_task: object = None) -> None:
            logger.debug("an abandoned join of %s is over", self._rtc)
            unregister()
            if not settled.done():
                settled.set_result(None)

        def joined(task: asyncio.Future[None]) -> None:
            if task.cancelled() or task.exception() is not None:
                settle()  # never got in (the exception is retrieved: nothing logged)
                return
            leaving = loop.create_task(self._rtc.disconnect())
            leaving.add_done_callback(_retrieve)
            leaving.add_done_callback(settle)

        connecting.add_done_callback(joined)

    async def _connect_native(self, url: str, token: str, options: rtc.RoomOptions) -> None:
        await self._rtc.connect(url, token, options)
        if self._manual_subscribe and self._subscribe_kinds:
            for participant in self._rtc.remote_participants.values():
                for publication in participant.track_publications.values():
                    if publication.kind in self._subscribe_kinds:
                        publication.set_subscribed(True)

    async def aclose(self) -> None:
        """Leave the room: disconnect, end every event channel, cancel RPC handlers.

        Idempotent; :func:`open_room` calls it on the way out.

        Cancellation:
            Shielded, and bounded by a few seconds: the native disconnect is left to
            the bridge's shutdown if it takes longer. Leaving right after a track was
            unpublished first waits until :data:`UNPUBLISH_SETTLE` after that (the
            native client's pending renegotiation).
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        settle = self._last_unpublish + UNPUBLISH_SETTLE
        if settle > trio.current_time() and self._rtc.isconnected():
            with sdk_cleanup(), trio.CancelScope(shield=True):
                await trio.sleep_until(settle)
        await close_native(
            self._bridge, self._rtc.disconnect, unregister=self._unregister_cleanup, what="a room"
        )
        self._handoff.close()
        self._wake_waiters()

    # ------------------------------------------------------------------ data

    async def publish_data(
        self,
        payload: bytes | str,
        *,
        reliable: bool = True,
        destination_identities: Collection[str] = (),
        topic: str | None = None,
    ) -> None:
        """Send a data packet to everyone, or to some participants.

        Args:
            payload: Bytes, or text (sent UTF-8 encoded).
            reliable: Ordered and retransmitted (True), or best effort.
            destination_identities: Recipients; empty for everyone.
            topic: A topic receivers can filter on.

        Raises:
            livekit.rtc.participant.PublishDataError: The native side refused it.

        Cancellation:
            A checkpoint; a packet already handed to the native side may still be sent.
        """
        await self._bridge.run(
            functools.partial(
                self.local_participant.publish_data,
                payload,
                reliable=reliable,
                destination_identities=list(destination_identities),
                topic=topic or "",
            )
        )

    async def send_text(
        self,
        text: str,
        *,
        topic: str = "",
        destination_identities: Collection[str] = (),
        attributes: Mapping[str, str] | None = None,
    ) -> rtc.TextStreamInfo:
        """Send a complete text stream (what LiveKit chat uses, topic ``lk.chat``).

        Returns:
            The stream's info (id, timestamp, ...).

        Raises:
            livekit.rtc.StreamError: The native side failed to send it.
        """
        info: rtc.TextStreamInfo = await self._bridge.run(
            functools.partial(
                self.local_participant.send_text,
                text,
                topic=topic,
                destination_identities=list(destination_identities) or None,
                attributes=dict(attributes) if attributes else None,
            )
        )
        return info

    async def send_bytes(
        self,
        data: bytes,
        *,
        name: str | None = None,
        topic: str = "",
        mime_type: str | None = None,
        destination_identities: Collection[str] = (),
        attributes: Mapping[str, str] | None = None,
    ) -> rtc.ByteStreamInfo:
        """Send a complete byte stream.

        Returns:
            The stream's info.
        """
        info: rtc.ByteStreamInfo = await self._bridge.run(
            functools.partial(
                self.local_participant.send_bytes,
                data,
                name=name,
                topic=topic,
                mime_type=mime_type,
                destination_identities=list(destination_identities) or None,
                attributes=dict(attributes) if attributes else None,
            )
        )
        return info

    async def publish_transcription(
        self,
        segments: Collection[rtc.TranscriptionSegment],
        *,
        participant_identity: str | None = None,
        track_sid: str = "",
    ) -> None:
        """Publish transcription segments; other participants get ``TranscriptionReceived``.

        Args:
            segments: ``livekit.rtc.TranscriptionSegment`` values (``id``, ``text``,
                ``start_time`` / ``end_time`` in milliseconds, ``language``,
                ``final``). A segment sent again with the same id replaces it.
            participant_identity: Whose speech it is (default: this participant).
            track_sid: The audio track transcribed ("" if none).

        Raises:
            ValueError: A time is negative or not an integer (the native side
                cannot encode it).
            livekit.rtc.participant.PublishTranscriptionError: The native side
                refused it.
        """
        for segment in segments:
            for value in (segment.start_time, segment.end_time):
                if not isinstance(value, int) or value < 0:
                    raise ValueError("segment times must be integers >= 0 (milliseconds)")
        transcription = rtc.Transcription(
            participant_identity=participant_identity or self.local_participant.identity,
            track_sid=track_sid,
            segments=list(segments),
        )
        await self._bridge.run(self.local_participant.publish_transcription, transcription)

    @asynccontextmanager
    async def text_streams(
        self, topic: str = "", *, max_buffer_size: int = 16
    ) -> AsyncIterator[trio.MemoryReceiveChannel[TextStream]]:
        """Receive the text streams sent to *topic*, for the duration of the block.

        Example::

            async with room.text_streams("lk.chat") as streams:
                async for stream in streams:
                    print(stream.identity, await stream.read_all())

        Args:
            topic: The topic to handle (one handler per topic and room).
            max_buffer_size: Streams waiting to be taken. A stream arriving when
                the channel is full is closed (the sender sees it aborted) and
                counted in ``statistics().streams_dropped``.

        Yields:
            A receive channel of :class:`TextStream`.

        Raises:
            ValueError: A handler for *topic* is already registered.

        Cancellation:
            Leaving the block unregisters the topic and closes every stream it
            delivered (shielded, bounded).
        """
        async with self._data_streams(
            TextStream, self._rtc.register_text_stream_handler,
            self._rtc.unregister_text_stream_handler, topic, max_buffer_size,
        ) as streams:  # fmt: skip
            yield streams

    @asynccontextmanager
    async def byte_streams(
        self, topic: str = "", *, max_buffer_size: int = 16
    ) -> AsyncIterator[trio.MemoryReceiveChannel[ByteStream]]:
        """Receive the byte streams (files) sent to *topic*; as :meth:`text_streams`."""
        async with self._data_streams(
            ByteStream, self._rtc.register_byte_stream_handler,
            self._rtc.unregister_byte_stream_handler, topic, max_buffer_size,
        ) as streams:  # fmt: skip
            yield streams

    @asynccontextmanager
    async def _data_streams(
        self,
        cls: Callable[[AsyncioBridge, Any, str], _DataStream[Any]],
        register: Callable[[str, Callable[[Any, str], None]], None],
        unregister: Callable[[str], None],
        topic: str,
        max_buffer_size: int,
    ) -> AsyncIterator[Any]:
        if self._closed:
            raise trio.ClosedResourceError("the room is closed")
        send, receive = trio.open_memory_channel[Any](max_buffer_size)
        delivered: list[_DataStream[Any]] = []
        bridge = self._bridge

        def deliver(stream: _DataStream[Any]) -> None:  # Trio thread
            try:
                send.send_nowait(stream)
                delivered.append(stream)
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                self._streams_dropped += 1
                stream._close_threadsafe()

        def on_stream(reader: Any, identity: str) -> None:  # asyncio thread
            stream = cls(bridge, reader, identity)
            try:
                self._token.run_sync_soon(deliver, stream)
            except trio.RunFinishedError:
                reader.close()

        await bridge.call(register, topic, on_stream)
        try:
            yield receive
        finally:
            send.close()
            with (
                sdk_cleanup(),
                trio.CancelScope(shield=True),
                trio.move_on_after(DISCONNECT_TIMEOUT),
            ):
                try:
                    await bridge.call(unregister, topic)
                except trio.ClosedResourceError:
                    pass
            for stream in delivered:
                stream._close_threadsafe()
            while True:
                try:
                    receive.receive_nowait()._close_threadsafe()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    break

    # ------------------------------------------------------------------ RPC

    async def register_rpc_method(self, method: str, handler: RpcHandler) -> None:
        """Handle incoming RPC calls of *method* with a Trio coroutine.

        Each call runs ``await handler(data)`` as a task in the room's nursery and
        answers the caller with the string it returns. Raise
        ``livekit.rtc.RpcError`` to answer with an error code; any other exception
        answers APPLICATION_ERROR (and is logged by livekit). If the caller's
        response timeout passes or the room disconnects, the handler is cancelled.

        Args:
            method: The method name (registering it again replaces the handler).
            handler: ``async def handler(data: livekit.rtc.RpcInvocationData) -> str``.
        """
        portal = self._portal

        async def invoke(data: rtc.RpcInvocationData) -> str:  # asyncio thread
            self._rpc_invocations += 1
            return await portal.run(handler, data)

        await self._bridge.call(self.local_participant.register_rpc_method, method, invoke)

    async def unregister_rpc_method(self, method: str) -> None:
        """Stop handling *method*; callers then get UNSUPPORTED_METHOD."""
        await self._bridge.call(self.local_participant.unregister_rpc_method, method)

    async def perform_rpc(
        self,
        destination_identity: str,
        method: str,
        payload: str,
        *,
        response_timeout: float | None = None,
    ) -> str:
        """Call *method* on another participant and return its answer.

        Args:
            destination_identity: Who to call.
            method: The method name.
            payload: The request payload (a string, often JSON).
            response_timeout: Seconds the callee has to answer (native default 10 s).

        Returns:
            The callee's response payload.

        Raises:
            livekit.rtc.RpcError: The call failed (timeout, unsupported method,
                recipient gone, or an error the handler raised), with its code.

        Cancellation:
            A checkpoint; cancelling abandons the call (the callee may still run it).
        """
        response: str = await self._bridge.run(
            functools.partial(
                self.local_participant.perform_rpc,
                destination_identity=destination_identity,
                method=method,
                payload=payload,
                response_timeout=response_timeout,
            )
        )
        return response

    # ------------------------------------------------------------------ media out

    @asynccontextmanager
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
        """Publish an audio track fed from numpy, for the duration of the block.

        Example::

            async with room.publish_audio(sample_rate=24000) as out:
                async for chunk in tts(text):     # int16 arrays of any length
                    await out.write(chunk)
                await out.wait_for_playout()

        Args:
            sample_rate: Rate of the samples you write.
            num_channels: Interleaved channels of the samples you write.
            name: The track name.
            source: ``livekit.rtc.TrackSource`` value.
            queue_ms: Audio buffered ahead of real time (a positive multiple of 10).
            max_bitrate: Encoder ceiling in bits per second (None: livekit's default).
            dtx: Opus discontinuous transmission (None: livekit's default).
            red: Redundant audio encoding (None: livekit's default).

        Yields:
            The :class:`~._tracks.AudioOutput`; ``out.publication`` is set.

        Raises:
            ValueError: Parameters the native source cannot take.
            livekit.rtc.participant.PublishTrackError: The server refused the track.

        Cancellation:
            Leaving the block unpublishes the track and closes the source (shielded,
            bounded). Audio still queued is dropped.
        """
        async with open_audio_output(
            sample_rate=sample_rate, num_channels=num_channels, name=name, queue_ms=queue_ms
        ) as output:
            options = publish_options(source, max_bitrate=max_bitrate, dtx=dtx, red=red)
            output.publication = await self._publish(output.track, options)
            try:
                yield output
            finally:
                await self._unpublish(output.publication)

    @asynccontextmanager
    async def publish_video(
        self,
        width: int,
        height: int,
        *,
        name: str = "agent-video",
        source: int = rtc.TrackSource.SOURCE_CAMERA,
        is_screencast: bool = False,
        max_bitrate: int | None = None,
        max_framerate: float | None = None,
        simulcast: bool | None = None,
        codec: int | str | None = None,
    ) -> AsyncIterator[VideoOutput]:
        """Publish a video track fed from numpy frames, for the duration of the block.

        Args:
            width: Nominal width.
            height: Nominal height.
            name: The track name.
            source: ``livekit.rtc.TrackSource`` value.
            is_screencast: Tune the encoder for screen content.
            max_bitrate: Encoder ceiling in bits per second for the top layer
                (None: livekit's default for the size).
            max_framerate: Encoder frame-rate ceiling (None: livekit's default).
            simulcast: Publish several layers (``low``/``medium``/``high``) that
                subscribers choose between (None: livekit's default: on for sizes
                that have several layers, e.g. 640x360 and up; the dev server relays a
                single layer, so publish to it with ``simulcast=False``).
            codec: ``livekit.rtc.VideoCodec`` value or name (``"vp8"``, ``"h264"``,
                ``"vp9"``, ``"av1"``, ``"h265"``; None: VP8).

        Raises:
            ValueError: An unknown codec or a non-positive bitrate/frame rate.

        Yields:
            The :class:`~._tracks.VideoOutput`; write frames at the rate you want.

        Cancellation:
            As :meth:`publish_audio`.
        """
        async with open_video_output(
            width, height, name=name, is_screencast=is_screencast
        ) as output:
            options = publish_options(
                source,
                max_bitrate=max_bitrate,
                max_framerate=max_framerate,
                simulcast=simulcast,
                codec=codec,
                video_height=height,
            )
            output.publication = await self._publish(output.track, options)
            try:
                yield output
            finally:
                await self._unpublish(output.publication)

    async def _publish(
        self, track: rtc.LocalTrack, options: rtc.TrackPublishOptions
    ) -> rtc.LocalTrackPublication:
        publication: rtc.LocalTrackPublication = await self._bridge.run(
            self.local_participant.publish_track, track, options
        )
        return publication

    async def _unpublish(self, publication: rtc.LocalTrackPublication) -> None:
        if self._closed or not self._rtc.isconnected():
            return  # disconnecting unpublished everything
        with (
            sdk_cleanup(),
            trio.CancelScope(shield=True),
            trio.move_on_after(DISCONNECT_TIMEOUT),
        ):
            try:
                await self._bridge.run(self.local_participant.unpublish_track, publication.sid)
            except Exception:
                logger.debug("unpublishing %s failed", publication.sid, exc_info=True)
            finally:
                self._last_unpublish = trio.current_time()


async def _wait_abandoned_join(settled: asyncio.Future[None]) -> None:  # bridge shutdown
    try:
        async with asyncio.timeout(ABANDONED_JOIN_WAIT):
            await asyncio.shield(settled)
    except TimeoutError:
        logger.debug("an abandoned join was still under way when the bridge shut down")


def _retrieve(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.debug("leaving an abandoned room failed", exc_info=task.exception())


@asynccontextmanager
async def _open_unconnected_room(
    *, auto_subscribe: AutoSubscribe = AutoSubscribe.AUDIO_ONLY
) -> AsyncIterator[Room]:
    """A :class:`Room` whose rtc room exists on the bridge but is not connected.

    The lower tier of :func:`open_room`; tests and benchmarks drive its events offline
    by calling the rtc room's event handler on the bridge.
    """
    async with open_bridge() as bridge, open_owned_nursery() as nursery:
        rtc_room = await bridge.call(functools.partial(rtc.Room, loop=bridge.loop))
        room = Room(bridge, rtc_room, nursery, auto_subscribe)
        await bridge.call(room._install)
        room._unregister_cleanup = add_native_cleanup(bridge, "room", rtc_room.disconnect)
        try:
            yield room
        finally:
            await room.aclose()
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_room(
    url: str,
    token: str,
    *,
    auto_subscribe: AutoSubscribe = AutoSubscribe.AUDIO_ONLY,
    connect_timeout: float = 10.0,
    options: rtc.RoomOptions | None = None,
) -> AsyncIterator[Room]:
    """Join a LiveKit room for the duration of the block.

    Example::

        async with open_room(url, token) as room:
            events = room.events()
            caller = await room.wait_for_participant()
            async for event in events:
                ...

    Args:
        url: The LiveKit server URL (``ws://`` or ``wss://``).
        token: A join token for the room.
        auto_subscribe: Which remote tracks to subscribe to by ourselves.
        connect_timeout: Deadline for joining, in seconds. The native client
            retries for about 20 s and ignores its own timeout, hence this one.
        options: Further ``livekit.rtc.RoomOptions`` (encryption, RTC
            configuration, ...); its ``auto_subscribe`` is overridden.

    Yields:
        The connected :class:`Room`.

    Raises:
        ConnectError: Joining failed (refused, bad token, timed out).

    Cancellation:
        Joining is cancellable and returns at once, but the native join itself is
        never cancelled (livekit kills the process when a join it has answered is
        not confirmed): it runs on in the background on the bridge, and leaves the
        room as soon as it gets in (native retries may linger until they give up).
        Leaving the block, normally or by an exception or cancellation, disconnects
        (shielded and bounded, a few seconds), ends every event channel and cancels
        the room's tasks (RPC handlers).
    """
    async with _open_unconnected_room(auto_subscribe=auto_subscribe) as room:
        await room._connect(url, token, options, connect_timeout)
        yield room
