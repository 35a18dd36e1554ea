"""Room signalling (``/rtc/v1``): participants joining rooms over real WebRTC.

The WebSocket side runs in Trio (one task per participant, under the ASGI
handler); every aiortc object lives on the asyncio bridge (``_peer.py``), reached
with ``bridge.call`` / ``bridge.run``. What the ``livekit.rtc`` client (1.2.x)
needs, and what is done:

- ``GET /rtc/v1?join_request=<base64url WrappedJoinRequest>`` with the token in
  ``Authorization: Bearer``: the token needs ``roomJoin`` and a ``room``; the room
  is created if needed (automatic dispatch, as in Go); ``JoinResponse`` at once.
- One peer connection per participant: the client offers, the server answers.
  ``add_track`` -> ``track_published``; the track is announced to the others
  (``ParticipantUpdate``) once its media arrives. To send a track to a client the
  server sends ``media_sections_requirement`` and fills a recv-only section of
  the client's next offer.
- Data packets are relayed on the asyncio loop (``MediaRoom.relay_data``).
- Other participants get ``ParticipantUpdate`` on join, publish, unpublish,
  metadata changes and leave; the room registry's agent-dispatch hooks are called.
- ``/rtc`` (the dual-connection path a client falls back to, or asks for with
  ``single_peer_connection=False``): the client's publisher connection is
  answered as above; media and data to the client go on a server-offered
  *subscriber* connection (``SubscriberPeer``), renegotiated (one offer at a
  time) when subscriptions change.
- Not done: simulcast, reconnect/resume.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import attrs
import trio
from aiortc import MediaStreamTrack
from google.protobuf.message import DecodeError
from livekit.protocol import models as models_pb
from livekit.protocol import rtc as rtc_pb

from .._bridge import AsyncioBridge, open_bridge
from ._auth import ERR_PERMISSION_DENIED, AuthFailure, Grants
from ._ids import new_guid
from ._peer import DataRecord, MediaRoom, Peer, SubscriberPeer, restrict_ice_to_loopback
from ._rooms import RoomRegistry
from ._speakers import LevelTap, observe_rooms
from ._tracksettings import TrackSettingsLog
from ._transport import WebSocketTransport

__all__ = ["RTC_V0_PATH", "RTC_V1_PATH", "RtcService", "parse_join_request"]

logger = logging.getLogger("trio_lkagent.devserver.rtc")

RTC_V1_PATH = "/rtc/v1"
#: The dual peer connection path (clients fall back to it when ``/rtc/v1`` is 404).
RTC_V0_PATH = "/rtc"
#: Bound on a client's answer to a subscriber offer (dual connection).
ANSWER_TIMEOUT = 10.0
PARTICIPANT_PREFIX = "PA_"
TRACK_PREFIX = "TR_"
#: Signal messages queued for one client before it counts as too slow and is dropped.
OUTBOX_SIZE = 1024
PING_INTERVAL = 5
PING_TIMEOUT = 15
#: Bound on the cleanup of one participant (peer connection close).
CLOSE_TIMEOUT = 2.0

_KINDS = {
    "": models_pb.ParticipantInfo.STANDARD,
    "standard": models_pb.ParticipantInfo.STANDARD,
    "ingress": models_pb.ParticipantInfo.INGRESS,
    "egress": models_pb.ParticipantInfo.EGRESS,
    "sip": models_pb.ParticipantInfo.SIP,
    "agent": models_pb.ParticipantInfo.AGENT,
}


def parse_join_request(value: str | None) -> rtc_pb.JoinRequest:
    """Decode the ``join_request`` query parameter (base64url ``WrappedJoinRequest``).

    Raises:
        AuthFailure: (status 400) missing or undecodable.
    """
    if not value:
        raise AuthFailure("missing join_request", 400)
    try:
        wrapped = rtc_pb.WrappedJoinRequest()
        padded = value + "=" * (-len(value) % 4)
        wrapped.ParseFromString(base64.b64decode(padded, altchars=b"-_", validate=True))
        raw = wrapped.join_request
        if wrapped.compression == rtc_pb.WrappedJoinRequest.GZIP:
            raw = gzip.decompress(raw)
        join = rtc_pb.JoinRequest()
        join.ParseFromString(raw)
    except (binascii.Error, DecodeError, OSError, EOFError, zlib.error) as exc:
        # zlib.error: a corrupt gzip body (truncated or bad deflate data).
        raise AuthFailure(f"invalid join_request: {exc}", 400) from None
    return join


@attrs.define(eq=False)
class _Publication:
    info: models_pb.TrackInfo
    mid: str
    track: MediaStreamTrack
    publisher: _Session
    #: The level/quality tap of an audio track (active speakers, connection quality).
    tap: LevelTap | None = None


class _RtcRoom:
    def __init__(self, room: models_pb.Room, media: MediaRoom) -> None:
        self.room = room
        self.media = media
        self.sessions: dict[str, _Session] = {}

    @property
    def name(self) -> str:
        return self.room.name

    def publications(self) -> Iterator[_Publication]:
        for session in self.sessions.values():
            yield from session.published.values()


class _Session:
    """One participant connected over ``/rtc/v1``."""

    def __init__(
        self,
        *,
        room: _RtcRoom,
        info: models_pb.ParticipantInfo,
        peer: Peer,
        bridge: AsyncioBridge,
        transport: WebSocketTransport,
        outbox: trio.MemorySendChannel[rtc_pb.SignalResponse],
    ) -> None:
        self.room = room
        self.transport = transport
        self.info = info
        self.peer = peer
        self.bridge = bridge
        self.outbox = outbox
        self.scope = trio.CancelScope()
        self.nursery: trio.Nursery | None = None
        self.pending: dict[str, models_pb.TrackInfo] = {}  # cid -> announced track
        self.published: dict[str, _Publication] = {}  # TR_ sid -> publication
        #: Track sids this client receives (or is being set up to receive).
        self.subscribed: set[str] = set()
        #: ``auto_subscribe`` of its join request: new tracks are sent at once.
        self.auto_subscribe = True
        #: The subscriber connection of a dual-connection (``/rtc``) client.
        self.subscriber: SubscriberPeer | None = None
        self._negotiating = trio.Lock()
        self._answered: trio.Event | None = None
        self._offer_id = 0
        self.done = trio.Event()
        #: Set when the server ends the session: sent to the client in a ``leave``.
        self.leave_reason: models_pb.DisconnectReason | None = None

    def disconnect(self, reason: models_pb.DisconnectReason) -> None:
        """End the session from the server side; the client is told *reason*."""
        if self.leave_reason is None:
            self.leave_reason = reason
        self.scope.cancel()

    @property
    def identity(self) -> str:
        return self.info.identity

    def send(self, message: rtc_pb.SignalResponse) -> None:
        """Queue *message*; a client that lets OUTBOX_SIZE messages pile up is dropped."""
        try:
            self.outbox.send_nowait(message)
        except trio.WouldBlock:
            logger.warning("signal queue of %s is full: disconnecting it", self.identity)
            self.scope.cancel()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def subscribe(self, publication: _Publication) -> None:
        """Start sending *publication*'s media to this client (in the background)."""
        sid = publication.info.sid
        if self.nursery is not None and sid not in self.subscribed:
            self.subscribed.add(sid)
            self.nursery.start_soon(self.guarded, self._subscribe, publication)

    async def guarded(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run a background step of this session; if it fails (a peer that is
        closing, an SDP aiortc refuses, ...), this session ends, nobody else's."""
        try:
            await fn(*args)
        except Exception as exc:
            logger.warning(
                "%s failed for %s, disconnecting it: %r", fn.__name__, self.identity, exc
            )
            self.scope.cancel()

    def unsubscribe(self, sid: str) -> None:
        """Stop sending track *sid* to this client."""
        if sid in self.subscribed:
            self.subscribed.discard(sid)
            if self.subscriber is None:
                self.bridge.loop.call_soon_threadsafe(self.peer.stop_track, sid)
            elif self.nursery is not None:
                self.nursery.start_soon(self.guarded, self._unsubscribe_dual, sid)

    async def _unsubscribe_dual(self, sid: str) -> None:
        assert self.subscriber is not None
        if await self.bridge.call(self.subscriber.remove_track, sid):
            await self.negotiate()

    async def negotiate(self) -> None:
        """(Dual connection) offer the subscriber connection as it is now, and wait
        for the client's answer; one offer outstanding at a time."""
        assert self.subscriber is not None
        async with self._negotiating:
            sdp = await self.bridge.run(self.subscriber.offer)
            self._offer_id += 1
            self._answered = trio.Event()
            self.send(
                rtc_pb.SignalResponse(
                    offer=rtc_pb.SessionDescription(type="offer", sdp=sdp, id=self._offer_id)
                )
            )
            with trio.move_on_after(ANSWER_TIMEOUT) as scope:
                await self._answered.wait()
            if scope.cancelled_caught:
                logger.warning("%s did not answer the subscriber offer", self.identity)

    async def on_answer(self, answer: rtc_pb.SessionDescription) -> None:
        """(Dual connection) the client answered the subscriber offer."""
        if self.subscriber is None:
            logger.info("%s sent an answer without an offer", self.identity)
            return
        await self.bridge.run(self.subscriber.set_answer, answer.sdp)
        if self._answered is not None:
            self._answered.set()

    async def _subscribe(self, publication: _Publication) -> None:
        info = publication.info
        if self.subscriber is not None:
            await self.bridge.call(
                self.subscriber.add_track,
                publication.track,
                info.sid,
                publication.publisher.info.sid,
            )
            await self.negotiate()
            return
        await self.bridge.call(
            self.peer.send_track, publication.track, info.sid, publication.publisher.info.sid
        )
        # aiortc starts senders only when (re)negotiated after DTLS is up.
        await self.bridge.run(self.peer.wait_connected)
        audio = info.type == models_pb.AUDIO
        self.send(
            rtc_pb.SignalResponse(
                media_sections_requirement=rtc_pb.MediaSectionsRequirement(
                    num_audios=1 if audio else 0, num_videos=0 if audio else 1
                )
            )
        )

    async def write_loop(self, outbox: trio.MemoryReceiveChannel[rtc_pb.SignalResponse]) -> None:
        async with outbox:
            async for message in outbox:
                try:
                    await self.transport.send(message.SerializeToString())
                except trio.ClosedResourceError:
                    return


class RtcService:
    """Serves ``/rtc/v1``: rooms of real ``livekit.rtc`` clients.

    Args:
        nursery: The server's nursery (it holds the asyncio bridge open).
        registry: The room registry: rooms are created there and its
            agent-dispatch hooks are called on join, first publication and leave.
        server_info: Sent in every ``JoinResponse``.
    """

    def __init__(
        self, *, nursery: trio.Nursery, registry: RoomRegistry, server_info: models_pb.ServerInfo
    ) -> None:
        self._nursery = nursery
        self._registry = registry
        self._server_info = server_info
        self._bridge: AsyncioBridge | None = None
        self._bridge_lock = trio.Lock()
        self._rooms: dict[str, _RtcRoom] = {}
        self._sessions: set[_Session] = set()
        #: Subscribers' ``UpdateTrackSettings``, recorded (``disabled`` is honoured).
        self.track_settings = TrackSettingsLog()

    # -- lifetime ----------------------------------------------------------------

    async def _get_bridge(self) -> AsyncioBridge:
        async with self._bridge_lock:
            if self._bridge is None:
                restrict_ice_to_loopback()
                self._bridge = await self._nursery.start(self._hold_bridge)
                # Active speakers and connection quality, for every room from now on.
                self._nursery.start_soon(observe_rooms, lambda: self._rooms.values(), self._bridge)
            return self._bridge

    async def _hold_bridge(self, *, task_status: trio.TaskStatus[AsyncioBridge]) -> None:
        async with open_bridge() as bridge:
            task_status.started(bridge)
            await trio.sleep_forever()

    async def close_all(self) -> None:
        """Disconnect every participant and wait until their peers are closed."""
        await self._disconnect(list(self._sessions), models_pb.SERVER_SHUTDOWN)

    async def remove_participant(self, room_name: str, identity: str) -> bool:
        """Disconnect *identity* from *room_name* (``RemoveParticipant``).

        Returns:
            False if it is not connected here.
        """
        room = self._rooms.get(room_name)
        session = room.sessions.get(identity) if room is not None else None
        await self._disconnect([session] if session else [], models_pb.PARTICIPANT_REMOVED)
        return session is not None

    async def close_room(self, room_name: str) -> None:
        """Disconnect everybody in *room_name* (the room was deleted or closed)."""
        room = self._rooms.get(room_name)
        sessions = list(room.sessions.values()) if room is not None else []
        await self._disconnect(sessions, models_pb.ROOM_DELETED)

    @staticmethod
    async def _disconnect(sessions: list[_Session], reason: models_pb.DisconnectReason) -> None:
        await trio.lowlevel.checkpoint()
        for session in sessions:
            session.disconnect(reason)
        for session in sessions:
            await session.done.wait()

    # -- the upgrade ---------------------------------------------------------------

    @staticmethod
    def check_join(
        transport: WebSocketTransport, grants: Grants | None, *, dual: bool = False
    ) -> rtc_pb.JoinRequest:
        """Check the token's grants and decode the join request, before the upgrade.

        The dual-connection path (``/rtc``) has no join request: its settings
        come from query parameters (``auto_subscribe``).

        Raises:
            AuthFailure: no token, no ``roomJoin`` grant, no room or identity
                (401); a bad join request (400).
        """
        video = grants.claims.video if grants is not None else None
        if grants is None or video is None or not video.room_join or not video.room:
            raise AuthFailure(ERR_PERMISSION_DENIED)
        if not grants.claims.identity:
            raise AuthFailure("identity cannot be empty")
        if dual:
            auto = transport.query("auto_subscribe")
            settings = rtc_pb.ConnectionSettings(auto_subscribe=auto not in ("0", "false"))
            return rtc_pb.JoinRequest(connection_settings=settings)
        return parse_join_request(transport.query("join_request"))

    async def serve_connection(
        self,
        transport: WebSocketTransport,
        grants: Grants,
        join: rtc_pb.JoinRequest,
        *,
        dual: bool = False,
    ) -> None:
        """Serve one accepted ``/rtc/v1`` (or, *dual*, ``/rtc``) WebSocket until the
        participant leaves."""
        claims = grants.claims
        video = claims.video
        assert video is not None
        bridge = await self._get_bridge()
        room = await self._get_room(bridge, video.room)
        old = room.sessions.get(claims.identity)
        if old is not None:  # Go: the newer connection replaces the older one
            old.disconnect(models_pb.DUPLICATE_IDENTITY)
            await old.done.wait()
        now = time.time()
        info = models_pb.ParticipantInfo(
            sid=new_guid(PARTICIPANT_PREFIX),
            identity=claims.identity,
            name=claims.name,
            metadata=claims.metadata,
            state=models_pb.ParticipantInfo.ACTIVE,
            joined_at=int(now),
            joined_at_ms=int(now * 1000),
            version=1,
            kind=_KINDS.get(claims.kind.lower(), models_pb.ParticipantInfo.STANDARD),
            permission=models_pb.ParticipantPermission(
                can_subscribe=video.can_subscribe,
                can_publish=video.can_publish,
                can_publish_data=video.can_publish_data,
                hidden=bool(video.hidden),
                agent=bool(video.agent),
                can_update_metadata=bool(video.can_update_own_metadata),
            ),
        )
        info.attributes.update(claims.attributes or {})
        peer = await bridge.call(Peer, room.media, info.identity, info.sid)
        forget_peer = bridge.add_cleanup(peer.close)
        subscriber: SubscriberPeer | None = None
        if dual:
            subscriber = peer.downstream = await bridge.call(SubscriberPeer, room.media)
            forget_subscriber = bridge.add_cleanup(subscriber.close)
        send, receive = trio.open_memory_channel[rtc_pb.SignalResponse](OUTBOX_SIZE)
        session = _Session(
            room=room, info=info, peer=peer, bridge=bridge, transport=transport, outbox=send
        )
        session.subscriber = subscriber
        self._sessions.add(session)
        try:
            with session.scope:
                async with trio.open_nursery() as nursery:
                    session.nursery = nursery
                    nursery.start_soon(session.write_loop, receive)
                    await self._join(session, join)
                    await self._read_loop(session, transport)
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                self._leave(session)
                # Tell the client first: closing its peer connection before the
                # leave arrives makes it log "data channel closed unexpectedly".
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await self._send_leave(session)
                    try:
                        await transport.close(1000)
                    except (trio.BusyResourceError, trio.BrokenResourceError):
                        pass  # the connection is going away under us: nothing to tell
                with trio.move_on_after(CLOSE_TIMEOUT):
                    await bridge.run(peer.close)
                    forget_peer()
                    if subscriber is not None:
                        await bridge.run(subscriber.close)
                        forget_subscriber()
                self._sessions.discard(session)
                session.done.set()

    @staticmethod
    async def _send_leave(session: _Session) -> None:
        if session.leave_reason is None:
            return
        leave = rtc_pb.LeaveRequest(
            reason=session.leave_reason, action=rtc_pb.LeaveRequest.DISCONNECT
        )
        try:
            await session.transport.send(rtc_pb.SignalResponse(leave=leave).SerializeToString())
        except (trio.ClosedResourceError, trio.BusyResourceError, trio.BrokenResourceError):
            pass

    async def _get_room(self, bridge: AsyncioBridge, name: str) -> _RtcRoom:
        room = self._rooms.get(name)
        if room is None:
            proto = self._registry.create_room(name)
            media = await bridge.call(MediaRoom)
            room = self._rooms.get(name)  # another participant may have made it meanwhile
            if room is None:
                room = self._rooms[name] = _RtcRoom(proto, media)
        return room

    # -- membership --------------------------------------------------------------

    async def _join(self, session: _Session, join: rtc_pb.JoinRequest) -> None:
        room = session.room
        if join.HasField("connection_settings"):
            session.auto_subscribe = join.connection_settings.auto_subscribe
        others = [s.info for s in room.sessions.values()]
        room.sessions[session.identity] = session
        room.room.num_participants = len(room.sessions)
        # No checkpoint between taking the snapshot of the others, registering this
        # session and queueing its JoinResponse: another participant's broadcast must
        # not reach this client before its JoinResponse (the client drops it, and
        # never learns about that participant).
        session.send(
            rtc_pb.SignalResponse(
                join=rtc_pb.JoinResponse(
                    room=room.room,
                    participant=session.info,
                    other_participants=others,
                    server_version=self._server_info.version,
                    server_info=self._server_info,
                    subscriber_primary=session.subscriber is not None,
                    ping_interval=PING_INTERVAL,
                    ping_timeout=PING_TIMEOUT,
                )
            )
        )
        logger.info("%s joined room %s", session.identity, room.name)
        self._broadcast(room, session.info, skip=session)
        self._registry.on_participant_joined(room.name, session.info)
        await session.bridge.call(room.media.add, session.peer)
        if join.HasField("publisher_offer"):
            await self._on_offer(session, join.publisher_offer)
        if session.subscriber is not None and session.nursery is not None:
            # The subscriber connection is the primary one: offer it at once (its
            # data channels carry data to the client).
            session.nursery.start_soon(session.guarded, session.negotiate)
        if session.auto_subscribe:
            for publication in list(room.publications()):
                session.subscribe(publication)

    def _leave(self, session: _Session) -> None:
        room = session.room
        if room.sessions.get(session.identity) is not session:
            return
        del room.sessions[session.identity]
        room.room.num_participants = len(room.sessions)
        for sid in list(session.published):
            self._unpublish(session, sid, announce=False)
        session.info.state = models_pb.ParticipantInfo.DISCONNECTED
        # As the Go server reports it: the client's own leave, or the server's reason.
        session.info.disconnect_reason = (
            session.leave_reason if session.leave_reason is not None else models_pb.CLIENT_INITIATED
        )
        session.info.version += 1
        self._broadcast(room, session.info)
        self._registry.on_participant_left(room.name, session.identity)
        logger.info("%s left room %s", session.identity, room.name)
        if not room.sessions and self._rooms.get(room.name) is room:
            del self._rooms[room.name]

    def _broadcast(
        self, room: _RtcRoom, info: models_pb.ParticipantInfo, skip: _Session | None = None
    ) -> None:
        update = rtc_pb.SignalResponse(update=rtc_pb.ParticipantUpdate(participants=[info]))
        for other in list(room.sessions.values()):
            if other is not skip:
                other.send(update)

    # -- requests ----------------------------------------------------------------

    async def _read_loop(self, session: _Session, transport: WebSocketTransport) -> None:
        while True:
            data = await transport.receive()
            if data is None:
                return
            request = rtc_pb.SignalRequest()
            try:
                request.ParseFromString(data.encode() if isinstance(data, str) else data)
            except DecodeError:
                logger.info("undecodable signal request from %s", session.identity)
                continue
            try:
                keep_going = await self._handle(session, request)
            except Exception as exc:
                # An offer on a peer that is closing, an SDP aiortc cannot take, ...:
                # this participant's session ends; everyone else goes on.
                logger.warning(
                    "signal %s from %s failed, disconnecting it: %r",
                    request.WhichOneof("message"),
                    session.identity,
                    exc,
                )
                return
            if not keep_going:
                return

    async def _handle(self, session: _Session, request: rtc_pb.SignalRequest) -> bool:
        which = request.WhichOneof("message")
        if which not in ("ping", "ping_req"):
            logger.debug("signal from %s: %s", session.identity, which)
        if which == "ping_req":
            session.send(
                rtc_pb.SignalResponse(
                    pong_resp=rtc_pb.Pong(
                        last_ping_timestamp=request.ping_req.timestamp,
                        timestamp=int(time.time() * 1000),
                    )
                )
            )
        elif which == "ping":
            session.send(rtc_pb.SignalResponse(pong=int(time.time() * 1000)))
        elif which == "offer":
            await self._on_offer(session, request.offer)
        elif which == "trickle":
            trickle = request.trickle
            if trickle.target == rtc_pb.SUBSCRIBER and session.subscriber is not None:
                await session.bridge.run(session.subscriber.add_candidate, trickle.candidateInit)
            else:
                await session.bridge.run(session.peer.add_candidate, trickle.candidateInit)
        elif which == "answer":
            await session.on_answer(request.answer)
        elif which == "add_track":
            self._on_add_track(session, request.add_track)
        elif which == "mute":
            self._on_mute(session, request.mute)
        elif which == "update_metadata":
            self._on_update_metadata(session, request.update_metadata)
        elif which == "subscription":
            self._on_subscription(session, request.subscription)
        elif which == "track_setting":
            await self._on_track_setting(session, request.track_setting)
        elif which == "leave":
            return False
        return True

    def _on_add_track(self, session: _Session, add: rtc_pb.AddTrackRequest) -> None:
        audio = add.type == models_pb.AUDIO
        info = models_pb.TrackInfo(
            sid=new_guid(TRACK_PREFIX),
            type=add.type,
            name=add.name,
            source=add.source,
            muted=add.muted,
            width=add.width,
            height=add.height,
            mime_type="audio/opus" if audio else "video/vp8",
            stream=add.stream,
            disable_dtx=add.disable_dtx,
            disable_red=add.disable_red,
            stereo=add.stereo,
        )
        session.pending[add.cid] = info
        session.send(
            rtc_pb.SignalResponse(
                track_published=rtc_pb.TrackPublishedResponse(cid=add.cid, track=info)
            )
        )

    async def _on_offer(self, session: _Session, offer: rtc_pb.SessionDescription) -> None:
        answer = await session.bridge.run(session.peer.answer, offer.sdp)
        logger.debug(
            "answered %s: new tracks %s, sending %s",
            session.identity,
            [(t.kind, t.mid) for t in answer.new_tracks],
            sorted(answer.sending_mids),
        )
        session.send(
            rtc_pb.SignalResponse(
                answer=rtc_pb.SessionDescription(
                    type="answer",
                    sdp=answer.sdp,
                    id=offer.id,
                    mid_to_track_id=answer.mid_to_track_id,
                )
            )
        )
        for sid, publication in list(session.published.items()):
            if publication.mid not in answer.sending_mids:
                self._unpublish(session, sid, announce=True)
        for new in answer.new_tracks:
            info = session.pending.pop(new.track_id, None)
            if info is None:
                kind = models_pb.AUDIO if new.kind == "audio" else models_pb.VIDEO
                cid = next((c for c, t in session.pending.items() if t.type == kind), None)
                info = session.pending.pop(cid) if cid is not None else None
            if info is None:
                logger.info("%s sent an unannounced %s track", session.identity, new.kind)
                continue
            info.mid = new.mid
            self._publish(session, _Publication(info, new.mid, new.track, session, new.tap))

    def _publish(self, session: _Session, publication: _Publication) -> None:
        room = session.room
        session.published[publication.info.sid] = publication
        session.info.tracks.append(publication.info)
        self._changed(session, to_self=False)
        self._registry.on_track_published(room.name, session.info)
        for other in list(room.sessions.values()):
            if other is not session and other.auto_subscribe:
                other.subscribe(publication)

    def _unpublish(self, session: _Session, sid: str, *, announce: bool) -> None:
        publication = session.published.pop(sid, None)
        if publication is not None and publication.tap is not None:
            session.bridge.loop.call_soon_threadsafe(publication.tap.close)
        remaining = [t for t in session.info.tracks if t.sid != sid]
        del session.info.tracks[:]
        session.info.tracks.extend(remaining)
        for other in list(session.room.sessions.values()):
            if other is not session:
                other.unsubscribe(sid)
        if announce:
            self._changed(session, to_self=False)

    def _on_subscription(self, session: _Session, update: rtc_pb.UpdateSubscription) -> None:
        sids = set(update.track_sids)
        for tracks in update.participant_tracks:
            sids.update(tracks.track_sids)
        publications = {p.info.sid: p for p in session.room.publications()}
        for sid in sids:
            publication = publications.get(sid)
            if publication is None or publication.publisher is session:
                continue
            if update.subscribe:
                session.subscribe(publication)
            else:
                session.unsubscribe(sid)

    async def _on_track_setting(
        self, session: _Session, settings: rtc_pb.UpdateTrackSettings
    ) -> None:
        """Record the settings; honour ``disabled`` (pause / resume the down-track)."""
        self.track_settings.record(session.room.name, session.identity, settings)
        peer = session.subscriber if session.subscriber is not None else session.peer
        for sid in settings.track_sids:
            await session.bridge.call(peer.set_paused, sid, settings.disabled)

    def _on_mute(self, session: _Session, mute: rtc_pb.MuteTrackRequest) -> None:
        if self._set_muted(session, mute.sid, mute.muted):
            self._changed(session)

    @staticmethod
    def _set_muted(session: _Session, sid: str, muted: bool) -> models_pb.TrackInfo | None:
        for track in session.info.tracks:
            if track.sid == sid:
                track.muted = muted
                publication = session.published.get(sid)
                if publication is not None:
                    publication.info.muted = muted
                return track
        return None

    def _changed(self, session: _Session, *, to_self: bool = True) -> None:
        """*session*'s ParticipantInfo changed: bump its version, tell the room."""
        session.info.version += 1
        self._broadcast(session.room, session.info, skip=None if to_self else session)
        self._registry.on_participant_updated(session.room.name, session.info)

    def _on_update_metadata(
        self, session: _Session, update: rtc_pb.UpdateParticipantMetadata
    ) -> None:
        apply_participant_update(
            session.info, metadata=update.metadata, name=update.name, attributes=update.attributes
        )
        self._changed(session)
        if update.request_id:
            session.send(
                rtc_pb.SignalResponse(
                    request_response=rtc_pb.RequestResponse(
                        request_id=update.request_id, reason=rtc_pb.RequestResponse.OK
                    )
                )
            )

    # -- the Server API's side -----------------------------------------------------

    def _session(self, room_name: str, identity: str) -> _Session | None:
        room = self._rooms.get(room_name)
        return room.sessions.get(identity) if room is not None else None

    def update_participant(
        self,
        room_name: str,
        identity: str,
        *,
        metadata: str = "",
        name: str = "",
        attributes: Mapping[str, str] | None = None,
        permission: models_pb.ParticipantPermission | None = None,
    ) -> models_pb.ParticipantInfo | None:
        """``UpdateParticipant`` for a connected participant; everyone is told.

        Returns:
            The updated info, or None if *identity* is not connected here.
        """
        session = self._session(room_name, identity)
        if session is None:
            return None
        apply_participant_update(
            session.info, metadata=metadata, name=name, attributes=attributes, permission=permission
        )
        self._changed(session)
        return session.info

    def mute_track(
        self, room_name: str, identity: str, track_sid: str, muted: bool
    ) -> models_pb.TrackInfo | None:
        """``MutePublishedTrack``: the publisher is told to mute, the room sees it.

        Returns:
            The track, or None if the participant or track is not here.
        """
        session = self._session(room_name, identity)
        track = self._set_muted(session, track_sid, muted) if session is not None else None
        if session is None or track is None:
            return None
        session.send(
            rtc_pb.SignalResponse(mute=rtc_pb.MuteTrackRequest(sid=track_sid, muted=muted))
        )
        self._changed(session)
        return track

    def update_room_metadata(self, room_name: str, metadata: str) -> None:
        """``UpdateRoomMetadata``: every participant gets a ``room_update``."""
        room = self._rooms.get(room_name)
        if room is None:
            return
        room.room.metadata = metadata
        update = rtc_pb.SignalResponse(room_update=rtc_pb.RoomUpdate(room=room.room))
        for session in list(room.sessions.values()):
            session.send(update)

    async def send_data(self, room_name: str, packet: models_pb.DataPacket) -> None:
        """``SendData``: deliver *packet* from the server (no sender) to the room."""
        room = self._rooms.get(room_name)
        if room is None or not room.sessions:
            return
        bridge = next(iter(room.sessions.values())).bridge
        await bridge.call(room.media.send_from_server, packet)

    def data_log(self, room_name: str) -> list[DataRecord]:
        """The data packets relayed in *room_name* so far (newest last, bounded)."""
        room = self._rooms.get(room_name)
        return list(room.media.log) if room is not None else []


def apply_participant_update(
    info: models_pb.ParticipantInfo,
    *,
    metadata: str = "",
    name: str = "",
    attributes: Mapping[str, str] | None = None,
    permission: models_pb.ParticipantPermission | None = None,
) -> None:
    """Apply an update as Go does: empty metadata or name leave them as they are,
    an attribute with an empty value is deleted."""
    if metadata:
        info.metadata = metadata
    if name:
        info.name = name
    if permission is not None:
        info.permission.CopyFrom(permission)
    for key, value in (attributes or {}).items():
        if value:
            info.attributes[key] = value
        else:
            info.attributes.pop(key, None)
