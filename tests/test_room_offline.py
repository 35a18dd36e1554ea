"""The room layer without a server: events, fan-out, slow consumers, waiting, RPC wiring.

A :class:`Room` around an unconnected ``rtc.Room`` on the bridge is fed the same
protobuf events the native library sends (``rtc.Room._on_room_event``), so livekit's
own event code runs and our dispatcher sees exactly what it would see in a real room.
"""

from __future__ import annotations

import ctypes
import logging
import typing
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from livekit import rtc
from livekit.rtc import room as rtc_room_module
from livekit.rtc._proto import data_track_pb2 as data_track_pb
from livekit.rtc._proto import e2ee_pb2 as e2ee_pb
from livekit.rtc._proto import handle_pb2 as handle_pb
from livekit.rtc._proto import participant_pb2 as participant_pb
from livekit.rtc._proto import room_pb2 as room_pb
from livekit.rtc._proto import track_pb2 as track_pb

from trio_lkagent import ConnectError
from trio_lkagent import _events as ev
from trio_lkagent._bridge import open_bridge
from trio_lkagent._room import (
    DEFAULT_EVENT_BUFFER,
    AutoSubscribe,
    Room,
    _open_unconnected_room,
    open_room,
)

NO_HANDLE = handle_pb.FfiOwnedHandle(id=0)  # id 0 is never dropped natively
AUDIO, VIDEO = track_pb.KIND_AUDIO, track_pb.KIND_VIDEO


@pytest.fixture
async def room() -> AsyncIterator[Room]:
    async with _open_unconnected_room() as room:
        await room.bridge.call(_install_local_participant, room.rtc_room)
        yield room


def _install_local_participant(rtc_room: rtc.Room) -> None:  # bridge thread
    info = participant_pb.ParticipantInfo(identity="agent", sid="PA_agent", name="Agent")
    owned = participant_pb.OwnedParticipant(handle=NO_HANDLE, info=info)
    rtc_room._local_participant = rtc.LocalParticipant(rtc_room._room_queue, owned)


async def feed(room: Room, *events: room_pb.RoomEvent) -> None:
    """Run livekit's room event handler on the bridge thread for each event, in order.

    Every hand-off drain scheduled meanwhile runs before this returns (run_sync_soon
    is FIFO), so the events are in the subscribers' channels afterwards.
    """

    def run() -> None:
        for event in events:
            room.rtc_room._on_room_event(event)

    await room.bridge.call(run)


def joined(
    identity: str, kind: Any = participant_pb.PARTICIPANT_KIND_STANDARD
) -> room_pb.RoomEvent:
    info = participant_pb.ParticipantInfo(
        identity=identity,
        sid=f"PA_{identity}",
        name=identity.title(),
        kind=kind,
        metadata='{"role": "caller"}',
        attributes={"lang": "en"},
    )
    owned = participant_pb.OwnedParticipant(handle=NO_HANDLE, info=info)
    return room_pb.RoomEvent(participant_connected=room_pb.ParticipantConnected(info=owned))


def left(identity: str) -> room_pb.RoomEvent:
    return room_pb.RoomEvent(
        participant_disconnected=room_pb.ParticipantDisconnected(
            participant_identity=identity,
            disconnect_reason=participant_pb.CLIENT_INITIATED,
        )
    )


def published(identity: str, sid: str, kind: Any = AUDIO) -> room_pb.RoomEvent:
    info = track_pb.TrackPublicationInfo(
        sid=sid, name=f"{sid}-name", kind=kind, source=track_pb.SOURCE_MICROPHONE
    )
    owned = track_pb.OwnedTrackPublication(handle=NO_HANDLE, info=info)
    return room_pb.RoomEvent(
        track_published=room_pb.TrackPublished(participant_identity=identity, publication=owned)
    )


