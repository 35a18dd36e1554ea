"""Live media through the bridge: audio and video streams in, sources out.

Every ``livekit.rtc`` stream and source here is built and used on the bridge's asyncio
loop; Trio sees bounded memory channels of :class:`~._media.AudioFrame` /
:class:`~._media.VideoFrame` and async ``write`` methods with backpressure.

Audio input has no task at all: :class:`_NativeAudioReader` takes each frame in
livekit's own FFI callback, on the native thread that delivers it, and hands it to
Trio through a :class:`~._bridge.Handoff` (one cross-thread wake-up per frame instead of
two: ``rtc.AudioStream`` would first wake the asyncio loop, which would then wake
Trio). Video input goes through ``rtc.VideoStream`` on the loop::

    open_video_stream()            the caller's task (the ``async with`` body)
    '- nursery
       '- pump                     bridge.run(): iterates the rtc.VideoStream on the
                                   loop, Handoff -> the stream's memory channel

Buffer policy (input): each stream's channel holds ``max_buffer_size`` frames; when the
consumer falls that far behind, newer frames are dropped (counted in
``statistics().dropped``) and the native thread never waits.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import itertools
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any, Final, Generic, TypeVar, cast, final

import attrs
import numpy as np
import numpy.typing as npt
import trio
from livekit import rtc
from livekit.rtc._ffi_client import FfiClient, FfiHandle
from livekit.rtc._proto import audio_frame_pb2 as audio_pb
from livekit.rtc._proto import ffi_pb2 as ffi_pb

from ._bridge import AsyncioBridge, Handoff, open_bridge
from ._logging import sdk_cleanup
from ._media import (
    AudioFrame,
    VideoFormat,
    VideoFrame,
    _as_int16,
    _Chunker,
    _native_buffer,
    _video_format,
    check_limits,
)

__all__ = [
    "AudioOutput",
    "AudioReceiveStream",
    "OutputStatistics",
    "StreamStatistics",
    "VideoOutput",
    "VideoReceiveStream",
    "open_audio_output",
    "open_audio_stream",
    "open_video_output",
    "open_video_stream",
]

T = TypeVar("T")

logger = logging.getLogger(__name__)

#: Budget of each shielded close (stream, source, unpublish) on the way out.
CLOSE_TIMEOUT: Final = 2.0


# --------------------------------------------------------------------------- shared helpers


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterable[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


@asynccontextmanager
async def open_owned_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery for a context manager's own tasks that hands a single error back unwrapped.

    With strict exception groups an exception from the ``async with`` body would come
    out wrapped in an ``ExceptionGroup``; users of ``open_room`` and friends expect
    their own exception (or ``Cancelled``) back as it was.
    """
    error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) != 1:
            raise
        error = leaves[0]
    if error is not None:
        raise error


class _NativeCleanups:
    """The safety net of one bridge: closes what owners could not, rooms first.

    Owners close their native objects themselves on the way out of their ``async
    with``; if that could not finish (shielded deadline passed), the close stays
    registered here and runs when the bridge shuts down, in tiers: disconnect rooms,
    then close streams, then sources (reverse creation order within a tier).
    """

    TIERS: Final = ("room", "stream", "source")

    def __init__(self) -> None:
        self._tiers: dict[str, dict[int, tuple[Callable[..., Awaitable[object]], tuple[Any, ...]]]]
        self._tiers = {tier: {} for tier in self.TIERS}
        self._keys = itertools.count()

    def add(
        self, tier: str, async_fn: Callable[..., Awaitable[object]], *args: Any
    ) -> Callable[[], None]:
        key = next(self._keys)
        entries = self._tiers[tier]
        entries[key] = (async_fn, args)

        def remove() -> None:
            entries.pop(key, None)

        return remove

    async def run(self) -> None:  # asyncio thread, at bridge shutdown
        for tier in self.TIERS:
            entries = list(self._tiers[tier].values())
            self._tiers[tier].clear()
            for async_fn, args in reversed(entries):
                try:
                    await async_fn(*args)
                except Exception:
                    logger.warning("closing a leftover native %s failed", tier, exc_info=True)


