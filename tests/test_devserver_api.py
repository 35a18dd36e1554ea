"""The dev server's Server API (Twirp), driven by the official ``livekit-api`` client.

``livekit-api`` runs on asyncio (aiohttp): every call goes through the project's
asyncio bridge, with the ``LiveKitAPI`` created and closed on the bridge's loop.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import aiohttp
import pytest
import trio
from livekit import api as lkapi
from livekit.protocol import agent as agent_pb
from livekit.protocol import agent_dispatch as dispatch_pb
from livekit.protocol import models as models_pb
from livekit.protocol import room as room_pb

from trio_lkagent import JobContext, Worker
from trio_lkagent._bridge import open_bridge
from trio_lkagent.devserver import DevServer

from .conftest import call_api, worker_options

T = TypeVar("T")

ApiCall = Callable[[lkapi.LiveKitAPI], Awaitable[T]]


async def raw_post(
    server: DevServer,
    path: str,
    body: bytes,
    *,
    content_type: str = "application/protobuf",
    method: str = "POST",
    grants: lkapi.VideoGrants | None = None,
) -> tuple[int, str, bytes]:
    """One plain HTTP request with aiohttp; returns (status, content type, body)."""
    token = (
        lkapi.AccessToken(server.api_key, server.api_secret)
        .with_grants(grants or lkapi.VideoGrants(room_list=True, room_create=True))
        .to_jwt()
    )

    async def on_loop() -> tuple[int, str, bytes]:
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                method,
                server.url + path,
                data=body,
                headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
            ) as resp,
        ):
            return resp.status, resp.headers.get("Content-Type", ""), await resp.read()

    async with open_bridge() as bridge:
        with trio.fail_after(5):
            return await bridge.run(on_loop)


def admin_token(server: DevServer, room: str) -> str:
    grants = lkapi.VideoGrants(room_admin=True, room=room)
    return lkapi.AccessToken(server.api_key, server.api_secret).with_grants(grants).to_jwt()


@asynccontextmanager
async def running_worker(
    server: DevServer, entrypoint: Callable[[JobContext], Awaitable[None]]
) -> AsyncIterator[Worker]:
    worker = Worker(entrypoint, worker_options(server))
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        yield worker
        nursery.cancel_scope.cancel()


class Watched:
    """An entrypoint that records its start and its cancellation."""

    def __init__(self) -> None:
        self.started = trio.Event()
        self.cancelled = trio.Event()

    async def __call__(self, ctx: JobContext) -> None:
        self.started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.cancelled.set()
            raise


# -- rooms ----------------------------------------------------------------------------


async def test_create_list_delete_rooms(server: DevServer) -> None:
    async def scenario(api: lkapi.LiveKitAPI) -> tuple[Any, ...]:
        created = await api.room.create_room(
            room_pb.CreateRoomRequest(name="r1", metadata="m", empty_timeout=60)
        )
        await api.room.create_room(room_pb.CreateRoomRequest(name="r2"))
        listed = await api.room.list_rooms(room_pb.ListRoomsRequest())
        only = await api.room.list_rooms(room_pb.ListRoomsRequest(names=["r2"]))
        await api.room.delete_room(room_pb.DeleteRoomRequest(room="r1"))
        after = await api.room.list_rooms(room_pb.ListRoomsRequest())
        return created, listed, only, after

    created, listed, only, after = await call_api(server, scenario)
    assert created.name == "r1" and created.sid.startswith("RM_")
    assert (created.metadata, created.empty_timeout) == ("m", 60)
    assert sorted(r.name for r in listed.rooms) == ["r1", "r2"]
    assert [r.name for r in only.rooms] == ["r2"]
    assert [r.name for r in after.rooms] == ["r2"]
    assert set(server.rooms) == {"r2"}


async def test_room_metadata_and_unknown_things(server: DevServer) -> None:
    await server.create_room("r1")
    token = admin_token(server, "r1")

    async def scenario(api: lkapi.LiveKitAPI) -> tuple[Any, ...]:
        room = await api.room.update_room_metadata(
            room_pb.UpdateRoomMetadataRequest(room="r1", metadata="new")
        )
        participants = await api.room.list_participants(room_pb.ListParticipantsRequest(room="r1"))
        await api.room.send_data(room_pb.SendDataRequest(room="r1", data=b"x"))
        with pytest.raises(lkapi.TwirpError) as missing:
            await api.room.get_participant(room_pb.RoomParticipantIdentity(room="r1", identity="u"))
        return room, participants, missing.value

    room, participants, missing = await call_api(server, scenario, token=token)
    assert room.metadata == "new" and server.rooms["r1"].room.metadata == "new"
    assert list(participants.participants) == []
    assert (missing.code, missing.status) == ("not_found", 404)

    async def delete_unknown(api: lkapi.LiveKitAPI) -> None:
        await api.room.delete_room(room_pb.DeleteRoomRequest(room="nope"))

    with pytest.raises(lkapi.TwirpError) as err:
        await call_api(server, delete_unknown)
    assert err.value.code == "not_found"


async def test_participant_methods_on_hooked_participant(server: DevServer) -> None:
    await server.create_room("r1")
    info = models_pb.ParticipantInfo(identity="alice", sid="PA_1", name="Alice")
    info.tracks.add(sid="TR_1", muted=False)
    server.on_participant_joined("r1", info)

    async def scenario(api: lkapi.LiveKitAPI) -> tuple[Any, ...]:
        got = await api.room.get_participant(
            room_pb.RoomParticipantIdentity(room="r1", identity="alice")
        )
        muted = await api.room.mute_published_track(
            room_pb.MuteRoomTrackRequest(room="r1", identity="alice", track_sid="TR_1", muted=True)
        )
        updated = await api.room.update_participant(
            room_pb.UpdateParticipantRequest(room="r1", identity="alice", metadata="meta")
        )
        await api.room.remove_participant(
            room_pb.RoomParticipantIdentity(room="r1", identity="alice")
        )
        return got, muted, updated

    got, muted, updated = await call_api(server, scenario, token=admin_token(server, "r1"))
    assert got.name == "Alice"
    assert muted.track.sid == "TR_1" and muted.track.muted
    assert updated.metadata == "meta"
    assert "alice" not in server.rooms["r1"].participants


# -- agents ---------------------------------------------------------------------------


async def test_create_room_with_agents_dispatches_and_delete_room_ends_job(
    server: DevServer,
) -> None:
    entry = Watched()
    async with running_worker(server, entry):
        await server.wait_for_worker(agent_name="test-agent")

        async def create(api: lkapi.LiveKitAPI) -> models_pb.Room:
            return await api.room.create_room(
                room_pb.CreateRoomRequest(
                    name="r1",
                    agents=[dispatch_pb.RoomAgentDispatch(agent_name="test-agent", metadata="md")],
                )
            )

        await call_api(server, create)
        job = await server.wait_for_job(room="r1", status=agent_pb.JS_RUNNING)
        assert job.job.metadata == "md"
        await entry.started.wait()

        async def delete(api: lkapi.LiveKitAPI) -> None:
            await api.room.delete_room(room_pb.DeleteRoomRequest(room="r1"))

        await call_api(server, delete)
        await server.wait_job_status(job.id, agent_pb.JS_SUCCESS)
        await entry.cancelled.wait()


async def test_create_list_delete_dispatch(server: DevServer) -> None:
    entry = Watched()
    async with running_worker(server, entry):
        await server.wait_for_worker(agent_name="test-agent")

        async def create(api: lkapi.LiveKitAPI) -> dispatch_pb.AgentDispatch:
            return await api.agent_dispatch.create_dispatch(
                dispatch_pb.CreateAgentDispatchRequest(
                    agent_name="test-agent", room="r1", metadata="md"
                )
            )

        token = admin_token(server, "r1")
        dispatch = await call_api(server, create, token=token)
        assert dispatch.id.startswith("AD_") and dispatch.room == "r1"
        job = await server.wait_for_job(dispatch_id=dispatch.id, status=agent_pb.JS_RUNNING)
        await entry.started.wait()

        async def listing(api: lkapi.LiveKitAPI) -> tuple[Any, ...]:
            every = await api.agent_dispatch.list_dispatch("r1")
            one = await api.agent_dispatch.get_dispatch(dispatch.id, "r1")
            return every, one

        every, one = await call_api(server, listing, token=token)
        assert dispatch.id in [d.id for d in every]
        assert one is not None and [j.id for j in one.state.jobs] == [job.id]

        async def delete(api: lkapi.LiveKitAPI) -> tuple[Any, ...]:
            deleted = await api.agent_dispatch.delete_dispatch(dispatch.id, "r1")
            remaining = await api.agent_dispatch.list_dispatch("r1")
            return deleted, remaining

        deleted, remaining = await call_api(server, delete, token=token)
        assert deleted.id == dispatch.id
        assert dispatch.id not in [d.id for d in remaining]
        await entry.cancelled.wait()
        assert (await server.wait_job_status(job.id, agent_pb.JS_SUCCESS)).status == (
            agent_pb.JS_SUCCESS
        )

        async def delete_again(api: lkapi.LiveKitAPI) -> None:
            await api.agent_dispatch.delete_dispatch(dispatch.id, "r1")

        with pytest.raises(lkapi.TwirpError) as err:
            await call_api(server, delete_again, token=token)
        assert err.value.code == "not_found"


# -- auth -----------------------------------------------------------------------------


async def _list_rooms(api: lkapi.LiveKitAPI) -> room_pb.ListRoomsResponse:
    return await api.room.list_rooms(room_pb.ListRoomsRequest())


async def test_bad_token_is_unauthenticated(server: DevServer) -> None:
    async def on_loop() -> None:
        client = lkapi.LiveKitAPI(server.url, server.api_key, "not-the-secret-0123456789abcdef0123")
        try:
            await _list_rooms(client)
        finally:
            await client.aclose()

    with pytest.raises(lkapi.TwirpError) as err:
        async with open_bridge() as bridge:
            await bridge.run(on_loop)
    assert (err.value.code, err.value.status) == ("unauthenticated", 401)
    assert "invalid authorization token" in err.value.message


@pytest.mark.parametrize(
    ("grants", "call"),
    [
        # ListRooms needs roomList.
        (lkapi.VideoGrants(room_join=True, room="r1"), _list_rooms),
        # CreateRoom needs roomCreate (roomAdmin is not enough).
        (
            lkapi.VideoGrants(room_admin=True, room="r1"),
            lambda api: api.room.create_room(room_pb.CreateRoomRequest(name="r1")),
        ),
        # Dispatch methods need roomAdmin on that very room.
        (
            lkapi.VideoGrants(room_admin=True, room="other"),
            lambda api: api.agent_dispatch.list_dispatch("r1"),
        ),
        # Participant methods too.
        (
            lkapi.VideoGrants(room_create=True, room_list=True),
            lambda api: api.room.list_participants(room_pb.ListParticipantsRequest(room="r1")),
        ),
    ],
)
async def test_missing_grant_is_denied_as_go_does(
    server: DevServer, grants: lkapi.VideoGrants, call: ApiCall[Any]
) -> None:
    await server.create_room("r1")
    token = (
        lkapi.AccessToken(server.api_key, server.api_secret)
        .with_identity("someone")
        .with_grants(grants)
        .to_jwt()
    )
    with pytest.raises(lkapi.TwirpError) as err:
        await call_api(server, call, token=token)
    # Go's twirpAuthError: Unauthenticated "permissions denied" (not permission_denied).
    assert (err.value.code, err.value.status) == ("unauthenticated", 401)
    assert err.value.message == "permissions denied"


# -- Twirp over plain HTTP ------------------------------------------------------------

ROOMS = "/twirp/livekit.RoomService"


async def test_json_requests_get_json_answers(server: DevServer) -> None:
    status, ctype, body = await raw_post(
        server,
        f"{ROOMS}/CreateRoom",
        b'{"name": "j1", "unknownField": 1}',
        content_type="application/json; charset=utf-8",
    )
    assert (status, ctype) == (200, "application/json")
    assert json.loads(body)["name"] == "j1"
    status, _, body = await raw_post(
        server, f"{ROOMS}/ListRooms", b"{}", content_type="application/json"
    )
    assert status == 200 and [r["name"] for r in json.loads(body)["rooms"]] == ["j1"]


@pytest.mark.parametrize(
    ("path", "body", "content_type", "method", "status", "code"),
    [
        (f"{ROOMS}/ListRooms", b"\xff\xff\xff", "application/protobuf", "POST", 400, "malformed"),
        (f"{ROOMS}/ListRooms", b"{not json", "application/json", "POST", 400, "malformed"),
        (f"{ROOMS}/NoSuchMethod", b"", "application/protobuf", "POST", 404, "bad_route"),
        (f"{ROOMS}/ListRooms", b"", "application/protobuf", "GET", 404, "bad_route"),
        (f"{ROOMS}/ListRooms", b"", "text/plain", "POST", 404, "bad_route"),
    ],
)
async def test_twirp_errors(
    server: DevServer,
    path: str,
    body: bytes,
    content_type: str,
    method: str,
    status: int,
    code: str,
) -> None:
    got_status, ctype, got_body = await raw_post(
        server, path, body, content_type=content_type, method=method
    )
    assert (got_status, ctype) == (status, "application/json")
    assert json.loads(got_body)["code"] == code
