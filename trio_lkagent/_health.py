"""A worker's health and metrics over HTTP: ``/``, ``/worker`` and ``/metrics``.

One small ASGI application served by hypercorn on Trio (as the dev server is),
in a task the caller owns::

    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_health, worker, "127.0.0.1", 8081)
        await worker.serve()

Metrics live in a :class:`prometheus_client.CollectorRegistry` of their own per
worker (never the global one), so several workers in one process do not collide.
Counters and gauges are read from :meth:`Worker.statistics` when scraped; the
dispatch latency histogram is fed by a :class:`~._telemetry.WorkerObserver`
(``_metrics.py``). hypercorn and prometheus-client are imported on first use.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import attrs
import trio

if TYPE_CHECKING:
    from ._metrics import WorkerMetrics
    from ._worker import Worker

__all__ = ["health_report", "serve_health", "worker_report"]

logger = logging.getLogger("trio_lkagent.health")


def worker_report(worker: Worker) -> dict[str, Any]:
    """What ``/worker`` answers: the worker's statistics as JSON-ready values."""
    stats = worker.statistics()
    opts = worker.options
    return {
        "worker_id": stats.worker_id,
        "agent_name": opts.agent_name,
        "namespace": opts.namespace,
        "url": opts.agent_ws_url,
        "status": stats.status,
        "registered": stats.registered,
        "load": stats.load,
        "max_jobs": stats.max_jobs,
        "running_jobs": stats.running_jobs,
        "reserved_jobs": stats.reserved_jobs,
        "jobs": [{"id": job_id, "room": room} for job_id, room in stats.jobs.items()],
        "jobs_started": stats.jobs_started,
        "jobs_succeeded": stats.jobs_succeeded,
        "jobs_failed": stats.jobs_failed,
        "requests_declined": stats.requests_declined,
        "reconnects": stats.reconnects,
        "ping_rtt": stats.ping_rtt,
        "room_events_dropped": stats.room_events_dropped,
        # The process executor's pool: idle, running (pid, memory per job), crashes.
        "processes": attrs.asdict(stats.processes) if stats.processes is not None else None,
        # resilience
        "start_time": stats.start_time,
        "uptime": stats.uptime,
        "last_job_time": stats.last_job_time,
        "cpu_percent": stats.cpu_percent,
        "memory_mb": stats.memory_mb,
        "network_bytes_in": stats.network_bytes_in,
        "network_bytes_out": stats.network_bytes_out,
        "connection_state": stats.connection_state,
        "last_heartbeat": stats.last_heartbeat,
        "load_history": list(stats.load_history),
        "full_reason": stats.full_reason,
        "job_retries": stats.job_retries,
        "recovery_decisions": stats.recovery_decisions,
        "health": _monitor_report(worker),
    }


def _monitor_report(worker: Worker) -> dict[str, Any] | None:
    """The health monitor's and resource monitor's verdicts, if any."""
    monitor = worker.options.health_monitor
    resources = worker.resource_monitor.status()
    return {
        "healthy": monitor.healthy if monitor is not None else None,
        "reason": monitor.reason if monitor is not None else "",
        "resources": resources.health.name if resources is not None else None,
    }


def health_report(worker: Worker) -> tuple[bool, str]:
    """``(healthy, reason)``: healthy while registered and taking (or full of) jobs."""
    stats = worker.statistics()
    if stats.stuck_jobs:
        return False, f"{stats.stuck_jobs} job(s) ignored cancellation and still run"
    monitor = worker.options.health_monitor
    if monitor is not None and not monitor.healthy and stats.status in ("available", "full"):
        return False, f"unhealthy: {monitor.reason}"
    if stats.status in ("available", "full"):
        return True, "OK"
    if stats.status == "connecting":
        return False, (
            f"not registered: connecting to {worker.options.agent_ws_url}"
            f" (reconnects so far: {stats.reconnects})"
        )
    if stats.status == "draining":
        return False, f"draining: {stats.running_jobs} job(s) still running"
    return False, "stopped"


ASGIReceive = Callable[[], Awaitable[dict[str, Any]]]
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]


class HealthApp:
    """The ASGI application: ``/``, ``/worker``, ``/metrics``; anything else is 404."""

    def __init__(self, worker: Worker, metrics: WorkerMetrics) -> None:
        self._worker = worker
        self._metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: ASGIReceive, send: ASGISend) -> None:
        """Answer one request (``lifespan`` is acknowledged; WebSockets are refused)."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            await send({"type": "websocket.close", "code": 1003})
            return
        path = scope.get("path", "/").rstrip("/") or "/"
        if scope.get("method") not in ("GET", "HEAD"):
            await _respond(send, 405, b"method not allowed\n", "text/plain; charset=utf-8")
        elif path == "/":
            healthy, reason = health_report(self._worker)
            await _respond(send, 200 if healthy else 503, reason.encode() + b"\n")
        elif path == "/worker":
            body = json.dumps(worker_report(self._worker), indent=2).encode()
            await _respond(send, 200, body + b"\n", "application/json")
        elif path == "/metrics":
            body, content_type = self._metrics.exposition()
            await _respond(send, 200, body, content_type)
        else:
            await _respond(send, 404, b"not found: try /, /worker or /metrics\n")


async def _respond(
    send: ASGISend, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8"
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def serve_health(
    worker: Worker,
    host: str = "127.0.0.1",
    port: int = 8081,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the worker's health, state and metrics over HTTP until cancelled.

    - ``GET /``: ``200 OK`` while the worker is registered and serving (also
      when full); ``503`` with the reason otherwise (connecting, draining, stopped,
      or ``WorkerOptions.health_monitor`` says unhealthy).
    - ``GET /worker``: JSON: worker id, agent name, status, load, running jobs
      with their rooms, reconnects, ping RTT, counters.
    - ``GET /metrics``: Prometheus text format, from a registry of this worker's own.

    Args:
        worker: The worker to report on (served or not yet).
        host: Interface to bind.
        port: TCP port; 0 lets the OS choose.
        task_status: Receives the base URL, ``http://host:port``, once bound.

    Raises:
        OSError: the address cannot be bound.
    """
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve as hypercorn_serve

    from ._metrics import WorkerMetrics

    metrics = WorkerMetrics(worker)
    worker.add_observer(metrics)
    config = HypercornConfig()
    bind_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    config.bind = [f"{bind_host}:{port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("trio_lkagent.health.http")
    config.graceful_timeout = 0.5
    try:
        async with trio.open_nursery() as nursery:
            serve = partial(
                hypercorn_serve,
                cast(Any, HealthApp(worker, metrics)),
                config,
                shutdown_trigger=trio.sleep_forever,
            )
            binds: list[str] = await nursery.start(serve)
            task_status.started(binds[0])
    finally:
        worker.remove_observer(metrics)
