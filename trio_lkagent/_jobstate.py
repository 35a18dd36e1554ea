"""The job lifecycle as a pure state machine: no I/O, no clock of its own.

The worker feeds it what happens (an availability request, the user's answer,
an assignment, a termination, a job's end, the connection dropping) and the
time where time matters; it answers what to do (decline with a reason, start a
job, release a slot) and queues the job status updates that must reach the
server, in order, in an outbox the worker drains onto the WebSocket.

Keeping every rule here makes them testable exhaustively (see
``tests/test_jobstate.py``, a hypothesis ``RuleBasedStateMachine``):

* ``reserved + running <= max_jobs`` at all times: a request that is still
  being decided, or was accepted and awaits its assignment, holds a slot.
* Every job gets at most one ``JS_RUNNING`` and exactly one final status
  (``JS_SUCCESS`` / ``JS_FAILED``), and nothing after the final one.
* Every reservation is either assigned or released (declined, expired after
  ``assignment_timeout``, terminated before assignment, or lost with the
  connection).
"""

from __future__ import annotations

import collections
import enum
import math

import attrs
from livekit.protocol import agent as agent_pb

__all__ = [
    "Decline",
    "InvalidTransition",
    "JobStateMachine",
    "JobUpdate",
    "Outcome",
    "Phase",
]

#: How many ended job ids are remembered to recognise late duplicates.
ENDED_MEMORY = 10_000


class Phase(enum.Enum):
    """Where one job is in its lifecycle, as this worker sees it."""

    #: An availability request holds a slot while the request handler decides.
    DECIDING = "deciding"
    #: Accepted; the slot stays reserved until the assignment or the deadline.
    AWAITING_ASSIGNMENT = "awaiting_assignment"
    #: Assigned; the entrypoint runs.
    RUNNING = "running"


class Decline(enum.Enum):
    """Why an availability request was answered ``available=False`` at once."""

    DRAINING = "worker is draining"
    FULL = "worker is at capacity"
    DUPLICATE = "job is already known to this worker"


class Outcome(enum.Enum):
    """How a job's entrypoint ended."""

    RETURNED = "returned"
    FAILED = "failed"
    #: Cancelled by a termination, ``ctx.shutdown()``, draining or the worker
    #: stopping. Reported as ``JS_SUCCESS``, the LiveKit server's own convention.
    CANCELLED = "cancelled"


class InvalidTransition(Exception):
    """The event does not apply to the job's current phase (e.g. unknown job).

    The worker logs these and carries on: they describe a confused or malicious
    peer, never a reason to stop serving.
    """


@attrs.frozen
class JobUpdate:
    """One ``UpdateJobStatus`` to send."""

    job_id: str
    status: agent_pb.JobStatus
    error: str = ""

    @property
    def is_final(self) -> bool:
        """True for ``JS_SUCCESS`` and ``JS_FAILED``."""
        return self.status in (agent_pb.JS_SUCCESS, agent_pb.JS_FAILED)

    def to_proto(self) -> agent_pb.UpdateJobStatus:
        """The protocol message."""
        return agent_pb.UpdateJobStatus(job_id=self.job_id, status=self.status, error=self.error)


@attrs.define
class _Slot:
    phase: Phase


