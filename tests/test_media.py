"""Media as numpy: formats, the limits table, zero copy, and real audio/video offline.

The live tests run native audio and video through the library with no server: an
``AudioSource`` feeds a ``LocalAudioTrack`` that :func:`open_audio_stream` reads back
(paced in real time by the native library, so they take a few hundred ms each).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from livekit import rtc
from livekit.rtc.video_frame import _get_plane_length

from trio_lkagent._media import (
    _ABORTING,
    CAPTURE_FORMATS,
    CONVERSIONS,
    LIMITS,
    STREAM_FORMATS,
    AudioFrame,
    AudioProcessor,
    VideoFormat,
    VideoFrame,
    _Chunker,
    check_limits,
    frame_size,
    plane_shapes,
)
from trio_lkagent._tracks import (
    open_audio_output,
    open_audio_stream,
    open_video_output,
    open_video_stream,
)

# Only a safety net for what waits on native real-time audio.
SAFETY_TIMEOUT = 10

F = VideoFormat


def tone(hz: float, seconds: float, rate: int, amplitude: int = 10_000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (np.sin(2 * np.pi * hz * t) * amplitude).astype(np.int16)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    signal = samples.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return float(np.fft.rfftfreq(len(signal), 1 / rate)[int(np.argmax(spectrum))])


# ------------------------------------------------------------------ formats


def test_video_formats_are_livekit_buffer_types() -> None:
    assert {f.name: f.value for f in VideoFormat} == dict(rtc.VideoBufferType.items())


@pytest.mark.parametrize("format", list(VideoFormat))
@pytest.mark.parametrize(("width", "height"), [(1, 1), (2, 2), (33, 17), (640, 360), (1279, 721)])
def test_frame_size_agrees_with_livekit(format: VideoFormat, width: int, height: int) -> None:
    assert frame_size(format, width, height) == _get_plane_length(format, width, height)  # type: ignore[arg-type]


def test_odd_sized_i420_planes_round_up() -> None:
    assert plane_shapes(F.I420, 33, 17) == ((17, 33), (9, 17), (9, 17))
    assert plane_shapes(F.NV12, 5, 3) == ((3, 5), (2, 6))
    assert plane_shapes(F.RGB24, 4, 2) == ((2, 4, 3),)


def test_conversion_table_covers_every_format_and_no_aborting_pair() -> None:
    assert set(CONVERSIONS) == set(VideoFormat)
    allowed = {(src, dst) for src, dsts in CONVERSIONS.items() for dst in dsts}
    assert not allowed & _ABORTING
    assert set(VideoFormat) >= STREAM_FORMATS
    assert F.NV12 not in CAPTURE_FORMATS
    assert F.I010 not in CAPTURE_FORMATS


# ------------------------------------------------------------------ the limits table

# (operation, parameters, fragment of the rule broken or None when the input is fine)
LIMIT_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("audio_stream", {"sample_rate": 16_000, "num_channels": 1}, None),
    ("audio_stream", {"sample_rate": 0, "num_channels": 1}, "sample_rate"),
    ("audio_stream", {"sample_rate": 7, "num_channels": 1}, "sample_rate"),
    ("audio_stream", {"sample_rate": 48_000, "num_channels": 0}, "num_channels"),
    ("audio_source", {"sample_rate": 48_000, "num_channels": 2, "queue_ms": 200}, None),
    ("audio_source", {"sample_rate": 7, "num_channels": 1, "queue_ms": 100}, "sample_rate"),
    ("audio_source", {"sample_rate": 48_000, "num_channels": 0, "queue_ms": 100}, "num_channels"),
    ("audio_source", {"sample_rate": 48_000, "num_channels": 1, "queue_ms": 15}, "queue_ms"),
    ("audio_source", {"sample_rate": 48_000, "num_channels": 1, "queue_ms": 5}, "queue_ms"),
    ("audio_source", {"sample_rate": 48_000, "num_channels": 1, "queue_ms": 0}, "queue_ms"),
    (
        "audio_capture",
        {
            "sample_rate": 48_000,
            "num_channels": 2,
            "source_rate": 48_000,
            "source_channels": 2,
            "samples": 960,
        },
        None,
    ),
    (
        "audio_capture",
        {
            "sample_rate": 16_000,
            "num_channels": 1,
            "source_rate": 48_000,
            "source_channels": 1,
            "samples": 160,
        },
        "must match",
    ),
    (
        "audio_capture",
        {
            "sample_rate": 48_000,
            "num_channels": 2,
            "source_rate": 48_000,
            "source_channels": 2,
            "samples": 961,
        },
        "whole number",
    ),
    ("apm", {"sample_rate": 48_000, "num_channels": 1, "samples_per_channel": 480}, None),
    ("apm", {"sample_rate": 48_000, "num_channels": 2, "samples_per_channel": 960}, None),
    ("apm", {"sample_rate": 48_000, "num_channels": 1, "samples_per_channel": 481}, "10 ms"),
    ("apm", {"sample_rate": 48_000, "num_channels": 1, "samples_per_channel": 240}, "10 ms"),
    ("apm", {"sample_rate": 16_000, "num_channels": 1, "samples_per_channel": 0}, "10 ms"),
    ("apm", {"sample_rate": 7, "num_channels": 1, "samples_per_channel": 480}, "8000"),
    ("apm", {"sample_rate": 48_000, "num_channels": 0, "samples_per_channel": 480}, "channels"),
    ("video_frame", {"format": F.I420, "width": 33, "height": 17, "nbytes": 867}, None),
    ("video_frame", {"format": F.RGBA, "width": 0, "height": 2, "nbytes": 0}, ">= 1"),
    ("video_frame", {"format": F.RGBA, "width": 4, "height": 4, "nbytes": 63}, "exactly"),
    ("video_frame", {"format": F.I420, "width": 4, "height": 4, "nbytes": 25}, "exactly"),
    ("video_convert", {"src": F.RGBA, "dst": F.I420}, None),
    ("video_convert", {"src": F.I420, "dst": F.ABGR}, None),
    ("video_convert", {"src": F.ABGR, "dst": F.RGBA}, "CONVERSIONS"),
    ("video_convert", {"src": F.I010, "dst": F.I420}, "CONVERSIONS"),
    ("video_convert", {"src": F.NV12, "dst": F.NV12}, "CONVERSIONS"),
    ("video_convert", {"src": F.RGBA, "dst": F.NV12}, "CONVERSIONS"),
    ("video_stream", {"format": F.I420}, None),
    ("video_stream", {"format": F.NV12}, "STREAM_FORMATS"),
    ("video_stream", {"format": F.I444}, "STREAM_FORMATS"),
    ("video_source", {"width": 1, "height": 1}, None),
    ("video_source", {"width": 0, "height": 0}, ">= 1"),
    ("video_capture", {"format": F.RGBA, "width": 4, "height": 4}, None),
    ("video_capture", {"format": F.ABGR, "width": 33, "height": 17}, None),
    ("video_capture", {"format": F.NV12, "width": 32, "height": 16}, "CAPTURE_FORMATS"),
    ("video_capture", {"format": F.I010, "width": 32, "height": 16}, "CAPTURE_FORMATS"),
    ("video_capture", {"format": F.RGBA, "width": 3, "height": 17}, "at least 4x4"),
    ("video_capture", {"format": F.I420, "width": 16, "height": 2}, "at least 4x4"),
]


@pytest.mark.parametrize(("operation", "params", "broken"), LIMIT_CASES)
def test_limits_table(operation: str, params: dict[str, Any], broken: str | None) -> None:
    if broken is None:
        check_limits(operation, **params)
    else:
        with pytest.raises(ValueError, match=operation) as exc_info:
            check_limits(operation, **params)
        assert broken in str(exc_info.value)


def test_every_limit_is_exercised_by_a_refused_case() -> None:
    refused_rules: set[str] = set()
    for operation, params, broken in LIMIT_CASES:
        if broken is not None:
            with pytest.raises(ValueError) as exc_info:
                check_limits(operation, **params)
            refused_rules.add(str(exc_info.value))
    for limit in LIMITS:
        assert any(limit.rule in message for message in refused_rules), limit.rule


def test_convert_refuses_pairs_that_would_abort_the_process() -> None:
    # Each of these would kill the interpreter inside livekit; here they raise.
    abgr = VideoFrame.from_ndarray(np.zeros((16, 32, 4), np.uint8), F.ABGR)
    with pytest.raises(ValueError, match="CONVERSIONS"):
        abgr.convert(F.RGBA)
    nv12 = VideoFrame.from_ndarray(
        np.zeros(frame_size(F.NV12, 32, 16), np.uint8), F.NV12, width=32, height=16
    )
    with pytest.raises(ValueError, match="CONVERSIONS"):
        nv12.convert(F.NV12)
    assert nv12.convert(F.I420).format is F.I420


def test_malformed_frames_are_refused_before_the_native_library() -> None:
    short = VideoFrame(np.zeros(63, np.uint8), 4, 4, F.RGBA)
    with pytest.raises(ValueError, match="exactly"):
        short.convert(F.I420)
    with pytest.raises(ValueError, match="exactly"):
        VideoFrame.from_ndarray(np.zeros(10, np.uint8), F.I420, width=4, height=4)
    with pytest.raises(ValueError, match="needs width and height"):
        VideoFrame.from_ndarray(np.zeros(24, np.uint8), F.I420)
    with pytest.raises(ValueError, match="channels"):
        VideoFrame.from_ndarray(np.zeros((4, 4, 3), np.uint8), F.RGBA)
    with pytest.raises(TypeError, match="uint8"):
        VideoFrame.from_ndarray(np.zeros((4, 4, 4), np.float32), F.RGBA)
    with pytest.raises(ValueError, match="planar"):
        VideoFrame.from_ndarray(np.zeros(24, np.uint8), F.I420, width=4, height=4).to_ndarray()


def test_audio_processor_refuses_frames_that_are_not_multiples_of_10_ms() -> None:
    apm = AudioProcessor(noise_suppression=True)
    apm.process(AudioFrame(np.zeros(480, np.int16), 48_000))
    apm.process(AudioFrame(np.zeros(1920, np.int16), 48_000, 2))  # 20 ms stereo
    with pytest.raises(ValueError, match="10 ms"):
        apm.process(AudioFrame(np.zeros(481, np.int16), 48_000))
    with pytest.raises(ValueError, match="10 ms"):
        apm.process_reverse(AudioFrame(np.zeros(240, np.int16), 48_000))
    with pytest.raises(ValueError, match="writable"):
        apm.process(AudioFrame(np.frombuffer(bytes(960), np.int16), 48_000))


async def test_streams_and_sources_refuse_what_would_abort() -> None:
    with pytest.raises(ValueError, match="queue_ms"):
        async with open_audio_output(queue_ms=25):
            pass  # pragma: no cover
    with pytest.raises(ValueError, match=">= 1"):
        async with open_video_output(0, 0):
            pass  # pragma: no cover
    async with open_audio_output() as out:
        with pytest.raises(ValueError, match="sample_rate"):
            async with open_audio_stream(out.track, sample_rate=7):
                pass  # pragma: no cover
        with pytest.raises(ValueError, match="num_channels"):
            async with open_audio_stream(out.track, num_channels=0):
                pass  # pragma: no cover
        with pytest.raises(ValueError, match="not a video track"):
            async with open_video_stream(out.track):
                pass  # pragma: no cover
    async with open_video_output(32, 16) as video:
        with pytest.raises(ValueError, match="STREAM_FORMATS"):
            async with open_video_stream(video.track, format=F.I420A):
                pass  # pragma: no cover
        with pytest.raises(ValueError, match="at least 4x4"):
            await video.write(np.zeros((3, 17, 4), np.uint8))
        nv12 = np.zeros(frame_size(F.NV12, 32, 16), np.uint8)
        with pytest.raises(ValueError, match="CAPTURE_FORMATS"):
            await video.write(VideoFrame.from_ndarray(nv12, F.NV12, width=32, height=16))


# ------------------------------------------------------------------ zero copy


def test_audio_frame_from_rtc_shares_the_native_buffer() -> None:
    native = rtc.AudioFrame.create(48_000, 2, 480)
    frame = AudioFrame.from_rtc(native, timestamp=1.5)
    frame.samples[3] = 1234
    assert np.frombuffer(native.data, np.int16)[3] == 1234
    assert frame.samples_per_channel == 480
    assert frame.duration == pytest.approx(0.01)
    assert frame.as_channels().shape == (480, 2)
    assert np.shares_memory(frame.as_channels(), frame.samples)
    assert frame.to_rtc() is native


def test_audio_frame_to_rtc_shares_writable_arrays_and_copies_read_only_ones() -> None:
    samples = np.arange(960, dtype=np.int16)
    native = AudioFrame(samples, 48_000, 2).to_rtc()
    assert native.samples_per_channel == 480
    samples[0] = -7
    assert np.frombuffer(native.data, np.int16)[0] == -7

    read_only = np.frombuffer(bytes(960), np.int16)
    copied = AudioFrame(read_only, 48_000).to_rtc()
    assert not np.shares_memory(np.frombuffer(copied.data, np.int16), read_only)


def test_video_frame_views_share_memory() -> None:
    pixels = np.zeros((16, 32, 4), np.uint8)
    frame = VideoFrame.from_ndarray(pixels, F.RGBA)
    assert np.shares_memory(frame.data, pixels)
    native = frame.to_rtc()
    pixels[0, 0] = (1, 2, 3, 4)
    assert bytes(native.data[:4]) == b"\x01\x02\x03\x04"
    back = VideoFrame.from_rtc(native)
    assert np.shares_memory(back.to_ndarray(), back.data)
    assert back.to_ndarray()[0, 0].tolist() == [1, 2, 3, 4]

    i420 = frame.convert(F.I420)
    y, u, v = i420.planes()
    assert (y.shape, u.shape, v.shape) == ((16, 32), (8, 16), (8, 16))
    assert all(np.shares_memory(plane, i420.data) for plane in (y, u, v))


def test_rgba_i420_round_trip_keeps_the_colour() -> None:
    pixels = np.empty((17, 33, 4), np.uint8)
    pixels[...] = (200, 40, 90, 255)
    frame = VideoFrame.from_ndarray(pixels, F.RGBA, timestamp_us=42)
    back = frame.convert(F.I420).convert(F.RGBA)
    assert back.timestamp_us == 42
    assert (back.width, back.height) == (33, 17)
    assert np.abs(back.to_ndarray()[..., :3].astype(int) - (200, 40, 90)).max() <= 4


# ------------------------------------------------------------------ chunking


@given(
    st.lists(st.integers(min_value=0, max_value=700), max_size=12),
    st.sampled_from([1, 2]),
)
def test_chunker_cuts_any_lengths_into_whole_frames(lengths: list[int], channels: int) -> None:
    chunker = _Chunker(frame_samples=160, num_channels=channels)
    pieces = [
        np.arange(sum(lengths[:i]), sum(lengths[: i + 1]), dtype=np.int16).repeat(channels)
        for i in range(len(lengths))
    ]
    frames = [frame for piece in pieces for frame in chunker.push(piece)]
    assert all(len(frame) == 160 * channels for frame in frames)
    rest = chunker.flush()
    assert chunker.pending == 0
    empty = np.empty(0, np.int16)
    out = np.concatenate([empty, *frames, *([] if rest is None else [rest])])
    assert np.array_equal(out, np.concatenate([empty, *pieces]))


def test_chunker_hands_out_views_when_frames_do_not_straddle_writes() -> None:
    chunker = _Chunker(frame_samples=480, num_channels=1)
    samples = np.zeros(480 * 3 + 100, np.int16)
    frames = chunker.push(samples)
    assert len(frames) == 3
    assert all(np.shares_memory(frame, samples) for frame in frames)
    assert chunker.pending == 100
    assert len(chunker.push(np.zeros(380, np.int16))) == 1


# ------------------------------------------------------------------ live audio, offline


async def test_audio_loop_carries_a_440_hz_tone_and_resamples() -> None:
    rate, out_rate = 48_000, 16_000
    received: list[np.ndarray] = []
    timestamps: list[float] = []
    with trio.fail_after(SAFETY_TIMEOUT):
        async with (
            open_audio_output(sample_rate=rate, queue_ms=100) as out,
            open_audio_stream(out.track, sample_rate=out_rate) as frames,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(out.write, tone(440, 0.4, rate))
            async for frame in frames:
                assert (frame.sample_rate, frame.num_channels) == (out_rate, 1)
                assert frame.samples.dtype == np.int16
                timestamps.append(frame.timestamp)
                if received or frame.samples.any():  # skip the silence before the tone
                    received.append(frame.samples.copy())
                if len(received) == 25:
                    break
    assert abs(peak_hz(np.concatenate(received), out_rate) - 440) <= 5
    assert {len(r) for r in received} == {160}  # 10 ms at 16 kHz
    assert np.allclose(np.diff(timestamps), 0.01)
    assert frames.statistics().dropped == 0
    assert out.statistics().frames == 40


async def test_stereo_write_accepts_interleaved_and_2d_and_checks_types() -> None:
    async with open_audio_output(sample_rate=16_000, num_channels=2, queue_ms=100) as out:
        await out.write(np.zeros((160, 2), np.int16))
        await out.write(np.zeros(320, np.int16))
        assert out.statistics().frames == 2
        with pytest.raises(TypeError, match="int16"):
            await out.write(np.zeros(320, np.float32))
        with pytest.raises(ValueError, match="whole number"):
            await out.write(np.zeros(321, np.int16))
        with pytest.raises(ValueError, match="channels"):
            await out.write(np.zeros((160, 3), np.int16))
    with pytest.raises(trio.ClosedResourceError):
        await out.write(np.zeros(320, np.int16))


async def test_short_writes_are_held_back_until_a_full_frame_or_flush() -> None:
    async with open_audio_output(sample_rate=16_000, queue_ms=100) as out:
        await out.write(np.zeros(400, np.int16))  # 25 ms
        stats = out.statistics()
        assert (stats.frames, stats.pending_samples) == (2, 80)
        await out.flush()
        stats = out.statistics()
        assert (stats.frames, stats.pending_samples) == (3, 0)
        assert stats.seconds == pytest.approx(0.025)


async def test_writes_are_paced_by_the_native_queue() -> None:
    # 300 ms of audio through a 100 ms queue cannot be accepted in under ~200 ms.
    async with open_audio_output(sample_rate=16_000, queue_ms=100) as out:
        start = trio.current_time()
        await out.write(np.zeros(4_800, np.int16))
        assert trio.current_time() - start >= 0.15


async def test_cancelling_a_write_stops_between_frames_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="livekit")
    async with open_audio_output(sample_rate=16_000, queue_ms=50) as out:
        with trio.move_on_after(0.1) as scope:
            await out.write(np.zeros(16_000, np.int16))  # 1 s: far more than the queue
        assert scope.cancelled_caught
        sent = out.statistics().frames
        assert sent < 100  # stopped long before the 100 frames of the second
        assert out.statistics().pending_samples == 0
        await out.clear()
        await out.write(np.zeros(160, np.int16))  # still usable
        assert out.statistics().frames == sent + 1
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_concurrent_writes_are_refused() -> None:
    async with (
        open_audio_output(sample_rate=16_000, queue_ms=50) as out,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(out.write, np.zeros(3_200, np.int16))
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await out.write(np.zeros(160, np.int16))
        nursery.cancel_scope.cancel()


async def test_wait_for_playout_returns_once_played() -> None:
    async with open_audio_output(sample_rate=16_000, queue_ms=200) as out:
        start = trio.current_time()
        await out.write(np.zeros(1_600 + 40, np.int16))  # 102.5 ms, queued at once
        await out.wait_for_playout()
        assert trio.current_time() - start >= 0.08


# ------------------------------------------------------------------ live video, offline


@pytest.mark.parametrize(
    ("out_format", "check"),
    [
        (F.RGBA, lambda frame: frame.to_ndarray()[..., :3].mean(axis=(0, 1))),
        (F.I420, lambda frame: frame.convert(F.RGBA).to_ndarray()[..., :3].mean(axis=(0, 1))),
    ],
)
async def test_video_loop_delivers_numpy_frames(
    out_format: VideoFormat, check: Callable[[VideoFrame], np.ndarray]
) -> None:
    pixels = np.empty((36, 64, 4), np.uint8)
    pixels[...] = (30, 160, 220, 255)
    with trio.fail_after(SAFETY_TIMEOUT):
        async with (
            open_video_output(64, 36) as video,
            open_video_stream(video.track, format=out_format) as frames,
        ):
            # libwebrtc may hand a reader a black frame of the track's size before
            # the first one written: skip those (a few at most), then check.
            written = 0
            while written < 5:
                await video.write(pixels)
                written += 1
                frame = await frames.receive()
                if check(frame).max() > 0:
                    break
    assert (frame.width, frame.height, frame.format) == (64, 36, out_format)
    assert np.abs(check(frame) - (30, 160, 220)).max() <= 6
    assert video.statistics().frames == written