def data_packet(
    identity: str, payload: ctypes.Array[ctypes.c_char], topic: str
) -> room_pb.RoomEvent:
    buffer = handle_pb.FfiOwnedHandle(id=0)
    user = room_pb.UserPacket(
        data=room_pb.OwnedBuffer(
            handle=buffer,
            data=room_pb.BufferInfo(data_ptr=ctypes.addressof(payload), data_len=len(payload.raw)),
        ),
        topic=topic,
    )
    return room_pb.RoomEvent(
        data_packet_received=room_pb.DataPacketReceived(
            kind=room_pb.KIND_RELIABLE, participant_identity=identity, user=user
        )
    )


def drain(channel: trio.MemoryReceiveChannel[ev.RoomEvent]) -> list[ev.RoomEvent]:
    items: list[ev.RoomEvent] = []
    while True:
        try:
            items.append(channel.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return items


# ------------------------------------------------------------------ the event catalogue


def test_every_event_rtc_room_emits_has_a_typed_event() -> None:
    emitted = set(typing.get_args(rtc_room_module.EventTypes))
    assert set(ev.BUILDERS) | set(ev.ROOM_BUILDERS) == emitted
    assert len(typing.get_args(ev.RoomEvent)) == len(emitted)


def test_events_are_frozen_hashable_snapshots() -> None:
    info = ev.ParticipantInfo("alice", "PA_1", attributes={"a": "b"})
    event = ev.ParticipantConnected("alice", info, participant=object())  # type: ignore[arg-type]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        event.identity = "bob"  # type: ignore[misc]
    assert event == ev.ParticipantConnected("alice", info)  # live references are not compared
    assert hash(event) == hash(ev.ParticipantConnected("alice", info))
    assert "participant=" not in repr(event)


async def test_room_events_become_typed_events_in_order(room: Room) -> None:
    events = room.events()
    seen_by_rtc_callback: list[str] = []
    room.rtc_room.on("participant_connected", lambda p: seen_by_rtc_callback.append(p.identity))
    payload = ctypes.create_string_buffer(b"hello", 5)
    segment = room_pb.TranscriptionSegment(
        id="s1", text="hi there", start_time=0, end_time=10, final=True, language="en"
    )
    owned_track = track_pb.OwnedTrack(
        handle=NO_HANDLE, info=track_pb.TrackInfo(sid="TR_a", name="TR_a-name", kind=AUDIO)
    )
    await feed(
        room,
        joined("alice"),
        published("alice", "TR_a"),
        room_pb.RoomEvent(
            track_subscribed=room_pb.TrackSubscribed(
                participant_identity="alice", track=owned_track
            )
        ),
        room_pb.RoomEvent(
            track_muted=room_pb.TrackMuted(participant_identity="alice", track_sid="TR_a")
        ),
        room_pb.RoomEvent(
            track_unmuted=room_pb.TrackUnmuted(participant_identity="alice", track_sid="TR_a")
        ),
        room_pb.RoomEvent(
            active_speakers_changed=room_pb.ActiveSpeakersChanged(
                participant_identities=["alice", "agent"]
            )
        ),
        data_packet("alice", payload, "chat"),
        room_pb.RoomEvent(
            data_packet_received=room_pb.DataPacketReceived(
                participant_identity="alice", sip_dtmf=room_pb.SipDTMF(code=5, digit="5")
            )
        ),
        room_pb.RoomEvent(
            transcription_received=room_pb.TranscriptionReceived(
                participant_identity="alice", track_sid="TR_a", segments=[segment]
            )
        ),
        room_pb.RoomEvent(
            connection_quality_changed=room_pb.ConnectionQualityChanged(
                participant_identity="alice", quality=room_pb.QUALITY_EXCELLENT
            )
        ),
        room_pb.RoomEvent(
            participant_metadata_changed=room_pb.ParticipantMetadataChanged(
                participant_identity="alice", metadata="new"
            )
        ),
        room_pb.RoomEvent(
            participant_name_changed=room_pb.ParticipantNameChanged(
                participant_identity="alice", name="Alicia"
            )
        ),
        room_pb.RoomEvent(
            participant_attributes_changed=room_pb.ParticipantAttributesChanged(
                participant_identity="alice",
                attributes=[
                    room_pb.AttributesEntry(key="lang", value="fr"),
                    room_pb.AttributesEntry(key="x", value="1"),
                ],
                changed_attributes=[room_pb.AttributesEntry(key="lang", value="fr")],
            )
        ),
        room_pb.RoomEvent(
            participant_encryption_status_changed=room_pb.ParticipantEncryptionStatusChanged(
                participant_identity="alice", is_encrypted=True
            )
        ),
        room_pb.RoomEvent(
            participant_permission_changed=room_pb.ParticipantPermissionChanged(
                participant_identity="alice",
                permission=participant_pb.ParticipantPermission(can_publish=True),
            )
        ),
        room_pb.RoomEvent(
            e2ee_state_changed=room_pb.E2eeStateChanged(
                participant_identity="alice", state=e2ee_pb.OK
            )
        ),
        room_pb.RoomEvent(room_metadata_changed=room_pb.RoomMetadataChanged(metadata="m2")),
        room_pb.RoomEvent(
            connection_state_changed=room_pb.ConnectionStateChanged(state=room_pb.CONN_RECONNECTING)
        ),
        room_pb.RoomEvent(reconnecting=room_pb.Reconnecting()),
        room_pb.RoomEvent(reconnected=room_pb.Reconnected()),
        room_pb.RoomEvent(room_updated=room_pb.RoomInfo(sid="RM_1", name="r", num_participants=2)),
        room_pb.RoomEvent(token_refreshed=room_pb.TokenRefreshed(token="t2")),
        room_pb.RoomEvent(
            participant_active=room_pb.ParticipantActive(participant_identity="alice")
        ),
        room_pb.RoomEvent(
            track_subscription_failed=room_pb.TrackSubscriptionFailed(
                participant_identity="alice", track_sid="TR_b", error="nope"
            )
        ),
        room_pb.RoomEvent(
            track_unsubscribed=room_pb.TrackUnsubscribed(
                participant_identity="alice", track_sid="TR_a"
            )
        ),
        room_pb.RoomEvent(
            track_unpublished=room_pb.TrackUnpublished(
                participant_identity="alice", publication_sid="TR_a"
            )
        ),
        room_pb.RoomEvent(
            data_track_published=room_pb.DataTrackPublished(
                track=data_track_pb.OwnedRemoteDataTrack(
                    handle=NO_HANDLE,
                    info=data_track_pb.DataTrackInfo(sid="DT_1", name="telemetry"),
                    publisher_identity="alice",
                )
            )
        ),
        room_pb.RoomEvent(data_track_unpublished=room_pb.DataTrackUnpublished(sid="DT_1")),
        room_pb.RoomEvent(moved=room_pb.RoomInfo(sid="RM_2", name="elsewhere")),
        room_pb.RoomEvent(participants_updated=room_pb.ParticipantsUpdated()),  # internal: none
        left("alice"),
        room_pb.RoomEvent(disconnected=room_pb.Disconnected(reason=participant_pb.SERVER_SHUTDOWN)),
    )
    got = drain(events)
    assert [type(e).__name__ for e in got] == [
        "ParticipantConnected",
        "TrackPublished",
        "TrackSubscribed",
        "TrackMuted",
        "TrackUnmuted",
        "ActiveSpeakersChanged",
        "DataReceived",
        "SipDTMFReceived",
        "TranscriptionReceived",
        "ConnectionQualityChanged",
        "ParticipantMetadataChanged",
        "ParticipantNameChanged",
        "ParticipantAttributesChanged",
        "ParticipantEncryptionStatusChanged",
        "ParticipantPermissionsChanged",
        "E2EEStateChanged",
        "RoomMetadataChanged",
        "ConnectionStateChanged",
        "Reconnecting",
        "Reconnected",
        "RoomUpdated",
        "TokenRefreshed",
        "ParticipantActive",
        "TrackSubscriptionFailed",
        "TrackUnsubscribed",
        "TrackUnpublished",
        "DataTrackPublished",
        "DataTrackUnpublished",
        "Moved",
        "ParticipantDisconnected",
        "Disconnected",
    ]
    by_type = {type(e): e for e in got}
    connected = by_type[ev.ParticipantConnected]
    assert isinstance(connected, ev.ParticipantConnected)
    assert connected.info == ev.ParticipantInfo(
        "alice", "PA_alice", "Alice", 0, '{"role": "caller"}', {"lang": "en"}
    )
    assert connected.participant is not None and connected.participant.identity == "alice"
    assert seen_by_rtc_callback == ["alice"]  # callbacks on the rtc room still run

    assert by_type[ev.TrackPublished] == ev.TrackPublished(
        "alice", ev.TrackInfo("TR_a", "TR_a-name", AUDIO, track_pb.SOURCE_MICROPHONE)
    )
    subscribed = by_type[ev.TrackSubscribed]
    assert isinstance(subscribed, ev.TrackSubscribed)
    assert isinstance(subscribed.rtc_track, rtc.RemoteAudioTrack)
    assert by_type[ev.TrackMuted].track.muted  # type: ignore[union-attr]
    assert by_type[ev.ActiveSpeakersChanged] == ev.ActiveSpeakersChanged(("alice", "agent"))
    assert by_type[ev.DataReceived] == ev.DataReceived("alice", b"hello", "chat", True)
    assert by_type[ev.SipDTMFReceived] == ev.SipDTMFReceived("alice", 5, "5")
    transcription = by_type[ev.TranscriptionReceived]
    assert isinstance(transcription, ev.TranscriptionReceived)
    assert (transcription.track_sid, transcription.segments[0].text) == ("TR_a", "hi there")
    assert by_type[ev.ConnectionQualityChanged] == ev.ConnectionQualityChanged(
        "alice", rtc.ConnectionQuality.QUALITY_EXCELLENT
    )
    assert by_type[ev.ParticipantMetadataChanged] == ev.ParticipantMetadataChanged(
        "alice", '{"role": "caller"}', "new"
    )
    assert by_type[ev.ParticipantNameChanged] == ev.ParticipantNameChanged(
        "alice", "Alice", "Alicia"
    )
    assert by_type[ev.ParticipantAttributesChanged] == ev.ParticipantAttributesChanged(
        "alice", {"lang": "fr"}, {"lang": "fr", "x": "1"}
    )
    permissions = by_type[ev.ParticipantPermissionsChanged]
    assert isinstance(permissions, ev.ParticipantPermissionsChanged)
    assert permissions.permissions.can_publish
    assert by_type[ev.RoomMetadataChanged] == ev.RoomMetadataChanged("", "m2")
    assert by_type[ev.ConnectionStateChanged] == ev.ConnectionStateChanged(
        room_pb.CONN_RECONNECTING
    )
    assert by_type[ev.RoomUpdated] == ev.RoomUpdated(ev.RoomInfo("RM_1", "r", num_participants=2))
    assert by_type[ev.TrackSubscriptionFailed] == ev.TrackSubscriptionFailed(
        "alice", "TR_b", "nope"
    )
    assert by_type[ev.DataTrackPublished] == ev.DataTrackPublished("alice", "DT_1", "telemetry")
    assert by_type[ev.Moved] == ev.Moved(ev.RoomInfo("RM_2", "elsewhere"))
    disconnected = by_type[ev.ParticipantDisconnected]
    assert isinstance(disconnected, ev.ParticipantDisconnected)
    assert (disconnected.info.name, disconnected.reason) == (
        "Alicia",
        participant_pb.CLIENT_INITIATED,
    )
    assert by_type[ev.Disconnected] == ev.Disconnected(participant_pb.SERVER_SHUTDOWN)
    assert room.statistics().events.put == len(got)


async def test_local_track_events(room: Room) -> None:
    events = room.events()

    def add_publication() -> None:  # bridge thread: what publish_track would have stored
        info = track_pb.TrackPublicationInfo(sid="TR_mine", name="agent", kind=AUDIO)
        owned = track_pb.OwnedTrackPublication(handle=NO_HANDLE, info=info)
        publication = rtc.LocalTrackPublication(owned)
        room.local_participant._track_publications["TR_mine"] = publication

    await room.bridge.call(add_publication)
    republished_info = track_pb.TrackPublicationInfo(sid="TR_new", name="agent", kind=AUDIO)
    await feed(
        room,
        room_pb.RoomEvent(local_track_published=room_pb.LocalTrackPublished(track_sid="TR_mine")),
        room_pb.RoomEvent(local_track_subscribed=room_pb.LocalTrackSubscribed(track_sid="TR_mine")),
        room_pb.RoomEvent(
            local_track_republished=room_pb.LocalTrackRepublished(
                previous_sid="TR_mine", info=republished_info
            )
        ),
        room_pb.RoomEvent(
            local_track_unpublished=room_pb.LocalTrackUnpublished(publication_sid="TR_new")
        ),
    )
    assert drain(events) == [
        ev.LocalTrackPublished(ev.TrackInfo("TR_mine", "agent", AUDIO)),
        ev.LocalTrackSubscribed(ev.TrackInfo("")),
        ev.LocalTrackRepublished(ev.TrackInfo("TR_new", "agent", AUDIO), "TR_mine"),
        ev.LocalTrackUnpublished(ev.TrackInfo("TR_new", "agent", AUDIO)),
    ]
    # `connected` exists in livekit's list but 1.2.1 never emits it; it still maps.
    await room.bridge.call(room.rtc_room.emit, "connected")
    assert drain(events) == [ev.Connected()]


# ------------------------------------------------------------------ fan-out and slow consumers


async def test_every_subscriber_gets_every_event(room: Room) -> None:
    first, second = room.events(), room.events(8)
    await feed(room, joined("alice"), joined("bob"), left("alice"))
    for channel in (first, second):
        assert [(type(e).__name__, getattr(e, "identity", None)) for e in drain(channel)] == [
            ("ParticipantConnected", "alice"),
            ("ParticipantConnected", "bob"),
            ("ParticipantDisconnected", "alice"),
        ]


async def test_the_first_subscriber_gets_the_events_since_joining(room: Room) -> None:
    # Events arrive between joining and the owner's first events() call (open_room
    # returns, the job code runs): the first subscriber still sees them, in order.
    await feed(room, joined("alice"), left("alice"))
    first = room.events()
    await feed(room, joined("bob"))
    later = room.events()
    await feed(room, joined("carol"))
    assert [getattr(e, "identity", None) for e in drain(first)] == [
        "alice",
        "alice",
        "bob",
        "carol",
    ]
    assert [getattr(e, "identity", None) for e in drain(later)] == ["carol"]


async def test_events_held_for_the_first_subscriber_are_bounded(room: Room) -> None:
    n = DEFAULT_EVENT_BUFFER + 10
    await feed(room, *(joined(f"p{i}") for i in range(n)))
    first = room.events(8)
    # The oldest are kept, as a channel of that size would have kept them.
    assert [getattr(e, "identity", None) for e in drain(first)] == [f"p{i}" for i in range(8)]
    assert room.statistics().events.subscribers[0].dropped == n - 8


async def test_a_slow_consumer_loses_newer_events_and_nobody_waits(room: Room) -> None:
    n = 1_000
    fast = room.events(n)
    slow = room.events(4)
    payloads = [ctypes.create_string_buffer(str(i).encode(), len(str(i))) for i in range(n)]
    # One native burst: the bridge thread never waits for Trio, whatever the consumers do.
    await feed(room, *(data_packet("alice", p, "t") for p in payloads))
    stats = room.statistics()
    assert stats.events_dropped == n - 4
    fast_stats, slow_stats = stats.events.subscribers
    assert (fast_stats.delivered, fast_stats.dropped) == (n, 0)
    assert (slow_stats.delivered, slow_stats.dropped) == (4, n - 4)
    assert [e.payload for e in drain(fast)] == [str(i).encode() for i in range(n)]  # type: ignore[union-attr]
    assert [e.payload for e in drain(slow)] == [b"0", b"1", b"2", b"3"]  # type: ignore[union-attr]
    # The slow consumer catches up and gets what comes next.
    await feed(room, joined("carol"))
    assert [type(e) for e in drain(slow)] == [ev.ParticipantConnected]


async def test_a_consumer_that_stops_reading_does_not_block_the_others(room: Room) -> None:
    stuck = room.events(0)  # never read
    live = room.events(4)
    got: list[str] = []

    async def consume() -> None:
        async for event in live:
            got.append(getattr(event, "identity", ""))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        for name in ("a", "b", "c"):
            await feed(room, joined(name))
            await trio.testing.wait_all_tasks_blocked()
        await room.aclose()  # ends every channel
    assert got[:3] == ["a", "b", "c"]
    assert room.statistics().events.subscribers[0].dropped >= 3
    with pytest.raises(trio.EndOfChannel):
        stuck.receive_nowait()


async def test_closed_room_ends_channels_and_refuses_new_subscribers(room: Room) -> None:
    events = room.events()
    await room.aclose()
    await room.aclose()  # idempotent
    with pytest.raises(trio.EndOfChannel):
        await events.receive()
    with pytest.raises(trio.ClosedResourceError):
        room.events()
    with pytest.raises(trio.ClosedResourceError):
        await room.wait_for_participant()
    assert await room.wait_disconnected() == 0


# ------------------------------------------------------------------ waiting for participants


async def test_wait_for_participant_by_identity_and_kind(room: Room) -> None:
    await feed(room, joined("early"))
    assert (await room.wait_for_participant()).identity == "early"
    results: list[str] = []

    async def wait(identity: str | None, kind: int | None) -> None:
        participant = await room.wait_for_participant(identity, kind=kind)
        results.append(participant.identity)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait, "bob", None)
        nursery.start_soon(wait, None, participant_pb.PARTICIPANT_KIND_SIP)
        await trio.testing.wait_all_tasks_blocked()
        await feed(room, joined("alice"))
        await trio.testing.wait_all_tasks_blocked()
        assert results == []
        await feed(room, joined("phone", kind=participant_pb.PARTICIPANT_KIND_SIP))
        await trio.testing.wait_all_tasks_blocked()
        assert results == ["phone"]
        await feed(room, joined("bob"))
    assert results == ["phone", "bob"]


