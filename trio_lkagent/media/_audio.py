"""Audio stages: resample, remix, gain, level metering, APM, re-chunking.

Every stage here is a :class:`~._pipeline.FrameStage`: synchronous numpy work per
frame, cheap enough to run in the pipeline's Trio task (``bench/bench_pipeline.py``
has the figures: a few to a few tens of microseconds per 10 ms frame). Frames
are :class:`~trio_lkagent.AudioFrame` (``int16``, interleaved); each stage keeps
timestamps counted in samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Final, Literal, final

import attrs
import numpy as np
import numpy.typing as npt

from .._media import AudioFrame, AudioProcessor, _Chunker, check_limits
from ._pipeline import FrameStage, PipelineConfig

__all__ = ["APM", "Gain", "Level", "LevelMeter", "Rechunk", "Remix", "Resample", "measure_level"]

Int16Array = npt.NDArray[np.int16]

_QUALITIES: Final = ("low", "medium", "high", "very_high")


class _Resampler:
    """One engine's streaming resampler for one (rate, channels) input."""

    def __init__(
        self, engine: str, in_rate: int, out_rate: int, channels: int, quality: str
    ) -> None:
        self.in_rate = in_rate
        self.channels = channels
        self.engine = engine
        if engine == "soxr":
            try:
                import soxr
            except ImportError:  # pragma: no cover - depends on the install
                raise ImportError(
                    'Resample(engine="soxr") needs soxr: pip install "trio-lkagent[media]"'
                ) from None
            soxr_quality = {"low": "LQ", "medium": "MQ", "high": "HQ", "very_high": "VHQ"}[quality]
            self._soxr: Any = soxr.ResampleStream(
                in_rate, out_rate, channels, dtype="int16", quality=soxr_quality
            )
        else:
            from livekit import rtc

            self._rtc = rtc.AudioResampler(
                in_rate,
                out_rate,
                num_channels=channels,
                quality=rtc.AudioResamplerQuality(quality),
            )

    def push(self, samples: Int16Array) -> Int16Array:
        if self.engine == "soxr":
            out: Int16Array = self._soxr.resample_chunk(samples.reshape(-1, self.channels))
            return out.reshape(-1)
        frames = self._rtc.push(bytearray(samples.tobytes()))
        return _concat([np.frombuffer(f.data, np.int16) for f in frames])

    def flush(self) -> Int16Array:
        if self.engine == "soxr":
            empty = np.zeros((0, self.channels), np.int16)
            out: Int16Array = self._soxr.resample_chunk(empty, last=True)
            return out.reshape(-1)
        return _concat([np.frombuffer(f.data, np.int16) for f in self._rtc.flush()])


def _concat(parts: list[Int16Array]) -> Int16Array:
    if not parts:
        return np.zeros(0, np.int16)
    # Copies: the arrays the resampler hands back are read-only views of its buffers.
    return np.concatenate(parts) if len(parts) > 1 else parts[0].copy()


