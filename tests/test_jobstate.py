"""Property-based tests of the pure job state machine (no I/O, no trio)."""

from __future__ import annotations

import collections

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
)
from livekit.protocol import agent as agent_pb

from trio_lkagent._jobstate import (
    Decline,
    InvalidTransition,
    JobStateMachine,
    Outcome,
    Phase,
)

FINAL = {agent_pb.JS_SUCCESS, agent_pb.JS_FAILED}


class JobLifecycle(RuleBasedStateMachine):
    """Drives JobStateMachine with every event in any order, valid or not."""

    job_ids = Bundle("job_ids")

    @initialize(
        max_jobs=st.integers(1, 4),
        threshold=st.sampled_from([0.5, 0.75, 1.0, 2.0]),
        timeout=st.sampled_from([1.0, 7.5]),
        request_timeout=st.sampled_from([0.5, 5.0]),
    )
    def setup(
        self, max_jobs: int, threshold: float, timeout: float, request_timeout: float
    ) -> None:
        self.sm = JobStateMachine(
            max_jobs=max_jobs,
            load_threshold=threshold,
            assignment_timeout=timeout,
            request_timeout=request_timeout,
        )
        self.now = 0.0
        self.counter = 0
        self.sent: dict[str, list[int]] = collections.defaultdict(list)
        self.reserved_ever: set[str] = set()
        self.assigned: set[str] = set()
        self.released: set[str] = set()

    def _drain_outbox(self) -> None:
        while (update := self.sm.peek_update()) is not None:
            self.sent[update.job_id].append(update.status)
            self.sm.pop_update()

    @rule(target=job_ids)
    def new_job_id(self) -> str:
        self.counter += 1
        return f"AJ_{self.counter}"

    @rule(job_id=job_ids)
    def request(self, job_id: str) -> None:
        before_full = self.sm.is_full
        decline = self.sm.request(job_id, self.now)
        if decline is None:
            assert not before_full
            self.reserved_ever.add(job_id)
            assert self.sm.phase(job_id) is Phase.DECIDING
        elif decline is Decline.FULL:
            assert before_full

    @rule(job_id=job_ids)
    def accept(self, job_id: str) -> None:
        phase = self.sm.phase(job_id)
        try:
            self.sm.accepted(job_id, self.now)
        except InvalidTransition:
            assert phase is not Phase.DECIDING
        else:
            assert phase is Phase.DECIDING

    @rule(job_id=job_ids)
    def reject(self, job_id: str) -> None:
        try:
            self.sm.rejected(job_id)
        except InvalidTransition:
            pass
        else:
            self.released.add(job_id)

    @rule(job_id=job_ids)
    def assign(self, job_id: str) -> None:
        phase = self.sm.phase(job_id)
        try:
            self.sm.assign(job_id)
        except InvalidTransition:
            assert phase is not Phase.AWAITING_ASSIGNMENT
        else:
            assert phase is Phase.AWAITING_ASSIGNMENT
            self.assigned.add(job_id)

    @rule(job_id=job_ids, outcome=st.sampled_from(list(Outcome)))
    def finish(self, job_id: str, outcome: Outcome) -> None:
        phase = self.sm.phase(job_id)
        try:
            update = self.sm.finish(job_id, outcome, "boom")
        except InvalidTransition:
            assert phase is not Phase.RUNNING
        else:
            assert phase is Phase.RUNNING
            expected = agent_pb.JS_FAILED if outcome is Outcome.FAILED else agent_pb.JS_SUCCESS
            assert update.status == expected

    @rule(job_id=job_ids)
    def terminate(self, job_id: str) -> None:
        phase = self.sm.phase(job_id)
        try:
            running = self.sm.terminate(job_id)
        except InvalidTransition:
            assert phase is None
        else:
            assert running == (phase is Phase.RUNNING)
            if not running:
                self.released.add(job_id)

    @rule(dt=st.floats(0, 10))
    def advance(self, dt: float) -> None:
        self.now += dt
        self.released.update(self.sm.expire(self.now))

    @rule(load=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)))
    def set_load(self, load: float | None) -> None:
        self.sm.set_load(load)
        assert 0.0 <= self.sm.load <= 1.0

    @rule()
    def drain(self) -> None:
        self.released.update(self.sm.drain())
        assert self.sm.is_full

    @rule()
    def connection_lost_and_resync(self) -> None:
        self.released.update(self.sm.connection_lost())
        self.sm.resync()

    @rule()
    def flush(self) -> None:
        self._drain_outbox()

    @invariant()
    def capacity_is_exact(self) -> None:
        if hasattr(self, "sm"):
            assert self.sm.reserved + self.sm.running <= self.sm.max_jobs
            assert self.sm.reserved >= 0 and self.sm.running >= 0

    @invariant()
    def statuses_are_well_formed(self) -> None:
        if not hasattr(self, "sm"):
            return
        self._drain_outbox()
        for job_id, statuses in self.sent.items():
            finals = [s for s in statuses if s in FINAL]
            assert len(finals) <= 1, (job_id, statuses)
            if finals:
                assert statuses[-1] in FINAL, f"status after the final one: {statuses}"
                assert self.sm.has_ended(job_id)
                assert self.sm.phase(job_id) is None
            # Every job that got a status was assigned.
            assert job_id in self.assigned

    def teardown(self) -> None:
        if not hasattr(self, "sm"):
            return
        # Let every deadline pass: each reservation must end assigned or released.
        self.released.update(self.sm.expire(self.now + 1e9))
        for job_id in self.reserved_ever:
            assert job_id in self.assigned or job_id in self.released, job_id
        # Running jobs end; then every assigned job has exactly one final status.
        for job_id in list(self.assigned):
            if self.sm.phase(job_id) is Phase.RUNNING:
                self.sm.finish(job_id, Outcome.CANCELLED)
        self._drain_outbox()
        for job_id in self.assigned:
            assert sum(s in FINAL for s in self.sent[job_id]) == 1, self.sent[job_id]


