"""The messages between the worker and a job process: length-prefixed JSON frames.

A frame is a 4-byte big-endian length followed by that many bytes of UTF-8
JSON, an object with a ``"type"`` key. Over a socketpair both ends are ours,
but a child can die mid-frame (a crash, the memory limit), so the reader
tells a clean end (:class:`trio.EndOfChannel`: the peer closed between
frames), a broken one (:class:`trio.BrokenResourceError`: the peer vanished
mid-frame or reset the socket) and garbage (:class:`~trio_lkagent.ProtocolError`:
oversized frame, bad JSON, not a message) apart.

trio-parallel was considered: it runs sync functions in worker processes,
while a job is a long-lived async entrypoint that must be cancelled in the
child's own Trio run and report its outcome, which a frame channel does in
a few lines.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import trio

from .._exceptions import ProtocolError

__all__ = ["MAX_FRAME", "FrameChannel", "decode_frame", "encode_frame"]

#: Largest frame accepted (a job's protobuf and a token are a few KB).
MAX_FRAME = 4 << 20

_HEADER = struct.Struct(">I")

Message = dict[str, Any]


def encode_frame(message: Message) -> bytes:
    """*message* as a frame (header + JSON)."""
    if not isinstance(message.get("type"), str):
        raise TypeError(f"a message needs a string 'type', got {message!r}")
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_FRAME:
        raise ValueError(f"message of {len(body)} bytes exceeds {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


def decode_frame(body: bytes) -> Message:
    """The message in a frame's body.

    Raises:
        ProtocolError: not UTF-8 JSON, or not an object with a string ``type``.
    """
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"job process sent a malformed frame: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError(f"job process sent a frame that is not a message: {body[:80]!r}")
    return message


class FrameChannel:
    """Messages over a byte stream (one end of the socketpair).

    ``send`` is serialized by a lock (several tasks of a process send); one
    task receives.
    """

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._buffer = bytearray()
        self._send_lock = trio.Lock()

    @property
    def stream(self) -> trio.abc.Stream:
        """The underlying stream."""
        return self._stream

    async def send(self, message: Message) -> None:
        """Send one message.

        Raises:
            trio.BrokenResourceError: the peer is gone.
            trio.ClosedResourceError: this end was closed.
        """
        frame = encode_frame(message)
        async with self._send_lock:
            await self._stream.send_all(frame)

    async def receive(self) -> Message:
        """The next message.

        Raises:
            trio.EndOfChannel: the peer closed the connection between frames.
            trio.BrokenResourceError: the peer vanished mid-frame (or reset).
            ProtocolError: an oversized or malformed frame.

        Cancellation:
            Safe: bytes already read stay buffered for the next call.
        """
        await self._fill(_HEADER.size)
        (length,) = _HEADER.unpack_from(self._buffer)
        if length > MAX_FRAME:
            raise ProtocolError(f"job process sent a frame of {length} bytes (max {MAX_FRAME})")
        await self._fill(_HEADER.size + length)
        body = bytes(self._buffer[_HEADER.size : _HEADER.size + length])
        del self._buffer[: _HEADER.size + length]
        return decode_frame(body)

    async def _fill(self, size: int) -> None:
        while len(self._buffer) < size:
            try:
                chunk = await self._stream.receive_some(65536)
            except OSError as exc:  # ECONNRESET from a dead peer
                raise trio.BrokenResourceError(f"job process connection: {exc}") from exc
            if not chunk:
                if not self._buffer:
                    raise trio.EndOfChannel
                raise trio.BrokenResourceError(
                    f"job process connection ended mid-frame ({len(self._buffer)} bytes"
                    " of an incomplete frame)"
                )
            self._buffer += chunk

    async def aclose(self) -> None:
        """Close this end."""
        await self._stream.aclose()
