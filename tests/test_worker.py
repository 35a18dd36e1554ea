"""The worker against the in-package dev server, over real loopback WebSockets."""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from livekit import api as lkapi
from livekit.protocol import agent as agent_pb

from trio_lkagent import (
    AuthenticationError,
    ConnectError,
    JobContext,
    JobRequest,
    ReconnectPolicy,
    WireFormat,
    Worker,
)
from trio_lkagent.devserver import DevServer

from .conftest import worker_options

Entrypoint = Callable[[JobContext], Awaitable[None]]


async def _forever(ctx: JobContext) -> None:
    await trio.sleep_forever()


async def eventually(predicate: Callable[[], object], *, within: float = 120.0) -> None:
    """Poll *predicate*; only used with ``autojump_clock``, so no wall time passes."""
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - virtual time: the clock jumps when idle
            await trio.sleep(0.001)


@asynccontextmanager
async def running_worker(
    server: DevServer,
    entrypoint: Entrypoint = _forever,
    request_handler: Callable[[JobRequest], Awaitable[None]] | None = None,
    **options: object,
) -> AsyncIterator[Worker]:
    """A worker serving in a nursery; cancelled (if still serving) when the block ends."""
    worker = Worker(entrypoint, worker_options(server, **options), request_handler=request_handler)
    async with trio.open_nursery() as nursery:
        worker_id = await nursery.start(worker.serve)
        assert worker_id == worker.worker_id
        yield worker
        nursery.cancel_scope.cancel()


async def test_registers_with_its_options(server: DevServer) -> None:
    async with running_worker(
        server, agent_name="reg", namespace="ns", version="1.2.3", max_jobs=7
    ) as worker:
        sw = await server.wait_for_worker(agent_name="reg")
        assert sw.worker_id == worker.worker_id
        assert worker.worker_id is not None and worker.worker_id.startswith("AW_")
        reg = sw.register
        assert (reg.agent_name, reg.namespace, reg.version) == ("reg", "ns", "1.2.3")
        assert reg.type == agent_pb.JT_ROOM
        assert reg.allowed_permissions.can_publish and reg.allowed_permissions.agent
        stats = worker.statistics()
        assert stats.status == "available" and stats.registered and stats.max_jobs == 7


async def test_jobs_run_and_report_success_and_failure(server: DevServer) -> None:
    seen: list[tuple[str, str, str, str]] = []

    async def entrypoint(ctx: JobContext) -> None:
        seen.append((ctx.room_name, ctx.identity, ctx.worker_id, ctx.url))
        assert ctx.token
        if ctx.job.metadata == "fail":
            raise ValueError("boom")

    async with running_worker(server, entrypoint) as worker:
        ok = await server.create_dispatch(room="r-ok", agent_name="test-agent", metadata="")
        bad = await server.create_dispatch(room="r-bad", agent_name="test-agent", metadata="fail")
        job_ok = await server.wait_for_job(room="r-ok", status=agent_pb.JS_SUCCESS)
        job_bad = await server.wait_for_job(room="r-bad", status=agent_pb.JS_FAILED)
        assert job_ok.job.dispatch_id == ok.id and job_bad.job.dispatch_id == bad.id
        assert job_bad.job.state.error == "ValueError: boom"
        # One RUNNING, then exactly one final status.
        assert job_ok.status_history[-2:] == [agent_pb.JS_RUNNING, agent_pb.JS_SUCCESS]
        assert job_bad.status_history[-2:] == [agent_pb.JS_RUNNING, agent_pb.JS_FAILED]
        # The failure did not stop the worker: it still takes jobs.
        await server.create_dispatch(room="r-after", agent_name="test-agent", metadata="")
        await server.wait_for_job(room="r-after", status=agent_pb.JS_SUCCESS)
        stats = worker.statistics()
        assert (stats.jobs_succeeded, stats.jobs_failed) == (2, 1)
    rooms = sorted(s[0] for s in seen)
    assert rooms == ["r-after", "r-bad", "r-ok"]
    for _room, identity, worker_id, url in seen:
        assert identity.startswith("agent-AJ_")
        assert worker_id.startswith("AW_")
        assert url == server.url