@final
class Resample(FrameStage[AudioFrame, AudioFrame]):
    """Resample audio to one rate (frames already at that rate pass through untouched).

    Args:
        sample_rate: Target rate in Hz; None: the pipeline's ``sample_rate``.
        quality: ``"low"``, ``"medium"``, ``"high"`` or ``"very_high"``.
        engine: ``"livekit"`` (``livekit.rtc.AudioResampler``, the native sox
            resampler; no extra dependency) or ``"soxr"`` (the ``soxr`` wheel, about
            4x cheaper per frame; ``pip install "trio-lkagent[media]"``).

    Both engines are synchronous, thread-safe native calls bound to no event loop,
    so they run in the pipeline's task (about 17 µs per 10 ms frame for livekit's,
    4 µs for soxr, 48 -> 16 kHz). The output frames follow the resampler's own
    output (its filter delay; a few milliseconds); the rest comes out on flush.
    """

    def __init__(
        self,
        sample_rate: int | None = None,
        *,
        quality: Literal["low", "medium", "high", "very_high"] = "medium",
        engine: Literal["livekit", "soxr"] = "livekit",
    ) -> None:
        super().__init__()
        if quality not in _QUALITIES:
            raise ValueError(f"quality must be one of {_QUALITIES}, got {quality!r}")
        if engine not in ("livekit", "soxr"):
            raise ValueError(f'engine must be "livekit" or "soxr", got {engine!r}')
        if sample_rate is not None:
            check_limits("audio_stream", sample_rate=sample_rate, num_channels=1)
        self.sample_rate = sample_rate
        self.quality = quality
        self.engine = engine
        self._resampler: _Resampler | None = None
        self._position = 0  # output samples per channel so far
        self._start = 0.0

    def configure(self, config: PipelineConfig) -> None:
        """Default the target to the pipeline's ``sample_rate``."""
        if self.sample_rate is None:
            self.sample_rate = config.sample_rate

    def process(self, frame: AudioFrame) -> Iterable[AudioFrame]:
        """Resample *frame*; may return nothing while the filter fills."""
        rate = self.sample_rate
        if rate is None:
            raise RuntimeError("Resample() needs a sample_rate (or a pipeline's config)")
        if frame.sample_rate == rate and self._resampler is None:
            return (frame,)
        out: list[AudioFrame] = []
        r = self._resampler
        if r is None or (r.in_rate, r.channels) != (frame.sample_rate, frame.num_channels):
            if r is not None:
                out.extend(self._emit(r.flush(), r.channels))
            r = self._resampler = _Resampler(
                self.engine, frame.sample_rate, rate, frame.num_channels, self.quality
            )
            self._start = frame.timestamp
            self._position = 0
        out.extend(self._emit(r.push(frame.samples), frame.num_channels))
        return out

    def flush(self) -> Iterable[AudioFrame]:
        """Drain the filter at the end of the input."""
        r, self._resampler = self._resampler, None
        return self._emit(r.flush(), r.channels) if r is not None else ()

    def _emit(self, samples: Int16Array, channels: int) -> list[AudioFrame]:
        if not len(samples):
            return []
        rate = self.sample_rate
        assert rate is not None
        frame = AudioFrame(samples, rate, channels, self._start + self._position / rate)
        self._position += len(samples) // channels
        return [frame]


@final
class Remix(FrameStage[AudioFrame, AudioFrame]):
    """Change the channel count: mono is copied to every channel, many are averaged to one.

    From N to M channels with neither being 1, the first min(N, M) channels are kept
    and any added channel is the mean of the input channels.

    Args:
        channels: Target channels; None: the pipeline's ``channels``.
    """

    def __init__(self, channels: int | None = None) -> None:
        super().__init__()
        if channels is not None and channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels = channels

    def configure(self, config: PipelineConfig) -> None:
        """Default the target to the pipeline's ``channels``."""
        if self.channels is None:
            self.channels = config.channels

    def process(self, frame: AudioFrame) -> Iterable[AudioFrame]:
        """Remix *frame* (returned unchanged if it already has the target channels)."""
        target = self.channels
        if target is None:
            raise RuntimeError("Remix() needs channels (or a pipeline's config)")
        source = frame.num_channels
        if source == target:
            return (frame,)
        data = frame.as_channels()
        if target == 1:
            mixed = data.mean(axis=1, dtype=np.float32)
            out = np.round(mixed).astype(np.int16)
        elif source == 1:
            out = np.repeat(data, target, axis=1)
        else:
            out = np.empty((len(data), target), np.int16)
            keep = min(source, target)
            out[:, :keep] = data[:, :keep]
            if target > keep:
                mean = np.round(data.mean(axis=1, dtype=np.float32)).astype(np.int16)
                out[:, keep:] = mean[:, None]
        return (
            AudioFrame(
                np.ascontiguousarray(out).reshape(-1), frame.sample_rate, target, frame.timestamp
            ),
        )