async def test_wait_for_participant_fails_when_the_room_disconnects(room: Room) -> None:
    async with trio.open_nursery() as nursery:

        async def waiter() -> None:
            with pytest.raises(trio.BrokenResourceError):
                await room.wait_for_participant("nobody")

        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        await feed(
            room,
            room_pb.RoomEvent(
                disconnected=room_pb.Disconnected(reason=participant_pb.ROOM_DELETED)
            ),
        )
    assert await room.wait_disconnected() == participant_pb.ROOM_DELETED


# ------------------------------------------------------------------ auto-subscribe


@pytest.mark.parametrize(
    ("mode", "subscribed_kinds"),
    [
        (AutoSubscribe.AUDIO_ONLY, [AUDIO]),
        (AutoSubscribe.VIDEO_ONLY, [VIDEO]),
        (AutoSubscribe.SUBSCRIBE_NONE, []),
        (AutoSubscribe.SUBSCRIBE_ALL, []),  # the native client subscribes by itself
    ],
)
async def test_auto_subscribe_subscribes_to_matching_publications(
    monkeypatch: pytest.MonkeyPatch, mode: AutoSubscribe, subscribed_kinds: list[int]
) -> None:
    calls: list[tuple[int, bool]] = []

    def set_subscribed(self: rtc.RemoteTrackPublication, subscribed: bool) -> None:
        calls.append((self.kind, subscribed))

    monkeypatch.setattr(rtc.RemoteTrackPublication, "set_subscribed", set_subscribed)
    async with _open_unconnected_room(auto_subscribe=mode) as room:
        await feed(room, joined("alice"), published("alice", "TR_a", AUDIO))
        await feed(room, published("alice", "TR_v", VIDEO))
    assert calls == [(kind, True) for kind in subscribed_kinds]


