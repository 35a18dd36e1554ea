"""The plugin seams: VAD, STT and TTS protocols, their events, and the stream machinery.

Every plugin stream has the same shape: ``async with engine.stream() as s:`` owns a
nursery with one processing task; the caller pushes audio frames into it with the
never-blocking :meth:`PluginStream.push_frame` and iterates the events it produces.

Buffer policy (the SDK's, as for track streams)
    * Input: ``max_buffer_size`` frames wait for the processing task; when the engine
      falls that far behind, newer frames are dropped and counted
      (``statistics().frames_dropped``). ``push_frame`` never blocks.
    * Output: ``max_buffer_size`` events wait for the consumer. Events that only
      report progress (``VADEventType.INFERENCE``, ``SpeechEventType.INTERIM``) are
      dropped when the consumer is that far behind (counted in
      ``statistics().events_dropped``); the events that matter (start/end of speech,
      final transcripts) are never dropped: the processing task waits for the
      consumer, and the input buffer then absorbs, and if need be drops, frames.

Errors
    An engine that fails ends the stream: the consumer's next ``receive`` (or the
    next ``push_frame``) raises :class:`~trio_lkagent.PluginError` with the engine's
    message, chained to the engine's own exception. An error nobody observed is raised
    when the ``async with`` block exits.
"""

from __future__ import annotations

import enum
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, runtime_checkable

import attrs
import numpy as np
import numpy.typing as npt
import trio

from .._exceptions import PluginError
from .._media import AudioFrame

if TYPE_CHECKING:
    from livekit import rtc

__all__ = [
    "STT",
    "TTS",
    "VAD",
    "PluginStream",
    "SpeechData",
    "SpeechEvent",
    "SpeechEventType",
    "STTCapabilities",
    "STTStream",
    "StreamStatistics",
    "SynthesizedAudio",
    "VADEvent",
    "VADEventType",
    "VADOptions",
    "VADStream",
]

E = TypeVar("E")
Int16Array = npt.NDArray[np.int16]

#: Default bound of a plugin stream's input and output buffers (frames / events).
DEFAULT_BUFFER_SIZE = 200


# --------------------------------------------------------------------------- events


class VADEventType(enum.Enum):
    """What a :class:`VADEvent` reports."""

    START_OF_SPEECH = "start_of_speech"
    INFERENCE = "inference"
    END_OF_SPEECH = "end_of_speech"


@attrs.frozen
class VADEvent:
    """One event of a VAD stream.

    Attributes:
        type: What happened.
        timestamp: Stream position of the event, in seconds (audio pushed so far).
        probability: Speech probability of the last inference window (0..1).
        speaking: Whether the stream is inside speech after this event.
        speech_duration: Seconds of speech in the current utterance so far.
        silence_duration: Seconds of silence since the last speech.
        frames: For ``END_OF_SPEECH``, the utterance's audio (with the prefix
            padding before it), as the frames that were pushed; for
            ``START_OF_SPEECH``, the audio so far. Empty for ``INFERENCE``.
    """

    type: VADEventType
    timestamp: float
    probability: float = 0.0
    speaking: bool = False
    speech_duration: float = 0.0
    silence_duration: float = 0.0
    frames: tuple[AudioFrame, ...] = attrs.field(default=(), repr=False)


class SpeechEventType(enum.Enum):
    """What a :class:`SpeechEvent` reports."""

    START_OF_SPEECH = "start_of_speech"
    INTERIM = "interim"
    FINAL = "final"
    END_OF_SPEECH = "end_of_speech"


@attrs.frozen
class SpeechData:
    """One alternative of a transcript.

    Attributes:
        text: The words recognised.
        confidence: The engine's confidence, 0..1 (0 when it gives none).
        start_time: Stream position where the words start, in seconds.
        end_time: Stream position where they end, in seconds.
        language: The language (BCP 47 or the engine's code), "" if unknown.
    """

    text: str
    confidence: float = 0.0
    start_time: float = 0.0
    end_time: float = 0.0
    language: str = ""


