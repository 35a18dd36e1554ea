# ruff: noqa: RUF009  (attrs fields built by a helper, on purpose)
"""Room events as frozen, typed values: one class per event ``livekit.rtc.Room`` emits.

Each event carries plain snapshot data, taken on the asyncio thread at the moment
``livekit.rtc`` emitted it (identities, sids, kinds, payloads, old and new values), so
it is safe to read from Trio at any later time. Where it is useful an event also holds
the live ``livekit.rtc`` object (``participant``, ``publication``, ``rtc_track``): read
their attributes freely, but call their async methods only through the room or the
bridge (they belong to the bridge's asyncio loop).

Events are matched with ``match`` or ``isinstance``::

    async for event in room.events():
        match event:
            case ParticipantConnected(identity=who):
                print(who, "joined")
            case DataReceived(payload=payload, topic="chat"):
                ...

:data:`BUILDERS` maps each ``livekit.rtc`` event name to the function that builds our
event from the callback's arguments; the room's dispatcher uses it on the asyncio
thread.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import attrs

if TYPE_CHECKING:
    from livekit import rtc

__all__ = [
    "ConnectionQuality",
    "ConnectionState",
    "DisconnectReason",
    "ParticipantKind",
    "TrackKind",
    "TrackSource",
    "BUILDERS",
    "ActiveSpeakersChanged",
    "ConnectionQualityChanged",
    "ConnectionStateChanged",
    "Connected",
    "DataReceived",
    "DataTrackPublished",
    "DataTrackUnpublished",
    "Disconnected",
    "E2EEStateChanged",
    "LocalTrackPublished",
    "LocalTrackRepublished",
    "LocalTrackSubscribed",
    "LocalTrackUnpublished",
    "Moved",
    "ParticipantActive",
    "ParticipantAttributesChanged",
    "ParticipantConnected",
    "ParticipantDisconnected",
    "ParticipantEncryptionStatusChanged",
    "ParticipantInfo",
    "ParticipantMetadataChanged",
    "ParticipantNameChanged",
    "ParticipantPermissionsChanged",
    "Reconnected",
    "Reconnecting",
    "RoomEvent",
    "RoomInfo",
    "RoomMetadataChanged",
    "RoomUpdated",
    "SipDTMFReceived",
    "TokenRefreshed",
    "TrackInfo",
    "TrackMuted",
    "TrackPublished",
    "TrackSubscribed",
    "TrackSubscriptionFailed",
    "TrackUnmuted",
    "TrackUnpublished",
    "TrackUnsubscribed",
    "TranscriptionReceived",
    "participant_info",
    "track_info",
]

_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})


def _ref() -> Any:
    """A field holding a live ``livekit.rtc`` object: not compared, hashed or printed."""
    return attrs.field(default=None, eq=False, repr=False)


def _frozen_mapping(value: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(value)) if value else _EMPTY


# --------------------------------------------------------------------------- enumerations


class TrackKind(enum.IntEnum):
    """``livekit.rtc.TrackKind``, printing its name; equal to livekit's integers."""

    UNKNOWN = 0
    AUDIO = 1
    VIDEO = 2


class TrackSource(enum.IntEnum):
    """``livekit.rtc.TrackSource``, printing its name; equal to livekit's integers."""

    UNKNOWN = 0
    CAMERA = 1
    MICROPHONE = 2
    SCREENSHARE = 3
    SCREENSHARE_AUDIO = 4


class ConnectionQuality(enum.IntEnum):
    """``livekit.rtc.ConnectionQuality``, printing its name; equal to livekit's integers."""

    UNKNOWN = -1
    POOR = 0
    GOOD = 1
    EXCELLENT = 2
    LOST = 3


class DisconnectReason(enum.IntEnum):
    """``livekit.rtc.DisconnectReason``, printing its name; equal to livekit's integers."""

    UNKNOWN_REASON = 0
    CLIENT_INITIATED = 1
    DUPLICATE_IDENTITY = 2
    SERVER_SHUTDOWN = 3
    PARTICIPANT_REMOVED = 4
    ROOM_DELETED = 5
    STATE_MISMATCH = 6
    JOIN_FAILURE = 7
    MIGRATION = 8
    SIGNAL_CLOSE = 9
    ROOM_CLOSED = 10
    USER_UNAVAILABLE = 11
    USER_REJECTED = 12
    SIP_TRUNK_FAILURE = 13
    CONNECTION_TIMEOUT = 14
    MEDIA_FAILURE = 15
    AGENT_ERROR = 16