_CLEANUPS: weakref.WeakKeyDictionary[AsyncioBridge, _NativeCleanups] = weakref.WeakKeyDictionary()


def add_native_cleanup(
    bridge: AsyncioBridge, tier: str, async_fn: Callable[..., Awaitable[object]], *args: Any
) -> Callable[[], None]:
    """Register a close of a native object in tier ``room``, ``stream`` or ``source``.

    Returns:
        A function that unregisters it (call it once the owner closed the object).
    """
    registry = _CLEANUPS.get(bridge)
    if registry is None:
        registry = _CLEANUPS[bridge] = _NativeCleanups()
        bridge.add_cleanup(registry.run)
    return registry.add(tier, async_fn, *args)


async def close_native(
    bridge: AsyncioBridge,
    async_fn: Callable[..., Awaitable[object]],
    *args: Any,
    unregister: Callable[[], None],
    what: str,
) -> None:
    """Run a native close on the loop, shielded and bounded; unregister its safety net if done."""
    with (
        sdk_cleanup(),
        trio.CancelScope(shield=True),
        trio.move_on_after(CLOSE_TIMEOUT) as scope,
    ):
        try:
            await bridge.run(async_fn, *args)
        except trio.ClosedResourceError:
            return  # the bridge is gone, and the native object with it
        except Exception:
            logger.warning("closing %s failed", what, exc_info=True)
        unregister()
    if scope.cancelled_caught:
        logger.warning("closing %s took more than %.1f s; left to the bridge", what, CLOSE_TIMEOUT)


# --------------------------------------------------------------------------- input streams


@attrs.frozen
class StreamStatistics:
    """Counters of an input stream (:meth:`AudioReceiveStream.statistics`).

    Attributes:
        received: Frames the native stream delivered.
        delivered: Frames put into the channel.
        dropped: Frames dropped because the channel was full (the consumer was slow).
        buffered: Frames waiting in the channel now.
        max_buffer_size: The channel's size.
    """

    received: int
    delivered: int
    dropped: int
    buffered: int
    max_buffer_size: int


class _ReceiveStream(trio.abc.ReceiveChannel[T], Generic[T]):
    """A bounded Trio channel fed from a native stream through a :class:`Handoff`."""

    def __init__(
        self, receive: trio.MemoryReceiveChannel[T], handoff: Handoff[T], track: rtc.Track
    ) -> None:
        self._receive = receive
        self._handoff = handoff
        self._track = track

    @property
    def track(self) -> rtc.Track:
        """The ``livekit.rtc`` track being streamed."""
        return self._track

    async def receive(self) -> T:
        """Wait for the next frame.

        Raises:
            trio.EndOfChannel: The stream ended (the track went away or the
                ``async with`` block is closing).
            trio.ClosedResourceError: This channel was closed.

        Cancellation:
            A checkpoint; safe to cancel (no frame is lost by cancelling).
        """
        return await self._receive.receive()

    def receive_nowait(self) -> T:
        """Take a frame if one is buffered.

        Raises:
            trio.WouldBlock: Nothing is buffered.
            trio.EndOfChannel: The stream ended.
        """
        return self._receive.receive_nowait()

    async def aclose(self) -> None:
        """Stop receiving; the native stream itself closes with the ``async with`` block."""
        await self._receive.aclose()

    def statistics(self) -> StreamStatistics:
        """Return the stream's counters (see :class:`StreamStatistics`)."""
        stats = self._handoff.statistics()
        sub = stats.subscribers[0]
        return StreamStatistics(
            received=stats.put,
            delivered=sub.delivered,
            dropped=sub.dropped,
            buffered=self._receive.statistics().current_buffer_used,
            max_buffer_size=sub.max_buffer_size,
        )


