"""Rooms end to end: an agent (``open_room``) and real ``livekit.rtc`` clients in a dev-server room.

These run once the dev server serves WebRTC rooms (``/rtc/v1`` signalling); until
then the whole module is skipped. The other side of every test is the plain
``livekit.rtc`` client (an ``rtc.Room`` on the bridge's loop, driven through
``bridge.run``/``bridge.call``), never our own room layer, so what is checked is what
a real participant sees.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
import trio
from livekit import api as lkapi
from livekit import rtc
from livekit.protocol import agent as agent_pb
from livekit.protocol import agent_dispatch as dispatch_pb

from trio_lkagent import JobContext, Worker
from trio_lkagent._bridge import AsyncioBridge, Handoff, open_bridge
from trio_lkagent._room import Room, open_room
from trio_lkagent._tracks import open_audio_stream
from trio_lkagent.devserver import DevServer
from trio_lkagent.events import (
    DataReceived,
    ParticipantConnected,
    ParticipantDisconnected,
    RoomEvent,
    TrackPublished,
    TrackSubscribed,
    TrackUnpublished,
)

from .conftest import worker_options

ROOMS_READY = hasattr(DevServer, "create_participant_token")

pytestmark = pytest.mark.skipif(
    not ROOMS_READY, reason="the dev server does not serve WebRTC rooms (/rtc/v1) yet"
)

# A safety net for what waits on the network and real-time media, not a timing assertion.
SAFETY_TIMEOUT = 10
RATE = 48_000


def join_token(server: DevServer, room: str, identity: str, *, kind: Any = "standard") -> str:
    """A room join token signed with the dev server's key, as any LiveKit app makes one."""
    return (
        lkapi.AccessToken(server.api_key, server.api_secret)
        .with_identity(identity)
        .with_name(identity.title())
        .with_kind(kind)
        .with_grants(lkapi.VideoGrants(room_join=True, room=room))
        .to_jwt()
    )


@asynccontextmanager
async def open_agent(server: DevServer, room: str, **kwargs: Any) -> AsyncIterator[Room]:
    async with open_room(
        server.url, join_token(server, room, "agent", kind="agent"), **kwargs
    ) as r:
        yield r


class Client:
    """A plain ``livekit.rtc`` participant living on the bridge loop."""

    def __init__(self, bridge: AsyncioBridge, room: rtc.Room) -> None:
        self.bridge = bridge
        self.room = room
        self.events = Handoff[tuple[str, tuple[Any, ...]]]()
        self.received = self.events.subscribe(10_000)

    def _put(self, name: str, *args: Any) -> None:  # bridge thread
        self.events.put((name, args))

    async def next(self, name: str) -> tuple[Any, ...]:
        """Wait for the next rtc event called *name* (others are skipped)."""
        with trio.fail_after(SAFETY_TIMEOUT):
            async for got, args in self.received:
                if got == name:
                    return args
        raise AssertionError(f"client closed before {name}")  # pragma: no cover

    @property
    def identity(self) -> str:
        return str(self.room.local_participant.identity)


_WATCHED = (
    "participant_connected",
    "participant_disconnected",
    "track_subscribed",
    "data_received",
)


@asynccontextmanager
async def open_client(bridge: AsyncioBridge, url: str, token: str) -> AsyncIterator[Client]:
    room = await bridge.call(functools.partial(rtc.Room, loop=bridge.loop))
    client = Client(bridge, room)

    def watch() -> None:  # bridge thread
        for name in _WATCHED:
            room.on(name, functools.partial(client._put, name))  # type: ignore[arg-type]

    await bridge.call(watch)
    # Shielded: livekit kills the process if a connect is cancelled after the native
    # side answered it (open_room takes care of that; this plain client does not).
    with trio.CancelScope(shield=True), trio.fail_after(SAFETY_TIMEOUT):
        await bridge.run(room.connect, url, token, rtc.RoomOptions(auto_subscribe=True))
    try:
        yield client
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await bridge.run(room.disconnect)


async def until(
    events: trio.MemoryReceiveChannel[RoomEvent], done: Callable[[RoomEvent], bool]
) -> list[RoomEvent]:
    """Collect events up to and including the first one for which *done* is true."""
    seen: list[RoomEvent] = []
    with trio.fail_after(SAFETY_TIMEOUT):
        async for event in events:
            seen.append(event)
            if done(event):
                return seen
    raise AssertionError(f"the room closed; saw {seen}")  # pragma: no cover


