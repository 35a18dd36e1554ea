"""The worker against the dev server under faults: defects 3 (jobs that swallow
Cancelled) and 5 (the socket of a 1009 close)."""

from __future__ import annotations

import gc
import os

import pytest
import trio
import trio.testing
from livekit.protocol import agent as agent_pb

from trio_lkagent import JobContext, Worker
from trio_lkagent._health import health_report
from trio_lkagent._logging import sdk_cleanup
from trio_lkagent.devserver import DevServer

from ..conftest import worker_options


def _stubborn(release: trio.Event, cancelled: trio.Event) -> object:
    async def entrypoint(ctx: JobContext) -> None:
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            cancelled.set()  # and swallowed: the bug this guards against
        with trio.CancelScope(shield=True):
            await release.wait()

    return entrypoint


async def _eventually(predicate: object, within: float = 60) -> None:
    with trio.fail_after(within):
        while not predicate():  # type: ignore[operator]  # noqa: ASYNC110 - virtual time
            await trio.sleep(0.01)


async def test_job_ignoring_cancellation_on_drain_is_reported_failed(
    server: DevServer, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    release, cancelled = trio.Event(), trio.Event()
    worker = Worker(
        _stubborn(release, cancelled),  # type: ignore[arg-type]
        worker_options(server, drain_timeout=1, shutdown_grace=2),
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_release_on_exit, release)  # a failed assert must not hang
        await nursery.start(worker.serve)
        sw = await server.wait_for_worker(agent_name="test-agent")
        await server.create_dispatch(room="r1", agent_name="test-agent")
        job = await server.wait_for_job(room="r1", status=agent_pb.JS_RUNNING)
        t0 = trio.current_time()
        worker.drain()
        await cancelled.wait()
        with trio.fail_after(30):
            done = await server.wait_job_status(job.job.id, agent_pb.JS_FAILED)
        # drain_timeout (1 s) + shutdown_grace (2 s), not "whenever the job gives up".
        assert trio.current_time() - t0 <= 3.5
        assert done.job.state.error == "job ignored cancellation"
        stats = worker.statistics()
        assert stats.stuck_jobs == 1 and stats.jobs_failed == 1
        assert health_report(worker)[0] is False
        # The session closes on schedule (1000), with the task still running.
        await _eventually(lambda: sw.close_code is not None)
        assert sw.close_code == 1000
        assert trio.current_time() - t0 <= 4.5
        release.set()  # the task finally ends; serve returns
        await _eventually(lambda: worker.statistics().status == "stopped")
        nursery.cancel_scope.cancel()
    assert worker.statistics().status == "stopped"
    assert worker.statistics().stuck_jobs == 0
    stuck = [r for r in caplog.records if "ignored cancellation" in r.getMessage()]
    assert stuck and "test_worker_devserver.py" in stuck[0].getMessage()  # where it is stuck


async def test_job_ignoring_cancellation_on_cancel_is_reported_failed(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    release, cancelled = trio.Event(), trio.Event()
    worker = Worker(
        _stubborn(release, cancelled),  # type: ignore[arg-type]
        worker_options(server, shutdown_grace=2),
    )
    job_seen = trio.Event()
    t_cancel = 0.0

    async def release_later() -> None:
        # Plays the operator: the server already has the final status and the socket
        # is closed when the stuck task is finally let go.
        with trio.fail_after(30):
            job = await server.wait_job_status(job_id, agent_pb.JS_FAILED)
        assert job.job.state.error == "job ignored cancellation"
        assert trio.current_time() - t_cancel <= 2.5
        await _eventually(lambda: sw.close_code is not None)
        assert sw.close_code == 1000
        release.set()
        outer.cancel_scope.cancel()

    async with trio.open_nursery() as outer:
        outer.start_soon(_release_on_exit, release)
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.serve)
                sw = await server.wait_for_worker(agent_name="test-agent")
                await server.create_dispatch(room="r1", agent_name="test-agent")
                job = await server.wait_for_job(room="r1", status=agent_pb.JS_RUNNING)
                job_id = job.job.id
                job_seen.set()
                outer.start_soon(release_later)
                t_cancel = trio.current_time()
                scope.cancel()
    assert release.is_set() and cancelled.is_set()


async def _release_on_exit(release: trio.Event) -> None:
    try:
        await trio.sleep_forever()
    finally:
        release.set()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_oversize_frame_closes_the_socket(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    worker = Worker(_noop, worker_options(server, max_message_size=4096))
    gc.disable()  # a collection would close leaked sockets and hide the leak
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            await trio.testing.wait_all_tasks_blocked()
            baseline = _fds()
            for _ in range(6):
                wid = worker.worker_id
                assert wid is not None
                await server.send_raw(wid, b"\x00" * 10_000)
                await _eventually(lambda w=wid: worker.worker_id not in (None, w))
                await trio.testing.wait_all_tasks_blocked()
            assert worker.statistics().reconnects == 6
            assert _fds() <= baseline + 1
            worker.drain()
    finally:
        gc.enable()


async def _noop(ctx: JobContext) -> None:
    pass


async def test_a_job_in_the_sdks_own_cleanup_is_not_taken_for_a_stuck_one(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    # Cancelled, the job re-raises at once but first runs the SDK's shielded,
    # bounded cleanups (an unpublish, stream closes: up to a few seconds each on a
    # struggling native client), longer than shutdown_grace in all. That is not
    # ignoring cancellation: the job ends as terminated, the worker stays healthy.
    async def entrypoint(ctx: JobContext) -> None:
        try:
            await trio.sleep_forever()
        finally:
            for _ in range(3):  # three closes of 2 s each, as in ctx.connect's teardown
                with sdk_cleanup(), trio.CancelScope(shield=True):
                    await trio.sleep(2)

    worker = Worker(entrypoint, worker_options(server, shutdown_grace=2))
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        await server.create_dispatch(room="r1", agent_name="test-agent")
        job = await server.wait_for_job(room="r1", status=agent_pb.JS_RUNNING)
        t0 = trio.current_time()
        await server.terminate_job(job.job.id)
        await _eventually(lambda: worker.statistics().running_jobs == 0)
        assert 6 <= trio.current_time() - t0 < 7
        stats = worker.statistics()
        assert stats.stuck_jobs == 0 and stats.jobs_failed == 0 and stats.jobs_succeeded == 1
        assert health_report(worker)[0] is True
        nursery.cancel_scope.cancel()
