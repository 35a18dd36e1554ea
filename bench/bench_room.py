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
"""

from __future__ import annotations

import ctypes
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import trio
from livekit import rtc
from livekit.rtc._ffi_client import FfiClient
from livekit.rtc._proto import handle_pb2 as handle_pb
from livekit.rtc._proto import participant_pb2 as participant_pb
from livekit.rtc._proto import room_pb2 as room_pb

from trio_lkagent._events import DataReceived, RoomEvent
from trio_lkagent._room import Room, _open_unconnected_room
from trio_lkagent._tracks import open_audio_output, open_audio_stream

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


if __name__ == "__main__":
    trio.run(main)