def tone(hz: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * hz * t) * 10_000).astype(np.int16)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


@asynccontextmanager
async def client_microphone(client: Client) -> AsyncIterator[rtc.AudioSource]:
    """Publish an audio track from the client; unpublish it on exit."""
    bridge, room = client.bridge, client.room
    source = await bridge.call(functools.partial(rtc.AudioSource, RATE, 1, loop=bridge.loop))
    track = await bridge.call(rtc.LocalAudioTrack.create_audio_track, "mic", source)
    options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
    publication = await bridge.run(room.local_participant.publish_track, track, options)
    try:
        yield source
    finally:
        with trio.CancelScope(shield=True):
            await bridge.run(room.local_participant.unpublish_track, publication.sid)
            await bridge.run(source.aclose)


async def play(client: Client, source: rtc.AudioSource, samples: np.ndarray) -> None:
    """Capture *samples* into the client's source, 10 ms at a time (real time)."""

    async def capture() -> None:  # bridge thread
        for start in range(0, len(samples) - 479, 480):
            chunk = samples[start : start + 480]
            await source.capture_frame(rtc.AudioFrame(chunk.tobytes(), RATE, 1, 480))

    await client.bridge.run(capture)


# ------------------------------------------------------------------ membership and events


async def test_agent_sees_join_publish_and_leave_in_order(server: DevServer) -> None:
    async with open_agent(server, "e2e-events") as agent:
        events = agent.events()
        token = join_token(server, "e2e-events", "alice")
        async with open_client(agent.bridge, server.url, token) as alice:
            async with client_microphone(alice):
                await until(events, lambda e: isinstance(e, TrackSubscribed))
            await until(events, lambda e: isinstance(e, TrackUnpublished))
        seen = await until(events, lambda e: isinstance(e, ParticipantDisconnected))
    names = [type(e).__name__ for e in seen]
    assert names[-1] == "ParticipantDisconnected"
    assert all(getattr(e, "identity", "alice") == "alice" for e in seen)
    assert agent.statistics().events_dropped == 0


async def test_events_arrive_in_order_with_snapshots(server: DevServer) -> None:
    async with open_agent(server, "e2e-order") as agent:
        events = agent.events()
        token = join_token(server, "e2e-order", "bob")
        async with open_client(agent.bridge, server.url, token) as bob, client_microphone(bob):
            seen = await until(events, lambda e: isinstance(e, TrackSubscribed))
        seen += await until(events, lambda e: isinstance(e, ParticipantDisconnected))
    kinds = [type(e) for e in seen if type(e) in _ORDERED]
    assert kinds == list(_ORDERED)
    joined = next(e for e in seen if isinstance(e, ParticipantConnected))
    assert (joined.identity, joined.info.name) == ("bob", "Bob")
    published = next(e for e in seen if isinstance(e, TrackPublished))
    assert published.track.kind == rtc.TrackKind.KIND_AUDIO
    assert published.track.source == rtc.TrackSource.SOURCE_MICROPHONE


_ORDERED = (
    ParticipantConnected,
    TrackPublished,
    TrackSubscribed,
    TrackUnpublished,
    ParticipantDisconnected,
)


async def test_wait_for_participant(server: DevServer) -> None:
    async with open_agent(server, "e2e-wait") as agent, trio.open_nursery() as nursery:

        async def join_later() -> None:
            token = join_token(server, "e2e-wait", "carol")
            async with open_client(agent.bridge, server.url, token):
                await agent.wait_disconnected()  # stay until the test ends

        nursery.start_soon(join_later)
        with trio.fail_after(SAFETY_TIMEOUT):
            carol = await agent.wait_for_participant("carol")
        assert carol.identity == "carol"
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------ data, RPC, text


async def test_data_echo(server: DevServer) -> None:
    async with open_agent(server, "e2e-data") as agent, trio.open_nursery() as nursery:
        events = agent.events()

        async def echo() -> None:
            async for event in events:
                if isinstance(event, DataReceived) and event.topic == "echo":
                    await agent.publish_data(
                        event.payload, destination_identities=[event.identity], topic="reply"
                    )

        nursery.start_soon(echo)
        token = join_token(server, "e2e-data", "dave")
        async with open_client(agent.bridge, server.url, token) as dave:
            await agent.wait_for_participant("dave")
            publish = dave.room.local_participant.publish_data
            await dave.bridge.run(functools.partial(publish, b"ping", topic="echo"))
            (packet,) = await dave.next("data_received")
            assert (packet.data, packet.topic, packet.participant.identity) == (
                b"ping",
                "reply",
                "agent",
            )
        nursery.cancel_scope.cancel()