@attrs.frozen
class SpeechEvent:
    """One event of an STT stream, or the result of ``STT.recognize``.

    Attributes:
        type: What happened.
        alternatives: Transcript alternatives, best first (empty for start/end of
            speech events).
        request_id: The engine's id for the request, "" if it has none.
    """

    type: SpeechEventType
    alternatives: tuple[SpeechData, ...] = ()
    request_id: str = ""

    @property
    def text(self) -> str:
        """The best alternative's text ("" when there is none)."""
        return self.alternatives[0].text if self.alternatives else ""


@attrs.frozen
class StreamStatistics:
    """A plugin stream's buffers.

    Attributes:
        frames_pushed: Frames accepted by ``push_frame``.
        frames_dropped: Frames dropped because the engine was behind by
            ``max_buffer_size`` frames.
        frames_queued: Frames waiting for the engine now.
        events_sent: Events handed to the consumer's buffer.
        events_dropped: Progress events dropped because the consumer was behind.
        max_buffer_size: The bound of each buffer.
    """

    frames_pushed: int
    frames_dropped: int
    frames_queued: int
    events_sent: int
    events_dropped: int
    max_buffer_size: int


# --------------------------------------------------------------------------- stream machinery


class PluginStream(trio.abc.ReceiveChannel[E], Generic[E]):
    """Frames in, events out, with the bounded-buffer policy (see the module doc).

    Implementations override :meth:`_process`, which reads frames from
    ``self._frames`` until it ends, and emits events with :meth:`_emit`. The stream
    is run by :meth:`_open`, which the engine's ``stream()`` returns.
    """

    def __init__(self, *, max_buffer_size: int = DEFAULT_BUFFER_SIZE, name: str = "") -> None:
        if max_buffer_size < 1:
            raise ValueError("max_buffer_size must be >= 1")
        self._name = name or type(self).__name__
        self._max = max_buffer_size
        self._frames_send, self._frames = trio.open_memory_channel[AudioFrame](max_buffer_size)
        self._events_send, self._events = trio.open_memory_channel[E](max_buffer_size)
        self._pushed = 0
        self._frames_dropped = 0
        self._sent = 0
        self._events_dropped = 0
        self._error: PluginError | None = None
        self._error_seen = False

    # ---- the producer side (caller)

    def push_frame(self, frame: AudioFrame) -> None:
        """Queue a frame for the engine; never blocks.

        A frame that does not fit (the engine is ``max_buffer_size`` frames behind)
        is dropped and counted.

        Raises:
            PluginError: The engine failed.
            trio.ClosedResourceError: :meth:`end_input` was called, or the stream
                is closed.
        """
        if self._error is not None:
            self._error_seen = True
            raise self._error
        try:
            self._frames_send.send_nowait(frame)
        except trio.WouldBlock:
            self._frames_dropped += 1
        except trio.BrokenResourceError:
            if self._error is not None:
                self._error_seen = True
                raise self._error  # noqa: B904 - keep the engine's exception as the cause
            raise trio.ClosedResourceError("the stream is closed") from None
        else:
            self._pushed += 1

    def end_input(self) -> None:
        """Mark the end of the audio: the engine finishes what it has, then the
        events end (iteration stops). Idempotent."""
        self._frames_send.close()

    # ---- the consumer side

    async def receive(self) -> E:
        """Return the next event.

        Raises:
            trio.EndOfChannel: The input ended and every event was delivered.
            PluginError: The engine failed.
        """
        try:
            return await self._events.receive()
        except trio.EndOfChannel:
            if self._error is not None:
                self._error_seen = True
                raise self._error  # noqa: B904 - keep the engine's exception as the cause
            raise

    async def aclose(self) -> None:
        """Stop the stream: no more input, no more events. Idempotent."""
        self._frames_send.close()
        await self._events.aclose()

    def statistics(self) -> StreamStatistics:
        """Return the stream's buffer counters."""
        return StreamStatistics(
            frames_pushed=self._pushed,
            frames_dropped=self._frames_dropped,
            frames_queued=self._frames_send.statistics().current_buffer_used,
            events_sent=self._sent,
            events_dropped=self._events_dropped,
            max_buffer_size=self._max,
        )

    # ---- for implementations

    async def _emit(self, event: E, *, droppable: bool = False) -> None:
        """Hand an event to the consumer; progress events are dropped when it is behind."""
        if droppable:
            try:
                self._events_send.send_nowait(event)
            except trio.WouldBlock:
                self._events_dropped += 1
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
        else:
            try:
                await self._events_send.send(event)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
        self._sent += 1

    async def _process(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def _run(self) -> None:
        try:
            with self._frames:
                await self._process()
        except trio.Cancelled:
            raise
        except Exception as exc:
            leaf = _single_leaf(exc)
            if isinstance(leaf, PluginError):
                self._error = leaf
            else:
                self._error = PluginError(f"{self._name}: {leaf}")
                self._error.__cause__ = leaf
        finally:
            self._events_send.close()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[PluginStream[E]]:
        with _unwrap_single():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._run, name=f"{self._name}.process")
                try:
                    yield self
                finally:
                    nursery.cancel_scope.cancel()
                    self._frames_send.close()
        if self._error is not None and not self._error_seen:
            self._error_seen = True
            raise self._error


