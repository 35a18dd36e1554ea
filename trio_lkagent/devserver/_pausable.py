"""A relayed track a subscriber can pause (``UpdateTrackSettings.disabled``), on the loop.

The Go server pauses a down-track when its subscriber disables it (adaptive
stream, a hidden video element) and resumes it when re-enabled, without a
renegotiation. Here the sender's track is a :class:`PausableTrack` over the room's
relay: paused, it keeps reading the relay (so the relay's queue does not grow)
and sends nothing.
"""

from __future__ import annotations

from typing import Any

from aiortc import MediaStreamTrack

__all__ = ["PausableTrack"]


class PausableTrack(MediaStreamTrack):
    """*source* as it is, or nothing while :attr:`paused` (asyncio thread only)."""

    def __init__(self, source: MediaStreamTrack) -> None:
        super().__init__()
        self.kind = source.kind
        self.source = source
        self.paused = False

    async def recv(self) -> Any:
        """The source's next frame once not paused; frames while paused are dropped."""
        while True:
            frame = await self.source.recv()
            if not self.paused:
                return frame

    def stop(self) -> None:
        """Stop this track and the relayed one under it."""
        super().stop()
        self.source.stop()