class ParticipantKind(enum.IntEnum):
    """``livekit.rtc.ParticipantKind``, printing its name; equal to livekit's integers."""

    STANDARD = 0
    INGRESS = 1
    EGRESS = 2
    SIP = 3
    AGENT = 4
    CONNECTOR = 5
    BRIDGE = 6


class ConnectionState(enum.IntEnum):
    """``livekit.rtc.ConnectionState``, printing its name; equal to livekit's integers."""

    DISCONNECTED = 0
    CONNECTED = 1
    RECONNECTING = 2


def _member(kind: type[enum.IntEnum], value: Any) -> int:
    """The enum member for a known value, the plain int otherwise (a newer livekit
    may send values this version does not know)."""
    try:
        return kind(int(value))
    except ValueError:
        return int(value)


def _participant_kind(value: Any) -> int:
    return _member(ParticipantKind, value)


def _track_kind(value: Any) -> int:
    return _member(TrackKind, value)


def _track_source(value: Any) -> int:
    return _member(TrackSource, value)


def _disconnect_reason(value: Any) -> int:
    return _member(DisconnectReason, value)


def _connection_quality(value: Any) -> int:
    return _member(ConnectionQuality, value)


def _connection_state(value: Any) -> int:
    return _member(ConnectionState, value)


# --------------------------------------------------------------------------- snapshots


@attrs.frozen
class ParticipantInfo:
    """A participant as it was when the event happened.

    Attributes:
        identity: Unique within the room.
        sid: Server id (``PA_...``).
        name: Display name.
        kind: ``livekit.rtc.ParticipantKind`` value (STANDARD, AGENT, SIP, ...).
        metadata: Application metadata.
        attributes: Application attributes (read-only mapping).
    """

    identity: str
    sid: str = ""
    name: str = ""
    kind: int = attrs.field(default=0, converter=_participant_kind)
    metadata: str = ""
    attributes: Mapping[str, str] = attrs.field(default=_EMPTY, hash=False)


def participant_info(participant: rtc.Participant) -> ParticipantInfo:
    """Snapshot a ``livekit.rtc`` participant (call it on the thread that owns it)."""
    attributes = participant.attributes  # already a copy
    return ParticipantInfo(
        identity=participant.identity,
        sid=participant.sid,
        name=participant.name,
        kind=participant.kind,
        metadata=participant.metadata,
        attributes=MappingProxyType(attributes) if attributes else _EMPTY,
    )


@attrs.frozen
class TrackInfo:
    """A track (publication) as it was when the event happened.

    Attributes:
        sid: Track id (``TR_...``).
        name: Track name chosen by the publisher.
        kind: ``livekit.rtc.TrackKind`` value (KIND_AUDIO, KIND_VIDEO).
        source: ``livekit.rtc.TrackSource`` value (microphone, camera, ...); unknown
            (0) for events that only carry the track.
        muted: Whether it was muted.
    """

    sid: str
    name: str = ""
    kind: int = attrs.field(default=0, converter=_track_kind)
    source: int = attrs.field(default=0, converter=_track_source)
    muted: bool = False


def track_info(obj: rtc.TrackPublication | rtc.Track | None) -> TrackInfo:
    """Snapshot a ``livekit.rtc`` publication or track (on the thread that owns it)."""
    if obj is None:
        return TrackInfo(sid="")
    return TrackInfo(
        sid=obj.sid,
        name=obj.name,
        kind=obj.kind,
        source=getattr(obj, "source", 0),  # tracks have none, publications do
        muted=obj.muted,
    )


@attrs.frozen
class RoomInfo:
    """The room's own state, as carried by :class:`RoomUpdated` and :class:`Moved`."""

    sid: str
    name: str
    metadata: str = ""
    num_participants: int = 0
    num_publishers: int = 0
    active_recording: bool = False


def _room_info(room: rtc.Room) -> RoomInfo:
    return RoomInfo(
        sid=room._info.sid,  # the public `sid` is an async property
        name=room.name,
        metadata=room.metadata,
        num_participants=room.num_participants,
        num_publishers=room.num_publishers,
        active_recording=room.is_recording,
    )


def _identity(participant: rtc.Participant | None) -> str:
    return participant.identity if participant is not None else ""


# --------------------------------------------------------------------------- participants


@attrs.frozen
class ParticipantConnected:
    """A remote participant joined (``participant_connected``)."""

    identity: str
    info: ParticipantInfo
    participant: rtc.RemoteParticipant = _ref()


