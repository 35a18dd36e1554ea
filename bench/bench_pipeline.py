"""Benchmark the media pipeline: what each stage costs per frame, and the channel hops.

Run: ``python bench/bench_pipeline.py`` (prints figures; this is not a test).

1. Audio stages on 10 ms frames of a 440 Hz tone (real audio, not zeros): the time
   spent in each stage's ``process`` per input frame (``StageStatistics.
   cost_per_frame``, best of 3 runs of 1000 frames), each stage alone in a pipeline.
   Also VADGate with the plugins' EnergyVAD on the committed recording (the gate's
   own task, the VAD's task and the hand-offs between them, per frame).
2. Video stages on 1280x720 frames (RGBA and I420), 300 frames.
3. The pipeline's own overhead: frames/s and µs per frame per stage through chains of
   1, 4 and 8 pass-through stages (``map_frames(lambda f: f)``): the cost of a Trio
   memory-channel hop and a task switch, which is what composing stages costs.

Figures measured on a shared machine are noisy; compare rows of one run.
"""

from __future__ import annotations

import pathlib
import time
import wave
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import numpy as np
import trio

from trio_lkagent import AudioFrame, VideoFormat, VideoFrame
from trio_lkagent.media import (
    APM,
    FrameRateLimit,
    FrameStage,
    Gain,
    LevelMeter,
    MediaPipeline,
    PipelineConfig,
    Rechunk,
    Remix,
    Resample,
    Resize,
    VADGate,
    map_frames,
)

AUDIO_FRAMES = 1000
VIDEO_FRAMES = 300
RUNS = 3


def tone_frames(rate: int, channels: int, count: int) -> list[AudioFrame]:
    n = rate // 100
    t = np.arange(n * count) / rate
    mono = (np.sin(2 * np.pi * 440 * t) * 10_000).astype(np.int16)
    samples = np.repeat(mono, channels)
    step = n * channels
    return [
        AudioFrame(samples[i * step : (i + 1) * step].copy(), rate, channels, i / 100)
        for i in range(count)
    ]


def video_frames(fmt: VideoFormat, count: int) -> list[VideoFrame]:
    rng = np.random.default_rng(1)
    rgba = VideoFrame.from_ndarray(rng.integers(0, 255, (720, 1280, 4), dtype=np.uint8))
    frame = rgba if fmt is VideoFormat.RGBA else rgba.convert(fmt)
    return [
        VideoFrame(frame.data, frame.width, frame.height, frame.format, round((i + 1) * 1e6 / 30))
        for i in range(count)
    ]


async def run(pipeline: MediaPipeline, frames: Sequence[Any]) -> float:
    async def source() -> AsyncIterator[Any]:
        for frame in frames:
            yield frame

    start = time.perf_counter()
    async with pipeline.open(source()) as out:
        async for _ in out:
            pass
    return time.perf_counter() - start


async def stage_cost(make: Callable[[], FrameStage[Any, Any]], frames: Sequence[Any]) -> float:
    best = float("inf")
    for _ in range(RUNS):
        stage = make()
        await run(MediaPipeline(PipelineConfig(sample_rate=16_000, frame_ms=20), [stage]), frames)
        best = min(best, stage.statistics().cost_per_frame)
    return best


