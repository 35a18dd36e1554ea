"""Fuzzed server frames into a serving worker (hypothesis): whatever arrives, the
worker keeps serving, never holds more than max_jobs, and logs no traceback."""

from __future__ import annotations

import logging
from typing import Any

import hypothesis.strategies as st
import trio
import trio.testing
import wsproto.events as ev
from google.protobuf import json_format
from hypothesis import HealthCheck, example, given, settings
from livekit.protocol import agent as agent_pb

from trio_lkagent import JobContext, Worker

from ._hostile import HostileConn, hostile_server

MAX_JOBS = 2

_ids = st.sampled_from(["", "AJ_1", "AJ_2", "AJ_3", "AJ_probe"]) | st.text(max_size=8)


@st.composite
def _server_message(draw: st.DrawFn) -> agent_pb.ServerMessage:
    kind = draw(
        st.sampled_from(["availability", "assignment", "termination", "pong", "register", "empty"])
    )
    job = agent_pb.Job(id=draw(_ids), type=draw(st.sampled_from([0, 1, 2, 7])))
    if kind == "availability":
        return agent_pb.ServerMessage(availability=agent_pb.AvailabilityRequest(job=job))
    if kind == "assignment":
        return agent_pb.ServerMessage(
            assignment=agent_pb.JobAssignment(
                job=job, token=draw(st.text(max_size=5)), url="ws://127.0.0.1:9"
            )
        )
    if kind == "termination":
        return agent_pb.ServerMessage(termination=agent_pb.JobTermination(job_id=job.id))
    if kind == "pong":
        stamp = draw(st.integers(min_value=-(2**63), max_value=2**63 - 1))
        return agent_pb.ServerMessage(pong=agent_pb.WorkerPong(last_timestamp=stamp))
    if kind == "register":
        return agent_pb.ServerMessage(
            register=agent_pb.RegisterWorkerResponse(worker_id=draw(_ids))
        )
    return agent_pb.ServerMessage()


@st.composite
def _frame(draw: st.DrawFn) -> ev.Event:
    choice = draw(st.integers(0, 3))
    if choice == 0:
        return ev.BytesMessage(data=draw(st.binary(max_size=64)))
    if choice == 1:
        return ev.TextMessage(data=draw(st.text(max_size=64)))
    message = draw(_server_message())
    if choice == 2:
        return ev.BytesMessage(data=message.SerializeToString())
    return ev.TextMessage(data=json_format.MessageToJson(message))


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.records.append(record)


async def _stay(ctx: JobContext) -> None:
    # Assignments point at a dead URL; the job only waits to be ended.
    await trio.sleep_forever()


def _run_case(frames: list[ev.Event]) -> None:
    probe_answer: list[agent_pb.AvailabilityResponse] = []
    peaks: list[int] = []

    async def script(conn: HostileConn) -> None:
        await conn.register("AW_fuzz")
        for frame in frames:
            await conn.send(frame)
        probe = agent_pb.Job(id="AJ_final_probe", type=agent_pb.JT_ROOM)
        await conn.send_message(
            agent_pb.ServerMessage(availability=agent_pb.AvailabilityRequest(job=probe))
        )
        while True:
            message = await conn.next_message()
            if message.WhichOneof("message") == "availability" and (
                message.availability.job_id == "AJ_final_probe"
            ):
                probe_answer.append(message.availability)
                break
        await trio.sleep_forever()

    async def main() -> None:
        async with hostile_server(script) as server:
            worker = Worker(_stay, server.options(max_jobs=MAX_JOBS, assignment_timeout=30))
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.serve)
                with trio.fail_after(60):
                    while not probe_answer:
                        stats = worker.statistics()
                        peaks.append(stats.running_jobs + stats.reserved_jobs)
                        await trio.sleep(0.001)
                stats = worker.statistics()
                assert stats.worker_id == "AW_fuzz" and stats.reconnects == 0
                nursery.cancel_scope.cancel()

    handler = _Errors()
    logging.getLogger("trio_lkagent").addHandler(handler)
    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        logging.getLogger("trio_lkagent").removeHandler(handler)
    assert probe_answer, "the worker stopped answering"
    assert max(peaks) <= MAX_JOBS
    assert not handler.records, [r.getMessage() for r in handler.records]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(frames=st.lists(_frame(), max_size=25))
# Found by this test: a job type the protocol does not define broke the tracing observer.
@example(frames=[ev.BytesMessage(data=b"\x12\n\n\x08\n\x04AJ_1\x10\x07")])
def test_fuzzed_frames_never_stop_the_worker(frames: list[Any]) -> None:
    _run_case(frames)
