"""The dev server's HTTP/WebSocket front: one ASGI application, routed by path.

Routes today:

- ``GET /`` -> ``200 OK`` (the Go server's health answer);
- WebSocket ``/agent`` -> the agent service (token with the ``agent`` grant);
- ``POST /twirp/livekit.RoomService/*``, ``/twirp/livekit.AgentDispatchService/*``
  -> the Server API (``_twirp.py``, ``_roomservice.py``);
- WebSocket ``/rtc/v1`` -> room signalling, one peer connection per participant;
  ``/rtc`` -> the same with two (publisher and subscriber), the path clients
  fall back to (``_signal.py``; token with ``roomJoin``);
- anything else -> 404.

The order of checks follows Go: the token middleware (bad header or token -> 401),
then the endpoint (``/agent`` without the ``agent`` grant -> 401).
"""

from __future__ import annotations

import logging

import trio

from ._agent_service import AgentService
from ._auth import ERR_PERMISSION_DENIED, AuthFailure, Grants, authenticate
from ._signal import RTC_V0_PATH, RTC_V1_PATH, RtcService
from ._state import Counters, Faults
from ._transport import ASGIReceive, ASGISend, Scope, WebSocketTransport, http_response
from ._twirp import TwirpServer

__all__ = ["DevServerApp"]

logger = logging.getLogger("trio_lkagent.devserver")

AGENT_PATH = "/agent"


def _route(path: str) -> str:
    # Go's RemoveDoubleSlashes, and tolerate a trailing slash.
    while path.startswith("//"):
        path = path[1:]
    return path.rstrip("/") or "/"


class DevServerApp:
    """The ASGI application hypercorn serves.

    Args:
        keys: API key -> secret accepted in tokens.
        agents: Serves ``/agent``.
        faults: Consulted on every WebSocket upgrade.
        counters: Upgrade statistics.
        twirp: Serves the Server API routes (None: they are 404).
        rtc: Serves ``/rtc/v1`` (None: 404).
    """

    def __init__(
        self,
        *,
        keys: dict[str, str],
        agents: AgentService,
        faults: Faults,
        counters: Counters,
        twirp: TwirpServer | None = None,
        rtc: RtcService | None = None,
    ) -> None:
        self._keys = keys
        self._rtc = rtc
        self._twirp = twirp
        self._agents = agents
        self._faults = faults
        self._counters = counters
        #: Set when the server shuts down: new requests get 503.
        self.closing = False
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()

    async def __call__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        """Handle one ASGI connection (``lifespan``, ``http`` or ``websocket``)."""
        kind = scope.get("type")
        if kind == "lifespan":
            await self._lifespan(receive, send)
            return
        self._in_flight += 1
        self._idle = trio.Event() if self._in_flight == 1 else self._idle
        try:
            if kind == "websocket":
                await self._websocket(WebSocketTransport(scope, receive, send))
            elif kind == "http":
                await self._http(scope, receive, send)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Wait until no request or WebSocket is being handled."""
        await self._idle.wait()

    async def _lifespan(self, receive: ASGIReceive, send: ASGISend) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        if self.closing:
            await http_response(send, 503, "server shutting down")
        elif self._twirp is not None and self._twirp.handles(scope.get("path", "")):
            await self._twirp.serve(scope, receive, send)
        elif _route(scope.get("path", "")) == "/" and scope.get("method") in ("GET", "HEAD"):
            await http_response(send, 200, "OK")
        else:
            await http_response(send, 404, "404 page not found\n")

    async def _reject(self, transport: WebSocketTransport, status: int, reason: str) -> None:
        self._counters.upgrades_rejected += 1
        logger.info(
            "refused WebSocket upgrade of %s from %s: %d %s",
            transport.path,
            transport.client,
            status,
            reason,
        )
        await transport.reject(status, reason)

    async def _websocket(self, transport: WebSocketTransport) -> None:
        if not await transport.wait_connect():
            return
        if self.closing:
            await self._reject(transport, 503, "server shutting down")
            return
        route = _route(transport.path)
        rtc_route = route in (RTC_V1_PATH, RTC_V0_PATH) and self._rtc is not None
        if route != AGENT_PATH and not rtc_route:
            await self._reject(transport, 404, "404 page not found\n")
            return
        status = self._faults.reject_upgrade_status
        if status is not None:
            await self._reject(transport, status, self._faults.reject_upgrade_body)
            return
        try:
            grants = authenticate(
                transport.header("authorization"), transport.query("access_token"), self._keys
            )
        except AuthFailure as failure:
            await self._reject(transport, failure.status, failure.reason)
            return
        if rtc_route and self._rtc is not None:
            await self._serve_rtc(transport, grants, self._rtc, dual=route == RTC_V0_PATH)
            return
        if grants is None or not grants.can_register_agent:
            await self._reject(transport, 401, ERR_PERMISSION_DENIED)
            return
        await transport.accept()
        self._counters.upgrades_accepted += 1
        try:
            await self._agents.serve_connection(transport, grants)
        finally:
            await transport.release()

    async def _serve_rtc(
        self,
        transport: WebSocketTransport,
        grants: Grants | None,
        rtc: RtcService,
        *,
        dual: bool,
    ) -> None:
        try:
            join = rtc.check_join(transport, grants, dual=dual)
        except AuthFailure as failure:
            await self._reject(transport, failure.status, failure.reason)
            return
        assert grants is not None
        await transport.accept()
        self._counters.upgrades_accepted += 1
        try:
            await rtc.serve_connection(transport, grants, join, dual=dual)
        finally:
            await transport.release()
