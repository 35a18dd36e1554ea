"""Twirp over ASGI: the transport of the Server API (``/twirp/livekit.<Service>/<Method>``).

What the Go server's generated Twirp handlers (twirp v8) do, in their order:

1. the token middleware runs first (``service/auth.go``): a malformed header, an
   unknown key or a bad signature ends the request with 401;
2. a service this server does not have is not a Twirp route (plain 404, Go's mux);
3. anything but ``POST`` -> ``bad_route``; an unknown method -> ``bad_route``;
4. ``Content-Type`` ``application/protobuf`` or ``application/json`` (protojson,
   unknown fields ignored), anything else -> ``bad_route``; an undecodable body
   -> ``malformed``;
5. the method itself checks the grants and answers in the request's content type.

Errors are Twirp's JSON body ``{"code": ..., "msg": ..., "meta": {...}}`` with the
HTTP status of the code.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

import attrs
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from ._auth import AuthFailure, Grants, authenticate
from ._transport import ASGIReceive, ASGISend, Scope

__all__ = ["TWIRP_PREFIX", "Method", "TwirpError", "TwirpServer"]

logger = logging.getLogger("trio_lkagent.devserver")

TWIRP_PREFIX = "/twirp/"

#: Twirp error code -> HTTP status (twirp's ``ServerHTTPStatusFromErrorCode``).
HTTP_STATUS = {
    "canceled": 408,
    "unknown": 500,
    "invalid_argument": 400,
    "malformed": 400,
    "deadline_exceeded": 408,
    "not_found": 404,
    "bad_route": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "unauthenticated": 401,
    "resource_exhausted": 429,
    "failed_precondition": 412,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "dataloss": 500,
}

#: Largest request body read (bigger bodies are ``malformed``).
MAX_BODY_SIZE = 8 * 1024 * 1024

CONTENT_PROTOBUF = "application/protobuf"
CONTENT_JSON = "application/json"


class TwirpError(Exception):
    """A Twirp error answer: *code* (``not_found``...), *msg* and optional *meta*."""

    def __init__(self, code: str, msg: str, meta: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg
        self.meta = dict(meta or {})

    @property
    def status(self) -> int:
        """The HTTP status Twirp answers this code with."""
        return HTTP_STATUS.get(self.code, 500)

    def body(self) -> bytes:
        """The JSON body."""
        data: dict[str, Any] = {"code": self.code, "msg": self.msg}
        if self.meta:
            data["meta"] = self.meta
        return json.dumps(data).encode()


Handler = Callable[[Any, Grants | None], Awaitable[Message]]


@attrs.frozen
class Method:
    """One RPC: its request message class and the handler answering it."""

    request: type[Message]
    handler: Handler


def _bad_route(msg: str, method: str, path: str) -> TwirpError:
    return TwirpError("bad_route", msg, {"twirp_invalid_route": f"{method} {path}"})


async def _read_body(receive: ASGIReceive) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_SIZE:
            raise TwirpError("malformed", "the request body is too large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


async def _respond(send: ASGISend, status: int, body: bytes, content_type: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type.encode()),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class TwirpServer:
    """Serves Twirp services under ``/twirp/<package>.<Service>/<Method>``.

    Args:
        keys: API key -> secret accepted in tokens.
        services: ``"livekit.RoomService"`` -> method name -> :class:`Method`.
    """

    def __init__(
        self, *, keys: Mapping[str, str], services: Mapping[str, Mapping[str, Method]]
    ) -> None:
        self._keys = keys
        self._services = services

    def handles(self, path: str) -> bool:
        """Whether *path* belongs to one of the services (else it is no Twirp route)."""
        if not path.startswith(TWIRP_PREFIX):
            return False
        service = path[len(TWIRP_PREFIX) :].split("/", 1)[0]
        return service in self._services

    async def serve(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        """Answer one ASGI ``http`` request for a path :meth:`handles`."""
        try:
            body, content_type = await self._call(scope, receive)
        except TwirpError as error:
            if error.status >= 500:
                logger.warning("twirp %s: %s", scope.get("path"), error)
            await _respond(send, error.status, error.body(), CONTENT_JSON)
            return
        await _respond(send, 200, body, content_type)

    async def _call(self, scope: Scope, receive: ASGIReceive) -> tuple[bytes, str]:
        path: str = scope.get("path", "")
        http_method: str = scope.get("method", "")
        query = parse_qs(bytes(scope.get("query_string", b"")).decode("latin-1"))
        try:
            grants = authenticate(
                _header(scope, b"authorization"),
                query.get("access_token", [None])[0],
                self._keys,
            )
        except AuthFailure as failure:
            raise TwirpError("unauthenticated", failure.reason) from None
        service, _, name = path[len(TWIRP_PREFIX) :].partition("/")
        if http_method != "POST":
            raise _bad_route(
                f'unsupported method "{http_method}" (only POST is allowed)', http_method, path
            )
        method = self._services[service].get(name)
        if method is None:
            raise _bad_route(f'no handler for path "{path}"', http_method, path)
        raw_type = _header(scope, b"content-type") or ""
        content_type = raw_type.split(";", 1)[0].strip().lower()
        if content_type not in (CONTENT_PROTOBUF, CONTENT_JSON):
            raise _bad_route(f'unexpected Content-Type: "{raw_type}"', http_method, path)
        request = method.request()
        data = await _read_body(receive)
        if content_type == CONTENT_PROTOBUF:
            try:
                request.ParseFromString(data)
            except (DecodeError, RuntimeWarning, ValueError):
                raise TwirpError("malformed", "the protobuf request could not be decoded") from None
        else:
            try:
                json_format.Parse(data or b"{}", request, ignore_unknown_fields=True)
            except (json_format.ParseError, ValueError, TypeError):
                raise TwirpError("malformed", "the json request could not be decoded") from None
        response = await method.handler(request, grants)
        if content_type == CONTENT_PROTOBUF:
            return response.SerializeToString(), CONTENT_PROTOBUF
        return json_format.MessageToJson(response).encode(), CONTENT_JSON
