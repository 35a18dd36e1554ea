"""Prometheus metrics of one worker, in a ``CollectorRegistry`` of its own.

Counters and gauges are read from :meth:`Worker.statistics` at scrape time; the
dispatch latency histogram is fed by the worker's observer hooks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import trio
from livekit.protocol import agent as agent_pb
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ._telemetry import WorkerObserver

if TYPE_CHECKING:
    from ._job import JobContext
    from ._worker import Worker
    from .processes import ProcessPoolStatistics

__all__ = ["DISPATCH_BUCKETS", "JOB_DURATION_BUCKETS", "WorkerMetrics"]

#: Seconds from the availability request to the assignment.
DISPATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Seconds a job ran (entrypoint start to end, retries included).
JOB_DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 14400.0)
_STATUSES = ("connecting", "available", "full", "draining", "stopped")


class WorkerMetrics(WorkerObserver):
    """Prometheus metrics of one worker, in a registry of their own.

    Args:
        worker: The worker; the metrics observe it from now on.

    Attributes:
        registry: The ``CollectorRegistry`` to expose (``generate_latest(registry)``).
    """

    def __init__(self, worker: Worker) -> None:
        self.registry = CollectorRegistry()
        self._worker = worker
        self._requested: dict[str, float] = {}
        self.dispatch_latency = Histogram(
            "lkagent_dispatch_latency_seconds",
            "From the availability request to the job's assignment",
            buckets=DISPATCH_BUCKETS,
            registry=self.registry,
        )
        self._job_started: dict[str, float] = {}
        self.job_duration = Histogram(
            "lkagent_job_duration_seconds",
            "How long jobs ran (retries included), by outcome",
            labelnames=["outcome"],
            buckets=JOB_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StatisticsCollector(worker))

    def job_requested(self, job: agent_pb.Job) -> None:
        """Start timing the dispatch."""
        self._requested[job.id] = trio.current_time()

    def job_answered(self, job_id: str, accepted: bool, reason: str) -> None:
        """Forget a declined request."""
        if not accepted:
            self._requested.pop(job_id, None)

    def job_assigned(self, job: agent_pb.Job) -> None:
        """Observe the dispatch latency."""
        started = self._requested.pop(job.id, None)
        if started is not None:
            self.dispatch_latency.observe(trio.current_time() - started)

    def job_started(self, ctx: JobContext) -> None:
        """Start timing the job."""
        self._job_started[ctx.job_id] = trio.current_time()

    def job_ended(self, ctx: JobContext, outcome: str, error: str) -> None:
        """Observe the job's duration."""
        started = self._job_started.pop(ctx.job_id, None)
        if started is not None:
            self.job_duration.labels(outcome=outcome).observe(trio.current_time() - started)

    def job_released(self, job_id: str, reason: str) -> None:
        """Forget a reservation that never ran."""
        self._requested.pop(job_id, None)

    def stopped(self) -> None:
        """Forget pending requests."""
        self._requested.clear()
        self._job_started.clear()

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in the Prometheus text format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _StatisticsCollector(Collector):
    """Counters and gauges from ``worker.statistics()``, read at scrape time."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        worker = self._worker
        stats = worker.statistics()
        opts = worker.options
        info = GaugeMetricFamily(
            "lkagent_worker_info",
            "The worker's identity (value 1)",
            labels=["worker_id", "agent_name", "namespace", "version"],
        )
        info.add_metric([stats.worker_id or "", opts.agent_name, opts.namespace, opts.version], 1)
        yield info
        status = GaugeMetricFamily(
            "lkagent_worker_status", "1 for the worker's current status", labels=["status"]
        )
        for name in _STATUSES:
            status.add_metric([name], 1 if stats.status == name else 0)
        yield status

        def gauge(name: str, doc: str, value: float) -> Metric:
            return GaugeMetricFamily(name, doc, value=value)

        def counter(name: str, doc: str, value: float) -> Metric:
            return CounterMetricFamily(name, doc, value=value)

        yield gauge("lkagent_worker_registered", "1 while registered", int(stats.registered))
        yield gauge("lkagent_load", "Load reported to the server (0..1)", stats.load)
        yield gauge("lkagent_max_jobs", "Capacity (max_jobs)", stats.max_jobs)
        yield gauge("lkagent_jobs_running", "Jobs running now", stats.running_jobs)
        yield gauge(
            "lkagent_jobs_reserved", "Slots reserved awaiting assignment", stats.reserved_jobs
        )
        yield counter("lkagent_jobs_started", "Jobs started", stats.jobs_started)
        yield counter("lkagent_jobs_succeeded", "Jobs ended successfully", stats.jobs_succeeded)
        yield counter("lkagent_jobs_failed", "Jobs whose entrypoint raised", stats.jobs_failed)
        yield counter(
            "lkagent_requests_declined", "Availability requests declined", stats.requests_declined
        )
        yield counter("lkagent_reconnects", "Reconnects to the server", stats.reconnects)
        yield counter(
            "lkagent_room_events_dropped",
            "Room events dropped for slow consumers in jobs' rooms",
            stats.room_events_dropped,
        )
        # resilience: resources, limits, recovery
        yield gauge(
            "lkagent_cpu_percent", "CPU of the process tree, % of one core", stats.cpu_percent
        )
        yield gauge("lkagent_memory_mb", "Resident memory of the process tree, MB", stats.memory_mb)
        yield gauge("lkagent_uptime_seconds", "Seconds since serve started", stats.uptime)
        yield gauge(
            "lkagent_resource_limited",
            "1 while a resource limit holds WS_FULL",
            int(bool(stats.full_reason)),
        )
        yield counter(
            "lkagent_network_received_bytes", "Bytes from the agent service", stats.network_bytes_in
        )
        yield counter(
            "lkagent_network_sent_bytes", "Bytes to the agent service", stats.network_bytes_out
        )
        yield counter(
            "lkagent_job_retries", "Job entrypoints re-run by recovery", stats.job_retries
        )
        decisions = CounterMetricFamily(
            "lkagent_recovery_decisions", "Recovery decisions taken, by action", labels=["action"]
        )
        for action in ("retry", "backoff", "skip", "terminate"):
            decisions.add_metric([action], stats.recovery_decisions.get(action, 0))
        yield decisions
        rtt = stats.ping_rtt
        yield gauge(
            "lkagent_ping_rtt_seconds",
            "Round trip of the last WorkerPing (NaN before the first)",
            math.nan if rtt is None else rtt,
        )
        yield from _process_metrics(stats.processes)


def _process_metrics(procs: ProcessPoolStatistics | None) -> Iterator[Metric]:
    """The process executor's pool (nothing with the task executor)."""
    if procs is None:
        return
    yield GaugeMetricFamily("lkagent_processes_idle", "Warm job processes", value=procs.idle)
    yield GaugeMetricFamily(
        "lkagent_processes_starting", "Job processes starting", value=procs.starting
    )
    yield CounterMetricFamily(
        "lkagent_processes_started", "Job processes started", value=procs.started
    )
    yield CounterMetricFamily(
        "lkagent_processes_crashed",
        "Job processes that died before reporting (each replaced)",
        value=procs.crashed,
    )
    yield CounterMetricFamily(
        "lkagent_processes_memory_killed",
        "Job processes killed over job_memory_limit_mb",
        value=procs.memory_killed,
    )
    memory = GaugeMetricFamily(
        "lkagent_job_process_rss_bytes", "Resident memory of each job's process", labels=["job_id"]
    )
    for job_id, info in procs.running.items():
        memory.add_metric([job_id], info.rss_mb * 2**20)
    yield memory