@final
class Gain(FrameStage[AudioFrame, AudioFrame]):
    """Amplify or attenuate by a number of decibels, clipping at the int16 range.

    Args:
        db: Gain in dB (0: frames pass through untouched). Change it at any time
            with :attr:`db`; the next frame uses the new value.

    Attributes:
        clipped: Samples clipped so far (a sign the gain is too high).
    """

    def __init__(self, db: float = 0.0) -> None:
        super().__init__()
        if not math.isfinite(db):
            raise ValueError(f"db must be finite, got {db!r}")
        self.db = db
        self.clipped = 0

    def process(self, frame: AudioFrame) -> Iterable[AudioFrame]:
        """Return *frame* scaled by the gain."""
        if self.db == 0.0:
            return (frame,)
        factor = 10.0 ** (self.db / 20.0)
        scaled = np.round(frame.samples.astype(np.float32) * np.float32(factor))
        self.clipped += int(np.count_nonzero((scaled > 32767) | (scaled < -32768)))
        samples = np.clip(scaled, -32768, 32767).astype(np.int16)
        return (AudioFrame(samples, frame.sample_rate, frame.num_channels, frame.timestamp),)


@attrs.frozen
class Level:
    """The level of one audio frame, in dB relative to full scale (-inf for silence).

    Attributes:
        rms_dbfs: Root-mean-square level; a full-scale sine is about -3 dBFS.
        peak_dbfs: Highest absolute sample.
        timestamp: The frame's timestamp.
    """

    rms_dbfs: float
    peak_dbfs: float
    timestamp: float


def _dbfs(value: float) -> float:
    return 20.0 * math.log10(value / 32768.0) if value > 0 else -math.inf


def measure_level(frame: AudioFrame) -> Level:
    """Return the RMS and peak level of *frame*."""
    samples = frame.samples.astype(np.float32)
    if not len(samples):
        return Level(-math.inf, -math.inf, frame.timestamp)
    rms = float(np.sqrt(np.mean(samples * samples)))
    peak = float(np.max(np.abs(samples)))
    return Level(_dbfs(rms), _dbfs(peak), frame.timestamp)


@final
class LevelMeter(FrameStage[AudioFrame, AudioFrame]):
    """Measure each frame's level and pass the frame on unchanged.

    Read :attr:`level` (the last frame's) and :attr:`peak_dbfs` (the loudest peak
    so far) from any task; or give *on_level*, called synchronously with every
    :class:`Level` (keep it cheap; send to a channel with ``send_nowait`` to
    hand the levels to another task).

    Attributes:
        level: The last frame's level (None before the first frame).
        peak_dbfs: The highest peak seen so far.
    """

    def __init__(self, on_level: Any = None) -> None:
        super().__init__()
        self._on_level = on_level
        self.level: Level | None = None
        self.peak_dbfs = -math.inf

    def process(self, frame: AudioFrame) -> Iterable[AudioFrame]:
        """Measure *frame*; return it unchanged."""
        level = self.level = measure_level(frame)
        self.peak_dbfs = max(self.peak_dbfs, level.peak_dbfs)
        if self._on_level is not None:
            self._on_level(level)
        return (frame,)