@attrs.frozen
class ParticipantDisconnected:
    """A remote participant left (``participant_disconnected``).

    Attributes:
        reason: ``livekit.rtc.DisconnectReason`` value.
    """

    identity: str
    info: ParticipantInfo
    reason: int = attrs.field(default=0, converter=_disconnect_reason)
    participant: rtc.RemoteParticipant = _ref()


@attrs.frozen
class ParticipantActive:
    """A remote participant is ready to receive data (``participant_active``)."""

    identity: str
    info: ParticipantInfo
    participant: rtc.RemoteParticipant = _ref()


@attrs.frozen
class ParticipantMetadataChanged:
    """A participant's metadata changed (local or remote)."""

    identity: str
    old_metadata: str
    metadata: str
    participant: rtc.Participant = _ref()


@attrs.frozen
class ParticipantNameChanged:
    """A participant's display name changed (local or remote)."""

    identity: str
    old_name: str
    name: str
    participant: rtc.Participant = _ref()


@attrs.frozen
class ParticipantAttributesChanged:
    """Some of a participant's attributes changed.

    Attributes:
        changed: Only the keys that changed, with their new values.
        attributes: All attributes after the change.
    """

    identity: str
    changed: Mapping[str, str] = attrs.field(hash=False)
    attributes: Mapping[str, str] = attrs.field(hash=False)
    participant: rtc.Participant = _ref()


@attrs.frozen
class ParticipantEncryptionStatusChanged:
    """Whether a participant's media is end-to-end encrypted changed."""

    identity: str
    is_encrypted: bool
    participant: rtc.Participant | None = _ref()


@attrs.frozen
class ParticipantPermissionsChanged:
    """A participant's permissions changed.

    Attributes:
        permissions: The new ``ParticipantPermission`` protobuf (a copy).
    """

    identity: str
    permissions: Any = attrs.field(eq=False)
    participant: rtc.Participant = _ref()


@attrs.frozen
class ConnectionQualityChanged:
    """A participant's connection quality changed.

    Attributes:
        quality: ``livekit.rtc.ConnectionQuality`` value (POOR, GOOD, EXCELLENT, LOST).
    """

    identity: str
    quality: int = attrs.field(converter=_connection_quality)
    participant: rtc.Participant | None = _ref()


@attrs.frozen
class ActiveSpeakersChanged:
    """The set of participants currently speaking changed, loudest first."""

    identities: tuple[str, ...]
    participants: tuple[rtc.Participant, ...] = attrs.field(default=(), eq=False, repr=False)


# --------------------------------------------------------------------------- tracks


@attrs.frozen
class LocalTrackPublished:
    """One of our tracks was published."""

    track: TrackInfo
    publication: rtc.LocalTrackPublication = _ref()
    rtc_track: rtc.LocalTrack | None = _ref()


@attrs.frozen
class LocalTrackUnpublished:
    """One of our tracks was unpublished."""

    track: TrackInfo
    publication: rtc.LocalTrackPublication = _ref()


@attrs.frozen
class LocalTrackRepublished:
    """One of our tracks was published again after a full reconnect, under a new sid."""

    track: TrackInfo
    previous_sid: str
    publication: rtc.LocalTrackPublication = _ref()


@attrs.frozen
class LocalTrackSubscribed:
    """Someone subscribed to one of our tracks for the first time."""

    track: TrackInfo
    rtc_track: rtc.LocalTrack | None = _ref()


@attrs.frozen
class TrackPublished:
    """A remote participant published a track (we may not be subscribed yet)."""

    identity: str
    track: TrackInfo
    publication: rtc.RemoteTrackPublication = _ref()
    participant: rtc.RemoteParticipant = _ref()


@attrs.frozen
class TrackUnpublished:
    """A remote participant unpublished a track."""

    identity: str
    track: TrackInfo
    publication: rtc.RemoteTrackPublication = _ref()
    participant: rtc.RemoteParticipant = _ref()


@attrs.frozen
class TrackSubscribed:
    """We subscribed to a remote track: ``rtc_track`` can now be streamed.

    Pass ``event.rtc_track`` to :func:`~trio_lkagent.open_audio_stream` or
    :func:`~trio_lkagent.open_video_stream`.
    """

    identity: str
    track: TrackInfo
    rtc_track: rtc.RemoteTrack = _ref()
    publication: rtc.RemoteTrackPublication = _ref()
    participant: rtc.RemoteParticipant = _ref()