async def test_rpc_round_trips_both_ways(server: DevServer) -> None:
    async def reverse(data: rtc.RpcInvocationData) -> str:
        await trio.lowlevel.checkpoint()
        if data.payload == "fail":
            raise rtc.RpcError(2000, "refused by the agent")
        return data.payload[::-1]

    async with open_agent(server, "e2e-rpc") as agent:
        await agent.register_rpc_method("reverse", reverse)
        token = join_token(server, "e2e-rpc", "erin")
        async with open_client(agent.bridge, server.url, token) as erin:
            await agent.wait_for_participant("erin")
            perform = functools.partial(
                erin.room.local_participant.perform_rpc, destination_identity="agent"
            )
            assert (
                await erin.bridge.run(functools.partial(perform, method="reverse", payload="abc"))
                == "cba"
            )
            with pytest.raises(rtc.RpcError) as exc_info:
                await erin.bridge.run(functools.partial(perform, method="reverse", payload="fail"))
            assert exc_info.value.code == 2000

            def shout(data: rtc.RpcInvocationData) -> str:  # the client's (asyncio) handler
                return data.payload.upper()

            await erin.bridge.call(erin.room.local_participant.register_rpc_method, "shout", shout)
            assert await agent.perform_rpc("erin", "shout", "hello") == "HELLO"
        assert agent.statistics().rpc_invocations == 2


async def test_send_text_both_ways(server: DevServer) -> None:
    async with open_agent(server, "e2e-text") as agent, agent.text_streams("chat") as streams:
        token = join_token(server, "e2e-text", "frank")
        async with open_client(agent.bridge, server.url, token) as frank:
            await agent.wait_for_participant("frank")
            send = frank.room.local_participant.send_text
            await frank.bridge.run(functools.partial(send, "hello agent", topic="chat"))
            with trio.fail_after(SAFETY_TIMEOUT):
                stream = await streams.receive()
            assert (stream.identity, stream.topic) == ("frank", "chat")
            assert await stream.read_all() == "hello agent"

            texts = Handoff[str]()
            received = texts.subscribe(10)

            def on_text(reader: rtc.TextStreamReader, identity: str) -> None:  # bridge thread
                async def read() -> None:
                    texts.put(f"{identity}: {await reader.read_all()}")

                agent.bridge.loop.create_task(read())

            await frank.bridge.call(frank.room.register_text_stream_handler, "chat", on_text)
            await agent.send_text("hi frank", topic="chat", destination_identities=["frank"])
            with trio.fail_after(SAFETY_TIMEOUT):
                assert await received.receive() == "agent: hi frank"


# ------------------------------------------------------------------ audio


async def test_audio_echo_carries_a_440_hz_tone(server: DevServer) -> None:
    async with open_agent(server, "e2e-audio") as agent, trio.open_nursery() as nursery:
        events = agent.events()

        async def echo() -> None:
            subscribed = (await until(events, lambda e: isinstance(e, TrackSubscribed)))[-1]
            assert isinstance(subscribed, TrackSubscribed)
            async with (
                open_audio_stream(subscribed.rtc_track, sample_rate=RATE) as frames,
                agent.publish_audio(sample_rate=RATE, queue_ms=100) as out,
            ):
                async for frame in frames:
                    await out.write(frame.samples)

        nursery.start_soon(echo)
        token = join_token(server, "e2e-audio", "gina")
        async with (
            open_client(agent.bridge, server.url, token) as gina,
            client_microphone(gina) as mic,
        ):
            nursery.start_soon(play, gina, mic, tone(440, 2.0))
            track, _publication, participant = await gina.next("track_subscribed")
            assert participant.identity == "agent"
            async with open_audio_stream(track, sample_rate=RATE) as heard:
                received: list[np.ndarray] = []
                with trio.fail_after(SAFETY_TIMEOUT):
                    async for frame in heard:
                        if received or np.abs(frame.samples).max() > 1_000:
                            received.append(frame.samples.copy())
                        if len(received) == 30:
                            break
        nursery.cancel_scope.cancel()
    assert abs(peak_hz(np.concatenate(received), RATE) - 440) <= 5


# ------------------------------------------------------------------ slow consumers


