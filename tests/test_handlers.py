"""Handler-style agents end to end: a worker running a handler, real ``livekit.rtc`` clients.

Each test runs a :class:`~trio_lkagent.Worker` built from a handler object against
the dev server, and drives the room with plain ``livekit.rtc`` clients (the helpers
of ``test_room_e2e``), so every hook is called for what a real participant did.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from livekit import api as lkapi
from livekit import rtc
from livekit.protocol import agent as agent_pb

from trio_lkagent import AutoSubscribe, JobContext, JobRequest, JobType, Worker
from trio_lkagent._bridge import AsyncioBridge, open_bridge
from trio_lkagent.devserver import DevServer
from trio_lkagent.events import TrackPublished
from trio_lkagent.handlers import AutoDisconnect, BaseHandler, SimpleHandler

from .conftest import worker_options
from .test_room_e2e import SAFETY_TIMEOUT, client_microphone, open_client

pytestmark = pytest.mark.skipif(
    not hasattr(DevServer, "create_participant_token"), reason="no WebRTC rooms"
)


def token(server: DevServer, room: str, identity: str) -> str:
    """A join token that may also update its own metadata."""
    return (
        lkapi.AccessToken(server.api_key, server.api_secret)
        .with_identity(identity)
        .with_grants(lkapi.VideoGrants(room_join=True, room=room, can_update_own_metadata=True))
        .to_jwt()
    )


class Recorder(BaseHandler):
    """Records every hook call as a tuple; wakes waiters on each one."""

    def __init__(self, *, auto_disconnect: AutoDisconnect | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.ctx: JobContext | None = None
        self.auto_disconnect = auto_disconnect
        self._changed = trio.Event()

    def record(self, *call: Any) -> None:
        self.calls.append(call)
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[list[tuple[Any, ...]]], bool]) -> None:
        with trio.fail_after(SAFETY_TIMEOUT):
            while not predicate(self.calls):
                await self._changed.wait()

    def names(self) -> list[str]:
        return [call[0] for call in self.calls]

    async def on_job_request(self, req: JobRequest) -> None:
        self.record("request", req.job_type)
        await req.accept(identity="recorder", auto_disconnect=self.auto_disconnect)

    async def on_job_assigned(self, ctx: JobContext) -> None:
        self.ctx = ctx
        self.record("assigned", ctx.room.local_participant.identity)

    async def on_job_terminated(self, ctx: JobContext, reason: str) -> None:
        # Still in the room: the handler can say goodbye.
        self.record("terminated", reason, ctx.room.local_participant.identity)

    async def on_participant_joined(
        self, ctx: JobContext, participant: rtc.RemoteParticipant
    ) -> None:
        self.record("joined", participant.identity)

    async def on_participant_left(
        self, ctx: JobContext, participant: rtc.RemoteParticipant
    ) -> None:
        self.record("left", participant.identity)

    async def on_track_published(
        self,
        ctx: JobContext,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        self.record("published", participant.identity, publication.name)

    async def on_track_unpublished(
        self,
        ctx: JobContext,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        self.record("unpublished", participant.identity, publication.name)

    async def on_track_subscribed(
        self,
        ctx: JobContext,
        track: rtc.RemoteTrack,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        self.record("subscribed", participant.identity, track.kind)

    async def on_track_unsubscribed(
        self,
        ctx: JobContext,
        track: rtc.RemoteTrack | None,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        self.record("unsubscribed", participant.identity)

    async def on_data_received(
        self,
        ctx: JobContext,
        data: bytes,
        participant: rtc.RemoteParticipant | None,
        topic: str,
    ) -> None:
        self.record("data", participant.identity if participant else "", data, topic)

    async def on_speaking_changed(
        self, ctx: JobContext, participant: rtc.Participant, speaking: bool
    ) -> None:
        self.record("speaking", participant.identity, speaking)

    async def on_connection_quality_changed(
        self, ctx: JobContext, participant: rtc.Participant | None, quality: int
    ) -> None:
        self.record("quality", participant.identity if participant else "", quality)

    async def on_metadata_changed(
        self, ctx: JobContext, participant: rtc.Participant, old_metadata: str, metadata: str
    ) -> None:
        self.record("metadata", participant.identity, old_metadata, metadata)


@asynccontextmanager
async def serving(
    server: DevServer, agent: Any, room: str | None = None, **options: Any
) -> AsyncIterator[tuple[Worker, AsyncioBridge]]:
    """A worker running *agent*, dispatched to *room* (if given), and a bridge for clients."""
    worker = Worker(agent, worker_options(server, **options))
    async with open_bridge() as bridge, trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        if room is not None:
            await server.create_dispatch(room, "test-agent")
            with trio.fail_after(SAFETY_TIMEOUT):
                await server.wait_for_job(room=room, status=agent_pb.JS_RUNNING)
        yield worker, bridge
        worker.drain()


async def wait_succeeded(server: DevServer, worker: Worker, count: int = 1) -> None:
    """Until *worker* has ended *count* jobs (its final report changes the server's state)."""

    def ended() -> bool | None:
        stats = worker.statistics()
        return True if stats.jobs_succeeded + stats.jobs_failed >= count else None

    with trio.fail_after(SAFETY_TIMEOUT):
        await server.wait_until(ended)


def agent_in_room(server: DevServer, room: str, identity: str) -> bool:
    state = server.rooms.get(room)
    return state is not None and identity in state.participants


# ------------------------------------------------------------------ hooks, in order


async def test_every_hook_in_event_order_then_auto_disconnect(server: DevServer) -> None:
    recorder = Recorder(auto_disconnect=AutoDisconnect(grace=0.2))
    async with serving(server, recorder, "h-order") as (worker, bridge):
        await recorder.wait_for(lambda calls: ("assigned", "recorder") in calls)
        async with open_client(bridge, server.url, token(server, "h-order", "alice")) as alice:
            await recorder.wait_for(lambda calls: ("joined", "alice") in calls)
            async with client_microphone(alice):
                await recorder.wait_for(lambda calls: ("subscribed", "alice", 1) in calls)
                local = alice.room.local_participant
                await bridge.run(functools.partial(local.publish_data, b"hi", topic="t"))
                # Data and signalling are separate paths: let the data land first.
                await recorder.wait_for(lambda calls: "data" in [c[0] for c in calls])
                await bridge.run(local.set_metadata, "busy")
                await recorder.wait_for(lambda calls: "metadata" in [c[0] for c in calls])
            await recorder.wait_for(lambda calls: "unpublished" in [c[0] for c in calls])
        # The last (only) participant left: after the grace the job ends by itself.
        await recorder.wait_for(lambda calls: "terminated" in [c[0] for c in calls])
        await wait_succeeded(server, worker)
        with trio.fail_after(SAFETY_TIMEOUT):
            # The final status reached the server before the agent left its room.
            job = await server.wait_for_job(room="h-order", status=agent_pb.JS_SUCCESS)
            await server.wait_until(
                lambda: not agent_in_room(server, "h-order", "recorder") or None
            )
        assert job.status_history[-2:] == [agent_pb.JS_RUNNING, agent_pb.JS_SUCCESS]
        stats = worker.statistics()
        assert (stats.jobs_succeeded, stats.jobs_failed) == (1, 0)
    order = [c for c in recorder.calls if c[0] not in ("quality", "speaking")]
    assert order[:2] == [("request", JobType.ROOM), ("assigned", "recorder")]
    assert order[2:7] == [
        ("joined", "alice"),
        ("published", "alice", "mic"),
        ("subscribed", "alice", rtc.TrackKind.KIND_AUDIO),
        ("data", "alice", b"hi", "t"),
        ("metadata", "alice", "", "busy"),
    ]
    tail = [c[0] for c in order[7:]]
    assert tail[-2:] == ["left", "terminated"]
    assert set(tail[:-2]) == {"unpublished", "unsubscribed"}
    # on_job_terminated ran while the agent was still in its room, with the reason.
    assert order[-1] == ("terminated", "auto disconnect: the last participant left", "recorder")


async def test_those_already_there_are_announced_once(server: DevServer) -> None:
    recorder = Recorder()
    async with (
        serving(server, recorder) as (_, bridge),
        open_client(bridge, server.url, token(server, "h-before", "hal")) as hal,
        client_microphone(hal),
    ):
        # hal is in the room with a track before the agent is dispatched there.
        await server.create_dispatch("h-before", "test-agent")
        await recorder.wait_for(lambda calls: ("subscribed", "hal", 1) in calls)
        await bridge.run(hal.room.local_participant.publish_data, b"now")
        await recorder.wait_for(lambda calls: any(c[0] == "data" for c in calls))
    names = recorder.names()
    assert names.count("joined") == 1
    assert names.count("published") == 1
    assert ("published", "hal", "mic") in recorder.calls


async def test_a_participant_back_within_the_grace_keeps_the_job(server: DevServer) -> None:
    recorder = Recorder(auto_disconnect=AutoDisconnect(grace=3.0))
    async with serving(server, recorder, "h-grace") as (worker, bridge):
        for _ in range(2):
            async with open_client(bridge, server.url, token(server, "h-grace", "bob")):
                await recorder.wait_for(lambda calls: calls.count(("joined", "bob")) >= 1)
            await recorder.wait_for(lambda calls: ("left", "bob") in calls)
        assert recorder.names().count("joined") == 2
        assert "terminated" not in recorder.names()
        assert worker.statistics().running_jobs == 1
        await recorder.wait_for(lambda calls: "terminated" in [c[0] for c in calls])


async def test_other_agents_do_not_keep_the_job(server: DevServer) -> None:
    recorder = Recorder(auto_disconnect=AutoDisconnect(grace=0.2))
    other_agent = (
        lkapi.AccessToken(server.api_key, server.api_secret)
        .with_identity("other-agent")
        .with_kind("agent")
        .with_grants(lkapi.VideoGrants(room_join=True, room="h-agents"))
        .to_jwt()
    )
    async with (
        serving(server, recorder, "h-agents") as (worker, bridge),
        open_client(bridge, server.url, other_agent),
    ):
        async with open_client(bridge, server.url, token(server, "h-agents", "ida")):
            await recorder.wait_for(lambda calls: ("joined", "ida") in calls)
        # Only another agent is left in the room: the job ends all the same.
        await recorder.wait_for(lambda calls: "terminated" in [c[0] for c in calls])
        await wait_succeeded(server, worker)
    assert ("joined", "other-agent") in recorder.calls
    assert recorder.calls[-1][1] == "auto disconnect: the last participant left"


async def test_auto_disconnect_none_stays(server: DevServer) -> None:
    recorder = Recorder(auto_disconnect=AutoDisconnect.NONE)
    async with serving(server, recorder, "h-stay", drain_timeout=0.5) as (worker, bridge):
        async with open_client(bridge, server.url, token(server, "h-stay", "carol")):
            await recorder.wait_for(lambda calls: ("joined", "carol") in calls)
        await recorder.wait_for(lambda calls: ("left", "carol") in calls)
        # AutoDisconnect(grace=0) ends a job at once (test_accept_chooses_...); NONE never.
        with trio.move_on_after(0.5):
            await recorder.wait_for(lambda calls: "terminated" in [c[0] for c in calls])
        assert "terminated" not in recorder.names()
        assert worker.statistics().running_jobs == 1
    # Draining the worker ended it.
    assert recorder.calls[-1][0] == "terminated"


async def test_a_slow_hook_delays_only_its_own_job(server: DevServer) -> None:
    release = trio.Event()
    calls: list[tuple[str, str, bytes]] = []

    async def on_data(ctx: JobContext, data: bytes, participant: Any, topic: str) -> None:
        calls.append((ctx.room_name, "data", data))
        if ctx.room_name == "h-slow-a" and data == b"first":
            await release.wait()  # this job's dispatcher is stuck here

    handler = SimpleHandler(on_data_received=on_data)
    async with serving(server, handler) as (_, bridge):
        for room in ("h-slow-a", "h-slow-b"):
            await server.create_dispatch(room, "test-agent")
            with trio.fail_after(SAFETY_TIMEOUT):
                await server.wait_for_job(room=room, status=agent_pb.JS_RUNNING)
        async with (
            open_client(bridge, server.url, token(server, "h-slow-a", "amy")) as amy,
            open_client(bridge, server.url, token(server, "h-slow-b", "ben")) as ben,
        ):
            for client in (amy, ben):
                with trio.fail_after(SAFETY_TIMEOUT):
                    while not client.room.remote_participants:
                        await client.next("participant_connected")
            await bridge.run(amy.room.local_participant.publish_data, b"first")
            await bridge.run(amy.room.local_participant.publish_data, b"second")
            await bridge.run(ben.room.local_participant.publish_data, b"other room")
            with trio.fail_after(SAFETY_TIMEOUT):
                while ("h-slow-b", "data", b"other room") not in calls:  # noqa: ASYNC110
                    await trio.sleep(0.01)
            # Job A's later hook waits behind its slow one; job B went on.
            assert ("h-slow-a", "data", b"second") not in calls
            release.set()
            with trio.fail_after(SAFETY_TIMEOUT):
                while ("h-slow-a", "data", b"second") not in calls:  # noqa: ASYNC110
                    await trio.sleep(0.01)
    room_a = [c[2] for c in calls if c[0] == "h-slow-a"]
    assert room_a == [b"first", b"second"]


# ------------------------------------------------------------------ failures


async def test_a_raising_hook_fails_the_job(server: DevServer) -> None:
    reasons: list[str] = []

    async def boom(ctx: JobContext, data: bytes, participant: Any, topic: str) -> None:
        raise ValueError(f"cannot handle {data!r}")

    async def terminated(ctx: JobContext, reason: str) -> None:
        reasons.append(reason)

    handler = SimpleHandler(on_data_received=boom, on_job_terminated=terminated)
    async with (
        serving(server, handler, "h-boom") as (worker, bridge),
        open_client(bridge, server.url, token(server, "h-boom", "dan")) as dan,
    ):
        with trio.fail_after(SAFETY_TIMEOUT):
            while not dan.room.remote_participants:
                await dan.next("participant_connected")
        await bridge.run(dan.room.local_participant.publish_data, b"x")
        with trio.fail_after(SAFETY_TIMEOUT):
            job = await server.wait_for_job(room="h-boom", status=agent_pb.JS_FAILED)
    assert job.job.state.error == "ValueError: cannot handle b'x'"
    assert reasons == ["failed: ValueError: cannot handle b'x'"]
    assert worker.statistics().jobs_failed == 1


async def test_a_failed_handler_job_is_retried_by_the_recovery_policy(server: DevServer) -> None:
    from trio_lkagent import RetryableError
    from trio_lkagent.resilience import DefaultRecoveryHandler, RecoveryAction

    errors: list[BaseException] = []
    attempts: list[str] = []

    class Recording(DefaultRecoveryHandler):
        def on_job_failed(self, job: Any, error: BaseException) -> RecoveryAction:
            errors.append(error)
            return super().on_job_failed(job, error)

    async def on_job(ctx: JobContext) -> None:
        attempts.append(ctx.room.local_participant.identity)
        if len(attempts) == 1:
            raise RetryableError("flaky start")
        ctx.shutdown("second attempt done")

    recovery = Recording(max_retries=1, backoff_base=0)
    handler = SimpleHandler(on_job=on_job)
    async with serving(server, handler, "h-retry", recovery=recovery) as (worker, _):
        await wait_succeeded(server, worker)
    # The policy saw the hook's own exception, not a group around it.
    assert [type(e) for e in errors] == [RetryableError]
    assert len(attempts) == 2 and attempts[0] == attempts[1]  # the same room, kept
    assert worker.statistics().jobs_succeeded == 1


async def test_slow_on_job_terminated_is_bounded(server: DevServer) -> None:
    finished: list[bool] = []

    async def slow(ctx: JobContext, reason: str) -> None:
        await trio.sleep(60)
        finished.append(True)  # pragma: no cover - cut off by the bound

    async def leave(ctx: JobContext) -> None:
        ctx.shutdown("done")

    handler = SimpleHandler(on_job=leave, on_job_terminated=slow)
    async with serving(server, handler, "h-slow", shutdown_grace=0.3) as (worker, _):
        await wait_succeeded(server, worker)
    assert finished == []
    assert worker.statistics().jobs_succeeded == 1


# ------------------------------------------------------------------ choosing per request


async def test_accept_chooses_the_entrypoint_subscriptions_and_auto_disconnect(
    server: DevServer,
) -> None:
    ran: list[str] = []
    seen: list[str] = []
    published = trio.Event()

    async def default(ctx: JobContext) -> None:  # pragma: no cover - not chosen
        ran.append("default")

    async def chosen(ctx: JobContext) -> None:
        ran.append("chosen")
        async with ctx.connect() as room:  # no auto_subscribe: the accept's applies
            async for event in room.events():
                seen.append(type(event).__name__)
                if isinstance(event, TrackPublished):
                    published.set()

    async def on_request(req: JobRequest) -> None:
        await req.accept(
            entrypoint=chosen,
            auto_subscribe=AutoSubscribe.SUBSCRIBE_NONE,
            auto_disconnect=AutoDisconnect(grace=0),
        )

    worker = Worker(default, worker_options(server), request_handler=on_request)
    async with open_bridge() as bridge, trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        await server.create_dispatch("h-choose", "test-agent")
        with trio.fail_after(SAFETY_TIMEOUT):
            await server.wait_for_job(room="h-choose", status=agent_pb.JS_RUNNING)
        async with (
            open_client(bridge, server.url, token(server, "h-choose", "erin")) as erin,
            client_microphone(erin),
        ):
            with trio.fail_after(SAFETY_TIMEOUT):
                await published.wait()
            # AUDIO_ONLY would subscribe at once; SUBSCRIBE_NONE never does.
            await trio.sleep(0.5)
        # erin left: the entrypoint (which never returns by itself) is ended.
        await wait_succeeded(server, worker)
        worker.drain()
    assert ran == ["chosen"]
    assert "TrackPublished" in seen
    assert "TrackSubscribed" not in seen
    assert worker.statistics().jobs_succeeded == 1


# ------------------------------------------------------------------ job processes


async def test_a_handler_runs_in_a_job_process(server: DevServer) -> None:
    import os

    from trio_lkagent.events import DataReceived
    from trio_lkagent.processes import JobExecutor

    from . import handler_agents

    options = worker_options(server, job_executor=JobExecutor.PROCESS, num_idle_processes=1)
    worker = Worker(handler_agents.HANDLER, options)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        await server.create_dispatch("h-proc", "test-agent")
        with trio.fail_after(30):  # a loaded machine starts processes slowly
            job = await server.wait_for_job(room="h-proc", status=agent_pb.JS_RUNNING)
            async with server.open_participant("h-proc", "pia") as pia:
                reply = None
                while reply is None:
                    await pia.publish_data(b"hi", topic="ping")
                    with trio.move_on_after(1):
                        async for event in pia.events():
                            if isinstance(event, DataReceived) and event.topic == "pong":
                                reply = event.payload.decode().split(":")
                                break
            # pia left: the handler's auto-disconnect (in the job process) ends the job.
            await server.wait_job_status(job.id, agent_pb.JS_SUCCESS)
        nursery.cancel_scope.cancel()
    assert reply[:2] == ["handled", "hi"]
    assert int(reply[2]) != os.getpid()


# ------------------------------------------------------------------ job types


async def test_participant_job_gets_its_participant(server: DevServer) -> None:
    seen: list[str] = []
    assigned = trio.Event()

    async def on_job(ctx: JobContext) -> None:
        seen.append(ctx.participant.identity)
        assigned.set()

    handler = SimpleHandler(on_job=on_job)
    async with serving(server, handler, agent_name="", job_type=JobType.PARTICIPANT) as (
        _worker,
        bridge,
    ):
        await server.create_room("h-part")
        async with open_client(bridge, server.url, token(server, "h-part", "fay")):
            with trio.fail_after(SAFETY_TIMEOUT):
                await assigned.wait()
    assert seen == ["fay"]


async def test_publisher_job_gets_the_publisher_and_its_tracks(server: DevServer) -> None:
    seen: list[tuple[str, list[str]]] = []
    assigned = trio.Event()

    async def on_job(ctx: JobContext) -> None:
        tracks = [p.name for p in ctx.participant.track_publications.values()]
        seen.append((ctx.participant.identity, tracks))
        assigned.set()

    handler = SimpleHandler(on_job=on_job)
    async with serving(server, handler, agent_name="", job_type=JobType.PUBLISHER) as (
        _worker,
        bridge,
    ):
        await server.create_room("h-pub")
        async with (
            open_client(bridge, server.url, token(server, "h-pub", "gus")) as gus,
            client_microphone(gus),
        ):
            with trio.fail_after(SAFETY_TIMEOUT):
                await assigned.wait()
    assert seen == [("gus", ["mic"])]


def test_simple_handler_rejects_unknown_hooks() -> None:
    async def hook(*_: Any) -> None: ...

    with pytest.raises(TypeError, match="unknown hook 'on_joined'"):
        SimpleHandler(on_joined=hook)
    with pytest.raises(ValueError, match="grace"):
        AutoDisconnect(grace=-1)
