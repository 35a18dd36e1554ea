"""Rooms and their agent dispatches (the agent half of Go's ``pkg/rtc/room.go``).

A room here is its ``livekit.protocol.models.Room`` proto, its dispatches, and the
participants the media side reports through the hooks
(:meth:`RoomRegistry.on_participant_joined`, :meth:`~RoomRegistry.on_track_published`,
:meth:`~RoomRegistry.on_participant_left`). No media yet: the rooms part of the dev
server will call those hooks.

Go's rules kept here:

- a room created without ``agents`` gets one dispatch with an empty agent name
  (``createAgentDispatchesFromRoomAgent``): the automatic dispatch to workers
  registered without an agent name;
- every dispatch launches a ``JT_ROOM`` job when it is created (with the room, or
  later by ``CreateDispatch``) and, for every non-agent participant, a
  ``JT_PARTICIPANT`` job when it joins and a ``JT_PUBLISHER`` job when it first
  publishes (``launchRoomAgents`` / ``launchTargetAgents``);
- deleting a dispatch terminates its jobs once their launches finished
  (``DeleteAgentDispatch``); an agent participant leaving ends its job as failed
  ("agent worker left the room");
- a room closes after ``empty_timeout`` when nobody joined, or
  ``departure_timeout`` after the last participant left (``CloseIfEmpty``).
  Closing ends its agents' jobs the way Go's participant removal does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence

import trio
from livekit.protocol import agent as agent_pb
from livekit.protocol import agent_dispatch as dispatch_pb
from livekit.protocol import models as models_pb

from . import _dispatch as rules
from ._agent_service import AgentService, ServerJob
from ._config import DevServerConfig
from ._ids import AGENT_DISPATCH_PREFIX, ROOM_PREFIX, new_guid
from ._state import Changes

__all__ = ["RoomRegistry", "ServerRoom"]

logger = logging.getLogger("trio_lkagent.devserver")


class _Dispatch:
    """An ``AgentDispatch`` and the jobs it launched."""

    def __init__(self, proto: dispatch_pb.AgentDispatch) -> None:
        self.proto = proto
        self.job_ids: list[str] = []


#: How long the agent of a job terminated by a dispatch deletion may stay in
#: the room before the server removes it (Go: ``waitForParticipantLeaving``, 3 s).
AGENT_LEAVE_TIMEOUT = 3.0


class ServerRoom:
    """A room as the dev server tracks it.

    Attributes:
        room: The ``Room`` proto (``sid`` ``RM_...``, name, metadata, timeouts,
            ``creation_time``...).
        participants: Identity -> ``ParticipantInfo`` of the participants in it.
        closed: Whether the room was deleted or closed for being empty.
    """

    def __init__(self, room: models_pb.Room) -> None:
        self.room = room
        self.dispatches: dict[str, _Dispatch] = {}
        self.participants: dict[str, models_pb.ParticipantInfo] = {}
        self.has_published: set[str] = set()
        #: Identity -> job id, for agents (``agentParticpants``).
        self.agent_jobs: dict[str, str] = {}
        self.created_at = trio.current_time()
        self.first_joined_at: float | None = None
        self.last_left_at: float | None = None
        self.closed = False
        self.idle_watch: trio.CancelScope | None = None

    @property
    def name(self) -> str:
        """The room's name."""
        return self.room.name

    @property
    def sid(self) -> str:
        """The room's sid (``RM_...``)."""
        return self.room.sid