# ------------------------------------------------------------------ RPC wiring


async def test_rpc_handlers_run_as_trio_tasks_in_the_room_nursery(
    room: Room, monkeypatch: pytest.MonkeyPatch
) -> None:
    registered: dict[str, typing.Any] = {}

    def register(self: rtc.LocalParticipant, method: str, handler: typing.Any) -> None:
        registered[method] = handler  # the native registration needs a connected room

    monkeypatch.setattr(rtc.LocalParticipant, "register_rpc_method", register)

    async def greet(data: rtc.RpcInvocationData) -> str:
        trio.lowlevel.current_task()  # raises outside Trio: this runs as a Trio task
        await trio.lowlevel.checkpoint()
        return f"hello {data.caller_identity}: {data.payload}"

    await room.register_rpc_method("greet", greet)
    data = rtc.RpcInvocationData("req-1", "alice", "hi", 5.0, method="greet")
    # The native side would await this on the loop; do the same.
    assert await room.bridge.run(registered["greet"], data) == "hello alice: hi"
    assert room.statistics().rpc_invocations == 1


# ------------------------------------------------------------------ connecting


async def test_open_room_maps_a_refused_connection_to_our_connect_error() -> None:
    with trio.fail_after(10), pytest.raises(ConnectError):
        async with open_room("ws://127.0.0.1:9", "not-a-token", connect_timeout=5):
            pass  # pragma: no cover


