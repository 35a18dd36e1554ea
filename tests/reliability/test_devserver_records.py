"""The dev server's records and sockets under load: defects 8 (bounded retention,
rate-limited SimulateJob) and 9 (a dropped client's socket is closed at once).
Defect 10 (job ownership as Go does it) is
``tests/test_devserver_agent.py::test_reports_from_another_connection_are_ignored_as_go_does``."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator

import jwt
import pytest
import trio
import trio.testing
import wsproto
import wsproto.events as ev
from livekit.protocol import agent as agent_pb

from trio_lkagent import JobContext, Worker
from trio_lkagent.devserver import DevServer, open_devserver

from ..conftest import API_KEY, API_SECRET, worker_options
from ..test_devserver_agent import raw_worker


@pytest.fixture
async def small_server() -> AsyncIterator[DevServer]:
    async with open_devserver(
        host="127.0.0.1",
        port=0,
        api_key=API_KEY,
        api_secret=API_SECRET,
        retain_ended=20,
        ws_ping_interval=60,
    ) as s:
        yield s


async def _noop(ctx: JobContext) -> None:
    pass


async def test_ended_jobs_and_workers_are_kept_up_to_the_retention(
    small_server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    server = small_server
    for round_ in range(30):  # 30 workers come and go: their records are bounded too
        worker = Worker(_noop, worker_options(server))
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            for i in range(3):
                await server.create_dispatch(room=f"r{round_}-{i}", agent_name="test-agent")
                await server.wait_for_job(room=f"r{round_}-{i}", status=agent_pb.JS_SUCCESS)
            worker.drain()
    # 90 jobs and 30 workers ran; the newest ended ones are kept (the limit plus
    # less than one pruning step of 2).
    assert len(server.jobs) <= 22
    assert len(server.workers) <= 22
    assert "r29-2" in {job.room_name for job in server.jobs.values()}


async def test_simulate_job_flood_is_rate_limited(
    small_server: DevServer, autojump_clock: trio.testing.MockClock
) -> None:
    server = small_server
    async with raw_worker(server, agent_name="x") as flooder:
        for _ in range(500):
            request = agent_pb.SimulateJobRequest(type=agent_pb.JT_ROOM)
            request.room.name = "sim"
            await flooder.send(simulate_job=request)
        await trio.testing.wait_all_tasks_blocked()
        simulated = [job for job in server.jobs.values() if job.simulated]
        # The burst (20) and what the rate (5/s) allowed meanwhile; not 500.
        assert 20 <= len(simulated) <= 30
        assert server.statistics().ignored_messages >= 470


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_dropped_clients_sockets_are_closed_at_once(small_server: DevServer) -> None:
    # Real time: hypercorn's ping task (60 s here) is what used to hold the socket.
    server = small_server
    host, port = server.url.removeprefix("http://").split(":")
    now = int(time.time())
    token = jwt.encode(
        {"iss": API_KEY, "sub": "w", "exp": now + 600, "video": {"agent": True}},
        API_SECRET,
        algorithm="HS256",
    )
    baseline = _fds()
    for _ in range(20):
        stream = await trio.open_tcp_stream(host, int(port))
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        await stream.send_all(
            ws.send(
                ev.Request(
                    host=f"{host}:{port}",
                    target="/agent?protocol=1",
                    extra_headers=[(b"authorization", f"Bearer {token}".encode())],
                )
            )
        )
        ws.receive_data(await stream.receive_some(65536))
        register = agent_pb.WorkerMessage(
            register=agent_pb.RegisterWorkerRequest(type=agent_pb.JT_ROOM, agent_name="gone")
        )
        await stream.send_all(ws.send(ev.BytesMessage(data=register.SerializeToString())))
        await stream.receive_some(65536)  # the register response
        await stream.aclose()  # dropped: no close frame
    with trio.fail_after(5):  # a safety net; without the fix it takes the 60 s ping
        while _fds() > baseline:  # noqa: ASYNC110 - the server's sockets close meanwhile
            await trio.sleep(0.02)
    assert not [w for w in server.workers.values() if w.connected]