@final
class AudioReceiveStream(_ReceiveStream[AudioFrame]):
    """Audio frames from a track, as a Trio receive channel (``async for frame in stream``).

    Obtained from :func:`open_audio_stream`. Frames are ``int16`` numpy views of the
    native frames, resampled and remixed by the native library to the requested rate
    and channel count, 10 ms each unless ``frame_size_ms`` says otherwise.
    """

    def __init__(
        self,
        receive: trio.MemoryReceiveChannel[AudioFrame],
        handoff: Handoff[AudioFrame],
        track: rtc.Track,
        sample_rate: int,
        num_channels: int,
    ) -> None:
        super().__init__(receive, handoff, track)
        self._sample_rate = sample_rate
        self._num_channels = num_channels

    @property
    def sample_rate(self) -> int:
        """Samples per second of every frame."""
        return self._sample_rate

    @property
    def num_channels(self) -> int:
        """Channels of every frame."""
        return self._num_channels


@final
class VideoReceiveStream(_ReceiveStream[VideoFrame]):
    """Video frames from a track, as a Trio receive channel. See :func:`open_video_stream`."""

    def __init__(
        self,
        receive: trio.MemoryReceiveChannel[VideoFrame],
        handoff: Handoff[VideoFrame],
        track: rtc.Track,
        format: VideoFormat,
    ) -> None:
        super().__init__(receive, handoff, track)
        self._format = format

    @property
    def format(self) -> VideoFormat:
        """The pixel format of every frame."""
        return self._format


@final
class _NativeAudioReader:
    """A native audio stream read on livekit's FFI callback thread, straight into a Handoff.

    What ``rtc.AudioStream`` does, minus the asyncio hop: it asks the native library
    for a stream of a track (``NewAudioStreamRequest``, as ``AudioStream`` does) and
    subscribes to livekit's FFI event queue with a filter function. livekit calls
    every filter on the native thread that delivers the event, under the queue's
    lock; ours copies the frame's samples into a new numpy array (one copy, as
    ``rtc.AudioFrame._from_owned_info`` makes), releases the native buffer, puts an
    :class:`AudioFrame` into the hand-off (which wakes Trio) and returns False, so
    nothing ever goes through the asyncio loop. livekit's Rust side releases its
    config lock before invoking the callback, so releasing the buffer from inside it
    is safe. Frames carry no ``rtc_frame``: :meth:`AudioFrame.to_rtc` wraps the
    (writable) samples without copying.

    Relies on livekit-internal names (``FfiClient``, ``FfiHandle``, the protobuf
    modules); livekit is pinned to a minor version.
    """

    __slots__ = (
        "_closed",
        "_early",
        "_eos",
        "_handle",
        "_handle_id",
        "_handoff",
        "_lock",
        "_loop",
        "_position",
        "_queue",
        "_token",
    )

    def __init__(self, handoff: Handoff[AudioFrame], loop: asyncio.AbstractEventLoop) -> None:
        self._handoff = handoff
        self._loop = loop
        self._token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()
        self._handle_id: int | None = None
        self._handle: FfiHandle | None = None
        self._early: list[Any] = []  # audio events seen before our handle was known
        self._position = 0
        self._queue: Any = None
        self._eos: asyncio.Future[None] | None = None
        self._closed = False

    def start(
        self, track: rtc.Track, sample_rate: int, num_channels: int, frame_size_ms: int | None
    ) -> None:  # asyncio thread, via bridge.call
        """Create the native stream; frames flow from now on."""
        self._eos = self._loop.create_future()
        queue = FfiClient.instance.queue
        self._queue = queue.subscribe(self._loop, filter_fn=self._on_event)
        request = ffi_pb.FfiRequest()
        new = request.new_audio_stream
        new.track_handle = track._ffi_handle.handle
        new.sample_rate = sample_rate
        new.num_channels = num_channels
        new.queue_size_frames = 0
        if frame_size_ms:
            new.frame_size_ms = frame_size_ms
        new.type = audio_pb.AudioStreamType.AUDIO_STREAM_NATIVE
        try:
            stream = FfiClient.instance.request(request).new_audio_stream.stream
        except BaseException:
            queue.unsubscribe(self._queue)
            raise
        with self._lock:
            self._handle = FfiHandle(stream.handle.id)
            self._handle_id = stream.handle.id
            early, self._early = self._early, []
            for event in early:
                self._handle_event(event)

    def _on_event(self, event: Any) -> bool:  # native thread, under the FFI queue's lock
        try:
            if event.WhichOneof("message") == "audio_stream_event":
                with self._lock:
                    if self._handle_id is None:
                        self._early.append(event)
                    else:
                        self._handle_event(event)
        except Exception:  # must not escape: livekit would then queue the event for us
            logger.exception("could not read a native audio frame")
        return False

    def _handle_event(self, event: Any) -> None:  # under self._lock
        stream_event = event.audio_stream_event
        if stream_event.stream_handle != self._handle_id:
            return
        if stream_event.HasField("frame_received"):
            owned = stream_event.frame_received.frame
            info = owned.info
            per_channel = info.samples_per_channel
            samples = np.empty(per_channel * info.num_channels, dtype=np.int16)
            ctypes.memmove(samples.ctypes.data, info.data_ptr, samples.nbytes)
            FfiHandle(owned.handle.id).dispose()  # the native buffer, copied out above
            if self._closed:
                return
            rate = info.sample_rate
            self._handoff.put(AudioFrame(samples, rate, info.num_channels, self._position / rate))
            self._position += per_channel
        elif stream_event.HasField("eos"):
            try:
                self._token.run_sync_soon(self._handoff.close)
            except trio.RunFinishedError:
                pass
            eos = self._eos
            if eos is not None:
                try:
                    self._loop.call_soon_threadsafe(_set_done, eos)
                except RuntimeError:  # the loop is closed
                    pass

    async def aclose(self) -> None:  # asyncio thread: release the stream, wait for its end
        """Release the native stream and wait (bounded) until it has ended. Idempotent."""
        with self._lock:
            self._closed = True
            handle, self._handle = self._handle, None
        if handle is not None:
            handle.dispose()
            if self._eos is not None:
                try:
                    async with asyncio.timeout(CLOSE_TIMEOUT):
                        await asyncio.shield(self._eos)
                except TimeoutError:
                    logger.debug("a native audio stream did not report its end")
        if self._queue is not None:
            FfiClient.instance.queue.unsubscribe(self._queue)
            self._queue = None


