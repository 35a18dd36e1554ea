"""The media pipeline offline: every stage on real audio (tones, the native library's
own audio track) and real video frames, composition, backpressure and errors; the
quality controller's decisions under a fake clock; publish options."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Iterable
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from livekit import rtc

from trio_lkagent import AudioFrame, VideoFormat, VideoFrame, open_audio_output, open_audio_stream
from trio_lkagent._publish import publish_options
from trio_lkagent.media import (
    APM,
    FrameRateLimit,
    Gain,
    LevelMeter,
    MediaPipeline,
    PipelineConfig,
    QualityController,
    QualityOptions,
    Rechunk,
    Remix,
    Resample,
    Resize,
    VADGate,
    map_frames,
    measure_level,
)
from trio_lkagent.plugins import VADEvent, VADEventType, VADOptions, VADStream

SAFETY_TIMEOUT = 10


def tone(hz: float, seconds: float, rate: int, amplitude: int = 10_000) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * amplitude).astype(np.int16)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def frames_of(samples: np.ndarray, rate: int, channels: int = 1, ms: int = 10) -> list[AudioFrame]:
    step = rate * ms // 1000 * channels
    return [
        AudioFrame(samples[i : i + step], rate, channels, i / channels / rate)
        for i in range(0, len(samples), step)
    ]


async def run_all(pipeline: MediaPipeline, frames: Iterable[object]) -> list[Any]:
    async def source() -> AsyncIterator[object]:
        for frame in frames:
            yield frame

    with trio.fail_after(SAFETY_TIMEOUT):
        async with pipeline.open(source()) as out:
            return [frame async for frame in out]


def joined(frames: list[AudioFrame]) -> np.ndarray:
    return np.concatenate([f.samples for f in frames])


# --------------------------------------------------------------------------- audio stages


@pytest.mark.parametrize("engine", ["livekit", "soxr"])
async def test_resample_keeps_pitch_and_length(engine: str) -> None:
    pipeline = MediaPipeline(PipelineConfig(sample_rate=16_000), [Resample(engine=engine)])  # type: ignore[arg-type]
    out = await run_all(pipeline, frames_of(tone(440, 1.0, 48_000), 48_000))
    assert {f.sample_rate for f in out} == {16_000}
    samples = joined(out)
    assert abs(len(samples) - 16_000) <= 160  # all of it, after the flush
    assert abs(peak_hz(samples, 16_000) - 440) <= 3
    level = measure_level(AudioFrame(samples[1600:-1600], 16_000))
    assert level.rms_dbfs == pytest.approx(20 * math.log10(10_000 / 32768 / math.sqrt(2)), abs=0.5)
    assert out[-1].timestamp == pytest.approx(1.0 - out[-1].duration, abs=0.02)


async def test_frames_already_at_the_rate_pass_untouched() -> None:
    frame = AudioFrame(tone(440, 0.01, 16_000), 16_000)
    assert list(Resample(16_000).process(frame)) == [frame]


async def test_remix_stereo_to_mono_and_back() -> None:
    left = tone(440, 0.1, 16_000)
    stereo = np.stack([left, np.zeros_like(left)], axis=1).reshape(-1)
    mono = await run_all(
        MediaPipeline(PipelineConfig(channels=1), [Remix()]), frames_of(stereo, 16_000, 2)
    )
    assert {f.num_channels for f in mono} == {1}
    assert np.abs(joined(mono) - left / 2).max() <= 1  # the mean of the two channels
    back = next(iter(Remix(2).process(AudioFrame(left, 16_000))))
    assert np.array_equal(back.as_channels()[:, 0], left)
    assert np.array_equal(back.as_channels()[:, 1], left)


async def test_gain_and_level_meter() -> None:
    meter_in, meter_out = LevelMeter(), LevelMeter()
    gain = Gain(db=6.0)
    pipeline = MediaPipeline(PipelineConfig(), [meter_in, gain, meter_out])
    await run_all(pipeline, frames_of(tone(440, 0.1, 48_000), 48_000))
    assert meter_in.level is not None and meter_out.level is not None
    assert meter_out.level.rms_dbfs - meter_in.level.rms_dbfs == pytest.approx(6.0, abs=0.05)
    assert gain.clipped == 0
    gain.db = 30.0  # 10 000 x 31.6 does not fit in int16
    loud = next(iter(gain.process(AudioFrame(tone(440, 0.01, 48_000), 48_000))))
    assert gain.clipped > 0 and loud.samples.max() == 32767
    assert measure_level(AudioFrame(np.zeros(160, np.int16), 16_000)).rms_dbfs == -math.inf
    full = measure_level(AudioFrame(tone(1000, 0.1, 16_000, 32767), 16_000))
    assert full.rms_dbfs == pytest.approx(-3.01, abs=0.05)
    assert full.peak_dbfs == pytest.approx(0.0, abs=0.01)


async def test_rechunk_makes_fixed_frames_with_a_short_or_padded_tail() -> None:
    samples = tone(440, 0.105, 16_000)  # 1680 samples
    out = await run_all(
        MediaPipeline(PipelineConfig(frame_ms=30), [Rechunk()]), frames_of(samples, 16_000)
    )
    assert [len(f.samples) for f in out] == [480, 480, 480, 240]
    assert np.array_equal(joined(out), samples)
    assert [f.timestamp for f in out] == pytest.approx([0.0, 0.03, 0.06, 0.09])
    padded = await run_all(
        MediaPipeline(PipelineConfig(), [Rechunk(30, pad=True)]), frames_of(samples, 16_000)
    )
    assert [len(f.samples) for f in padded] == [480] * 4
    assert not padded[-1].samples[240:].any()


async def test_apm_high_pass_filter_removes_a_dc_offset() -> None:
    samples = (tone(440, 1.0, 16_000, 5_000).astype(np.int32) + 8_000).astype(np.int16)
    apm = APM(noise_suppression=False, high_pass_filter=True)
    out = await run_all(MediaPipeline(PipelineConfig(), [apm]), frames_of(samples, 16_000, ms=15))
    assert sum(f.samples_per_channel for f in out) == 16_000  # 15 ms frames, 10 ms out
    assert {f.samples_per_channel for f in out} == {160}
    tail = joined(out)[8_000:]
    assert abs(float(tail.mean())) < 300  # was 8000
    assert abs(peak_hz(tail, 16_000) - 440) <= 3


async def test_real_native_audio_through_a_chain() -> None:
    """A 48 kHz stereo track read back through the native library, then resampled,
    remixed, amplified and re-chunked in one pipeline."""
    rate = 48_000
    left = tone(440, 0.5, rate)
    stereo = np.stack([left, left], axis=1).reshape(-1)
    config = PipelineConfig(sample_rate=16_000, channels=1, frame_ms=20, buffer_size=4)
    meter = LevelMeter()
    pipeline = MediaPipeline(config, [Resample(), Remix(), Gain(-6.0), meter, Rechunk()])
    received: list[AudioFrame] = []
    with trio.fail_after(SAFETY_TIMEOUT):
        async with (
            open_audio_output(sample_rate=rate, num_channels=2, queue_ms=100) as out,
            open_audio_stream(out.track, sample_rate=rate, num_channels=2) as stream,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(out.write, stereo)
            async with pipeline.open(stream) as frames:
                async for frame in frames:
                    if received or frame.samples.any():
                        received.append(frame)
                    if len(received) == 15:
                        break
            nursery.cancel_scope.cancel()
    assert {(f.sample_rate, f.num_channels, f.samples_per_channel) for f in received} == {
        (16_000, 1, 320)
    }
    samples = joined(received[2:])
    assert abs(peak_hz(samples, 16_000) - 440) <= 5
    expected = 20 * math.log10(10_000 / 32768 / math.sqrt(2)) - 6
    assert meter.level is not None and meter.level.rms_dbfs == pytest.approx(expected, abs=1.0)
    stats = pipeline.statistics()
    assert [s.name for s in stats.stages] == ["Resample", "Remix", "Gain", "LevelMeter", "Rechunk"]
    assert all(s.frames_in and s.cost_per_frame > 0 for s in stats.stages)


# --------------------------------------------------------------------------- the pipeline


async def test_backpressure_bounds_what_a_slow_consumer_lets_in() -> None:
    taken = 0

    async def endless() -> AsyncIterator[AudioFrame]:
        nonlocal taken
        frame = AudioFrame(np.zeros(160, np.int16), 16_000)
        while True:
            taken += 1
            yield frame

    pipeline = MediaPipeline(PipelineConfig(buffer_size=2), [Gain(6.0), Gain(-6.0)])
    async with pipeline.open(endless()) as out:
        await trio.testing.wait_all_tasks_blocked()
        # 3 links of 2 frames, a frame in each of 2 stages and in the feeder's hand.
        assert taken <= 3 * 2 + 2 + 2
        first = taken
        await out.receive()
        await trio.testing.wait_all_tasks_blocked()
        assert taken == first + 1  # one frame out lets one more in
        stats = pipeline.statistics()
        assert stats.delivered == 1 and stats.fed >= 6
        assert [s.buffered for s in stats.stages] == [2, 2]


async def test_plain_function_stages_and_map_frames_and_manual_input() -> None:
    async def double(
        receive: trio.MemoryReceiveChannel[AudioFrame], send: trio.MemorySendChannel[AudioFrame]
    ) -> None:
        async for frame in receive:
            await send.send(frame)
            await send.send(frame)

    def loud_only(frame: AudioFrame) -> AudioFrame | None:
        return frame if frame.samples.any() else None

    pipeline = MediaPipeline(PipelineConfig(), [map_frames(loud_only), double])
    quiet = AudioFrame(np.zeros(160, np.int16), 16_000)
    loud = AudioFrame(np.ones(160, np.int16), 16_000)
    async with pipeline.open() as stream:
        await stream.send(quiet)
        await stream.send(loud)
        stream.close_input()
        out = [frame async for frame in stream]
    assert out == [loud, loud]
    assert [s.name for s in pipeline.statistics().stages] == ["loud_only", "double"]
    with pytest.raises(RuntimeError, match="source"):
        async with pipeline.open(run_source([])) as stream:
            await stream.send(loud)


async def run_source(frames: list[AudioFrame]) -> AsyncIterator[AudioFrame]:
    for frame in frames:
        yield frame


async def test_a_failing_stage_ends_the_block_with_its_error() -> None:
    def broken(frame: AudioFrame) -> AudioFrame:
        raise ValueError("no good")

    pipeline = MediaPipeline(PipelineConfig(), [Gain(), map_frames(broken)])
    with pytest.raises(ValueError, match="no good"):
        await run_all(pipeline, [AudioFrame(np.zeros(160, np.int16), 16_000)])
    # It can run again afterwards; a running pipeline refuses a second run.
    async with pipeline.open() as stream:
        with pytest.raises(RuntimeError, match="already running"):
            async with pipeline.open():
                pass
        stream.close_input()


def test_config_and_stage_validation() -> None:
    with pytest.raises(ValueError, match="sample_rate"):
        PipelineConfig(sample_rate=7)
    with pytest.raises(ValueError, match="buffer_size"):
        PipelineConfig(buffer_size=0)
    with pytest.raises(ValueError, match="resolution"):
        PipelineConfig(resolution=(2, 2))
    with pytest.raises(ValueError, match="engine"):
        Resample(16_000, engine="ffmpeg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="both"):
        Resize(width=10)
    with pytest.raises(TypeError):
        MediaPipeline(PipelineConfig(), [42])  # type: ignore[list-item]


# --------------------------------------------------------------------------- VAD gating


class _EnergyStream(VADStream):
    """A plain energy detector on the plugins' stream base: speech above -40 dBFS."""

    def __init__(self, options: VADOptions) -> None:
        super().__init__(max_buffer_size=256)
        self._options = options

    async def _process(self) -> None:
        position = 0.0
        speaking = False
        speech = silence = 0.0
        prefix: list[AudioFrame] = []
        utterance: list[AudioFrame] = []
        async for frame in self._frames:
            position += frame.duration
            loud = measure_level(frame).rms_dbfs > -40
            if speaking:
                utterance.append(frame)
                silence = 0.0 if loud else round(silence + frame.duration, 6)
                if silence >= self._options.min_silence_duration:
                    speaking = False
                    await self._emit(
                        VADEvent(VADEventType.END_OF_SPEECH, position, frames=tuple(utterance))
                    )
                    prefix, utterance = [], []
                continue
            prefix.append(frame)
            speech = round(speech + frame.duration, 6) if loud else 0.0
            if speech >= self._options.min_speech_duration:
                speaking, silence = True, 0.0
                keep = round(self._options.prefix_padding_duration / frame.duration)
                utterance = prefix[-(keep + round(speech / frame.duration)) :]
                prefix = []
                await self._emit(
                    VADEvent(
                        VADEventType.START_OF_SPEECH, position, 1.0, True, frames=tuple(utterance)
                    )
                )
            else:
                prefix = prefix[-50:]
                await self._emit(VADEvent(VADEventType.INFERENCE, position), droppable=True)