def _single_leaf(exc: Exception) -> Exception:
    """The one exception inside nested groups of one (an engine's nursery), or *exc*."""
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@contextmanager
def _unwrap_single() -> Iterator[None]:
    """Let the body's own exception out of a stream's nursery as itself.

    The stream's task never raises (its errors are kept for the consumer), so a
    group of one is the body's exception, which the caller expects unwrapped.
    """
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1 and not isinstance(group.exceptions[0], BaseExceptionGroup):
            raise group.exceptions[0] from None
        raise


class VADStream(PluginStream[VADEvent]):
    """A VAD stream: push frames, iterate :class:`VADEvent` s."""


class STTStream(PluginStream[SpeechEvent]):
    """A speech-to-text stream: push frames, iterate :class:`SpeechEvent` s."""


class SynthesizedAudio(trio.abc.ReceiveChannel[AudioFrame]):
    """Audio frames of one synthesis, as the engine produces them.

    The producer waits for the consumer (at most ``max_buffer_size`` frames are
    buffered): synthesis is paced by whoever plays the audio.

    Attributes:
        sample_rate: Samples per second of every frame.
        num_channels: Channels of every frame.
    """

    def __init__(self, sample_rate: int, num_channels: int = 1, *, max_buffer_size: int = 50):
        self.sample_rate = sample_rate
        self.num_channels = num_channels
        self._send, self._receive = trio.open_memory_channel[AudioFrame](max_buffer_size)
        self._error: PluginError | None = None
        self._error_seen = False

    async def receive(self) -> AudioFrame:
        """Return the next frame.

        Raises:
            trio.EndOfChannel: The synthesis is complete.
            PluginError: The engine failed.
        """
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            if self._error is not None:
                self._error_seen = True
                raise self._error  # noqa: B904 - keep the engine's exception as the cause
            raise

    async def aclose(self) -> None:
        """Stop consuming (the synthesis is cancelled when the block exits)."""
        await self._receive.aclose()

    async def collect(self) -> AudioFrame:
        """Read the rest of the synthesis and return it as one frame."""
        chunks = [frame.samples async for frame in self]
        samples = np.concatenate(chunks) if chunks else np.empty(0, np.int16)
        return AudioFrame(samples, self.sample_rate, self.num_channels)

    async def _put(self, samples: Int16Array, timestamp: float) -> bool:
        """For engines: hand interleaved samples to the consumer (waits for room).

        Returns False when the consumer has gone (stop synthesising)."""
        if not len(samples):
            return True
        frame = AudioFrame(samples, self.sample_rate, self.num_channels, timestamp)
        try:
            await self._send.send(frame)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    def _fail(self, exc: BaseException, name: str) -> None:
        self._error = exc if isinstance(exc, PluginError) else PluginError(f"{name}: {exc}")
        if self._error is not exc:
            self._error.__cause__ = exc

    @asynccontextmanager
    async def _produced_by(
        self, produce: Callable[[SynthesizedAudio], Awaitable[None]]
    ) -> AsyncIterator[SynthesizedAudio]:
        """For engines' ``synthesize``: yield this audio while ``produce(self)``
        fills it in a task; leaving the block stops it; an engine error the
        consumer has not seen is raised when the block exits."""
        with _unwrap_single():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(produce, self)
                try:
                    yield self
                finally:
                    self._receive.close()
                    nursery.cancel_scope.cancel()
        if self._error is not None and not self._error_seen:
            self._error_seen = True
            raise self._error


