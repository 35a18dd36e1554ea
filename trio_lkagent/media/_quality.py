"""Subscribed-video quality: pick a layer / dimensions from connection quality and pace.

The decision (:class:`QualityController`) is plain synchronous state, fed with
observations and read for the level to use; :func:`open_quality_controller` runs it
for one remote video publication of a :class:`~trio_lkagent.Room`: a task reads the
room's ``ConnectionQualityChanged`` events, another samples the consumer's
``VideoReceiveStream`` statistics, and every change of level is applied through
livekit: ``set_video_quality`` (simulcast layer, when the track is simulcast) and
the publication's video dimensions (any video track; the server picks the layer
that fits, and the sender may scale). Both end up as an ``UpdateTrackSettings``
signal the server acts on.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Final, final

import attrs
import trio
from livekit import rtc
from livekit.rtc._ffi_client import FfiClient
from livekit.rtc._proto import ffi_pb2 as ffi_pb

from .._room import Room
from .._tracks import VideoReceiveStream, open_owned_nursery
from ..events import ConnectionQualityChanged

__all__ = [
    "DEFAULT_LEVELS",
    "QualityChange",
    "QualityController",
    "QualityLevel",
    "QualityOptions",
    "apply_level",
    "set_enabled",
    "open_quality_controller",
]

logger = logging.getLogger(__name__)

_Q = rtc.VideoQuality


@attrs.frozen
class QualityLevel:
    """One rung of the ladder: a simulcast layer and the dimensions it stands for.

    Attributes:
        quality: ``livekit.rtc.VideoQuality`` value (LOW, MEDIUM, HIGH).
        width: Dimensions asked of the server for this level.
        height: See *width*.
        bitrate: Bits per second the level needs (livekit's presets by default).
    """

    quality: int
    width: int
    height: int
    bitrate: int


#: livekit's default simulcast ladder for a 720p camera (q / h / f).
DEFAULT_LEVELS: Final = (
    QualityLevel(_Q.VIDEO_QUALITY_LOW, 320, 180, 160_000),
    QualityLevel(_Q.VIDEO_QUALITY_MEDIUM, 640, 360, 450_000),
    QualityLevel(_Q.VIDEO_QUALITY_HIGH, 1280, 720, 1_700_000),
)


def _levels(
    _instance: object, _attribute: attrs.Attribute[Any], value: tuple[QualityLevel, ...]
) -> None:
    if not value:
        raise ValueError("levels must not be empty")
    rates = [level.bitrate for level in value]
    if rates != sorted(rates) or len(set(rates)) != len(rates):
        raise ValueError("levels must be ordered by strictly increasing bitrate")


@attrs.frozen
class QualityOptions:
    """How a :class:`QualityController` chooses.

    Attributes:
        target_bitrate: The level to aim for while the connection is merely
            ``GOOD``: the highest level at or under this rate (also where it starts).
        max_bitrate: The ceiling while the connection is ``EXCELLENT`` (None:
            the top level).
        adaptation_speed: How fast it climbs back (1.0: one level up after 5 s
            of good conditions since the last change; 2.0: after 2.5 s). Going
            down is immediate (once per ``1 / adaptation_speed`` seconds at most).
        levels: The ladder, lowest first (:data:`DEFAULT_LEVELS`).
    """

    target_bitrate: int = 1_700_000
    max_bitrate: int | None = None
    adaptation_speed: float = 1.0
    levels: tuple[QualityLevel, ...] = attrs.field(default=DEFAULT_LEVELS, validator=_levels)

    def __attrs_post_init__(self) -> None:
        if self.target_bitrate <= 0:
            raise ValueError("target_bitrate must be > 0")
        if self.max_bitrate is not None and self.max_bitrate < self.target_bitrate:
            raise ValueError("max_bitrate must be >= target_bitrate")
        if not self.adaptation_speed > 0:
            raise ValueError("adaptation_speed must be > 0")


#: Seconds of good conditions before one step up, at adaptation_speed 1.
UPGRADE_HOLD: Final = 5.0
#: Seconds between two steps down, at adaptation_speed 1.
DOWNGRADE_HOLD: Final = 1.0


@attrs.frozen
class QualityChange:
    """A change of level, and why.

    Attributes:
        time: ``trio.current_time()`` of the change.
        level: The new level.
        reason: ``"connection"``, ``"pace"`` or ``"recovered"``.
    """

    time: float
    level: QualityLevel
    reason: str


@final
class QualityController:
    """The decision: which level to receive, from connection quality and consumer pace.

    Rules: ``LOST`` goes to the lowest level; ``POOR`` or a consumer that dropped
    frames (or has more than half its buffer waiting) steps one level down; after
    ``UPGRADE_HOLD / adaptation_speed`` seconds without either, it steps one level
    up, up to ``target_bitrate`` (``GOOD``) or ``max_bitrate`` (``EXCELLENT``).

    Args:
        options: The ladder and rates.
        clock: A function returning the current time (default ``trio.current_time``).
    """

    def __init__(
        self, options: QualityOptions | None = None, *, clock: Callable[[], float] | None = None
    ) -> None:
        self.options = options or QualityOptions()
        self._clock = clock or trio.current_time
        levels = self.options.levels
        self._index = self._ceiling_index(self.options.target_bitrate)
        self.connection_quality: int = rtc.ConnectionQuality.QUALITY_GOOD
        self._last_change = self._now()
        self._last_trouble = self._last_change
        self.history: list[QualityChange] = []
        self._levels = levels

    def _now(self) -> float:
        return self._clock()

    def _ceiling_index(self, bitrate: int | None) -> int:
        levels = self.options.levels
        if bitrate is None:
            return len(levels) - 1
        fitting = [i for i, level in enumerate(levels) if level.bitrate <= bitrate]
        return fitting[-1] if fitting else 0

    @property
    def level(self) -> QualityLevel:
        """The level to receive now."""
        return self._levels[self._index]

    def observe_connection_quality(self, quality: int) -> QualityLevel | None:
        """Take a ``ConnectionQualityChanged`` value; return the new level if it changed."""
        self.connection_quality = quality
        if quality == rtc.ConnectionQuality.QUALITY_LOST:
            self._last_trouble = self._now()
            return self._set(0, "connection")
        if quality == rtc.ConnectionQuality.QUALITY_POOR:
            return self._step_down("connection")
        ceiling = self._ceiling()
        if self._index > ceiling:  # e.g. EXCELLENT -> GOOD with max > target
            return self._set(ceiling, "connection")
        return None

    def observe_pace(
        self, dropped: int, buffered: int, max_buffer_size: int
    ) -> QualityLevel | None:
        """Take the consumer's state since the last call: frames it dropped and its
        backlog. Returns the new level if it changed."""
        if dropped > 0 or (max_buffer_size > 0 and buffered * 2 > max_buffer_size):
            return self._step_down("pace")
        return None

    def tick(self) -> QualityLevel | None:
        """Climb one level if conditions have been good long enough; return it if so."""
        hold = UPGRADE_HOLD / self.options.adaptation_speed
        now = self._now()
        if (
            self.connection_quality
            in (rtc.ConnectionQuality.QUALITY_GOOD, rtc.ConnectionQuality.QUALITY_EXCELLENT)
            and self._index < self._ceiling()
            and now - max(self._last_change, self._last_trouble) >= hold
        ):
            return self._set(self._index + 1, "recovered")
        return None

    def _ceiling(self) -> int:
        if self.connection_quality == rtc.ConnectionQuality.QUALITY_EXCELLENT:
            return self._ceiling_index(self.options.max_bitrate)
        return self._ceiling_index(self.options.target_bitrate)

    def _step_down(self, reason: str) -> QualityLevel | None:
        now = self._now()
        self._last_trouble = now
        if now - self._last_change < DOWNGRADE_HOLD / self.options.adaptation_speed and any(
            change.reason != "recovered" for change in self.history[-1:]
        ):
            return None  # just stepped down: let it take effect first
        return self._set(max(self._index - 1, 0), reason)

    def _set(self, index: int, reason: str) -> QualityLevel | None:
        if index == self._index:
            return None
        self._index = index
        self._last_change = self._now()
        self.history.append(QualityChange(self._last_change, self.level, reason))
        return self.level


def _set_dimensions(publication: rtc.RemoteTrackPublication, width: int, height: int) -> None:
    """``UpdateRemoteTrackPublicationDimension``: livekit 1.2 has it natively, not in Python."""
    request = ffi_pb.FfiRequest()
    update = request.update_remote_track_publication_dimension
    update.track_publication_handle = publication._ffi_handle.handle
    update.width = width
    update.height = height
    FfiClient.instance.request(request)


async def set_enabled(room: Room, publication: rtc.RemoteTrackPublication, enabled: bool) -> None:
    """Pause (``False``) or resume a subscribed track without unsubscribing.

    The server stops forwarding its media (``UpdateTrackSettings.disabled``) until
    it is enabled again; the subscription, the track and any stream on it stay.
    livekit 1.2 has the request natively but not in its Python API.
    """

    def enable() -> None:  # asyncio thread
        request = ffi_pb.FfiRequest()
        request.enable_remote_track_publication.track_publication_handle = (
            publication._ffi_handle.handle
        )
        request.enable_remote_track_publication.enabled = enabled
        FfiClient.instance.request(request)

    await room.bridge.call(enable)


async def apply_level(
    room: Room, publication: rtc.RemoteTrackPublication, level: QualityLevel
) -> None:
    """Ask the server for *level* of *publication*: its dimensions, and its layer if simulcast."""

    def apply() -> None:  # asyncio thread
        _set_dimensions(publication, level.width, level.height)
        if publication.simulcasted:
            publication.set_video_quality(level.quality)  # type: ignore[arg-type]

    await room.bridge.call(apply)


@asynccontextmanager
async def open_quality_controller(
    room: Room,
    publication: rtc.RemoteTrackPublication,
    options: QualityOptions | None = None,
    *,
    stream: VideoReceiveStream | None = None,
    identity: str | None = None,
    interval: float = 1.0,
) -> AsyncIterator[QualityController]:
    """Adapt the quality of a subscribed video track for the duration of the block.

    Example::

        async with open_video_stream(event.rtc_track) as frames, open_quality_controller(
            room, event.publication, QualityOptions(target_bitrate=500_000), stream=frames
        ) as controller:
            async for frame in frames:
                ...                                  # controller.level: what we asked for

    Args:
        room: The room the publication is in.
        publication: A remote video publication (``TrackSubscribed.publication``).
        options: The ladder and rates.
        stream: The consumer's stream: its dropped frames and backlog count as
            "too much" (None: connection quality only).
        identity: Whose ``ConnectionQualityChanged`` to follow (None: our own,
            the local participant's: the downlink the video arrives on).
        interval: Seconds between two looks at the pace and the clock.

    Yields:
        The :class:`QualityController` (read ``level`` and ``history``).

    Raises:
        ValueError: *publication* is not a video publication.

    Cancellation:
        The controller's tasks run in a nursery the block owns; leaving it stops
        them. The last level asked for stays in force.
    """
    if publication.kind != rtc.TrackKind.KIND_VIDEO:
        raise ValueError(f"not a video publication: {publication!r}")
    if not interval > 0:
        raise ValueError("interval must be > 0")
    controller = QualityController(options)
    who = identity if identity is not None else room.local_participant.identity
    events = room.events()
    await apply_level(room, publication, controller.level)
    async with open_owned_nursery() as nursery:

        async def apply(level: QualityLevel) -> None:
            # The track may be going away (unpublished, unsubscribed) while we ask:
            # the native request then fails, and the video stops anyway.
            try:
                await apply_level(room, publication, level)
            except Exception as exc:
                logger.debug("could not ask for %s of %s: %r", level, publication.sid, exc)

        async def follow_quality() -> None:
            async with events:
                async for event in events:
                    if isinstance(event, ConnectionQualityChanged) and event.identity == who:
                        changed = controller.observe_connection_quality(event.quality)
                        if changed is not None:
                            await apply(changed)

        async def follow_pace() -> None:
            dropped = stream.statistics().dropped if stream is not None else 0
            while True:
                await trio.sleep(interval)
                changed = None
                if stream is not None:
                    stats = stream.statistics()
                    changed = controller.observe_pace(
                        stats.dropped - dropped, stats.buffered, stats.max_buffer_size
                    )
                    dropped = stats.dropped
                changed = changed or controller.tick()
                if changed is not None:
                    await apply(changed)

        nursery.start_soon(follow_quality)
        nursery.start_soon(follow_pace)
        try:
            yield controller
        finally:
            nursery.cancel_scope.cancel()
