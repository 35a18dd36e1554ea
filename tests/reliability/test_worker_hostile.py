"""The worker against a hostile agent service (raw wsproto server): defects 1, 2, 4, 6."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing
import wsproto.events as ev
from livekit.protocol import agent as agent_pb

from trio_lkagent import JobContext, Worker

from ._hostile import HostileConn, hostile_server, well_behaved


async def _forever(ctx: JobContext) -> None:
    await trio.sleep_forever()


async def _ping_into_close_never_answer(conn: HostileConn) -> None:
    """Register; when the worker sends its Close, ping it and never answer the Close."""
    await conn.register(f"AW_bad{conn.index}")
    await conn.read_until_close()
    if conn.close_received.is_set():
        await conn.send_raw_ping()
    await conn.drain_tcp()


async def _silent_then_ping_into_close(conn: HostileConn) -> None:
    """Register, then never answer anything (no pongs): the worker's ping_timeout
    closes the socket (code 1001), and the close meets a ping."""
    await _ping_into_close_never_answer(conn)


def _no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info is not None or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


# -- defect 1: the close race (python-trio/trio-websocket#184) -----------------------


async def test_ping_during_drain_close_is_not_an_error(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with hostile_server(_ping_into_close_never_answer) as server:
        worker = Worker(_forever, server.options(close_timeout=2))
        async with trio.open_nursery() as nursery:
            assert await nursery.start(worker.serve) == "AW_bad0"
            t0 = trio.current_time()
            worker.drain()
        # serve returned normally (an error would have left the nursery), on time.
        conn = server.connections[0]
        assert conn.close_received.is_set()
        assert trio.current_time() - t0 <= 2.5
        assert worker.statistics().status == "stopped"
        await conn.tcp_closed.wait()  # and the socket is closed
    _no_traceback(caplog)


async def test_ping_during_reconnect_close_reconnects(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with hostile_server(_silent_then_ping_into_close, well_behaved) as server:
        worker = Worker(_forever, server.options(ping_interval=5, ping_timeout=15))
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            with trio.fail_after(60):
                await server.wait_connections(2)
                while worker.worker_id != "AW_good1":  # noqa: ASYNC110 - virtual time
                    await trio.sleep(0.01)
            assert server.connections[0].close_received.is_set()
            assert worker.statistics().reconnects == 1
            assert worker.statistics().status == "available"
            worker.drain()
    _no_traceback(caplog)


async def test_ping_during_cancel_close_only_cancels(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with hostile_server(_ping_into_close_never_answer) as server:
        worker = Worker(_forever, server.options(close_timeout=2))
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.serve)
                scope.cancel()
        # Only the cancellation came out of serve (anything else would raise here).
        assert scope.cancelled_caught
        assert server.connections[0].close_received.is_set()
    _no_traceback(caplog)


# -- defect 4: aclose after a drain is bounded ---------------------------------------


async def _never_answer_close(conn: HostileConn) -> None:
    await conn.register()
    await conn.read_until_close()
    await conn.drain_tcp()


async def test_drain_close_is_bounded_when_the_server_never_answers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with hostile_server(_never_answer_close) as server:
        worker = Worker(
            _forever, server.options(close_timeout=3, ping_interval=60, ping_timeout=90)
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            t0 = trio.current_time()
            with trio.fail_after(30):
                worker.drain()
                await server.connections[0].tcp_closed.wait()
        assert 3 <= trio.current_time() - t0 <= 4


# -- defect 2: a peer that stops reading ----------------------------------------------


async def _flood_and_never_read(conn: HostileConn) -> None:
    """Register, then send requests whose answers are large, and never read again."""
    await conn.register(f"AW_deaf{conn.index}")
    big = "J" * 60_000
    for i in range(300):
        job = agent_pb.Job(id=f"AJ_{i}_{big}", type=agent_pb.JT_ROOM)
        await conn.send_message(
            agent_pb.ServerMessage(availability=agent_pb.AvailabilityRequest(job=job))
        )
    await trio.sleep_forever()


async def test_peer_that_stops_reading_means_reconnect(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    async with hostile_server(_flood_and_never_read, well_behaved) as server:
        worker = Worker(_forever, server.options(send_timeout=5))
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            with trio.fail_after(120):
                await server.wait_connections(2)
                while worker.worker_id != "AW_good1":  # noqa: ASYNC110 - virtual time
                    await trio.sleep(0.01)
            stats = worker.statistics()
            assert stats.reconnects == 1 and stats.status == "available"
            # The deaf connection's reservations went with it: nothing over capacity.
            assert stats.reserved_jobs == 0 and stats.running_jobs == 0
            worker.drain()
    assert any("did not complete within 5 s" in r.getMessage() for r in caplog.records)


# -- defect 6: worker input --------------------------------------------------------------


def _availability(job_id: str) -> agent_pb.ServerMessage:
    job = agent_pb.Job(id=job_id, type=agent_pb.JT_ROOM)
    return agent_pb.ServerMessage(availability=agent_pb.AvailabilityRequest(job=job))


async def _next_kind(conn: HostileConn, kind: str) -> agent_pb.WorkerMessage:
    while True:
        message = await conn.next_message()
        if message.WhichOneof("message") == kind:
            return message


async def test_empty_job_ids_and_duplicates_are_declined(
    autojump_clock: trio.testing.MockClock,
) -> None:
    script_done = trio.Event()
    answers: list[agent_pb.AvailabilityResponse] = []

    async def script(conn: HostileConn) -> None:
        await conn.register()
        await conn.send_message(_availability(""))
        answers.append((await _next_kind(conn, "availability")).availability)
        empty = agent_pb.Job(id="", type=agent_pb.JT_ROOM)
        await conn.send_message(
            agent_pb.ServerMessage(
                assignment=agent_pb.JobAssignment(job=empty, token="t", url="ws://127.0.0.1:9")
            )
        )
        await conn.send_message(_availability("AJ_dup"))
        answers.append((await _next_kind(conn, "availability")).availability)
        await conn.send_message(_availability("AJ_dup"))
        answers.append((await _next_kind(conn, "availability")).availability)
        script_done.set()
        await well_behaved_tail(conn)

    async with hostile_server(script) as server:
        worker = Worker(_forever, server.options(assignment_timeout=60))
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            with trio.fail_after(30):
                await script_done.wait()
            await trio.testing.wait_all_tasks_blocked()
            stats = worker.statistics()
            assert stats.jobs_started == 0 and stats.running_jobs == 0
            assert stats.reserved_jobs == 1  # only the first AJ_dup holds a slot
            worker.drain()
    assert [(a.job_id, a.available) for a in answers] == [
        ("", False),
        ("AJ_dup", True),
        ("AJ_dup", False),
    ]


async def well_behaved_tail(conn: HostileConn) -> None:
    while True:
        event = await conn.next_event_recording()
        if isinstance(event, ev.CloseConnection):
            await conn.send(event.response())
            await conn.drain_tcp()
            return


async def test_bad_frame_flood_logs_a_bounded_number_of_lines(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    sent = trio.Event()

    async def flood(conn: HostileConn) -> None:
        await conn.register()
        for _ in range(2000):
            await conn.send(ev.BytesMessage(data=b"\xff\xfe not protobuf"))
        for i in range(2000):
            await conn.send_message(_availability(f"AJ_{i}"))
        sent.set()
        await trio.sleep(11)  # a new log window: the suppressed count is reported
        await conn.send(ev.BytesMessage(data=b"\xff\xfe not protobuf"))
        await well_behaved_tail(conn)

    caplog.set_level(logging.INFO, logger="trio_lkagent")
    async with hostile_server(flood) as server:
        worker = Worker(_forever, server.options(max_jobs=2, assignment_timeout=300))
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            with trio.fail_after(60):
                await sent.wait()
            await trio.sleep(12)
            assert worker.statistics().status == "full"
            assert worker.statistics().requests_declined == 1998
            worker.drain()
    lines = [r.getMessage() for r in caplog.records if r.name == "trio_lkagent.worker"]
    assert len(lines) < 60, lines[:80]
    assert any("suppressed" in line and line.startswith("1990 ") for line in lines), lines
