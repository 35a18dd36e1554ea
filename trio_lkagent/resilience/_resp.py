"""A small Redis client over Trio streams: RESP2, one connection, requests in turn.

Why not redis-py? Its asyncio client would run on the asyncio bridge
(``_bridge.py``), so every command would hop event loops twice and the store's
life would depend on the bridge's; its sync client would need a thread per
call. The checkpoint store needs six commands; RESP is a page of code over
``trio.open_tcp_stream`` that is natively cancellable and has no dependency.
"""

from __future__ import annotations

import urllib.parse

import trio

from .._exceptions import ConfigurationError, LKAgentError

__all__ = ["RedisConnection", "RedisError", "parse_redis_url"]

RespValue = bytes | int | list["RespValue"] | None


class RedisError(LKAgentError):
    """The Redis server answered with an error (``-ERR ...``) or broke the protocol."""


def parse_redis_url(url: str) -> tuple[str, int, int, str | None, str | None]:
    """``redis://[user:password@]host[:port][/db]`` -> (host, port, db, user, password).

    Raises:
        ConfigurationError: not a redis:// URL or a bad database number.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "redis" or not parts.hostname:
        raise ConfigurationError(f"expected redis://host[:port][/db], got {url!r}")
    db_text = parts.path.strip("/") or "0"
    if not db_text.isdigit():
        raise ConfigurationError(f"the Redis database must be a number, got {db_text!r} in {url!r}")
    return (
        parts.hostname,
        parts.port or 6379,
        int(db_text),
        urllib.parse.unquote(parts.username) if parts.username else None,
        urllib.parse.unquote(parts.password) if parts.password else None,
    )


def _encode(args: tuple[bytes | str | int, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RedisConnection:
    """One lazily opened connection; commands run one at a time (a lock).

    A command interrupted midway (cancelled, connection broken) closes the
    connection, since its reply would confuse the next; the next command
    reconnects.

    Args:
        url: ``redis://[user:password@]host[:port][/db]``.
        connect_timeout: Seconds allowed to connect (and authenticate).
    """

    def __init__(self, url: str, *, connect_timeout: float = 5.0) -> None:
        self.host, self.port, self.db, self._user, self._password = parse_redis_url(url)
        self._connect_timeout = connect_timeout
        self._stream: trio.SocketStream | None = None
        self._buffer = bytearray()
        self._lock = trio.Lock()

    async def _connect(self) -> trio.SocketStream:
        with trio.fail_after(self._connect_timeout):
            stream = await trio.open_tcp_stream(self.host, self.port)
            self._stream, self._buffer = stream, bytearray()
            try:
                if self._password is not None:
                    auth = (self._user, self._password) if self._user else (self._password,)
                    await self._roundtrip(stream, ("AUTH", *auth))
                if self.db:
                    await self._roundtrip(stream, ("SELECT", self.db))
            except BaseException:
                self._stream = None
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                raise
        return stream

    async def execute(self, *args: bytes | str | int) -> RespValue:
        """Send one command, return its reply.

        Raises:
            RedisError: the server replied with an error.
            OSError, trio.BrokenResourceError: the server is unreachable.
        """
        async with self._lock:
            stream = self._stream or await self._connect()
            try:
                return await self._roundtrip(stream, args)
            except RedisError:
                raise
            except BaseException:
                self._stream = None
                with trio.CancelScope(shield=True):
                    await stream.aclose()
                raise

    async def _roundtrip(
        self, stream: trio.SocketStream, args: tuple[bytes | str | int, ...]
    ) -> RespValue:
        await stream.send_all(_encode(args))
        return await self._read_reply(stream)

    async def _read_line(self, stream: trio.SocketStream) -> bytes:
        while (end := self._buffer.find(b"\r\n")) < 0:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise trio.BrokenResourceError("Redis closed the connection")
            self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 2]
        return line

    async def _read_exact(self, stream: trio.SocketStream, size: int) -> bytes:
        while len(self._buffer) < size + 2:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise trio.BrokenResourceError("Redis closed the connection")
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[: size + 2]
        return data

    async def _read_reply(self, stream: trio.SocketStream) -> RespValue:
        line = await self._read_line(stream)
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RedisError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            return None if size < 0 else await self._read_exact(stream, size)
        if kind == b"*":
            count = int(rest)
            if count < 0:
                return None
            return [await self._read_reply(stream) for _ in range(count)]
        raise RedisError(f"unexpected reply from Redis: {line[:40]!r}")

    async def aclose(self) -> None:
        """Close the connection (idempotent)."""
        stream, self._stream = self._stream, None
        if stream is not None:
            with trio.CancelScope(shield=True):
                await stream.aclose()
