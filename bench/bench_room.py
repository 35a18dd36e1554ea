"""Benchmark the room layer: room events into Trio channels, native audio into a Trio handler.

Run: ``python bench/bench_room.py`` (prints figures; this is not a test).

1. Room events/s from ``livekit.rtc``'s ``Room.emit`` (the point where livekit hands
   an event to listeners, on the asyncio thread) to Trio consumers of
   :meth:`Room.events`: our dispatcher builds a frozen event and puts it into the
   hand-off; consumers drain with ``async for`` or in batches (``receive`` then
   ``receive_nowait`` until empty). Also: the producer-side cost per event, the same
   through livekit's stock ``room.on()`` callback path (for scale), and the cost of
   livekit's full native-event handling (``_on_room_event`` on a protobuf) that comes
   before ``emit`` in a real room.
2. Audio latency with the offline loop (AudioSource -> LocalAudioTrack ->
   :func:`open_audio_stream`): from the moment the native library delivers a frame
   (its FFI callback, on a native thread) to the Trio task receiving it, p50/p99.
   For scale, the floor of this machine: a plain thread waking an idle Trio.
3. Through the in-package dev server, with a plain ``livekit.rtc`` client in the
   room (server, agent and client share this process, its asyncio loop and the
   GIL):

   * data packets from the client -> :meth:`Room.events` of the agent, events/s;
   * the client's audio -> the agent's :func:`open_audio_stream`: native frame
     callback -> Trio handler, and the same through ``rtc.AudioStream`` and the
     asyncio loop (the path ``open_audio_stream`` took before), interleaved;
   * ``DevServer.terminate_job`` -> the client sees ``participant_disconnected``
     for the agent (the job is cancelled, leaves the room, the server tells the
     client), and -> the server has the job's final status.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import trio
import trio.testing
from livekit import rtc
from livekit.protocol import agent as agent_pb
from livekit.rtc._ffi_client import FfiClient
from livekit.rtc._proto import handle_pb2 as handle_pb
from livekit.rtc._proto import participant_pb2 as participant_pb
from livekit.rtc._proto import room_pb2 as room_pb

from trio_lkagent import JobContext, Worker, WorkerOptions
from trio_lkagent._bridge import AsyncioBridge, Handoff
from trio_lkagent._events import DataReceived, RoomEvent, TrackSubscribed
from trio_lkagent._room import Room, _open_unconnected_room, open_room
from trio_lkagent._tracks import open_audio_output, open_audio_stream
from trio_lkagent.devserver import DevServer, open_devserver

N_EVENTS = 200_000
N_FRAMES = 300  # 3 s of 10 ms audio
RATE = 48_000


def percentiles(samples_s: list[float]) -> str:
    ordered = sorted(samples_s)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1e6

    return f"p50 {pick(0.50):7.1f} us | p99 {pick(0.99):7.1f} us | max {ordered[-1] * 1e6:7.1f} us"


async def consume_each(events: trio.MemoryReceiveChannel[RoomEvent], n: int) -> None:
    count = 0
    async for _ in events:
        count += 1
        if count == n:
            return


async def consume_batched(events: trio.MemoryReceiveChannel[RoomEvent], n: int) -> None:
    count = 0
    while count < n:
        await events.receive()
        count += 1
        try:
            while True:
                events.receive_nowait()
                count += 1
        except trio.WouldBlock:
            pass


def _add_sender(rtc_room: rtc.Room) -> rtc.RemoteParticipant:  # bridge thread
    info = participant_pb.ParticipantInfo(identity="alice", sid="PA_alice")
    owned = participant_pb.OwnedParticipant(handle=handle_pb.FfiOwnedHandle(id=0), info=info)
    participant = rtc.RemoteParticipant(owned)
    rtc_room._remote_participants["alice"] = participant
    return participant


async def bench_events(
    room: Room,
    consumer: Callable[[trio.MemoryReceiveChannel[RoomEvent], int], Any],
    subscribers: int,
) -> tuple[float, float]:
    """Best of 3: (events/s end to end for the slowest consumer, producer us/event)."""
    sender = await room.bridge.call(_add_sender, room.rtc_room)
    packet = rtc.DataPacket(data=b"x" * 32, kind=1, participant=sender, topic="t")
    best = (0.0, math.inf)
    for _ in range(3):
        channels = [room.events(N_EVENTS) for _ in range(subscribers)]

        def produce(emit: Callable[..., None] = room.rtc_room.emit) -> tuple[float, float]:
            start = time.perf_counter()
            for _ in range(N_EVENTS):
                emit("data_received", packet)
            return start, time.perf_counter() - start

        async with trio.open_nursery() as nursery:
            for channel in channels:
                nursery.start_soon(consumer, channel, N_EVENTS)
            start, produce_s = await room.bridge.call(produce)
        elapsed = time.perf_counter() - start
        for channel in channels:
            channel.close()
        rate = N_EVENTS / elapsed
        if rate > best[0]:
            best = (rate, produce_s / N_EVENTS * 1e6)
    return best


async def bench_producer_paths(room: Room) -> None:
    """Per-event cost on the asyncio thread of the paths before our hand-off."""
    n = 20_000
    sender = await room.bridge.call(_add_sender, room.rtc_room)
    packet = rtc.DataPacket(data=b"x" * 32, kind=1, participant=sender, topic="t")

    def stock_emitter() -> float:  # livekit's EventEmitter with one on() callback
        emitter = rtc.EventEmitter[str]()
        sink: list[object] = []
        emitter.on("data_received", lambda p: sink.append(p))
        start = time.perf_counter()
        for _ in range(n):
            emitter.emit("data_received", packet)
        return (time.perf_counter() - start) / n

    payload = ctypes.create_string_buffer(b"x" * 32, 32)
    user = room_pb.UserPacket(
        data=room_pb.OwnedBuffer(
            handle=handle_pb.FfiOwnedHandle(id=0),
            data=room_pb.BufferInfo(data_ptr=ctypes.addressof(payload), data_len=32),
        ),
        topic="t",
    )
    proto = room_pb.RoomEvent(
        data_packet_received=room_pb.DataPacketReceived(
            kind=room_pb.KIND_RELIABLE, participant_identity="alice", user=user
        )
    )

    def native_path() -> float:  # livekit's protobuf handling, then our emit
        handle = room.rtc_room._on_room_event
        start = time.perf_counter()
        for _ in range(n):
            handle(proto)
        return (time.perf_counter() - start) / n

    sink = room.events(n)  # a subscriber, so the hand-off does its full work
    ours = await room.bridge.call(native_path)
    sink.close()
    stock = await room.bridge.call(stock_emitter)
    print(f"  livekit on() callback, per emit (for scale):        {stock * 1e6:6.2f} us/event")
    print(f"  livekit _on_room_event(proto) + our emit, no reader: {ours * 1e6:6.2f} us/event")


async def bench_audio_latency() -> None:
    """Native FFI callback (native thread) -> ... -> Trio task, offline audio loop."""
    stamps: list[float] = []
    lock = threading.Lock()

    def stamp(event: Any) -> bool:  # called by livekit's FFI callback, on a native thread
        if event.WhichOneof(
            "message"
        ) == "audio_stream_event" and event.audio_stream_event.HasField("frame_received"):
            with lock:
                stamps.append(time.perf_counter())
        return False  # deliver nothing: this subscriber only observes

    tone = (np.sin(2 * np.pi * 440 * np.arange(RATE * 4) / RATE) * 8000).astype(np.int16)
    latencies: list[float] = []
    async with open_audio_output(sample_rate=RATE, queue_ms=200) as out:
        observer = await out._bridge.call(
            lambda: FfiClient.instance.queue.subscribe(out._bridge.loop, filter_fn=stamp)
        )
        try:
            async with (
                open_audio_stream(out.track, sample_rate=RATE) as frames,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(out.write, tone)
                index = 0
                async for _frame in frames:
                    now = time.perf_counter()
                    with lock:
                        latencies.append(now - stamps[index])
                    index += 1
                    if index == N_FRAMES:
                        break
                nursery.cancel_scope.cancel()
            dropped = frames.statistics().dropped
        finally:
            await out._bridge.call(FfiClient.instance.queue.unsubscribe, observer)
    print(
        f"  native frame callback -> open_audio_stream -> Trio: {percentiles(latencies[10:])}"
        f" ({dropped} dropped)"
    )


async def bench_wakeup_floor() -> None:
    token = trio.lowlevel.current_trio_token()
    latencies: list[float] = []
    done = trio.Event()

    def record(sent: float) -> None:
        latencies.append(time.perf_counter() - sent)
        if len(latencies) == N_FRAMES:
            done.set()

    def ticker() -> None:
        for _ in range(N_FRAMES):
            time.sleep(0.01)
            token.run_sync_soon(record, time.perf_counter())

    thread = threading.Thread(target=ticker)
    thread.start()
    await done.wait()
    thread.join()
    print(f"  (floor) plain thread -> run_sync_soon -> idle Trio: {percentiles(latencies)}")


# --------------------------------------------------------------------------- through a server

N_PACKETS = 5_000
N_SERVER_FRAMES = 200
N_TERMINATIONS = 20


class Client:
    """A plain ``livekit.rtc`` participant on the bridge loop; its events reach Trio."""

    def __init__(self, bridge: AsyncioBridge, room: rtc.Room) -> None:
        self.bridge = bridge
        self.room = room
        self.handoff = Handoff[tuple[float, str, tuple[Any, ...]]]()
        self.events = self.handoff.subscribe(100_000)

    async def next(self, name: str) -> tuple[float, tuple[Any, ...]]:
        """(perf_counter when Trio got it, args) of the next rtc event *name*."""
        async for _, got, args in self.events:
            if got == name:
                return time.perf_counter(), args
        raise RuntimeError("closed")


@asynccontextmanager
async def open_client(bridge: AsyncioBridge, server: DevServer, room: str) -> AsyncIterator[Client]:
    rtc_room = await bridge.call(functools.partial(rtc.Room, loop=bridge.loop))
    client = Client(bridge, rtc_room)

    def watch() -> None:  # bridge thread
        for name in ("participant_connected", "participant_disconnected", "track_subscribed"):
            rtc_room.on(name, functools.partial(_forward, client.handoff, name))

    await bridge.call(watch)
    token = server.create_participant_token(room, "client")
    await bridge.run(rtc_room.connect, server.url, token, rtc.RoomOptions(auto_subscribe=True))
    try:
        yield client
    finally:
        with trio.CancelScope(shield=True):
            await bridge.run(rtc_room.disconnect)


def _forward(handoff: Handoff[Any], name: str, *args: Any) -> None:  # bridge thread
    handoff.put((time.perf_counter(), name, args))


async def bench_server_events(server: DevServer) -> None:
    async with open_room(server.url, server.create_participant_token("ev", "agent")) as agent:
        events = agent.events(2 * N_PACKETS)
        async with open_client(agent.bridge, server, "ev") as client:
            await agent.wait_for_participant("client")
            publish = client.room.local_participant.publish_data

            async def burst() -> float:  # bridge thread
                start = time.perf_counter()
                for i in range(N_PACKETS):
                    await publish(str(i).encode(), topic="burst")
                return start

            start = await client.bridge.run(burst)
            last = str(N_PACKETS - 1).encode()
            async for event in events:
                if isinstance(event, DataReceived) and event.payload == last:
                    break
            elapsed = time.perf_counter() - start
    dropped = agent.statistics().events_dropped
    print(
        f"  client publish_data -> server -> agent events(): {N_PACKETS / elapsed:,.0f}"
        f" events/s ({N_PACKETS:,} packets, {dropped} dropped)"
    )


def _frame_stamper(stamps: list[float], lock: threading.Lock) -> Callable[[Any], bool]:
    def stamp(event: Any) -> bool:  # livekit's FFI callback, native thread
        if event.WhichOneof(
            "message"
        ) == "audio_stream_event" and event.audio_stream_event.HasField("frame_received"):
            with lock:
                stamps.append(time.perf_counter())
        return False

    return stamp


async def _server_audio_round(agent: Room, track: rtc.Track, via_asyncio: bool) -> list[float]:
    stamps: list[float] = []
    lock = threading.Lock()
    bridge = agent.bridge
    observer = await bridge.call(
        lambda: FfiClient.instance.queue.subscribe(
            bridge.loop, filter_fn=_frame_stamper(stamps, lock)
        )
    )
    latencies: list[float] = []
    try:
        if not via_asyncio:
            async with open_audio_stream(track, sample_rate=RATE) as frames:
                async for _frame in frames:
                    now = time.perf_counter()
                    with lock:
                        latencies.append(now - stamps[len(latencies)])
                    if len(latencies) == N_SERVER_FRAMES:
                        break
        else:  # rtc.AudioStream on the loop, then a Handoff to Trio
            stream = await bridge.call(
                functools.partial(
                    rtc.AudioStream.from_track, track=track, loop=bridge.loop, sample_rate=RATE
                )
            )
            handoff = Handoff[rtc.AudioFrame]()
            frames_ = handoff.subscribe(100)

            async def pump() -> None:  # asyncio
                async for event in stream:
                    handoff.put(event.frame)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(bridge.run, pump)
                async for _frame in frames_:
                    now = time.perf_counter()
                    with lock:
                        latencies.append(now - stamps[len(latencies)])
                    if len(latencies) == N_SERVER_FRAMES:
                        break
                nursery.cancel_scope.cancel()
            await bridge.run(stream.aclose)
    finally:
        await bridge.call(FfiClient.instance.queue.unsubscribe, observer)
    return latencies[10:]


async def bench_server_audio(server: DevServer) -> None:
    tone = (np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE) * 8000).astype(np.int16)
    ours: list[float] = []
    stock: list[float] = []
    token = server.create_participant_token("au", "agent")
    async with open_room(server.url, token) as agent, trio.open_nursery() as nursery:
        events = agent.events()
        talker_token = server.create_participant_token("au", "talker")
        async with (
            open_room(server.url, talker_token) as talker,
            talker.publish_audio(sample_rate=RATE) as mic,
        ):

            async def talk() -> None:
                while True:
                    await mic.write(tone)

            nursery.start_soon(talk)
            async for event in events:
                if isinstance(event, TrackSubscribed):
                    track = event.rtc_track
                    break
            for _ in range(3):
                ours += await _server_audio_round(agent, track, via_asyncio=False)
                stock += await _server_audio_round(agent, track, via_asyncio=True)
            nursery.cancel_scope.cancel()
    print(f"  talker -> server -> agent: native frame callback -> Trio, 3 x {N_SERVER_FRAMES}:")
    print(f"    open_audio_stream (native thread -> Trio):       {percentiles(ours)}")
    print(f"    rtc.AudioStream (native -> asyncio loop -> Trio): {percentiles(stock)}")


async def bench_terminate(server: DevServer) -> None:
    connected: collections.defaultdict[str, trio.Event] = collections.defaultdict(trio.Event)
    left: collections.defaultdict[str, trio.Event] = collections.defaultdict(trio.Event)
    left_at: dict[str, float] = {}

    async def entrypoint(ctx: JobContext) -> None:
        try:
            async with ctx.connect():
                connected[ctx.job_id].set()
                await trio.sleep_forever()
        finally:
            left_at[ctx.job_id] = time.perf_counter()  # our side of the room is closed
            left[ctx.job_id].set()

    options = WorkerOptions(
        url=server.url, api_key=server.api_key, api_secret=server.api_secret, agent_name="bench"
    )
    worker = Worker(entrypoint, options)
    agent_side: list[float] = []
    server_side: list[float] = []
    client_side: list[float] = []
    status: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        async with open_room(server.url, server.create_participant_token("x", "x")) as holder:
            bridge = holder.bridge  # keeps the bridge (and its loop) up between rounds
            for i in range(N_TERMINATIONS):
                room = f"term-{i}"
                await server.create_dispatch(room, "bench")
                job = await server.wait_for_job(room=room)
                await connected[job.id].wait()  # the agent's connect has returned
                async with open_client(bridge, server, room) as client:
                    agent = job.accepted_identity
                    while agent not in client.room.remote_participants:
                        await client.next("participant_connected")

                    start = [0.0]  # set just before terminate_job

                    async def server_saw(
                        agent: str = agent, room: str = room, start: list[float] = start
                    ) -> None:
                        def gone() -> bool | None:
                            return True if agent not in server.rooms[room].participants else None

                        await server.wait_until(gone)
                        server_side.append(time.perf_counter() - start[0])

                    async def client_saw(
                        client: Client = client, agent: str = agent, start: list[float] = start
                    ) -> None:
                        while True:
                            at, (participant,) = await client.next("participant_disconnected")
                            if participant.identity == agent:
                                client_side.append(at - start[0])
                                return

                    async with trio.open_nursery() as watchers:
                        watchers.start_soon(server_saw)
                        watchers.start_soon(client_saw)
                        await trio.testing.wait_all_tasks_blocked()
                        start[0] = time.perf_counter()
                        await server.terminate_job(job.id)
                    await server.wait_job_status(job.id, agent_pb.JS_SUCCESS)
                    status.append(time.perf_counter() - start[0])
                    await left[job.id].wait()
                    agent_side.append(left_at[job.id] - start[0])
        worker.drain()
    print(f"  DevServer.terminate_job -> ({N_TERMINATIONS} connected agents; p50 | max)")
    for label, values in (
        ("the job has left the room (ctx.connect() exited)", agent_side),
        ("the server has the agent out of the room", server_side),
        ("a client in the room sees participant_disconnected", client_side),
        ("the server has the job's final status", status),
    ):
        ms = sorted(v * 1e3 for v in values)
        print(f"    {label:52s} {ms[len(ms) // 2]:6.1f} ms | {ms[-1]:6.1f} ms")


async def main() -> None:
    async with _open_unconnected_room() as room:
        print(f"Room events (data_received) -> Trio, {N_EVENTS:,} events, best of 3")
        for label, consumer in (
            ("async for", consume_each),
            ("receive + receive_nowait", consume_batched),
        ):
            for subscribers in (1, 4):
                rate, produce_us = await bench_events(room, consumer, subscribers)
                print(
                    f"  {label:26s} x{subscribers}: {rate:>9,.0f} events/s end to end"
                    f" | emit -> put {produce_us:.2f} us/event"
                )
        await bench_producer_paths(room)
        assert isinstance(DataReceived("a", b""), DataReceived)
    print(f"Audio: native frame -> Trio handler, {N_FRAMES} frames of 10 ms")
    await bench_wakeup_floor()
    await bench_audio_latency()
    print("Through the dev server (one process: server, agent, client)")
    async with open_devserver(
        host="127.0.0.1", port=0, api_key="bench", api_secret="b" * 40
    ) as server:
        await bench_server_events(server)
        await bench_server_audio(server)
        await bench_terminate(server)


if __name__ == "__main__":
    trio.run(main)
