"""Room analytics agent: watches each room it is dispatched to and keeps statistics.

A port of the Go SDK's "Simple Room Agent" example (seed 004: participants, tracks,
data messages, connection quality, room metadata; a status line every 30 s, a
report every 60 s and a summary at exit), built from the SDK's agent layer:

- a handler (:class:`~trio_lkagent.handlers.BaseHandler`) instead of Go's
  ``room.Callback`` fields: its ``async def`` hooks log what happens, awaited in
  order by the job's dispatcher task;
- a :class:`~trio_lkagent.coordination.ParticipantCoordinator` keeps each
  participant's activity, the groups (``publishers``, and ``team:<name>`` from a
  participant's ``team`` attribute) and the interaction graph (who sent data to
  whom, who spoke after whom);
- an :class:`~trio_lkagent.coordination.EventProcessor` batches data messages (a
  log line per 10 messages or 5 s) and keeps a history of connection-quality
  changes;
- the periodic reports are tasks in the job's (and the worker's) nursery; their
  clock is injectable (``clock=``), so a test runs 60 s of reports in no time.
- SIGTERM and Ctrl+C both end the worker (draining its jobs) and print the
  summary.

Run it against a LiveKit server (credentials from the environment)::

    LIVEKIT_URL=ws://localhost:7880 LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=... \\
        python examples/room_analytics.py
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

import attrs
import trio
from livekit import rtc

from trio_lkagent import AutoSubscribe, JobContext, JobRequest, JobType, Worker, WorkerOptions
from trio_lkagent.coordination import (
    Activity,
    ActivityType,
    EventProcessor,
    ParticipantCoordinator,
    open_coordinator,
    open_event_processor,
)
from trio_lkagent.events import ConnectionQualityChanged, DataReceived, RoomMetadataChanged
from trio_lkagent.handlers import AutoDisconnect, BaseHandler

AGENT_NAME = "simple-room-agent"
STATUS_INTERVAL = 30.0
REPORT_INTERVAL = 60.0

log = logging.getLogger("room_analytics")

_QUALITY: dict[int, str] = {
    rtc.ConnectionQuality.QUALITY_EXCELLENT: "excellent",
    rtc.ConnectionQuality.QUALITY_GOOD: "good",
    rtc.ConnectionQuality.QUALITY_POOR: "poor",
    rtc.ConnectionQuality.QUALITY_LOST: "lost",
}
_KIND: dict[int, str] = {rtc.TrackKind.KIND_AUDIO: "audio", rtc.TrackKind.KIND_VIDEO: "video"}


# --------------------------------------------------------------------------- analytics


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
    coordinator: ParticipantCoordinator
    processor: EventProcessor
    clock: Callable[[], float] = trio.current_time
    started_at: float = 0.0
    ended_at: float | None = None
    metadata: str = ""
    quality: dict[str, str] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        self.started_at = self.clock()

    def end(self) -> None:
        self.ended_at = self.clock()

    def stats(self) -> SessionStats:
        metrics = self.coordinator.metrics()
        present = self.coordinator.active_participants()
        end = self.ended_at if self.ended_at is not None else self.clock()
        return SessionStats(
            participants=metrics.participants_present,
            tracks=sum(len(p.tracks) for p in present),
            data_messages=metrics.activities.get(ActivityType.DATA_RECEIVED, 0),
            duration=end - self.started_at,
        )

    def status_line(self) -> str:
        stats = self.stats()
        return (
            f"Room status - Name: {self.room_name}, Participants: {stats.participants}, "
            f"Tracks: {stats.tracks}, Messages: {stats.data_messages}, "
            f"Duration: {stats.duration:.0f}s"
        )

    def details(self) -> list[str]:
        """Per-participant activity, groups and the interaction graph."""
        coord, now = self.coordinator, self.clock()
        lines = []
        for record in coord.participants.values():
            counts = ", ".join(
                f"{kind.value} {n}" for kind, n in record.activity_counts.items() if n
            )
            idle = now - record.last_activity_at if record.last_activity_at is not None else 0
            state = "present" if record.present else "left"
            quality = self.quality.get(record.identity, "")
            lines.append(
                f"  {record.identity} ({state}{', ' + quality if quality else ''}):"
                f" {counts}; last active {idle:.0f}s ago"
            )
        for group in coord.groups.values():
            lines.append(f"  group {group.name}: {', '.join(sorted(group.members)) or '-'}")
        for source, targets in sorted(coord.interaction_graph().items()):
            for target, count in sorted(targets.items()):
                lines.append(f"  {source} -> {target}: {count}")
        return lines


@attrs.define
class AnalyticsCollector:
    """All sessions of this worker, by room name.

    Args:
        clock: Where times come from (``trio.current_time``; a test's MockClock).
        emit: Where report lines go (default: the log).
    """

    clock: Callable[[], float] = trio.current_time
    emit: Callable[[str], None] = log.info
    sessions: dict[str, RoomSession] = attrs.field(factory=dict)

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
            lines += session.details()
        return lines

    def summary(self) -> list[str]:
        sessions = list(self.sessions.values())
        stats = [s.stats() for s in sessions]
        seen = sum(s.coordinator.metrics().participants_seen for s in sessions)
        return [
            f"Total rooms monitored: {len(stats)}",
            f"Total participants: {seen}",
            f"Total tracks: {sum(s.tracks for s in stats)}",
            f"Total data messages: {sum(s.data_messages for s in stats)}",
            f"Total monitoring time: {sum(s.duration for s in stats):.0f}s",
        ]

    async def run_reporter(self, interval: float = REPORT_INTERVAL) -> None:
        """Emit a report of every session every *interval* seconds, until cancelled."""
        while True:
            await trio.sleep(interval)
            if self.sessions:
                for line in ["=== Analytics Report ===", *self.report()]:
                    self.emit(line)


async def run_status(session: RoomSession, emit: Callable[[str], None], interval: float) -> None:
    """Emit *session*'s status line every *interval* seconds, until cancelled."""
    while True:
        await trio.sleep(interval)
        emit(session.status_line())


# --------------------------------------------------------------------------- the agent


class RoomAnalytics(BaseHandler):
    """The handler: one :class:`RoomSession` per job, fed by the room's events."""

    def __init__(
        self, analytics: AnalyticsCollector, *, status_interval: float = STATUS_INTERVAL
    ) -> None:
        self.analytics = analytics
        self.status_interval = status_interval

    async def on_job_request(self, req: JobRequest) -> None:
        if req.job_type is not JobType.ROOM:
            await req.reject()
            return
        # Subscribe to everything (Go: SetSubscribed(true) on every publication) and
        # leave once the last participant has gone.
        await req.accept(
            auto_subscribe=AutoSubscribe.SUBSCRIBE_ALL, auto_disconnect=AutoDisconnect.DEFAULT
        )

    async def on_job_assigned(self, ctx: JobContext) -> None:
        log.info("Starting analytics for room: %s (Job ID: %s)", ctx.room_name, ctx.job_id)
        clock = self.analytics.clock
        session = RoomSession(
            ctx.room_name,
            ctx.job_id,
            ParticipantCoordinator(clock=clock),
            EventProcessor(clock=clock),
            clock,
        )
        self.analytics.sessions[ctx.room_name] = session
        watch(session)  # before feeding them: those already there are counted too
        async with (
            open_coordinator(ctx.room, coordinator=session.coordinator),
            open_event_processor(ctx.room, processor=session.processor),
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(run_status, session, self.analytics.emit, self.status_interval)
            await trio.sleep_forever()  # until the job ends

    async def on_job_terminated(self, ctx: JobContext, reason: str) -> None:
        session = self.analytics.sessions.get(ctx.room_name)
        if session is not None and session.job_id == ctx.job_id:
            session.end()
        log.info("Analytics session ended for room: %s (%s)", ctx.room_name, reason)

    async def on_participant_joined(
        self, ctx: JobContext, participant: rtc.RemoteParticipant
    ) -> None:
        log.info("Participant connected: %s (SID: %s)", participant.identity, participant.sid)
        if participant.metadata:
            try:
                log.info("Participant metadata: %r", json.loads(participant.metadata))
            except ValueError:
                pass

    async def on_participant_left(
        self, ctx: JobContext, participant: rtc.RemoteParticipant
    ) -> None:
        log.info("Participant disconnected: %s", participant.identity)

    async def on_track_published(
        self,
        ctx: JobContext,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        kind = _KIND.get(publication.kind, "unknown")
        log.info("Track published: %s by %s (SID: %s)", kind, participant.identity, publication.sid)

    async def on_track_subscribed(
        self,
        ctx: JobContext,
        track: rtc.RemoteTrack,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        log.info("Successfully subscribed to track: %s", publication.sid)

    async def on_speaking_changed(
        self, ctx: JobContext, participant: rtc.Participant, speaking: bool
    ) -> None:
        log.info("%s %s speaking", participant.identity, "started" if speaking else "stopped")


def watch(session: RoomSession) -> None:
    """Wire the session's coordinator and processor (groups, batches, history)."""
    coord, processor = session.coordinator, session.processor
    coord.create_group("publishers", "publishers")

    async def on_join(c: ParticipantCoordinator, activity: Activity) -> None:
        team = c.participant(activity.identity).attributes.get("team")
        if team:
            group_id = f"team:{team}"
            if group_id not in c.groups:
                c.create_group(group_id, group_id)
            c.add_to_group(activity.identity, group_id)

    async def on_publish(c: ParticipantCoordinator, activity: Activity) -> None:
        c.add_to_group(activity.identity, "publishers")

    coord.on(ActivityType.JOINED, on_join)
    coord.on(ActivityType.TRACK_PUBLISHED, on_publish)

    async def on_data_batch(batch: list[Any]) -> None:
        senders = sorted({event.identity for event in batch})
        log.info("%d data message(s) from %s", len(batch), ", ".join(senders))
        for event in batch:
            try:
                log.info("Data message from %s: %r", event.identity, json.loads(event.payload))
            except ValueError:
                log.info("Data message from %s: %r", event.identity, event.payload)

    async def on_quality(event: ConnectionQualityChanged) -> None:
        name = _QUALITY.get(event.quality, "unknown")
        session.quality[event.identity] = name
        log.info("Connection quality changed for %s: %s", event.identity, name)

    async def on_metadata(event: RoomMetadataChanged) -> None:
        log.info("Room metadata changed: %s", event.metadata)
        session.metadata = event.metadata

    processor.add_batch_processor(on_data_batch, max_events=10, max_wait=5.0, types=[DataReceived])
    processor.on(ConnectionQualityChanged, on_quality)
    processor.on(RoomMetadataChanged, on_metadata)


def make_worker(options: WorkerOptions, analytics: AnalyticsCollector) -> Worker:
    """The worker this example runs."""
    return Worker(RoomAnalytics(analytics), options)


async def main(options: WorkerOptions) -> None:
    """Serve jobs with periodic reports; SIGTERM or Ctrl+C ends it and prints the summary."""
    analytics = AnalyticsCollector()
    try:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(analytics.run_reporter)
                worker = make_worker(options, analytics)
                await nursery.start(worker.serve)
                log.info("Starting room analytics agent...")
                async for signum in signals:
                    log.info("Received %s: shutting down", signal.Signals(signum).name)
                    break
                nursery.cancel_scope.cancel()
    finally:
        for line in ["=== Final Summary ===", *analytics.summary()]:
            print(line, flush=True)
        log.info("Agent stopped")


def cli() -> None:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    trio.run(main, WorkerOptions(agent_name=AGENT_NAME, job_type=JobType.ROOM))


if __name__ == "__main__":
    cli()
