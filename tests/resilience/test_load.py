"""Load: calculators wired into the worker, real CPU samples, statistics and metrics."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import attrs
import pytest
import trio
from livekit.protocol import agent as agent_pb

from trio_lkagent import (
    ConfigurationError,
    JobContext,
    JobType,
    Worker,
    WorkerOptions,
    WorkerStatistics,
)
from trio_lkagent.devserver import DevServer
from trio_lkagent.resilience import (
    CustomLoadCalculator,
    DefaultLoadCalculator,
    LoadCalculator,
    LoadScope,
    ResourceSampler,
    read_cgroup_limits,
)

from .._http import http_get
from ..conftest import worker_options
from ..test_health import metric_values
from ._util import eventually, forever, running_worker

BURN = "while True: pass"


async def test_cpu_burn_raises_the_load_and_flips_ws_full_then_back(server: DevServer) -> None:
    """Two busy child processes of a job push the process-tree CPU over the threshold."""
    release = trio.Event()

    async def entrypoint(ctx: JobContext) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(trio.run_process, [sys.executable, "-c", BURN])
            await release.wait()
            nursery.cancel_scope.cancel()  # kills the burners

    calculator = DefaultLoadCalculator(
        cpu_weight=1, memory_weight=0, job_weight=0, scope=LoadScope.PROCESS, smoothing=0.6
    )
    assert isinstance(calculator, LoadCalculator)
    async with running_worker(
        server, entrypoint, load_calculator=calculator, load_threshold=0.3, load_interval=0.1
    ) as worker:
        sw = await server.wait_for_worker(agent_name="test-agent")
        await eventually(lambda: sw.status == agent_pb.WS_AVAILABLE and sw.load < 0.3)
        await server.create_dispatch(room="burn", agent_name="test-agent")
        await eventually(lambda: sw.status == agent_pb.WS_FULL)
        assert sw.load >= 0.3
        # The burners are children: the tree's CPU (percent of one core) shows them.
        await eventually(lambda: worker.statistics().cpu_percent > 30)
        resources = worker.statistics().resources
        assert resources is not None and resources.processes >= 3
        release.set()
        await eventually(lambda: sw.status == agent_pb.WS_AVAILABLE)
        history = worker.statistics().load_history
        peak = history.index(max(history))
        assert history[peak] >= 0.3 and min(history[peak:]) < 0.3


async def test_custom_calculator_declines_with_its_reason(
    server: DevServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_lkagent.worker")
    asked: list[tuple[JobType, float]] = []

    def acceptor(job_type: JobType, load: float) -> bool:
        asked.append((job_type, load))
        return len(asked) > 1  # the first request is declined

    calculator = CustomLoadCalculator(calculator=lambda stats: 0.25, acceptor=acceptor)
    ran = trio.Event()

    async def entrypoint(ctx: JobContext) -> None:
        ran.set()

    async with running_worker(server, entrypoint, load_calculator=calculator) as worker:
        sw = await server.wait_for_worker(agent_name="test-agent")
        await eventually(lambda: abs(sw.load - 0.25) < 1e-6)
        await server.create_dispatch(room="picky-1", agent_name="test-agent")
        await eventually(lambda: worker.statistics().requests_declined == 1)
        assert not ran.is_set() and asked == [(JobType.ROOM, 0.25)]
        await server.create_dispatch(room="picky-2", agent_name="test-agent")
        await server.wait_for_job(room="picky-2", status=agent_pb.JS_SUCCESS)
        assert ran.is_set()
    assert "load calculator declined at load 0.25" in caplog.text


def test_load_fn_and_load_calculator_are_exclusive() -> None:
    options = WorkerOptions(
        url="ws://127.0.0.1:1",
        api_key="k",
        api_secret="s",
        load_fn=lambda s: 0.0,
        load_calculator=DefaultLoadCalculator(),
    )
    with pytest.raises(ConfigurationError, match="load_calculator or load_fn"):
        Worker(forever, options)


def test_default_calculator_weights_and_smoothing() -> None:
    calc = DefaultLoadCalculator(cpu_weight=1, memory_weight=0, job_weight=1, smoothing=0.5)
    sampler = ResourceSampler()
    sample = sampler.sample()
    stats = WorkerStatistics(
        worker_id=None, status="available", registered=True, load=0.0, running_jobs=1,
        reserved_jobs=1, max_jobs=4, jobs_started=0, jobs_succeeded=0, jobs_failed=0,
        requests_declined=0, reconnects=0, ping_rtt=None, jobs={}, resources=sample,
    )  # fmt: skip
    raw = calc.raw_load(stats)
    assert raw == pytest.approx((sample.machine_cpu_percent / 100 + 0.5) / 2)
    first = calc.calculate_load(stats)
    assert first == pytest.approx(raw)
    idle = attrs.evolve(stats, running_jobs=0, reserved_jobs=0)
    # One idle reading moves the smoothed load only half way (no flip on one sample).
    second = calc.calculate_load(idle)
    assert second == pytest.approx(0.5 * calc.raw_load(idle) + 0.5 * first)


def test_cgroup_limits_v2_and_v1(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("536870912\n")
    (v2 / "cpu.max").write_text("150000 100000\n")
    (v2 / "memory.current").write_text("268435456\n")
    limits = read_cgroup_limits(v2)
    assert (limits.memory_bytes, limits.cpu_cores, limits.memory_used_bytes) == (
        512 * 2**20, 1.5, 256 * 2**20,
    )  # fmt: skip
    (v2 / "memory.max").write_text("max\n")
    (v2 / "cpu.max").write_text("max 100000\n")
    assert read_cgroup_limits(v2).memory_bytes is None
    assert read_cgroup_limits(v2).cpu_cores is None
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "cpu").mkdir()
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    limits = read_cgroup_limits(v1)
    assert (limits.memory_bytes, limits.cpu_cores) == (None, 2.0)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("1073741824\n")
    assert read_cgroup_limits(v1).memory_bytes == 2**30


def test_sampler_uses_the_container_memory_limit(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text(str(4 * 2**30))
    (tmp_path / "memory.current").write_text(str(2**30))
    (tmp_path / "cpu.max").write_text("50000 100000")
    sample = ResourceSampler(cgroup_root=str(tmp_path)).sample()
    assert sample.memory_limit_mb == 4096
    assert sample.machine_memory_percent == pytest.approx(25.0)
    assert sample.cpu_cores == 0.5
    assert sample.process_memory_mb > 10 and sample.threads >= 1 and sample.open_fds > 0


async def test_statistics_metrics_and_worker_report(server: DevServer) -> None:
    from trio_lkagent import serve_health

    async def entrypoint(ctx: JobContext) -> None:
        await trio.sleep(0.05)

    worker = Worker(entrypoint, worker_options(server, load_interval=0.1))
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_health, worker, "127.0.0.1", 0)
        await nursery.start(worker.serve)
        before = worker.statistics()
        assert before.connection_state == "connected" and before.start_time is not None
        assert before.last_job_time is None
        await server.create_dispatch(room="stats", agent_name="test-agent")
        await server.wait_for_job(room="stats", status=agent_pb.JS_SUCCESS)
        await eventually(lambda: worker.statistics().memory_mb > 0)
        stats = worker.statistics()
        assert stats.last_job_time is not None and stats.last_job_time >= before.start_time
        assert stats.network_bytes_in > 0 and stats.network_bytes_out > 0
        assert stats.last_heartbeat is not None and stats.uptime > 0
        assert 0 < len(stats.load_history) <= 60
        metrics = metric_values((await http_get(url + "/metrics"))[2])
        assert metrics['lkagent_job_duration_seconds_count{outcome="returned"}'] == 1
        assert metrics['lkagent_job_duration_seconds_sum{outcome="returned"}'] >= 0.05
        assert metrics["lkagent_memory_mb"] > 0
        assert "lkagent_cpu_percent" in metrics
        assert metrics["lkagent_network_sent_bytes_total"] > 0
        import json

        report = json.loads((await http_get(url + "/worker"))[2])
        assert report["connection_state"] == "connected" and report["memory_mb"] > 0
        assert report["full_reason"] is None and report["health"]["resources"] == "GOOD"
        nursery.cancel_scope.cancel()
    assert worker.statistics().connection_state == "stopped"


async def test_public_add_observer_sees_the_job_lifecycle(server: DevServer) -> None:
    from trio_lkagent import WorkerObserver

    seen: list[str] = []

    class Recorder(WorkerObserver):
        def job_started(self, ctx: JobContext) -> None:
            seen.append(f"started {ctx.room_name}")

        def job_ended(self, ctx: JobContext, outcome: str, error: str) -> None:
            seen.append(f"ended {ctx.room_name} {outcome}")

    async def entrypoint(ctx: JobContext) -> None:
        pass

    recorder = Recorder()
    async with running_worker(server, entrypoint) as worker:
        worker.add_observer(recorder)
        await server.create_dispatch(room="obs", agent_name="test-agent")
        await server.wait_for_job(room="obs", status=agent_pb.JS_SUCCESS)
        await eventually(lambda: len(seen) == 2)
        worker.remove_observer(recorder)
        await server.create_dispatch(room="gone", agent_name="test-agent")
        await server.wait_for_job(room="gone", status=agent_pb.JS_SUCCESS)
    assert seen == ["started obs", "ended obs returned"]