def _set_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def _pump_video(
    stream: rtc.VideoStream, put: Callable[[VideoFrame], None]
) -> None:  # asyncio task
    async for event in stream:
        put(
            VideoFrame.from_rtc(
                event.frame, timestamp_us=event.timestamp_us, rotation=cast(int, event.rotation)
            )
        )


async def _run_pump(
    bridge: AsyncioBridge,
    pump: Callable[[Any, Callable[[T], None]], Awaitable[None]],
    stream: Any,
    handoff: Handoff[T],
) -> None:
    try:
        await bridge.run(pump, stream, handoff.put)
    finally:
        handoff.close()  # the native stream ended (or we are leaving): end the channel


def _check_buffer(max_buffer_size: int) -> None:
    if max_buffer_size < 0:
        raise ValueError("max_buffer_size must be >= 0")


def _check_track(track: object, what: str) -> None:
    """A ``livekit.rtc.Track`` is needed; the event's snapshot is the easy slip."""
    if isinstance(track, rtc.Track):
        return
    from ._events import TrackInfo

    if isinstance(track, TrackInfo):
        raise TypeError(
            f"{what}() needs the livekit track, not its TrackInfo snapshot:"
            " pass event.rtc_track, not event.track"
        )
    raise TypeError(f"{what}() needs a livekit.rtc.Track, got {type(track).__name__}")


