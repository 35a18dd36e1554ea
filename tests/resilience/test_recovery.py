"""Recovery through the worker and the dev server; the circuit breaker's state machine."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from livekit.protocol import agent as agent_pb

from trio_lkagent import (
    CircuitOpenError,
    FatalError,
    JobContext,
    RetryableError,
    Room,
    Worker,
)
from trio_lkagent._config import ServiceConfig
from trio_lkagent.devserver import DevServer
from trio_lkagent.resilience import (
    BreakerState,
    CircuitBreaker,
    DefaultRecoveryHandler,
    FailedJob,
    RecoveryAction,
    RecoveryHandler,
)

from .._http import http_get
from ..conftest import worker_options
from ..test_health import metric_values
from ._util import running_worker


async def test_failing_twice_then_succeeding_ends_js_success_after_3_attempts(
    server: DevServer, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    attempts: list[tuple[int, float]] = []

    async def entrypoint(ctx: JobContext) -> None:
        attempts.append((ctx.attempt, trio.current_time()))
        if ctx.attempt < 3:
            raise RetryableError(f"flaky #{ctx.attempt}")

    recovery = DefaultRecoveryHandler(max_retries=3, backoff_base=1.0, backoff_multiplier=2.0)
    assert isinstance(recovery, RecoveryHandler)
    async with running_worker(server, entrypoint, recovery=recovery) as worker:
        await server.create_dispatch(room="flaky", agent_name="test-agent")
        job = await server.wait_for_job(room="flaky", status=agent_pb.JS_SUCCESS)
        assert job.status_history == [agent_pb.JS_PENDING, agent_pb.JS_RUNNING, agent_pb.JS_SUCCESS]
        stats = worker.statistics()
        assert (stats.jobs_started, stats.jobs_succeeded, stats.jobs_failed) == (1, 1, 0)
        assert stats.job_retries == 2 and stats.recovery_decisions == {"backoff": 2}
    assert [a for a, _ in attempts] == [1, 2, 3]
    # Backoff 1 s then 2 s between the attempts.
    assert attempts[1][1] - attempts[0][1] == pytest.approx(1.0, abs=0.01)
    assert attempts[2][1] - attempts[1][1] == pytest.approx(2.0, abs=0.01)
    assert "failed on attempt 1 (RetryableError: flaky #1); retrying in 1.00 s" in caplog.text


async def test_retries_exhausted_reports_js_failed_with_the_last_error(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[int] = []

    async def entrypoint(ctx: JobContext) -> None:
        seen.append(ctx.attempt)
        raise ValueError(f"broken #{ctx.attempt}")

    recovery = DefaultRecoveryHandler(max_retries=2, backoff_base=0)
    async with running_worker(server, entrypoint, recovery=recovery) as worker:
        await server.create_dispatch(room="broken", agent_name="test-agent")
        job = await server.wait_for_job(room="broken", status=agent_pb.JS_FAILED)
        assert job.job.state.error == "ValueError: broken #3"
        assert job.status_history.count(agent_pb.JS_FAILED) == 1
        stats = worker.statistics()
        assert stats.recovery_decisions == {"retry": 2, "skip": 1}
        assert stats.jobs_failed == 1
    assert seen == [1, 2, 3]


async def test_fatal_error_is_never_retried(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[int] = []

    async def entrypoint(ctx: JobContext) -> None:
        seen.append(ctx.attempt)
        raise FatalError("bad configuration")

    async with running_worker(
        server, entrypoint, recovery=DefaultRecoveryHandler(max_retries=5)
    ) as worker:
        await server.create_dispatch(room="fatal", agent_name="test-agent")
        job = await server.wait_for_job(room="fatal", status=agent_pb.JS_FAILED)
        assert job.job.state.error == "FatalError: bad configuration"
        assert worker.statistics().recovery_decisions == {"skip": 1}
    assert seen == [1]


async def test_only_retryable_errors_when_asked(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[str] = []

    async def entrypoint(ctx: JobContext) -> None:
        seen.append(f"{ctx.room_name}#{ctx.attempt}")
        if ctx.room_name == "retryable" and ctx.attempt == 1:
            raise RetryableError("again")
        if ctx.room_name == "other":
            raise KeyError("x")

    recovery = DefaultRecoveryHandler(retry_only_retryable=True, backoff_base=0)
    async with running_worker(server, entrypoint, recovery=recovery):
        await server.create_dispatch(room="retryable", agent_name="test-agent")
        await server.wait_for_job(room="retryable", status=agent_pb.JS_SUCCESS)
        await server.create_dispatch(room="other", agent_name="test-agent")
        await server.wait_for_job(room="other", status=agent_pb.JS_FAILED)
    assert sorted(seen) == ["other#1", "retryable#1", "retryable#2"]


async def test_no_recovery_means_no_retry(server: DevServer) -> None:
    seen: list[int] = []

    async def entrypoint(ctx: JobContext) -> None:
        seen.append(ctx.attempt)
        raise RetryableError("no policy")

    async with running_worker(server, entrypoint):
        await server.create_dispatch(room="plain", agent_name="test-agent")
        await server.wait_for_job(room="plain", status=agent_pb.JS_FAILED)
    assert seen == [1]


async def test_termination_during_backoff_ends_the_job_without_another_attempt(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[int] = []

    async def entrypoint(ctx: JobContext) -> None:
        seen.append(ctx.attempt)
        raise RetryableError("slow to recover")

    recovery = DefaultRecoveryHandler(backoff_base=60)
    async with running_worker(server, entrypoint, recovery=recovery) as worker:
        await server.create_dispatch(room="stop", agent_name="test-agent")
        job = await server.wait_for_job(room="stop", status=agent_pb.JS_RUNNING)
        while worker.statistics().job_retries < 1:  # noqa: ASYNC110 - virtual time
            await trio.sleep(0.01)
        await server.terminate_job(job.job.id)
        while worker.statistics().running_jobs:  # noqa: ASYNC110 - virtual time
            await trio.sleep(0.01)
        assert job.status == agent_pb.JS_SUCCESS
    assert seen == [1]


class _Terminator:
    def on_job_failed(self, job: FailedJob, error: BaseException) -> RecoveryAction:
        return RecoveryAction.TERMINATE

    def on_connection_lost(self) -> RecoveryAction:
        return RecoveryAction.TERMINATE

    def on_resource_exhausted(self, resource: str) -> RecoveryAction:
        return RecoveryAction.TERMINATE


async def test_terminate_drains_the_worker(server: DevServer) -> None:
    async def entrypoint(ctx: JobContext) -> None:
        raise RuntimeError("unrecoverable")

    worker = Worker(entrypoint, worker_options(server, recovery=_Terminator()))
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            await server.create_dispatch(room="end", agent_name="test-agent")
            # serve returns by itself: the nursery closes.
    job = await server.wait_for_job(room="end", status=agent_pb.JS_FAILED)
    assert job.job.state.error == "RuntimeError: unrecoverable"
    stats = worker.statistics()
    assert stats.status == "stopped" and stats.recovery_decisions == {"terminate": 1}


async def test_recovery_metrics(server: DevServer, autojump_clock: trio.testing.MockClock) -> None:
    from trio_lkagent import serve_health

    async def entrypoint(ctx: JobContext) -> None:
        if ctx.attempt == 1:
            raise RetryableError("once")

    worker = Worker(
        entrypoint, worker_options(server, recovery=DefaultRecoveryHandler(backoff_base=0))
    )
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_health, worker, "127.0.0.1", 0)
        await nursery.start(worker.serve)
        await server.create_dispatch(room="m", agent_name="test-agent")
        await server.wait_for_job(room="m", status=agent_pb.JS_SUCCESS)
        metrics = metric_values((await http_get(url + "/metrics"))[2])
        nursery.cancel_scope.cancel()
    assert metrics['lkagent_recovery_decisions_total{action="retry"}'] == 1
    assert metrics['lkagent_recovery_decisions_total{action="skip"}'] == 0
    assert metrics["lkagent_job_retries_total"] == 1


def test_livekit_recovery_enabled_maps_onto_recovery() -> None:
    base = {"url": "ws://127.0.0.1:1", "api_key": "k", "api_secret": "s"}
    unset = ServiceConfig().worker_options(**base)
    assert unset.recovery is None and unset.reconnect.max_attempts is None
    on = ServiceConfig().with_values({"recovery_enabled": "true"}).worker_options(**base)
    assert isinstance(on.recovery, DefaultRecoveryHandler)
    assert on.reconnect.max_attempts is None
    off = ServiceConfig().with_values({"recovery_enabled": "false"}).worker_options(**base)
    assert off.recovery is None and off.reconnect.max_attempts == 1
    # Over an application's options: its own handler stands; "false" removes it.
    mine = _Terminator()
    app = off.__class__(**base, recovery=mine)  # type: ignore[arg-type]
    assert ServiceConfig().with_values({"recovery_enabled": "true"}).apply_to(app).recovery is mine
    assert ServiceConfig().with_values({"recovery_enabled": "false"}).apply_to(app).recovery is None
    assert ServiceConfig().apply_to(app).recovery is mine


def test_default_handler_decisions() -> None:
    handler = DefaultRecoveryHandler(max_retries=2, backoff_base=0.5, max_backoff=1.5)
    job = agent_pb.Job(id="AJ_x")
    assert handler.on_job_failed(FailedJob(job, 1), ValueError()) is RecoveryAction.BACKOFF
    assert handler.on_job_failed(FailedJob(job, 3), ValueError()) is RecoveryAction.SKIP
    group = ExceptionGroup("g", [ValueError(), FatalError("no")])
    assert handler.on_job_failed(FailedJob(job, 1), group) is RecoveryAction.SKIP
    assert [handler.backoff_delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 1.5, 1.5]
    assert handler.on_connection_lost() is RecoveryAction.BACKOFF
    assert handler.on_resource_exhausted("memory") is RecoveryAction.BACKOFF


# ------------------------------------------------------------------ circuit breaker


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_breaker_opens_then_half_opens_on_an_injected_clock() -> None:
    clock = _Clock()
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=30, clock=clock)

    async def fail() -> None:
        await trio.lowlevel.checkpoint()
        raise ConnectionError("down")

    async def ok() -> str:
        await trio.lowlevel.checkpoint()
        return "up"

    for _ in range(2):
        with pytest.raises(ConnectionError):
            await breaker.call(fail)
    assert breaker.state is BreakerState.OPEN
    clock.now = 10
    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(ok)
    assert info.value.retry_after == pytest.approx(20)
    clock.now = 30
    assert breaker.state is BreakerState.HALF_OPEN
    # A failed trial re-opens for another reset_timeout.
    with pytest.raises(ConnectionError):
        async with breaker:
            await fail()
    assert breaker.state is BreakerState.OPEN
    clock.now = 60
    assert await breaker.call(ok) == "up"
    assert breaker.state is BreakerState.CLOSED
    stats = breaker.statistics()
    assert (stats.calls, stats.failures, stats.rejected) == (4, 3, 1)


async def test_cancelled_call_is_not_a_failure(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker(failure_threshold=1)
    with trio.move_on_after(1):
        await breaker.call(trio.sleep_forever)
    assert breaker.state is BreakerState.CLOSED and breaker.statistics().failures == 0


class BreakerMachine(RuleBasedStateMachine):
    """The breaker against a model of its transitions, on a clock hypothesis moves."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = _Clock()
        self.threshold = 3
        self.timeout = 10.0
        self.half_open_max = 2
        self.breaker = CircuitBreaker(
            failure_threshold=self.threshold,
            reset_timeout=self.timeout,
            half_open_max=self.half_open_max,
            clock=self.clock,
        )
        self.state = "closed"
        self.failures = 0
        self.opened_at = 0.0
        self.trials = 0  # admitted, not finished, while half-open
        self.pending: list[bool] = []  # calls admitted and not yet finished

    def _model_state(self) -> str:
        if self.state == "open" and self.clock.now >= self.opened_at + self.timeout:
            self.state, self.trials = "half_open", 0
        return self.state

    @rule(seconds=st.floats(min_value=0, max_value=15))
    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def admit(self) -> None:
        state = self._model_state()
        refused = state == "open" or (state == "half_open" and self.trials >= self.half_open_max)
        if refused:
            with pytest.raises(CircuitOpenError):
                self.breaker.acquire()
            return
        self.breaker.acquire()
        if state == "half_open":
            self.trials += 1
        self.pending.append(state == "half_open")

    @precondition(lambda self: self.pending)
    @rule(success=st.booleans())
    def finish(self, success: bool) -> None:
        self.pending.pop()
        self._model_state()
        if success:
            self.breaker.record_success()
            if self.state == "half_open":
                self.trials = max(0, self.trials - 1)
            self.state, self.failures = "closed", 0
        else:
            self.breaker.record_failure()
            self.failures += 1
            if self.state == "half_open" or self.failures >= self.threshold:
                self.state, self.opened_at, self.trials = "open", self.clock.now, 0

    @invariant()
    def same_state(self) -> None:
        assert self.breaker.state.value == self._model_state()
        assert self.breaker.statistics().consecutive_failures == self.failures


