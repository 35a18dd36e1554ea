"""Job deadlines (``job_timeout``, ``accept(timeout=)``, ``ctx.deadline``) and the errors
the worker raises, against the dev server (virtual time where time matters)."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from livekit.protocol import agent as agent_pb

from trio_lkagent import (
    ConnectError,
    ConnectionLostError,
    InvalidJobTypeError,
    JobContext,
    JobRequest,
    JobType,
    ReconnectPolicy,
    RecoveryFailedError,
    ShutdownTimeoutError,
    Worker,
    WorkerNotConnectedError,
    WorkerOptions,
)
from trio_lkagent._exceptions import ConfigurationError
from trio_lkagent.devserver import DevServer

from .conftest import worker_options
from .test_worker import running_worker


class Seen:
    """What an entrypoint saw: its deadline at start and its shutdown reason at exit."""

    def __init__(self) -> None:
        self.started_at: float | None = None
        self.deadline: float | None = None
        self.reason: str | None = None

    async def entrypoint(self, ctx: JobContext) -> None:
        self.started_at, self.deadline = trio.current_time(), ctx.deadline
        try:
            await trio.sleep_forever()
        finally:
            self.reason = ctx.shutdown_reason


async def test_job_timeout_fails_the_job_with_its_message(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    seen = Seen()
    async with running_worker(server, seen.entrypoint, job_timeout=30) as worker:
        await server.create_dispatch(room="t1", agent_name="test-agent")
        job = await server.wait_for_job(room="t1", status=agent_pb.JS_RUNNING)
        await server.wait_job_status(job.id, agent_pb.JS_FAILED)
        assert seen.started_at is not None and seen.deadline is not None
        assert seen.deadline - seen.started_at == pytest.approx(30, abs=0.01)
        assert trio.current_time() >= seen.deadline
        assert job.job.state.error == "job timed out after 30 s"
        assert seen.reason == "job timed out after 30 s"
        stats = worker.statistics()
        assert (stats.jobs_failed, stats.jobs_succeeded) == (1, 0)
    assert job.status_history[-2:] == [agent_pb.JS_RUNNING, agent_pb.JS_FAILED]


async def test_a_job_done_in_time_succeeds_and_no_timeout_means_no_deadline(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    deadlines: list[float] = []

    async def quick(ctx: JobContext) -> None:
        deadlines.append(ctx.deadline)
        await trio.sleep(5)

    for room, timeout in (("t-in-time", 30), ("t-none", None)):
        async with running_worker(server, quick, job_timeout=timeout):
            await server.create_dispatch(room=room, agent_name="test-agent")
            job = await server.wait_for_job(room=room, status=agent_pb.JS_RUNNING)
            await server.wait_job_status(job.id, agent_pb.JS_SUCCESS)
            assert not job.job.state.error
    assert math.isfinite(deadlines[0]) and deadlines[1] == math.inf


async def test_accept_timeout_overrides_the_worker_default(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    seen = Seen()
    timeouts = {"short": 3.0, "unlimited": math.inf}

    async def on_request(req: JobRequest) -> None:
        await req.accept(timeout=timeouts[req.room_name])

    async with running_worker(server, seen.entrypoint, on_request, job_timeout=100):
        await server.create_dispatch(room="short", agent_name="test-agent")
        job = await server.wait_for_job(room="short", status=agent_pb.JS_RUNNING)
        await server.wait_job_status(job.id, agent_pb.JS_FAILED)
        assert job.job.state.error == "job timed out after 3 s"

        await server.create_dispatch(room="unlimited", agent_name="test-agent")
        job = await server.wait_for_job(room="unlimited", status=agent_pb.JS_RUNNING)
        await trio.sleep(150)  # virtual: past the worker's default (100 s)
        assert seen.deadline == math.inf
        assert not job.ended, (job.status, job.job.state.error)


async def test_a_termination_before_the_deadline_is_not_a_timeout(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    seen = Seen()
    async with running_worker(server, seen.entrypoint, job_timeout=30):
        await server.create_dispatch(room="t-term", agent_name="test-agent")
        job = await server.wait_for_job(room="t-term", status=agent_pb.JS_RUNNING)
        await server.terminate_job(job.id)
        await server.wait_until(lambda: job.ended or None)
    assert job.job.state.status == agent_pb.JS_SUCCESS
    assert seen.reason == "terminated by the server"


async def test_accept_refuses_a_bad_timeout(server: DevServer) -> None:
    errors: list[BaseException] = []

    async def on_request(req: JobRequest) -> None:
        try:
            await req.accept(timeout=0)
        except ValueError as exc:
            errors.append(exc)
            await req.reject()

    async with running_worker(server, request_handler=on_request):
        await server.create_dispatch(room="bad-timeout", agent_name="test-agent")
        await server.wait_until(lambda: errors or None)
    assert "timeout must be a number > 0" in str(errors[0])


def test_job_timeout_option_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="job_timeout"):
        WorkerOptions(url="ws://x", api_key="k", api_secret="s" * 32, job_timeout=-1)


# ------------------------------------------------------------------ errors


def test_invalid_job_type_raises_invalid_job_type_error() -> None:
    with pytest.raises(InvalidJobTypeError, match="invalid job type 7") as info:
        WorkerOptions(url="ws://x", api_key="k", api_secret="s" * 32, job_type=7)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)  # what it raised before, still catchable so
    options = WorkerOptions(url="ws://x", api_key="k", api_secret="s" * 32, job_type=2)  # type: ignore[arg-type]
    assert options.job_type is JobType.PARTICIPANT


async def test_giving_up_raises_recovery_failed_from_the_lost_connection(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    server.faults.withhold_register = True  # every connection is dropped unregistered
    worker = Worker(
        Seen().entrypoint,
        worker_options(server, reconnect=ReconnectPolicy(max_attempts=3), register_timeout=2),
    )
    with pytest.raises(RecoveryFailedError, match="3 failed connection attempt") as info:
        await worker.serve()
    assert isinstance(info.value, ConnectError)
    assert isinstance(info.value.__cause__, ConnectionLostError)


async def test_answering_after_the_connection_is_gone_raises_worker_not_connected(
    server: DevServer,
) -> None:
    entered = trio.Event()
    raised: list[BaseException] = []

    async def on_request(req: JobRequest) -> None:
        # Shielded, so it outlives the session the request came on (which cancels
        # its handlers when the socket drops).
        with trio.CancelScope(shield=True):
            entered.set()
            await server.wait_until(lambda: not server.workers[worker_id].connected or None)
            while worker.statistics().registered:  # noqa: ASYNC110 - the worker's side
                await trio.sleep(0.01)
            try:
                await req.accept()
            except WorkerNotConnectedError as exc:
                raised.append(exc)

    async with running_worker(server, request_handler=on_request) as worker:
        worker_id = worker.worker_id
        assert worker_id is not None
        await server.create_dispatch(room="gone", agent_name="test-agent")
        with trio.fail_after(10):
            await entered.wait()
            await server.drop_worker(worker_id)
            await server.wait_until(lambda: raised or None)
    assert "the connection it was offered on is gone" in str(raised[0])


async def _serve_collecting(
    worker: Worker, raised: list[ShutdownTimeoutError], *, task_status: trio.TaskStatus[str]
) -> None:
    try:
        await worker.serve(task_status=task_status)
    except ShutdownTimeoutError as exc:
        raised.append(exc)


async def test_a_drain_timeout_is_recorded_and_raised_when_strict(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    for strict in (False, True):
        worker = Worker(Seen().entrypoint, worker_options(server, drain_timeout=60))
        raised: list[ShutdownTimeoutError] = []

        async with trio.open_nursery() as nursery:
            await nursery.start(_serve_collecting, worker, raised)
            room = f"drain-{strict}"
            await server.create_dispatch(room=room, agent_name="test-agent")
            job = await server.wait_for_job(room=room, status=agent_pb.JS_RUNNING)
            worker.drain(strict=strict)
        # serve returned (or raised) after the same clean shutdown either way.
        assert job.job.state.status == agent_pb.JS_SUCCESS
        error = worker.statistics().drain_error
        assert isinstance(error, ShutdownTimeoutError)
        assert "drain timeout (60 s) reached with 1 job(s) still running" in str(error)
        assert raised == ([error] if strict else [])