@asynccontextmanager
async def open_audio_stream(
    track: rtc.Track,
    *,
    sample_rate: int = 16_000,
    num_channels: int = 1,
    frame_size_ms: int | None = None,
    max_buffer_size: int = 100,
) -> AsyncIterator[AudioReceiveStream]:
    """Receive a track's audio as numpy frames, for the duration of the block.

    Example::

        async with open_audio_stream(event.rtc_track, sample_rate=16000) as frames:
            async for frame in frames:
                vad.feed(frame.samples)          # int16, no copy

    Args:
        track: A remote (or local) audio track, e.g. ``TrackSubscribed.rtc_track``.
        sample_rate: Rate to deliver at; the native library resamples (8-192 kHz).
        num_channels: Channels to deliver (remixed natively).
        frame_size_ms: Frame length; None for the native default (10 ms).
        max_buffer_size: Frames buffered for a slow consumer before newer frames
            are dropped (counted in ``statistics().dropped``); 100 = 1 s at 10 ms.

    Yields:
        An :class:`AudioReceiveStream`; it ends (``EndOfChannel``) when the track's
        stream ends.

    Raises:
        ValueError: Parameters the native library cannot take (see
            :data:`~._media.LIMITS`), or *track* is not an audio track.

    Cancellation:
        Frames are read on livekit's native callback thread (no task). Leaving the
        block (normally, by an exception or by cancellation) releases the native
        stream, shielded and bounded by a couple of seconds.
    """
    check_limits("audio_stream", sample_rate=sample_rate, num_channels=num_channels)
    if frame_size_ms is not None and frame_size_ms < 1:
        raise ValueError("frame_size_ms must be None or >= 1")
    _check_buffer(max_buffer_size)
    _check_track(track, "open_audio_stream")
    if track.kind != rtc.TrackKind.KIND_AUDIO:
        raise ValueError(f"not an audio track: {track!r}")
    async with open_bridge() as bridge:
        handoff = Handoff[AudioFrame]()
        receive = handoff.subscribe(max_buffer_size)
        reader = _NativeAudioReader(handoff, bridge.loop)
        unregister = add_native_cleanup(bridge, "stream", reader.aclose)
        try:
            await bridge.call(reader.start, track, sample_rate, num_channels, frame_size_ms)
            yield AudioReceiveStream(receive, handoff, track, sample_rate, num_channels)
        finally:
            await close_native(bridge, reader.aclose, unregister=unregister, what="an audio stream")
            handoff.close()


@asynccontextmanager
async def open_video_stream(
    track: rtc.Track,
    *,
    format: VideoFormat = VideoFormat.RGBA,
    max_buffer_size: int = 4,
) -> AsyncIterator[VideoReceiveStream]:
    """Receive a track's video as numpy frames, for the duration of the block.

    Example::

        async with open_video_stream(event.rtc_track, format=VideoFormat.RGBA) as frames:
            async for frame in frames:
                pixels = frame.to_ndarray()      # (height, width, 4) uint8, no copy

    Args:
        track: A remote (or local) video track.
        format: Pixel format to deliver; one of :data:`~._media.STREAM_FORMATS`
            (RGBA, ABGR, ARGB, BGRA, RGB24, I420). The native library converts.
        max_buffer_size: Frames buffered for a slow consumer before newer ones are
            dropped (counted).

    Yields:
        A :class:`VideoReceiveStream`.

    Raises:
        ValueError: A format the native stream never delivers, or not a video track.

    Cancellation:
        The native stream is read by a task in a nursery the block owns. Leaving the
        block (normally, by an exception or by cancellation) stops that task and
        closes the native stream, shielded and bounded by a couple of seconds.
    """
    format = _video_format(format)
    check_limits("video_stream", format=format)
    _check_buffer(max_buffer_size)
    _check_track(track, "open_video_stream")
    if track.kind != rtc.TrackKind.KIND_VIDEO:
        raise ValueError(f"not a video track: {track!r}")
    async with open_bridge() as bridge, open_owned_nursery() as nursery:
        handoff = Handoff[VideoFrame]()
        receive = handoff.subscribe(max_buffer_size)
        native = await bridge.call(
            functools.partial(
                rtc.VideoStream.from_track,
                track=track,
                loop=bridge.loop,
                format=cast("rtc.VideoBufferType.ValueType", int(format)),
            )
        )
        unregister = add_native_cleanup(bridge, "stream", native.aclose)
        stream = VideoReceiveStream(receive, handoff, track, format)
        nursery.start_soon(_run_pump, bridge, _pump_video, native, handoff)
        try:
            yield stream
        finally:
            nursery.cancel_scope.cancel()
            await close_native(bridge, native.aclose, unregister=unregister, what="a video stream")
            handoff.close()


