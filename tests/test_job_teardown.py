"""A job that ends by itself is recorded as it ended: final status first, room left after.

LiveKit's server (Go's ``Worker.TerminateJob`` with ``AGENT_LEFT_ROOM``, kept
exactly by the dev server) fails a running job whose agent participant leaves
its room: "agent worker left the room". These tests run a real worker whose
entrypoint joins its room through the real ``livekit.rtc`` client and check the
server's record (``status_history``, error) for each way a job ends.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from livekit.protocol import agent as agent_pb

from trio_lkagent import JobContext, ReconnectPolicy, Worker
from trio_lkagent._telemetry import WorkerObserver
from trio_lkagent.devserver import DevServer, open_devserver
from trio_lkagent.devserver._agent_service import ServerJob

from .conftest import worker_options

# A safety net for what waits on the network and real WebRTC, not a timing assertion.
SAFETY_TIMEOUT = 20

Entrypoint = Callable[[JobContext], Awaitable[None]]


@pytest.fixture
def left_while_running(server: DevServer) -> list[str]:
    """Agents whose participant left the room while the server still had their job running.

    Observed at the dev server's own hook (``RoomRegistry.on_participant_left``,
    where Go's ``AGENT_LEFT_ROOM`` termination starts): the ordering, not the race's
    outcome, is what is checked.
    """
    return watch_leaves(server)


def watch_leaves(server: DevServer) -> list[str]:
    seen: list[str] = []
    registry = server._rooms
    original = registry.on_participant_left

    def on_left(room_name: str, identity: str) -> None:
        room = registry.rooms.get(room_name)
        job_id = room.agent_jobs.get(identity) if room is not None else None
        if job_id is not None and not server.jobs[job_id].ended:
            seen.append(identity)
        original(room_name, identity)

    registry.on_participant_left = on_left  # type: ignore[method-assign]
    return seen


class Ended(WorkerObserver):
    """``job_ended`` fires once the worker is done with a job (entrypoint ended, room left)."""

    def __init__(self) -> None:
        self.event = trio.Event()

    def job_ended(self, ctx: JobContext, outcome: str, error: str) -> None:
        self.event.set()


@asynccontextmanager
async def serving(
    server: DevServer, entrypoint: Entrypoint, **options: Any
) -> AsyncIterator[tuple[Worker, trio.Event]]:
    """A serving worker, and an event set when its (first) job is done."""
    worker = Worker(entrypoint, worker_options(server, **options))
    ended = Ended()
    worker.add_observer(ended)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        yield worker, ended.event
        worker.drain()


async def run_one_job(server: DevServer, entrypoint: Entrypoint, room: str) -> ServerJob:
    """Dispatch one job to a worker running *entrypoint*; return it once it ended."""
    async with serving(server, entrypoint) as (_worker, job_done):
        await server.create_dispatch(room, "test-agent")
        with trio.fail_after(SAFETY_TIMEOUT):
            job = await server.wait_for_job(room=room, status=agent_pb.JS_RUNNING)
            await server.wait_until(lambda: job.ended or None)
            await job_done.wait()
            await server.wait_until(lambda: agent_gone(server, room, job))
    return job


def agent_gone(server: DevServer, room: str, job: ServerJob) -> bool | None:
    live = server.rooms.get(room)
    return True if live is None or job.accepted_identity not in live.participants else None


def assert_ended(
    job: ServerJob,
    status: agent_pb.JobStatus,
    error: str = "",
    left_while_running: Sequence[str] = (),
) -> None:
    assert job.accepted_identity not in left_while_running  # status first, then the leave
    assert job.status_history[-1] == status, job.status_history
    assert job.status_history.count(status) == 1
    if status == agent_pb.JS_SUCCESS:
        assert agent_pb.JS_FAILED not in job.status_history
    assert job.job.state.error == error


async def test_entrypoint_returning_after_joining_ends_js_success(
    server: DevServer, left_while_running: list[str]
) -> None:
    joined: list[str] = []

    async def entrypoint(ctx: JobContext) -> None:
        async with ctx.connect() as room:
            joined.append(room.local_participant.identity)

    job = await run_one_job(server, entrypoint, "td-return")
    assert joined == [job.accepted_identity]  # it really was in the room
    assert job.status_history[:2] == [agent_pb.JS_PENDING, agent_pb.JS_RUNNING]
    assert_ended(job, agent_pb.JS_SUCCESS, left_while_running=left_while_running)
    assert job.termination is None  # the server did not end it: the worker did


async def test_entrypoint_raising_inside_connect_ends_js_failed_with_its_error(
    server: DevServer, left_while_running: list[str]
) -> None:
    async def entrypoint(ctx: JobContext) -> None:
        async with ctx.connect():
            raise ValueError("the model is gone")

    job = await run_one_job(server, entrypoint, "td-raise")
    assert_ended(job, agent_pb.JS_FAILED, "ValueError: the model is gone", left_while_running)
    assert job.termination is None


async def test_ctx_shutdown_ends_js_success(
    server: DevServer, left_while_running: list[str]
) -> None:
    async def entrypoint(ctx: JobContext) -> None:
        async with ctx.connect():
            ctx.shutdown("done")
            await trio.sleep_forever()

    job = await run_one_job(server, entrypoint, "td-shutdown")
    assert_ended(job, agent_pb.JS_SUCCESS, left_while_running=left_while_running)


async def test_server_termination_ends_js_success_as_before(server: DevServer) -> None:
    reasons: list[str | None] = []

    async def entrypoint(ctx: JobContext) -> None:
        try:
            async with ctx.connect():
                await trio.sleep_forever()
        finally:
            reasons.append(ctx.shutdown_reason)

    async with serving(server, entrypoint) as (_worker, job_done):
        await server.create_dispatch("td-terminate", "test-agent")
        with trio.fail_after(SAFETY_TIMEOUT):
            job = await server.wait_for_job(room="td-terminate", status=agent_pb.JS_RUNNING)
            await server.wait_until(
                lambda: job.accepted_identity in server.rooms["td-terminate"].participants or None
            )
            await server.terminate_job(job.id)
            await job_done.wait()
            await server.wait_until(lambda: agent_gone(server, "td-terminate", job))
    assert reasons == ["terminated by the server"]
    assert_ended(job, agent_pb.JS_SUCCESS)


async def test_a_job_that_leaves_its_block_and_runs_on_stays_in_the_room(
    server: DevServer, left_while_running: list[str]
) -> None:
    """The room belongs to the job: the agent leaves it when the job ends, not before."""
    after_block = trio.Event()
    finish = trio.Event()

    async def entrypoint(ctx: JobContext) -> None:
        async with ctx.connect():
            pass
        with pytest.raises(RuntimeError):
            ctx.room  # noqa: B018 - the block is over
        after_block.set()
        await finish.wait()

    async with serving(server, entrypoint) as (_, _job_done):
        await server.create_dispatch("td-runs-on", "test-agent")
        with trio.fail_after(SAFETY_TIMEOUT):
            job = await server.wait_for_job(room="td-runs-on", status=agent_pb.JS_RUNNING)
            await after_block.wait()
            assert job.accepted_identity in server.rooms["td-runs-on"].participants
            assert not job.ended
            finish.set()
            await server.wait_until(lambda: job.ended or None)
            await server.wait_until(lambda: agent_gone(server, "td-runs-on", job))
    assert_ended(job, agent_pb.JS_SUCCESS, left_while_running=left_while_running)


async def test_connecting_twice_enters_the_same_room(
    server: DevServer, left_while_running: list[str]
) -> None:
    rooms: list[object] = []

    async def entrypoint(ctx: JobContext) -> None:
        for _ in range(2):
            async with ctx.connect() as room:
                rooms.append(room)
                assert room.local_participant.identity == ctx.identity

    job = await run_one_job(server, entrypoint, "td-twice")
    assert len(rooms) == 2
    assert rooms[0] is rooms[1]
    assert_ended(job, agent_pb.JS_SUCCESS, left_while_running=left_while_running)


async def test_socket_down_at_the_end_still_leaves_the_room(server: DevServer) -> None:
    """The final status is queued (not waited for) and the room is left at once.

    The server then sees the agent leave a job whose worker is gone: it cannot
    terminate it (no worker). The reconnected worker reports the queued final
    status on its new connection, which the server ignores as Go does (only the
    connection running a job may report it): the job keeps its state.
    """
    end = trio.Event()

    async def entrypoint(ctx: JobContext) -> None:
        async with ctx.connect():
            await end.wait()

    quick = ReconnectPolicy(initial_delay=0.05, max_delay=0.2)
    async with serving(server, entrypoint, reconnect=quick) as (worker, job_done):
        await server.create_dispatch("td-down", "test-agent")
        with trio.fail_after(SAFETY_TIMEOUT):
            job = await server.wait_for_job(room="td-down", status=agent_pb.JS_RUNNING)
            await server.wait_until(
                lambda: job.accepted_identity in server.rooms["td-down"].participants or None
            )
            server.faults.reject_upgrade_status = 503  # it cannot come back yet
            await server.drop_worker(job.worker_id)
            # The worker's side of the drop: no event to wait on, so poll.
            while worker.statistics().registered:  # noqa: ASYNC110
                await trio.sleep(0.01)
            end.set()
            await server.wait_until(lambda: agent_gone(server, "td-down", job))
            await job_done.wait()
            assert not worker.statistics().registered  # it left while the socket was down
            server.faults.reject_upgrade_status = None
            await server.wait_until(
                lambda: (
                    [u for _, u in job.ignored_updates if u.status == agent_pb.JS_SUCCESS] or None
                )
            )
    assert job.status == agent_pb.JS_RUNNING  # Go keeps the last state
    assert worker.statistics().jobs_succeeded == 1


async def test_dev_summary_agrees_with_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """``trio-lkagent dev`` with an agent that ends its job by itself after a message.

    The worker counts the job as succeeded; the server's record, printed by the
    same summary, must say so too (it said JS_FAILED "agent worker left the room").
    """
    from trio_lkagent import _dev
    from trio_lkagent._config import ServiceConfig
    from trio_lkagent.events import DataReceived

    @asynccontextmanager
    async def watched_devserver(**kwargs: Any) -> AsyncIterator[DevServer]:
        async with open_devserver(**kwargs) as server:
            seen.append(watch_leaves(server))
            yield server

    seen: list[list[str]] = []
    monkeypatch.setattr(_dev, "open_devserver", watched_devserver)
    for name in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        monkeypatch.setenv(name, "")  # run_dev sets them; restored afterwards

    async def entrypoint(ctx: JobContext) -> None:
        async with ctx.connect() as room:
            async for event in room.events():
                if isinstance(event, DataReceived):
                    return  # one message is enough: the job is done

    def load_worker(config: ServiceConfig) -> Worker:
        return Worker(entrypoint, config.worker_options(agent_name="dev-ends"))

    lines: list[str] = []
    config = ServiceConfig(health_port=None)
    with trio.fail_after(60):
        settings = _dev.DevSettings(duration=3)
        assert await _dev.run_dev(load_worker, config, settings, say=lines.append) == 0
    ended = [line for line in lines if re.match(r"job AJ_\w+ ended ", line)]
    assert len(ended) == 1, lines
    assert ended[0].endswith("ended JS_SUCCESS"), lines
    assert "worker drained: 1 job(s) run, 1 succeeded, 0 failed" in lines
    assert seen == [[]]  # the agent left the room after the job had ended on the server
