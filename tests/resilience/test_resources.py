"""Resources and health: the monitor's events, limits enforced by the worker, the health monitor."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing
from livekit.protocol import agent as agent_pb

from trio_lkagent import JobContext, Worker
from trio_lkagent.devserver import DevServer
from trio_lkagent.resilience import (
    HealthMonitor,
    ResourceEventKind,
    ResourceHealth,
    ResourceLimits,
    ResourceSampler,
    ResourceStatus,
    ResourceThresholds,
    open_resource_monitor,
)

from .._http import http_get
from ..conftest import worker_options
from ._util import eventually, forever, running_worker

MB = 2**20


async def test_memory_limit_holds_ws_full_with_the_reason_then_recovers(
    server: DevServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A job allocating 300 MB crosses max_memory_mb: WS_FULL, no new job; freed: back."""
    caplog.set_level(logging.INFO)
    baseline = ResourceSampler().sample().process_memory_mb
    hook_calls: list[str] = []

    async def on_memory_limit(reason: str) -> None:
        hook_calls.append(reason)

    limits = ResourceLimits(max_memory_mb=baseline + 150, on_memory_limit=on_memory_limit)
    allocated = trio.Event()
    release = trio.Event()
    ran: list[str] = []

    async def entrypoint(ctx: JobContext) -> None:
        ran.append(ctx.room_name)
        if ctx.room_name != "hog":
            return
        block = bytearray(b"\x01") * (300 * MB)  # written, so resident
        allocated.set()
        await release.wait()
        del block

    async with running_worker(
        server, entrypoint, resource_limits=limits, load_interval=0.05
    ) as worker:
        sw = await server.wait_for_worker(agent_name="test-agent")
        await server.create_dispatch(room="hog", agent_name="test-agent")
        await allocated.wait()
        await eventually(lambda: sw.status == agent_pb.WS_FULL)
        reason = worker.statistics().full_reason
        assert reason is not None and reason.startswith("memory limit:")
        assert f"max_memory_mb={baseline + 150:g}" in reason
        assert worker.statistics().status == "full"
        assert hook_calls == [reason]
        # While held, a new dispatch does not reach this worker.
        await server.create_dispatch(room="refused", agent_name="test-agent")
        await trio.sleep(0.3)
        assert "refused" not in ran
        release.set()
        await eventually(lambda: sw.status == agent_pb.WS_AVAILABLE)
        assert worker.statistics().full_reason is None
        await server.create_dispatch(room="after", agent_name="test-agent")
        await server.wait_for_job(room="after", status=agent_pb.JS_SUCCESS)
    assert "over a resource limit, declining jobs: memory limit" in caplog.text
    assert "back under the resource limits: taking jobs again" in caplog.text


async def test_job_limit_refuses_requests_with_the_reason(server: DevServer) -> None:
    """ResourceLimits(max_jobs=1): one job runs, the worker then reports full with the reason."""
    async with running_worker(
        server, resource_limits=ResourceLimits(max_jobs=1), load_interval=0.05
    ) as worker:
        sw = await server.wait_for_worker(agent_name="test-agent")
        await server.create_dispatch(room="one", agent_name="test-agent")
        await server.wait_for_job(room="one", status=agent_pb.JS_RUNNING)
        await eventually(lambda: sw.status == agent_pb.WS_FULL)
        assert worker.statistics().full_reason == "job limit: 1 running, max_jobs=1"


