"""The media side of the dev server's rooms: aiortc peer connections on the asyncio bridge.

Everything here is **asyncio code**: it runs on the project's one asyncio bridge
(``trio_lkagent._bridge``), reached from Trio with ``bridge.call`` (construction,
quick non-blocking calls) and ``bridge.run`` (coroutines). Nothing here touches
Trio objects.

- :class:`MediaRoom` relays data packets between the participants' peers entirely
  on the loop (order kept, no thread hop per packet) and fans published audio out
  through one :class:`aiortc.contrib.media.MediaRelay`.
- :class:`Peer` is one participant's single peer connection (``/rtc/v1``): the
  client offers, the peer answers; tracks to send wait for a client re-offer and
  fill one of its recv-only sections.

Two aiortc details are reached into, here only: the sender's msid (the LiveKit
client needs the stream id ``"<PA_sid>|<TR_sid>"``) and the transceiver's offered
direction (to find free recv-only sections and unpublished tracks). aioice drops
``127.0.0.1`` from its host candidates, and the dev server binds loopback only:
:func:`restrict_ice_to_loopback` makes aioice gather ``127.0.0.1`` alone
(process-wide, applied when the first room peer is made).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import uuid
from typing import Any

import aioice.ice
import attrs
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceCandidate,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay
from aiortc.sdp import candidate_from_sdp
from livekit.protocol import models as models_pb

from ._pausable import PausableTrack

__all__ = [
    "DataRecord",
    "MediaRoom",
    "NewTrack",
    "Peer",
    "SubscriberPeer",
    "restrict_ice_to_loopback",
]

logger = logging.getLogger("trio_lkagent.devserver.rtc")

RELIABLE_LABEL = "_reliable"
LOSSY_LABEL = "_lossy"
_SENDING = ("recvonly", "sendrecv")  # the offer's direction seen from our side
#: Data packets kept per channel for a client whose channel is not open yet (oldest dropped).
DATA_BACKLOG = 1024
#: Data packets a room remembers for inspection (oldest dropped).
DATA_LOG = 10_000


def _loopback_only(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else []


def _parse_candidate(candidate_init: str) -> RTCIceCandidate | None:
    """A trickled candidate (JSON ``RTCIceCandidateInit``); None for end-of-candidates."""
    init: dict[str, Any] = json.loads(candidate_init)
    text = init.get("candidate") or ""
    if not text:
        return None
    candidate = candidate_from_sdp(text.removeprefix("candidate:"))
    candidate.sdpMid = init.get("sdpMid")
    candidate.sdpMLineIndex = init.get("sdpMLineIndex")
    return candidate


def _clear_msid(sender: RTCRtpSender) -> None:
    """Give a freed section a neutral msid. Never an empty track id: aiortc writes
    ``a=msid:<stream> <track>`` always, and the ``livekit`` client aborts the
    process on ``a=msid:<stream> `` (SdpParseError unwrapped in rtc_session)."""
    sender._stream_id = str(uuid.uuid4())
    sender._track_id = str(uuid.uuid4())


def restrict_ice_to_loopback() -> None:
    """Make aioice gather only ``127.0.0.1`` host candidates (it skips loopback otherwise)."""
    aioice.ice.get_host_addresses = _loopback_only


@attrs.frozen
class DataRecord:
    """A data packet the server relayed in a room (for tests to inspect).

    Attributes:
        sender: Identity of the participant that sent it ("" from the Server API).
        reliable: Sent on the reliable channel.
        kind: Which ``DataPacket`` value it carried: ``"user"``, ``"rpc_request"``,
            ``"rpc_response"``, ``"rpc_ack"``, ``"stream_header"``,
            ``"stream_chunk"``, ``"stream_trailer"``, ...
        payload: The user payload (``kind == "user"``), else b"".
        topic: The user packet's topic.
        destination_identities: Whom it was for (empty: everyone).
    """

    sender: str
    reliable: bool
    kind: str
    payload: bytes
    topic: str
    destination_identities: tuple[str, ...]


@attrs.frozen
class NewTrack:
    """A track the client started sending, found in its latest offer."""

    track_id: str
    kind: str
    mid: str
    track: MediaStreamTrack


@attrs.frozen
class Answer:
    """What :meth:`Peer.answer` produced."""

    sdp: str
    mid_to_track_id: dict[str, str]
    new_tracks: list[NewTrack]
    #: Mids the client sends media on (a published track's mid missing: unpublished).
    sending_mids: frozenset[str]


@attrs.define
class _Outgoing:
    track: MediaStreamTrack
    track_sid: str
    participant_sid: str


class MediaRoom:
    """The peers of one room on the asyncio loop; relays data and audio between them."""

    def __init__(self) -> None:
        self.peers: dict[str, Peer] = {}
        self.relay = MediaRelay()
        #: The data packets relayed here, oldest first (read from any thread).
        self.log: collections.deque[DataRecord] = collections.deque(maxlen=DATA_LOG)

    def add(self, peer: Peer) -> None:
        """Start relaying to and from *peer*."""
        self.peers[peer.identity] = peer

    def remove(self, peer: Peer) -> None:
        """Stop relaying to and from *peer*."""
        if self.peers.get(peer.identity) is peer:
            del self.peers[peer.identity]

    def relay_data(self, sender: Peer, label: str, raw: bytes) -> None:
        """Forward a client's ``DataPacket`` to the others, stamped with the sender."""
        packet = models_pb.DataPacket()
        try:
            packet.ParseFromString(raw)
        except Exception:  # protobuf's DecodeError
            logger.info("undecodable data packet from %s", sender.identity)
            return
        # The client marks every packet LOSSY: the channel tells which it was.
        packet.kind = (
            models_pb.DataPacket.RELIABLE if label == RELIABLE_LABEL else models_pb.DataPacket.LOSSY
        )
        packet.participant_identity = sender.identity
        packet.participant_sid = sender.sid
        if packet.HasField("user"):
            packet.user.participant_identity = sender.identity
            packet.user.participant_sid = sender.sid
        self._deliver(packet, label, sender)

    def send_from_server(self, packet: models_pb.DataPacket) -> None:
        """Deliver a ``DataPacket`` from the Server API (``SendData``): no sender."""
        label = RELIABLE_LABEL if packet.kind == models_pb.DataPacket.RELIABLE else LOSSY_LABEL
        self._deliver(packet, label, None)

    def _deliver(self, packet: models_pb.DataPacket, label: str, sender: Peer | None) -> None:
        destinations = set(packet.destination_identities)
        if packet.HasField("user"):
            destinations.update(packet.user.destination_identities)
        which = packet.WhichOneof("value") or ""
        user = packet.user if which == "user" else None
        self.log.append(
            DataRecord(
                sender=sender.identity if sender is not None else "",
                reliable=label == RELIABLE_LABEL,
                kind=which,
                payload=user.payload if user is not None else b"",
                topic=user.topic if user is not None else "",
                destination_identities=tuple(sorted(destinations)),
            )
        )
        del packet.destination_identities[:]
        data = packet.SerializeToString()
        for peer in list(self.peers.values()):
            if peer is sender or (destinations and peer.identity not in destinations):
                continue
            peer.send_data(label, data)


