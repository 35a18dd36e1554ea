"""The pipeline: stages joined by bounded Trio memory channels, run in a nursery.

::

    MediaPipeline.open(source)         the caller's task: the ``async with`` body
    '- nursery
       '- feed                         source -> stage 1's channel (when a source is given)
       '- stage 1 .. stage N           one task each: receive -> work -> send
                                       the last stage's channel is what the body reads

Backpressure: every link holds ``buffer_size`` frames; a stage that cannot keep up
makes the one before it wait, up to the feeder, which stops reading its source. A
``livekit`` input stream then drops its newest frames (counted in its own
``statistics().dropped``): nothing in a pipeline grows without bound.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Generic, Protocol, TypeVar, final, runtime_checkable

import attrs
import trio

from .._media import AudioFrame, VideoFrame
from .._tracks import AudioOutput, VideoOutput, open_owned_nursery

__all__ = [
    "FrameStage",
    "MediaPipeline",
    "PipelineConfig",
    "PipelineStatistics",
    "PipelineStream",
    "Stage",
    "StageStatistics",
    "map_frames",
]

InT = TypeVar("InT")
OutT = TypeVar("OutT")
InT_contra = TypeVar("InT_contra", contravariant=True)
OutT_co = TypeVar("OutT_co", covariant=True)


def _positive(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not (isinstance(value, (int, float)) and value > 0):
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _resolution(
    _instance: object, _attribute: attrs.Attribute[Any], value: tuple[int, int] | None
) -> None:
    if value is not None and (len(value) != 2 or min(value) < 4):
        raise ValueError(f"resolution must be (width, height), each >= 4 pixels, got {value!r}")


@attrs.frozen
class PipelineConfig:
    """What a pipeline's stages produce, unless a stage is told otherwise.

    Stages left without an explicit target take theirs from here when the pipeline
    is built (:meth:`FrameStage.configure`): ``Resample()`` resamples to
    *sample_rate*, ``Remix()`` to *channels*, ``Rechunk()`` to *frame_ms*,
    ``FrameRateLimit()`` to *frame_rate*, ``Resize()`` to *resolution*.

    Attributes:
        sample_rate: Audio sample rate in Hz (8000..192000).
        channels: Audio channels.
        frame_ms: Audio frame length in milliseconds.
        buffer_size: Frames each link between two stages holds (backpressure).
        frame_rate: Video frames per second (None: no limit).
        resolution: Video ``(width, height)`` (None: keep the size).
    """

    sample_rate: int = attrs.field(default=48_000, validator=_positive)
    channels: int = attrs.field(default=1, validator=_positive)
    frame_ms: int = attrs.field(default=10, validator=_positive)
    buffer_size: int = attrs.field(default=8, validator=_positive)
    frame_rate: float | None = attrs.field(default=None, validator=_positive)
    resolution: tuple[int, int] | None = attrs.field(default=None, validator=_resolution)

    def __attrs_post_init__(self) -> None:
        if not 8_000 <= self.sample_rate <= 192_000:
            raise ValueError(f"sample_rate must be within 8000..192000 Hz, got {self.sample_rate}")


@runtime_checkable
class Stage(Protocol[InT_contra, OutT_co]):
    """A pipeline stage: an async callable that reads frames and sends frames.

    Any ``async def stage(receive, send) -> None`` is one. It returns when
    *receive* ends (``async for`` does that); the pipeline then closes *send*, which
    ends the next stage. The pipeline closes both channels whatever happens.
    """

    async def __call__(
        self,
        receive: trio.MemoryReceiveChannel[InT_contra],
        send: trio.MemorySendChannel[OutT_co],
    ) -> None:
        """Run the stage until *receive* ends."""


class FrameStage(Generic[InT, OutT]):
    """Base of the small stage classes: override :meth:`process` (and :meth:`flush`).

    ``process`` is synchronous (a stage doing CPU work in the pipeline's task);
    each call is timed, so :meth:`MediaPipeline.statistics` reports what a frame
    costs in every stage. A stage that must wait for something (another task, a
    thread) overrides ``__call__`` instead.
    """

    #: Shown in statistics; the class name unless set.
    name: str = ""

    def __init__(self) -> None:
        self.frames_in = 0
        self.frames_out = 0
        self.busy = 0.0  # seconds spent in process/flush

    def configure(self, config: PipelineConfig) -> None:
        """Take defaults from the pipeline's config (called once, when the stage is added)."""

    def process(self, frame: InT) -> Iterable[OutT]:
        """Return the frames that *frame* produces (none, one or several)."""
        raise NotImplementedError

    def flush(self) -> Iterable[OutT]:
        """Return what is held back once the input has ended (default: nothing)."""
        return ()

    async def __call__(
        self, receive: trio.MemoryReceiveChannel[InT], send: trio.MemorySendChannel[OutT]
    ) -> None:
        """Run :meth:`process` on every frame, then :meth:`flush`."""
        clock = time.perf_counter
        async for frame in receive:
            self.frames_in += 1
            start = clock()
            produced = list(self.process(frame))
            self.busy += clock() - start
            for out in produced:
                await send.send(out)
                self.frames_out += 1
        start = clock()
        rest = list(self.flush())
        self.busy += clock() - start
        for out in rest:
            await send.send(out)
            self.frames_out += 1

    def statistics(self) -> StageStatistics:
        """Return this stage's counters."""
        return StageStatistics(
            name=self.name or type(self).__name__,
            frames_in=self.frames_in,
            frames_out=self.frames_out,
            busy=self.busy,
        )


@final
class _MapStage(FrameStage[InT, OutT]):
    def __init__(self, fn: Callable[[InT], OutT | None], name: str) -> None:
        super().__init__()
        self._fn = fn
        self.name = name

    def process(self, frame: InT) -> Iterable[OutT]:
        out = self._fn(frame)
        return () if out is None else (out,)


def map_frames(fn: Callable[[InT], OutT | None], *, name: str = "") -> FrameStage[InT, OutT]:
    """Make a stage of a plain function: one frame in, one frame (or None: dropped) out."""
    return _MapStage(fn, name or getattr(fn, "__name__", "map"))


@attrs.frozen
class StageStatistics:
    """Counters of one stage (None where a plain async function stage cannot tell).

    Attributes:
        name: The stage's name.
        frames_in: Frames it received.
        frames_out: Frames it sent on.
        busy: Seconds spent processing (``FrameStage`` only).
        buffered: Frames waiting in its input link now.
    """

    name: str
    frames_in: int | None = None
    frames_out: int | None = None
    busy: float | None = None
    buffered: int = 0

    @property
    def cost_per_frame(self) -> float:
        """Mean processing seconds per input frame (nan if unknown or no frame yet)."""
        if self.busy is None or not self.frames_in:
            return math.nan
        return self.busy / self.frames_in


@attrs.frozen
class PipelineStatistics:
    """A pipeline's counters: one :class:`StageStatistics` per stage, in order.

    Attributes:
        stages: Per stage.
        fed: Frames taken from the source (or sent by the caller).
        delivered: Frames the caller received from the last stage.
    """

    stages: tuple[StageStatistics, ...]
    fed: int
    delivered: int


@runtime_checkable
class _HasStatistics(Protocol):
    def statistics(self) -> StageStatistics: ...


_StageLike = Stage[Any, Any] | FrameStage[Any, Any] | Callable[..., Awaitable[None]]


@final
class PipelineStream(trio.abc.ReceiveChannel[Any]):
    """A running pipeline: receive its output; send input if it has no source.

    Obtained from :meth:`MediaPipeline.open`. Iterate it (``async for frame in
    stream``) for the last stage's frames; it ends when the input has ended and
    every stage has flushed.
    """

    def __init__(
        self,
        pipeline: MediaPipeline,
        receive: trio.MemoryReceiveChannel[Any],
        send: trio.MemorySendChannel[Any] | None,
    ) -> None:
        self._pipeline = pipeline
        self._receive = receive
        self._send = send

    async def send(self, frame: Any) -> None:
        """Feed a frame in (a pipeline opened without a source); waits while it is full.

        Raises:
            RuntimeError: The pipeline reads a source of its own.
            trio.ClosedResourceError: :meth:`close_input` was called.
        """
        if self._send is None:
            raise RuntimeError("this pipeline reads its source; it takes no input")
        await self._send.send(frame)
        self._pipeline._fed += 1

    def close_input(self) -> None:
        """Say the input is complete: the stages flush, then the output ends."""
        if self._send is not None:
            self._send.close()

    async def receive(self) -> Any:
        """Wait for the last stage's next frame.

        Raises:
            trio.EndOfChannel: The input ended and every stage flushed.
        """
        frame = await self._receive.receive()
        self._pipeline._delivered += 1
        return frame

    async def aclose(self) -> None:
        """Stop reading the output (the ``async with`` block owns the tasks)."""
        await self._receive.aclose()

    def statistics(self) -> PipelineStatistics:
        """Return the pipeline's counters."""
        return self._pipeline.statistics()


class MediaPipeline:
    """Composable media stages over Trio memory channels, with backpressure.

    Example::

        config = PipelineConfig(sample_rate=16000, channels=1, frame_ms=20)
        pipeline = MediaPipeline(config, [Resample(), Remix(), Gain(db=6), Rechunk()])
        async with open_audio_stream(track, sample_rate=48000) as mic:
            async with pipeline.open(mic) as frames:
                async for frame in frames:          # 16 kHz mono 20 ms AudioFrames
                    ...

    Args:
        config: Targets and the link size (:class:`PipelineConfig`).
        stages: Stages in order: :class:`FrameStage` instances (the built-in
            ones), or any async callable ``stage(receive, send)``.

    A pipeline runs once at a time (one :meth:`open` block); open it again
    afterwards to run the same stages on a new input (they keep their state,
    e.g. a meter's peak and the counters).
    """

    def __init__(self, config: PipelineConfig | None = None, stages: Sequence[_StageLike] = ()):
        self.config = config if config is not None else PipelineConfig()
        self._stages: list[_StageLike] = []
        self._links: list[trio.MemoryReceiveChannel[Any]] = []
        self._running = False
        self._fed = 0
        self._delivered = 0
        for stage in stages:
            self.add(stage)

    @property
    def stages(self) -> tuple[_StageLike, ...]:
        """The stages, in order."""
        return tuple(self._stages)

    def add(self, stage: _StageLike) -> MediaPipeline:
        """Append a stage (configured from :attr:`config`); returns the pipeline.

        Raises:
            RuntimeError: The pipeline is running.
            TypeError: *stage* is not callable.
        """
        if self._running:
            raise RuntimeError("stages cannot be added to a running pipeline")
        if not callable(stage):
            raise TypeError(f"a stage is an async callable (receive, send), got {stage!r}")
        if isinstance(stage, FrameStage):
            stage.configure(self.config)
        self._stages.append(stage)
        return self

    @asynccontextmanager
    async def open(self, source: AsyncIterable[Any] | None = None) -> AsyncIterator[PipelineStream]:
        """Run the stages for the duration of the block.

        Args:
            source: Frames to feed in (an ``AudioReceiveStream``, a
                ``VideoReceiveStream``, any async iterable); its end ends the
                pipeline's input. None: feed frames with :meth:`PipelineStream.send`
                and end with :meth:`PipelineStream.close_input`.

        Yields:
            The :class:`PipelineStream` to read the output from.

        Raises:
            RuntimeError: The pipeline is already running.
            Exception: The first error a stage (or the source) raised, unwrapped.

        Cancellation:
            Leaving the block cancels every stage task; frames in flight are lost.
        """
        if self._running:
            raise RuntimeError("this pipeline is already running")
        self._running = True
        self._fed = self._delivered = 0
        size = self.config.buffer_size
        try:
            async with open_owned_nursery() as nursery:
                first_send, receive = trio.open_memory_channel[Any](size)
                self._links = [receive]
                for stage in self._stages:
                    send, next_receive = trio.open_memory_channel[Any](size)
                    nursery.start_soon(_run_stage, stage, receive, send)
                    receive = next_receive
                    self._links.append(receive)
                if source is not None:
                    nursery.start_soon(self._feed, source, first_send)
                    stream = PipelineStream(self, receive, None)
                else:
                    stream = PipelineStream(self, receive, first_send)
                async with receive:
                    yield stream
                nursery.cancel_scope.cancel()
        finally:
            self._running = False

    async def run(
        self,
        source: AsyncIterable[Any],
        sink: Callable[[Any], Awaitable[object]] | AudioOutput | VideoOutput,
    ) -> None:
        """Run *source* through the stages into *sink* until the source ends.

        Args:
            source: As for :meth:`open`.
            sink: An async callable taking each output frame, or an
                ``AudioOutput`` / ``VideoOutput`` (from ``room.publish_audio`` /
                ``publish_video`` or ``open_audio_output``): audio frames are
                written to it (their rate and channels must match the output's),
                video frames handed to it.

        Raises:
            ValueError: An audio frame's rate or channels differ from the output's.
        """
        write = _sink(sink)
        async with self.open(source) as frames:
            async for frame in frames:
                await write(frame)

    async def _feed(self, source: AsyncIterable[Any], send: trio.MemorySendChannel[Any]) -> None:
        async with send:
            async for frame in source:
                await send.send(frame)
                self._fed += 1

    def statistics(self) -> PipelineStatistics:
        """Return per-stage counters (see :class:`PipelineStatistics`)."""
        stages = []
        for index, stage in enumerate(self._stages):
            if isinstance(stage, FrameStage | _HasStatistics):
                stats = stage.statistics()
            else:
                stats = StageStatistics(name=getattr(stage, "__name__", type(stage).__name__))
            if self._running and index < len(self._links):
                buffered = self._links[index].statistics().current_buffer_used
                stats = attrs.evolve(stats, buffered=buffered)
            stages.append(stats)
        return PipelineStatistics(tuple(stages), self._fed, self._delivered)


async def _run_stage(
    stage: _StageLike, receive: trio.MemoryReceiveChannel[Any], send: trio.MemorySendChannel[Any]
) -> None:
    # The output is closed only when the stage ends normally: after an error the
    # stages downstream and the caller must not see a clean end of stream, but
    # the error (the nursery cancels them and raises it from the block).
    with receive:
        try:
            await stage(receive, send)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the consumer went away: the block is ending
        send.close()


def _sink(
    sink: Callable[[Any], Awaitable[object]] | AudioOutput | VideoOutput,
) -> Callable[[Any], Awaitable[object]]:
    if isinstance(sink, AudioOutput):
        output = sink

        async def write_audio(frame: AudioFrame) -> None:
            if (frame.sample_rate, frame.num_channels) != (output.sample_rate, output.num_channels):
                raise ValueError(
                    f"the pipeline makes {frame.sample_rate} Hz x {frame.num_channels} audio, "
                    f"the output takes {output.sample_rate} Hz x {output.num_channels}"
                )
            await output.write(frame.samples)

        return write_audio
    if isinstance(sink, VideoOutput):
        video = sink

        async def write_video(frame: VideoFrame) -> None:
            await video.write(frame)

        return write_video
    return sink
