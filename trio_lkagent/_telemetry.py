"""Hooks at the points of a job's life, and OpenTelemetry spans built on them.

The worker calls every :class:`WorkerObserver` it has, synchronously, at each
point (never awaiting: an observer cannot slow the worker down or reorder its
messages). An observer that raises is logged and otherwise ignored.

When ``opentelemetry-api`` is importable (the ``otel`` extra), every worker has
an :class:`OtelObserver`: one span per job with children for its phases. With
no SDK configured the API's tracer is a no-op, so this costs next to nothing;
without the package nothing changes at all.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import attrs
from livekit.protocol import agent as agent_pb

if TYPE_CHECKING:
    from ._job import JobContext

__all__ = ["OtelObserver", "WorkerObserver", "default_observers"]

logger = logging.getLogger("trio_lkagent.telemetry")
job_logger = logging.getLogger("trio_lkagent.job")


class WorkerObserver:
    """What a worker reports about its jobs; every method is a no-op here.

    All methods are called from the worker's Trio tasks and must not block.
    """

    def registered(self, worker_id: str) -> None:
        """The server confirmed a registration (also after each reconnect)."""

    def job_requested(self, job: agent_pb.Job) -> None:
        """An availability request for *job* arrived and holds a slot."""

    def job_answered(self, job_id: str, accepted: bool, reason: str) -> None:
        """The request was answered (accepted, or declined with *reason*)."""

    def job_assigned(self, job: agent_pb.Job) -> None:
        """The server assigned the accepted job; it starts now."""

    def job_started(self, ctx: JobContext) -> None:
        """The entrypoint is about to run (called in the job's own task)."""

    def job_ended(self, ctx: JobContext, outcome: str, error: str) -> None:
        """The job ended: *outcome* is ``returned``, ``failed`` or ``cancelled``.

        Called in the job's own task, after its shutdown callbacks.
        """

    def job_released(self, job_id: str, reason: str) -> None:
        """A reserved slot was let go without the job running (expired, lost)."""

    def stopped(self) -> None:
        """``serve`` returned or was cancelled."""


@attrs.define
class _JobSpans:
    root: Any
    phase: Any = None
    token: object = None


class OtelObserver(WorkerObserver):
    """OpenTelemetry spans for the job lifecycle.

    One ``lk.job`` span per job, from the availability request to the end, with
    children ``lk.job.request`` (request until answered; events ``accept`` or
    ``reject``), ``lk.job.assignment`` (accepted until assigned) and
    ``lk.job.run`` (the entrypoint; current while it runs, so spans the job
    makes are its children), and an ``end`` event with the outcome. Attributes:
    ``lk.job.id``, ``lk.room.name``, ``lk.agent.name``, ``lk.worker.id``,
    ``lk.job.outcome``, ``lk.job.error``.

    Args:
        tracer_provider: Where spans go (default: the global provider, looked up
            when each span starts).
    """

    def __init__(self, tracer_provider: Any = None) -> None:
        # opentelemetry is imported on first use (registration or the first
        # span), not when the worker is built: a worker starts fast.
        self._tracer_provider = tracer_provider
        self._loaded = False
        self._worker_id = ""
        self._jobs: dict[str, _JobSpans] = {}

    def _load(self) -> None:
        if self._loaded:
            return
        from opentelemetry import context, trace

        from . import __version__

        self._trace: Any = trace
        self._context: Any = context
        self._tracer: Any = trace.get_tracer("trio_lkagent", __version__, self._tracer_provider)
        self._loaded = True

    def _child(self, spans: _JobSpans, name: str) -> Any:
        parent = self._trace.set_span_in_context(spans.root)
        return self._tracer.start_span(name, context=parent)

    def _end_phase(self, spans: _JobSpans) -> None:
        if spans.phase is not None:
            spans.phase.end()
            spans.phase = None

    def _finish(self, job_id: str, outcome: str, error: str = "") -> None:
        spans = self._jobs.pop(job_id, None)
        if spans is None:
            return
        self._end_phase(spans)
        root = spans.root
        root.set_attribute("lk.job.outcome", outcome)
        attributes = {"lk.job.outcome": outcome}
        if error:
            root.set_attribute("lk.job.error", error)
            attributes["lk.job.error"] = error
            root.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error))
        root.add_event("end", attributes)
        root.end()

    def _open(self, job: agent_pb.Job) -> _JobSpans:
        self._load()
        root = self._tracer.start_span(
            "lk.job",
            context=self._context.Context(),  # a root: not a child of the worker's tasks
            attributes={
                "lk.job.id": job.id,
                "lk.job.type": _job_type_name(job.type),
                "lk.room.name": job.room.name,
                "lk.agent.name": job.agent_name,
                "lk.worker.id": self._worker_id,
            },
        )
        spans = _JobSpans(root)
        self._jobs[job.id] = spans
        return spans

    def registered(self, worker_id: str) -> None:
        """Remember the worker id for the spans' attributes."""
        self._load()
        self._worker_id = worker_id

    def job_requested(self, job: agent_pb.Job) -> None:
        """Start ``lk.job`` and ``lk.job.request``."""
        self._finish(job.id, "superseded")
        spans = self._open(job)
        spans.phase = self._child(spans, "lk.job.request")

    def job_answered(self, job_id: str, accepted: bool, reason: str) -> None:
        """End ``lk.job.request``; start ``lk.job.assignment`` or end the job span."""
        spans = self._jobs.get(job_id)
        if spans is None:
            return
        if spans.phase is not None:
            spans.phase.add_event("accept" if accepted else "reject", {"reason": reason})
            spans.phase.set_attribute("lk.job.accepted", accepted)
        self._end_phase(spans)
        if accepted:
            spans.phase = self._child(spans, "lk.job.assignment")
        else:
            self._finish(job_id, "rejected", "")

    def job_assigned(self, job: agent_pb.Job) -> None:
        """End ``lk.job.assignment``."""
        spans = self._jobs.get(job.id) or self._open(job)
        self._end_phase(spans)

    def job_started(self, ctx: JobContext) -> None:
        """Start ``lk.job.run`` and make it current in the job's task."""
        spans = self._jobs.get(ctx.job_id) or self._open(ctx.job)
        spans.root.set_attribute("lk.worker.id", ctx.worker_id)
        spans.phase = self._child(spans, "lk.job.run")
        spans.token = self._context.attach(self._trace.set_span_in_context(spans.phase))

    def job_ended(self, ctx: JobContext, outcome: str, error: str) -> None:
        """End ``lk.job.run`` and ``lk.job`` (status ERROR when it failed)."""
        spans = self._jobs.get(ctx.job_id)
        if spans is None:
            return
        if spans.token is not None:
            self._context.detach(spans.token)
            spans.token = None
        if error and spans.phase is not None:
            spans.phase.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error))
        self._finish(ctx.job_id, outcome, error)

    def job_released(self, job_id: str, reason: str) -> None:
        """End the job's spans: it never ran."""
        spans = self._jobs.get(job_id)
        if spans is not None:
            spans.root.set_attribute("lk.job.release_reason", reason)
        self._finish(job_id, "released")

    def stopped(self) -> None:
        """End what is still open (the worker is gone)."""
        for job_id in list(self._jobs):
            self._finish(job_id, "worker stopped")