# --------------------------------------------------------------------------- outputs


@attrs.frozen
class OutputStatistics:
    """Counters of an output (:meth:`AudioOutput.statistics`).

    Attributes:
        frames: Frames handed to the native source.
        seconds: Media time handed to the native source, in seconds (audio only).
        pending_samples: Samples per channel held back until a full 10 ms frame
            (audio only).
    """

    frames: int
    seconds: float = 0.0
    pending_samples: int = 0


@final
class _CaptureJob:
    """Feeds audio frames to an ``rtc.AudioSource`` on the loop; stops only between frames.

    ``AudioSource.capture_frame`` must not be cancelled while it waits for room in
    the native queue (livekit then logs errors at exit). So a Trio cancellation is
    turned into a flag checked between frames, and the frame in flight completes
    (at most about one frame's duration).
    """

    __slots__ = ("frames", "sent", "source", "stop")

    def __init__(self, source: rtc.AudioSource, frames: list[rtc.AudioFrame]) -> None:
        self.source = source
        self.frames = frames
        self.sent = 0
        self.stop = False

    async def run(self) -> None:  # asyncio task, via bridge.run
        inner = asyncio.ensure_future(self._capture_all())
        try:
            await asyncio.shield(inner)
        except asyncio.CancelledError:
            self.stop = True
            await inner  # the frame in flight finishes; then nothing more is sent
            raise

    async def _capture_all(self) -> None:
        for frame in self.frames:
            if self.stop:
                return
            await self.source.capture_frame(frame)
            self.sent += 1


