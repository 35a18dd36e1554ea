"""Room events: what :meth:`trio_lkagent.Room.events` delivers, one frozen class per kind.

Match on them::

    from trio_lkagent.events import DataReceived, ParticipantConnected

    async for event in room.events():
        match event:
            case ParticipantConnected(identity=who):
                ...
            case DataReceived(payload=payload, topic="chat"):
                ...

``RoomEvent`` is the union of all of them; ``ParticipantInfo``, ``TrackInfo`` and
``RoomInfo`` are the snapshots they carry. Fields that are livekit enumerations
(track kind and source, participant kind, connection quality and state,
disconnect reason) hold the ``enum.IntEnum`` members defined here
(``TrackKind.AUDIO``): they print their names and compare equal to livekit's
integers (``TrackKind.AUDIO == rtc.TrackKind.KIND_AUDIO``).
"""

from ._events import ActiveSpeakersChanged as ActiveSpeakersChanged
from ._events import Connected as Connected
from ._events import ConnectionQuality as ConnectionQuality
from ._events import ConnectionQualityChanged as ConnectionQualityChanged
from ._events import ConnectionState as ConnectionState
from ._events import ConnectionStateChanged as ConnectionStateChanged
from ._events import DataReceived as DataReceived
from ._events import DataTrackPublished as DataTrackPublished
from ._events import DataTrackUnpublished as DataTrackUnpublished
from ._events import Disconnected as Disconnected
from ._events import DisconnectReason as DisconnectReason
from ._events import E2EEStateChanged as E2EEStateChanged
from ._events import LocalTrackPublished as LocalTrackPublished
from ._events import LocalTrackRepublished as LocalTrackRepublished
from ._events import LocalTrackSubscribed as LocalTrackSubscribed
from ._events import LocalTrackUnpublished as LocalTrackUnpublished
from ._events import Moved as Moved
from ._events import ParticipantActive as ParticipantActive
from ._events import ParticipantAttributesChanged as ParticipantAttributesChanged
from ._events import ParticipantConnected as ParticipantConnected
from ._events import ParticipantDisconnected as ParticipantDisconnected
from ._events import ParticipantEncryptionStatusChanged as ParticipantEncryptionStatusChanged
from ._events import ParticipantInfo as ParticipantInfo
from ._events import ParticipantKind as ParticipantKind
from ._events import ParticipantMetadataChanged as ParticipantMetadataChanged
from ._events import ParticipantNameChanged as ParticipantNameChanged
from ._events import ParticipantPermissionsChanged as ParticipantPermissionsChanged
from ._events import Reconnected as Reconnected
from ._events import Reconnecting as Reconnecting
from ._events import RoomEvent as RoomEvent
from ._events import RoomInfo as RoomInfo
from ._events import RoomMetadataChanged as RoomMetadataChanged
from ._events import RoomUpdated as RoomUpdated
from ._events import SipDTMFReceived as SipDTMFReceived
from ._events import TokenRefreshed as TokenRefreshed
from ._events import TrackInfo as TrackInfo
from ._events import TrackKind as TrackKind
from ._events import TrackMuted as TrackMuted
from ._events import TrackPublished as TrackPublished
from ._events import TrackSource as TrackSource
from ._events import TrackSubscribed as TrackSubscribed
from ._events import TrackSubscriptionFailed as TrackSubscriptionFailed
from ._events import TrackUnmuted as TrackUnmuted
from ._events import TrackUnpublished as TrackUnpublished
from ._events import TrackUnsubscribed as TrackUnsubscribed
from ._events import TranscriptionReceived as TranscriptionReceived

__all__ = [
    "ActiveSpeakersChanged",
    "Connected",
    "ConnectionQualityChanged",
    "ConnectionStateChanged",
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
]
