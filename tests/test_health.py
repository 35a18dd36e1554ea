"""Operating a worker: health and metrics over HTTP, log context, tracing, signals."""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
from livekit.protocol import agent as agent_pb
from prometheus_client.parser import text_string_to_metric_families

from trio_lkagent import JobContext, JobLogFilter, JobRequest, Worker, serve_health
from trio_lkagent._config import ServiceConfig
from trio_lkagent._service import run_worker
from trio_lkagent.devserver import DevServer

from ._http import http_get
from .conftest import worker_options

Entrypoint = Callable[[JobContext], Awaitable[None]]


async def _forever(ctx: JobContext) -> None:
    await trio.sleep_forever()


@asynccontextmanager
async def serving(
    server: DevServer, entrypoint: Entrypoint = _forever, **options: object
) -> AsyncIterator[tuple[Worker, str]]:
    """A registered worker with its health server on an OS-chosen port."""
    worker = Worker(entrypoint, worker_options(server, **options))
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_health, worker, "127.0.0.1", 0)
        await nursery.start(worker.serve)
        yield worker, url
        nursery.cancel_scope.cancel()


def metric_values(text: bytes) -> dict[str, float]:
    """``name{label="v",...}`` (labels sorted) -> value, from the Prometheus text format."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


# ------------------------------------------------------------------ HTTP


async def test_health_worker_and_metrics_during_a_job(server: DevServer) -> None:
    release = trio.Event()

    async def entrypoint(ctx: JobContext) -> None:
        await release.wait()

    async with serving(server, entrypoint, agent_name="health-agent") as (worker, url):
        status, headers, body = await http_get(url + "/")
        assert (status, body) == (200, b"OK\n")
        assert headers["content-type"].startswith("text/plain")

        await server.create_dispatch(room="health-room", agent_name="health-agent")
        job = await server.wait_for_job(room="health-room", status=agent_pb.JS_RUNNING)
        status, headers, body = await http_get(url + "/worker")
        assert status == 200 and headers["content-type"] == "application/json"
        report = json.loads(body)
        assert report["worker_id"] == worker.worker_id
        assert (report["agent_name"], report["status"]) == ("health-agent", "available")
        assert report["jobs"] == [{"id": job.id, "room": "health-room"}]
        assert (report["running_jobs"], report["jobs_started"], report["reconnects"]) == (1, 1, 0)
        assert report["load"] == pytest.approx(0.01)
        assert "ping_rtt" in report and "room_events_dropped" in report

        status, headers, body = await http_get(url + "/metrics")
        assert status == 200 and headers["content-type"].startswith("text/plain; version=")
        metrics = metric_values(body)
        assert metrics["lkagent_jobs_started_total"] == 1
        assert metrics["lkagent_jobs_running"] == 1
        assert metrics["lkagent_dispatch_latency_seconds_count"] == 1
        assert metrics["lkagent_worker_registered"] == 1
        assert metrics['lkagent_worker_status{status="available"}'] == 1
        labels = f'agent_name="health-agent",namespace="",version="",worker_id="{worker.worker_id}"'
        assert metrics[f"lkagent_worker_info{{{labels}}}"] == 1
        for name in (
            "lkagent_jobs_succeeded_total",
            "lkagent_jobs_failed_total",
            "lkagent_reconnects_total",
            "lkagent_room_events_dropped_total",
            "lkagent_requests_declined_total",
            "lkagent_load",
            "lkagent_ping_rtt_seconds",
        ):
            assert name in metrics

        worker.drain()
        status, _, body = await http_get(url + "/")
        assert status == 503 and body == b"draining: 1 job(s) still running\n"
        release.set()
        await server.wait_job_status(job.id, agent_pb.JS_SUCCESS)
    assert worker.statistics().status == "stopped"


async def test_not_registered_is_503_with_the_reason(server: DevServer) -> None:
    options = worker_options(server, url="ws://127.0.0.1:1")  # nothing listens there
    worker = Worker(_forever, options)
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve_health, worker, "127.0.0.1", 0)
        status, _, body = await http_get(url + "/")
        assert status == 503 and body.startswith(b"not registered: connecting to ws://127.0.0.1:1")
        assert (await http_get(url + "/nope"))[0] == 404
        nursery.cancel_scope.cancel()


async def test_two_workers_in_one_process_have_their_own_metrics(server: DevServer) -> None:
    async with (
        serving(server, agent_name="one") as (_one, url_one),
        serving(server, agent_name="two") as (_two, url_two),
    ):
        await server.create_dispatch(room="r-one", agent_name="one")
        await server.wait_for_job(room="r-one", status=agent_pb.JS_RUNNING)
        one = metric_values((await http_get(url_one + "/metrics"))[2])
        two = metric_values((await http_get(url_two + "/metrics"))[2])
    assert (one["lkagent_jobs_started_total"], two["lkagent_jobs_started_total"]) == (1, 0)


# ------------------------------------------------------------------ logging


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.addFilter(JobLogFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[_Records]:
    handler = _Records()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


async def test_records_inside_a_job_carry_job_room_and_worker(
    server: DevServer, records: _Records
) -> None:
    job_logger = logging.getLogger("tests.user_agent")

    async def entrypoint(ctx: JobContext) -> None:
        job_logger.info("in the entrypoint")
        async with trio.open_nursery() as nursery:  # tasks the job starts inherit it
            nursery.start_soon(lambda: _log_later(job_logger))

    async def handler(req: JobRequest) -> None:
        job_logger.info("deciding")
        await req.accept()

    worker = Worker(entrypoint, worker_options(server), request_handler=handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        job_logger.info("outside any job")
        await server.create_dispatch(room="log-room", agent_name="test-agent")
        job = await server.wait_for_job(room="log-room", status=agent_pb.JS_SUCCESS)
        nursery.cancel_scope.cancel()
    by_message = {r.getMessage(): r for r in records.records if r.name == "tests.user_agent"}
    for message in ("deciding", "in the entrypoint", "from a child task"):
        record = by_message[message]
        context = (record.job_id, record.room, record.worker_id)  # type: ignore[attr-defined]
        assert context == (job.id, "log-room", worker.worker_id), message
    outside = by_message["outside any job"]
    assert (outside.job_id, outside.room) == ("", "")  # type: ignore[attr-defined]


def test_text_and_json_formats_carry_the_context() -> None:
    from trio_lkagent._logging import JsonFormatter, TextFormatter

    record = logging.LogRecord("agent", logging.INFO, __file__, 1, "hello %s", ("you",), None)
    record.worker_id, record.job_id, record.room = "AW_1", "AJ_2", "r"
    assert (
        TextFormatter()
        .format(record)
        .endswith("INFO    agent: hello you [worker=AW_1 job=AJ_2 room=r]")
    )
    payload = json.loads(JsonFormatter().format(record))
    assert payload["message"] == "hello you" and payload["level"] == "INFO"
    assert (payload["worker_id"], payload["job_id"], payload["room"]) == ("AW_1", "AJ_2", "r")
    record.job_id = record.room = record.worker_id = ""
    assert TextFormatter().format(record).endswith("agent: hello you")
    assert "job_id" not in json.loads(JsonFormatter().format(record))


async def _log_later(log: logging.Logger) -> None:
    await trio.lowlevel.checkpoint()
    log.info("from a child task")


async def test_websocket_debug_logs_messages_with_tokens_redacted(
    server: DevServer, records: _Records
) -> None:
    async def entrypoint(ctx: JobContext) -> None:
        tokens.append(ctx.token)

    tokens: list[str] = []
    worker = Worker(entrypoint, worker_options(server, websocket_debug=True))
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        await server.create_dispatch(room="ws-room", agent_name="test-agent")
        await server.wait_for_job(room="ws-room", status=agent_pb.JS_SUCCESS)
        nursery.cancel_scope.cancel()
    lines = [r.getMessage() for r in records.records if r.name == "trio_lkagent.ws"]
    assert any(line.startswith("-> register") for line in lines)
    assignment = next(line for line in lines if line.startswith("<- assignment"))
    assert "<redacted>" in assignment
    assert tokens and not any(tokens[0] in line for line in lines)


# ------------------------------------------------------------------ OpenTelemetry


async def test_job_lifecycle_spans(server: DevServer) -> None:
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from trio_lkagent._telemetry import OtelObserver

    exporter = InMemorySpanExporter()
    provider = sdk_trace.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    user_tracer = provider.get_tracer("user")

    async def entrypoint(ctx: JobContext) -> None:
        with user_tracer.start_as_current_span("user-work"):
            await trio.lowlevel.checkpoint()
        if ctx.job.metadata == "fail":
            raise ValueError("boom")

    worker = Worker(entrypoint, worker_options(server))
    worker.add_observer(OtelObserver(provider))
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        await server.create_dispatch(room="ok", agent_name="test-agent")
        ok = await server.wait_for_job(room="ok", status=agent_pb.JS_SUCCESS)
        await server.create_dispatch(room="bad", agent_name="test-agent", metadata="fail")
        bad = await server.wait_for_job(room="bad", status=agent_pb.JS_FAILED)
        nursery.cancel_scope.cancel()

    spans = exporter.get_finished_spans()
    for job, outcome in ((ok, "returned"), (bad, "failed")):
        (root,) = [s for s in spans if s.name == "lk.job" and s.attributes["lk.job.id"] == job.id]
        assert root.attributes["lk.room.name"] == job.room_name
        assert root.attributes["lk.worker.id"] == worker.worker_id
        assert root.attributes["lk.job.outcome"] == outcome
        children = {
            s.name: s for s in spans if s.parent and s.parent.span_id == root.context.span_id
        }
        assert set(children) == {"lk.job.request", "lk.job.assignment", "lk.job.run"}
        assert [e.name for e in children["lk.job.request"].events] == ["accept"]
        assert [e.name for e in root.events] == ["end"]
        run = children["lk.job.run"]
        (user,) = [
            s for s in spans if s.name == "user-work" and s.parent.span_id == run.context.span_id
        ]
        assert user.context.trace_id == root.context.trace_id
        request, assignment = children["lk.job.request"], children["lk.job.assignment"]
        assert request.end_time <= assignment.start_time <= assignment.end_time <= run.start_time
    failed_root = next(
        s for s in spans if s.name == "lk.job" and s.attributes["lk.job.id"] == bad.id
    )
    assert failed_root.status.status_code == trace.StatusCode.ERROR
    assert failed_root.attributes["lk.job.error"] == "ValueError: boom"


# ------------------------------------------------------------------ signals


@asynccontextmanager
async def service(worker: Worker) -> AsyncIterator[trio.Nursery]:
    """``run_worker`` (the CLI's single-process runner) in a nursery; no health server."""
    async with trio.open_nursery() as nursery:
        lines: list[str] = []
        nursery.start_soon(
            lambda: run_worker(worker, ServiceConfig(health_port=None), say=lines.append)
        )
        yield nursery


async def test_sigterm_does_not_wait_for_a_blocking_request_handler(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    entered = trio.Event()

    async def handler(req: JobRequest) -> None:
        entered.set()
        await trio.sleep_forever()

    worker = Worker(_forever, worker_options(server, request_timeout=300), request_handler=handler)
    async with service(worker):
        sw = await server.wait_for_worker(agent_name="test-agent")
        await server.create_dispatch(room="r-block", agent_name="test-agent")
        await entered.wait()
        t0 = trio.current_time()
        os.kill(os.getpid(), signal.SIGTERM)  # run_worker's receiver has it
    assert trio.current_time() - t0 < 1  # not the handler's 300 s
    assert worker.statistics().requests_declined == 1
    assert sw.close_code == 1000


async def test_second_signal_cancels_running_jobs_at_once(
    server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    worker = Worker(_forever, worker_options(server, drain_timeout=3600))
    async with service(worker):
        await server.wait_for_worker(agent_name="test-agent")
        await server.create_dispatch(room="r-2", agent_name="test-agent")
        job = await server.wait_for_job(room="r-2", status=agent_pb.JS_RUNNING)
        os.kill(os.getpid(), signal.SIGTERM)
        await trio.testing.wait_all_tasks_blocked()
        assert worker.statistics().status == "draining"
        t0 = trio.current_time()
        os.kill(os.getpid(), signal.SIGINT)
    assert trio.current_time() - t0 < 3600
    assert server.jobs[job.id].status == agent_pb.JS_SUCCESS
