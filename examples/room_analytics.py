"""Room analytics agent: watches each room it is dispatched to and keeps simple statistics.

A port of the Go SDK's "Simple Room Agent" example (participants, tracks, data
messages, connection quality, room metadata; a status line every 30 s, a report every
60 s and a summary at exit). What changed on the way to Trio:

- Go callbacks (``room.Callback.OnParticipantConnected = ...``) become one ``async
  for event in room.events()`` loop with ``match``: no shared state between
  goroutines, so no mutexes.
- ``go analytics.StartReporter(ctx)`` and the ticker are tasks in a nursery the
  caller can see; cancelling the worker stops them.
- ``publication.SetSubscribed(true)`` for every track is ``AutoSubscribe.SUBSCRIBE_ALL``.
- Signal handling and the shutdown timeout: ``trio.run`` turns Ctrl+C into
  cancellation, and the worker drains its jobs on the way out.

Run it against a LiveKit server (credentials from the environment)::

    LIVEKIT_URL=ws://localhost:7880 LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=... \\
        python examples/room_analytics.py
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import attrs
import trio
from livekit import rtc

from trio_lkagent import AutoSubscribe, JobContext, JobType, Room, Worker, WorkerOptions
from trio_lkagent.events import (
    ConnectionQualityChanged,
    DataReceived,
    Disconnected,
    ParticipantConnected,
    ParticipantDisconnected,
    RoomEvent,
    RoomMetadataChanged,
    TrackPublished,
    TrackSubscribed,
    TrackUnpublished,
)

AGENT_NAME = "simple-room-agent"

log = logging.getLogger("room_analytics")

_QUALITY: dict[int, str] = {
    rtc.ConnectionQuality.QUALITY_EXCELLENT: "excellent",
    rtc.ConnectionQuality.QUALITY_GOOD: "good",
    rtc.ConnectionQuality.QUALITY_POOR: "poor",
    rtc.ConnectionQuality.QUALITY_LOST: "lost",
}
_KIND: dict[int, str] = {rtc.TrackKind.KIND_AUDIO: "audio", rtc.TrackKind.KIND_VIDEO: "video"}
_SOURCE: dict[int, str] = {
    rtc.TrackSource.SOURCE_CAMERA: "camera",
    rtc.TrackSource.SOURCE_MICROPHONE: "microphone",
    rtc.TrackSource.SOURCE_SCREENSHARE: "screen",
}


# --------------------------------------------------------------------------- analytics


@attrs.define
class ParticipantRecord:
    """One participant's stay in the room."""

    sid: str
    identity: str
    joined_at: float
    left_at: float | None = None
    connection_quality: str = ""


@attrs.define
class TrackRecord:
    """One published track."""

    sid: str
    kind: str
    participant_sid: str
    published_at: float
    unpublished_at: float | None = None


@attrs.frozen
class SessionStats:
    """What a status line shows."""

    participants: int
    tracks: int
    data_messages: int
    duration: float


@attrs.define
class RoomSession:
    """Everything recorded about one room, for one job."""

    room_name: str
    job_id: str
    started_at: float = attrs.field(factory=time.monotonic)
    ended_at: float | None = None
    participants: dict[str, ParticipantRecord] = attrs.field(factory=dict)
    tracks: dict[str, TrackRecord] = attrs.field(factory=dict)
    data_messages: int = 0
    metadata: str = ""

    def add_participant(self, sid: str, identity: str) -> None:
        self.participants[sid] = ParticipantRecord(sid, identity, time.monotonic())

    def remove_participant(self, sid: str) -> None:
        if (record := self.participants.get(sid)) is not None:
            record.left_at = time.monotonic()

    def add_track(self, sid: str, kind: str, participant_sid: str) -> None:
        self.tracks[sid] = TrackRecord(sid, kind, participant_sid, time.monotonic())

    def remove_track(self, sid: str) -> None:
        if (record := self.tracks.get(sid)) is not None:
            record.unpublished_at = time.monotonic()

    def update_connection_quality(self, participant_sid: str, quality: str) -> None:
        if (record := self.participants.get(participant_sid)) is not None:
            record.connection_quality = quality

    def end(self) -> None:
        now = self.ended_at = time.monotonic()
        for record in self.participants.values():
            if record.left_at is None:
                record.left_at = now

    def stats(self) -> SessionStats:
        end = self.ended_at if self.ended_at is not None else time.monotonic()
        return SessionStats(
            participants=sum(p.left_at is None for p in self.participants.values()),
            tracks=sum(t.unpublished_at is None for t in self.tracks.values()),
            data_messages=self.data_messages,
            duration=end - self.started_at,
        )


@attrs.define
class AnalyticsCollector:
    """All sessions of this worker, by room name."""

    sessions: dict[str, RoomSession] = attrs.field(factory=dict)

    def create_session(self, room_name: str, job_id: str) -> RoomSession:
        session = self.sessions[room_name] = RoomSession(room_name, job_id)
        return session

    def report(self) -> list[str]:
        lines = []
        for name, session in self.sessions.items():
            stats = session.stats()
            status = "ended" if session.ended_at is not None else "active"
            lines.append(
                f"Room: {name} ({status}) - Participants: {stats.participants}, "
                f"Tracks: {stats.tracks}, Messages: {stats.data_messages}, "
                f"Duration: {stats.duration:.0f}s"
            )
        return lines

    def summary(self) -> list[str]:
        stats = [s.stats() for s in self.sessions.values()]
        return [
            f"Total rooms monitored: {len(stats)}",
            f"Total participants: {sum(s.participants for s in stats)}",
            f"Total tracks: {sum(s.tracks for s in stats)}",
            f"Total data messages: {sum(s.data_messages for s in stats)}",
            f"Total monitoring time: {sum(s.duration for s in stats):.0f}s",
        ]

    async def run_reporter(self, interval: float = 60.0) -> None:
        """Log a report of every session every *interval* seconds, until cancelled."""
        while True:
            await trio.sleep(interval)
            if self.sessions:
                for line in ["=== Analytics Report ===", *self.report()]:
                    log.info("%s", line)