# --------------------------------------------------------------------------- options


@attrs.frozen
class VADOptions:
    """Decision thresholds shared by every VAD in this package.

    Attributes:
        activation_threshold: Probability at or above which a window is speech.
        deactivation_threshold: Probability below which a window is silence while
            speaking (hysteresis); defaults to ``activation_threshold - 0.15``.
        min_speech_duration: Seconds of speech before ``START_OF_SPEECH``.
        min_silence_duration: Seconds of silence before ``END_OF_SPEECH``.
        prefix_padding_duration: Seconds of audio before the speech kept in the
            utterance's frames.
        max_buffered_speech: Longest utterance kept, in seconds (older audio of a
            longer one is dropped from the frames; the events still come).
    """

    activation_threshold: float = attrs.field(default=0.5)
    deactivation_threshold: float | None = None
    min_speech_duration: float = 0.05
    min_silence_duration: float = 0.55
    prefix_padding_duration: float = 0.3
    max_buffered_speech: float = 60.0

    @activation_threshold.validator
    def _check(self, _a: object, value: float) -> None:
        if not 0.0 < value <= 1.0:
            raise ValueError("activation_threshold must be in (0, 1]")

    def __attrs_post_init__(self) -> None:
        for name in ("min_speech_duration", "min_silence_duration", "prefix_padding_duration"):
            if getattr(self, name) < 0 or math.isnan(getattr(self, name)):
                raise ValueError(f"{name} must be >= 0")
        if self.max_buffered_speech <= 0:
            raise ValueError("max_buffered_speech must be > 0")

    @property
    def release_threshold(self) -> float:
        """The deactivation threshold in force."""
        if self.deactivation_threshold is not None:
            return self.deactivation_threshold
        return max(self.activation_threshold - 0.15, 0.01)


@attrs.frozen
class STTCapabilities:
    """What an STT engine can do.

    Attributes:
        streaming: ``stream()`` transcribes as audio arrives (otherwise wrap the
            engine in :class:`~trio_lkagent.plugins.StreamAdapter`).
        interim_results: The stream sends ``INTERIM`` events.
    """

    streaming: bool
    interim_results: bool = False


# --------------------------------------------------------------------------- protocols


@runtime_checkable
class VAD(Protocol):
    """A voice activity detector.

    Usage::

        async with vad.stream() as s:
            s.push_frame(frame)            # never blocks
            async for event in s:          # VADEvent
                ...
    """

    @property
    def options(self) -> VADOptions:
        """The thresholds in force."""
        ...

    def stream(
        self, *, max_buffer_size: int = DEFAULT_BUFFER_SIZE
    ) -> AbstractAsyncContextManager[VADStream]:
        """Open a detection stream (owns a task until the block exits)."""
        ...