async def test_termination_cancels_job_and_reports_at_once(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    cleaned_up = trio.Event()
    started = trio.Event()

    async def entrypoint(ctx: JobContext) -> None:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            assert ctx.shutdown_reason == "terminated by the server"
            cleaned_up.set()

    async with running_worker(server, entrypoint):
        await server.create_dispatch(room="r1", agent_name="test-agent")
        job = await server.wait_for_job(room="r1", status=agent_pb.JS_RUNNING)
        await started.wait()
        t0 = trio.current_time()
        await server.terminate_job(job.job.id)
        # The server records the end at once (as Go does); the worker's own report
        # arrives after it and is kept aside.
        assert job.status == agent_pb.JS_SUCCESS
        ((_, report),) = await server.wait_until(lambda: job.late_updates or None)
        assert report.status == agent_pb.JS_SUCCESS
        # No timer fired between termination and the worker's report (autojump clock).
        assert trio.current_time() == t0
        assert cleaned_up.is_set()
        assert job.status_history.count(agent_pb.JS_SUCCESS) == 1


async def test_ctx_shutdown_ends_job_successfully(server: DevServer) -> None:
    async def entrypoint(ctx: JobContext) -> None:
        ctx.shutdown("all done")
        await trio.sleep_forever()

    async with running_worker(server, entrypoint):
        await server.create_dispatch(room="r1", agent_name="test-agent")
        await server.wait_for_job(room="r1", status=agent_pb.JS_SUCCESS)


async def test_burst_never_over_admits(server: DevServer) -> None:
    release = trio.Event()

    async def entrypoint(ctx: JobContext) -> None:
        await release.wait()

    async with running_worker(server, entrypoint, max_jobs=3) as worker:
        sw = await server.wait_for_worker(agent_name="test-agent")
        async with trio.open_nursery() as nursery:
            for i in range(10):
                nursery.start_soon(server.create_dispatch, f"burst-{i}", "test-agent")
        await trio.testing.wait_all_tasks_blocked()
        running = [j for j in server.jobs.values() if j.job.state.status == agent_pb.JS_RUNNING]
        assert len(running) == 3
        assert worker.statistics().running_jobs == 3
        assert sw.status == agent_pb.WS_FULL
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert sw.status == agent_pb.WS_AVAILABLE
        assert worker.statistics().running_jobs == 0


async def test_request_handler_accept_attributes_reach_the_token(server: DevServer) -> None:
    async def on_request(req: JobRequest) -> None:
        assert req.room_name == "r1"
        await req.accept(
            identity="bot-1", name="Bot", metadata='{"v": 1}', attributes={"role": "helper"}
        )

    tokens: list[str] = []

    async def entrypoint(ctx: JobContext) -> None:
        tokens.append(ctx.token)

    async with running_worker(server, entrypoint, request_handler=on_request):
        await server.create_dispatch(room="r1", agent_name="test-agent")
        await server.wait_for_job(room="r1", status=agent_pb.JS_SUCCESS)
    claims = lkapi.TokenVerifier(server.api_key, server.api_secret).verify(tokens[0])
    assert claims.identity == "bot-1"
    assert claims.name == "Bot"
    assert claims.metadata == '{"v": 1}'
    assert claims.attributes["role"] == "helper"
    assert claims.attributes["lk.agent_name"] == "test-agent"
    assert claims.video is not None and claims.video.room == "r1"


async def test_rejected_job_goes_to_another_worker(server: DevServer) -> None:
    async def reject(req: JobRequest) -> None:
        await req.reject()

    ran_on: list[str] = []

    async def entrypoint(ctx: JobContext) -> None:
        ran_on.append(ctx.worker_id)

    async with (
        running_worker(server, entrypoint, request_handler=reject) as picky,
        running_worker(server, entrypoint) as willing,
    ):
        for i in range(4):
            await server.create_dispatch(room=f"r{i}", agent_name="test-agent")
            await server.wait_for_job(room=f"r{i}", status=agent_pb.JS_SUCCESS)
    assert ran_on == [willing.worker_id] * 4
    # Whatever the server offered the picky worker, it declined: it ran nothing.
    assert picky.statistics().jobs_started == 0


async def test_reject_with_terminate_ends_the_job(server: DevServer) -> None:
    async def reject(req: JobRequest) -> None:
        await req.reject(terminate=True)

    async with running_worker(server, request_handler=reject):
        await server.create_dispatch(room="r1", agent_name="test-agent")
        job = await server.wait_for_job(room="r1", status=agent_pb.JS_SUCCESS)
        assert agent_pb.JS_RUNNING not in job.status_history


async def test_failing_or_slow_request_handler_rejects(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    async def handler(req: JobRequest) -> None:
        if req.room_name == "raises":
            raise RuntimeError("handler bug")
        if req.room_name == "slow":
            await trio.sleep_forever()
        # returns without answering

    async with running_worker(server, request_handler=handler, request_timeout=2.0) as worker:
        for room in ("raises", "slow", "silent"):
            await server.create_dispatch(room=room, agent_name="test-agent")
            job = await server.wait_for_job(room=room, status=agent_pb.JS_FAILED)
            assert agent_pb.JS_RUNNING not in job.status_history
        stats = worker.statistics()
        assert stats.requests_declined == 3
        assert stats.reserved_jobs == 0


async def test_reservation_released_when_assignment_never_comes(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with running_worker(server, max_jobs=1, assignment_timeout=7.5) as worker:
        sw = await server.wait_for_worker(agent_name="test-agent")
        server.faults.withhold_assignment = True
        await server.create_dispatch(room="lost", agent_name="test-agent")
        await trio.testing.wait_all_tasks_blocked()
        assert worker.statistics().reserved_jobs == 1
        assert sw.status == agent_pb.WS_FULL
        t0 = trio.current_time()
        await eventually(lambda: worker.statistics().reserved_jobs == 0)
        assert 7.5 <= trio.current_time() - t0 <= 8.5
        server.faults.withhold_assignment = False
        await server.create_dispatch(room="next", agent_name="test-agent")
        await server.wait_for_job(room="next", status=agent_pb.JS_RUNNING)


async def test_ping_pong_measures_rtt(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with running_worker(server) as worker:
        sw = await server.wait_for_worker(agent_name="test-agent")
        await eventually(lambda: worker.statistics().ping_rtt is not None)
        rtt = worker.statistics().ping_rtt
        assert rtt is not None and 0 <= rtt < 1
        assert sw.pings >= 1


async def test_silent_server_means_reconnect(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with running_worker(server, ping_interval=5, ping_timeout=15) as worker:
        first = worker.worker_id
        server.faults.withhold_pong = True
        t0 = trio.current_time()
        await eventually(lambda: worker.worker_id != first)
        # Dropped after ~15 s of silence, then re-registered after a backoff.
        assert 15 <= trio.current_time() - t0 <= 20
        assert worker.statistics().reconnects == 1


async def test_running_jobs_survive_a_reconnect(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    release = trio.Event()
    cancelled = False

    async def entrypoint(ctx: JobContext) -> None:
        nonlocal cancelled
        try:
            await release.wait()
        except trio.Cancelled:
            cancelled = True
            raise

    async with running_worker(server, entrypoint) as worker:
        await server.create_dispatch(room="r1", agent_name="test-agent")
        job = await server.wait_for_job(room="r1", status=agent_pb.JS_RUNNING)
        first = worker.worker_id
        assert first is not None
        await server.drop_worker(first)
        await eventually(
            lambda: worker.worker_id not in (first, None) and worker.statistics().registered
        )
        second = await server.wait_for_worker(agent_name="test-agent")
        assert second.worker_id == worker.worker_id != first
        # After re-registering the worker told the new connection about the job;
        # like Go, the server ignores reports from a connection not running it.
        await trio.testing.wait_all_tasks_blocked()
        assert (second.worker_id, agent_pb.JS_RUNNING) in [
            (wid, update.status) for wid, update in job.ignored_updates
        ]
        release.set()
        await server.wait_until(
            lambda: (
                (second.worker_id, agent_pb.JS_SUCCESS)
                in [(wid, update.status) for wid, update in job.ignored_updates]
                or None
            )
        )
        assert worker.statistics().jobs_succeeded == 1
    assert not cancelled


async def test_backoff_grows_and_recovers(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    server.faults.reject_upgrade_status = 503
    policy = ReconnectPolicy(initial_delay=1, max_delay=8, multiplier=2, jitter=0.0)
    worker = Worker(_forever, worker_options(server, reconnect=policy))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.serve)
        t0 = trio.current_time()
        await eventually(lambda: server.statistics().upgrades_rejected >= 6)
        elapsed = trio.current_time() - t0
        # Attempts at 0, 1, 3, 7, 15, 23 s: delays 1, 2, 4, 8, 8.
        assert 23 <= elapsed < 24
        server.faults.reject_upgrade_status = None
        await server.wait_for_worker(agent_name="test-agent")
        nursery.cancel_scope.cancel()


async def test_accept_then_drop_server_meets_growing_delays(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    policy = ReconnectPolicy(initial_delay=1, max_delay=60, multiplier=2, jitter=0.0)
    async with running_worker(server, reconnect=policy) as worker:
        times = []
        for _ in range(5):
            sw = await server.wait_for_worker(agent_name="test-agent")
            times.append(trio.current_time())
            await server.drop_worker(sw.worker_id)
            await eventually(lambda: worker.worker_id != sw.worker_id)  # noqa: B023
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert [round(g) for g in gaps] == [1, 2, 4, 8]


async def test_unauthorized_is_fatal(server: DevServer) -> None:
    worker = Worker(_forever, worker_options(server, api_secret="wrong-secret-" + "x" * 32))
    with pytest.raises(AuthenticationError) as info:
        await worker.serve()
    assert info.value.status_code == 401
    assert "401" in str(info.value)
    assert server.statistics().upgrades_rejected == 1


async def test_gives_up_after_max_attempts(autojump_clock: trio.testing.MockClock) -> None:
    # Nothing listens on this port: connections are refused.
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    from trio_lkagent import WorkerOptions

    worker = Worker(
        _forever,
        WorkerOptions(
            url=f"ws://127.0.0.1:{port}",
            api_key="k",
            api_secret="s" * 32,
            reconnect=ReconnectPolicy(max_attempts=3),
        ),
    )
    with pytest.raises(ConnectError, match="3 failed connection attempt"):
        await worker.serve()


async def test_drain_finishes_running_jobs_and_closes_cleanly(server: DevServer) -> None:
    release = trio.Event()

    async def entrypoint(ctx: JobContext) -> None:
        await release.wait()

    worker = Worker(entrypoint, worker_options(server))
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        sw = await server.wait_for_worker(agent_name="test-agent")
        await server.create_dispatch(room="r1", agent_name="test-agent")
        job = await server.wait_for_job(room="r1", status=agent_pb.JS_RUNNING)
        worker.drain()
        await trio.testing.wait_all_tasks_blocked()
        assert sw.status == agent_pb.WS_FULL
        assert worker.statistics().status == "draining"
        # A new job is not taken while draining.
        await server.create_dispatch(room="r2", agent_name="test-agent")
        late = await server.wait_for_job(room="r2", status=agent_pb.JS_FAILED)
        assert sw.worker_id in late.attempted_worker_ids or not late.attempted_worker_ids
        release.set()
    # serve returned by itself.
    assert server.jobs[job.job.id].job.state.status == agent_pb.JS_SUCCESS
    assert sw.close_code == 1000
    assert worker.statistics().status == "stopped"


async def test_drain_timeout_cancels_and_reports(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with running_worker(server, drain_timeout=60) as worker:
        await server.create_dispatch(room="r1", agent_name="test-agent")
        job = await server.wait_for_job(room="r1", status=agent_pb.JS_RUNNING)
        t0 = trio.current_time()
        worker.drain()
        await server.wait_job_status(job.job.id, agent_pb.JS_SUCCESS)
        assert 60 <= trio.current_time() - t0 < 61


async def test_blocking_request_handler_does_not_delay_drain(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    entered = trio.Event()

    async def handler(req: JobRequest) -> None:
        entered.set()
        await trio.sleep_forever()

    worker = Worker(_forever, worker_options(server, request_timeout=300), request_handler=handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        await server.create_dispatch(room="r1", agent_name="test-agent")
        await entered.wait()
        t0 = trio.current_time()
        worker.drain()
    assert trio.current_time() - t0 < 1


async def test_cancelling_serve_reports_jobs_and_closes_1000(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    async with trio.open_nursery() as nursery:
        worker = Worker(_forever, worker_options(server))
        await nursery.start(worker.serve)
        sw = await server.wait_for_worker(agent_name="test-agent")
        await server.create_dispatch(room="r1", agent_name="test-agent")
        job = await server.wait_for_job(room="r1", status=agent_pb.JS_RUNNING)
        nursery.cancel_scope.cancel()
    await server.wait_job_status(job.job.id, agent_pb.JS_SUCCESS)
    await eventually(lambda: sw.close_code is not None)
    assert sw.close_code == 1000


async def test_json_wire_format(server: DevServer) -> None:
    async with running_worker(server, _noop, wire_format=WireFormat.JSON):
        sw = await server.wait_for_worker(agent_name="test-agent")
        assert sw.wire_format is WireFormat.JSON
        await server.create_dispatch(room="r1", agent_name="test-agent")
        await server.wait_for_job(room="r1", status=agent_pb.JS_SUCCESS)


async def _noop(ctx: JobContext) -> None:
    pass


async def test_bad_server_input_is_ignored(server: DevServer) -> None:
    release = trio.Event()

    async def entrypoint(ctx: JobContext) -> None:
        await release.wait()

    async with running_worker(server, entrypoint) as worker:
        assert worker.worker_id is not None
        await server.create_dispatch(room="r1", agent_name="test-agent")
        job = await server.wait_for_job(room="r1", status=agent_pb.JS_RUNNING)
        wid = worker.worker_id
        await server.send_raw(wid, b"\xff\xfe garbage")
        await server.send_raw(wid, "{not json")
        await server.send_message(wid, agent_pb.ServerMessage())  # empty oneof
        await server.send_message(
            wid, agent_pb.ServerMessage(termination=agent_pb.JobTermination(job_id="AJ_nope"))
        )
        fake = agent_pb.Job(id="AJ_unknown")
        await server.send_message(
            wid, agent_pb.ServerMessage(assignment=agent_pb.JobAssignment(job=fake, token="t"))
        )
        # A duplicate assignment of the running job.
        await server.send_message(
            wid, agent_pb.ServerMessage(assignment=agent_pb.JobAssignment(job=job.job, token="t"))
        )
        await trio.testing.wait_all_tasks_blocked()
        stats = worker.statistics()
        assert stats.running_jobs == 1 and stats.jobs_started == 1
        assert stats.worker_id == wid and stats.reconnects == 0
        release.set()
        await server.wait_job_status(job.job.id, agent_pb.JS_SUCCESS)
        await server.create_dispatch(room="r2", agent_name="test-agent")
        await server.wait_for_job(room="r2", status=agent_pb.JS_SUCCESS)


async def test_load_fn_and_threshold(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    load = 0.2

    def load_fn(stats: object) -> float:
        return load

    async with running_worker(server, load_fn=load_fn, load_threshold=0.7, load_interval=0.05):
        sw = await server.wait_for_worker(agent_name="test-agent")
        await eventually(lambda: math.isclose(sw.load, 0.2, abs_tol=1e-6))
        assert sw.status == agent_pb.WS_AVAILABLE
        load = 5.0  # clamped to 1
        await eventually(lambda: sw.status == agent_pb.WS_FULL)
        assert sw.load == 1.0
