"""VAD gating: pass only the audio a voice activity detector calls speech."""

from __future__ import annotations

import collections
import math
from typing import TYPE_CHECKING, Final, final

import trio

from .._media import AudioFrame
from ._pipeline import StageStatistics

if TYPE_CHECKING:
    from ..plugins import VAD, VADEvent

__all__ = ["VADGate"]

#: Audio held waiting for the VAD's verdict (seconds) before the gate waits for it.
MAX_HELD: Final = 2.0
#: Seconds the gate waits for a VAD that is MAX_HELD behind before going on without it.
STALL_TIMEOUT: Final = 1.0
_EPSILON: Final = 1e-6


@final
class VADGate:
    """A stage that lets speech through and drops silence, judged by a VAD plugin.

    Every frame is pushed to a stream of the VAD and waits in the gate until the
    VAD's events have passed its position (every event carries the stream
    position it refers to; ``INFERENCE`` events come per window). On
    ``START_OF_SPEECH`` the gate sends the event's audio (the speech so far with
    the VAD's prefix padding); until ``END_OF_SPEECH`` judged frames are sent,
    after it they are dropped. The output is the speech, in order, with the VAD's
    padding before each utterance and its ``min_silence_duration`` of trailing
    silence after it; the delay the gate adds is the VAD's processing lag.

    Args:
        vad: The detector (e.g. ``plugins.EnergyVAD()``).
        on_event: Called synchronously with every :class:`~trio_lkagent.plugins.VADEvent`
            (keep it cheap), e.g. to mark utterance boundaries downstream.

    Attributes:
        speaking: Whether the gate is open now.
        utterances: ``START_OF_SPEECH`` events seen.
        dropped: Frames judged silent (not sent on).

    Backpressure:
        At most 2 s of audio waits for a verdict: beyond that the gate waits for
        the VAD (and so slows a source that is faster than real time, such as a
        file); a VAD that gives no verdict for 1 s more is taken to go on as it
        was. If the VAD's own stream drops frames (its bounded-buffer policy,
        counted there), the gate keeps its alignment by not counting them in the
        stream position.

    Cancellation:
        The VAD stream is a task of the stage (its ``async with``), so the stage is
        cancelled with the pipeline.
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
        self._sent_until = -math.inf
        self._progress = trio.Event()

    async def __call__(
        self,
        receive: trio.MemoryReceiveChannel[AudioFrame],
        send: trio.MemorySendChannel[AudioFrame],
    ) -> None:
        """Run the gate until *receive* ends and the VAD has judged every frame."""
        self._held.clear()
        self._position = 0.0
        self._sent_until = -math.inf
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
                    self._held.append((self._position, frame))
                if self._behind():
                    # The VAD is behind (a source faster than real time): wait for
                    # its verdicts, which slows the source down (backpressure). If
                    # none comes for STALL_TIMEOUT, go on as the last one said.
                    with trio.move_on_after(STALL_TIMEOUT):
                        while self._behind():
                            await self._progress.wait()
                    async with self._lock:
                        while self._behind():
                            await self._release_one(send)
            stream.end_input()

    def _behind(self) -> bool:
        return bool(self._held) and self._position - self._held[0][0] > MAX_HELD

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
                    while self._held and self._held[0][0] <= event.timestamp + _EPSILON:
                        self._held.popleft()  # in the event's frames
                    for frame in event.frames:
                        await self._send(send, frame)
                    self.speaking = True
                else:
                    while self._held and self._held[0][0] <= event.timestamp + _EPSILON:
                        await self._release_one(send)
                    if event.type is VADEventType.END_OF_SPEECH:
                        self.speaking = False
            self._progress.set()
            self._progress = trio.Event()
        async with self._lock:  # the input ended: the rest goes as the VAD left it
            while self._held:
                await self._release_one(send)

    async def _release_one(self, send: trio.MemorySendChannel[AudioFrame]) -> None:
        """Send (speaking) or drop (silent) the oldest held frame."""
        _, frame = self._held.popleft()
        if self.speaking:
            await self._send(send, frame)
        else:
            self.dropped += 1

    async def _send(self, send: trio.MemorySendChannel[AudioFrame], frame: AudioFrame) -> None:
        if frame.timestamp < self._sent_until - _EPSILON:
            # Partly or wholly sent already (the VAD's frames and ours need not
            # line up, and padding may reach into the previous utterance).
            skip = round((self._sent_until - frame.timestamp) * frame.sample_rate)
            if skip >= frame.samples_per_channel:
                return
            frame = AudioFrame(
                frame.samples[skip * frame.num_channels :],
                frame.sample_rate,
                frame.num_channels,
                frame.timestamp + skip / frame.sample_rate,
            )
        self._sent_until = frame.timestamp + frame.duration
        await send.send(frame)
        self.frames_out += 1