class JobStateMachine:
    """Admission, reservation and status bookkeeping for one worker.

    Args:
        max_jobs: cap on reserved + running jobs.
        load_threshold: at or above this load the worker is full.
        assignment_timeout: seconds an accepted request keeps its slot while
            waiting for the server's assignment.
        request_timeout: seconds a request may stay undecided before its slot
            is released (a late answer then becomes a decline).
    """

    def __init__(
        self,
        *,
        max_jobs: int,
        load_threshold: float,
        assignment_timeout: float,
        request_timeout: float = math.inf,
    ) -> None:
        self.max_jobs = max_jobs
        self.load_threshold = load_threshold
        self.assignment_timeout = assignment_timeout
        self.request_timeout = request_timeout
        self._slots: dict[str, _Slot] = {}
        self._ended: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._outbox: collections.deque[JobUpdate] = collections.deque()
        self._user_load: float | None = None
        self._n_running = 0
        # Deadlines of unassigned slots only (few), so that expiry costs
        # nothing per running job.
        self._deadlines: dict[str, float] = {}
        self.draining = False
        #: Why admission is held (a resource limit exceeded); None: not held.
        self.hold: str | None = None

    # -- queries -------------------------------------------------------------

    def phase(self, job_id: str) -> Phase | None:
        """The job's phase, or None if it holds no slot (unknown or ended)."""
        slot = self._slots.get(job_id)
        return slot.phase if slot else None

    def has_ended(self, job_id: str) -> bool:
        """True if the job's final status was produced (remembered for a while)."""
        return job_id in self._ended

    @property
    def reserved(self) -> int:
        """Slots held by requests not yet assigned."""
        return len(self._slots) - self._n_running

    @property
    def running(self) -> int:
        """Jobs assigned and not ended."""
        return self._n_running

    def running_jobs(self) -> list[str]:
        """Ids of running jobs, in assignment order."""
        return [j for j, s in self._slots.items() if s.phase is Phase.RUNNING]

    @property
    def load(self) -> float:
        """The load to report, in [0, 1]: the user's value if set, else running / max_jobs."""
        if self._user_load is not None:
            return self._user_load
        return min(1.0, self.running / self.max_jobs)

    def set_load(self, value: float | None) -> None:
        """Set the user load (clamped to [0, 1]; NaN counts as 1), or None for the default."""
        if value is None:
            self._user_load = None
        elif math.isnan(value):
            self._user_load = 1.0
        else:
            self._user_load = min(1.0, max(0.0, float(value)))

    @property
    def is_full(self) -> bool:
        """True when the worker must report WS_FULL and decline requests."""
        return (
            self.draining
            or len(self._slots) >= self.max_jobs
            or self.load >= self.load_threshold
            or self.hold is not None
        )

    @property
    def worker_status(self) -> agent_pb.WorkerStatus:
        """``WS_FULL`` or ``WS_AVAILABLE``."""
        return agent_pb.WS_FULL if self.is_full else agent_pb.WS_AVAILABLE

    def next_deadline(self) -> float:
        """Earliest assignment deadline among reservations (``inf`` if none)."""
        return min(self._deadlines.values(), default=math.inf)

    # -- transitions ---------------------------------------------------------

    def request(self, job_id: str, now: float) -> Decline | None:
        """An availability request arrived: reserve a slot (returns None) or decline."""
        if job_id in self._slots or job_id in self._ended:
            return Decline.DUPLICATE
        if self.draining:
            return Decline.DRAINING
        if self.is_full:
            return Decline.FULL
        self._slots[job_id] = _Slot(Phase.DECIDING)
        self._deadlines[job_id] = now + self.request_timeout
        return None

    def accepted(self, job_id: str, now: float) -> None:
        """The request was answered ``available=True``: wait for the assignment until a deadline."""
        slot = self._slot(job_id, Phase.DECIDING, "accept")
        slot.phase = Phase.AWAITING_ASSIGNMENT
        self._deadlines[job_id] = now + self.assignment_timeout

    def rejected(self, job_id: str) -> None:
        """The request was answered ``available=False``: release the slot."""
        self._slot(job_id, Phase.DECIDING, "reject")
        del self._slots[job_id]
        del self._deadlines[job_id]

    def assign(self, job_id: str) -> None:
        """The assignment arrived: the job runs now; ``JS_RUNNING`` is queued.

        Raises:
            InvalidTransition: the job was never accepted here, its reservation
                expired, or it is already running or ended (duplicate).
        """
        slot = self._slots.get(job_id)
        if slot is None or slot.phase is not Phase.AWAITING_ASSIGNMENT:
            state = "ended" if job_id in self._ended else (slot.phase.value if slot else "unknown")
            raise InvalidTransition(f"assignment for job {job_id} which is {state}")
        slot.phase = Phase.RUNNING
        del self._deadlines[job_id]
        self._n_running += 1
        self._outbox.append(JobUpdate(job_id, agent_pb.JS_RUNNING))

    def expire(self, now: float) -> list[str]:
        """Release reservations not decided or assigned in time; returns their ids."""
        gone = [j for j, deadline in self._deadlines.items() if deadline <= now]
        for job_id in gone:
            del self._slots[job_id]
            del self._deadlines[job_id]
        return gone

    def terminate(self, job_id: str) -> bool:
        """The server ended the job.

        Returns:
            True if the job is running (the caller cancels it; its end is then
            reported through :meth:`finish`), False if it only held a
            reservation, which is released.

        Raises:
            InvalidTransition: unknown or already ended job.
        """
        slot = self._slots.get(job_id)
        if slot is None:
            state = "ended" if job_id in self._ended else "unknown"
            raise InvalidTransition(f"termination for job {job_id} which is {state}")
        if slot.phase is Phase.RUNNING:
            return True
        del self._slots[job_id]
        self._deadlines.pop(job_id, None)
        return False

    def finish(self, job_id: str, outcome: Outcome, error: str = "") -> JobUpdate:
        """The job's entrypoint ended: queue its one final status and forget the job.

        Raises:
            InvalidTransition: the job is not running (never assigned, or ended already).
        """
        self._slot(job_id, Phase.RUNNING, "finish")
        del self._slots[job_id]
        self._n_running -= 1
        self._ended[job_id] = None
        while len(self._ended) > ENDED_MEMORY:
            self._ended.popitem(last=False)
        if outcome is Outcome.FAILED:
            update = JobUpdate(job_id, agent_pb.JS_FAILED, error or "job failed")
        else:
            update = JobUpdate(job_id, agent_pb.JS_SUCCESS)
        self._outbox.append(update)
        return update

    def drain(self) -> list[str]:
        """Stop admitting: later requests are declined. Returns reservations released.

        Requests still being decided are released (their answer becomes a
        decline); accepted ones keep their slot, since the server may already
        be sending the assignment.
        """
        self.draining = True
        gone = [j for j, s in self._slots.items() if s.phase is Phase.DECIDING]
        for job_id in gone:
            del self._slots[job_id]
            del self._deadlines[job_id]
        return gone

    def connection_lost(self) -> list[str]:
        """The WebSocket dropped: unassigned reservations die with it. Returns their ids.

        Running jobs carry on; after the worker re-registers,
        :meth:`resync` queues their ``JS_RUNNING`` again for the new connection.
        """
        gone = [j for j, s in self._slots.items() if s.phase is not Phase.RUNNING]
        for job_id in gone:
            del self._slots[job_id]
        self._deadlines.clear()
        return gone

    def resync(self) -> None:
        """After re-registering: announce running jobs to the server (again).

        Pending ``JS_RUNNING`` updates are replaced by one per running job; final
        updates not yet sent stay queued, in order, each still preceded by its
        job's ``JS_RUNNING`` if that never went out (a job that ran and ended
        while the worker was offline is reported running, then ended).
        """
        queued = list(self._outbox)
        running_unsent = {u.job_id for u in queued if u.status == agent_pb.JS_RUNNING}
        self._outbox.clear()
        self._outbox.extend(JobUpdate(j, agent_pb.JS_RUNNING) for j in self.running_jobs())
        for update in queued:
            if update.is_final:
                if update.job_id in running_unsent:
                    self._outbox.append(JobUpdate(update.job_id, agent_pb.JS_RUNNING))
                self._outbox.append(update)

    # -- outbox --------------------------------------------------------------

    def peek_update(self) -> JobUpdate | None:
        """The oldest update not yet sent, or None."""
        return self._outbox[0] if self._outbox else None

    def pop_update(self) -> JobUpdate:
        """Mark the oldest update as sent."""
        return self._outbox.popleft()

    def queued_updates(self) -> tuple[JobUpdate, ...]:
        """Every update not yet sent, oldest first (a snapshot; nothing is removed)."""
        return tuple(self._outbox)

    def is_pending(self, update: JobUpdate) -> bool:
        """True while *update* (as returned by :meth:`finish`) is queued and not sent.

        The worker waits on this before a job leaves its room, so that the server
        has the job's final status before it sees the agent go.
        """
        return any(queued is update for queued in self._outbox)

    @property
    def pending_updates(self) -> int:
        """Updates queued and not yet sent."""
        return len(self._outbox)

    # -- helpers -------------------------------------------------------------

    def _slot(self, job_id: str, phase: Phase, what: str) -> _Slot:
        slot = self._slots.get(job_id)
        if slot is None or slot.phase is not phase:
            state = "ended" if job_id in self._ended else (slot.phase.value if slot else "unknown")
            raise InvalidTransition(f"cannot {what} job {job_id}: it is {state}")
        return slot
