"""Per-job processes end to end through the dev server: isolation, termination, setup, the pool."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from livekit.protocol import agent as agent_pb

from trio_lkagent import Worker
from trio_lkagent.devserver import DevServer
from trio_lkagent.events import DataReceived
from trio_lkagent.processes import JobExecutor

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
        assert int(reply[4]) == stats.running[job_id].pid != __import__("os").getpid()
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
