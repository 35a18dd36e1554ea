"""Benchmark the asyncio bridge: hand-off throughput, call latency, native audio latency.

Run: ``python bench/bench_bridge.py`` (prints figures; this is not a test).

1. Items/s through :class:`Handoff` from the asyncio thread into a Trio channel with
   one consumer, with a plain ``async for`` consumer and with one that drains what is
   buffered with ``receive_nowait`` after each ``receive``. For scale, the cost of
   Trio's own ``receive()`` on an already-filled channel is printed too: a per-item
   consumer cannot go faster than that.
2. Round-trip latency of ``AsyncioBridge.run`` and ``AsyncioBridge.call`` (p50/p99).
3. With ``livekit.rtc`` offline audio loopback (AudioSource -> LocalAudioTrack ->
   AudioStream), the latency from the native stream yielding a frame on the asyncio
   side to the Trio consumer receiving it (p50/p99). For scale, the same with an
   asyncio timer instead of native audio, and the floor: a plain thread waking an
   idle Trio with ``run_sync_soon`` (OS thread wake-up plus GIL hand-off).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable

import numpy as np
import trio

from trio_lkagent._bridge import AsyncioBridge, Handoff, open_bridge

N_ITEMS = 200_000
N_CALLS = 5_000
N_FRAMES = 300  # 3 s of 10 ms frames
SAMPLE_RATE = 48_000
SAMPLES_PER_FRAME = 480


def percentiles(samples_s: list[float]) -> str:
    """Format p50/p99/max of durations in seconds as microseconds."""
    ordered = sorted(samples_s)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1e6

    return f"p50 {pick(0.50):7.1f} us | p99 {pick(0.99):7.1f} us | max {ordered[-1] * 1e6:7.1f} us"


async def trio_receive_reference() -> float:
    """Seconds per item for trio's own receive() on a pre-filled channel."""
    send, receive = trio.open_memory_channel[int](N_ITEMS)
    for i in range(N_ITEMS):
        send.send_nowait(i)
    start = time.perf_counter()
    for _ in range(N_ITEMS):
        await receive.receive()
    return (time.perf_counter() - start) / N_ITEMS


async def consume_each(receive: trio.MemoryReceiveChannel[int], n: int) -> None:
    """Receive n items one `receive()` at a time."""
    count = 0
    async for _ in receive:
        count += 1
        if count == n:
            return


async def consume_batched(receive: trio.MemoryReceiveChannel[int], n: int) -> None:
    """Receive n items, draining what is buffered after each wake-up."""
    count = 0
    while count < n:
        await receive.receive()
        count += 1
        try:
            while True:
                receive.receive_nowait()
                count += 1
        except trio.WouldBlock:
            pass


async def bench_handoff(
    bridge: AsyncioBridge,
    consumer: Callable[[trio.MemoryReceiveChannel[int], int], object],
) -> tuple[float, float, float]:
    """Best-of-3 (items/s end to end, producer us/item, mean batch size)."""
    best = (0.0, math.inf, 0.0)
    for _ in range(3):
        handoff = Handoff[int]()
        receive = handoff.subscribe(N_ITEMS)

        def produce(put: Callable[[int], None] = handoff.put) -> tuple[float, float]:
            start = time.perf_counter()
            for i in range(N_ITEMS):
                put(i)
            return start, time.perf_counter() - start

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer, receive, N_ITEMS)  # type: ignore[arg-type]
            start, produce_s = await bridge.call(produce)
        elapsed = time.perf_counter() - start
        stats = handoff.statistics()
        assert stats.subscribers[0].delivered == N_ITEMS, stats
        rate = N_ITEMS / elapsed
        if rate > best[0]:
            best = (rate, produce_s / N_ITEMS * 1e6, N_ITEMS / stats.batches)
        handoff.close()
    return best


async def bench_round_trips(bridge: AsyncioBridge) -> None:
    async def nop() -> int:
        return 1

    async def run_nop() -> int:
        return await bridge.run(nop)

    async def call_nop() -> int:
        return await bridge.call(int)

    for label, once in (("run(async nop)", run_nop), ("call(sync nop)", call_nop)):
        for _ in range(500):  # warm-up
            await once()
        samples: list[float] = []
        for _ in range(N_CALLS):
            start = time.perf_counter()
            await once()
            samples.append(time.perf_counter() - start)
        print(f"  {label:16s} round trip: {percentiles(samples)}")