@attrs.frozen
class TrackUnsubscribed:
    """We are no longer subscribed to a remote track."""

    identity: str
    track: TrackInfo
    rtc_track: rtc.RemoteTrack | None = _ref()
    publication: rtc.RemoteTrackPublication = _ref()
    participant: rtc.RemoteParticipant = _ref()


@attrs.frozen
class TrackSubscriptionFailed:
    """Subscribing to a remote track failed."""

    identity: str
    track_sid: str
    error: str
    participant: rtc.RemoteParticipant = _ref()


@attrs.frozen
class TrackMuted:
    """A track was muted (local or remote)."""

    identity: str
    track: TrackInfo
    publication: rtc.TrackPublication = _ref()
    participant: rtc.Participant = _ref()


@attrs.frozen
class TrackUnmuted:
    """A track was unmuted (local or remote)."""

    identity: str
    track: TrackInfo
    publication: rtc.TrackPublication = _ref()
    participant: rtc.Participant = _ref()


@attrs.frozen
class DataTrackPublished:
    """A remote participant published a data track."""

    identity: str
    sid: str
    name: str
    rtc_track: rtc.RemoteDataTrack = _ref()


@attrs.frozen
class DataTrackUnpublished:
    """A remote data track went away."""

    sid: str


# --------------------------------------------------------------------------- data


@attrs.frozen
class DataReceived:
    """A data packet arrived (``publish_data`` by someone else).

    Attributes:
        identity: The sender; empty when sent by a server API.
        payload: The bytes sent.
        topic: The topic it was sent under ("" for none).
        reliable: Whether it was sent reliably. (With the single peer connection the
            native client reports reliable packets as lossy; this is what it reports.)
    """

    identity: str
    payload: bytes
    topic: str = ""
    reliable: bool = True
    participant: rtc.RemoteParticipant | None = _ref()


@attrs.frozen
class SipDTMFReceived:
    """A DTMF digit arrived from a SIP participant."""

    identity: str
    code: int
    digit: str
    participant: rtc.RemoteParticipant | None = _ref()


@attrs.frozen
class TranscriptionReceived:
    """Transcription segments for a participant's track arrived.

    Attributes:
        segments: ``livekit.rtc.TranscriptionSegment`` values (plain dataclasses).
    """

    identity: str
    track_sid: str
    segments: tuple[rtc.TranscriptionSegment, ...] = attrs.field(eq=False)
    participant: rtc.Participant | None = _ref()
    publication: rtc.TrackPublication | None = _ref()


# --------------------------------------------------------------------------- room


@attrs.frozen
class RoomMetadataChanged:
    """The room's metadata changed."""

    old_metadata: str
    metadata: str


@attrs.frozen
class RoomUpdated:
    """The server sent new room information (participant counts, recording, ...)."""

    room: RoomInfo


@attrs.frozen
class Moved:
    """The server moved us to another room."""

    room: RoomInfo


@attrs.frozen
class ConnectionStateChanged:
    """The connection state changed.

    Attributes:
        state: ``livekit.rtc.ConnectionState`` value (DISCONNECTED, CONNECTED, RECONNECTING).
    """

    state: int = attrs.field(converter=_connection_state)


@attrs.frozen
class Connected:
    """The room connected. (``livekit`` 1.2.1 never emits it; kept for completeness.)"""


@attrs.frozen
class Disconnected:
    """We left the room or lost it for good.

    Attributes:
        reason: ``livekit.rtc.DisconnectReason`` value.
    """

    reason: int = attrs.field(converter=_disconnect_reason)


@attrs.frozen
class Reconnecting:
    """The connection dropped; the client is trying to resume it."""


@attrs.frozen
class Reconnected:
    """The connection was resumed."""


@attrs.frozen
class TokenRefreshed:
    """The server issued a new access token."""


@attrs.frozen
class E2EEStateChanged:
    """A participant's end-to-end encryption state changed.

    Attributes:
        state: ``livekit.rtc.EncryptionState`` value.
    """

    identity: str
    state: int
    participant: rtc.Participant | None = _ref()


