"""Media as numpy: audio and video frames, pixel formats, and the native library's limits.

Nothing here touches the asyncio bridge: frames are plain objects, usable from any
thread. The live side (streams, sources, publishing) is in :mod:`._tracks`.

Zero copy
    :class:`AudioFrame` and :class:`VideoFrame` wrap a numpy view of the buffer of the
    ``livekit.rtc`` frame they came from (``np.frombuffer``: no copy), and
    :meth:`AudioFrame.to_rtc` / :meth:`VideoFrame.to_rtc` hand a writable, contiguous
    numpy buffer to ``livekit.rtc`` without copying it either. ``livekit.rtc`` itself
    copies once, when a native frame crosses into Python.

The limits table
    ``liblivekit_ffi`` aborts the whole process (a Rust panic or a C++ ``CHECK``, exit
    134) on some inputs instead of raising. :data:`LIMITS` lists every such input we
    measured with livekit 1.2.1, plus the cheap checks that turn a confusing native
    error into a clear one; :func:`check_limits` raises :class:`ValueError` *before*
    the call reaches the native library. Every entry names what the native side does
    otherwise. The conversions :meth:`VideoFrame.convert` performs are in
    :data:`CONVERSIONS`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Self, cast

import attrs
import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from livekit import rtc

__all__ = [
    "CAPTURE_FORMATS",
    "CONVERSIONS",
    "LIMITS",
    "STREAM_FORMATS",
    "AudioFrame",
    "AudioProcessor",
    "Limit",
    "VideoFormat",
    "VideoFrame",
    "check_limits",
    "frame_size",
    "plane_shapes",
]

Int16Array = npt.NDArray[np.int16]
UInt8Array = npt.NDArray[np.uint8]


class VideoFormat(enum.IntEnum):
    """Pixel formats, with the values of ``livekit.rtc.VideoBufferType`` (interchangeable).

    Packed formats hold one plane of ``height x width x channels`` bytes; planar YUV
    formats hold a full-size luma plane and subsampled chroma planes, in that order,
    without padding (:func:`plane_shapes`).
    """

    RGBA = 0
    ABGR = 1
    ARGB = 2
    BGRA = 3
    RGB24 = 4
    I420 = 5
    I420A = 6
    I422 = 7
    I444 = 8
    I010 = 9
    NV12 = 10


_PACKED_CHANNELS: Final[Mapping[VideoFormat, int]] = {
    VideoFormat.RGBA: 4,
    VideoFormat.ABGR: 4,
    VideoFormat.ARGB: 4,
    VideoFormat.BGRA: 4,
    VideoFormat.RGB24: 3,
}


def plane_shapes(format: VideoFormat, width: int, height: int) -> tuple[tuple[int, ...], ...]:
    """Return the numpy shape of each plane of a frame, in buffer order.

    Packed formats have one plane ``(height, width, channels)``. Planar formats have
    ``(rows, columns)`` planes: luma full size, chroma halved (rounded up) as the
    format requires; NV12's second plane interleaves U and V (``(ch, 2 * cw)``). I010
    samples are ``uint16``, everything else ``uint8``.

    Args:
        format: The pixel format.
        width: Frame width in pixels.
        height: Frame height in pixels.

    Returns:
        One shape per plane.
    """
    channels = _PACKED_CHANNELS.get(format)
    if channels is not None:
        return ((height, width, channels),)
    cw, ch = (width + 1) // 2, (height + 1) // 2
    luma = (height, width)
    if format in (VideoFormat.I420, VideoFormat.I010):
        return (luma, (ch, cw), (ch, cw))
    if format is VideoFormat.I420A:
        return (luma, (ch, cw), (ch, cw), luma)
    if format is VideoFormat.I422:
        return (luma, (height, cw), (height, cw))
    if format is VideoFormat.I444:
        return (luma, luma, luma)
    if format is VideoFormat.NV12:
        return (luma, (ch, 2 * cw))
    raise ValueError(f"unknown video format {format!r}")  # pragma: no cover


def _itemsize(format: VideoFormat) -> int:
    return 2 if format is VideoFormat.I010 else 1


def frame_size(format: VideoFormat, width: int, height: int) -> int:
    """Return the size in bytes of an unpadded frame (what ``livekit.rtc`` expects).

    Args:
        format: The pixel format.
        width: Frame width in pixels.
        height: Frame height in pixels.

    Returns:
        The buffer length in bytes.
    """
    samples = sum(math.prod(shape) for shape in plane_shapes(format, width, height))
    return samples * _itemsize(format)


# --------------------------------------------------------------------------- the limits table

_F = VideoFormat

#: What ``VideoFrame.convert`` does for each source format (livekit 1.2.1, every pair
#: measured at 32x16 and 33x17). Any other pair is refused with ValueError: the native
#: library either raises "not supported" or, for the pairs in ``_ABORTING``, aborts.
CONVERSIONS: Final[Mapping[VideoFormat, frozenset[VideoFormat]]] = {
    _F.RGBA: frozenset({_F.BGRA, _F.I420}),
    _F.ABGR: frozenset(),  # every target aborts: cvtimpl.rs asserts the source is not ABGR
    _F.ARGB: frozenset({_F.I420}),
    _F.BGRA: frozenset({_F.RGBA, _F.I420}),
    _F.RGB24: frozenset({_F.I420}),
    _F.I420: frozenset({_F.RGBA, _F.ABGR, _F.ARGB, _F.BGRA, _F.RGB24, _F.I420}),
    _F.I420A: frozenset({_F.I420, _F.I420A}),
    _F.I422: frozenset({_F.RGBA, _F.ABGR, _F.ARGB, _F.I420, _F.I422}),
    _F.I444: frozenset({_F.RGBA, _F.BGRA, _F.I420, _F.I444}),
    _F.I010: frozenset(),  # to RGBA, BGRA and I420 aborts (stride assertion); the rest unsupported
    _F.NV12: frozenset({_F.RGBA, _F.BGRA, _F.I420}),  # NV12 -> NV12 aborts (stride assertion)
}

#: Pairs that abort the process rather than raise (the reason the table exists).
_ABORTING: Final[frozenset[tuple[VideoFormat, VideoFormat]]] = frozenset(
    {(_F.ABGR, dst) for dst in _F}
    | {(_F.I010, _F.RGBA), (_F.I010, _F.BGRA), (_F.I010, _F.I420), (_F.NV12, _F.NV12)}
)

#: Formats a ``VideoStream`` delivers (``format=``); with the others it never yields a frame.
STREAM_FORMATS: Final[frozenset[VideoFormat]] = frozenset(
    {_F.RGBA, _F.ABGR, _F.ARGB, _F.BGRA, _F.RGB24, _F.I420}
)

#: Formats ``VideoSource.capture_frame`` accepts; I010 and NV12 frames abort the process
#: once the frame is consumed (converted for a subscriber or an encoder).
CAPTURE_FORMATS: Final[frozenset[VideoFormat]] = frozenset(
    {_F.RGBA, _F.ABGR, _F.ARGB, _F.BGRA, _F.RGB24, _F.I420, _F.I420A, _F.I422, _F.I444}
)

_MIN_SAMPLE_RATE: Final = 8_000
_MAX_SAMPLE_RATE: Final = 192_000
_MIN_CAPTURE_SIDE: Final = 4


def _conversion_ok(src: VideoFormat, dst: VideoFormat, **_: Any) -> bool:
    return dst in CONVERSIONS[src]


def _rate_ok(sample_rate: int, **_: Any) -> bool:
    return _MIN_SAMPLE_RATE <= sample_rate <= _MAX_SAMPLE_RATE


def _channels_ok(num_channels: int, **_: Any) -> bool:
    return num_channels >= 1


def _apm_frame_ok(sample_rate: int, samples_per_channel: int, **_: Any) -> bool:
    step = max(sample_rate // 100, 1)
    return samples_per_channel > 0 and samples_per_channel % step == 0


def _frame_length_ok(format: VideoFormat, width: int, height: int, nbytes: int, **_: Any) -> bool:
    return nbytes == frame_size(format, width, height)


@attrs.frozen
class Limit:
    """One row of :data:`LIMITS`: an input rule for one native operation.

    Attributes:
        operation: Which call the rule guards (see :func:`check_limits`).
        rule: The rule, as the :class:`ValueError` states it.
        ok: Predicate over the operation's keyword parameters (extra ones ignored).
        native: What ``livekit.rtc`` 1.2.1 does with input that breaks the rule.
    """

    operation: str
    rule: str
    ok: Callable[..., bool]
    native: str


#: Every input rule, by operation. Parameters per operation:
#:
#: ``audio_stream`` (sample_rate, num_channels); ``audio_source`` (sample_rate,
#: num_channels, queue_ms); ``audio_capture`` (sample_rate, num_channels, source_rate,
#: source_channels, samples); ``apm`` (sample_rate, num_channels, samples_per_channel);
#: ``video_frame`` (format, width, height, nbytes); ``video_convert`` (src, dst);
#: ``video_stream`` (format); ``video_source`` (width, height); ``video_capture``
#: (format, width, height).
LIMITS: Final[tuple[Limit, ...]] = (
    Limit(
        "audio_stream",
        f"sample_rate must be within {_MIN_SAMPLE_RATE}..{_MAX_SAMPLE_RATE} Hz",
        _rate_ok,
        "aborts (libc++ span assertion) on the first frame for 0 or 7 Hz",
    ),
    Limit(
        "audio_stream",
        "num_channels must be >= 1",
        _channels_ok,
        "aborts (libc++ span assertion) on the first frame",
    ),
    Limit(
        "audio_source",
        f"sample_rate must be within {_MIN_SAMPLE_RATE}..{_MAX_SAMPLE_RATE} Hz",
        _rate_ok,
        "capture_frame never returns at 7 Hz; divides by zero at 0 Hz",
    ),
    Limit(
        "audio_source",
        "num_channels must be >= 1",
        _channels_ok,
        "no frame can be captured",
    ),
    Limit(
        "audio_source",
        "queue_ms must be a positive multiple of 10",
        lambda queue_ms, **_: queue_ms > 0 and queue_ms % 10 == 0,
        "aborts (panic at audio_source.rs:55) on the first capture for 1, 5, 9, 15, 25 ms",
    ),
    Limit(
        "audio_capture",
        "the frame's sample rate and channel count must match the source's",
        lambda sample_rate, num_channels, source_rate, source_channels, **_: (
            sample_rate == source_rate and num_channels == source_channels
        ),
        "raises 'sample_rate and num_channels don't match'",
    ),
    Limit(
        "audio_capture",
        "interleaved samples must be a whole number of frames (len % num_channels == 0)",
        lambda num_channels, samples, **_: num_channels >= 1 and samples % num_channels == 0,
        "reads a partial last frame",
    ),
    Limit(
        "apm",
        "sample_rate must be >= 8000 Hz",
        lambda sample_rate, **_: sample_rate >= _MIN_SAMPLE_RATE,
        "aborts (panic at apm.rs:49) at 7 Hz; 'Failed to process stream' at 100-4000 Hz",
    ),
    Limit(
        "apm",
        "frames must be a positive multiple of 10 ms (samples_per_channel % (rate // 100) == 0)",
        _apm_frame_ok,
        "aborts (Rust panic) for e.g. 5 ms or 481 samples at 48 kHz",
    ),
    Limit(
        "apm",
        "num_channels must be >= 1",
        _channels_ok,
        "raises 'Buffer size too small'",
    ),
    Limit(
        "video_frame",
        "width and height must be >= 1",
        lambda width, height, **_: width >= 1 and height >= 1,
        "raises 'Buffer size too small'",
    ),
    Limit(
        "video_frame",
        "the buffer length must be exactly frame_size(format, width, height) bytes",
        _frame_length_ok,
        "a short buffer is read out of bounds (garbage or a segfault), silently",
    ),
    Limit(
        "video_convert",
        "the conversion must be one of CONVERSIONS",
        _conversion_ok,
        "aborts for ABGR -> any, I010 -> RGBA/BGRA/I420, NV12 -> NV12; raises otherwise",
    ),
    Limit(
        "video_stream",
        "format must be one of STREAM_FORMATS (RGBA, ABGR, ARGB, BGRA, RGB24, I420)",
        lambda format, **_: format in STREAM_FORMATS,
        "the stream never yields a frame",
    ),
    Limit(
        "video_source",
        "width and height must be >= 1",
        lambda width, height, **_: width >= 1 and height >= 1,
        "aborts when a track is created from a 0x0 source",
    ),
    Limit(
        "video_capture",
        "format must be one of CAPTURE_FORMATS (not I010 or NV12)",
        lambda format, **_: format in CAPTURE_FORMATS,
        "aborts (panic in video_frame.rs or imgproc) when the frame is consumed",
    ),
    Limit(
        "video_capture",
        f"captured frames must be at least {_MIN_CAPTURE_SIDE}x{_MIN_CAPTURE_SIDE} pixels",
        lambda width, height, **_: width >= _MIN_CAPTURE_SIDE and height >= _MIN_CAPTURE_SIDE,
        "aborts (webrtc CHECK 'width > 0' in video_frame_buffer.cc) for 3x17, 16x2, ...",
    ),
)

_BY_OPERATION: Final[Mapping[str, tuple[Limit, ...]]] = {
    operation: tuple(limit for limit in LIMITS if limit.operation == operation)
    for operation in dict.fromkeys(limit.operation for limit in LIMITS)
}


def check_limits(operation: str, **params: Any) -> None:
    """Refuse input that the native library would abort on (or mishandle), before the call.

    Args:
        operation: A :attr:`Limit.operation` value, such as ``"video_convert"``.
        **params: The operation's parameters, as listed in :data:`LIMITS`.

    Raises:
        ValueError: A rule is broken; the message states the rule and the values.
        KeyError: *operation* is unknown (a bug in the caller).
    """
    for limit in _BY_OPERATION[operation]:
        if not limit.ok(**params):
            shown = ", ".join(f"{key}={_show(value)}" for key, value in params.items())
            raise ValueError(f"{operation}: {limit.rule} (got {shown})")


def _show(value: object) -> str:
    return value.name if isinstance(value, VideoFormat) else repr(value)


def _video_format(value: int) -> VideoFormat:
    try:
        return VideoFormat(value)
    except ValueError:
        raise ValueError(f"unknown video format {value!r}") from None


# --------------------------------------------------------------------------- audio


def _as_int16(samples: npt.ArrayLike, num_channels: int) -> Int16Array:
    """Validate interleaved int16 samples and return them as a 1-D array (a view if possible)."""
    array = np.asarray(samples)
    if array.dtype != np.int16:
        raise TypeError(f"audio samples must be int16, got {array.dtype}")
    if array.ndim == 2:
        if array.shape[1] != num_channels:
            raise ValueError(
                f"a 2-D array must be (samples, channels) with {num_channels} channels, "
                f"got shape {array.shape}"
            )
        array = array.reshape(-1)  # a view when C-contiguous, else a copy
    elif array.ndim != 1:
        raise ValueError(f"audio samples must be 1-D (interleaved) or 2-D, got {array.ndim}-D")
    return array


def _native_buffer(array: npt.NDArray[Any]) -> memoryview:
    """A byte memoryview ``livekit.rtc`` can take the address of: no copy when possible.

    ``livekit.rtc`` needs a writable, contiguous buffer whose memoryview covers the
    whole exporting object; anything else (read-only, strided) is copied once here.
    """
    if not (array.flags.c_contiguous and array.flags.writeable):
        array = array.copy()
    return array.reshape(-1).view(np.uint8).data


@attrs.frozen(eq=False)
class AudioFrame:
    """A chunk of interleaved 16-bit PCM audio, as a numpy view.

    Attributes:
        samples: ``int16`` samples, interleaved by channel, 1-D (length
            ``samples_per_channel * num_channels``). For frames from a stream it is a
            view of the ``livekit.rtc`` frame's buffer: no copy.
        sample_rate: Samples per second per channel.
        num_channels: Interleaved channels.
        timestamp: Stream position of the first sample, in seconds since the stream
            started (counted in samples, so it has no jitter).
        rtc_frame: The ``livekit.rtc.AudioFrame`` the samples belong to, if any.
    """

    samples: Int16Array
    sample_rate: int
    num_channels: int = 1
    timestamp: float = 0.0
    rtc_frame: rtc.AudioFrame | None = attrs.field(default=None, repr=False)

    @property
    def samples_per_channel(self) -> int:
        """Samples per channel in this frame."""
        return len(self.samples) // self.num_channels

    @property
    def duration(self) -> float:
        """Length of the frame in seconds."""
        return self.samples_per_channel / self.sample_rate

    def as_channels(self) -> Int16Array:
        """Return the samples as a ``(samples_per_channel, num_channels)`` view."""
        return self.samples.reshape(-1, self.num_channels)

    @classmethod
    def from_rtc(cls, frame: rtc.AudioFrame, *, timestamp: float = 0.0) -> Self:
        """Wrap a ``livekit.rtc.AudioFrame`` without copying its samples.

        Args:
            frame: The native frame.
            timestamp: Stream position of its first sample, in seconds.

        Returns:
            A frame whose ``samples`` share memory with *frame*.
        """
        samples = np.frombuffer(frame.data, dtype=np.int16)
        return cls(samples, frame.sample_rate, frame.num_channels, timestamp, frame)

    def to_rtc(self) -> rtc.AudioFrame:
        """Return a ``livekit.rtc.AudioFrame`` sharing these samples (copied only if needed).

        The samples are shared when they are writable and C-contiguous; otherwise
        they are copied once (``livekit.rtc`` needs the address of a writable buffer).
        """
        from livekit import rtc

        if self.rtc_frame is not None:
            return self.rtc_frame
        return rtc.AudioFrame(
            _native_buffer(self.samples),
            self.sample_rate,
            self.num_channels,
            self.samples_per_channel,
        )


@attrs.define
class _Chunker:
    """Cuts interleaved int16 audio of any length into frames of a fixed size.

    Frames are views of the input when they do not straddle two ``push`` calls; the
    samples left over (less than a frame) are kept, copied, until the next push.
    """

    frame_samples: int  # per channel
    num_channels: int
    _pending: Int16Array = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._pending = np.empty(0, dtype=np.int16)

    @property
    def pending(self) -> int:
        """Samples per channel held back, waiting for a full frame."""
        return len(self._pending) // self.num_channels

    def push(self, samples: Int16Array) -> list[Int16Array]:
        """Add interleaved samples; return the complete frames (1-D, interleaved)."""
        step = self.frame_samples * self.num_channels
        frames: list[Int16Array] = []
        start = 0
        if len(self._pending):
            need = step - len(self._pending)
            if len(samples) < need:
                self._pending = np.concatenate((self._pending, samples))
                return frames
            frames.append(np.concatenate((self._pending, samples[:need])))
            start = need
        whole = (len(samples) - start) // step
        frames.extend(samples[start + i * step : start + (i + 1) * step] for i in range(whole))
        rest = samples[start + whole * step :]
        self._pending = rest.copy() if len(rest) else np.empty(0, dtype=np.int16)
        return frames

    def flush(self) -> Int16Array | None:
        """Return the held-back samples (a short frame), or None if there are none."""
        if not len(self._pending):
            return None
        rest, self._pending = self._pending, np.empty(0, dtype=np.int16)
        return rest


class AudioProcessor:
    """WebRTC audio processing (echo cancellation, noise suppression, ...) on numpy frames.

    A thin wrapper of ``livekit.rtc.AudioProcessingModule`` that checks frame sizes
    first: the native module aborts the process on frames that are not a multiple of
    10 ms. Processing is synchronous and in place (about 20 µs per 10 ms frame), so
    it can run in a Trio task directly; it binds to no event loop.
    """

    def __init__(
        self,
        *,
        echo_cancellation: bool = False,
        noise_suppression: bool = False,
        high_pass_filter: bool = False,
        auto_gain_control: bool = False,
    ) -> None:
        """Create the native module with the chosen features enabled."""
        from livekit import rtc

        self._apm = rtc.AudioProcessingModule(
            echo_cancellation=echo_cancellation,
            noise_suppression=noise_suppression,
            high_pass_filter=high_pass_filter,
            auto_gain_control=auto_gain_control,
        )

    def process(self, frame: AudioFrame) -> None:
        """Process a near-end (microphone) frame in place.

        Args:
            frame: A frame whose length is a multiple of 10 ms. Its samples must be
                writable (they are modified in place).

        Raises:
            ValueError: The frame breaks a rule in :data:`LIMITS` (``apm``), or its
                samples are read-only.
        """
        self._apm.process_stream(self._native(frame))

    def process_reverse(self, frame: AudioFrame) -> None:
        """Process a far-end (playback) frame for echo cancellation; as :meth:`process`."""
        self._apm.process_reverse_stream(self._native(frame))

    def set_stream_delay_ms(self, delay_ms: int) -> None:
        """Tell the echo canceller the delay between far-end playback and near-end capture."""
        self._apm.set_stream_delay_ms(delay_ms)

    @staticmethod
    def _native(frame: AudioFrame) -> rtc.AudioFrame:
        check_limits(
            "apm",
            sample_rate=frame.sample_rate,
            num_channels=frame.num_channels,
            samples_per_channel=frame.samples_per_channel,
        )
        if not (frame.samples.flags.writeable and frame.samples.flags.c_contiguous):
            raise ValueError("AudioProcessor works in place: the samples must be writable")
        return frame.to_rtc()


# --------------------------------------------------------------------------- video


@attrs.frozen(eq=False)
class VideoFrame:
    """A video frame whose pixels are a numpy buffer.

    Attributes:
        data: The whole frame as one 1-D ``uint8`` buffer, planes one after the other
            without padding. For frames from a stream it is a view of the
            ``livekit.rtc`` frame's buffer: no copy. :meth:`planes` and
            :meth:`to_ndarray` give shaped views of it.
        width: Width in pixels.
        height: Height in pixels.
        format: The pixel format.
        timestamp_us: Capture timestamp in microseconds (0 when unknown).
        rotation: ``livekit.rtc.VideoRotation`` value (0 = none).
        rtc_frame: The ``livekit.rtc.VideoFrame`` the data belongs to, if any.
    """

    data: UInt8Array
    width: int
    height: int
    format: VideoFormat
    timestamp_us: int = 0
    rotation: int = 0
    rtc_frame: rtc.VideoFrame | None = attrs.field(default=None, repr=False)

    def planes(self) -> tuple[npt.NDArray[Any], ...]:
        """Return one view per plane, shaped as :func:`plane_shapes` says (no copy)."""
        views: list[npt.NDArray[Any]] = []
        offset = 0
        itemsize = _itemsize(self.format)
        for shape in plane_shapes(self.format, self.width, self.height):
            nbytes = math.prod(shape) * itemsize
            plane = self.data[offset : offset + nbytes]
            if itemsize == 2:
                plane = plane.view(np.uint16)
            views.append(plane.reshape(shape))
            offset += nbytes
        return tuple(views)

    def to_ndarray(self) -> npt.NDArray[Any]:
        """Return the pixels as one array: ``(height, width, channels)`` for packed formats.

        Raises:
            ValueError: The format is planar; use :meth:`planes`, or
                :meth:`convert` to a packed format first.
        """
        if self.format not in _PACKED_CHANNELS:
            raise ValueError(f"{self.format.name} is planar: use planes() or convert(RGBA)")
        return self.planes()[0]

    @classmethod
    def from_ndarray(
        cls,
        array: npt.NDArray[Any],
        format: VideoFormat = VideoFormat.RGBA,
        *,
        width: int | None = None,
        height: int | None = None,
        timestamp_us: int = 0,
    ) -> Self:
        """Wrap a numpy array as a frame, without copying it when it is contiguous.

        Args:
            array: Packed formats: ``uint8`` of shape ``(height, width, channels)``.
                Planar formats: the whole buffer, 1-D, with *width* and *height*.
            format: The pixel format.
            width: Frame width; required for planar formats.
            height: Frame height; required for planar formats.
            timestamp_us: Capture timestamp in microseconds.

        Returns:
            The frame; its ``data`` is a view of *array* when *array* is C-contiguous.

        Raises:
            ValueError: Shape or size does not fit the format (``video_frame`` in
                :data:`LIMITS`), or width/height missing for a planar format.
            TypeError: The dtype is not ``uint8``.
        """
        format = _video_format(format)
        if array.dtype != np.uint8:
            raise TypeError(f"video frames must be uint8 arrays, got {array.dtype}")
        channels = _PACKED_CHANNELS.get(format)
        if channels is not None and array.ndim == 3:
            if array.shape[2] != channels:
                raise ValueError(f"{format.name} needs {channels} channels, got {array.shape}")
            h, w = array.shape[0], array.shape[1]
            if (width, height) not in ((None, None), (w, h)):
                raise ValueError(f"width/height {width}x{height} disagree with shape {array.shape}")
        elif width is None or height is None:
            raise ValueError(f"{format.name} from a {array.ndim}-D array needs width and height")
        else:
            w, h = width, height
        data = np.ascontiguousarray(array).reshape(-1)
        check_limits("video_frame", format=format, width=w, height=h, nbytes=data.nbytes)
        return cls(data, w, h, format, timestamp_us)

    @classmethod
    def from_rtc(cls, frame: rtc.VideoFrame, *, timestamp_us: int = 0, rotation: int = 0) -> Self:
        """Wrap a ``livekit.rtc.VideoFrame`` without copying its pixels."""
        data = np.frombuffer(frame.data, dtype=np.uint8)
        return cls(
            data, frame.width, frame.height, VideoFormat(frame.type), timestamp_us, rotation, frame
        )

    def to_rtc(self) -> rtc.VideoFrame:
        """Return a ``livekit.rtc.VideoFrame`` sharing this buffer (copied only if needed).

        Raises:
            ValueError: The buffer length does not match the format and size.
        """
        from livekit import rtc

        if self.rtc_frame is not None:
            return self.rtc_frame
        check_limits(
            "video_frame",
            format=self.format,
            width=self.width,
            height=self.height,
            nbytes=self.data.nbytes,
        )
        buffer_type = cast("rtc.VideoBufferType.ValueType", int(self.format))
        return rtc.VideoFrame(self.width, self.height, buffer_type, _native_buffer(self.data))

    def convert(self, format: VideoFormat, *, flip_y: bool = False) -> VideoFrame:
        """Convert to another pixel format with the native converter (libyuv), synchronously.

        Args:
            format: The target format; see :data:`CONVERSIONS` for what is possible.
            flip_y: Flip the image vertically while converting.

        Returns:
            A new frame (the native library allocates the output buffer).

        Raises:
            ValueError: The conversion is not in :data:`CONVERSIONS` (some of those
                abort the native library), or the frame is malformed.
        """
        target = _video_format(format)
        check_limits("video_convert", src=self.format, dst=target)
        buffer_type = cast("rtc.VideoBufferType.ValueType", int(target))
        converted = self.to_rtc().convert(buffer_type, flip_y=flip_y)
        return type(self).from_rtc(
            converted, timestamp_us=self.timestamp_us, rotation=self.rotation
        )
