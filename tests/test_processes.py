"""Per-job processes end to end through the dev server: isolation, termination, setup, the pool."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pathlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from livekit.protocol import agent as agent_pb
from prometheus_client import generate_latest

from trio_lkagent import ConfigurationError, JobContext, Worker, WorkerOptions
from trio_lkagent._health import worker_report
from trio_lkagent._metrics import WorkerMetrics
from trio_lkagent.devserver import DevServer
from trio_lkagent.events import DataReceived
from trio_lkagent.processes import JobExecutor
from trio_lkagent.processes._pool import ProcessPool
from trio_lkagent.resilience import Checkpoint, open_checkpoint_store
from trio_lkagent.resilience._checkpoint import checkpoint_scope

from . import process_agents
from .conftest import worker_options

SAFETY = 30  # generous: a loaded machine starts processes slowly


@asynccontextmanager
async def process_worker(
    server: DevServer, *, setup: object = process_agents.setup, **options: object
) -> AsyncIterator[Worker]:
    opts = worker_options(
        server,
        job_executor=JobExecutor.PROCESS,
        num_idle_processes=options.pop("num_idle_processes", 2),
        **options,
    )
    worker = Worker(process_agents.entrypoint, opts, setup=setup)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        yield worker
        nursery.cancel_scope.cancel()  # running jobs are cancelled in their processes


async def start_job(server: DevServer, room: str, kind: str) -> str:
    await server.create_dispatch(room, "test-agent", metadata=kind)
    with trio.fail_after(SAFETY):
        job = await server.wait_for_job(room=room, status=agent_pb.JS_RUNNING)
    return job.id


async def echo(server: DevServer, room: str, text: str) -> list[str]:
    """Send *text* on topic ping in *room*; the agent's reply split on ':'."""
    async with server.open_participant(room, f"user-{text}") as user:
        with trio.fail_after(SAFETY):
            while True:
                await user.publish_data(text.encode(), topic="ping")
                with trio.move_on_after(1):
                    async for event in user.events():
                        if isinstance(event, DataReceived) and event.topic == "pong":
                            return event.payload.decode().split(":")
    raise AssertionError("unreachable")


async def test_a_job_in_a_process_echoes_and_ends_on_termination(server: DevServer) -> None:
    async with process_worker(server) as worker:
        job_id = await start_job(server, "proc-echo", "echo")
        reply = await echo(server, "proc-echo", "hi")
        assert reply[:4] == ["echo", "hi", "1", "True"]  # setup ran once, in this process
        stats = worker.statistics().processes
        assert stats is not None and job_id in stats.running
        assert int(reply[4]) == stats.running[job_id].pid != os.getpid()
        assert stats.running[job_id].rss_mb > 5  # memory per job, read from /proc
        report = worker_report(worker)["processes"]
        assert report["running"][job_id]["pid"] == int(reply[4])
        metrics = generate_latest(WorkerMetrics(worker).registry).decode()
        assert f'lkagent_job_process_rss_bytes{{job_id="{job_id}"}}' in metrics
        assert "lkagent_processes_idle 2.0" in metrics or "lkagent_processes_idle 1.0" in metrics
        await server.terminate_job(job_id)
        with trio.fail_after(SAFETY):
            job = await server.wait_job_status(job_id, agent_pb.JS_SUCCESS)
        assert not job.job.state.error


DEATHS = {
    "exit": "job process exited with code 1",
    "segv": "job process exited with signal 11 (SIGSEGV)",
    "memory": "job process exceeded the memory limit",
    "fail": "ValueError: boom in the child",
}


async def test_dying_jobs_fail_alone(server: DevServer) -> None:
    """os._exit, SIGSEGV, the memory limit and an exception: each fails its job only."""
    async with process_worker(server, job_memory_limit_mb=300, num_idle_processes=4) as worker:
        await start_job(server, "proc-survivor", "echo")
        assert (await echo(server, "proc-survivor", "before"))[1] == "before"
        doomed = {kind: await start_job(server, f"proc-{kind}", kind) for kind in DEATHS}
        for kind, job_id in doomed.items():
            with trio.fail_after(SAFETY):
                job = await server.wait_job_status(job_id, agent_pb.JS_FAILED)
            assert DEATHS[kind] in job.job.state.error, (kind, job.job.state.error)
        # The other job, and the worker, carry on; the pool is refilled.
        reply = await echo(server, "proc-survivor", "after")
        assert reply[1] == "after"
        stats = worker.statistics()
        assert stats.registered and stats.jobs_failed == 4
        assert stats.processes is not None
        assert (stats.processes.crashed, stats.processes.memory_killed) == (3, 1)
        with trio.fail_after(SAFETY):
            while worker.statistics().processes.idle < 4:  # type: ignore[union-attr]  # noqa: ASYNC110
                await trio.sleep(0.05)