JobLifecycle.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
TestJobLifecycle = JobLifecycle.TestCase


def make(max_jobs: int = 2) -> JobStateMachine:
    return JobStateMachine(max_jobs=max_jobs, load_threshold=1.0, assignment_timeout=7.5)


def test_burst_never_over_admits() -> None:
    sm = make(max_jobs=3)
    answers = [sm.request(f"AJ_{i}", 0) for i in range(10)]
    assert answers[:3] == [None, None, None]
    assert answers[3:] == [Decline.FULL] * 7
    assert sm.worker_status == agent_pb.WS_FULL


def test_reservation_expires_after_assignment_timeout() -> None:
    sm = make(max_jobs=1)
    assert sm.request("AJ_1", 0) is None
    sm.accepted("AJ_1", now=100.0)
    assert sm.next_deadline() == 107.5
    assert sm.expire(107.4) == []
    assert sm.request("AJ_2", 0) is Decline.FULL
    assert sm.expire(107.5) == ["AJ_1"]
    assert sm.request("AJ_2", 0) is None
    with pytest.raises(InvalidTransition, match="unknown"):
        sm.assign("AJ_1")


def test_resync_announces_running_jobs_and_keeps_finals() -> None:
    sm = make()
    for job in ("AJ_1", "AJ_2"):
        sm.request(job, 0)
        sm.accepted(job, 0)
        sm.assign(job)
    sm.finish("AJ_1", Outcome.FAILED, "ValueError: x")
    sm.resync()
    updates = []
    while (u := sm.peek_update()) is not None:
        updates.append((u.job_id, u.status, u.error))
        sm.pop_update()
    assert updates == [
        ("AJ_2", agent_pb.JS_RUNNING, ""),
        ("AJ_1", agent_pb.JS_FAILED, "ValueError: x"),
    ]


def test_user_load_threshold_makes_full() -> None:
    sm = JobStateMachine(max_jobs=10, load_threshold=0.7, assignment_timeout=1)
    sm.set_load(0.69)
    assert sm.request("AJ_1", 0) is None
    sm.set_load(0.7)
    assert sm.request("AJ_2", 0) is Decline.FULL
    sm.set_load(float("nan"))
    assert sm.load == 1.0
