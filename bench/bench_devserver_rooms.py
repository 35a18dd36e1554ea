"""Benchmark the dev server's rooms with real ``livekit.rtc`` clients over WebRTC.

Run: ``python bench/bench_devserver_rooms.py`` (prints figures; this is not a test).

1. Join time: ``open_room`` (WebSocket, JoinResponse, ICE + DTLS on loopback,
   data channels open) for N successive participants, p50/p90/max.
2. Data round trip: alice sends a reliable packet to bob, bob's Trio task sends
   it straight back; alice's Trio task times the round trip (two hops through the
   server's relay on the asyncio loop, four bridge hand-offs), p50/p90/p99.
3. Audio through the server: alice publishes a 10 ms-framed tone, bob reads it as
   numpy; the time from alice's write to bob hearing sound (includes Opus encode,
   aiortc decode/re-encode in the server's relay, jitter buffering).

All in one process (server, bridge, both clients), on this machine's 2 cores.
"""

from __future__ import annotations

import math
import time

import numpy as np
import trio

from trio_lkagent import open_audio_stream
from trio_lkagent._tracks import AudioOutput
from trio_lkagent.devserver import open_devserver
from trio_lkagent.events import DataReceived, TrackSubscribed

N_JOINS = 20
N_ROUNDS = 300
RATE = 48_000
SILENCE = np.zeros(480, np.int16)
TONE = (np.sin(2 * np.pi * 440 * np.arange(480 * 50) / RATE) * 10_000).astype(np.int16)


def summary(samples_s: list[float]) -> str:
    ordered = sorted(samples_s)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)] * 1e3

    return (
        f"p50 {pick(0.5):7.2f} ms | p90 {pick(0.9):7.2f} ms | p99 {pick(0.99):7.2f} ms"
        f" | max {ordered[-1] * 1e3:7.2f} ms  (n={len(ordered)})"
    )


async def bench_joins(server: object) -> None:
    from trio_lkagent.devserver import DevServer

    assert isinstance(server, DevServer)
    times: list[float] = []
    for i in range(N_JOINS):
        start = time.perf_counter()
        async with server.open_participant("bench-join", f"p{i}"):
            times.append(time.perf_counter() - start)
    print(f"join (open_room until connected):  {summary(times)}")


async def bench_data(server: object) -> None:
    from trio_lkagent.devserver import DevServer

    assert isinstance(server, DevServer)
    async with (
        server.open_participant("bench-data", "alice") as alice,
        server.open_participant("bench-data", "bob") as bob,
        trio.open_nursery() as nursery,
    ):
        alice_events = alice.events()
        bob_events = bob.events()
        await alice.wait_for_participant("bob")

        async def echo() -> None:
            async for event in bob_events:
                if isinstance(event, DataReceived):
                    await bob.publish_data(event.payload, destination_identities=["alice"])

        nursery.start_soon(echo)
        rtts: list[float] = []
        for i in range(N_ROUNDS):
            start = time.perf_counter()
            await alice.publish_data(str(i).encode(), destination_identities=["bob"])
            async for event in alice_events:
                if isinstance(event, DataReceived):
                    break
            rtts.append(time.perf_counter() - start)
        nursery.cancel_scope.cancel()
    print(f"data round trip (alice->bob->alice): {summary(rtts[10:])}")


async def bench_audio(server: object) -> None:
    from trio_lkagent.devserver import DevServer

    assert isinstance(server, DevServer)
    latencies: list[float] = []
    for attempt in range(5):
        room = f"bench-audio-{attempt}"
        async with (
            server.open_participant(room, "alice") as alice,
            server.open_participant(room, "bob") as bob,
        ):
            events = bob.events()
            async with alice.publish_audio(
                sample_rate=RATE, num_channels=1, name="mic", queue_ms=20
            ) as mic:
                for _ in range(20):  # let the track get subscribed and flowing
                    await mic.write(SILENCE)
                async for event in events:
                    if isinstance(event, TrackSubscribed):
                        track = event.rtc_track
                        break
                async with open_audio_stream(track, sample_rate=RATE) as heard:
                    started: list[float] = []

                    async def play(out: AudioOutput, started: list[float]) -> None:
                        for _ in range(30):
                            await out.write(SILENCE)
                        started.append(time.perf_counter())
                        await out.write(TONE)

                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(play, mic, started)
                        async for frame in heard:
                            if started and np.abs(frame.samples).max() > 2_000:
                                latencies.append(time.perf_counter() - started[0])
                                break
    print(f"audio write -> heard via server:    {summary(latencies)}")


async def main() -> None:
    async with open_devserver() as server:
        await bench_joins(server)
        await bench_data(server)
        await bench_audio(server)


if __name__ == "__main__":
    trio.run(main)
