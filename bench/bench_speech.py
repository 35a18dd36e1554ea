"""Speech plugin figures: VAD cost per 10 ms frame, STT / TTS real-time factors, and
end of speech -> final transcript latency through the dev server.

    python bench/bench_speech.py [--rounds 3] [--skip-room]

* VAD: the committed utterance (7.5 s, 16 kHz) pushed through ``vad.stream()`` in
  10 ms frames, inline; cost = wall time / frames (best of 3; includes the stream's
  own overhead: channels, events).
* STT: PocketSphinx ``recognize`` on each utterance of the fixture: real-time factor
  = decode time / audio duration, in-process and through an InferenceExecutor
  worker process.
* TTS: eSpeak NG, synthesis time / audio duration.
* Room: a participant plays the fixture ``--rounds`` times through the dev server
  (Opus over WebRTC); an agent runs SileroVAD + PocketSphinx (StreamAdapter, shared
  executor) and sends each final transcript as data. Latency = the agent's
  ``END_OF_SPEECH`` (the VAD has seen ``min_silence_duration`` of silence) -> the
  participant receives the transcript. Add ``min_silence_duration`` (0.5 s here)
  for the time from the last spoken sound.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import trio

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "data" / "utterance.wav"


def load() -> tuple[np.ndarray, int]:
    with wave.open(str(FIXTURE), "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), np.int16).copy(), w.getframerate()


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def bench_vad() -> None:
    from trio_lkagent._media import AudioFrame
    from trio_lkagent.plugins import EnergyVAD, SileroVAD, WebRTCVAD

    samples, rate = load()
    frames = [
        AudioFrame(samples[i : i + 160], rate, 1, i / rate)
        for i in range(0, len(samples) - 159, 160)
    ]
    for make in (EnergyVAD, WebRTCVAD, SileroVAD):
        best = float("inf")
        for _ in range(3):
            vad = make()
            start = time.perf_counter()
            async with vad.stream(max_buffer_size=len(frames) + 1) as s:
                for f in frames:
                    s.push_frame(f)
                s.end_input()
                async for _event in s:
                    pass
            best = min(best, time.perf_counter() - start)
        print(f"VAD {make.__name__:10s} {best / len(frames) * 1e6:7.1f} µs per 10 ms frame")


async def bench_stt_tts() -> None:
    from trio_lkagent._media import AudioFrame
    from trio_lkagent.plugins import (
        EspeakTTS,
        PocketSphinxSTT,
        open_inference_executor,
        warm_pocketsphinx,
    )

    samples, rate = load()
    parts = [samples[: int(3.7 * rate)], samples[int(3.7 * rate) :]]
    stt = PocketSphinxSTT()
    await stt.recognize(AudioFrame(parts[0][:rate], rate))  # load the model
    for label, engine in (("in-process", stt),):
        for part in parts:
            start = time.perf_counter()
            await engine.recognize(AudioFrame(part, rate))
            elapsed = time.perf_counter() - start
            print(
                f"STT PocketSphinx {label:12s} {len(part) / rate:4.1f} s of audio:"
                f" RTF {elapsed / (len(part) / rate):.2f}"
            )
    async with open_inference_executor(
        threads=1, processes=1, warmup=[warm_pocketsphinx]
    ) as executor:
        remote = PocketSphinxSTT(executor=executor)
        for part in parts:
            start = time.perf_counter()
            await remote.recognize(AudioFrame(part, rate))
            elapsed = time.perf_counter() - start
            print(
                f"STT PocketSphinx {'executor':12s} {len(part) / rate:4.1f} s of audio:"
                f" RTF {elapsed / (len(part) / rate):.2f}"
            )
    tts = EspeakTTS()
    text = "the weather today is sunny and warm, and tomorrow it will rain in the afternoon"
    start = time.perf_counter()
    first = None
    async with tts.synthesize(text) as audio:
        chunks = []
        async for frame in audio:
            first = first or time.perf_counter() - start
            chunks.append(frame)
    elapsed = time.perf_counter() - start
    duration = sum(f.duration for f in chunks)
    print(
        f"TTS eSpeak NG {duration:4.1f} s of audio: RTF {elapsed / duration:.3f},"
        f" first frame after {first * 1e3 if first else 0:.1f} ms"
    )


async def bench_room(rounds: int) -> None:
    from livekit import api as lkapi
    from livekit import rtc
    from livekit.protocol import agent_dispatch as dispatch_pb

    from trio_lkagent import JobContext, Worker, WorkerOptions, open_audio_stream, open_room
    from trio_lkagent.devserver import open_devserver
    from trio_lkagent.events import DataReceived, TrackSubscribed
    from trio_lkagent.plugins import (
        PocketSphinxSTT,
        SileroVAD,
        SpeechEventType,
        StreamAdapter,
        VADOptions,
        open_inference_executor,
        warm_pocketsphinx,
    )

    samples, rate = load()
    eos: list[float] = []
    received: list[float] = []
    texts: list[str] = []
    secret = "s" * 40

    async with open_inference_executor(
        threads=1, processes=1, warmup=[warm_pocketsphinx]
    ) as executor:
        stt = StreamAdapter(
            PocketSphinxSTT(executor=executor),
            SileroVAD(VADOptions(min_silence_duration=0.5), executor=executor),
        )

        async def transcribe(room: Any, track: rtc.RemoteTrack) -> None:
            async with (
                open_audio_stream(track, sample_rate=16000) as frames,
                stt.stream() as speech,
                trio.open_nursery() as nursery,
            ):

                async def feed() -> None:
                    async for frame in frames:
                        speech.push_frame(frame)

                nursery.start_soon(feed)
                async for event in speech:
                    if event.type is SpeechEventType.END_OF_SPEECH:
                        eos.append(time.perf_counter())
                    elif event.type is SpeechEventType.FINAL:
                        await room.publish_data(
                            json.dumps({"n": len(eos) - 1, "text": event.text}), topic="transcript"
                        )

        async def entrypoint(ctx: JobContext) -> None:
            async with ctx.connect() as room, trio.open_nursery() as nursery:
                async for event in room.events():
                    if isinstance(event, TrackSubscribed):
                        nursery.start_soon(transcribe, room, event.rtc_track)

        async with open_devserver(api_secret=secret) as server, trio.open_nursery() as nursery:
            options = WorkerOptions(
                url=server.url, api_key=server.api_key, api_secret=secret, agent_name="t"
            )
            await nursery.start(Worker(entrypoint, options).serve)
            dispatch = dispatch_pb.RoomAgentDispatch(agent_name="t")
            await server.create_room("bench", agents=[dispatch])
            token = (
                lkapi.AccessToken(server.api_key, secret)
                .with_identity("speaker")
                .with_grants(lkapi.VideoGrants(room_join=True, room="bench"))
                .to_jwt()
            )
            async with open_room(server.url, token) as room:
                events = room.events()
                await room.wait_for_participant()
                async with room.publish_audio(sample_rate=rate, name="mic") as mic:

                    async def speak() -> None:
                        await trio.sleep(1)  # the agent subscribes
                        for _ in range(rounds):
                            await mic.write(samples)
                        await mic.write(np.zeros(rate * 2, np.int16))

                    async with trio.open_nursery() as talk:
                        talk.start_soon(speak)
                        with trio.move_on_after(rounds * 10 + 30):
                            async for event in events:
                                if isinstance(event, DataReceived) and event.topic == "transcript":
                                    message = json.loads(event.payload)
                                    received.append(time.perf_counter())
                                    texts.append(message["text"])
                                    if len(received) == 2 * rounds:
                                        break
                        talk.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
    latencies = [(r - e) * 1e3 for e, r in zip(eos, received, strict=False)]
    print(
        f"Room: {len(received)} transcripts of {2 * rounds} utterances;"
        f" END_OF_SPEECH -> transcript at the participant:"
        f" p50 {statistics.median(latencies):.0f} ms, p90 {pct(latencies, 0.9):.0f} ms"
        f" (+ 500 ms min_silence_duration from the last sound)"
    )
    for text in texts[:2]:
        print(f"  heard: {text!r}")


async def main(rounds: int, skip_room: bool) -> None:
    await bench_vad()
    await bench_stt_tts()
    if not skip_room:
        await bench_room(rounds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-room", action="store_true")
    args = parser.parse_args()
    trio.run(main, args.rounds, args.skip_room)