RoomEvent: TypeAlias = (
    ParticipantConnected
    | ParticipantDisconnected
    | ParticipantActive
    | ParticipantMetadataChanged
    | ParticipantNameChanged
    | ParticipantAttributesChanged
    | ParticipantEncryptionStatusChanged
    | ParticipantPermissionsChanged
    | ConnectionQualityChanged
    | ActiveSpeakersChanged
    | LocalTrackPublished
    | LocalTrackUnpublished
    | LocalTrackRepublished
    | LocalTrackSubscribed
    | TrackPublished
    | TrackUnpublished
    | TrackSubscribed
    | TrackUnsubscribed
    | TrackSubscriptionFailed
    | TrackMuted
    | TrackUnmuted
    | DataTrackPublished
    | DataTrackUnpublished
    | DataReceived
    | SipDTMFReceived
    | TranscriptionReceived
    | RoomMetadataChanged
    | RoomUpdated
    | Moved
    | ConnectionStateChanged
    | Connected
    | Disconnected
    | Reconnecting
    | Reconnected
    | TokenRefreshed
    | E2EEStateChanged
)
"""Any event :meth:`Room.events` delivers."""


# --------------------------------------------------------------------------- builders
# Called on the asyncio thread with the arguments livekit.rtc passes to `emit`.


def _participant_connected(participant: rtc.RemoteParticipant) -> RoomEvent:
    info = participant_info(participant)
    return ParticipantConnected(info.identity, info, participant)


def _participant_disconnected(participant: rtc.RemoteParticipant) -> RoomEvent:
    info = participant_info(participant)
    reason = participant.disconnect_reason or 0
    return ParticipantDisconnected(info.identity, info, int(reason), participant)


def _participant_active(participant: rtc.RemoteParticipant) -> RoomEvent:
    info = participant_info(participant)
    return ParticipantActive(info.identity, info, participant)


def _local_track_published(
    publication: rtc.LocalTrackPublication, track: rtc.LocalTrack | None
) -> RoomEvent:
    return LocalTrackPublished(track_info(publication), publication, track)


def _local_track_unpublished(publication: rtc.LocalTrackPublication) -> RoomEvent:
    return LocalTrackUnpublished(track_info(publication), publication)


def _local_track_republished(
    publication: rtc.LocalTrackPublication, previous_sid: str
) -> RoomEvent:
    return LocalTrackRepublished(track_info(publication), previous_sid, publication)


def _local_track_subscribed(track: rtc.LocalTrack | None) -> RoomEvent:
    return LocalTrackSubscribed(track_info(track), track)


def _track_published(
    publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
) -> RoomEvent:
    return TrackPublished(_identity(participant), track_info(publication), publication, participant)


def _track_unpublished(
    publication: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant
) -> RoomEvent:
    return TrackUnpublished(
        _identity(participant), track_info(publication), publication, participant
    )


def _track_subscribed(
    track: rtc.RemoteTrack,
    publication: rtc.RemoteTrackPublication,
    participant: rtc.RemoteParticipant,
) -> RoomEvent:
    return TrackSubscribed(
        _identity(participant), track_info(publication), track, publication, participant
    )


def _track_unsubscribed(
    track: rtc.RemoteTrack | None,
    publication: rtc.RemoteTrackPublication,
    participant: rtc.RemoteParticipant,
) -> RoomEvent:
    return TrackUnsubscribed(
        _identity(participant), track_info(publication), track, publication, participant
    )


def _track_subscription_failed(
    participant: rtc.RemoteParticipant, track_sid: str, error: str
) -> RoomEvent:
    return TrackSubscriptionFailed(_identity(participant), track_sid, error, participant)


def _track_muted(participant: rtc.Participant, publication: rtc.TrackPublication) -> RoomEvent:
    return TrackMuted(_identity(participant), track_info(publication), publication, participant)


def _track_unmuted(participant: rtc.Participant, publication: rtc.TrackPublication) -> RoomEvent:
    return TrackUnmuted(_identity(participant), track_info(publication), publication, participant)


def _active_speakers_changed(speakers: list[rtc.Participant]) -> RoomEvent:
    return ActiveSpeakersChanged(tuple(_identity(p) for p in speakers), tuple(speakers))


def _room_metadata_changed(old_metadata: str, metadata: str) -> RoomEvent:
    return RoomMetadataChanged(old_metadata, metadata)


def _participant_metadata_changed(
    participant: rtc.Participant, old_metadata: str, metadata: str
) -> RoomEvent:
    return ParticipantMetadataChanged(_identity(participant), old_metadata, metadata, participant)


def _participant_name_changed(participant: rtc.Participant, old_name: str, name: str) -> RoomEvent:
    return ParticipantNameChanged(_identity(participant), old_name, name, participant)