@final
class AudioOutput:
    """Writes numpy audio to a native audio source, paced in real time.

    Obtained from :meth:`Room.publish_audio <trio_lkagent.Room.publish_audio>` (published
    in a room) or :func:`open_audio_output` (not published; for tests and local
    processing). Samples of any length are cut into 10 ms frames; a remainder shorter
    than 10 ms waits for the next :meth:`write` (or :meth:`flush`).

    Backpressure: the native source holds ``queue_ms`` of audio; :meth:`write`
    returns once its frames are queued, so a producer faster than real time waits.
    """

    def __init__(
        self,
        bridge: AsyncioBridge,
        source: rtc.AudioSource,
        track: rtc.LocalAudioTrack,
        sample_rate: int,
        num_channels: int,
    ) -> None:
        """Private: use :func:`open_audio_output` or ``Room.publish_audio``."""
        self._bridge = bridge
        self._source = source
        self._track = track
        self._sample_rate = sample_rate
        self._num_channels = num_channels
        self._chunker = _Chunker(sample_rate // 100, num_channels)
        self._writing = False
        self._closed = False
        self._frames = 0
        self._samples = 0
        self.publication: rtc.LocalTrackPublication | None = None
        """The track's publication when published in a room, else None."""

    @property
    def sample_rate(self) -> int:
        """Samples per second per channel expected by :meth:`write`."""
        return self._sample_rate

    @property
    def num_channels(self) -> int:
        """Interleaved channels expected by :meth:`write`."""
        return self._num_channels

    @property
    def track(self) -> rtc.LocalAudioTrack:
        """The ``livekit.rtc`` local track the source feeds (:func:`open_audio_stream` takes it)."""
        return self._track

    async def write(self, samples: npt.ArrayLike) -> None:
        """Queue audio for playout; wait while the source's queue is full.

        Args:
            samples: ``int16`` samples: 1-D interleaved, or 2-D ``(samples,
                channels)``. Any length. Writable, C-contiguous arrays are handed
                to the native library without copying.

        Raises:
            TypeError: The samples are not ``int16``.
            ValueError: Wrong shape or not a whole number of interleaved frames.
            trio.BusyResourceError: Another task is writing to this output.
            trio.ClosedResourceError: The output was closed.

        Cancellation:
            Cancellation takes effect between 10 ms frames: the frame being queued
            completes (the native call is never cancelled mid-wait), the rest of this
            call's samples and any held-back remainder are discarded, then
            :class:`trio.Cancelled` is raised.
        """
        array = _as_int16(samples, self._num_channels)
        check_limits(
            "audio_capture",
            sample_rate=self._sample_rate,
            num_channels=self._num_channels,
            source_rate=self._sample_rate,
            source_channels=self._num_channels,
            samples=len(array),
        )
        with self._writer():
            await self._capture(self._chunker.push(array))

    async def flush(self) -> None:
        """Queue the held-back remainder (< 10 ms) as a short frame, if there is one.

        Raises:
            trio.BusyResourceError: Another task is writing to this output.
            trio.ClosedResourceError: The output was closed.
        """
        with self._writer():
            rest = self._chunker.flush()
            await self._capture([] if rest is None else [rest])

    async def wait_for_playout(self) -> None:
        """Flush, then wait until everything queued has been played out.

        Cancellation:
            Safe to cancel; the queued audio keeps playing.
        """
        await self.flush()
        await self._bridge.run(self._source.wait_for_playout)

    async def clear(self) -> None:
        """Drop the audio queued but not yet played (to stop talking at once)."""
        self._chunker.flush()
        await self._bridge.call(self._source.clear_queue)

    def statistics(self) -> OutputStatistics:
        """Return what was written so far (see :class:`OutputStatistics`)."""
        return OutputStatistics(
            frames=self._frames,
            seconds=self._samples / self._sample_rate,
            pending_samples=self._chunker.pending,
        )

    def _writer(self) -> _WriteGuard:
        if self._closed:
            raise trio.ClosedResourceError("this audio output is closed")
        if self._writing:
            raise trio.BusyResourceError("another task is writing to this audio output")
        return _WriteGuard(self)

    async def _capture(self, chunks: list[npt.NDArray[np.int16]]) -> None:
        if not chunks:
            await trio.lowlevel.checkpoint()
            return
        ch = self._num_channels
        frames = [
            rtc.AudioFrame(_native_buffer(chunk), self._sample_rate, ch, len(chunk) // ch)
            for chunk in chunks
        ]
        job = _CaptureJob(self._source, frames)
        try:
            await self._bridge.run(job.run)
        except BaseException:
            self._chunker.flush()  # a remainder would no longer follow on
            raise
        finally:
            self._frames += job.sent
            self._samples += sum(f.samples_per_channel for f in frames[: job.sent])


@final
class _WriteGuard:
    __slots__ = ("_output",)

    def __init__(self, output: AudioOutput) -> None:
        self._output = output

    def __enter__(self) -> None:
        self._output._writing = True

    def __exit__(self, *exc_info: object) -> None:
        self._output._writing = False


@asynccontextmanager
async def open_audio_output(
    *,
    sample_rate: int = 48_000,
    num_channels: int = 1,
    name: str = "audio",
    queue_ms: int = 200,
) -> AsyncIterator[AudioOutput]:
    """Create a native audio source and its local track, not published anywhere.

    :meth:`Room.publish_audio <trio_lkagent.Room.publish_audio>` builds on this. On
    its own it is useful to feed :func:`open_audio_stream` locally (``out.track``),
    which is how the offline tests run real audio through the native library.

    Args:
        sample_rate: Rate of the samples given to :meth:`AudioOutput.write`.
        num_channels: Interleaved channels of those samples.
        name: The track name.
        queue_ms: Audio the native source buffers ahead of real time; a positive
            multiple of 10. Smaller means lower latency for :meth:`AudioOutput.clear`.

    Yields:
        The :class:`AudioOutput`.

    Raises:
        ValueError: Parameters the native source cannot take (``audio_source`` in
            :data:`~._media.LIMITS`).

    Cancellation:
        Leaving the block closes the source (shielded, bounded); audio still queued
        is not played. Call :meth:`AudioOutput.wait_for_playout` first to hear it.
    """
    check_limits(
        "audio_source", sample_rate=sample_rate, num_channels=num_channels, queue_ms=queue_ms
    )
    async with open_bridge() as bridge:
        source = await bridge.call(
            functools.partial(
                rtc.AudioSource, sample_rate, num_channels, queue_ms, loop=bridge.loop
            )
        )
        unregister = add_native_cleanup(bridge, "source", source.aclose)
        try:
            track = await bridge.call(rtc.LocalAudioTrack.create_audio_track, name, source)
            output = AudioOutput(bridge, source, track, sample_rate, num_channels)
            try:
                yield output
            finally:
                output._closed = True
        finally:
            await close_native(bridge, source.aclose, unregister=unregister, what="an audio source")


@final
class VideoOutput:
    """Writes numpy video frames to a native video source.

    Obtained from :meth:`Room.publish_video <trio_lkagent.Room.publish_video>` or
    :func:`open_video_output`. There is no queue: each frame is handed over at once
    and the encoder takes the latest; pace your writes at the frame rate you want.
    """

    def __init__(
        self, bridge: AsyncioBridge, source: rtc.VideoSource, track: rtc.LocalVideoTrack
    ) -> None:
        """Private: use :func:`open_video_output` or ``Room.publish_video``."""
        self._bridge = bridge
        self._source = source
        self._track = track
        self._closed = False
        self._frames = 0
        self.publication: rtc.LocalTrackPublication | None = None
        """The track's publication when published in a room, else None."""

    @property
    def track(self) -> rtc.LocalVideoTrack:
        """The ``livekit.rtc`` local track (usable with :func:`open_video_stream`)."""
        return self._track

    async def write(
        self,
        frame: VideoFrame | npt.NDArray[np.uint8],
        *,
        format: VideoFormat = VideoFormat.RGBA,
        timestamp_us: int = 0,
    ) -> None:
        """Hand one frame to the source.

        Args:
            frame: A :class:`VideoFrame`, or a packed ``(height, width, channels)``
                ``uint8`` array in *format*.
            format: The array's pixel format (ignored for a :class:`VideoFrame`).
            timestamp_us: Capture time in microseconds; 0 lets the native side
                stamp it.

        Raises:
            ValueError: A format the source cannot take (I010, NV12), a frame
                smaller than 4x4 pixels, or a malformed buffer (``video_capture``
                and ``video_frame`` in :data:`~._media.LIMITS`).
            trio.ClosedResourceError: The output was closed.
        """
        if self._closed:
            raise trio.ClosedResourceError("this video output is closed")
        if not isinstance(frame, VideoFrame):
            frame = VideoFrame.from_ndarray(frame, format)
        check_limits("video_capture", format=frame.format, width=frame.width, height=frame.height)
        native = frame.to_rtc()
        await self._bridge.call(
            functools.partial(self._source.capture_frame, native, timestamp_us=timestamp_us)
        )
        self._frames += 1

    def statistics(self) -> OutputStatistics:
        """Return the number of frames written."""
        return OutputStatistics(frames=self._frames)


@asynccontextmanager
async def open_video_output(
    width: int,
    height: int,
    *,
    name: str = "video",
    is_screencast: bool = False,
) -> AsyncIterator[VideoOutput]:
    """Create a native video source and its local track, not published anywhere.

    Args:
        width: Nominal width (frames of other sizes are accepted and rescaled).
        height: Nominal height.
        name: The track name.
        is_screencast: Tune the encoder for screen content.

    Yields:
        The :class:`VideoOutput`.

    Raises:
        ValueError: A zero size (the native library aborts on it).

    Cancellation:
        Leaving the block closes the source, shielded and bounded.
    """
    check_limits("video_source", width=width, height=height)
    async with open_bridge() as bridge:
        source = await bridge.call(
            functools.partial(rtc.VideoSource, width, height, is_screencast=is_screencast)
        )
        unregister = add_native_cleanup(bridge, "source", source.aclose)
        try:
            track = await bridge.call(rtc.LocalVideoTrack.create_video_track, name, source)
            output = VideoOutput(bridge, source, track)
            try:
                yield output
            finally:
                output._closed = True
        finally:
            await close_native(bridge, source.aclose, unregister=unregister, what="a video source")
