"""What subscribers ask of the tracks they receive (``UpdateTrackSettings``), recorded.

The Go server uses these settings to pick a simulcast layer or pause a down-track.
The dev server relays one layer (no simulcast), so it honours ``disabled`` only
(``_pausable.py``); it records every request, per room, for tests to read
(:meth:`DevServer.track_settings <trio_lkagent.devserver.DevServer.track_settings>`)
and wait for.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Final, TypeVar

import attrs
import trio
from livekit.protocol import rtc as rtc_pb

from ._state import Changes

__all__ = ["TrackSettingsLog", "TrackSettingsRecord"]

T = TypeVar("T")

#: Records kept per room (oldest dropped first).
MAX_RECORDS: Final = 1000


@attrs.frozen
class TrackSettingsRecord:
    """One subscriber's settings for one track, as its client sent them.

    Attributes:
        identity: The subscriber.
        track_sid: The track the settings are for.
        disabled: The subscriber paused the track.
        quality: ``livekit.protocol.models.VideoQuality`` value (simulcast layer asked for).
        width: Dimensions the subscriber wants (0: not said).
        height: See *width*.
        fps: Frame rate the subscriber wants (0: not said).
        priority: Subscriber priority.
        time: ``trio.current_time()`` when the request arrived.
    """

    identity: str
    track_sid: str
    disabled: bool
    quality: int
    width: int
    height: int
    fps: int
    priority: int
    time: float


class TrackSettingsLog:
    """Every room's track-settings requests, newest last, with a change signal."""

    def __init__(self) -> None:
        self._rooms: dict[str, collections.deque[TrackSettingsRecord]] = {}
        self._changes = Changes()

    def record(self, room: str, identity: str, settings: rtc_pb.UpdateTrackSettings) -> None:
        """Record a client's ``UpdateTrackSettings`` (one record per track sid)."""
        log = self._rooms.setdefault(room, collections.deque(maxlen=MAX_RECORDS))
        now = trio.current_time()
        for sid in settings.track_sids:
            log.append(
                TrackSettingsRecord(
                    identity=identity,
                    track_sid=sid,
                    disabled=settings.disabled,
                    quality=settings.quality,
                    width=settings.width,
                    height=settings.height,
                    fps=settings.fps,
                    priority=settings.priority,
                    time=now,
                )
            )
        self._changes.notify()

    def get(self, room: str) -> list[TrackSettingsRecord]:
        """The records of *room*, oldest first."""
        return list(self._rooms.get(room, ()))

    async def wait_for(self, predicate: Callable[[], T | None]) -> T:
        """Wait until *predicate* (re-checked on every new record) returns non-None."""
        return await self._changes.wait_for(predicate)