# --------------------------------------------------------------------------- the job


def handle_event(session: RoomSession, event: RoomEvent) -> None:
    """Record one room event (the Go example's ``handle*`` callbacks)."""
    match event:
        case ParticipantConnected(info=info):
            log.info("Participant connected: %s (SID: %s)", info.identity, info.sid)
            session.add_participant(info.sid, info.identity)
            if info.metadata:
                try:
                    log.info("Participant metadata: %r", json.loads(info.metadata))
                except ValueError:
                    pass
        case ParticipantDisconnected(info=info):
            log.info("Participant disconnected: %s", info.identity)
            session.remove_participant(info.sid)
        case TrackPublished(identity=identity, track=track, participant=participant):
            kind = _KIND.get(track.kind, "unknown")
            log.info(
                "Track published: %s %s by %s (SID: %s)",
                _SOURCE.get(track.source, "unknown"),
                kind,
                identity,
                track.sid,
            )
            session.add_track(track.sid, kind, participant.sid if participant else "")
        case TrackSubscribed(track=track):
            log.info("Successfully subscribed to track: %s", track.sid)
        case TrackUnpublished(identity=identity, track=track):
            log.info("Track unpublished: %s by %s", track.sid, identity)
            session.remove_track(track.sid)
        case DataReceived(identity=identity, payload=payload):
            session.data_messages += 1
            try:
                log.info("Data message from %s: %r", identity, json.loads(payload))
            except ValueError:
                log.info("Data message from %s: %s", identity, payload.decode(errors="replace"))
        case ConnectionQualityChanged(participant=participant, quality=quality):
            name = _QUALITY.get(quality, "unknown")
            if participant is not None:
                log.info("Connection quality changed for %s: %s", participant.sid, name)
                session.update_connection_quality(participant.sid, name)
        case RoomMetadataChanged(metadata=metadata):
            log.info("Room metadata changed: %s", metadata)
            session.metadata = metadata
        case _:
            pass


def record_existing(session: RoomSession, participants: Iterable[rtc.RemoteParticipant]) -> None:
    """Record who was in the room before we joined (the Go example's first loop)."""
    for participant in participants:
        session.add_participant(participant.sid, participant.identity)
        log.info("Found existing participant: %s", participant.identity)
        for publication in participant.track_publications.values():
            session.add_track(
                publication.sid, _KIND.get(publication.kind, "unknown"), participant.sid
            )


async def monitor_room(room: Room, session: RoomSession, *, status_interval: float = 30.0) -> None:
    """Record the room's events into *session* until the room disconnects.

    Subscribes first, then records who is already there, so nobody is missed.
    """
    events = room.events()
    record_existing(session, room.remote_participants.values())

    async def status_reporter() -> None:
        while True:
            await trio.sleep(status_interval)
            stats = session.stats()
            log.info(
                "Room status - Name: %s, Participants: %d, Tracks: %d, Messages: %d, "
                "Duration: %.0fs",
                room.name,
                stats.participants,
                stats.tracks,
                stats.data_messages,
                stats.duration,
            )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(status_reporter)
        async for event in events:
            handle_event(session, event)
            if isinstance(event, Disconnected):
                break
        nursery.cancel_scope.cancel()


def make_entrypoint(
    analytics: AnalyticsCollector, *, status_interval: float = 30.0
) -> Callable[[JobContext], Awaitable[None]]:
    """The job entrypoint, recording into *analytics*."""

    async def entrypoint(ctx: JobContext) -> None:
        if ctx.job_type is not JobType.ROOM:
            raise ValueError(f"expected a room job, got {ctx.job_type.name}")
        log.info("Starting analytics for room: %s (Job ID: %s)", ctx.room_name, ctx.job_id)
        session = analytics.create_session(ctx.room_name, ctx.job_id)
        try:
            async with ctx.connect(auto_subscribe=AutoSubscribe.SUBSCRIBE_ALL) as room:
                await monitor_room(room, session, status_interval=status_interval)
        finally:
            session.end()
            log.info("Analytics session ended for room: %s", ctx.room_name)

    return entrypoint


def make_worker(options: WorkerOptions, analytics: AnalyticsCollector) -> Worker:
    """The worker this example runs."""
    return Worker(make_entrypoint(analytics), options)


async def main(options: WorkerOptions) -> None:
    """Serve jobs with a periodic analytics report; print the summary on the way out."""
    analytics = AnalyticsCollector()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(analytics.run_reporter)
            log.info("Starting room analytics agent...")
            await make_worker(options, analytics).serve()
            nursery.cancel_scope.cancel()
    finally:
        for line in ["=== Final Summary ===", *analytics.summary()]:
            log.info("%s", line)
        log.info("Agent stopped")


def cli() -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        trio.run(main, WorkerOptions(agent_name=AGENT_NAME, job_type=JobType.ROOM))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    cli()