class RoomRegistry:
    """The rooms of the dev server and what they dispatch.

    Args:
        config: Server settings (default timeouts).
        agents: The agent service jobs are requested from.
        nursery: Where background work runs (idle watches, deferred terminations).
        changes: Notified on every change.
    """

    def __init__(
        self,
        *,
        config: DevServerConfig,
        agents: AgentService,
        nursery: trio.Nursery,
        changes: Changes,
    ) -> None:
        self._config = config
        self._agents = agents
        self._nursery = nursery
        self._changes = changes
        #: Open rooms by name.
        self.rooms: dict[str, ServerRoom] = {}
        #: Called with the room's name when a room closes (the media side
        #: disconnects its participants).
        self.on_room_closed: Callable[[str], Awaitable[None]] | None = None
        #: Disconnects a participant (the media side's ``RemoveParticipant``).
        self.remove_participant: Callable[[str, str], Awaitable[None]] | None = None
        agents.set_listener(self)

    # -- rooms -------------------------------------------------------------------

    def create_room(
        self,
        name: str,
        *,
        agents: Sequence[dispatch_pb.RoomAgentDispatch] = (),
        metadata: str = "",
        empty_timeout: int = 0,
        departure_timeout: int = 0,
        max_participants: int = 0,
    ) -> models_pb.Room:
        """Create a room, or return the open room of that name unchanged.

        A new room dispatches its agents at once (``agents``, or the automatic
        dispatch when empty). Timeouts of 0 take the server's defaults.

        Raises:
            ValueError: empty name, or an invalid deployment in *agents*.
        """
        if not name:
            raise ValueError("room name must not be empty")
        existing = self.rooms.get(name)
        if existing is not None:
            return _copy_room(existing.room)
        for rad in agents:
            error = rules.validate_deployment(rad.deployment)
            if error is not None:
                raise ValueError(error)
        now = time.time()
        proto = models_pb.Room(
            sid=new_guid(ROOM_PREFIX),
            name=name,
            empty_timeout=empty_timeout or round(self._config.empty_timeout),
            departure_timeout=departure_timeout or round(self._config.departure_timeout),
            max_participants=max_participants,
            creation_time=int(now),
            creation_time_ms=int(now * 1000),
            metadata=metadata,
        )
        room = ServerRoom(proto)
        self.rooms[name] = room
        logger.info("room created: %s (%s)", name, proto.sid)
        # Backward compatibility in Go: no agents listed = the automatic dispatch.
        for rad in agents or [dispatch_pb.RoomAgentDispatch()]:
            dispatch = self._add_dispatch(
                room,
                agent_name=rad.agent_name,
                metadata=rad.metadata,
                attributes=rad.attributes,
                deployment=rad.deployment,
                restart_policy=rad.restart_policy,
            )
            self._launch(room, dispatch, agent_pb.JT_ROOM)
        self._watch_idle(room)
        self._changes.notify()
        return _copy_room(proto)

    async def delete_room(self, name: str) -> None:
        """Close a room: its agents' running jobs are terminated.

        Raises:
            KeyError: no open room has that name.
        """
        room = self.rooms.get(name)
        if room is None:
            raise KeyError(f"room not found: {name!r}")
        await self._close(room, "deleted")

    async def _close(self, room: ServerRoom, why: str) -> None:
        if room.closed:
            return
        room.closed = True
        if self.rooms.get(room.name) is room:
            del self.rooms[room.name]
        if room.idle_watch is not None:
            room.idle_watch.cancel()
        logger.info("room closed (%s): %s (%s)", why, room.name, room.sid)
        self._changes.notify()
        if self.on_room_closed is not None:
            await self.on_room_closed(room.name)
        for job in list(self._agents.iter_jobs(room_sid=room.sid)):
            await self._terminate(
                job.id, rules.TerminateReason.AGENT_LEFT_ROOM, agent_pb.JSR_ROOM_CLOSED
            )

    async def _terminate(
        self, job_id: str, reason: rules.TerminateReason, state_reason: agent_pb.JobStateReason
    ) -> None:
        if self._agents.is_live(job_id):
            await self._agents.terminate_job(job_id, reason, state_reason)

    def _watch_idle(self, room: ServerRoom) -> None:
        """(Re)arm the timer that closes *room* while nobody is in it."""
        if room.idle_watch is not None:
            room.idle_watch.cancel()
            room.idle_watch = None
        if room.closed or any(
            not rules.is_dependent_participant(p) for p in room.participants.values()
        ):
            return
        if room.first_joined_at is not None and room.last_left_at is not None:
            deadline = room.last_left_at + room.room.departure_timeout
            why = "departure timeout"
        else:
            deadline = room.created_at + room.room.empty_timeout
            why = "empty timeout"
        scope = trio.CancelScope()
        room.idle_watch = scope
        self._nursery.start_soon(self._close_when_idle, room, scope, deadline, why)

    async def _close_when_idle(
        self, room: ServerRoom, scope: trio.CancelScope, deadline: float, why: str
    ) -> None:
        with scope:
            await trio.sleep_until(deadline)
        if not scope.cancelled_caught:
            await self._close(room, why)

    # -- dispatches --------------------------------------------------------------

    def _add_dispatch(
        self,
        room: ServerRoom,
        *,
        agent_name: str,
        metadata: str,
        attributes: Mapping[str, str],
        deployment: str,
        restart_policy: int = 0,
        dispatch_id: str | None = None,
    ) -> _Dispatch:
        proto = dispatch_pb.AgentDispatch(
            id=dispatch_id or new_guid(AGENT_DISPATCH_PREFIX),
            agent_name=agent_name,
            room=room.name,
            metadata=metadata,
            restart_policy=restart_policy,  # type: ignore[arg-type]
            deployment=deployment,
        )
        proto.attributes.update(attributes)
        proto.state.created_at = time.time_ns()
        dispatch = _Dispatch(proto)
        room.dispatches[proto.id] = dispatch
        return dispatch

    def create_dispatch(
        self,
        room_name: str,
        agent_name: str,
        *,
        metadata: str = "",
        attributes: Mapping[str, str] | None = None,
        deployment: str = "",
    ) -> dispatch_pb.AgentDispatch:
        """Dispatch *agent_name* to a room, creating the room if needed (``CreateDispatch``).

        Launches a ``JT_ROOM`` job, and participant/publisher jobs for the
        participants already there.

        Raises:
            ValueError: empty room name or invalid deployment.
        """
        error = rules.validate_deployment(deployment)
        if error is not None:
            raise ValueError(error)
        if room_name not in self.rooms:
            self.create_room(room_name)
        room = self.rooms[room_name]
        dispatch = self._add_dispatch(
            room,
            agent_name=agent_name,
            metadata=metadata,
            attributes=attributes or {},
            deployment=deployment,
        )
        self._launch(room, dispatch, agent_pb.JT_ROOM)
        for identity, info in room.participants.items():
            if identity in room.has_published:
                self._launch(room, dispatch, agent_pb.JT_PUBLISHER, info)
            self._launch(room, dispatch, agent_pb.JT_PARTICIPANT, info)
        self._changes.notify()
        return self._render(dispatch)

    async def delete_dispatch(self, dispatch_id: str, room_name: str) -> dispatch_pb.AgentDispatch:
        """Remove a dispatch and terminate its jobs (``DeleteAgentDispatch``).

        Jobs still being offered to workers are terminated once their launch is
        over, in the background, as Go does; the others before this returns.

        Raises:
            KeyError: no such room or dispatch.
        """
        room = self.rooms.get(room_name)
        if room is None:
            raise KeyError(f"room not found: {room_name!r}")
        dispatch = room.dispatches.pop(dispatch_id, None)
        if dispatch is None:
            raise KeyError(f"dispatch ID not found: {dispatch_id!r}")
        dispatch.proto.state.deleted_at = time.time_ns()
        self._changes.notify()
        jobs = [self._agents.jobs[job_id] for job_id in dispatch.job_ids]
        if all(job.launch_done.is_set() for job in jobs):
            await self._terminate_dispatch_jobs(jobs)
        else:
            self._nursery.start_soon(self._terminate_dispatch_jobs, jobs)
        return self._render(dispatch)

    async def _terminate_dispatch_jobs(self, jobs: list[ServerJob]) -> None:
        for job in jobs:
            await job.launch_done.wait()
        for job in jobs:
            await self._terminate(
                job.id, rules.TerminateReason.TERMINATION_REQUESTED, agent_pb.JSR_DISPATCH_DELETED
            )
            identity = job.job.state.participant_identity
            room = self.rooms.get(job.room_name)
            if identity and room is not None and identity in room.participants:
                self._nursery.start_soon(self._remove_lingering_agent, room, identity)

    async def _remove_lingering_agent(self, room: ServerRoom, identity: str) -> None:
        """Go's ``DeleteAgentDispatch``: give a terminated job's agent
        ``AGENT_LEAVE_TIMEOUT`` to leave the room, then remove it."""
        with trio.move_on_after(AGENT_LEAVE_TIMEOUT) as scope:
            await self._changes.wait_for(
                lambda: True if identity not in room.participants or room.closed else None
            )
        if scope.cancelled_caught:
            logger.info(
                "agent %s did not leave %s after %ss", identity, room.name, AGENT_LEAVE_TIMEOUT
            )
        if not room.closed and self.remove_participant is not None:
            await self.remove_participant(room.name, identity)

    def list_dispatches(
        self, room_name: str, dispatch_id: str = ""
    ) -> list[dispatch_pb.AgentDispatch]:
        """The room's dispatches (``ListDispatch``), with their launched jobs' current state.

        Raises:
            KeyError: no such room.
        """
        room = self.rooms.get(room_name)
        if room is None:
            raise KeyError(f"room not found: {room_name!r}")
        return [
            self._render(d)
            for d in room.dispatches.values()
            if not dispatch_id or d.proto.id == dispatch_id
        ]

    def _render(self, dispatch: _Dispatch) -> dispatch_pb.AgentDispatch:
        proto = dispatch_pb.AgentDispatch()
        proto.CopyFrom(dispatch.proto)
        for job_id in dispatch.job_ids:
            job = self._agents.jobs.get(job_id)
            if job is not None and job.launched:
                proto.state.jobs.add().CopyFrom(job.job)
        return proto

    def _launch(
        self,
        room: ServerRoom,
        dispatch: _Dispatch,
        job_type: agent_pb.JobType,
        participant: models_pb.ParticipantInfo | None = None,
    ) -> None:
        if participant is not None and rules.is_dependent_participant(participant):
            return
        request = rules.JobRequest(
            job_type=job_type,
            room=_copy_room(room.room),
            agent_name=dispatch.proto.agent_name,
            dispatch_id=dispatch.proto.id,
            metadata=dispatch.proto.metadata,
            deployment=dispatch.proto.deployment,
            attributes=dict(dispatch.proto.attributes),
            participant=participant,
        )
        for job in self._agents.launch_jobs(request):
            dispatch.job_ids.append(job.id)

    def job_launched(self, job: ServerJob) -> None:
        """A worker took *job* (``handleNewJobs``): remember its agent's identity."""
        room = self.rooms.get(job.room_name)
        if room is None or room.sid != job.job.room.sid or room.closed:
            # The room went away while the job was being offered.
            if job.status == agent_pb.JS_RUNNING:
                self._nursery.start_soon(
                    self._terminate,
                    job.id,
                    rules.TerminateReason.AGENT_LEFT_ROOM,
                    agent_pb.JSR_ROOM_CLOSED,
                )
            return
        if job.job.state.participant_identity:
            room.agent_jobs[job.job.state.participant_identity] = job.id

    # -- hooks for the media side ------------------------------------------------

    def on_participant_joined(self, room_name: str, participant: models_pb.ParticipantInfo) -> None:
        """A participant joined: launch each dispatch's ``JT_PARTICIPANT`` job.

        Agents and egress (dependent participants) launch nothing and do not keep
        the room open. Unknown rooms are ignored.
        """
        room = self.rooms.get(room_name)
        if room is None:
            return
        info = models_pb.ParticipantInfo()
        info.CopyFrom(participant)
        room.participants[info.identity] = info
        if not rules.is_dependent_participant(info) and room.first_joined_at is None:
            room.first_joined_at = trio.current_time()
        for dispatch in list(room.dispatches.values()):
            self._launch(room, dispatch, agent_pb.JT_PARTICIPANT, info)
        self._watch_idle(room)
        self._changes.notify()

    def on_track_published(self, room_name: str, participant: models_pb.ParticipantInfo) -> None:
        """A participant published a track: on its first, launch ``JT_PUBLISHER`` jobs."""
        room = self.rooms.get(room_name)
        if room is None or participant.identity in room.has_published:
            return
        room.has_published.add(participant.identity)
        info = models_pb.ParticipantInfo()
        info.CopyFrom(participant)
        room.participants[info.identity] = info
        for dispatch in list(room.dispatches.values()):
            self._launch(room, dispatch, agent_pb.JT_PUBLISHER, info)
        self._changes.notify()

    def on_participant_updated(
        self, room_name: str, participant: models_pb.ParticipantInfo
    ) -> None:
        """A participant's info changed (metadata, tracks, mute...): keep a copy."""
        room = self.rooms.get(room_name)
        if room is None or participant.identity not in room.participants:
            return
        info = models_pb.ParticipantInfo()
        info.CopyFrom(participant)
        room.participants[info.identity] = info
        self._changes.notify()

    def on_participant_left(self, room_name: str, identity: str) -> None:
        """A participant left. If it was an agent, its job ends as failed
        ("agent worker left the room"), as Go's ``RemoveParticipant`` does."""
        room = self.rooms.get(room_name)
        if room is None or room.participants.pop(identity, None) is None:
            return
        room.has_published.discard(identity)
        room.last_left_at = trio.current_time()
        job_id = room.agent_jobs.pop(identity, None)
        if job_id is not None:
            self._nursery.start_soon(
                self._terminate,
                job_id,
                rules.TerminateReason.AGENT_LEFT_ROOM,
                agent_pb.JSR_UNSPECIFIED,
            )
        self._watch_idle(room)
        self._changes.notify()


def _copy_room(room: models_pb.Room) -> models_pb.Room:
    copy = models_pb.Room()
    copy.CopyFrom(room)
    return copy