TestBreakerMachine = BreakerMachine.TestCase


async def test_retry_in_place_stays_in_the_room(server: DevServer) -> None:
    """A job that joined its room, failed and was retried keeps its seat: the server
    never sees the agent leave, and the job ends JS_SUCCESS."""
    from ..test_job_teardown import SAFETY_TIMEOUT, agent_gone, watch_leaves

    left_while_running = watch_leaves(server)
    rooms: list[Room] = []

    async def entrypoint(ctx: JobContext) -> None:
        async with ctx.connect() as room:
            rooms.append(room)
            if ctx.attempt == 1:
                raise RetryableError("lost the upstream")

    recovery = DefaultRecoveryHandler(backoff_base=0)
    async with running_worker(server, entrypoint, recovery=recovery):
        await server.create_dispatch(room="rejoin", agent_name="test-agent")
        with trio.fail_after(SAFETY_TIMEOUT):
            job = await server.wait_for_job(room="rejoin", status=agent_pb.JS_SUCCESS)
            await server.wait_until(lambda: agent_gone(server, "rejoin", job))
    assert len(rooms) == 2 and rooms[0] is rooms[1]  # the same room, entered again
    assert rooms[0].local_participant.identity == job.accepted_identity
    assert job.accepted_identity not in left_while_running
    assert agent_pb.JS_FAILED not in job.status_history
