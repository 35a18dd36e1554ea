"""Active speakers and connection quality, as the Go server measures and reports them.

Audio levels (Go's ``pkg/sfu/audio/audiolevel.go``, defaults of ``AudioLevelConfig``):
every audio packet a publisher sends carries a level in dBov (0 loudest, 127
silent), read from the RTP ``ssrc-audio-level`` header extension the client sends;
for a track whose packets carry none, the level is computed from the decoded
audio instead. Per observation window of ``UPDATE_INTERVAL`` ms, a participant is
*active* when at least ``MIN_PERCENTILE`` % of the window was louder than
``ACTIVE_LEVEL`` dBov; the level is the loudest observed, weighted by how much of
the window was active, exponentially smoothed over ``SMOOTH_INTERVALS`` windows.
A level not refreshed for two windows is reset to silent. One departure from Go,
for latency: a participant not speaking yet becomes active as soon as the current
window holds enough active audio, not at its end.

Speakers (Go's ``Room.audioUpdateWorker``): every ``CHECK_INTERVAL`` ms (Go:
every ``UPDATE_INTERVAL``; levels change once per window either way) the room's
active speakers, loudest first, are compared with the previous set; changed
levels and speakers that went quiet (``active=False``) go to every participant
in a ``SpeakersChanged``.

Connection quality (Go's ``connectionQualityWorker``, simplified): every
``QUALITY_INTERVAL`` seconds, and at once when a participant's client becomes
connected, each connected participant's publishing is scored from the packet
loss and jitter its published tracks showed at the relay since the last
report: EXCELLENT, GOOD or POOR; a participant that publishes nothing (or whose
tracks carried no packets) is EXCELLENT. Everyone's quality goes to every
connected participant in a ``ConnectionQualityUpdate`` (Go sends only changes;
sending all keeps a client that joined late or was not ready up to date).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import numpy as np
import trio
from livekit.protocol import models as models_pb
from livekit.protocol import rtc as rtc_pb

__all__ = [
    "ACTIVE_LEVEL",
    "MIN_PERCENTILE",
    "QUALITY_INTERVAL",
    "SMOOTH_INTERVALS",
    "UPDATE_INTERVAL",
    "AudioLevel",
    "LevelTap",
    "TrackQuality",
    "quality_of",
]

logger = logging.getLogger("trio_lkagent.devserver.rtc")

#: dBov at or below which a packet counts as active speech (Go: 35, i.e. -35 dBov).
ACTIVE_LEVEL = 35
#: Share (%) of an observation window that must be active (Go: 40).
MIN_PERCENTILE = 40
#: Observation window and speaker update period, in ms (Go: 400).
UPDATE_INTERVAL = 400
#: Exponential smoothing over this many windows (Go: 2).
SMOOTH_INTERVALS = 2
#: How often the speakers are looked at, in ms. Go looks every UPDATE_INTERVAL; a level
#: changes once per window anyway, so looking more often sends the same messages,
#: only sooner (a window's end reaches clients within 100 ms, not 400).
CHECK_INTERVAL = 100
#: Seconds between connection-quality evaluations (Go's connection quality worker: 5 s).
QUALITY_INTERVAL = 5.0
#: Wait this long for a level in the RTP header extension before decoding the audio.
DECODE_FALLBACK_AFTER = 1.0
#: Read levels from the RTP header extension (False: always decode; for tests).
READ_EXTENSION = True

_SILENT = 127
_PACKET_MS = 20  # an Opus packet, as the LiveKit clients send them
_OPUS_CLOCK = 48_000


def convert_audio_level(level: float) -> float:
    """dBov (0..127, 0 loudest) to a linear level (1.0 loudest)."""
    return float(10 ** (-level / 20))


class AudioLevel:
    """One participant's audio level, Go's ``AudioLevel``; thread-safe.

    Observed on the asyncio thread (per packet), read from Trio (per update).
    """

    def __init__(
        self,
        *,
        active_level: int = ACTIVE_LEVEL,
        min_percentile: int = MIN_PERCENTILE,
        observe_duration: int = UPDATE_INTERVAL,
        smooth_intervals: int = SMOOTH_INTERVALS,
    ) -> None:
        self._active_level = active_level
        self._observe_duration = observe_duration
        self._min_active = min_percentile * observe_duration / 100
        self._smooth = 2 / (smooth_intervals + 1) if smooth_intervals > 0 else 1.0
        self._threshold = convert_audio_level(active_level)
        self._lock = threading.Lock()
        self._smoothed = 0.0
        self._loudest = _SILENT
        self._active_ms = 0
        self._observed_ms = 0
        self._last_at_ms = -math.inf

    def observe(self, level: int, duration_ms: int, now_ms: float) -> None:
        """One packet (or decoded frame) of *duration_ms* at *level* dBov."""
        with self._lock:
            self._last_at_ms = now_ms
            self._observed_ms += duration_ms
            if level <= self._active_level:
                self._active_ms += duration_ms
                self._loudest = min(self._loudest, level)
            if self._observed_ms >= self._observe_duration:
                smoothed = 0.0
                if self._active_ms >= self._min_active:
                    smoothed = self._smoothed_now()
                self._reset(smoothed)
            elif self._smoothed < self._threshold and self._active_ms >= self._min_active:
                # Not speaking yet and the window is active enough already: report
                # it now rather than at the window's end (the one departure from
                # Go: a speaker shows up up to a window sooner; the window goes on).
                self._smoothed = self._smoothed_now()

    def _smoothed_now(self) -> float:
        weight = 20 * math.log10(self._active_ms / self._observe_duration)
        linear = convert_audio_level(self._loudest - weight)
        return self._smoothed + (linear - self._smoothed) * self._smooth

    def level(self, now_ms: float) -> tuple[float, bool]:
        """The smoothed linear level and whether it counts as speaking."""
        with self._lock:
            if now_ms - self._last_at_ms >= 2 * self._observe_duration:
                self._reset(0.0)
            return self._smoothed, self._smoothed >= self._threshold

    def _reset(self, smoothed: float) -> None:
        self._smoothed = smoothed
        self._loudest = _SILENT
        self._active_ms = 0
        self._observed_ms = 0


def level_dbov(samples: Any) -> int:
    """The RFC 6465 level of 16-bit PCM *samples*: 0 (loudest) to 127 (silent) dBov."""
    pcm = np.asarray(samples, dtype=np.float64)
    if pcm.size == 0:
        return _SILENT
    rms = math.sqrt(float(np.mean(pcm * pcm))) / 32767
    if rms <= 0:
        return _SILENT
    return int(min(_SILENT, max(0, round(-20 * math.log10(rms)))))


def _now_ms() -> float:
    return time.monotonic() * 1000


class LevelTap:
    """Feeds an :class:`AudioLevel` from a publisher's audio receiver (asyncio thread).

    Wraps the aiortc receiver's packet handler to read the ``ssrc-audio-level``
    header extension; if no packet carried one after ``DECODE_FALLBACK_AFTER``
    seconds, reads the decoded audio (through the room's relay) instead.
    Also the source of the track's loss and jitter (:meth:`quality`).
    """

    def __init__(self, receiver: Any, track: Any, relay: Any) -> None:
        self.level = AudioLevel()
        self.receiver = receiver
        self._track = track
        self._relay = relay
        self._seen_extension = False
        #: Where levels come from: ``"extension"`` (RTP header) or ``"decoded"``.
        self.source = "extension"
        self._closed = False
        self._decoder: asyncio.Task[None] | None = None
        self._last_stats: tuple[int, int] | None = None
        original = receiver._handle_rtp_packet

        async def handle(packet: Any, arrival_time_ms: int) -> None:  # asyncio thread
            level = packet.extensions.audio_level if READ_EXTENSION else None
            if level is not None:
                self._seen_extension = True
                self.level.observe(int(level[1]), _PACKET_MS, _now_ms())
            await original(packet, arrival_time_ms)

        receiver._handle_rtp_packet = handle
        self._fallback = asyncio.get_running_loop().call_later(
            DECODE_FALLBACK_AFTER, self._maybe_decode
        )

    def _maybe_decode(self) -> None:
        if self._seen_extension or self._closed:
            return
        self.source = "decoded"
        logger.debug("no audio-level header extension: measuring decoded audio")
        self._decoder = asyncio.get_running_loop().create_task(self._decode())

    async def _decode(self) -> None:
        from aiortc.mediastreams import MediaStreamError

        proxy = self._relay.subscribe(self._track)
        try:
            while not self._closed:
                frame = await proxy.recv()
                duration = max(1, round(1000 * frame.samples / frame.sample_rate))
                self.level.observe(level_dbov(frame.to_ndarray()), duration, _now_ms())
        except MediaStreamError:
            pass
        finally:
            proxy.stop()

    async def quality(self) -> TrackQuality:
        """Loss and jitter since the previous call, from the receiver's statistics."""
        report = await self.receiver.getStats()
        received = lost = 0
        jitter = 0.0
        for stats in report.values():
            if getattr(stats, "type", "") == "inbound-rtp":
                received += int(stats.packetsReceived)
                lost += int(stats.packetsLost)
                # In RTP timestamp units: Opus runs a 48 kHz clock.
                jitter = max(jitter, float(stats.jitter) / _OPUS_CLOCK)
        before = self._last_stats or (0, 0)
        self._last_stats = (received, lost)
        return TrackQuality(
            received=received - before[0], lost=max(0, lost - before[1]), jitter=jitter
        )

    def close(self) -> None:
        """Stop measuring (the track was unpublished)."""
        self._closed = True
        self._fallback.cancel()
        if self._decoder is not None:
            self._decoder.cancel()


@attrs.frozen
class TrackQuality:
    """One published track's reception over an interval, as the relay saw it."""

    received: int
    lost: int
    #: Interarrival jitter, in RTP timestamp units / clock rate (seconds).
    jitter: float


def quality_of(tracks: Iterable[TrackQuality]) -> models_pb.ConnectionQuality:
    """Score a participant's publishing over an interval (worst track wins).

    No published track, or none that carried packets: EXCELLENT. Else by loss
    share and jitter: <= 2 % and < 30 ms EXCELLENT, <= 10 % and < 100 ms
    GOOD, otherwise POOR (the bands Go's MOS scoring lands in for Opus).
    """
    worst: models_pb.ConnectionQuality = models_pb.EXCELLENT
    rank: Callable[[models_pb.ConnectionQuality], int] = {
        models_pb.EXCELLENT: 0,
        models_pb.GOOD: 1,
        models_pb.POOR: 2,
    }.__getitem__
    for track in tracks:
        total = track.received + track.lost
        if track.received == 0:
            continue  # silent (or not started): nothing to judge
        loss = track.lost / total
        if loss <= 0.02 and track.jitter < 0.030:
            quality = models_pb.EXCELLENT
        elif loss <= 0.10 and track.jitter < 0.100:
            quality = models_pb.GOOD
        else:
            quality = models_pb.POOR
        if rank(quality) > rank(worst):
            worst = quality
    return worst


async def observe_rooms(
    rooms: Callable[[], Iterable[Any]],
    bridge: Any,
    *,
    update_interval: float = CHECK_INTERVAL / 1000,
    quality_interval: float = QUALITY_INTERVAL,
) -> None:
    """Send ``SpeakersChanged`` and ``ConnectionQualityUpdate`` to the rooms' clients, forever.

    Args:
        rooms: Returns the live rooms (``_RtcRoom``: ``sessions`` by identity, each
            with ``info`` and ``published`` publications carrying a ``tap``).
        bridge: The asyncio bridge the taps live on (for their statistics).
    """
    last_speakers: dict[str, dict[str, float]] = {}  # room -> sid -> level
    last_quality: dict[str, dict[str, models_pb.ConnectionQuality]] = {}  # room -> sid -> quality
    quality_due: dict[str, float] = {}  # room -> when its next report is due
    while True:
        await trio.sleep(update_interval)
        live = list(rooms())
        names = {room.name for room in live}
        for gone in set(last_speakers) - names:
            del last_speakers[gone]
        for gone in set(last_quality) - names:
            del last_quality[gone]
            quality_due.pop(gone, None)
        now = _now_ms()
        for room in live:
            speakers: list[models_pb.SpeakerInfo] = []
            for session in list(room.sessions.values()):
                loudest = 0.0
                for publication in list(session.published.values()):
                    tap = getattr(publication, "tap", None)
                    if tap is not None:
                        level, active = tap.level.level(now)
                        if active:
                            loudest = max(loudest, level)
                if loudest > 0:
                    speakers.append(
                        models_pb.SpeakerInfo(sid=session.info.sid, level=loudest, active=True)
                    )
            speakers.sort(key=lambda s: -s.level)
            previous = last_speakers.get(room.name, {})
            changed = [s for s in speakers if previous.get(s.sid) != s.level]
            current = {s.sid for s in speakers}
            changed += [
                models_pb.SpeakerInfo(sid=sid, level=0, active=False)
                for sid in previous
                if sid not in current
            ]
            last_speakers[room.name] = {s.sid: s.level for s in speakers}
            if changed:
                message = rtc_pb.SignalResponse(
                    speakers_changed=rtc_pb.SpeakersChanged(speakers=changed)
                )
                for session in list(room.sessions.values()):
                    session.send(message)
        for room in live:
            await _report_quality(room, bridge, last_quality, quality_due, quality_interval)


def _connected(session: Any) -> bool:
    """Whether the participant's client is up (Go sends quality to ACTIVE participants only)."""
    peers = [session.peer, getattr(session, "subscriber", None)]  # dual-connection clients
    return any(getattr(getattr(p, "pc", None), "connectionState", "") == "connected" for p in peers)


async def _report_quality(
    room: Any,
    bridge: Any,
    last_quality: dict[str, dict[str, models_pb.ConnectionQuality]],
    quality_due: dict[str, float],
    quality_interval: float,
) -> None:
    """Every *quality_interval*, and at once when a participant becomes connected, send
    every connected participant the quality of everyone connected in *room*."""
    known = last_quality.setdefault(room.name, {})
    connected = [s for s in list(room.sessions.values()) if _connected(s)]
    newcomer = any(s.info.sid not in known for s in connected)
    now = trio.current_time()
    if now < quality_due.get(room.name, -math.inf) and not newcomer:
        return
    quality_due[room.name] = now + quality_interval
    updates: list[rtc_pb.ConnectionQualityInfo] = []
    for session in connected:
        sid = session.info.sid
        measured = []
        for publication in list(session.published.values()):
            tap = getattr(publication, "tap", None)
            if tap is None:
                continue
            try:
                measured.append(await bridge.run(tap.quality))
            except Exception:  # a peer closing meanwhile: no figures this time
                logger.debug("no reception statistics for %s", sid, exc_info=True)
        quality = quality_of(measured)
        known[sid] = quality
        score = {models_pb.EXCELLENT: 5.0, models_pb.GOOD: 4.0}.get(quality, 2.0)
        updates.append(
            rtc_pb.ConnectionQualityInfo(participant_sid=sid, quality=quality, score=score)
        )
    for sid in set(known) - {s.info.sid for s in connected}:
        del known[sid]
    if updates:
        message = rtc_pb.SignalResponse(
            connection_quality=rtc_pb.ConnectionQualityUpdate(updates=updates)
        )
        for session in connected:
            session.send(message)