async def test_logs_of_a_job_process_reach_the_worker_with_job_context(
    server: DevServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with process_worker(server) as worker:
        job_id = await start_job(server, "proc-logs", "wait")
        with trio.fail_after(SAFETY):
            while not any("starts (wait)" in r.getMessage() for r in caplog.records):  # noqa: ASYNC110
                await trio.sleep(0.05)
        await server.terminate_job(job_id)
        with trio.fail_after(SAFETY):
            await server.wait_job_status(job_id, agent_pb.JS_SUCCESS)
        del worker
    started = next(r for r in caplog.records if "starts (wait)" in r.getMessage())
    assert started.name == "tests.process_agents"
    assert started.processName == "job process"
    callback = [r for r in caplog.records if "shutdown callback" in r.getMessage()]
    assert callback and "terminated by the server" in callback[0].getMessage()


async def test_setup_runs_once_per_worker_with_tasks(server: DevServer) -> None:
    seen: list[dict[str, object]] = []
    done = trio.Event()

    async def entrypoint(ctx: JobContext) -> None:
        seen.append(ctx.proc.userdata)
        if len(seen) == 2:
            done.set()

    before = process_agents.SETUP_RUNS
    worker = Worker(entrypoint, worker_options(server), setup=process_agents.async_setup)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        await server.create_dispatch("task-setup-1", "test-agent")
        await server.create_dispatch("task-setup-2", "test-agent")
        with trio.fail_after(SAFETY):
            await done.wait()
        nursery.cancel_scope.cancel()
    assert before + 1 == process_agents.SETUP_RUNS
    assert seen[0] is seen[1]
    assert seen[0]["setup_pid"] == os.getpid()


async def test_a_failing_setup_is_an_error_at_start_with_tasks(server: DevServer) -> None:
    async def entrypoint(ctx: JobContext) -> None:
        raise AssertionError("never runs")  # pragma: no cover

    worker = Worker(entrypoint, worker_options(server), setup=process_agents.failing_setup)
    with trio.fail_after(SAFETY), pytest.raises(RuntimeError, match="model file") as info:
        await worker.serve()
    assert any("setup hook" in note for note in info.value.__notes__)
    assert not server.workers  # it never registered


async def test_a_failing_setup_in_processes_fails_jobs_not_the_worker(
    server: DevServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with process_worker(server, setup=process_agents.failing_setup) as worker:
        job_id = await start_job_any(server, "proc-bad-setup", "quick")
        with trio.fail_after(SAFETY):
            job = await server.wait_job_status(job_id, agent_pb.JS_FAILED)
        assert "the setup hook failed: RuntimeError: the model file is missing" in (
            job.job.state.error
        )
        assert worker.statistics().registered
        stats = worker.statistics().processes
        assert stats is not None and stats.setup_failures >= 1
    assert any("setup hook failed" in r.getMessage() for r in caplog.records)


async def test_drain_ends_process_jobs(server: DevServer) -> None:
    opts = worker_options(
        server, job_executor=JobExecutor.PROCESS, num_idle_processes=1, drain_timeout=1
    )
    worker = Worker(process_agents.entrypoint, opts, setup=process_agents.setup)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        job_id = await start_job(server, "proc-drain", "wait")
        with trio.fail_after(SAFETY):
            while job_id not in worker.statistics().processes.running:  # type: ignore[union-attr]  # noqa: ASYNC110
                await trio.sleep(0.01)
        pid = worker.statistics().processes.running[job_id].pid  # type: ignore[union-attr]
        worker.drain()
        with trio.fail_after(SAFETY):
            job = await server.wait_job_status(job_id, agent_pb.JS_SUCCESS)
    # serve returned: the job's process is gone, and so are the idle ones.
    assert worker.statistics().status == "stopped"
    assert not job.job.state.error
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not multiprocessing.active_children()


async def test_fifty_jobs_through_a_pool_of_four(server: DevServer) -> None:
    async with process_worker(server, num_idle_processes=4) as worker:
        rooms = [f"proc-many-{i}" for i in range(50)]
        for room in rooms:
            await server.create_dispatch(room, "test-agent", metadata="quick")
        with trio.fail_after(SAFETY * 4):
            while worker.statistics().jobs_succeeded < 50:  # noqa: ASYNC110
                await trio.sleep(0.1)
        stats = worker.statistics()
        assert (stats.jobs_succeeded, stats.jobs_failed) == (50, 0)
        assert stats.processes is not None and stats.processes.crashed == 0
        assert stats.processes.started >= 50  # a fresh process for every job
        with trio.fail_after(SAFETY):
            for room in rooms:
                await server.wait_for_job(room=room, status=agent_pb.JS_SUCCESS)


async def start_job_any(server: DevServer, room: str, kind: str) -> str:
    """Dispatch and return the job id whatever status it reaches."""
    await server.create_dispatch(room, "test-agent", metadata=kind)
    with trio.fail_after(SAFETY):
        job = await server.wait_for_job(room=room)
    return job.id


async def test_a_job_that_ignores_cancellation_is_killed_after_the_grace(
    server: DevServer, caplog: pytest.LogCaptureFixture
) -> None:
    async with process_worker(server, shutdown_grace=0.5, num_idle_processes=1) as worker:
        job_id = await start_job(server, "proc-stuck", "stuck")
        # Its entrypoint blocks before its first checkpoint, whenever the
        # shutdown arrives (its own logs cannot get out either).
        with trio.fail_after(SAFETY):
            while job_id not in worker.statistics().processes.running:  # type: ignore[union-attr]  # noqa: ASYNC110
                await trio.sleep(0.01)
        await server.terminate_job(job_id)
        with trio.fail_after(SAFETY):
            job = await server.wait_job_status(job_id, agent_pb.JS_SUCCESS)
        # (The server records a terminated job's end at once, as Go does.) The
        # worker's own end of it: the process killed after the grace, one outcome.
        with trio.fail_after(SAFETY):
            while worker.statistics().jobs_succeeded < 1:  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert job.status_history[-2:] == [agent_pb.JS_RUNNING, agent_pb.JS_SUCCESS]
        stats = worker.statistics()
        assert (stats.jobs_succeeded, stats.jobs_failed, stats.running_jobs) == (1, 0, 0)
        assert stats.processes is not None and stats.processes.grace_killed == 1
    assert any("did not stop within 1.5 s" in r.getMessage() for r in caplog.records)


async def test_spawn_start_method(server: DevServer) -> None:
    """Spawn (a fresh interpreter per process) runs jobs the same way, setup included."""
    async with process_worker(server, process_start_method="spawn", num_idle_processes=1) as worker:
        job_id = await start_job_any(server, "proc-spawn", "check-setup")
        with trio.fail_after(SAFETY):
            job = await server.wait_job_status(job_id, agent_pb.JS_SUCCESS)
        assert not job.job.state.error
        with trio.fail_after(SAFETY):
            while worker.statistics().jobs_succeeded < 1:  # noqa: ASYNC110
                await trio.sleep(0.05)
        assert worker.statistics().jobs_failed == 0


def test_a_closure_entrypoint_is_refused_for_processes() -> None:
    async def closure(ctx: JobContext) -> None:  # pragma: no cover
        pass

    opts = WorkerOptions(
        url="ws://127.0.0.1:1",
        api_key="k",
        api_secret="s",
        job_executor=JobExecutor.PROCESS,
    )
    with pytest.raises(ConfigurationError, match="importable"):
        ProcessPool(opts, closure, None)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("process_start_method", "thread", "process_start_method"),
        ("num_idle_processes", -1, "num_idle_processes"),
        ("job_memory_limit_mb", 0, "job_memory_limit_mb"),
        ("job_executor", "fiber", "fiber"),
    ],
)
def test_process_options_are_validated(field: str, value: object, message: str) -> None:
    with pytest.raises((ConfigurationError, ValueError), match=message):
        WorkerOptions(url="ws://127.0.0.1:1", api_key="k", api_secret="s", **{field: value})  # type: ignore[arg-type]