async def test_a_slow_consumer_neither_deadlocks_nor_slows_the_others(server: DevServer) -> None:
    n = 200
    async with open_agent(server, "e2e-slow") as agent:
        slow = agent.events(4)  # never read
        fast = agent.events(1_024)
        token = join_token(server, "e2e-slow", "hank")
        async with open_client(agent.bridge, server.url, token) as hank:
            await agent.wait_for_participant("hank")
            publish = hank.room.local_participant.publish_data

            async def burst() -> None:  # bridge thread
                for i in range(n):
                    await publish(str(i).encode(), topic="burst")

            await hank.bridge.run(burst)
            payloads = [
                e.payload
                for e in await until(
                    fast, lambda e: isinstance(e, DataReceived) and e.payload == str(n - 1).encode()
                )
                if isinstance(e, DataReceived)
            ]
        assert payloads == [str(i).encode() for i in range(n)]
        stats = agent.statistics()
        slow_stats = stats.events.subscribers[0]
        assert slow_stats.delivered == 4
        assert slow_stats.dropped >= n - 3
        assert stats.events.subscribers[1].dropped == 0
        assert len([slow.receive_nowait() for _ in range(4)]) == 4


# ------------------------------------------------------------------ the analytics example


def _load_example(name: str) -> Any:
    path = pathlib.Path(__file__).parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Changes:
    """Wakes waiters each time the example has handled an event (it runs in Trio)."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait_until(self, predicate: Callable[[], bool]) -> None:
        with trio.fail_after(SAFETY_TIMEOUT):
            while not predicate():
                await self._event.wait()


async def test_room_analytics_example(server: DevServer, monkeypatch: pytest.MonkeyPatch) -> None:
    example = _load_example("room_analytics")
    changes = Changes()
    handle_event = example.handle_event

    def handle_and_notify(session: Any, event: RoomEvent) -> None:
        handle_event(session, event)
        changes.notify()

    monkeypatch.setattr(example, "handle_event", handle_and_notify)
    analytics = example.AnalyticsCollector()
    worker = example.make_worker(worker_options(server, agent_name=example.AGENT_NAME), analytics)
    # A safety net: drain() waits for the job, which ends when the room closes.
    with trio.fail_after(5 * SAFETY_TIMEOUT):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            # Go's default departure timeout (20 s) would keep the job, and drain(), waiting.
            await server.create_room(
                "e2e-analytics",
                agents=[dispatch_pb.RoomAgentDispatch(agent_name=example.AGENT_NAME)],
                departure_timeout=1,
            )
            with trio.fail_after(SAFETY_TIMEOUT):
                await server.wait_for_job(room="e2e-analytics", status=agent_pb.JS_RUNNING)
            async with open_room(server.url, join_token(server, "e2e-analytics", "ivy")) as ivy:
                with trio.fail_after(SAFETY_TIMEOUT):
                    await ivy.wait_for_participant(kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT)
                await ivy.publish_data(b'{"hello": "analytics"}')
                async with ivy.publish_audio(sample_rate=RATE) as out:
                    await out.write(tone(440, 0.1))
                    session = analytics.sessions["e2e-analytics"]
                    await changes.wait_until(lambda: session.stats().tracks == 1)
            await changes.wait_until(lambda: session.stats().participants == 0)
            stats = session.stats()
            assert (stats.data_messages, stats.tracks) == (1, 0)
            assert [p.identity for p in session.participants.values()] == ["ivy"]
            worker.drain()
    assert analytics.summary()[0] == "Total rooms monitored: 1"


# ------------------------------------------------------------------ leaving while joining


async def test_a_join_cancelled_midway_leaves_no_agent_behind(server: DevServer) -> None:
    """Cancelled after the server let the agent in, before its connect returned.

    livekit's native side, once it has answered the connect, kills the process if
    the Python side never confirms (rust-sdks#1188); cancelling the native connect
    there did exactly that. The join must end with the agent out of the room.
    """

    def in_room(expected: bool) -> bool | None:
        room = server.rooms.get("e2e-abandon")
        inside = room is not None and "agent" in room.participants
        return True if inside == expected else None

    async with trio.open_nursery() as nursery:

        async def join() -> None:
            async with open_agent(server, "e2e-abandon"):
                await trio.sleep_forever()

        nursery.start_soon(join)
        with trio.fail_after(SAFETY_TIMEOUT):
            # The JoinResponse is out; the agent's connect waits for its peer connection.
            await server.wait_until(lambda: in_room(True))
        nursery.cancel_scope.cancel()
    with trio.fail_after(SAFETY_TIMEOUT):
        await server.wait_until(lambda: in_room(False))


# ------------------------------------------------------------------ ending a job


class JobProbe:
    """An entrypoint that joins its room and stays until the job is ended; what it saw."""

    def __init__(self) -> None:
        self.ctx: JobContext | None = None
        self.left_room = trio.Event()
        self.reason_at_exit: str | None = None

    async def entrypoint(self, ctx: JobContext) -> None:
        self.ctx = ctx
        try:
            async with ctx.connect() as room:
                async for event in room.events():
                    if isinstance(event, DataReceived) and event.payload == b"please leave":
                        ctx.shutdown("asked to leave")
        finally:
            self.reason_at_exit = ctx.shutdown_reason
            self.left_room.set()


@asynccontextmanager
async def agent_in_room(
    server: DevServer, room: str, probe: JobProbe
) -> AsyncIterator[tuple[Any, Client]]:
    """A worker running *probe* in *room*, and a plain client that has seen the agent join."""
    worker = Worker(probe.entrypoint, worker_options(server))
    async with open_bridge() as bridge, trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        await server.create_dispatch(room, "test-agent")
        with trio.fail_after(SAFETY_TIMEOUT):
            job = await server.wait_for_job(room=room, status=agent_pb.JS_RUNNING)
        async with open_client(bridge, server.url, join_token(server, room, "watcher")) as client:
            with trio.fail_after(SAFETY_TIMEOUT):
                while job.accepted_identity not in client.room.remote_participants:
                    await client.next("participant_connected")
            yield job, client
        worker.drain()


async def wait_agent_gone(client: Client, identity: str) -> rtc.RemoteParticipant:
    while True:
        (participant,) = await client.next("participant_disconnected")
        if participant.identity == identity:
            return participant


async def test_terminating_the_job_takes_the_agent_out_of_the_room(server: DevServer) -> None:
    probe = JobProbe()
    async with agent_in_room(server, "e2e-terminate", probe) as (job, client):
        agent = job.accepted_identity
        assert agent in server.rooms["e2e-terminate"].participants
        await server.terminate_job(job.id)
        await wait_agent_gone(client, agent)
        assert agent not in server.rooms["e2e-terminate"].participants
        assert agent not in client.room.remote_participants
        with trio.fail_after(SAFETY_TIMEOUT):
            await server.wait_job_status(job.id, agent_pb.JS_SUCCESS)
    # The entrypoint left its block inside the job's cancel scope; the room itself is
    # left by the job's teardown, after the final status.
    assert probe.left_room.is_set()
    assert probe.reason_at_exit == "terminated by the server"
    assert job.status_history[-2:] == [agent_pb.JS_RUNNING, agent_pb.JS_SUCCESS]
    assert job.termination is not None
    assert not job.job.state.error


async def test_ctx_shutdown_takes_the_agent_out_of_the_room(server: DevServer) -> None:
    probe = JobProbe()
    async with agent_in_room(server, "e2e-shutdown", probe) as (job, client):
        agent = job.accepted_identity
        publish = client.room.local_participant.publish_data
        await client.bridge.run(functools.partial(publish, b"please leave"))
        await wait_agent_gone(client, agent)
        assert agent not in server.rooms["e2e-shutdown"].participants
        with trio.fail_after(SAFETY_TIMEOUT):
            await server.wait_job_status(job.id, agent_pb.JS_SUCCESS)  # any end
    assert probe.left_room.is_set()
    assert probe.reason_at_exit == "asked to leave"
    # The final status reached the server before the agent left the room (which
    # Go, and the dev server, record as JS_FAILED "agent worker left the room").
    assert job.status_history[-2:] == [agent_pb.JS_RUNNING, agent_pb.JS_SUCCESS]
    assert not job.job.state.error


# ------------------------------------------------------------------ exit


async def test_a_room_job_exits_without_a_word_from_livekit() -> None:
    """Room, audio in and out, a job ending, the process exiting: nothing on stderr.

    Runs ``tests/peers/room_job_exit.py`` as a newcomer would run a program; livekit
    logs through the ``livekit`` logger (WARNING and up reach stderr) and from its
    native threads, so anything logged late, during or after interpreter exit,
    would show up here.
    """
    script = pathlib.Path(__file__).parent / "peers" / "room_job_exit.py"
    with trio.fail_after(60):  # a safety net for a subprocess, not a timing assertion
        result = await trio.run_process(
            [sys.executable, str(script)], capture_stdout=True, capture_stderr=True, check=False
        )
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().splitlines()[-1] == "job ended JS_SUCCESS; bye"
    assert result.stderr.decode() == ""
