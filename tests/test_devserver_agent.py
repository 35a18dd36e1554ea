"""The dev server's agent service, driven by a raw protocol client over loopback WebSockets.

The client here is deliberately minimal (trio-websocket + the wire codec), not the
SDK's worker, so these tests pin the server's behaviour on the wire.
"""

from __future__ import annotations

import datetime
import logging
import random
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing
import trio_websocket
from livekit import api as lkapi
from livekit.protocol import agent as agent_pb
from livekit.protocol import agent_dispatch as dispatch_pb
from livekit.protocol import models as models_pb

from trio_lkagent._protocol import WireFormat, decode, encode, message_kind
from trio_lkagent.devserver import DevServer, JobEndedError, open_devserver, serve_devserver
from trio_lkagent.devserver import _dispatch as rules

API_KEY = "devkey"
API_SECRET = "devsecret-0123456789abcdef0123456789"


# -- a raw protocol client ------------------------------------------------------------


def agent_token(
    secret: str = API_SECRET, *, agent: bool = True, ttl: datetime.timedelta | None = None
) -> str:
    token = lkapi.AccessToken(API_KEY, secret).with_grants(lkapi.VideoGrants(agent=agent or None))
    if ttl is not None:
        token = token.with_ttl(ttl)
    return token.to_jwt()