async def test_a_process_job_ending_itself_reports_before_leaving_the_room(
    server: DevServer,
) -> None:
    """Teardown order across the boundary: final status first, then the child leaves."""
    async with process_worker(server, num_idle_processes=1):
        job_id = await start_job(server, "proc-bye", "echo")
        assert (await echo(server, "proc-bye", "hello"))[1] == "hello"
        async with server.open_participant("proc-bye", "user-bye") as user:
            await user.publish_data(b"bye")
            with trio.fail_after(SAFETY):
                job = await server.wait_job_status(job_id, agent_pb.JS_SUCCESS)
        assert not job.job.state.error  # not "agent worker left the room"
        assert job.status_history[-2:] == [agent_pb.JS_RUNNING, agent_pb.JS_SUCCESS]


async def test_ctx_checkpoint_in_a_process_uses_the_workers_store(
    server: DevServer, tmp_path: pathlib.Path
) -> None:
    url = f"sqlite:///{tmp_path / 'checkpoints.db'}"
    async with process_worker(server, num_idle_processes=1, checkpoint_store=url) as worker:
        job_id = await start_job_any(server, "proc-checkpoint", "checkpoint")
        with trio.fail_after(SAFETY):
            await server.wait_job_status(job_id, agent_pb.JS_SUCCESS)
            while worker.statistics().jobs_succeeded < 1:  # noqa: ASYNC110
                await trio.sleep(0.05)
        job = server.jobs[job_id].job
    store = open_checkpoint_store(url)
    try:
        checkpoint = Checkpoint(store, checkpoint_scope(job, "test-agent"))
        saved_by = await checkpoint.load("saved_by")
    finally:
        await store.aclose()
    assert isinstance(saved_by, int) and saved_by != os.getpid()