async def main() -> None:
    mono48 = tone_frames(48_000, 1, AUDIO_FRAMES)
    stereo48 = tone_frames(48_000, 2, AUDIO_FRAMES)
    mono16 = tone_frames(16_000, 1, AUDIO_FRAMES)
    print(f"Audio stages, µs per 10 ms input frame (best of {RUNS} x {AUDIO_FRAMES} frames)")
    rows: list[tuple[str, Callable[[], FrameStage[Any, Any]], list[AudioFrame]]] = [
        ("Resample 48k->16k livekit", lambda: Resample(16_000), mono48),
        ("Resample 48k->16k soxr", lambda: Resample(16_000, engine="soxr"), mono48),
        ("Resample 16k->48k livekit", lambda: Resample(48_000), mono16),
        ("Resample 16k->48k soxr", lambda: Resample(48_000, engine="soxr"), mono16),
        ("Remix stereo->mono 48k", lambda: Remix(1), stereo48),
        ("Remix mono->stereo 48k", lambda: Remix(2), mono48),
        ("Gain +6 dB 48k", lambda: Gain(6.0), mono48),
        ("LevelMeter 48k", LevelMeter, mono48),
        ("Rechunk 10->20 ms 16k", lambda: Rechunk(20), mono16),
        ("APM ns+hpf 16k", APM, mono16),
        ("APM ns+hpf 48k", APM, mono48),
        (
            "APM ns+hpf+agc+aec 48k",
            lambda: APM(auto_gain_control=True, echo_cancellation=True),
            mono48,
        ),
    ]
    for label, make, frames in rows:
        cost = await stage_cost(make, frames)
        print(f"  {label:28s} {cost * 1e6:8.1f} µs")

    await vad_gate_cost()

    print(f"\nVideo stages, µs per 1280x720 input frame ({VIDEO_FRAMES} frames)")
    rgba = video_frames(VideoFormat.RGBA, VIDEO_FRAMES)
    i420 = video_frames(VideoFormat.I420, VIDEO_FRAMES)
    video_rows: list[tuple[str, Callable[[], FrameStage[Any, Any]], list[VideoFrame]]] = [
        ("FrameRateLimit 30->10 fps", lambda: FrameRateLimit(10), rgba),
        ("Resize RGBA -> 640x360", lambda: Resize(640, 360), rgba),
        ("Resize RGBA -> 320x180", lambda: Resize(320, 180), rgba),
        ("Resize I420 -> 640x360", lambda: Resize(640, 360), i420),
    ]
    for label, make, frames in video_rows:
        cost = await stage_cost(make, frames)
        print(f"  {label:28s} {cost * 1e6:8.1f} µs")

    print(f"\nPipeline overhead: pass-through stages, {AUDIO_FRAMES * 10} frames")
    frames = mono16 * 10
    base = None
    for n in (1, 4, 8):
        for buffer_size in (1, 8, 64):
            stages = [map_frames(lambda f: f, name=f"pass{i}") for i in range(n)]
            config = PipelineConfig(buffer_size=buffer_size)
            seconds = min([await run(MediaPipeline(config, stages), frames) for _ in range(RUNS)])
            per_frame = seconds / len(frames)
            if base is None:
                base = per_frame
            print(
                f"  {n} stage(s), buffer {buffer_size:2d}: {len(frames) / seconds:9,.0f} frames/s, "
                f"{per_frame * 1e6:6.1f} µs/frame ({per_frame / n * 1e6:5.1f} µs per stage)"
            )


async def vad_gate_cost() -> None:
    """VADGate with the plugins' EnergyVAD on the committed recording (7.5 s, two
    sentences): wall time per 10 ms frame, minus a pass-through stage's."""
    from trio_lkagent.plugins import EnergyVAD

    path = pathlib.Path(__file__).parent.parent / "tests" / "data" / "utterance.wav"
    with wave.open(str(path)) as w:
        speech = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    frames = [
        AudioFrame(speech[i : i + 160].copy(), 16_000, 1, i / 16_000)
        for i in range(0, len(speech) - 159, 160)
    ]
    gate_best = pass_best = float("inf")
    for _ in range(RUNS):
        gate = VADGate(EnergyVAD())
        gate_best = min(gate_best, await run(MediaPipeline(PipelineConfig(), [gate]), frames))
        passing = map_frames(lambda f: f)
        pass_best = min(pass_best, await run(MediaPipeline(PipelineConfig(), [passing]), frames))
    extra = (gate_best - pass_best) / len(frames)
    print(
        f"  {'VADGate + EnergyVAD 16k':28s} {extra * 1e6:8.1f} µs more than a pass-through stage "
        f"({gate_best / len(frames) * 1e6:.1f} µs/frame end to end, {len(frames)} frames)"
    )


if __name__ == "__main__":
    trio.run(main)