async def bench_wakeup_floor() -> None:
    """How long this machine takes to wake an idle Trio from another thread at all."""
    token = trio.lowlevel.current_trio_token()
    latencies: list[float] = []
    done = trio.Event()

    def record(stamp: float) -> None:
        latencies.append(time.perf_counter() - stamp)
        if len(latencies) == N_FRAMES:
            done.set()

    def ticker() -> None:  # a plain thread, idle between ticks like a 10 ms audio clock
        for _ in range(N_FRAMES):
            time.sleep(0.01)
            token.run_sync_soon(record, time.perf_counter())

    thread = threading.Thread(target=ticker)
    thread.start()
    await done.wait()
    thread.join()
    print(f"  (floor) plain thread -> run_sync_soon -> Trio:   {percentiles(latencies)}")


async def bench_handoff_latency(bridge: AsyncioBridge) -> None:
    """asyncio timer -> Handoff.put -> Trio consumer, every 10 ms, no native code."""
    handoff = Handoff[float]()
    stamps = handoff.subscribe(64)

    async def tick() -> None:  # asyncio side
        for _ in range(N_FRAMES):
            await asyncio.sleep(0.01)
            handoff.put(time.perf_counter())

    latencies: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bridge.run, tick)
        async for stamp in stamps:
            latencies.append(time.perf_counter() - stamp)
            if len(latencies) == N_FRAMES:
                break
    print(f"  asyncio timer -> Handoff -> Trio:              {percentiles(latencies)}")


async def bench_audio(bridge: AsyncioBridge) -> None:
    from livekit import rtc

    source = await bridge.call(rtc.AudioSource, SAMPLE_RATE, 1, 200)
    track = await bridge.call(rtc.LocalAudioTrack.create_audio_track, "bench", source)
    stream = await bridge.call(
        lambda: rtc.AudioStream.from_track(track=track, sample_rate=SAMPLE_RATE, num_channels=1)
    )
    handoff = Handoff[tuple[float, rtc.AudioFrame]]()
    frames = handoff.subscribe(64)
    tone = (np.sin(2 * np.pi * 440 * np.arange(SAMPLES_PER_FRAME) / SAMPLE_RATE) * 8000).astype(
        np.int16
    )
    frame = rtc.AudioFrame(tone.tobytes(), SAMPLE_RATE, 1, SAMPLES_PER_FRAME)

    feeding = True

    async def feed() -> None:  # asyncio: paced by the source's queue
        # Stopped between frames, not cancelled: a capture_frame cancelled in flight
        # leaves a native request behind that logs an error at process exit.
        while feeding:
            await source.capture_frame(frame)

    async def pump() -> None:  # asyncio: stamp when the native stream yields
        async for event in stream:
            handoff.put((time.perf_counter(), event.frame))

    latencies: list[float] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bridge.run, pump)
        async with trio.open_nursery() as feeder:
            feeder.start_soon(bridge.run, feed)
            async for stamp, _frame in frames:
                latencies.append(time.perf_counter() - stamp)
                if len(latencies) == N_FRAMES:
                    break
            feeding = False  # read on the asyncio thread; the feeder ends within 10 ms
        nursery.cancel_scope.cancel()
    await bridge.run(stream.aclose)
    await bridge.run(source.aclose)
    dropped = handoff.statistics().subscribers[0].dropped
    print(
        f"  native AudioStream -> Handoff -> Trio:         {percentiles(latencies[10:])}"
        f" ({dropped} dropped)"
    )


async def main() -> None:
    async with open_bridge() as bridge:
        print(f"Handoff, asyncio thread -> 1 Trio consumer, {N_ITEMS:,} items, best of 3")
        reference = await trio_receive_reference()
        print(
            f"  (reference) trio receive() alone: {reference * 1e6:.2f} us/item"
            f" = {1 / reference:,.0f} items/s ceiling for a per-item consumer"
        )
        for label, consumer in (
            ("async for", consume_each),
            ("receive + receive_nowait", consume_batched),
        ):
            rate, produce_us, batch = await bench_handoff(bridge, consumer)
            print(
                f"  {label:26s}: {rate:>9,.0f} items/s end to end | put() {produce_us:.2f} us"
                f"/item | mean batch {batch:,.0f}"
            )
        print(f"AsyncioBridge round trips, {N_CALLS} calls")
        await bench_round_trips(bridge)
        print(f"asyncio -> Trio latency, one item every 10 ms, {N_FRAMES} items")
        await bench_wakeup_floor()
        await bench_handoff_latency(bridge)
        await bench_audio(bridge)


if __name__ == "__main__":
    trio.run(main)
