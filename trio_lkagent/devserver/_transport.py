"""The seam between the ASGI server (hypercorn) and the dev server's WebSocket handlers.

Handlers see :class:`WebSocketTransport`: accept or reject an upgrade, receive and
send frames, close with a code, or drop the TCP connection without a close frame.

Two things ASGI cannot express are reached through hypercorn's objects, here and
nowhere else, and degrade gracefully if hypercorn changes:

- the close code the *peer* sent (hypercorn reports every client-initiated close
  as 1006 to the application): the wsproto connection's events are observed;
- an abrupt close (no close frame), as the Go server does on a read error or a
  register timeout: the TCP socket is shut down.

ASGI ``send`` is hypercorn's ``WSStream.app_send``; ``WSStream.send`` is
``H11Protocol.stream_send``; ``H11Protocol.send`` is ``TCPServer.protocol_send``,
whose ``TCPServer.stream`` is the connection's ``trio.SocketStream``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import trio

__all__ = [
    "ASGIReceive",
    "ASGISend",
    "Scope",
    "WebSocketTransport",
    "http_response",
]

logger = logging.getLogger("trio_lkagent.devserver")

Scope = dict[str, Any]
ASGIReceive = Callable[[], Awaitable[dict[str, Any]]]
ASGISend = Callable[[dict[str, Any]], Awaitable[None]]

#: Close code recorded when the connection ended without a close frame.
ABNORMAL_CLOSURE = 1006


def _text_headers(body: bytes, content_type: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]


async def http_response(
    send: ASGISend, status: int, body: str, *, content_type: str = "text/plain; charset=utf-8"
) -> None:
    """Answer a plain ASGI ``http`` request."""
    data = body.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": _text_headers(data, content_type),
        }
    )
    await send({"type": "http.response.body", "body": data})


class WebSocketTransport:
    """One ASGI WebSocket connection, as the dev server's handlers use it.

    Not safe for concurrent ``send`` calls from several tasks: callers serialize
    (the agent service holds a lock per connection).
    """

    def __init__(self, scope: Scope, receive: ASGIReceive, send: ASGISend) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self._accepted = False
        self._closed = False
        self._peer_close: tuple[int, str] | None = None
        self._local_close: tuple[int, str] | None = None
        self._disconnect_code: int | None = None

    # -- request ---------------------------------------------------------------

    @property
    def path(self) -> str:
        """The request path (``/agent``)."""
        path: str = self.scope.get("path", "")
        return path

    def header(self, name: str) -> str | None:
        """The first request header called *name* (case-insensitive), decoded as latin-1."""
        wanted = name.lower().encode("latin-1")
        for key, value in self.scope.get("headers", ()):
            if bytes(key).lower() == wanted:
                return bytes(value).decode("latin-1")
        return None

    def query(self, name: str) -> str | None:
        """The first query parameter called *name*."""
        raw: bytes = self.scope.get("query_string", b"")
        values = parse_qs(raw.decode("latin-1"), keep_blank_values=True).get(name)
        return values[0] if values else None

    @property
    def client(self) -> str:
        """``host:port`` of the peer, for logs."""
        client = self.scope.get("client")
        return f"{client[0]}:{client[1]}" if client else "?"

    # -- handshake -------------------------------------------------------------

    async def wait_connect(self) -> bool:
        """Receive the ``websocket.connect`` event; False if the client already left."""
        event = await self._receive()
        return event.get("type") == "websocket.connect"

    async def reject(self, status: int, body: str) -> None:
        """Refuse the upgrade with an HTTP response (ASGI ``websocket.http.response``)."""
        data = body.encode()
        await self._send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": _text_headers(data, "text/plain; charset=utf-8"),
            }
        )
        await self._send({"type": "websocket.http.response.body", "body": data})
        self._closed = True

    async def accept(self) -> None:
        """Complete the upgrade."""
        await self._send({"type": "websocket.accept"})
        self._accepted = True
        self._observe_peer_close()

    # -- frames ----------------------------------------------------------------

    async def receive(self) -> bytes | str | None:
        """The next message: ``bytes`` (binary frame), ``str`` (text frame), or None once closed."""
        while True:
            event = await self._receive()
            kind = event.get("type")
            if kind == "websocket.receive":
                data: bytes | None = event.get("bytes")
                if data is not None:
                    return bytes(data)
                text: str | None = event.get("text")
                return text if text is not None else ""
            if kind == "websocket.disconnect":
                self._closed = True
                self._disconnect_code = int(event.get("code", ABNORMAL_CLOSURE))
                return None

    async def send(self, data: bytes | str) -> None:
        """Send one message (binary for ``bytes``, text for ``str``).

        Raises:
            trio.ClosedResourceError: the connection is closed.
        """
        if self._closed or not self._accepted:
            raise trio.ClosedResourceError("the WebSocket is closed")
        if isinstance(data, bytes):
            await self._send({"type": "websocket.send", "bytes": data})
        else:
            await self._send({"type": "websocket.send", "text": data})

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (idempotent). *reason* is cut to the protocol's 123 bytes."""
        if self._closed or not self._accepted:
            return
        self._closed = True
        reason = reason.encode()[:123].decode(errors="ignore")
        self._local_close = (code, reason)
        await self._send({"type": "websocket.close", "code": code, "reason": reason})

    def abort(self) -> bool:
        """Drop the TCP connection without a close frame (what Go does on errors).

        Returns:
            False when the socket could not be reached (hypercorn changed); the
            caller then closes with a close frame instead.
        """
        sock = self._socket()
        if sock is None:
            return False
        self._closed = True
        self._disconnect_code = ABNORMAL_CLOSURE
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already gone
        return True

    @property
    def closed(self) -> bool:
        """Whether either side closed (or the server rejected the upgrade)."""
        return self._closed

    @property
    def close_code(self) -> int | None:
        """The close code: the peer's if it closed first, else ours; 1006 without a frame."""
        if self._peer_close is not None:
            return self._peer_close[0]
        if self._local_close is not None:
            return self._local_close[0]
        return self._disconnect_code

    @property
    def close_reason(self) -> str:
        """The reason that came with :attr:`close_code`."""
        for record in (self._peer_close, self._local_close):
            if record is not None:
                return record[1]
        return ""

    # -- hypercorn internals (see the module docstring) -----------------------------

    def _ws_stream(self) -> Any:
        return getattr(self._send, "__self__", None)

    def _observe_peer_close(self) -> None:
        connection = getattr(self._ws_stream(), "connection", None)
        events = getattr(connection, "events", None)
        if connection is None or events is None:
            logger.debug("cannot observe peer close codes on this ASGI server")
            return
        from wsproto.events import CloseConnection

        def observed() -> Iterator[Any]:
            for event in events():
                # The peer's own close, not its echo of ours.
                if (
                    isinstance(event, CloseConnection)
                    and self._local_close is None
                    and self._peer_close is None
                ):
                    self._peer_close = (int(event.code), event.reason or "")
                yield event

        connection.events = observed

    def _socket(self) -> socket.socket | trio.socket.SocketType | None:
        stream = self._stream()
        return stream.socket if stream is not None else None

    def _stream(self) -> trio.SocketStream | None:
        try:
            h11_protocol = self._ws_stream().send.__self__
            tcp_server = h11_protocol.send.__self__
            stream = tcp_server.stream
        except AttributeError:
            return None
        return stream if isinstance(stream, trio.SocketStream) else None

    async def release(self) -> None:
        """The application is done with this WebSocket: close its TCP socket now.

        hypercorn keeps a connection's socket until every task of the connection
        ended, including its WebSocket ping task, which only notices at its next
        ping (up to ``ws_ping_interval`` later): a dropped client's socket would
        sit there meanwhile. Closing the stream (hypercorn tolerates it: its reader
        and sender treat a closed stream as the end) frees it at once.
        """
        stream = self._stream()
        if stream is None:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            try:
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