@final
class Rechunk(FrameStage[AudioFrame, AudioFrame]):
    """Cut audio into frames of a fixed length (what a VAD or an encoder wants).

    Frames are views of the input where they do not straddle two input frames.
    The remainder at the end of the input comes out as a short frame, or padded
    with silence to a full frame when *pad* is true.

    Args:
        frame_ms: Output frame length in ms; None: the pipeline's ``frame_ms``.
        pad: Pad the last frame with silence.
    """

    def __init__(self, frame_ms: int | None = None, *, pad: bool = False) -> None:
        super().__init__()
        if frame_ms is not None and frame_ms < 1:
            raise ValueError(f"frame_ms must be >= 1, got {frame_ms}")
        self.frame_ms = frame_ms
        self.pad = pad
        self._chunker: _Chunker | None = None
        self._format: tuple[int, int] = (0, 0)
        self._position = 0
        self._start = 0.0

    def configure(self, config: PipelineConfig) -> None:
        """Default the length to the pipeline's ``frame_ms``."""
        if self.frame_ms is None:
            self.frame_ms = config.frame_ms

    def process(self, frame: AudioFrame) -> Iterable[AudioFrame]:
        """Return the whole frames now available."""
        if self.frame_ms is None:
            raise RuntimeError("Rechunk() needs frame_ms (or a pipeline's config)")
        out: list[AudioFrame] = []
        fmt = (frame.sample_rate, frame.num_channels)
        if self._chunker is None or fmt != self._format:
            out.extend(self.flush())
            per_channel = frame.sample_rate * self.frame_ms // 1000
            if per_channel < 1:
                raise ValueError(f"{self.frame_ms} ms at {frame.sample_rate} Hz is no sample")
            self._chunker = _Chunker(per_channel, frame.num_channels)
            self._format = fmt
            self._start = frame.timestamp
            self._position = 0
        for chunk in self._chunker.push(frame.samples):
            out.append(self._frame(chunk))
        return out

    def flush(self) -> Iterable[AudioFrame]:
        """Return the remainder (short, or padded), if any."""
        chunker, self._chunker = self._chunker, None
        rest = chunker.flush() if chunker is not None else None
        if chunker is None or rest is None:
            return ()
        if self.pad:
            full = np.zeros(chunker.frame_samples * chunker.num_channels, np.int16)
            full[: len(rest)] = rest
            rest = full
        return (self._frame(rest),)

    def _frame(self, samples: Int16Array) -> AudioFrame:
        rate, channels = self._format
        frame = AudioFrame(samples, rate, channels, self._start + self._position / rate)
        self._position += len(samples) // channels
        return frame


@final
class APM(FrameStage[AudioFrame, AudioFrame]):
    """WebRTC audio processing (noise suppression, AGC, high-pass, echo cancellation).

    Wraps :class:`~trio_lkagent.AudioProcessor`, which needs frames of whole 10 ms
    multiples: frames of other lengths are cut into 10 ms frames here (the
    remainder waits for the next frame). Frames are copied once (the native module works in place
    and input frames may be shared).

    Args:
        processor: An :class:`~trio_lkagent.AudioProcessor` to use (e.g. one whose
            ``process_reverse`` you feed with what you play, for echo
            cancellation); None builds one from the keyword arguments.
        noise_suppression: As :class:`~trio_lkagent.AudioProcessor`.
        high_pass_filter: As :class:`~trio_lkagent.AudioProcessor`.
        auto_gain_control: As :class:`~trio_lkagent.AudioProcessor`.
        echo_cancellation: As :class:`~trio_lkagent.AudioProcessor`.
    """

    def __init__(
        self,
        processor: AudioProcessor | None = None,
        *,
        noise_suppression: bool = True,
        high_pass_filter: bool = True,
        auto_gain_control: bool = False,
        echo_cancellation: bool = False,
    ) -> None:
        super().__init__()
        self.processor = processor or AudioProcessor(
            noise_suppression=noise_suppression,
            high_pass_filter=high_pass_filter,
            auto_gain_control=auto_gain_control,
            echo_cancellation=echo_cancellation,
        )
        self._rechunk = Rechunk(10)

    def process(self, frame: AudioFrame) -> Iterable[AudioFrame]:
        """Process *frame* (as 10 ms frames)."""
        step = frame.sample_rate // 100
        chunker = self._rechunk._chunker
        held = chunker is not None and chunker.pending > 0
        if frame.samples_per_channel % step == 0 and not held:
            chunks: Iterable[AudioFrame] = (frame,)
        else:
            chunks = self._rechunk.process(frame)
        out = []
        for chunk in chunks:
            copy = AudioFrame(
                chunk.samples.copy(), chunk.sample_rate, chunk.num_channels, chunk.timestamp
            )
            self.processor.process(copy)
            out.append(copy)
        return out
