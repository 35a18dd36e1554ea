"""The dev server: one HTTP/WebSocket port, its components, and the test-facing API."""

from __future__ import annotations

import logging
import random
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import attrs
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve
from livekit.protocol import agent as agent_pb
from livekit.protocol import agent_dispatch as dispatch_pb
from livekit.protocol import models as models_pb

from .._exceptions import LKAgentError
from .._room import AutoSubscribe, Room, open_room
from . import _dispatch as rules
from ._agent_service import AgentService, ServerJob, ServerWorker
from ._asgi import AGENT_PATH, DevServerApp
from ._auth import participant_access_token, quiet_short_keys
from ._config import DevServerConfig
from ._ids import NODE_PREFIX, new_guid
from ._peer import DataRecord
from ._rooms import RoomRegistry, ServerRoom
from ._roomservice import server_api
from ._signal import RtcService, apply_participant_update
from ._state import Changes, Counters, Faults
from ._tracksettings import TrackSettingsRecord
from ._twirp import TwirpServer

__all__ = [
    "DevServer",
    "DevServerStatistics",
    "JobEndedError",
    "open_devserver",
    "serve_devserver",
]

logger = logging.getLogger("trio_lkagent.devserver")
T = TypeVar("T")

#: ``ServerInfo.version`` the dev server announces.
SERVER_VERSION = "1.13.5-trio-lkagent-devserver"
#: ``ServerInfo.protocol`` (the Go server's ``types.CurrentProtocol``).
SIGNAL_PROTOCOL = 17
#: ``ServerInfo.agent_protocol`` (``agent.CurrentProtocol``).
AGENT_PROTOCOL = 1


class JobEndedError(LKAgentError):
    """A job ended without reaching the status a ``wait_*`` call waited for.

    Attributes:
        job: The ended job.
    """

    def __init__(self, message: str, job: ServerJob) -> None:
        super().__init__(message)
        self.job = job


@attrs.frozen(kw_only=True)
class DevServerStatistics:
    """A snapshot of the dev server's counters (see ``DevServer.statistics()``)."""

    workers_connected: int
    workers_registered: int
    rooms: int
    jobs: int
    #: ``"JS_RUNNING"`` -> number of jobs with that status now.
    jobs_by_status: Mapping[str, int]
    upgrades_accepted: int
    upgrades_rejected: int
    registrations: int
    frames_in: int
    frames_out: int
    bytes_in: int
    bytes_out: int
    malformed_frames: int
    protocol_violations: int
    ignored_messages: int
    pings: int
    pongs: int
    job_requests: int
    job_requests_failed: int
    terminations_sent: int


def _status_reached(job: ServerJob, status: agent_pb.JobStatus | None) -> bool:
    """Whether *job* has reached *status*; raises if it never will."""
    if status is None or status in job.status_history:
        return True
    if rules.job_status_is_ended(status) and job.ended:
        return True
    if job.ended:
        raise JobEndedError(
            f"job {job.id} ended {agent_pb.JobStatus.Name(job.status)}"
            f" ({job.job.state.error or 'no error'}) without reaching"
            f" {agent_pb.JobStatus.Name(status)}",
            job,
        )
    return False