class _SetOnLog(logging.Handler):
    """Sets a Trio event when a log record containing *fragment* arrives (any thread)."""

    def __init__(self, fragment: str, event: trio.Event) -> None:
        super().__init__()
        self.fragment = fragment
        self.event = event
        self.token = trio.lowlevel.current_trio_token()

    def emit(self, record: logging.LogRecord) -> None:
        if self.fragment in record.getMessage():
            self.token.run_sync_soon(self.event.set)


async def test_open_room_gives_up_at_its_own_deadline() -> None:
    # A server that accepts TCP and never answers: the native client would try for ~20 s.
    native_gave_up = trio.Event()
    handler = _SetOnLog("error while connecting", native_gave_up)
    logging.getLogger("livekit").addHandler(handler)
    try:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        # The bridge outlives the room here, as it does in a worker: leaving it last
        # would wait (bounded) for the abandoned native join.
        async with listeners[0], open_bridge():
            start = trio.current_time()
            with pytest.raises(ConnectError, match=r"within 0\.3 s"):
                async with open_room(f"ws://127.0.0.1:{port}", "token", connect_timeout=0.3):
                    pass  # pragma: no cover
            assert trio.current_time() - start < 2
        # The native retries linger after the deadline; with the port closed they
        # fail fast. Wait for that so they do not log into later tests.
        with trio.fail_after(10):
            await native_gave_up.wait()
    finally:
        logging.getLogger("livekit").removeHandler(handler)


async def test_leaving_the_block_by_an_error_gives_the_error_back_unwrapped() -> None:
    with pytest.raises(KeyError, match="mine"):
        async with _open_unconnected_room():
            raise KeyError("mine")


async def test_cancelling_the_block_closes_the_room() -> None:
    with trio.CancelScope() as scope:
        async with _open_unconnected_room() as room:
            events = room.events()
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    with pytest.raises(trio.EndOfChannel):
        events.receive_nowait()


async def test_an_unconnected_room_has_no_local_participant() -> None:
    async with _open_unconnected_room() as room:
        with pytest.raises(RuntimeError, match="not connected"):
            room.local_participant  # noqa: B018
        assert room.remote_participants == {}
        assert room.statistics().connection_state == rtc.ConnectionState.CONN_DISCONNECTED
