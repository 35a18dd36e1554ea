"""A storm against one worker through the dev server: dispatch bursts, socket drops,
terminations, garbage frames, jobs that fail. What a user would check afterwards:
the worker still serves, every job it ran reported exactly one final status, it
never held more than max_jobs, nothing was logged as a traceback, and its fds,
threads and Trio tasks are back where they started."""

from __future__ import annotations

import logging
import os
import threading

import pytest
import trio
import trio.testing
from livekit.protocol import agent as agent_pb

from trio_lkagent import JobContext, Worker
from trio_lkagent.devserver import DevServer

from ..conftest import worker_options

MAX_JOBS = 3
FINAL = (agent_pb.JS_SUCCESS, agent_pb.JS_FAILED)


def count_tasks(root: trio.lowlevel.Task) -> int:
    """Tasks in *root*'s tree (the worker's, not the dev server's rooms)."""
    todo = [root]
    n = 0
    while todo:
        task = todo.pop()
        n += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return n


def resources(nursery: trio.Nursery) -> tuple[int, int, int]:
    (serve,) = [t for t in nursery.child_tasks if t.name.endswith("Worker.serve")]
    return len(os.listdir("/proc/self/fd")), threading.active_count(), count_tasks(serve)


async def _job(ctx: JobContext) -> None:
    n = int(ctx.job.room.name.rsplit("-", 1)[1])
    await trio.sleep(0.5 + (n % 4) * 0.5)
    if n % 5 == 0:
        raise RuntimeError(f"job {n} fails on purpose")


async def test_storm(
    server: DevServer, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    worker = Worker(_job, worker_options(server, max_jobs=MAX_JOBS))
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            stats = worker.statistics()
            peak = max(peak, stats.running_jobs + stats.reserved_jobs)
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        nursery.start_soon(watch)
        await server.create_dispatch(room="warm-0", agent_name="test-agent")  # n=0 fails
        await server.wait_for_job(room="warm-0", status=agent_pb.JS_FAILED)
        await trio.testing.wait_all_tasks_blocked()
        before = resources(nursery)
        n = 1
        for round_ in range(8):
            for _ in range(5):
                await server.create_dispatch(room=f"storm-{n}", agent_name="test-agent")
                n += 1
            await trio.sleep(0.3)
            wid = worker.worker_id
            if wid is not None and round_ % 2 == 0:
                await server.send_raw(wid, b"\xff garbage")
            if wid is not None and round_ % 3 == 1:
                await server.drop_worker(wid)  # cut without a close frame
            running = [j for j in server.jobs.values() if j.status == agent_pb.JS_RUNNING]
            if running and round_ % 2 == 1:
                try:
                    await server.terminate_job(running[0].id)
                except KeyError:
                    pass  # its worker connection is gone: not terminable (as in Go)
            await trio.sleep(1)
        with trio.fail_after(120):
            while worker.statistics().running_jobs or worker.statistics().reserved_jobs:  # noqa: ASYNC110
                await trio.sleep(0.1)
            while not worker.statistics().registered:  # noqa: ASYNC110 - virtual time
                await trio.sleep(0.1)
        # Still serving: a new job runs to its end.
        await server.create_dispatch(room="after-1", agent_name="test-agent")
        await server.wait_for_job(room="after-1", status=agent_pb.JS_SUCCESS)
        await trio.testing.wait_all_tasks_blocked()
        after = resources(nursery)
        stats = worker.statistics()
        nursery.cancel_scope.cancel()

    assert peak <= MAX_JOBS
    assert stats.reconnects >= 2
    ran = [j for j in server.jobs.values() if j.launched and not j.simulated]
    assert stats.jobs_started == len(ran) >= 10
    for job in ran:
        finals = [
            u.status
            for _, u in job.updates + job.ignored_updates + job.late_updates
            if u.status in FINAL
        ]
        assert len(finals) == 1, (job, finals)
    assert stats.jobs_succeeded + stats.jobs_failed == stats.jobs_started
    assert after == before, (before, after)
    bad = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR and "fails on purpose" not in r.getMessage()
    ]
    assert not bad, [r.getMessage() for r in bad]