async def test_max_uptime_drains_and_serve_returns(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    async def entrypoint(ctx: JobContext) -> None:
        await trio.sleep(300)

    # Virtual time also jumps while real sockets are awaited (to the next timer, at
    # most load_interval away), so max_uptime leaves a wide margin for the dispatch.
    worker = Worker(
        entrypoint,
        worker_options(server, resource_limits=ResourceLimits(max_uptime=100), load_interval=1),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        t0 = trio.current_time()
        await server.create_dispatch(room="long", agent_name="test-agent")
        await server.wait_for_job(room="long", status=agent_pb.JS_RUNNING)
    # serve returned by itself (the nursery closed): it drained at max_uptime, waiting
    # for the running job to finish (the job ran its 300 s).
    assert 300 <= trio.current_time() - t0 < 400
    stats = worker.statistics()
    assert stats.status == "stopped" and stats.jobs_succeeded == 1
    assert stats.full_reason == "max_uptime 100 s reached"


async def test_resource_monitor_reports_oom_risk_and_task_leaks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rss = ResourceSampler().sample().process_memory_mb
    ooms: list[ResourceStatus] = []
    leaks: list[int] = []

    async def on_oom(status: ResourceStatus) -> None:
        ooms.append(status)

    async def on_leak(count: int) -> None:
        leaks.append(count)

    thresholds = ResourceThresholds(leak_growth=50, leak_samples=3)
    async with open_resource_monitor(
        interval=0.02,
        thresholds=thresholds,
        memory_limit_mb=rss * 1.02,  # this process is at ~98% of it: critical
        on_oom=on_oom,
        on_leak=on_leak,
    ) as monitor:
        status = monitor.status()
        assert status is not None
        assert status.health is ResourceHealth.CRITICAL and status.oom_risk
        assert status.task_count >= 2 and status.thread_count >= 1 and status.open_fds > 0
        first = [monitor.events.receive_nowait(), monitor.events.receive_nowait()]
        assert [e.kind for e in first] == [
            ResourceEventKind.HEALTH_CHANGED,
            ResourceEventKind.OOM_RISK,
        ]
        # Tasks pile up while no job is added: a leak.
        leaked = trio.Event()

        async def pile_up(nursery: trio.Nursery) -> None:
            while not leaked.is_set():
                for _ in range(40):
                    nursery.start_soon(trio.sleep_forever)
                await trio.sleep(0.02)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pile_up, nursery)
            with trio.fail_after(30):
                async for event in monitor.events:
                    if event.kind is ResourceEventKind.TASK_LEAK:
                        leaked.set()
                        break
            nursery.cancel_scope.cancel()
        assert event.count >= 50 and event.status.leak_detected
    assert ooms and ooms[0].oom_risk
    assert leaks and leaks[0] >= 50


async def test_resource_health_grades_at_the_seed_thresholds() -> None:
    from trio_lkagent.resilience import ResourceMonitor

    sample = ResourceSampler().sample()
    monitor = ResourceMonitor(memory_limit_mb=sample.process_memory_mb / 0.5)  # 50 %
    assert monitor.grade(sample, 10).health is ResourceHealth.GOOD
    assert monitor.grade(sample, 5000).health is ResourceHealth.WARNING
    assert monitor.grade(sample, 8001).health is ResourceHealth.CRITICAL
    at_85 = ResourceMonitor(memory_limit_mb=sample.process_memory_mb / 0.85)
    assert at_85.grade(sample, 10).health is ResourceHealth.WARNING
    custom = ResourceMonitor(
        memory_limit_mb=sample.process_memory_mb / 0.85,
        thresholds=ResourceThresholds(memory_warning=90, memory_critical=95),
    )
    assert custom.grade(sample, 10).health is ResourceHealth.GOOD


async def test_health_monitor_counts_consecutive_results() -> None:
    ok = True
    flips: list[str] = []

    async def check() -> str | None:
        await trio.lowlevel.checkpoint()
        return None if ok else "db down"

    async def on_healthy() -> None:
        flips.append("healthy")

    async def on_unhealthy(reason: str) -> None:
        flips.append(reason)

    monitor = HealthMonitor(
        healthy_threshold=2, unhealthy_threshold=3, on_healthy=on_healthy, on_unhealthy=on_unhealthy
    )
    monitor.add_check("db", check)
    ok = False
    assert not await monitor.check_once()
    assert not await monitor.check_once()
    assert monitor.healthy and flips == []
    await monitor.check_once()
    assert not monitor.healthy and monitor.reason == "db: db down" and flips == ["db: db down"]
    ok = True
    await monitor.check_once()
    assert not monitor.healthy
    await monitor.check_once()
    assert monitor.healthy and flips == ["db: db down", "healthy"]


async def test_health_monitor_flips_the_health_endpoint(server: DevServer) -> None:
    from trio_lkagent import serve_health

    failing = False
    unhealthy = trio.Event()
    healthy = trio.Event()

    async def database() -> bool:
        await trio.lowlevel.checkpoint()
        if failing:
            raise ConnectionRefusedError("no database")
        return True

    async def on_unhealthy(reason: str) -> None:
        unhealthy.set()

    async def on_healthy() -> None:
        healthy.set()

    monitor = HealthMonitor(
        check_interval=0.05,
        unhealthy_threshold=3,
        healthy_threshold=2,
        on_unhealthy=on_unhealthy,
        on_healthy=on_healthy,
    )
    monitor.add_check("database", database)
    worker = Worker(forever, worker_options(server, health_monitor=monitor))
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_health, worker, "127.0.0.1", 0)
        await nursery.start(worker.serve)
        await eventually(lambda: monitor.statistics().checks_run >= 1)
        assert (await http_get(url + "/"))[0] == 200
        failing = True
        with trio.fail_after(30):
            await unhealthy.wait()
        assert monitor.statistics().consecutive_failures == 3
        status, _, body = await http_get(url + "/")
        assert status == 503
        assert body == b"unhealthy: database: ConnectionRefusedError: no database\n"
        failing = False
        with trio.fail_after(30):
            await healthy.wait()
        assert (await http_get(url + "/"))[0] == 200
        nursery.cancel_scope.cancel()