class DevServer:
    """A local LiveKit server for tests and development (agent service and rooms).

    Usually made by :func:`open_devserver`. The lower tier takes the caller's
    nursery::

        server = DevServer(DevServerConfig(), nursery)
        await server.start()
        ...
        await server.aclose()

    Args:
        config: Settings.
        nursery: Where every task of the server runs (HTTP server, job requests,
            room timers); the server is gone when it is cancelled.
        rng: Random source of worker selection; pass ``random.Random(seed)`` for
            reproducible tests.

    Attributes:
        config: The settings.
        faults: Fault injection switches (:class:`Faults`), live.
        workers: Worker id -> :class:`ServerWorker`, every worker that registered
            (reconnections are new entries).
        jobs: Job id -> :class:`ServerJob`, in creation order.
        rooms: Room name -> :class:`ServerRoom`, open rooms.
    """

    def __init__(
        self, config: DevServerConfig, nursery: trio.Nursery, *, rng: random.Random | None = None
    ) -> None:
        self.config = config
        self.faults = Faults()
        self._nursery = nursery
        self._changes = Changes()
        self._counters = Counters()
        self._server_info = models_pb.ServerInfo(
            edition=models_pb.ServerInfo.Standard,
            version=SERVER_VERSION,
            protocol=SIGNAL_PROTOCOL,
            agent_protocol=AGENT_PROTOCOL,
            region=config.region,
            node_id=config.node_id or new_guid(NODE_PREFIX),
        )
        self._agents = AgentService(
            config=config,
            nursery=nursery,
            server_info=self._server_info,
            rng=rng if rng is not None else random.Random(),
            faults=self.faults,
            changes=self._changes,
            counters=self._counters,
        )
        self._rooms = RoomRegistry(
            config=config, agents=self._agents, nursery=nursery, changes=self._changes
        )
        self._rtc = RtcService(nursery=nursery, registry=self._rooms, server_info=self._server_info)
        self._rooms.on_room_closed = self._rtc.close_room
        self._rooms.remove_participant = self.remove_participant
        self._app = DevServerApp(
            keys={config.api_key: config.api_secret},
            agents=self._agents,
            faults=self.faults,
            counters=self._counters,
            twirp=TwirpServer(keys={config.api_key: config.api_secret}, services=server_api(self)),
            rtc=self._rtc,
        )
        self._url = ""
        self._started = False
        self._closed = False
        self._shutdown = trio.Event()
        self._http_scope = trio.CancelScope()
        self._http_done = trio.Event()

    # -- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        """Bind the port and start serving; returns once connections are accepted.

        Raises:
            OSError: the address cannot be bound.
            trio.BusyResourceError: already started.
        """
        if self._started:
            raise trio.BusyResourceError("the dev server is already started")
        self._started = True
        binds: list[str] = await self._nursery.start(self._serve_http)
        self._url = binds[0]
        logger.info("dev server listening on %s", self._url)

    async def _serve_http(self, *, task_status: trio.TaskStatus[list[str]]) -> None:
        host = self.config.host
        bind_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        hconfig = HypercornConfig()
        hconfig.bind = [f"{bind_host}:{self.config.port}"]
        hconfig.websocket_max_message_size = self.config.max_frame_size
        hconfig.websocket_ping_interval = self.config.ws_ping_interval
        hconfig.graceful_timeout = self.config.shutdown_timeout / 2
        hconfig.accesslog = None
        hconfig.errorlog = logging.getLogger("trio_lkagent.devserver.http")
        try:
            with self._http_scope:
                await hypercorn_serve(
                    cast(Any, self._app),
                    hconfig,
                    shutdown_trigger=self._shutdown.wait,
                    task_status=task_status,
                )
        finally:
            self._http_done.set()

    async def aclose(self) -> None:
        """Close every connection and stop the server; idempotent, always completes.

        Workers get a close frame (1001) and are waited for; HTTP requests in
        progress are waited for; then the HTTP server is cancelled rather than
        given hypercorn's graceful period (a closed WebSocket's ping task would
        hold it for up to ``ws_ping_interval``). Runs shielded and bounded by
        ``config.shutdown_timeout``; the server's nursery is then cancelled (job
        requests, timers).
        """
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            self._app.closing = True
            with trio.move_on_after(self.config.shutdown_timeout) as scope:
                await self._agents.close_all(1001, "server shutting down")
                await self._rtc.close_all()
                await self._app.wait_idle()
            if scope.cancelled_caught:
                logger.warning("dev server shutdown timed out; cutting remaining connections")
            self._shutdown.set()
            self._http_scope.cancel()
            if self._started:
                await self._http_done.wait()
        self._nursery.cancel_scope.cancel()

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the dev server is closed")

    # -- addresses ---------------------------------------------------------------

    @property
    def url(self) -> str:
        """``http://host:port`` of the server (workers connect to ``ws://host:port/agent``)."""
        return self._url

    @property
    def agent_url(self) -> str:
        """``ws://host:port/agent``."""
        return "ws" + self._url.removeprefix("http") + AGENT_PATH

    @property
    def api_key(self) -> str:
        """The API key tokens must be signed with."""
        return self.config.api_key

    @property
    def api_secret(self) -> str:
        """Its secret."""
        return self.config.api_secret

    def create_participant_token(
        self,
        room: str,
        identity: str,
        *,
        name: str = "",
        metadata: str = "",
        attributes: Mapping[str, str] | None = None,
        kind: str | None = None,
    ) -> str:
        """A join token for *room* signed with the server's key (``livekit.api.AccessToken``).

        Args:
            room: The room to join (created on join if needed).
            identity: The participant's identity.
            name: Display name.
            metadata: Participant metadata.
            attributes: Participant attributes.
            kind: ``"standard"`` (default), ``"agent"``, ``"sip"``, ...

        Returns:
            The JWT, for ``rtc.Room.connect(server.url, token)``.
        """
        token = participant_access_token(
            self.api_key,
            self.api_secret,
            room,
            identity,
            name=name,
            metadata=metadata,
            attributes=attributes,
            kind=kind,
        )
        with quiet_short_keys():
            return token.to_jwt()

    @asynccontextmanager
    async def open_participant(
        self,
        room: str,
        identity: str,
        *,
        name: str = "",
        metadata: str = "",
        attributes: Mapping[str, str] | None = None,
        kind: str | None = None,
        auto_subscribe: AutoSubscribe = AutoSubscribe.SUBSCRIBE_ALL,
    ) -> AsyncIterator[Room]:
        """Join *room* as a simulated participant for the duration of the block.

        It is a real ``livekit.rtc`` client over WebRTC, driven from Trio with
        this package's :class:`~trio_lkagent.Room`: publish audio from numpy
        (``room.publish_audio``), send data (``room.publish_data``), read events;
        leaving the block leaves the room.

        Example::

            async with server.open_participant("demo", "alice") as alice:
                async with alice.publish_audio(sample_rate=48000) as mic:
                    await mic.write(tone)
                await alice.publish_data(b"hello", topic="chat")

        Args:
            room: The room (created on join if needed).
            identity: The participant's identity.
            name: Display name.
            metadata: Participant metadata.
            attributes: Participant attributes.
            kind: ``"standard"`` (default), ``"sip"``, ``"agent"``, ...
            auto_subscribe: Which remote tracks it subscribes to.
        """
        token = self.create_participant_token(
            room, identity, name=name, metadata=metadata, attributes=attributes, kind=kind
        )
        async with open_room(self.url, token, auto_subscribe=auto_subscribe) as joined:
            yield joined

    # -- state -------------------------------------------------------------------

    @property
    def workers(self) -> dict[str, ServerWorker]:
        """Worker id -> worker, for every registration (connected or not)."""
        return self._agents.workers

    @property
    def jobs(self) -> dict[str, ServerJob]:
        """Job id -> job, in creation order."""
        return self._agents.jobs

    @property
    def rooms(self) -> dict[str, ServerRoom]:
        """Room name -> open room."""
        return self._rooms.rooms

    @property
    def dispatch_notes(self) -> list[str]:
        """Why dispatches made no job, oldest first (also logged at WARNING): "no
        worker registered for agent 'x' (registered: 'y')", "job type mismatch ...",
        "job AJ_... rejected by worker AW_..."; the last 1000."""
        return list(self._agents.notes)

    def statistics(self) -> DevServerStatistics:
        """A snapshot of the server's counters and current state."""
        by_status: dict[str, int] = {}
        for job in self.jobs.values():
            name = agent_pb.JobStatus.Name(job.status)
            by_status[name] = by_status.get(name, 0) + 1
        return DevServerStatistics(
            workers_connected=sum(1 for w in self.workers.values() if w.connected),
            workers_registered=len(self.workers),
            rooms=len(self.rooms),
            jobs=len(self.jobs),
            jobs_by_status=by_status,
            **attrs.asdict(self._counters),
        )

    # -- waiting -----------------------------------------------------------------

    async def wait_for_worker(
        self,
        agent_name: str | None = None,
        count: int = 1,
        *,
        namespace: str | None = None,
        job_type: agent_pb.JobType | None = None,
    ) -> ServerWorker:
        """Wait until *count* connected workers match, and return the newest of them.

        Args:
            agent_name: Only workers registered with this agent name (None: any).
            count: How many matching workers must be connected.
            namespace: Only this namespace (None: any).
            job_type: Only this job type (None: any).

        Returns:
            The most recently registered matching worker.
        """

        def ready() -> ServerWorker | None:
            matching = [
                w
                for w in self.workers.values()
                if w.connected
                and (agent_name is None or w.agent_name == agent_name)
                and (namespace is None or w.namespace == namespace)
                and (job_type is None or w.job_type == job_type)
            ]
            return matching[-1] if len(matching) >= count else None

        return await self._changes.wait_for(ready)

    async def wait_for_job(
        self,
        *,
        agent_name: str | None = None,
        room: str | None = None,
        status: agent_pb.JobStatus | None = None,
        dispatch_id: str | None = None,
    ) -> ServerJob:
        """Wait for the first job (in creation order) matching the filters to reach *status*.

        Args:
            agent_name: Only jobs for this agent name.
            room: Only jobs in this room.
            status: Wait until the job has had this status (it is in its
                ``status_history``: ``JS_RUNNING`` means the worker reported the
                job running); an ended status (``JS_SUCCESS``, ``JS_FAILED``) is
                satisfied by any end. None: return as soon as a matching job exists.
            dispatch_id: Only jobs of this dispatch.

        Returns:
            The job.

        Raises:
            JobEndedError: the job ended without reaching *status*.
        """

        def ready() -> ServerJob | None:
            for job in self.jobs.values():
                if (
                    (agent_name is None or job.agent_name == agent_name)
                    and (room is None or job.room_name == room)
                    and (dispatch_id is None or job.dispatch_id == dispatch_id)
                ):
                    return job if _status_reached(job, status) else None
            return None

        return await self._changes.wait_for(ready)

    async def wait_until(self, predicate: Callable[[], T | None]) -> T:
        """Wait until *predicate* (called after every change of the server's state:
        workers, jobs, rooms, participants) returns something other than None.

        Example: ``await server.wait_until(lambda: job.late_updates or None)``.
        """
        return await self._changes.wait_for(predicate)

    async def wait_job_status(self, job_id: str, status: agent_pb.JobStatus) -> ServerJob:
        """Wait until job *job_id* has reached *status* (see :meth:`wait_for_job`).

        Raises:
            KeyError: no such job.
            JobEndedError: the job ended without reaching *status*.
        """
        job = self.jobs[job_id]
        return await self._changes.wait_for(lambda: job if _status_reached(job, status) else None)

    # -- rooms and dispatches (what RoomService / AgentDispatchService will call) ----

    async def create_room(
        self,
        name: str,
        agents: Sequence[dispatch_pb.RoomAgentDispatch] | None = None,
        metadata: str = "",
        *,
        empty_timeout: int = 0,
        departure_timeout: int = 0,
        max_participants: int = 0,
    ) -> models_pb.Room:
        """Create a room (or get the open one of that name) and dispatch its agents.

        Without *agents* the room gets the automatic dispatch (workers registered
        with an empty agent name), as in Go. Dispatching happens in the background.

        Args:
            name: Room name.
            agents: ``RoomAgentDispatch`` entries: explicit dispatches.
            metadata: Room metadata.
            empty_timeout: Seconds before an empty room closes (0: server default).
            departure_timeout: Seconds after the last participant left (0: default).
            max_participants: 0 for no limit.

        Returns:
            The ``Room`` proto.

        Raises:
            ValueError: empty name or invalid deployment.
            trio.ClosedResourceError: the server is closed.
        """
        await trio.lowlevel.checkpoint()
        self._check_open()
        return self._rooms.create_room(
            name,
            agents=agents or (),
            metadata=metadata,
            empty_timeout=empty_timeout,
            departure_timeout=departure_timeout,
            max_participants=max_participants,
        )

    async def delete_room(self, name: str) -> None:
        """Close a room; the running jobs in it are terminated.

        Raises:
            KeyError: no open room of that name.
        """
        await trio.lowlevel.checkpoint()
        await self._rooms.delete_room(name)

    async def create_dispatch(
        self,
        room: str,
        agent_name: str,
        metadata: str = "",
        *,
        attributes: Mapping[str, str] | None = None,
        deployment: str = "",
    ) -> dispatch_pb.AgentDispatch:
        """Dispatch an agent to a room, creating the room if needed (``CreateDispatch``).

        Returns at once; the job request runs in the background (watch it with
        :meth:`wait_for_job`). A dispatch for an agent name no worker registered
        creates no job, as in Go.

        Returns:
            The ``AgentDispatch`` proto (``id`` ``AD_...``).

        Raises:
            ValueError: empty room name or invalid deployment.
            trio.ClosedResourceError: the server is closed.
        """
        await trio.lowlevel.checkpoint()
        self._check_open()
        return self._rooms.create_dispatch(
            room, agent_name, metadata=metadata, attributes=attributes, deployment=deployment
        )

    async def delete_dispatch(self, dispatch_id: str, room: str) -> dispatch_pb.AgentDispatch:
        """Delete a dispatch; its running jobs are terminated.

        Raises:
            KeyError: no such room or dispatch.
        """
        await trio.lowlevel.checkpoint()
        return await self._rooms.delete_dispatch(dispatch_id, room)

    async def list_dispatches(self, room: str) -> list[dispatch_pb.AgentDispatch]:
        """The room's dispatches with their jobs (``ListDispatch``).

        Raises:
            KeyError: no such room.
        """
        await trio.lowlevel.checkpoint()
        return self._rooms.list_dispatches(room)

    async def terminate_job(self, job_id: str) -> agent_pb.JobState:
        """End a running job as an operator would: the worker gets ``JobTermination``.

        The job stays ``JS_RUNNING`` until the worker reports how it ended (or
        disconnects: then ``JS_SUCCESS``, Go's record for this case).

        Returns:
            The job's state when the termination was sent.

        Raises:
            KeyError: the job is unknown, ended, already terminated, or its worker
                is gone.
        """
        return await self._agents.terminate_job(job_id, rules.TerminateReason.TERMINATION_REQUESTED)

    # -- hooks for the media side (the rooms part will call these) ------------------

    def on_participant_joined(self, room: str, participant: models_pb.ParticipantInfo) -> None:
        """A participant joined *room*: dispatch ``JT_PARTICIPANT`` jobs."""
        self._rooms.on_participant_joined(room, participant)

    def on_track_published(self, room: str, participant: models_pb.ParticipantInfo) -> None:
        """*participant* published a track: on its first, dispatch ``JT_PUBLISHER`` jobs."""
        self._rooms.on_track_published(room, participant)

    def on_participant_left(self, room: str, identity: str) -> None:
        """A participant left; an agent leaving ends its job as failed."""
        self._rooms.on_participant_left(room, identity)

    async def remove_participant(self, room: str, identity: str) -> None:
        """Disconnect a participant (``RemoveParticipant``): a connected client gets a
        ``leave`` (``PARTICIPANT_REMOVED``); then :meth:`on_participant_left`."""
        await self._rtc.remove_participant(room, identity)
        self._rooms.on_participant_left(room, identity)

    def update_participant(
        self,
        room: str,
        identity: str,
        *,
        metadata: str = "",
        name: str = "",
        attributes: Mapping[str, str] | None = None,
        permission: models_pb.ParticipantPermission | None = None,
    ) -> models_pb.ParticipantInfo:
        """``UpdateParticipant``: change a participant's metadata, name, attributes
        (an empty value deletes the key) or permission; the room is told.

        Raises:
            KeyError: no such room or participant.
        """
        connected = self._rtc.update_participant(
            room,
            identity,
            metadata=metadata,
            name=name,
            attributes=attributes,
            permission=permission,
        )
        if connected is not None:
            return _copy(connected)
        info = self._participant(room, identity)
        apply_participant_update(
            info, metadata=metadata, name=name, attributes=attributes, permission=permission
        )
        self._changes.notify()
        return _copy(info)

    def mute_track(
        self, room: str, identity: str, track_sid: str, muted: bool
    ) -> models_pb.TrackInfo:
        """``MutePublishedTrack``: the publisher's client is told to (un)mute.

        Raises:
            KeyError: no such room, participant or track.
        """
        track = self._rtc.mute_track(room, identity, track_sid, muted)
        if track is None:
            for candidate in self._participant(room, identity).tracks:
                if candidate.sid == track_sid:
                    candidate.muted = muted
                    track = candidate
                    break
            else:
                raise KeyError(f"track not found: {track_sid!r}")
        result = models_pb.TrackInfo()
        result.CopyFrom(track)
        return result

    def update_room_metadata(self, room: str, metadata: str) -> models_pb.Room:
        """``UpdateRoomMetadata``: every participant gets a room update.

        Raises:
            KeyError: no such room.
        """
        server_room = self._rooms.rooms.get(room)
        if server_room is None:
            raise KeyError(f"room not found: {room!r}")
        server_room.room.metadata = metadata
        self._rtc.update_room_metadata(room, metadata)
        self._changes.notify()
        result = models_pb.Room()
        result.CopyFrom(server_room.room)
        return result

    async def send_data(
        self,
        room: str,
        payload: bytes,
        *,
        reliable: bool = True,
        topic: str | None = None,
        destination_identities: Sequence[str] = (),
    ) -> None:
        """``SendData``: deliver *payload* to the room's participants from the server.

        Raises:
            KeyError: no such room.
        """
        if room not in self._rooms.rooms:
            raise KeyError(f"room not found: {room!r}")
        packet = models_pb.DataPacket(
            kind=models_pb.DataPacket.RELIABLE if reliable else models_pb.DataPacket.LOSSY,
            destination_identities=list(destination_identities),
            user=models_pb.UserPacket(
                payload=payload, topic=topic, destination_identities=list(destination_identities)
            ),
        )
        await self._rtc.send_data(room, packet)

    def data_received(self, room: str) -> list[DataRecord]:
        """The data packets relayed in *room* (participants' and ``SendData``),
        oldest first; at most the last 10 000."""
        return self._rtc.data_log(room)

    def track_settings(self, room: str) -> list[TrackSettingsRecord]:
        """The ``UpdateTrackSettings`` subscribers in *room* sent (dimensions, layer,
        pause), one record per track, oldest first; at most the last 1000. ``disabled``
        is honoured (the track is paused); layer and dimensions are only recorded:
        the dev server relays a single layer."""
        return self._rtc.track_settings.get(room)

    async def wait_for_track_settings(
        self, room: str, predicate: Callable[[TrackSettingsRecord], bool]
    ) -> TrackSettingsRecord:
        """Wait for a track-settings request in *room* matching *predicate*; return it.

        Requests recorded before the call count too (the newest match is returned).
        """

        def found() -> TrackSettingsRecord | None:
            matching = [r for r in self._rtc.track_settings.get(room) if predicate(r)]
            return matching[-1] if matching else None

        return await self._rtc.track_settings.wait_for(found)

    def _participant(self, room: str, identity: str) -> models_pb.ParticipantInfo:
        server_room = self._rooms.rooms.get(room)
        info = server_room.participants.get(identity) if server_room is not None else None
        if info is None:
            raise KeyError(f"participant not found: {identity!r} in {room!r}")
        return info

    # -- fault hooks ---------------------------------------------------------------

    async def drop_worker(self, worker_id: str, code: int | None = None) -> None:
        """Close a worker's connection and wait until the server has let it go.

        Args:
            worker_id: The worker.
            code: A close code to send; None cuts the TCP connection without a
                close frame (as the Go server does on errors).

        Raises:
            KeyError: unknown worker.
        """
        await self._agents.drop(worker_id, code, "dropped by the dev server")

    async def send_raw(self, worker_id: str, data: bytes | str) -> None:
        """Send *data* to a worker as one frame (binary for bytes, text for str).

        Raises:
            KeyError: unknown worker.
            trio.ClosedResourceError: its connection is closed.
        """
        if not await self._agents.send_raw(worker_id, data):
            raise trio.ClosedResourceError(f"the connection of {worker_id} is closed")

    async def send_message(self, worker_id: str, message: agent_pb.ServerMessage) -> None:
        """Send any ``ServerMessage`` to a worker in its current wire format.

        Raises:
            KeyError: unknown worker.
            trio.ClosedResourceError: its connection is closed.
        """
        if not await self._agents.workers[worker_id].send(message):
            raise trio.ClosedResourceError(f"the connection of {worker_id} is closed")


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterable[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


@asynccontextmanager
async def open_devserver(
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str = "devkey",
    api_secret: str = "secret",
    *,
    rng: random.Random | None = None,
    **options: Any,
) -> AsyncIterator[DevServer]:
    """Run a dev server for the duration of the block.

    Example::

        async with open_devserver(api_key="devkey", api_secret="secret") as server:
            worker = await server.wait_for_worker(agent_name="x")
            await server.create_dispatch("room-1", "x")
            job = await server.wait_for_job(room="room-1", status=agent_pb.JS_RUNNING)

    Args:
        host: Interface to bind.
        port: TCP port; 0 lets the OS choose.
        api_key: API key tokens are signed with.
        api_secret: Its secret.
        rng: Random source of worker selection (seed it for reproducible tests).
        **options: Any other :class:`DevServerConfig` attribute
            (``register_timeout``, ``availability_timeout``, ``max_frame_size``,
            ``ws_ping_interval``, ``empty_timeout``, ...).

    Yields:
        The started server. Leaving the block closes every socket and task.

    Raises:
        ConfigurationError: an invalid option.
        OSError: the address cannot be bound.
    """
    config = DevServerConfig(
        host=host, port=port, api_key=api_key, api_secret=api_secret, **options
    )
    error: BaseException | None = None
    try:
        async with trio.open_nursery() as outer:
            # The server's tasks get a nursery of their own, so that closing the
            # server (even from inside the block) never cancels the block's body.
            services: trio.Nursery = await outer.start(_hold_nursery)
            server = DevServer(config, services, rng=rng)
            try:
                await server.start()
                yield server
            finally:
                await server.aclose()
    except BaseExceptionGroup as group:
        # Hand the body's own exception back unwrapped (strict exception groups).
        leaves = list(_leaves(group))
        if len(leaves) != 1:
            raise
        error = leaves[0]
    if error is not None:
        raise error


def _copy(info: models_pb.ParticipantInfo) -> models_pb.ParticipantInfo:
    copy = models_pb.ParticipantInfo()
    copy.CopyFrom(info)
    return copy


async def _hold_nursery(*, task_status: trio.TaskStatus[trio.Nursery]) -> None:
    async with trio.open_nursery() as nursery:
        task_status.started(nursery)
        await trio.sleep_forever()


async def serve_devserver(
    host: str = "127.0.0.1",
    port: int = 0,
    api_key: str = "devkey",
    api_secret: str = "secret",
    *,
    rng: random.Random | None = None,
    task_status: trio.TaskStatus[DevServer] = trio.TASK_STATUS_IGNORED,
    **options: Any,
) -> None:
    """Run a dev server until cancelled (``nursery.start(serve_devserver)`` hands it back).

    Args:
        host: Interface to bind.
        port: TCP port; 0 lets the OS choose.
        api_key: API key tokens are signed with.
        api_secret: Its secret.
        rng: Random source of worker selection.
        task_status: Receives the started :class:`DevServer`.
        **options: Any other :class:`DevServerConfig` attribute.
    """
    async with open_devserver(host, port, api_key, api_secret, rng=rng, **options) as server:
        task_status.started(server)
        await trio.sleep_forever()
