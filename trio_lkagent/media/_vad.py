"""VAD gating: pass only the audio a voice activity detector calls speech."""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Final, final

import trio

from .._media import AudioFrame
from ._pipeline import StageStatistics

if TYPE_CHECKING:
    from ..plugins import VAD, VADEvent

__all__ = ["VADGate"]

#: Undecided audio held while the gate is closed, at most (seconds); older is dropped.
MAX_HELD: Final = 2.0


@final
class VADGate:
    """A stage that lets speech through and drops silence, judged by a VAD plugin.

    Every frame is pushed to a stream of the VAD; frames wait in the gate until the
    VAD has judged them. On ``START_OF_SPEECH`` the gate sends the event's audio
    (the speech so far with the VAD's prefix padding), then every frame until
    ``END_OF_SPEECH``, then holds frames again. The output is the speech, in
    order, with the VAD's padding before each utterance and its
    ``min_silence_duration`` of trailing silence after it (plus however far the VAD
    lags behind the gate: frames go through at once while the gate is open, so
    that speech reaches the next stage without waiting for the VAD's verdict).

    Args:
        vad: The detector (e.g. ``plugins.EnergyVAD()``).
        on_event: Called synchronously with every :class:`~trio_lkagent.plugins.VADEvent`
            (keep it cheap), e.g. to mark utterance boundaries downstream.

    Attributes:
        speaking: Whether the gate is open now.
        utterances: ``START_OF_SPEECH`` events seen.
        dropped: Frames judged silent (not sent on).

    Cancellation:
        The VAD stream is a task of the stage (its ``async with``), so the stage is
        cancelled with the pipeline. If the VAD falls behind, its stream drops
        frames (its bounded-buffer policy, counted there); the gate keeps its
        alignment by not counting those frames in the stream position.
    """

    def __init__(self, vad: VAD, *, on_event: object = None) -> None:
        self.vad = vad
        self._on_event = on_event
        self.speaking = False
        self.utterances = 0
        self.dropped = 0
        self.frames_in = 0
        self.frames_out = 0
        self.__name__ = "VADGate"
        self._held: collections.deque[tuple[float, AudioFrame]] = collections.deque()
        self._position = 0.0  # seconds of audio the VAD has accepted
        self._lock = trio.Lock()

    async def __call__(
        self,
        receive: trio.MemoryReceiveChannel[AudioFrame],
        send: trio.MemorySendChannel[AudioFrame],
    ) -> None:
        """Run the gate until *receive* ends and the VAD has judged every frame."""
        self._held.clear()
        self._position = 0.0
        self.speaking = False
        async with self.vad.stream() as stream, trio.open_nursery() as nursery:
            nursery.start_soon(self._judge, stream, send)
            async for frame in receive:
                self.frames_in += 1
                before = stream.statistics().frames_dropped
                stream.push_frame(frame)
                if stream.statistics().frames_dropped == before:
                    self._position += frame.duration
                async with self._lock:
                    if self.speaking:
                        await self._send(send, frame)
                    else:
                        self._held.append((self._position, frame))
                        self._trim()
            stream.end_input()

    def statistics(self) -> StageStatistics:
        """Return the gate's counters (``frames_out`` includes the VAD's padding)."""
        return StageStatistics(name="VADGate", frames_in=self.frames_in, frames_out=self.frames_out)

    async def _judge(
        self, stream: trio.abc.ReceiveChannel[VADEvent], send: trio.MemorySendChannel[AudioFrame]
    ) -> None:
        from ..plugins import VADEventType

        async for event in stream:
            if callable(self._on_event):
                self._on_event(event)
            async with self._lock:
                if event.type is VADEventType.START_OF_SPEECH:
                    self.utterances += 1
                    self.speaking = True
                    self._release(event.timestamp, count=False)  # in event.frames
                    for frame in event.frames:
                        await self._send(send, frame)
                    while self._held:  # pushed after the VAD's verdict: speech too
                        await self._send(send, self._held.popleft()[1])
                elif event.type is VADEventType.END_OF_SPEECH:
                    self.speaking = False
                else:
                    self._release(event.timestamp)
        async with self._lock:  # the input ended: undecided frames were not speech
            self.dropped += len(self._held)
            self._held.clear()

    def _release(self, position: float, *, count: bool = True) -> None:
        """Forget held frames the VAD has judged (up to *position*)."""
        while self._held and self._held[0][0] <= position + 1e-9:
            self._held.popleft()
            self.dropped += count

    def _trim(self) -> None:
        while self._held and self._position - self._held[0][0] > MAX_HELD:
            self._held.popleft()
            self.dropped += 1

    async def _send(self, send: trio.MemorySendChannel[AudioFrame], frame: AudioFrame) -> None:
        await send.send(frame)
        self.frames_out += 1