class JobLogObserver(WorkerObserver):
    """One INFO line when a job starts (id, type, room, identity) and one when it
    ends (outcome, duration, error), on the ``trio_lkagent.job`` logger."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}

    def job_started(self, ctx: JobContext) -> None:
        self._started[ctx.job_id] = time.monotonic()
        job_logger.info(
            "job %s started: type=%s room=%s identity=%s",
            ctx.job_id,
            ctx.job_type.name,
            ctx.room_name,
            ctx.identity,
        )

    def job_ended(self, ctx: JobContext, outcome: str, error: str) -> None:
        started = self._started.pop(ctx.job_id, None)
        duration = time.monotonic() - started if started is not None else 0.0
        job_logger.log(
            logging.WARNING if error else logging.INFO,
            "job %s ended: %s after %.1f s%s",
            ctx.job_id,
            outcome,
            duration,
            f": {error}" if error else "",
        )


def default_observers() -> list[WorkerObserver]:
    """The observers every worker starts with: the job log lines, and
    OpenTelemetry when it is installed (imported on first use)."""
    import importlib.util

    observers: list[WorkerObserver] = [JobLogObserver()]
    try:
        found = importlib.util.find_spec("opentelemetry.trace") is not None
    except (ImportError, ValueError):
        found = False
    if found:
        observers.append(OtelObserver())
    return observers


def _job_type_name(value: int) -> str:
    """``JT_ROOM``...; a number the protocol does not define (a peer's) as itself."""
    try:
        return agent_pb.JobType.Name(value)
    except ValueError:
        return str(value)
