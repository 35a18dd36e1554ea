"""The dev server's rooms over real WebRTC: plain ``livekit.rtc`` clients talk to each other.

Every client is an ``rtc.Room`` on the bridge loop (built with ``bridge.call``,
driven with ``bridge.run``); the server side is aiortc on the same bridge.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
import trio
from livekit import rtc

from trio_lkagent._bridge import AsyncioBridge, Handoff, open_bridge
from trio_lkagent._tracks import open_audio_stream
from trio_lkagent.devserver import DevServer, open_devserver

from .conftest import API_KEY, API_SECRET

SAFETY_TIMEOUT = 10
RATE = 48_000
_WATCHED = (
    "participant_connected",
    "participant_disconnected",
    "participant_metadata_changed",
    "participant_name_changed",
    "participant_attributes_changed",
    "room_metadata_changed",
    "track_published",
    "track_subscribed",
    "track_unsubscribed",
    "track_muted",
    "track_unmuted",
    "track_unpublished",
    "data_received",
    "disconnected",
)


class Client:
    """A plain ``livekit.rtc`` participant on the bridge loop, its events handed to Trio."""

    def __init__(self, bridge: AsyncioBridge, room: rtc.Room) -> None:
        self.bridge = bridge
        self.room = room
        self.events = Handoff[tuple[str, tuple[Any, ...]]]()
        self.received = self.events.subscribe(10_000)

    async def next(self, name: str) -> tuple[Any, ...]:
        """The next event called *name* (others are skipped)."""
        with trio.fail_after(SAFETY_TIMEOUT):
            async for got, args in self.received:
                if got == name:
                    return args
        raise AssertionError(f"client closed before {name}")  # pragma: no cover

    async def publish_data(self, payload: bytes, **kwargs: Any) -> None:
        publish = functools.partial(self.room.local_participant.publish_data, payload, **kwargs)
        await self.bridge.run(publish)


@asynccontextmanager
async def open_client(
    bridge: AsyncioBridge,
    server: DevServer,
    room_name: str,
    identity: str,
    options: rtc.RoomOptions | None = None,
    **kwargs: Any,
) -> AsyncIterator[Client]:
    token = server.create_participant_token(room_name, identity, **kwargs)
    room = await bridge.call(functools.partial(rtc.Room, loop=bridge.loop))
    client = Client(bridge, room)

    def watch() -> None:  # bridge thread
        for name in _WATCHED:
            room.on(name, functools.partial(lambda n, *a: client.events.put((n, a)), name))

    await bridge.call(watch)
    with trio.fail_after(SAFETY_TIMEOUT):
        await bridge.run(room.connect, server.url, token, options or rtc.RoomOptions())
    try:
        yield client
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await bridge.run(room.disconnect)


@pytest.fixture
async def bridge() -> AsyncIterator[AsyncioBridge]:
    async with open_bridge() as b:
        yield b


def tone(hz: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * hz * t) * 10_000).astype(np.int16)


def peak_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / RATE)[int(np.argmax(spectrum))])


@asynccontextmanager
async def microphone(client: Client) -> AsyncIterator[rtc.AudioSource]:
    bridge = client.bridge
    source = await bridge.call(functools.partial(rtc.AudioSource, RATE, 1, loop=bridge.loop))
    track = await bridge.call(rtc.LocalAudioTrack.create_audio_track, "mic", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    await bridge.run(client.room.local_participant.publish_track, track, options)
    try:
        yield source
    finally:
        with trio.CancelScope(shield=True):
            await bridge.run(source.aclose)


async def play(client: Client, source: rtc.AudioSource, samples: np.ndarray) -> None:
    async def capture() -> None:  # bridge thread, real time
        for start in range(0, len(samples) - 479, 480):
            frame = rtc.AudioFrame(samples[start : start + 480].tobytes(), RATE, 1, 480)
            await source.capture_frame(frame)

    await client.bridge.run(capture)


async def hear(track: rtc.Track, frames: int = 25) -> float:
    """The dominant frequency of *frames* 10 ms frames heard on *track* once sound starts."""
    received: list[np.ndarray] = []
    async with open_audio_stream(track, sample_rate=RATE) as heard:
        with trio.fail_after(SAFETY_TIMEOUT):
            async for frame in heard:
                if received or np.abs(frame.samples).max() > 1_000:
                    received.append(frame.samples.copy())
                if len(received) == frames:
                    break
    return peak_hz(np.concatenate(received))


async def test_clients_see_each_other_join_and_leave(
    server: DevServer, bridge: AsyncioBridge
) -> None:
    async with open_client(bridge, server, "r-join", "alice") as alice:
        async with open_client(
            bridge, server, "r-join", "bob", name="Bob", metadata="m", attributes={"a": "1"}
        ) as bob:
            (joined,) = await alice.next("participant_connected")
            assert (joined.identity, joined.name, joined.metadata) == ("bob", "Bob", "m")
            assert joined.attributes == {"a": "1"}
            assert list(bob.room.remote_participants) == ["alice"]
            room = server.rooms["r-join"]
            assert sorted(room.participants) == ["alice", "bob"]

            async def sid() -> str:
                return await bob.room.sid

            assert room.sid == await bridge.run(sid)
        (left,) = await alice.next("participant_disconnected")
        assert left.identity == "bob"
        assert left.disconnect_reason == rtc.DisconnectReason.CLIENT_INITIATED
        assert list(server.rooms["r-join"].participants) == ["alice"]


async def test_data_both_ways_with_destinations(server: DevServer, bridge: AsyncioBridge) -> None:
    async with (
        open_client(bridge, server, "r-data", "alice") as alice,
        open_client(bridge, server, "r-data", "bob") as bob,
        open_client(bridge, server, "r-data", "carol") as carol,
    ):
        await alice.publish_data(b"for bob", topic="t", destination_identities=["bob"])
        await alice.publish_data(b"for all", topic="t")
        await bob.publish_data(b"lossy back", reliable=False, destination_identities=["alice"])
        (packet,) = await bob.next("data_received")
        assert (packet.data, packet.topic, packet.participant.identity) == (
            b"for bob",
            "t",
            "alice",
        )
        assert packet.kind == rtc.DataPacketKind.KIND_RELIABLE
        (packet,) = await bob.next("data_received")
        assert packet.data == b"for all"
        (packet,) = await carol.next("data_received")
        assert packet.data == b"for all"  # "for bob" never reached carol
        (packet,) = await alice.next("data_received")
        assert (packet.data, packet.participant.identity) == (b"lossy back", "bob")
        assert packet.kind == rtc.DataPacketKind.KIND_LOSSY


async def test_audio_both_ways_and_to_a_late_joiner(
    server: DevServer, bridge: AsyncioBridge
) -> None:
    async with (
        open_client(bridge, server, "r-audio", "alice") as alice,
        open_client(bridge, server, "r-audio", "bob") as bob,
        microphone(alice) as alice_mic,
        microphone(bob) as bob_mic,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(play, alice, alice_mic, tone(440, 2.0))
        nursery.start_soon(play, bob, bob_mic, tone(880, 2.0))
        from_alice, _, sender = await bob.next("track_subscribed")
        assert sender.identity == "alice"
        from_bob, _, sender = await alice.next("track_subscribed")
        assert sender.identity == "bob"
        async with open_client(bridge, server, "r-audio", "carol") as carol:
            heard = {}
            for _ in range(2):
                track, _, sender = await carol.next("track_subscribed")
                heard[sender.identity] = track
            async with trio.open_nursery() as listeners:
                results: dict[str, float] = {}

                async def listen(name: str, track: rtc.Track) -> None:
                    results[name] = await hear(track)

                listeners.start_soon(listen, "bob hears alice", from_alice)
                listeners.start_soon(listen, "alice hears bob", from_bob)
                listeners.start_soon(listen, "carol hears alice", heard["alice"])
                listeners.start_soon(listen, "carol hears bob", heard["bob"])
        nursery.cancel_scope.cancel()
    assert abs(results["bob hears alice"] - 440) <= 5
    assert abs(results["carol hears alice"] - 440) <= 5
    assert abs(results["alice hears bob"] - 880) <= 5
    assert abs(results["carol hears bob"] - 880) <= 5


@pytest.mark.parametrize("single_pc", [True, False], ids=["rtc-v1", "rtc-dual"])
async def test_unpublish_reaches_the_others(
    server: DevServer, bridge: AsyncioBridge, single_pc: bool
) -> None:
    options = rtc.RoomOptions(single_peer_connection=single_pc)
    async with (
        open_client(bridge, server, "r-unpub", "alice", options=options) as alice,
        open_client(bridge, server, "r-unpub", "bob", options=options) as bob,
    ):
        async with microphone(alice):
            await bob.next("track_subscribed")
            (publication,) = alice.room.local_participant.track_publications.values()
            await bridge.run(alice.room.local_participant.unpublish_track, publication.sid)
        publication, participant = await bob.next("track_unpublished")
        assert participant.identity == "alice"


async def test_remove_participant_and_delete_room_disconnect_clients(
    server: DevServer, bridge: AsyncioBridge
) -> None:
    async with (
        open_client(bridge, server, "r-rm", "alice") as alice,
        open_client(bridge, server, "r-rm", "bob") as bob,
    ):
        await server.remove_participant("r-rm", "bob")
        (reason,) = await bob.next("disconnected")
        assert reason == rtc.DisconnectReason.PARTICIPANT_REMOVED
        (left,) = await alice.next("participant_disconnected")
        assert left.identity == "bob"
        assert left.disconnect_reason == rtc.DisconnectReason.PARTICIPANT_REMOVED
        await server.delete_room("r-rm")
        (reason,) = await alice.next("disconnected")
        assert reason == rtc.DisconnectReason.ROOM_DELETED


async def _upgrade_status(server: DevServer, target: str, token: str) -> int:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    async with stream:
        request = (
            f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer {token}\r\n\r\n"
        )
        await stream.send_all(request.encode())
        head = b""
        while b"\r\n" not in head:
            head += await stream.receive_some(1024)
    return int(head.split()[1])


async def test_join_needs_a_room_join_grant(server: DevServer) -> None:
    from livekit import api as lkapi

    good = server.create_participant_token("r-auth", "alice")
    no_join = (
        lkapi.AccessToken(server.api_key, server.api_secret)
        .with_identity("alice")
        .with_grants(lkapi.VideoGrants(room_create=True))
        .to_jwt()
    )
    assert await _upgrade_status(server, "/rtc/v1?join_request=", no_join) == 401
    assert await _upgrade_status(server, "/rtc/v1?join_request=%%%", good) == 400
    assert await _upgrade_status(server, "/rtc?auto_subscribe=1", no_join) == 401
    assert await _upgrade_status(server, "/rtc/v2?join_request=", good) == 404


def _python_threads() -> set[threading.Thread]:
    """Threads started from Python. The native ``livekit`` library's own callback
    threads show up as ``_DummyThread`` once they call into Python; they belong to
    the library and live as long as the process."""
    return {t for t in threading.enumerate() if not isinstance(t, threading._DummyThread)}


async def test_closing_the_server_closes_every_peer_and_thread() -> None:
    before = _python_threads()
    async with (
        open_devserver(api_key=API_KEY, api_secret=API_SECRET) as server,
        open_bridge() as bridge,
    ):
        async with (
            open_client(bridge, server, "r-close", "alice") as alice,
            open_client(bridge, server, "r-close", "bob"),
        ):
            await alice.next("participant_connected")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.aclose)
                (reason,) = await alice.next("disconnected")
            assert reason == rtc.DisconnectReason.SERVER_SHUTDOWN
        loop = bridge.loop
    assert loop.is_closed()
    assert _python_threads() <= before
    assert not server.rooms or all(not r.participants for r in server.rooms.values())


async def test_participant_updates_from_clients_reach_the_others_and_the_server(
    server: DevServer, bridge: AsyncioBridge
) -> None:
    async with (
        open_client(bridge, server, "r-meta", "alice") as alice,
        open_client(bridge, server, "r-meta", "bob", attributes={"keep": "1", "drop": "2"}) as bob,
    ):
        local = bob.room.local_participant
        await bridge.run(local.set_metadata, "busy")
        await bridge.run(local.set_name, "Bobby")
        await bridge.run(local.set_attributes, {"drop": "", "new": "3"})
        participant, old, new = await alice.next("participant_metadata_changed")
        assert (participant.identity, old, new) == ("bob", "", "busy")
        participant, old, new = await alice.next("participant_name_changed")
        assert (participant.identity, new) == ("bob", "Bobby")
        changed, participant = await alice.next("participant_attributes_changed")
        assert participant.attributes == {"keep": "1", "new": "3"}
        assert changed == {"drop": "", "new": "3"}
        info = server.rooms["r-meta"].participants["bob"]
        assert (info.metadata, info.name, dict(info.attributes)) == (
            "busy",
            "Bobby",
            {"keep": "1", "new": "3"},
        )


async def test_mute_and_unmute_reach_the_others(server: DevServer, bridge: AsyncioBridge) -> None:
    async with (
        open_client(bridge, server, "r-mute", "alice") as alice,
        open_client(bridge, server, "r-mute", "bob") as bob,
        microphone(alice),
    ):
        await bob.next("track_subscribed")
        (publication,) = alice.room.local_participant.track_publications.values()
        await bridge.call(publication.track.mute)
        participant, remote = await bob.next("track_muted")
        assert (participant.identity, remote.sid, remote.muted) == ("alice", publication.sid, True)
        (track,) = server.rooms["r-mute"].participants["alice"].tracks
        assert track.muted
        await bridge.call(publication.track.unmute)
        participant, remote = await bob.next("track_unmuted")
        assert not remote.muted


async def test_server_api_updates_reach_connected_clients(
    server: DevServer, bridge: AsyncioBridge
) -> None:
    from livekit import api as lkapi
    from livekit.protocol import models as models_pb
    from livekit.protocol import room as room_pb

    lk = await bridge.call(lkapi.LiveKitAPI, server.url, server.api_key, server.api_secret)
    try:
        async with (
            open_client(bridge, server, "r-api", "alice") as alice,
            open_client(bridge, server, "r-api", "bob") as bob,
            microphone(alice),
        ):
            await bob.next("track_subscribed")
            await bridge.run(
                lk.room.update_participant,
                room_pb.UpdateParticipantRequest(
                    room="r-api", identity="alice", metadata="from-api", attributes={"x": "1"}
                ),
            )
            participant, _, new = await bob.next("participant_metadata_changed")
            assert (participant.identity, new) == ("alice", "from-api")
            # The participant itself hears about its own update.
            _, _, new = await alice.next("participant_metadata_changed")
            assert new == "from-api"

            await bridge.run(
                lk.room.update_room_metadata,
                room_pb.UpdateRoomMetadataRequest(room="r-api", metadata="room-meta"),
            )
            for client in (alice, bob):
                _, new = await client.next("room_metadata_changed")
                assert new == "room-meta"

            await bridge.run(
                lk.room.send_data,
                room_pb.SendDataRequest(
                    room="r-api",
                    data=b"from the server",
                    kind=models_pb.DataPacket.RELIABLE,
                    destination_identities=["bob"],
                    topic="srv",
                ),
            )
            (packet,) = await bob.next("data_received")
            assert (packet.data, packet.topic, packet.participant) == (
                b"from the server",
                "srv",
                None,
            )

            (track,) = server.rooms["r-api"].participants["alice"].tracks
            await bridge.run(
                lk.room.mute_published_track,
                room_pb.MuteRoomTrackRequest(
                    room="r-api", identity="alice", track_sid=track.sid, muted=True
                ),
            )
            participant, remote = await bob.next("track_muted")
            assert (participant.identity, remote.sid) == ("alice", track.sid)
            # The publisher's client is told to mute its track.
            participant, local = await alice.next("track_muted")
            assert (participant.identity, local.sid, local.muted) == ("alice", track.sid, True)
            records = server.data_received("r-api")
            assert [(r.sender, r.payload, r.destination_identities) for r in records] == [
                ("", b"from the server", ("bob",))
            ]
    finally:
        await bridge.run(lk.aclose)


@pytest.mark.parametrize("single_pc", [True, False], ids=["rtc-v1", "rtc-dual"])
async def test_auto_subscribe_off_subscribes_on_request(
    server: DevServer, bridge: AsyncioBridge, single_pc: bool
) -> None:
    options = rtc.RoomOptions(auto_subscribe=False, single_peer_connection=single_pc)
    async with (
        open_client(bridge, server, "r-sub", "alice") as alice,
        open_client(bridge, server, "r-sub", "bob", options=options) as bob,
        microphone(alice) as mic,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(play, alice, mic, tone(440, 3.0))
        publication, participant = await bob.next("track_published")
        assert participant.identity == "alice"
        assert not publication.subscribed
        await bridge.call(publication.set_subscribed, True)
        track, _, _ = await bob.next("track_subscribed")
        assert abs(await hear(track) - 440) <= 5
        await bridge.call(publication.set_subscribed, False)
        track, _, participant = await bob.next("track_unsubscribed")
        assert participant.identity == "alice"
        nursery.cancel_scope.cancel()


async def test_automatic_dispatch_follows_real_joins_and_publications(
    server: DevServer, bridge: AsyncioBridge
) -> None:
    from livekit.protocol import agent as agent_pb

    from trio_lkagent import JobContext, JobType, Worker

    from .conftest import worker_options

    jobs: list[tuple[JobType, str]] = []

    async def entrypoint(ctx: JobContext) -> None:
        jobs.append((ctx.job_type, ctx.job.participant.identity))
        await trio.sleep_forever()

    publisher_worker = Worker(
        entrypoint, worker_options(server, agent_name="", job_type=JobType.PUBLISHER)
    )
    participant_worker = Worker(
        entrypoint, worker_options(server, agent_name="", job_type=JobType.PARTICIPANT)
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(publisher_worker.serve)
        await nursery.start(participant_worker.serve)
        async with open_client(bridge, server, "r-auto", "alice") as alice:
            job = await server.wait_for_job(room="r-auto", status=agent_pb.JS_RUNNING)
            assert (job.job.type, job.job.participant.identity) == (
                agent_pb.JT_PARTICIPANT,
                "alice",
            )
            assert not any(j.job.type == agent_pb.JT_PUBLISHER for j in server.jobs.values())
            async with microphone(alice):
                await server.wait_until(
                    lambda: (
                        any(j.job.type == agent_pb.JT_PUBLISHER for j in server.jobs.values())
                        or None
                    )
                )
        (publisher_job,) = [j for j in server.jobs.values() if j.job.type == agent_pb.JT_PUBLISHER]
        assert publisher_job.job.participant.identity == "alice"
        assert publisher_job.job.room.name == "r-auto"
        nursery.cancel_scope.cancel()


async def test_an_agent_leaving_its_room_fails_its_job(
    server: DevServer, bridge: AsyncioBridge
) -> None:
    from livekit.protocol import agent as agent_pb

    from trio_lkagent import JobContext, Worker, open_room

    from .conftest import worker_options

    async def entrypoint(ctx: JobContext) -> None:
        # ctx.connect()'s room is held until the job's final status is out, so
        # join with the job's token by hand to leave while the job still runs.
        async with open_room(ctx.url, ctx.token):
            pass  # joins, then leaves at once: the job goes on without its room
        await trio.sleep_forever()

    worker = Worker(entrypoint, worker_options(server, agent_name="leaver"))
    async with (
        trio.open_nursery() as nursery,
        open_client(bridge, server, "r-leave", "alice") as alice,
    ):
        await nursery.start(worker.serve)
        await server.create_dispatch("r-leave", "leaver")
        (agent,) = await alice.next("participant_connected")
        assert agent.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        job = await server.wait_for_job(room="r-leave")
        with trio.fail_after(SAFETY_TIMEOUT):
            await server.wait_until(
                lambda: job.status in (agent_pb.JS_FAILED, agent_pb.JS_SUCCESS) or None
            )
        assert job.status == agent_pb.JS_FAILED
        assert job.job.state.error == "agent worker left the room"
        nursery.cancel_scope.cancel()


async def test_vp8_video_is_relayed(server: DevServer, bridge: AsyncioBridge) -> None:
    width, height = 320, 240
    async with (
        open_client(bridge, server, "r-video", "alice") as alice,
        open_client(bridge, server, "r-video", "bob") as bob,
        trio.open_nursery() as nursery,
    ):
        source = await bridge.call(rtc.VideoSource, width, height)
        track = await bridge.call(rtc.LocalVideoTrack.create_video_track, "cam", source)
        options = rtc.TrackPublishOptions(
            source=rtc.TrackSource.SOURCE_CAMERA, video_codec=rtc.VideoCodec.VP8
        )
        await bridge.run(alice.room.local_participant.publish_track, track, options)
        rgba = np.zeros((height, width, 4), np.uint8)
        rgba[..., 0] = 200  # red
        rgba[..., 2] = 40
        rgba[..., 3] = 255

        async def camera() -> None:  # bridge thread, 30 fps
            import asyncio

            while True:
                frame = rtc.VideoFrame(width, height, rtc.VideoBufferType.RGBA, rgba.tobytes())
                source.capture_frame(frame)
                await asyncio.sleep(1 / 30)

        nursery.start_soon(bridge.run, camera)
        remote, publication, sender = await bob.next("track_subscribed")
        assert (sender.identity, remote.kind) == ("alice", rtc.TrackKind.KIND_VIDEO)
        assert publication.mime_type == "video/vp8"

        async def first_frames() -> np.ndarray:  # bridge thread
            stream = rtc.VideoStream(remote, format=rtc.VideoBufferType.RGBA)
            try:
                count = 0
                async for event in stream:
                    count += 1
                    if count == 5:
                        frame = event.frame
                        return (
                            np.frombuffer(frame.data, np.uint8)
                            .reshape(frame.height, frame.width, 4)
                            .copy()
                        )
            finally:
                await stream.aclose()
            raise AssertionError("the video stream ended")

        with trio.fail_after(SAFETY_TIMEOUT):
            got = await bridge.run(first_frames)
        nursery.cancel_scope.cancel()
    assert got.shape == (height, width, 4)
    mean = got[..., :3].reshape(-1, 3).mean(axis=0)
    assert abs(mean[0] - 200) < 20 and abs(mean[2] - 40) < 20 and mean[1] < 30


async def test_open_participant_is_a_simulated_participant(server: DevServer) -> None:
    from trio_lkagent.events import DataReceived, ParticipantConnected

    async with server.open_participant("r-sim", "alice", name="Alice") as alice:
        events = alice.events()
        async with server.open_participant("r-sim", "bob") as bob:
            await bob.publish_data(b"hi alice", topic="chat")
            with trio.fail_after(SAFETY_TIMEOUT):
                async for event in events:
                    if isinstance(event, DataReceived):
                        break
                    if isinstance(event, ParticipantConnected):
                        assert event.identity == "bob"
            assert (event.identity, event.payload, event.topic) == ("bob", b"hi alice", "chat")
            assert [r.payload for r in server.data_received("r-sim")] == [b"hi alice"]
            assert server.rooms["r-sim"].participants["alice"].name == "Alice"


async def test_bad_signal_messages_are_skipped_and_the_session_goes_on(
    server: DevServer,
) -> None:
    import base64

    import trio_websocket
    from livekit.protocol import rtc as rtc_pb

    request = rtc_pb.JoinRequest(connection_settings=rtc_pb.ConnectionSettings(auto_subscribe=True))
    join = rtc_pb.WrappedJoinRequest(join_request=request.SerializeToString())
    query = base64.urlsafe_b64encode(join.SerializeToString()).decode().rstrip("=")
    token = server.create_participant_token("r-bad", "raw")
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    async with trio_websocket.open_websocket(
        host,
        int(port),
        f"/rtc/v1?join_request={query}",
        use_ssl=False,
        extra_headers=[(b"authorization", f"Bearer {token}".encode())],
    ) as ws:
        first = rtc_pb.SignalResponse()
        first.ParseFromString(await ws.get_message())
        assert first.join.participant.identity == "raw"
        await ws.send_message(b"\xff\xfe not a protobuf")
        await ws.send_message("text is not a signal either")
        await ws.send_message(
            rtc_pb.SignalRequest(ping_req=rtc_pb.Ping(timestamp=42)).SerializeToString()
        )
        with trio.fail_after(SAFETY_TIMEOUT):
            while True:
                response = rtc_pb.SignalResponse()
                response.ParseFromString(await ws.get_message())
                if response.WhichOneof("message") == "pong_resp":
                    break
        assert response.pong_resp.last_ping_timestamp == 42
        assert "raw" in server.rooms["r-bad"].participants


async def test_dual_connection_clients_on_the_rtc_fallback_path(
    server: DevServer, bridge: AsyncioBridge
) -> None:
    """``single_peer_connection=False`` (what a client falls back to when
    ``/rtc/v1`` is missing): publisher and subscriber connections over ``/rtc``,
    mixed with a single-connection client."""
    dual = rtc.RoomOptions(single_peer_connection=False)
    async with (
        open_client(bridge, server, "r-dual", "alice", options=dual) as alice,
        open_client(bridge, server, "r-dual", "bob") as bob,
        microphone(alice) as alice_mic,
        microphone(bob) as bob_mic,
        trio.open_nursery() as nursery,
    ):
        (joined,) = await alice.next("participant_connected")
        assert joined.identity == "bob"
        nursery.start_soon(play, alice, alice_mic, tone(440, 3.0))
        nursery.start_soon(play, bob, bob_mic, tone(880, 3.0))
        from_alice, _, _ = await bob.next("track_subscribed")
        from_bob, _, _ = await alice.next("track_subscribed")

        await alice.publish_data(b"from dual", topic="t")
        await bob.publish_data(b"to dual", topic="t")
        (packet,) = await bob.next("data_received")
        assert (packet.data, packet.participant.identity) == (b"from dual", "alice")
        (packet,) = await alice.next("data_received")
        assert (packet.data, packet.participant.identity) == (b"to dual", "bob")

        results: dict[str, float] = {}

        async def listen(name: str, track: rtc.Track) -> None:
            results[name] = await hear(track)

        async with trio.open_nursery() as listeners:
            listeners.start_soon(listen, "bob hears alice", from_alice)
            listeners.start_soon(listen, "alice hears bob", from_bob)
        nursery.cancel_scope.cancel()
    assert abs(results["bob hears alice"] - 440) <= 5
    assert abs(results["alice hears bob"] - 880) <= 5


async def test_an_agent_lingering_after_its_dispatch_is_deleted_is_removed(
    server: DevServer, bridge: AsyncioBridge
) -> None:
    """Go's DeleteAgentDispatch: the job is terminated, its agent gets 3 s to leave
    the room, then the server removes it."""
    from livekit.protocol import agent as agent_pb

    from trio_lkagent import JobContext, Worker

    from .conftest import worker_options

    lingering = trio.Event()
    released = trio.Event()

    async def stubborn(ctx: JobContext) -> None:
        async with ctx.connect():
            with trio.CancelScope(shield=True):  # ignores its termination
                lingering.set()
                await released.wait()

    worker = Worker(stubborn, worker_options(server, agent_name="stubborn"))
    async with (
        trio.open_nursery() as nursery,
        open_client(bridge, server, "r-linger", "alice") as alice,
    ):
        await nursery.start(worker.serve)
        dispatch = await server.create_dispatch("r-linger", "stubborn")
        (agent,) = await alice.next("participant_connected")
        job = await server.wait_for_job(room="r-linger", status=agent_pb.JS_RUNNING)
        await lingering.wait()
        try:
            await server.delete_dispatch(dispatch.id, "r-linger")
            assert job.status == agent_pb.JS_SUCCESS  # terminated at once
            (left,) = await alice.next("participant_disconnected")
            assert left.identity == agent.identity
            assert agent.identity not in server.rooms["r-linger"].participants
        finally:
            released.set()  # the job never left by itself: it was removed
        nursery.cancel_scope.cancel()