def _participant_attributes_changed(
    changed: Mapping[str, str], participant: rtc.Participant
) -> RoomEvent:
    return ParticipantAttributesChanged(
        _identity(participant),
        _frozen_mapping(changed),
        _frozen_mapping(participant.attributes),
        participant,
    )


def _participant_encryption_status_changed(
    participant: rtc.Participant | None, is_encrypted: bool
) -> RoomEvent:
    return ParticipantEncryptionStatusChanged(_identity(participant), is_encrypted, participant)


def _participant_permissions_changed(participant: rtc.Participant, permissions: Any) -> RoomEvent:
    copy = type(permissions)()
    copy.CopyFrom(permissions)
    return ParticipantPermissionsChanged(_identity(participant), copy, participant)


def _connection_quality_changed(participant: rtc.Participant | None, quality: int) -> RoomEvent:
    return ConnectionQualityChanged(_identity(participant), int(quality), participant)


def _data_received(packet: rtc.DataPacket) -> RoomEvent:
    participant = packet.participant
    return DataReceived(
        participant.identity if participant is not None else "",
        packet.data,
        packet.topic or "",
        packet.kind == 1,  # DataPacketKind.KIND_RELIABLE
        participant,
    )


def _sip_dtmf_received(dtmf: rtc.SipDTMF) -> RoomEvent:
    return SipDTMFReceived(_identity(dtmf.participant), dtmf.code, dtmf.digit, dtmf.participant)


def _transcription_received(
    segments: list[rtc.TranscriptionSegment],
    participant: rtc.Participant | None,
    publication: rtc.TrackPublication | None,
) -> RoomEvent:
    return TranscriptionReceived(
        _identity(participant),
        publication.sid if publication is not None else "",
        tuple(segments),
        participant,
        publication,
    )


def _e2ee_state_changed(participant: rtc.Participant | None, state: int) -> RoomEvent:
    return E2EEStateChanged(_identity(participant), int(state), participant)


def _data_track_published(track: rtc.RemoteDataTrack) -> RoomEvent:
    info = track.info
    return DataTrackPublished(track.publisher_identity, info.sid, info.name, track)


#: ``livekit.rtc`` event name -> builder taking the emitted arguments; events that need
#: the room itself (``room_updated``, ``moved``) take it as first argument.
BUILDERS: Final[Mapping[str, Callable[..., RoomEvent]]] = {
    "participant_connected": _participant_connected,
    "participant_disconnected": _participant_disconnected,
    "participant_active": _participant_active,
    "local_track_published": _local_track_published,
    "local_track_unpublished": _local_track_unpublished,
    "local_track_republished": _local_track_republished,
    "local_track_subscribed": _local_track_subscribed,
    "track_published": _track_published,
    "track_unpublished": _track_unpublished,
    "track_subscribed": _track_subscribed,
    "track_unsubscribed": _track_unsubscribed,
    "track_subscription_failed": _track_subscription_failed,
    "track_muted": _track_muted,
    "track_unmuted": _track_unmuted,
    "active_speakers_changed": _active_speakers_changed,
    "room_metadata_changed": _room_metadata_changed,
    "participant_metadata_changed": _participant_metadata_changed,
    "participant_name_changed": _participant_name_changed,
    "participant_attributes_changed": _participant_attributes_changed,
    "participant_encryption_status_changed": _participant_encryption_status_changed,
    "participant_permissions_changed": _participant_permissions_changed,
    "connection_quality_changed": _connection_quality_changed,
    "data_received": _data_received,
    "sip_dtmf_received": _sip_dtmf_received,
    "transcription_received": _transcription_received,
    "e2ee_state_changed": _e2ee_state_changed,
    "connection_state_changed": lambda state: ConnectionStateChanged(int(state)),
    "connected": lambda: Connected(),
    "disconnected": lambda reason=0: Disconnected(int(reason)),
    "reconnecting": lambda: Reconnecting(),
    "reconnected": lambda: Reconnected(),
    "token_refreshed": lambda: TokenRefreshed(),
    "data_track_published": _data_track_published,
    "data_track_unpublished": lambda sid: DataTrackUnpublished(sid),
}

#: Events whose builder needs the room (they carry no arguments of their own).
ROOM_BUILDERS: Final[Mapping[str, Callable[[rtc.Room], RoomEvent]]] = {
    "room_updated": lambda room: RoomUpdated(_room_info(room)),
    "moved": lambda room: Moved(_room_info(room)),
}