class _EnergyVAD:
    options = VADOptions(
        min_speech_duration=0.03, min_silence_duration=0.1, prefix_padding_duration=0.05
    )

    def stream(self, *, max_buffer_size: int = 256):  # type: ignore[no-untyped-def]
        return _EnergyStream(self.options)._open()


async def test_vad_gate_passes_speech_with_padding_and_drops_silence() -> None:
    rate = 16_000
    silence = np.zeros(rate // 2, np.int16)
    burst = tone(300, 0.3, rate)
    audio = np.concatenate([silence, burst, silence, burst, silence])  # 2.1 s
    events: list[VADEvent] = []
    gate = VADGate(_EnergyVAD(), on_event=events.append)
    pipeline = MediaPipeline(PipelineConfig(), [gate])
    out = await run_all(pipeline, frames_of(audio, rate))
    stats = pipeline.statistics().stages[0]
    assert (stats.name, stats.frames_in, stats.frames_out) == ("VADGate", 210, len(out))
    kept = joined(out)
    assert gate.utterances == 2
    assert [e.type for e in events if e.type is not VADEventType.INFERENCE] == [
        VADEventType.START_OF_SPEECH,
        VADEventType.END_OF_SPEECH,
    ] * 2
    # Both bursts, whole, each with 50 ms of padding and 100 ms of trailing silence
    # (plus at most what the VAD lagged behind the gate: a few frames here).
    assert 2 * (0.3 + 0.05 + 0.1) * rate <= len(kept) <= 2 * (0.3 + 0.05 + 0.1 + 0.05) * rate
    assert np.count_nonzero(np.abs(kept) > 1000) >= 0.9 * np.count_nonzero(np.abs(audio) > 1000)
    timestamps = [f.timestamp for f in out]
    assert timestamps == sorted(timestamps)  # in order, nothing duplicated
    assert len(set(timestamps)) == len(timestamps)
    assert gate.dropped > 100 and not gate.speaking


# --------------------------------------------------------------------------- video stages


def video(width: int, height: int, ts_us: int = 0) -> VideoFrame:
    pixels = np.zeros((height, width, 4), np.uint8)
    pixels[: height // 2, : width // 2] = (255, 0, 0, 255)  # red top-left quadrant
    pixels[height // 2 :, width // 2 :] = (0, 0, 255, 255)  # blue bottom-right
    return VideoFrame.from_ndarray(pixels, timestamp_us=ts_us)


async def test_frame_rate_limit_keeps_every_third_frame_of_30_fps() -> None:
    frames = [video(8, 8, round((i + 1) * 1e6 / 30)) for i in range(90)]
    limit = FrameRateLimit()
    out = await run_all(MediaPipeline(PipelineConfig(frame_rate=10), [limit]), frames)
    assert len(out) == 30 and limit.dropped == 60
    gaps = np.diff([f.timestamp_us for f in out])
    assert set(np.round(gaps / 1e3)) == {100}


async def test_frame_rate_limit_by_arrival_time(autojump_clock: trio.abc.Clock) -> None:
    limit = FrameRateLimit(5)
    pipeline = MediaPipeline(PipelineConfig(), [limit])
    passed = 0
    async with pipeline.open() as stream:
        for _ in range(60):  # 2 s at 30 fps, by the (virtual) clock
            await stream.send(video(8, 8))
            await trio.sleep(1 / 30)
            while True:
                try:
                    stream._receive.receive_nowait()
                except trio.WouldBlock:
                    break
                passed += 1
        stream.close_input()
    assert passed == 10


async def test_resize_packed_and_i420_and_keep_aspect() -> None:
    resize = Resize(32, 24)
    small = next(iter(resize.process(video(64, 48))))
    assert (small.width, small.height, small.format) == (32, 24, VideoFormat.RGBA)
    px = small.to_ndarray()
    assert tuple(px[0, 0]) == (255, 0, 0, 255) and tuple(px[-1, -1]) == (0, 0, 255, 255)
    assert tuple(px[0, -1]) == (0, 0, 0, 0)
    i420 = video(64, 48).convert(VideoFormat.I420)
    out = next(iter(resize.process(i420)))
    assert (out.width, out.height) == (32, 24)
    back = out.convert(VideoFormat.RGBA).to_ndarray()
    assert back[2, 2, 0] > 200 and back[-3, -3, 2] > 200  # still red / blue there
    fit = Resize(32, 32, keep_aspect=True)
    assert fit.target(64, 48) == (32, 24)
    config = PipelineConfig(resolution=(16, 12))
    out2 = await run_all(MediaPipeline(config, [Resize()]), [video(64, 48)])
    assert (out2[0].width, out2[0].height) == (16, 12)


# --------------------------------------------------------------------------- quality


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


Q = rtc.ConnectionQuality


def test_quality_controller_goes_down_fast_and_up_slowly() -> None:
    clock = FakeClock()
    c = QualityController(
        QualityOptions(target_bitrate=500_000, max_bitrate=2_000_000), clock=clock
    )
    assert (c.level.width, c.level.height) == (640, 360)  # highest level within 500 kb/s
    assert c.observe_connection_quality(Q.QUALITY_POOR) is not None
    assert c.level.height == 180
    clock.now = 3.0
    assert c.tick() is None  # not yet: 5 s of calm needed
    c.observe_connection_quality(Q.QUALITY_GOOD)
    clock.now = 5.5
    assert c.tick() is not None and c.level.height == 360
    clock.now = 20.0
    assert c.tick() is None  # GOOD: capped at the target
    c.observe_connection_quality(Q.QUALITY_EXCELLENT)
    assert c.tick() is not None and c.level.height == 720  # EXCELLENT: up to max_bitrate
    c.observe_connection_quality(Q.QUALITY_GOOD)
    assert c.level.height == 360  # back under the target at once
    clock.now = 30.0
    assert c.observe_pace(dropped=3, buffered=0, max_buffer_size=4) is not None
    assert c.level.height == 180
    c.observe_connection_quality(Q.QUALITY_LOST)
    assert c.level.height == 180
    assert [ch.reason for ch in c.history] == [
        "connection",
        "recovered",
        "recovered",
        "connection",
        "pace",
    ]


def test_quality_adaptation_speed_and_options() -> None:
    clock = FakeClock()
    c = QualityController(QualityOptions(target_bitrate=500_000, adaptation_speed=2.0), clock=clock)
    c.observe_connection_quality(Q.QUALITY_POOR)
    clock.now = 2.6
    assert c.tick() is None  # still POOR: never up
    c.observe_connection_quality(Q.QUALITY_GOOD)
    assert c.tick() is not None  # 2.6 s of calm is enough at speed 2 (5 s / 2)
    with pytest.raises(ValueError, match="max_bitrate"):
        QualityOptions(target_bitrate=500_000, max_bitrate=100_000)
    with pytest.raises(ValueError, match="increasing"):
        QualityOptions(levels=tuple(reversed(QualityOptions().levels)))


# --------------------------------------------------------------------------- publish options


def test_publish_options_reach_the_native_options() -> None:
    video_opts = publish_options(
        rtc.TrackSource.SOURCE_CAMERA,
        max_bitrate=300_000,
        simulcast=True,
        codec="h264",
        video_height=360,
    )
    assert video_opts.video_encoding.max_bitrate == 300_000
    assert video_opts.video_encoding.max_framerate == 30.0  # both are required natively
    assert video_opts.simulcast and video_opts.video_codec == rtc.VideoCodec.H264
    audio_opts = publish_options(rtc.TrackSource.SOURCE_MICROPHONE, max_bitrate=24_000, dtx=False)
    assert audio_opts.audio_encoding.max_bitrate == 24_000 and audio_opts.dtx is False
    with pytest.raises(ValueError, match="codec"):
        publish_options(rtc.TrackSource.SOURCE_CAMERA, codec="mpeg2", video_height=360)
    with pytest.raises(ValueError, match="max_bitrate"):
        publish_options(rtc.TrackSource.SOURCE_CAMERA, max_bitrate=0, video_height=360)


async def test_vad_gate_with_energy_vad_on_recorded_speech() -> None:
    """The committed recording (two spoken sentences, 0.5 s of silence before, 1 s
    after each), resampled from 48 kHz and gated by the plugins' EnergyVAD."""
    import pathlib
    import wave

    from trio_lkagent.plugins import EnergyVAD

    with wave.open(str(pathlib.Path(__file__).parent / "data" / "utterance.wav")) as w:
        speech = np.frombuffer(w.readframes(w.getnframes()), np.int16)
        assert w.getframerate() == 16_000

    # As a 48 kHz track would bring it: upsample, then let the pipeline bring it back.
    async def upsampled() -> AsyncIterator[AudioFrame]:
        up = Resample(48_000, engine="soxr")
        for frame in frames_of(speech, 16_000):
            for out in up.process(frame):
                yield out

    options = VADOptions(min_silence_duration=0.3, prefix_padding_duration=0.1)
    gate = VADGate(EnergyVAD(options))
    pipeline = MediaPipeline(PipelineConfig(sample_rate=16_000), [Resample(), gate])
    with trio.fail_after(SAFETY_TIMEOUT):
        async with pipeline.open(upsampled()) as out:
            kept = [frame async for frame in out]
    assert gate.utterances == 2
    # Everything spoken went through: the energy of what was kept ~ all of it.
    energy = float(np.sum(speech.astype(np.float64) ** 2))
    kept_energy = float(sum(np.sum(f.samples.astype(np.float64) ** 2) for f in kept))
    assert kept_energy >= 0.95 * energy
    # Speech is 0.52-3.34 s and 4.38-6.44 s (samples above 500); the gate keeps
    # that, 0.1 s of padding before and 0.3 s of silence after each (plus the
    # quiet tails of words the energy threshold still calls speech), not the rest.
    # (An utterance starts where the audio kept jumps: a gap after the previous frame's end;
    # the frame of START_OF_SPEECH holds the padding and the speech so far, > 0.1 s.)
    starts = [kept[0].timestamp] + [
        b.timestamp
        for a, b in itertools.pairwise(kept)
        if b.timestamp - (a.timestamp + a.duration) > 0.05
    ]
    assert len(starts) == 2
    assert 0.3 <= starts[0] <= 0.52 and 4.1 <= starts[1] <= 4.38
    kept_seconds = sum(f.duration for f in kept)
    assert 4.9 < kept_seconds < 4.9 + 2 * (0.1 + 0.3) + 0.6
    assert gate.dropped > 50  # frames of ~33 ms: the resampler's output chunks