class RawWorker:
    """One ``/agent`` connection speaking the protocol by hand."""

    def __init__(self, ws: trio_websocket.WebSocketConnection, wire: WireFormat) -> None:
        self.ws = ws
        self.wire = wire
        self.worker_id = ""

    async def send(self, wire: WireFormat | None = None, **fields: Any) -> None:
        await self.ws.send_message(encode(agent_pb.WorkerMessage(**fields), wire or self.wire))

    async def receive(self) -> tuple[agent_pb.ServerMessage, WireFormat]:
        with trio.fail_after(30):
            return decode(await self.ws.get_message(), agent_pb.ServerMessage)

    async def expect(self, kind: str) -> agent_pb.ServerMessage:
        message, _ = await self.receive()
        assert message_kind(message) == kind, message
        return message

    async def register(self, **fields: Any) -> agent_pb.RegisterWorkerResponse:
        fields.setdefault("type", agent_pb.JT_ROOM)
        await self.send(register=agent_pb.RegisterWorkerRequest(**fields))
        response = (await self.expect("register")).register
        self.worker_id = response.worker_id
        return response

    async def report(self, job_id: str, status: agent_pb.JobStatus, error: str = "") -> None:
        await self.send(
            update_job=agent_pb.UpdateJobStatus(job_id=job_id, status=status, error=error)
        )

    async def serve(
        self,
        *,
        accept: bool | Callable[[agent_pb.Job], bool] = True,
        terminations: list[str] | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Answer availability requests; report RUNNING on assignment, SUCCESS on termination."""
        task_status.started()
        while True:
            try:
                message, _ = decode(await self.ws.get_message(), agent_pb.ServerMessage)
            except trio_websocket.ConnectionClosed:
                return
            kind = message_kind(message)
            if kind == "availability":
                job = message.availability.job
                ok = accept(job) if callable(accept) else accept
                await self.send(
                    availability=agent_pb.AvailabilityResponse(
                        job_id=job.id, available=ok, participant_identity=f"agent-{job.id}"
                    )
                )
            elif kind == "assignment":
                await self.report(message.assignment.job.id, agent_pb.JS_RUNNING)
            elif kind == "termination":
                if terminations is not None:
                    terminations.append(message.termination.job_id)
                await self.report(message.termination.job_id, agent_pb.JS_SUCCESS)


@asynccontextmanager
async def connect(
    server: DevServer, *, token: str | None = None, path: str = "/agent?protocol=1"
) -> AsyncIterator[trio_websocket.WebSocketConnection]:
    url = server.url.replace("http", "ws") + path
    headers = [(b"authorization", f"Bearer {token or agent_token()}".encode())]
    async with trio_websocket.open_websocket_url(url, extra_headers=headers) as ws:
        yield ws


@asynccontextmanager
async def raw_worker(
    server: DevServer, wire: WireFormat = WireFormat.PROTOBUF, **register: Any
) -> AsyncIterator[RawWorker]:
    async with connect(server) as ws:
        worker = RawWorker(ws, wire)
        await worker.register(**register)
        yield worker


@asynccontextmanager
async def serving(
    server: DevServer, nursery: trio.Nursery, load: float = 0.0, **options: Any
) -> AsyncIterator[RawWorker]:
    """A registered raw worker that answers availability requests in the background."""
    serve_options = {k: options.pop(k) for k in ("accept", "terminations") if k in options}
    options.setdefault("agent_name", "x")
    async with raw_worker(server, **options) as worker:
        if load:
            await worker.send(update_worker=agent_pb.UpdateWorkerStatus(load=load))
        await nursery.start(
            lambda task_status: worker.serve(task_status=task_status, **serve_options)
        )
        await trio.testing.wait_all_tasks_blocked()
        yield worker


@pytest.fixture
async def server() -> AsyncIterator[DevServer]:
    async with open_devserver(api_key=API_KEY, api_secret=API_SECRET) as s:
        yield s


# -- upgrade and authentication -------------------------------------------------------


async def _rejection(
    server: DevServer, headers: list[tuple[bytes, bytes]], path: str = "/agent"
) -> tuple[int, str]:
    url = server.url.replace("http", "ws") + path
    with pytest.raises(trio_websocket.ConnectionRejected) as info:
        async with trio_websocket.open_websocket_url(url, extra_headers=headers):
            pass
    return info.value.status_code, (info.value.body or b"").decode()


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ([], "no permissions to access the room"),
        ([(b"authorization", b"Bearer " + agent_token(agent=False).encode())], "no permissions"),
        (
            [
                (
                    b"authorization",
                    b"Bearer " + agent_token("wrong-secret-0123456789abcdef0123456789").encode(),
                )
            ],
            "Signature",
        ),
        ([(b"authorization", b"Bearer not-a-jwt")], "invalid authorization token"),
        ([(b"authorization", b"Token " + agent_token().encode())], "Must start with Bearer"),
        (
            [
                (
                    b"authorization",
                    b"Bearer " + agent_token(ttl=datetime.timedelta(hours=-1)).encode(),
                )
            ],
            "expired",
        ),
    ],
    ids=["missing", "no-agent-grant", "bad-signature", "garbage", "not-bearer", "expired"],
)
async def test_upgrade_refused_with_401_and_reason(
    server: DevServer, headers: list[tuple[bytes, bytes]], body: str
) -> None:
    status, text = await _rejection(server, headers)
    assert status == 401
    assert body in text
    assert server.statistics().upgrades_rejected == 1
    assert not server.workers


async def test_access_token_query_parameter_and_unknown_path(server: DevServer) -> None:
    async with connect(server, token="", path=f"/agent?access_token={agent_token()}") as ws:
        worker = RawWorker(ws, WireFormat.PROTOBUF)
        await worker.register(agent_name="q")
    status, _ = await _rejection(
        server, [(b"authorization", b"Bearer " + agent_token().encode())], "/nope"
    )
    assert status == 404


async def test_fault_rejects_upgrades_until_cleared(server: DevServer) -> None:
    server.faults.reject_upgrade_status = 503
    status, text = await _rejection(
        server, [(b"authorization", b"Bearer " + agent_token().encode())]
    )
    assert (status, text) == (503, server.faults.reject_upgrade_body)
    server.faults.reject_upgrade_status = None
    async with raw_worker(server, agent_name="x") as worker:
        assert worker.worker_id in server.workers


# -- registration, keepalive, wire format -------------------------------------------------


async def test_register_answers_worker_id_and_server_info(server: DevServer) -> None:
    async with connect(server) as ws:
        worker = RawWorker(ws, WireFormat.PROTOBUF)
        response = await worker.register(agent_name="x", namespace="ns", version="9")
        assert response.worker_id.startswith("AW_") and len(response.worker_id) == 15
        assert response.server_info.agent_protocol == 1
        assert response.server_info.edition == models_pb.ServerInfo.Standard
        sw = await server.wait_for_worker(agent_name="x")
        assert sw.worker_id == response.worker_id
        assert (sw.register.namespace, sw.protocol, sw.status) == ("ns", 1, agent_pb.WS_AVAILABLE)
        # No allowed_permissions sent: Go's defaults.
        assert sw.permissions == rules.default_permissions()
    with trio.fail_after(5):
        while sw.connected:
            await trio.testing.wait_all_tasks_blocked()
    assert sw.close_code == 1000


async def test_register_timeout_drops_the_socket(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_devserver(api_key=API_KEY, api_secret=API_SECRET) as server,
        connect(server) as ws,
    ):
        t0 = trio.current_time()
        with pytest.raises(trio_websocket.ConnectionClosed) as info:
            await ws.get_message()
        assert trio.current_time() - t0 == pytest.approx(10.0)
        # Like Go: no close frame, the TCP connection is just closed.
        assert info.value.reason.code == 1006
        assert not server.workers


async def test_withheld_registration_times_out(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_devserver(api_key=API_KEY, api_secret=API_SECRET, register_timeout=3) as server,
        connect(server) as ws,
    ):
        server.faults.withhold_register = True
        worker = RawWorker(ws, WireFormat.PROTOBUF)
        t0 = trio.current_time()
        await worker.send(register=agent_pb.RegisterWorkerRequest(type=agent_pb.JT_ROOM))
        with pytest.raises(trio_websocket.ConnectionClosed):
            await ws.get_message()
        assert trio.current_time() - t0 == pytest.approx(3.0)


async def test_ping_pong(server: DevServer) -> None:
    async with raw_worker(server, agent_name="x") as worker:
        await worker.send(ping=agent_pb.WorkerPing(timestamp=1234))
        pong = (await worker.expect("pong")).pong
        assert pong.last_timestamp == 1234
        assert pong.timestamp == pytest.approx(datetime.datetime.now().timestamp() * 1000, abs=5000)
        sw = server.workers[worker.worker_id]
        assert (sw.pings, sw.pongs) == (1, 1)
        server.faults.withhold_pong = True
        await worker.send(ping=agent_pb.WorkerPing(timestamp=5))
        await trio.testing.wait_all_tasks_blocked()
        assert (sw.pings, sw.pongs) == (2, 1)


async def test_websocket_level_pings(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio-websocket")
    async with (
        open_devserver(api_key=API_KEY, api_secret=API_SECRET, ws_ping_interval=2) as server,
        raw_worker(server, agent_name="x"),
    ):
        await trio.sleep(5)
    pings = [r for r in caplog.records if "wsproto.events.Ping" in r.getMessage()]
    assert len(pings) == 3  # at 0, 2 and 4 s


async def test_json_connection_is_answered_in_json_until_a_binary_frame(server: DevServer) -> None:
    async with connect(server) as ws:
        worker = RawWorker(ws, WireFormat.JSON)
        await worker.send(
            register=agent_pb.RegisterWorkerRequest(type=agent_pb.JT_ROOM, agent_name="j")
        )
        message, wire = await worker.receive()
        assert wire is WireFormat.JSON and message.register.worker_id.startswith("AW_")
        sw = server.workers[message.register.worker_id]
        assert sw.wire_format is WireFormat.JSON
        await worker.send(ping=agent_pb.WorkerPing(timestamp=1))
        assert (await worker.receive())[1] is WireFormat.JSON
        await worker.send(WireFormat.PROTOBUF, ping=agent_pb.WorkerPing(timestamp=2))
        message, wire = await worker.receive()
        assert wire is WireFormat.PROTOBUF and message.pong.last_timestamp == 2
        assert sw.wire_format is WireFormat.PROTOBUF


# -- dispatch ---------------------------------------------------------------------------


async def test_explicit_dispatch_assigns_with_a_room_token(server: DevServer) -> None:
    perms = models_pb.ParticipantPermission(
        can_subscribe=True, can_publish=False, can_publish_data=True, hidden=True
    )
    async with raw_worker(server, agent_name="x", allowed_permissions=perms) as worker:
        dispatch = await server.create_dispatch("r1", "x", "dispatch-meta")
        assert dispatch.id.startswith("AD_") and dispatch.room == "r1"
        request = (await worker.expect("availability")).availability
        job = request.job
        assert job.id.startswith("AJ_") and job.dispatch_id == dispatch.id
        assert (job.type, job.agent_name, job.metadata) == (agent_pb.JT_ROOM, "x", "dispatch-meta")
        assert job.room.name == "r1" and job.room.sid.startswith("RM_")
        # As in Go, the offered job already carries the worker and a RUNNING state.
        assert (job.state.worker_id, job.state.status) == (worker.worker_id, agent_pb.JS_RUNNING)
        await worker.send(
            availability=agent_pb.AvailabilityResponse(
                job_id=job.id,
                available=True,
                participant_identity="bot-1",
                participant_name="Bot",
                participant_metadata='{"v": 1}',
                participant_attributes={"role": "helper"},
            )
        )
        assignment = (await worker.expect("assignment")).assignment
        assert assignment.job.id == job.id and not assignment.HasField("url")
        assert assignment.job.state.participant_identity == "bot-1"
        claims = lkapi.TokenVerifier(API_KEY, API_SECRET).verify(assignment.token)
        assert (claims.identity, claims.name, claims.metadata) == ("bot-1", "Bot", '{"v": 1}')
        assert claims.kind == "agent"
        assert claims.attributes == {"role": "helper", "lk.agent_name": "x"}
        video = claims.video
        assert video is not None
        assert (video.room_join, video.room, video.agent) == (True, "r1", True)
        assert (video.can_publish, video.can_subscribe, video.hidden) == (False, True, True)
        sjob = server.jobs[job.id]
        assert sjob.accepted_identity == "bot-1" and sjob.job.state.status == agent_pb.JS_RUNNING
        assert sjob.status_history == [agent_pb.JS_PENDING]  # the worker has not reported yet
        listed = await server.list_dispatches("r1")
        assert [j.id for d in listed for j in d.state.jobs] == [job.id]


async def test_declined_job_goes_to_the_other_worker(server: DevServer) -> None:
    async with trio.open_nursery() as nursery:
        async with (
            serving(server, nursery, accept=False) as picky,
            serving(server, nursery) as willing,
        ):
            for i in range(5):
                await server.create_dispatch(f"r{i}", "x")
                job = await server.wait_for_job(room=f"r{i}", status=agent_pb.JS_RUNNING)
                assert job.worker_id == willing.worker_id
                assert job.attempted_worker_ids in (
                    [willing.worker_id],
                    [picky.worker_id, willing.worker_id],
                )
        nursery.cancel_scope.cancel()


async def test_nobody_available_fails_with_no_capacity(server: DevServer) -> None:
    async with trio.open_nursery() as nursery:
        async with serving(server, nursery, accept=False) as picky:
            await server.create_dispatch("r1", "x")
            job = await server.wait_for_job(room="r1", status=agent_pb.JS_FAILED)
            assert job.attempted_worker_ids == [picky.worker_id]
            assert job.job.state.error == "no workers with sufficient capacity"
            assert job.job.state.reason == agent_pb.JSR_NO_CAPACITY
            assert job.status_history == [agent_pb.JS_PENDING, agent_pb.JS_FAILED]
            assert (await server.list_dispatches("r1"))[0].state.jobs == []
            with pytest.raises(JobEndedError):
                await server.wait_job_status(job.id, agent_pb.JS_RUNNING)
        nursery.cancel_scope.cancel()
    # No worker registered that name at all: Go creates no job.
    await server.create_dispatch("r2", "nobody")
    await trio.testing.wait_all_tasks_blocked()
    assert not [j for j in server.jobs.values() if j.room_name == "r2"]


async def test_availability_timeout_is_not_retried(autojump_clock: trio.testing.MockClock) -> None:
    # Go: JobRequest retries only "not available" and "worker closed"; the psrpc
    # deadline (3 s) bounds the whole request.
    async with (
        open_devserver(api_key=API_KEY, api_secret=API_SECRET) as server,
        raw_worker(server, agent_name="x") as silent,
    ):
        t0 = trio.current_time()
        await server.create_dispatch("r1", "x")
        job = await server.wait_for_job(room="r1", status=agent_pb.JS_FAILED)
        assert trio.current_time() - t0 == pytest.approx(3.0)
        assert job.job.state.error == "context deadline exceeded"
        assert job.attempted_worker_ids == [silent.worker_id]
        # A late answer is ignored.
        await silent.expect("availability")
        await silent.send(availability=agent_pb.AvailabilityResponse(job_id=job.id, available=True))
        await trio.testing.wait_all_tasks_blocked()
        assert server.statistics().ignored_messages == 1


async def test_availability_timeout_retry_option(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_devserver(
            api_key=API_KEY,
            api_secret=API_SECRET,
            job_request_timeout=None,
            retry_on_availability_timeout=True,
            rng=random.Random(1),
        ) as server,
        trio.open_nursery() as nursery,
    ):
        async with (
            raw_worker(server, agent_name="x") as silent,
            serving(server, nursery) as willing,
        ):
            t0 = trio.current_time()
            for i in range(4):
                await server.create_dispatch(f"r{i}", "x")
                job = await server.wait_for_job(room=f"r{i}", status=agent_pb.JS_RUNNING)
                assert job.worker_id == willing.worker_id
                if job.attempted_worker_ids[0] == silent.worker_id:
                    assert job.attempted_worker_ids == [silent.worker_id, willing.worker_id]
            # At least one offer went to the silent worker and waited the full 10 s.
            assert trio.current_time() - t0 >= 10.0
        nursery.cancel_scope.cancel()


async def test_terminate_answer_ends_the_job_successfully(server: DevServer) -> None:
    async with raw_worker(server, agent_name="x") as worker:
        await server.create_dispatch("r1", "x")
        job_id = (await worker.expect("availability")).availability.job.id
        await worker.send(
            availability=agent_pb.AvailabilityResponse(
                job_id=job_id, available=False, terminate=True
            )
        )
        job = await server.wait_job_status(job_id, agent_pb.JS_SUCCESS)
        assert job.status_history == [agent_pb.JS_PENDING, agent_pb.JS_SUCCESS]
        await worker.send(ping=agent_pb.WorkerPing(timestamp=1))
        await worker.expect("pong")  # no assignment came before it


async def test_selection_weighted_by_load(autojump_clock: trio.testing.MockClock) -> None:
    async with (
        open_devserver(api_key=API_KEY, api_secret=API_SECRET, rng=random.Random(7)) as server,
        trio.open_nursery() as nursery,
    ):
        async with (
            serving(server, nursery, load=0.0) as idle,
            serving(server, nursery, load=0.99) as busy,
        ):
            assert server.workers[busy.worker_id].load == pytest.approx(0.99)
            for i in range(100):
                await server.create_dispatch(f"r{i}", "x")
            await trio.testing.wait_all_tasks_blocked()
            picked = [job.worker_id for job in server.jobs.values()]
            assert len(picked) == 100
            assert picked.count(idle.worker_id) >= 95
        nursery.cancel_scope.cancel()


def test_weighted_selection_rule() -> None:
    class W:
        def __init__(self, worker_id: str, load: float, status: int = agent_pb.WS_AVAILABLE):
            self.worker_id, self.load, self.status = worker_id, load, status

    workers = [W("a", 0.0), W("b", 0.75), W("full", 0.0, agent_pb.WS_FULL), W("over", 1.5)]
    rng = random.Random(3)
    picks = [rules.select_worker_weighted_by_load(workers, (), rng)[0] for _ in range(10_000)]
    share = sum(1 for p in picks if p is workers[0]) / len(picks)
    assert share == pytest.approx(0.8, abs=0.02)  # weights 1 and 0.25
    assert all(p in workers[:2] for p in picks)
    assert rules.select_worker_weighted_by_load(workers, ("a", "b"), rng) == (
        None,
        "no workers with sufficient capacity",
    )
    assert rules.select_worker_weighted_by_load([], (), rng) == (None, "no workers available")


async def test_full_worker_is_not_selected(server: DevServer) -> None:
    async with trio.open_nursery() as nursery:
        async with serving(server, nursery) as full, serving(server, nursery) as free:
            await full.send(
                update_worker=agent_pb.UpdateWorkerStatus(
                    status=agent_pb.WS_FULL, load=0.1, job_count=3
                )
            )
            await trio.testing.wait_all_tasks_blocked()
            sw = server.workers[full.worker_id]
            assert (sw.status, sw.job_count) == (agent_pb.WS_FULL, 3)
            for i in range(10):
                await server.create_dispatch(f"r{i}", "x")
            await trio.testing.wait_all_tasks_blocked()
            assert {job.worker_id for job in server.jobs.values()} == {free.worker_id}
            # An update without status keeps the status, changes the load.
            await full.send(update_worker=agent_pb.UpdateWorkerStatus(load=0.5))
            await trio.testing.wait_all_tasks_blocked()
            assert (sw.status, sw.load) == (agent_pb.WS_FULL, 0.5)
        nursery.cancel_scope.cancel()


async def test_job_updates_are_recorded(server: DevServer) -> None:
    async with trio.open_nursery() as nursery:
        async with serving(server, nursery) as worker:
            await server.create_dispatch("ok", "x")
            await server.create_dispatch("bad", "x")
            ok = await server.wait_for_job(room="ok", status=agent_pb.JS_RUNNING)
            bad = await server.wait_for_job(room="bad", status=agent_pb.JS_RUNNING)
            sw = server.workers[worker.worker_id]
            assert sw.running_job_ids == {ok.id, bad.id}
            assert ok.job.state.started_at and ok.job.state.worker_id == worker.worker_id
            await worker.report(ok.id, agent_pb.JS_SUCCESS)
            await worker.report(bad.id, agent_pb.JS_FAILED, "ValueError: boom")
            ok = await server.wait_job_status(ok.id, agent_pb.JS_SUCCESS)
            bad = await server.wait_job_status(bad.id, agent_pb.JS_FAILED)
            assert ok.status_history == [
                agent_pb.JS_PENDING,
                agent_pb.JS_RUNNING,
                agent_pb.JS_SUCCESS,
            ]
            assert bad.job.state.error == "ValueError: boom" and bad.job.state.ended_at
            assert sw.running_job_ids == set()
            # The server forgets ended jobs: a later report is ignored.
            await worker.report(ok.id, agent_pb.JS_FAILED, "late")
            await trio.testing.wait_all_tasks_blocked()
            assert ok.status == agent_pb.JS_SUCCESS
            stats = server.statistics()
            assert stats.jobs_by_status == {"JS_SUCCESS": 1, "JS_FAILED": 1}
            assert stats.ignored_messages == 1
        nursery.cancel_scope.cancel()


async def test_delete_room_and_dispatch_send_terminations(server: DevServer) -> None:
    terminations: list[str] = []
    async with trio.open_nursery() as nursery:
        async with serving(server, nursery, terminations=terminations):
            await server.create_room(
                "r1", agents=[dispatch_pb.RoomAgentDispatch(agent_name="x", metadata="m")]
            )
            in_room = await server.wait_for_job(room="r1", status=agent_pb.JS_RUNNING)
            assert in_room.job.metadata == "m"
            dispatch = await server.create_dispatch("r2", "x")
            of_dispatch = await server.wait_for_job(room="r2", status=agent_pb.JS_RUNNING)

            await server.delete_room("r1")
            await trio.testing.wait_all_tasks_blocked()
            assert terminations == [in_room.id]
            assert in_room.job.state.reason == agent_pb.JSR_ROOM_CLOSED
            assert "r1" not in server.rooms
            await server.wait_job_status(in_room.id, agent_pb.JS_SUCCESS)

            deleted = await server.delete_dispatch(dispatch.id, "r2")
            assert deleted.state.deleted_at
            await trio.testing.wait_all_tasks_blocked()
            assert terminations == [in_room.id, of_dispatch.id]
            assert of_dispatch.job.state.reason == agent_pb.JSR_DISPATCH_DELETED
            await server.wait_job_status(of_dispatch.id, agent_pb.JS_SUCCESS)
            with pytest.raises(KeyError):
                await server.terminate_job(of_dispatch.id)  # already ended
        nursery.cancel_scope.cancel()


async def test_a_termination_records_gos_outcome_at_once(server: DevServer) -> None:
    async with raw_worker(server, agent_name="x") as worker:
        await server.create_room("r1", agents=[dispatch_pb.RoomAgentDispatch(agent_name="x")])
        job_id = (await worker.expect("availability")).availability.job.id
        await worker.send(
            availability=agent_pb.AvailabilityResponse(
                job_id=job_id, available=True, participant_identity="a"
            )
        )
        await worker.expect("assignment")
        await worker.report(job_id, agent_pb.JS_RUNNING)
        await server.wait_job_status(job_id, agent_pb.JS_RUNNING)
        await server.delete_room("r1")
        assert (await worker.expect("termination")).termination.job_id == job_id
        job = server.jobs[job_id]
        # Go's Worker.TerminateJob: an agent whose room closed "left the room".
        assert (job.status, job.job.state.error) == (
            agent_pb.JS_FAILED,
            "agent worker left the room",
        )
        assert job.job.state.ended_at
        ignored = server.statistics().ignored_messages
        await worker.report(job_id, agent_pb.JS_SUCCESS)  # too late: ignored, as in Go
        await server.wait_until(lambda: server.statistics().ignored_messages > ignored or None)
        assert job.status == agent_pb.JS_FAILED
        assert job.status_history[-1] == agent_pb.JS_FAILED


async def test_operator_termination(server: DevServer) -> None:
    async with raw_worker(server, agent_name="x") as worker, trio.open_nursery() as nursery:
        terminations: list[str] = []
        await nursery.start(
            lambda task_status: worker.serve(terminations=terminations, task_status=task_status)
        )
        await server.create_dispatch("r1", "x")
        job = await server.wait_for_job(room="r1", status=agent_pb.JS_RUNNING)
        state = await server.terminate_job(job.id)
        assert state.status == agent_pb.JS_SUCCESS  # Go records the end at once
        await server.wait_until(lambda: job.late_updates or None)
        assert terminations == [job.id]
        assert job.termination is not None
        assert server.statistics().terminations_sent == 1
        nursery.cancel_scope.cancel()


async def test_automatic_dispatch_to_unnamed_workers(server: DevServer) -> None:
    async with trio.open_nursery() as nursery:
        async with (
            serving(server, nursery, agent_name="") as auto,
            serving(server, nursery, agent_name="named"),
        ):
            await server.create_room("plain")
            job = await server.wait_for_job(room="plain", status=agent_pb.JS_RUNNING)
            assert (job.worker_id, job.agent_name, job.job.type) == (
                auto.worker_id,
                "",
                agent_pb.JT_ROOM,
            )
            # A room with explicit agents gets no automatic dispatch.
            await server.create_room(
                "explicit", agents=[dispatch_pb.RoomAgentDispatch(agent_name="named")]
            )
            job = await server.wait_for_job(room="explicit", status=agent_pb.JS_RUNNING)
            assert job.agent_name == "named"
            await trio.testing.wait_all_tasks_blocked()
            assert [j.agent_name for j in server.jobs.values() if j.room_name == "explicit"] == [
                "named"
            ]
        nursery.cancel_scope.cancel()


async def test_participant_and_publisher_jobs_from_hooks(server: DevServer) -> None:
    async with trio.open_nursery() as nursery:
        async with (
            serving(
                server, nursery, agent_name="", type=agent_pb.JT_PARTICIPANT
            ) as per_participant,
            serving(server, nursery, agent_name="", type=agent_pb.JT_PUBLISHER) as per_publisher,
        ):
            await server.create_room("r1")
            alice = models_pb.ParticipantInfo(sid="PA_alice", identity="alice")
            bot = models_pb.ParticipantInfo(identity="bot", kind=models_pb.ParticipantInfo.AGENT)
            server.on_participant_joined("r1", alice)
            server.on_participant_joined("r1", bot)  # agents dispatch nothing
            job = await server.wait_for_job(room="r1", status=agent_pb.JS_RUNNING)
            assert (job.job.type, job.job.participant.identity) == (
                agent_pb.JT_PARTICIPANT,
                "alice",
            )
            assert job.worker_id == per_participant.worker_id
            server.on_track_published("r1", alice)
            server.on_track_published("r1", alice)  # only the first publication counts
            await trio.testing.wait_all_tasks_blocked()
            jobs = [j for j in server.jobs.values() if j.room_name == "r1"]
            assert [(j.job.type, j.job.participant.identity) for j in jobs] == [
                (agent_pb.JT_PARTICIPANT, "alice"),
                (agent_pb.JT_PUBLISHER, "alice"),
            ]
            assert jobs[1].worker_id == per_publisher.worker_id
        nursery.cancel_scope.cancel()


async def test_empty_room_closes_after_empty_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    terminations: list[str] = []
    async with (
        open_devserver(api_key=API_KEY, api_secret=API_SECRET) as server,
        trio.open_nursery() as nursery,
    ):
        async with serving(server, nursery, terminations=terminations):
            room = await server.create_room(
                "r1", agents=[dispatch_pb.RoomAgentDispatch(agent_name="x")], empty_timeout=30
            )
            assert room.empty_timeout == 30 and room.departure_timeout == 20
            t0 = trio.current_time()
            job = await server.wait_for_job(room="r1", status=agent_pb.JS_FAILED)
            assert trio.current_time() - t0 == pytest.approx(30)
            assert job.job.state.error == "agent worker left the room"  # Go's record
            await server.wait_until(lambda: job.late_updates or None)
            assert terminations == [job.id] and "r1" not in server.rooms
            assert job.job.state.reason == agent_pb.JSR_ROOM_CLOSED
        nursery.cancel_scope.cancel()


# -- connection losses and bad input ------------------------------------------------------


async def test_worker_loss_keeps_running_jobs_and_retries_pending_offers(server: DevServer) -> None:
    async with trio.open_nursery() as nursery:
        async with serving(server, nursery) as worker:
            await server.create_dispatch("r1", "x")
            job = await server.wait_for_job(room="r1", status=agent_pb.JS_RUNNING)
        # Go keeps the job's last state; it has lost its worker and cannot be ended.
        assert not server.workers[worker.worker_id].connected
        assert job.status == agent_pb.JS_RUNNING
        with pytest.raises(KeyError):
            await server.terminate_job(job.id)
        # A worker that vanishes while asked is skipped for another one.
        async with (
            raw_worker(server, agent_name="x") as vanishing,
            serving(server, nursery) as willing,
        ):
            await willing.send(update_worker=agent_pb.UpdateWorkerStatus(status=agent_pb.WS_FULL))
            await trio.testing.wait_all_tasks_blocked()
            await server.create_dispatch("r2", "x")
            await vanishing.expect("availability")
            await willing.send(
                update_worker=agent_pb.UpdateWorkerStatus(status=agent_pb.WS_AVAILABLE)
            )
            await trio.testing.wait_all_tasks_blocked()
            await server.drop_worker(vanishing.worker_id)
            job2 = await server.wait_for_job(room="r2", status=agent_pb.JS_RUNNING)
            assert job2.attempted_worker_ids == [vanishing.worker_id, willing.worker_id]
        nursery.cancel_scope.cancel()


async def test_reports_from_another_connection_are_ignored_as_go_does(
    server: DevServer,
) -> None:
    # Go's Worker.UpdateJobStatus only takes its own runningJobs: after the worker
    # disconnected, no connection of the group (a "hijacker", or the same worker
    # re-registered) may set the job's status.
    async with trio.open_nursery() as nursery:
        async with serving(server, nursery) as first:
            await server.create_dispatch("r1", "x")
            job = await server.wait_for_job(room="r1", status=agent_pb.JS_RUNNING)
        async with raw_worker(server, agent_name="x") as second:
            assert second.worker_id != first.worker_id
            await second.report(job.id, agent_pb.JS_RUNNING)
            await second.report(job.id, agent_pb.JS_FAILED, "hijacked")
            await server.wait_until(lambda: len(job.ignored_updates) == 2 or None)
            assert job.id not in server.workers[second.worker_id].running_job_ids
            assert job.status == agent_pb.JS_RUNNING  # Go keeps the last state
            assert job.job.state.error == ""
            assert job.worker_id == first.worker_id  # not re-attached
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x00\xffgarbage", 1007),
        ("not json", 1007),
        ('{"no_such_field": 1}', 1008),  # unknown fields are ignored (as Go): empty oneof
        (agent_pb.WorkerMessage().SerializeToString(), 1008),  # empty oneof: unknown signal
        (
            agent_pb.WorkerMessage(
                register=agent_pb.RegisterWorkerRequest(type=agent_pb.JT_ROOM)
            ).SerializeToString(),
            1008,  # registering twice
        ),
    ],
    ids=["binary-garbage", "text-garbage", "unknown-json-field", "empty", "second-register"],
)
async def test_bad_frames_close_that_worker_only(
    server: DevServer, frame: bytes | str, code: int
) -> None:
    async with trio.open_nursery() as nursery:
        async with serving(server, nursery) as good, raw_worker(server, agent_name="x") as bad:
            await bad.ws.send_message(frame)
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await bad.ws.get_message()
            assert info.value.reason.code == code
            assert server.workers[bad.worker_id].close_code == code
            await server.create_dispatch("r1", "x")
            job = await server.wait_for_job(room="r1", status=agent_pb.JS_RUNNING)
            assert job.worker_id == good.worker_id
            assert server.statistics().protocol_violations == 1
        nursery.cancel_scope.cancel()


async def test_message_before_register_is_refused(server: DevServer) -> None:
    async with connect(server) as ws:
        worker = RawWorker(ws, WireFormat.PROTOBUF)
        await worker.send(update_worker=agent_pb.UpdateWorkerStatus(load=0.1))
        with pytest.raises(trio_websocket.ConnectionClosed) as info:
            await ws.get_message()
        assert info.value.reason.code == 1008
        assert "unimplemented worker signal" in (info.value.reason.reason or "")


async def test_oversized_frame_closes_with_1009() -> None:
    async with (
        open_devserver(api_key=API_KEY, api_secret=API_SECRET, max_frame_size=4096) as server,
        raw_worker(server, agent_name="x") as worker,
    ):
        await worker.ws.send_message(b"\x00" * 5000)
        with pytest.raises(trio_websocket.ConnectionClosed) as info:
            await worker.ws.get_message()
        assert info.value.reason.code == 1009


async def test_drop_worker_abruptly_or_with_a_code(server: DevServer) -> None:
    for code in (None, 4000):
        async with raw_worker(server, agent_name="x") as worker:
            await server.drop_worker(worker.worker_id, code)
            sw = server.workers[worker.worker_id]
            assert not sw.connected
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await worker.ws.get_message()
            assert info.value.reason.code == (1006 if code is None else code)
            assert sw.close_code == (1006 if code is None else code)


async def test_send_raw_and_send_message_reach_the_worker(server: DevServer) -> None:
    async with raw_worker(server, agent_name="x") as worker:
        await server.send_raw(worker.worker_id, "{not json")
        assert await worker.ws.get_message() == "{not json"
        await server.send_message(
            worker.worker_id,
            agent_pb.ServerMessage(termination=agent_pb.JobTermination(job_id="AJ_x")),
        )
        assert (await worker.expect("termination")).termination.job_id == "AJ_x"


async def test_withheld_assignment_still_counts_as_running(server: DevServer) -> None:
    async with raw_worker(server, agent_name="x") as worker:
        server.faults.withhold_assignment = True
        await server.create_dispatch("r1", "x")
        job_id = (await worker.expect("availability")).availability.job.id
        await worker.send(
            availability=agent_pb.AvailabilityResponse(
                job_id=job_id, available=True, participant_identity="a"
            )
        )
        await trio.testing.wait_all_tasks_blocked()
        assert server.jobs[job_id].status == agent_pb.JS_RUNNING
        await worker.send(ping=agent_pb.WorkerPing(timestamp=1))
        await worker.expect("pong")  # and no assignment before it


async def test_simulated_job_is_offered_to_the_asking_worker(server: DevServer) -> None:
    async with raw_worker(server, agent_name="x") as worker:
        room = models_pb.Room(name="sim", sid="RM_sim")
        await worker.send(
            simulate_job=agent_pb.SimulateJobRequest(type=agent_pb.JT_ROOM, room=room)
        )
        job = (await worker.expect("availability")).availability.job
        assert (job.room.name, job.agent_name, job.type) == ("sim", "x", agent_pb.JT_ROOM)
        assert server.jobs[job.id].simulated


# -- lifecycle ----------------------------------------------------------------------------


def _all_tasks() -> set[trio.lowlevel.Task]:
    tasks: set[trio.lowlevel.Task] = set()
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task is None:
            continue
        tasks.add(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return tasks


async def test_leaving_the_block_closes_everything() -> None:
    tasks, threads = _all_tasks(), threading.active_count()
    async with trio.open_nursery() as client_nursery:
        async with open_devserver(api_key=API_KEY, api_secret=API_SECRET) as server:
            url = server.url
            ws = await trio_websocket.connect_websocket_url(
                client_nursery,
                server.agent_url,
                extra_headers=[(b"authorization", f"Bearer {agent_token()}".encode())],
            )
            worker = RawWorker(ws, WireFormat.PROTOBUF)
            await worker.register(agent_name="x")
            await server.create_dispatch("r1", "x")
            await worker.expect("availability")  # a job request task is waiting
        # The worker was told the server is going away.
        with pytest.raises(trio_websocket.ConnectionClosed) as info:
            await ws.get_message()
        assert info.value.reason.code == 1001
        await ws.aclose()
    assert _all_tasks() == tasks
    assert threading.active_count() == threads
    host, port = url.removeprefix("http://").split(":")
    with pytest.raises(OSError):
        await trio.open_tcp_stream(host, int(port))


async def test_body_exceptions_are_not_wrapped() -> None:
    with pytest.raises(ValueError, match="mine"):
        async with open_devserver(api_key=API_KEY, api_secret=API_SECRET):
            raise ValueError("mine")


async def test_serve_devserver_hands_back_a_running_server() -> None:
    async with trio.open_nursery() as nursery:
        server: DevServer = await nursery.start(
            lambda task_status: serve_devserver(
                api_key=API_KEY, api_secret=API_SECRET, task_status=task_status
            )
        )
        async with raw_worker(server, agent_name="x") as worker:
            assert server.workers[worker.worker_id].connected
        nursery.cancel_scope.cancel()
    with pytest.raises(trio.ClosedResourceError):
        await server.create_dispatch("r1", "x")
