"""Video stages: frame-rate limiting and resizing, on :class:`~trio_lkagent.VideoFrame`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, final

import numpy as np
import numpy.typing as npt
import trio

from .._media import _PACKED_CHANNELS, VideoFormat, VideoFrame, check_limits, plane_shapes
from ._pipeline import FrameStage, PipelineConfig

__all__ = ["FrameRateLimit", "Resize"]


@final
class FrameRateLimit(FrameStage[VideoFrame, VideoFrame]):
    """Pass at most *fps* frames per second, dropping the others (counted).

    Frames are spaced by their ``timestamp_us`` when they carry one (frames from a
    ``VideoReceiveStream`` do), else by their arrival time (``trio.current_time()``).
    The schedule keeps its phase: a 30 fps input limited to 10 fps gives every third
    frame, not a drifting pattern.

    Args:
        fps: Frames per second; None: the pipeline's ``frame_rate`` (None there
            too: no limit).

    Attributes:
        dropped: Frames dropped so far.
    """

    def __init__(self, fps: float | None = None) -> None:
        super().__init__()
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps!r}")
        self.fps = fps
        self.dropped = 0
        self._next: float | None = None
        self._by_timestamp = False

    def configure(self, config: PipelineConfig) -> None:
        """Default the rate to the pipeline's ``frame_rate``."""
        if self.fps is None:
            self.fps = config.frame_rate

    def process(self, frame: VideoFrame) -> Iterable[VideoFrame]:
        """Return *frame* if its slot has come, else nothing."""
        if self.fps is None:
            return (frame,)
        by_timestamp = frame.timestamp_us != 0
        if by_timestamp != self._by_timestamp:  # the clock changed: restart the schedule
            self._by_timestamp, self._next = by_timestamp, None
        now = frame.timestamp_us / 1e6 if by_timestamp else trio.current_time()
        interval = 1.0 / self.fps
        # An eighth of an interval of tolerance absorbs jitter in the input's spacing.
        if self._next is None or now >= self._next - interval / 8:
            base = now if self._next is None or now - self._next > interval else self._next
            self._next = base + interval
            return (frame,)
        self.dropped += 1
        return ()


def _indices(source: int, target: int) -> npt.NDArray[np.intp]:
    """Nearest-neighbour source index of each target pixel (pixel centres aligned)."""
    return np.minimum(((np.arange(target) + 0.5) * source / target).astype(np.intp), source - 1)


@final
class Resize(FrameStage[VideoFrame, VideoFrame]):
    """Scale frames to a size (nearest neighbour; numpy, no extra dependency).

    Packed formats (RGBA, BGRA, RGB24, ...) and I420 are resized directly (I420
    plane by plane); frames already at the size pass through. Nearest neighbour
    is cheap (0.3-0.6 ms for 1280x720 RGBA -> 640x360, bench/bench_pipeline.py) but aliases on fine
    detail; for model input that is usually fine, for display prefer the
    subscriber-side dimensions (:class:`~.QualityController`), which let the
    sender's encoder scale.

    Args:
        width: Target width; None (with *height* None): the pipeline's ``resolution``.
        height: Target height.
        keep_aspect: Fit inside width x height keeping the frame's aspect ratio
            (the output may be smaller along one side).

    Raises:
        ValueError: A size under 4x4 pixels (the native encoder aborts on those).
    """

    def __init__(
        self, width: int | None = None, height: int | None = None, *, keep_aspect: bool = False
    ) -> None:
        super().__init__()
        if (width is None) != (height is None):
            raise ValueError("give both width and height, or neither")
        if width is not None and height is not None:
            check_limits("video_capture", format=VideoFormat.I420, width=width, height=height)
        self.size = (width, height) if width is not None and height is not None else None
        self.keep_aspect = keep_aspect
        self._maps: dict[tuple[int, int, int, int], tuple[Any, Any]] = {}

    def configure(self, config: PipelineConfig) -> None:
        """Default the size to the pipeline's ``resolution``."""
        if self.size is None and config.resolution is not None:
            self.size = config.resolution

    def target(self, width: int, height: int) -> tuple[int, int]:
        """Return the output size for a *width* x *height* input."""
        if self.size is None:
            return width, height
        tw, th = self.size
        if self.keep_aspect:
            scale = min(tw / width, th / height)
            tw, th = max(4, round(width * scale)), max(4, round(height * scale))
        return tw, th

    def process(self, frame: VideoFrame) -> Iterable[VideoFrame]:
        """Return *frame* at the target size."""
        tw, th = self.target(frame.width, frame.height)
        if (tw, th) == (frame.width, frame.height):
            return (frame,)
        if frame.format in _PACKED_CHANNELS:
            pixels = self._scale(frame.to_ndarray(), tw, th)
            data = pixels.reshape(-1)
        elif frame.format is VideoFormat.I420:
            shapes = plane_shapes(VideoFormat.I420, tw, th)
            planes = [
                self._scale(plane, shape[1], shape[0])
                for plane, shape in zip(frame.planes(), shapes, strict=True)
            ]
            data = np.concatenate([p.reshape(-1) for p in planes])
        else:
            raise ValueError(f"Resize takes packed formats and I420, not {frame.format.name}")
        return (VideoFrame(data, tw, th, frame.format, frame.timestamp_us, frame.rotation),)

    def _scale(self, array: npt.NDArray[Any], width: int, height: int) -> npt.NDArray[Any]:
        key = (array.shape[1], array.shape[0], width, height)
        maps = self._maps.get(key)
        if maps is None:
            if len(self._maps) > 8:
                self._maps.clear()
            maps = self._maps[key] = (
                _indices(array.shape[0], height),
                _indices(array.shape[1], width),
            )
        rows, cols = maps
        if array.ndim == 3 and array.shape[2] == 4:
            # One uint32 per pixel: a gather of whole pixels, ~10x faster than 3-D indexing.
            pixels = np.ascontiguousarray(array).view(np.uint32)[..., 0]
            out = pixels.take(rows, axis=0).take(cols, axis=1)
            return out.view(np.uint8).reshape(height, width, 4)
        return array.take(rows, axis=0).take(cols, axis=1)