@runtime_checkable
class STT(Protocol):
    """A speech-to-text engine.

    Usage::

        event = await stt.recognize(frames, language="en")   # one utterance
        async with stt.stream(language="en") as s:            # streaming engines
            s.push_frame(frame)
            async for event in s:                             # SpeechEvent
                ...
    """

    @property
    def capabilities(self) -> STTCapabilities:
        """What the engine can do."""
        ...

    async def recognize(
        self, frames: Sequence[AudioFrame] | AudioFrame, *, language: str | None = None
    ) -> SpeechEvent:
        """Transcribe one utterance; returns a ``FINAL`` event.

        Raises:
            PluginError: The engine failed.
        """
        ...

    def stream(
        self, *, language: str | None = None, max_buffer_size: int = DEFAULT_BUFFER_SIZE
    ) -> AbstractAsyncContextManager[STTStream]:
        """Open a streaming recognition.

        Raises:
            PluginError: The engine does not stream (see ``capabilities``).
        """
        ...


@runtime_checkable
class TTS(Protocol):
    """A text-to-speech engine.

    Usage::

        async with tts.synthesize("Hello") as audio:   # SynthesizedAudio
            async for frame in audio:                  # AudioFrame at audio.sample_rate
                ...
    """

    @property
    def sample_rate(self) -> int:
        """Sample rate of the frames the engine produces."""
        ...

    def synthesize(self, text: str) -> AbstractAsyncContextManager[SynthesizedAudio]:
        """Synthesise *text*; frames arrive as they are produced.

        Raises:
            PluginError: The engine failed (when the frames are read).
        """
        ...


# --------------------------------------------------------------------------- audio helpers


def _as_frames(frames: Sequence[AudioFrame] | AudioFrame) -> list[AudioFrame]:
    return [frames] if isinstance(frames, AudioFrame) else list(frames)


class _Converter:
    """Mono ``int16`` at one sample rate from frames of any rate/channels (streaming)."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._resampler: rtc.AudioResampler | None = None
        self._from = 0

    def push(self, frame: AudioFrame) -> Int16Array:
        samples = _mono(frame)
        if frame.sample_rate == self.sample_rate:
            return samples
        from livekit import rtc

        if self._resampler is None or self._from != frame.sample_rate:
            self._resampler = rtc.AudioResampler(
                frame.sample_rate, self.sample_rate, num_channels=1
            )
            self._from = frame.sample_rate
        if not len(samples):
            return samples
        native = AudioFrame(np.ascontiguousarray(samples), frame.sample_rate).to_rtc()
        out = self._resampler.push(native)
        return _join(out)

    def flush(self) -> Int16Array:
        if self._resampler is None:
            return np.empty(0, np.int16)
        out = self._resampler.flush()
        self._resampler = None
        return _join(out)


def _join(frames: list[rtc.AudioFrame]) -> Int16Array:
    if not frames:
        return np.empty(0, np.int16)
    return np.concatenate([np.frombuffer(f.data, dtype=np.int16) for f in frames])


def _mono(frame: AudioFrame) -> Int16Array:
    if frame.num_channels == 1:
        return frame.samples
    mixed: Int16Array = frame.as_channels().astype(np.int32).mean(axis=1).astype(np.int16)
    return mixed


def to_mono(frames: Sequence[AudioFrame] | AudioFrame, sample_rate: int) -> Int16Array:
    """Return *frames* as one mono ``int16`` array at *sample_rate* (resampled if needed).

    Args:
        frames: Frames of one stream (any rate and channel count; a rate change
            between frames is allowed).
        sample_rate: The rate wanted.
    """
    conv = _Converter(sample_rate)
    parts = [conv.push(f) for f in _as_frames(frames)]
    parts.append(conv.flush())
    parts = [p for p in parts if len(p)]
    return np.concatenate(parts) if parts else np.empty(0, np.int16)
