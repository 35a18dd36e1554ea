"""The dev server against validly signed tokens with malformed claims, and corrupt
join requests (defect 7): 401/400 with Go's texts, never a 500 or a traceback."""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

import hypothesis.strategies as st
import jwt
import pytest
import trio
from hypothesis import given, settings
from livekit.protocol import rtc as rtc_pb

from trio_lkagent.devserver import DevServer
from trio_lkagent.devserver._auth import AuthFailure, authenticate

from ..conftest import API_KEY, API_SECRET


def _token(**claims: Any) -> str:
    now = int(time.time())
    payload: dict[str, Any] = {"iss": API_KEY, "sub": "fuzz", "nbf": now - 10, "exp": now + 600}
    payload.update(claims)
    return jwt.encode(payload, API_SECRET, algorithm="HS256")


async def _http(
    server: DevServer, method: str, path: str, headers: dict[str, str], body: bytes = b""
) -> tuple[int, bytes]:
    host, port = server.url.removeprefix("http://").split(":")
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    with trio.fail_after(10):
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(request)
            data = b""
            while b"\r\n\r\n" not in data or not _complete(data):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


def _complete(data: bytes) -> bool:
    head, _, rest = data.partition(b"\r\n\r\n")
    for line in head.decode("latin-1").split("\r\n"):
        if line.lower().startswith("content-length:"):
            return len(rest) >= int(line.split(":")[1])
    return head.startswith(b"HTTP/1.1 101")


_UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": base64.b64encode(b"0123456789abcdef").decode(),
    "Sec-WebSocket-Version": "13",
}

MALFORMED: list[dict[str, Any]] = [
    {"video": ["agent"]},
    {"video": "agent"},
    {"video": 7},
    {"video": {"agent": "false"}},
    {"video": {"roomCreate": "false", "roomList": "true"}},
    {"video": {"roomJoin": True, "room": 5}},
    {"video": {"agent": True}, "kind": 3},
    {"video": {"agent": 1}},
    {"video": {"canPublishSources": "camera"}},
    {"video": {"agent": True}, "attributes": {"a": 1}},
    {"video": {"agent": True}, "name": ["x"]},
]


@pytest.mark.parametrize("claims", MALFORMED)
async def test_malformed_claims_are_401_everywhere(
    server: DevServer, claims: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    auth = {"Authorization": f"Bearer {_token(**claims)}"}
    status, body = await _http(
        server,
        "POST",
        "/twirp/livekit.RoomService/ListRooms",
        {**auth, "Content-Type": "application/json"},
        b"{}",
    )
    assert status == 401, body
    assert b"json: cannot unmarshal" in body
    status, body = await _http(server, "GET", "/agent?protocol=1", {**auth, **_UPGRADE})
    assert status == 401, body
    assert b"invalid authorization token: json: cannot unmarshal" in body
    join = base64.urlsafe_b64encode(rtc_pb.WrappedJoinRequest().SerializeToString()).decode()
    status, body = await _http(server, "GET", f"/rtc/v1?join_request={join}", {**auth, **_UPGRADE})
    assert status == 401, body
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_null_video_is_no_grant(server: DevServer) -> None:
    auth = {"Authorization": f"Bearer {_token(video=None)}"}
    status, body = await _http(server, "GET", "/agent?protocol=1", {**auth, **_UPGRADE})
    assert status == 401 and b"no permissions to access the room" in body


async def test_corrupt_gzip_join_request_is_400(
    server: DevServer, caplog: pytest.LogCaptureFixture
) -> None:
    auth = {"Authorization": f"Bearer {_token(video={'roomJoin': True, 'room': 'r1'})}"}
    for raw in (b"\x1f\x8b\x08\x00garbage-not-deflate", b"\x1f\x8b"):
        wrapped = rtc_pb.WrappedJoinRequest(
            compression=rtc_pb.WrappedJoinRequest.GZIP, join_request=raw
        )
        join = base64.urlsafe_b64encode(wrapped.SerializeToString()).decode()
        status, body = await _http(
            server, "GET", f"/rtc/v1?join_request={join}", {**auth, **_UPGRADE}
        )
        assert status == 400, body
        assert b"invalid join_request" in body
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


# -- fuzzing the claims (pure: no server, many examples) --------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
_video_keys = st.sampled_from(["agent", "roomCreate", "roomJoin", "room", "canPublishSources", "x"])


@settings(max_examples=300, deadline=None)
@given(
    video=st.none() | _json | st.dictionaries(_video_keys, _json, max_size=4),
    kind=st.none() | _json,
    attributes=st.none() | _json,
)
def test_fuzzed_claims_are_granted_only_when_well_typed(
    video: Any, kind: Any, attributes: Any
) -> None:
    token = _token(video=video, kind=kind, attributes=attributes)
    try:
        grants = authenticate(f"Bearer {token}", None, {API_KEY: API_SECRET})
    except AuthFailure as failure:
        assert failure.status == 401
        assert failure.reason.startswith("invalid authorization token")
        return
    assert grants is not None
    if grants.can_register_agent:
        # Granted only by a real JSON true, never by "false", 1 or a list.
        assert isinstance(video, dict) and video.get("agent") is True