class _DataOut:
    """The data channels packets to a client go out on, by label; what is sent
    before a channel exists or is open waits (up to ``DATA_BACKLOG`` per label)."""

    def __init__(self) -> None:
        self._channels: dict[str, RTCDataChannel] = {}
        self._backlog: dict[str, collections.deque[bytes]] = {}

    def attach(self, label: str, channel: RTCDataChannel) -> None:
        """Send *label*'s packets on *channel* once it is open."""
        self._channels[label] = channel
        if channel.readyState == "open":
            self._flush(label)
        else:
            channel.on("open", functools.partial(self._flush, label))

    def send(self, label: str, data: bytes) -> None:
        channel = self._channels.get(label)
        if channel is not None and channel.readyState == "open":
            channel.send(data)
        else:
            backlog = self._backlog.setdefault(label, collections.deque(maxlen=DATA_BACKLOG))
            backlog.append(data)

    def _flush(self, label: str) -> None:
        channel = self._channels[label]
        backlog = self._backlog.pop(label, None)
        while backlog:
            channel.send(backlog.popleft())


class Peer:
    """One participant's peer connection (single-PC ``/rtc/v1``), on the asyncio loop.

    Construct it on the loop (``bridge.call``).

    Args:
        room: The room it relays through.
        identity: The participant's identity.
        sid: Its ``PA_`` sid.
    """

    def __init__(self, room: MediaRoom, identity: str, sid: str) -> None:
        self.room = room
        self.identity = identity
        self.sid = sid
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._data = _DataOut()
        #: Tracks sent to the client, by track sid (pausable by the subscriber).
        self.tracks_out: dict[str, PausableTrack] = {}
        self._pending_candidates: list[RTCIceCandidate] = []
        self._outgoing: list[_Outgoing] = []
        self._mid_to_track: dict[str, str] = {}
        self._known_receivers: set[int] = set()
        self._connected = asyncio.Event()
        #: The subscriber connection of a dual-connection (``/rtc``) client: data
        #: and media to the client go there.
        self.downstream: SubscriberPeer | None = None
        self.pc.on("connectionstatechange", self._on_state)
        self.pc.on("datachannel", self._on_channel)

    # -- events ------------------------------------------------------------------

    def _on_state(self) -> None:
        if self.pc.connectionState == "connected":
            self._connected.set()

    def _on_channel(self, channel: RTCDataChannel) -> None:
        label = channel.label
        if label in (RELIABLE_LABEL, LOSSY_LABEL):
            self._data.attach(label, channel)

        def on_message(message: bytes | str) -> None:
            if isinstance(message, bytes) and label in (RELIABLE_LABEL, LOSSY_LABEL):
                self.room.relay_data(self, label, message)

        channel.on("message", on_message)

    # -- operations (asyncio thread) -------------------------------------------------

    async def wait_connected(self) -> None:
        """Wait until the peer connection is connected (ICE and DTLS)."""
        await self._connected.wait()

    def send_data(self, label: str, data: bytes) -> None:
        """Send a serialized ``DataPacket`` on the client's channel *label*.

        Kept (up to ``DATA_BACKLOG`` per channel) until the channel is open.
        """
        if self.downstream is not None:
            self.downstream.send_data(label, data)
        else:
            self._data.send(label, data)

    async def add_candidate(self, candidate_init: str) -> None:
        """Add a trickled ICE candidate (JSON ``RTCIceCandidateInit``); buffered until
        the first offer is in."""
        candidate = _parse_candidate(candidate_init)
        if candidate is None:
            return
        if self.pc.remoteDescription is None:
            self._pending_candidates.append(candidate)
        else:
            await self.pc.addIceCandidate(candidate)

    def send_track(self, source: MediaStreamTrack, track_sid: str, participant_sid: str) -> None:
        """Queue *source* (relayed) for the client; it is attached at the next offer."""
        track = self.tracks_out[track_sid] = PausableTrack(self.room.relay.subscribe(source))
        self._outgoing.append(_Outgoing(track, track_sid, participant_sid))

    def set_paused(self, track_sid: str, paused: bool) -> bool:
        """Pause or resume sending *track_sid* (``UpdateTrackSettings.disabled``)."""
        return _set_paused(self.tracks_out, track_sid, paused)

    def stop_track(self, track_sid: str) -> None:
        """Stop sending *track_sid* to the client (its section stays, silent)."""
        self._outgoing = [o for o in self._outgoing if o.track_sid != track_sid]
        self.tracks_out.pop(track_sid, None)
        for transceiver in self.pc.getTransceivers():
            sender = transceiver.sender
            if getattr(sender, "_track_id", None) == track_sid and sender.track is not None:
                sender.track.stop()
                sender.replaceTrack(None)
                _clear_msid(sender)  # free the section for a later track
                if transceiver.mid is not None:
                    self._mid_to_track.pop(transceiver.mid, None)

    async def answer(self, offer_sdp: str) -> Answer:
        """Take the client's offer and answer it, sending the queued tracks."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        for candidate in self._pending_candidates:
            await self.pc.addIceCandidate(candidate)
        self._pending_candidates.clear()
        for outgoing in list(self._outgoing):
            transceiver = self._free_section(outgoing.track.kind)
            if transceiver is None:
                continue
            transceiver.sender.replaceTrack(outgoing.track)
            transceiver.direction = "sendonly"
            transceiver.sender._stream_id = f"{outgoing.participant_sid}|{outgoing.track_sid}"
            transceiver.sender._track_id = outgoing.track_sid
            self._outgoing.remove(outgoing)
        answer = await self.pc.createAnswer()
        await self.pc.setLocalDescription(answer)
        new_tracks: list[NewTrack] = []
        sending: set[str] = set()
        for transceiver in self.pc.getTransceivers():
            mid = transceiver.mid
            if mid is None:
                continue
            if transceiver.sender.track is not None:
                self._mid_to_track[mid] = transceiver.sender._track_id
            receiver_track = transceiver.receiver.track
            if transceiver._offerDirection in _SENDING and receiver_track is not None:
                sending.add(mid)
                if id(transceiver.receiver) not in self._known_receivers:
                    self._known_receivers.add(id(transceiver.receiver))
                    new_tracks.append(
                        NewTrack(receiver_track.id, receiver_track.kind, mid, receiver_track)
                    )
        local = self.pc.localDescription
        return Answer(local.sdp, dict(self._mid_to_track), new_tracks, frozenset(sending))

    def _free_section(self, kind: str) -> RTCRtpTransceiver | None:
        for transceiver in self.pc.getTransceivers():
            if (
                transceiver.kind == kind
                and transceiver.sender.track is None
                and transceiver._offerDirection in ("sendonly", "sendrecv")
            ):
                return transceiver
        return None

    async def close(self) -> None:
        """Close the peer connection (idempotent)."""
        self.room.remove(self)
        await self.pc.close()


class SubscriberPeer:
    """The server-offered *subscriber* connection of a dual-connection (``/rtc``)
    client, on the asyncio loop: media and data to the client.

    The server makes the offers (one outstanding at a time, serialized by the
    caller); the client answers. Construct it on the loop (``bridge.call``).
    """

    def __init__(self, room: MediaRoom) -> None:
        self.room = room
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self._data = _DataOut()
        #: Tracks sent to the client, by track sid (pausable by the subscriber).
        self.tracks_out: dict[str, PausableTrack] = {}
        self._data.attach(RELIABLE_LABEL, self.pc.createDataChannel(RELIABLE_LABEL, ordered=True))
        self._data.attach(
            LOSSY_LABEL, self.pc.createDataChannel(LOSSY_LABEL, ordered=False, maxRetransmits=0)
        )
        self._pending_candidates: list[RTCIceCandidate] = []
        self._senders: dict[str, RTCRtpTransceiver] = {}

    def send_data(self, label: str, data: bytes) -> None:
        """Send a serialized ``DataPacket``; kept until the channel is open."""
        self._data.send(label, data)

    def add_track(self, source: MediaStreamTrack, track_sid: str, participant_sid: str) -> None:
        """Send *source* (relayed) to the client, from the next offer on."""
        track = self.tracks_out[track_sid] = PausableTrack(self.room.relay.subscribe(source))
        transceiver = next(
            (
                t
                for t in self.pc.getTransceivers()
                if t.kind == track.kind and t.sender.track is None and t.stopped is False
            ),
            None,
        )
        if transceiver is None:
            transceiver = self.pc.addTransceiver(track, direction="sendonly")
        else:
            transceiver.sender.replaceTrack(track)
            transceiver.direction = "sendonly"
        transceiver.sender._stream_id = f"{participant_sid}|{track_sid}"
        transceiver.sender._track_id = track_sid
        self._senders[track_sid] = transceiver

    def set_paused(self, track_sid: str, paused: bool) -> bool:
        """Pause or resume sending *track_sid* (``UpdateTrackSettings.disabled``)."""
        return _set_paused(self.tracks_out, track_sid, paused)

    def remove_track(self, track_sid: str) -> bool:
        """Stop sending *track_sid*; its section goes inactive at the next offer.

        Returns:
            Whether it was being sent.
        """
        self.tracks_out.pop(track_sid, None)
        transceiver = self._senders.pop(track_sid, None)
        if transceiver is None:
            return False
        if transceiver.sender.track is not None:
            transceiver.sender.track.stop()
        transceiver.sender.replaceTrack(None)
        transceiver.direction = "inactive"
        _clear_msid(transceiver.sender)
        return True

    async def offer(self) -> str:
        """Make an offer (with every track to send) and return its SDP."""
        offer = await self.pc.createOffer()
        await self.pc.setLocalDescription(offer)
        return str(self.pc.localDescription.sdp)

    async def set_answer(self, sdp: str) -> None:
        """Take the client's answer to the last offer."""
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))
        for candidate in self._pending_candidates:
            await self.pc.addIceCandidate(candidate)
        self._pending_candidates.clear()

    async def add_candidate(self, candidate_init: str) -> None:
        """Add a trickled ICE candidate (buffered until the first answer is in)."""
        candidate = _parse_candidate(candidate_init)
        if candidate is None:
            return
        if self.pc.remoteDescription is None:
            self._pending_candidates.append(candidate)
        else:
            await self.pc.addIceCandidate(candidate)

    async def close(self) -> None:
        """Close the connection (idempotent)."""
        await self.pc.close()


def _set_paused(tracks: dict[str, PausableTrack], track_sid: str, paused: bool) -> bool:
    track = tracks.get(track_sid)
    if track is None or track.readyState == "ended":
        tracks.pop(track_sid, None)
        return False
    track.paused = paused
    return True
