"""The worker's WebSocket seam: trio-websocket's failure modes become "connection lost".

Everything the worker does with its socket to the agent service goes through
:class:`WorkerSocket`, so the ways a hostile or broken peer can hurt the worker
are handled in one place:

* **Close race** (python-trio/trio-websocket#184, unmerged upstream): a server
  Ping that arrives after our Close frame makes trio-websocket's reader task
  try to send a Pong in ``LOCAL_CLOSING`` and raise wsproto's
  ``LocalProtocolError``. The reader task runs under :meth:`ReaderHost.start_soon`,
  which contains that error: the connection is over, never an error of ``serve``.
* **Peer that stops reading**: every send has a deadline; a send that cannot
  complete means the connection is lost (the stream is closed at once, so
  nothing else blocks on it either).
* **Close handshake**: :meth:`WorkerSocket.aclose` is bounded, skips the
  handshake when the reader is gone, and always closes the TCP stream, which
  trio-websocket leaves open after it refused an oversize frame (1009) or hit
  the close race.

The TCP stream is opened here (not by trio-websocket) so that the worker owns it
and can always close it.
"""

from __future__ import annotations

import logging
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, cast

import trio
import trio_websocket
import wsproto.utilities

from ._exceptions import ConnectionLostError

__all__ = ["ReaderHost", "SocketLost", "WorkerSocket", "open_worker_socket"]

logger = logging.getLogger("trio_lkagent.worker")


class SocketLost(ConnectionLostError):
    """The connection to the agent service is gone (the worker reconnects)."""


class ReaderHost:
    """What trio-websocket sees as its nursery: hosts its reader task, contained.

    trio-websocket only calls ``nursery.start_soon(connection._reader_task)``;
    this runs that task in *nursery* under a wrapper that treats wsproto's
    ``LocalProtocolError`` (the close race of trio-websocket#184) as the end of
    the connection, and sets :attr:`done` when the reader task ends, however.
    Other errors (``ConnectionRejected`` during the handshake) propagate.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        #: Set when trio-websocket's reader task has ended: nobody will answer a
        #: close handshake or deliver a message any more.
        self.done = trio.Event()

    def start_soon(self, fn: Callable[[], Awaitable[Any]], *args: Any, **kwargs: Any) -> None:
        """Start trio-websocket's reader task (the only call trio-websocket makes)."""
        self._nursery.start_soon(self._run, fn, *args)

    async def _run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        try:
            await fn(*args)
        except wsproto.utilities.LocalProtocolError as exc:
            # Only ever a Pong/Close answered on a socket we are closing: the
            # connection is over, which get_message() reports as ConnectionClosed.
            logger.debug("WebSocket reader stopped on a closing socket: %s", exc)
        finally:
            self.done.set()


class WorkerSocket:
    """One WebSocket to the agent service, with send deadlines and a bounded close.

    Args:
        ws: the trio-websocket connection.
        stream: its TCP (or TLS) stream, owned by this object.
        reader: the host of its reader task.
        send_timeout: a send not done within this means the connection is lost.
        close_timeout: bound on the close handshake in :meth:`aclose`.
    """

    def __init__(
        self,
        ws: trio_websocket.WebSocketConnection,
        stream: trio.abc.Stream,
        reader: ReaderHost,
        *,
        send_timeout: float,
        close_timeout: float,
    ) -> None:
        self.ws = ws
        self._stream = stream
        self._reader = reader
        self._send_timeout = send_timeout
        self._close_timeout = close_timeout
        #: Why the socket is unusable (a send timed out), or None.
        self.broken: str | None = None

    @property
    def closed(self) -> bool:
        """True once the socket can no longer carry messages."""
        return self.broken is not None or self.ws.closed is not None or self._reader.done.is_set()

    async def get_message(self) -> bytes | str:
        """The next frame's payload.

        Raises:
            SocketLost: the connection is closed (its reason in the message).
        """
        try:
            return await self.ws.get_message()
        except trio_websocket.ConnectionClosed as exc:
            raise SocketLost(_closed_text(exc)) from None

    async def send(self, data: bytes | str) -> None:
        """Send one frame within ``send_timeout``.

        Raises:
            SocketLost: the connection is closed, or the send did not complete in
                time (the peer stopped reading); the stream is then closed.
        """
        if self.broken is not None:
            raise SocketLost(self.broken)
        with trio.move_on_after(self._send_timeout) as deadline:
            try:
                await self.ws.send_message(data)
            except trio_websocket.ConnectionClosed as exc:
                raise SocketLost(_closed_text(exc)) from None
        if deadline.cancelled_caught:
            # The frame may be half written: the stream is unusable now.
            self.broken = (
                f"a send did not complete within {self._send_timeout:g} s"
                " (the server stopped reading)"
            )
            await self._close_stream()
            raise SocketLost(self.broken)

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Close: the handshake within ``close_timeout`` if possible, then the stream.

        Idempotent. The TCP stream is closed in every case.
        """
        try:
            if not self.closed:
                with trio.move_on_after(self._close_timeout):
                    async with trio.open_nursery() as nursery:
                        # Nobody answers the handshake once the reader task is gone.
                        nursery.start_soon(_cancel_when, self._reader.done, nursery.cancel_scope)
                        await self.ws.aclose(code, reason or None)
                        nursery.cancel_scope.cancel()
        finally:
            await self._close_stream()

    async def _close_stream(self) -> None:
        with trio.CancelScope(shield=True):
            try:
                await self._stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass


async def open_worker_socket(
    io_nursery: trio.Nursery,
    url: str,
    *,
    extra_headers: list[tuple[bytes, bytes]],
    max_message_size: int,
    send_timeout: float,
    close_timeout: float,
) -> WorkerSocket:
    """Open the TCP (TLS for ``wss``) stream and the WebSocket over it.

    trio-websocket's reader task runs in *io_nursery* under a :class:`ReaderHost`.

    Raises:
        OSError: the TCP connection failed.
        trio_websocket.HandshakeError: the upgrade failed (``ConnectionRejected``
            arrives through *io_nursery*, as with ``connect_websocket_url``).
    """
    parts = urllib.parse.urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
    if secure:
        stream = await trio.open_ssl_over_tcp_stream(
            host, port, ssl_context=ssl.create_default_context(), https_compatible=True
        )
    else:
        stream = await trio.open_tcp_stream(host, port)
    reader = ReaderHost(io_nursery)
    host_header = host if port in (80, 443) else f"{host}:{port}"
    try:
        ws = await trio_websocket.wrap_client_stream(
            cast(trio.Nursery, reader),  # only start_soon is used (see ReaderHost)
            stream,
            host_header,
            resource,
            extra_headers=extra_headers,
            max_message_size=max_message_size,
        )
    except BaseException:
        with trio.CancelScope(shield=True):
            await stream.aclose()
        raise
    return WorkerSocket(ws, stream, reader, send_timeout=send_timeout, close_timeout=close_timeout)


def _closed_text(exc: trio_websocket.ConnectionClosed) -> str:
    reason = exc.reason
    code = reason.code if reason is not None else None
    text = f": {reason.reason}" if reason is not None and reason.reason else ""
    return f"server closed the connection (code {code}{text})"


async def _cancel_when(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
