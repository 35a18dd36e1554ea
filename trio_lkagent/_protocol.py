"""Wire codec of the LiveKit agent protocol, shared by the worker and the dev server.

The protocol carries ``WorkerMessage`` (worker -> server) and ``ServerMessage``
(server -> worker) from ``livekit.protocol.agent``. A binary WebSocket frame holds
the protobuf encoding; a text frame holds protobuf-JSON with lowerCamelCase field
names, as the Go server's ``protojson`` writes them (either spelling is accepted
on input, and unknown fields are ignored, as in binary frames, so a newer
peer's additions do not break an older one).

This module is pure: no I/O, no state. Both ends call :func:`encode` and
:func:`decode`; nothing else in the package touches ``SerializeToString`` or
``json_format`` for this protocol.
"""

from __future__ import annotations

import enum
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from livekit.protocol import agent as agent_pb

from ._exceptions import ProtocolError

__all__ = [
    "PROTOCOL_VERSION",
    "WireFormat",
    "decode",
    "encode",
    "message_kind",
]

#: Value of the ``protocol`` query parameter a worker sends on ``/agent``.
PROTOCOL_VERSION = 1

M = TypeVar("M", bound=Message)


class WireFormat(enum.Enum):
    """How messages are framed on the agent WebSocket."""

    #: Binary frames holding protobuf (the official worker's choice; smaller, faster).
    PROTOBUF = "protobuf"
    #: Text frames holding protobuf-JSON (readable in logs and browser tools).
    JSON = "json"


def encode(message: Message, wire_format: WireFormat) -> bytes | str:
    """Encode *message* for a WebSocket frame.

    Returns:
        ``bytes`` (send as a binary frame) for :attr:`WireFormat.PROTOBUF`,
        ``str`` (send as a text frame) for :attr:`WireFormat.JSON`.
    """
    if wire_format is WireFormat.PROTOBUF:
        return message.SerializeToString()
    return json_format.MessageToJson(message, indent=None)


def decode(data: bytes | str, message_type: type[M]) -> tuple[M, WireFormat]:
    """Decode one WebSocket frame into *message_type*.

    Returns:
        The message and the wire format it arrived in (text frames are JSON,
        binary frames protobuf), so a server can answer in kind.

    Raises:
        ProtocolError: the frame does not hold a valid *message_type*.
    """
    message = message_type()
    try:
        if isinstance(data, str):
            json_format.Parse(data, message, ignore_unknown_fields=True)
            return message, WireFormat.JSON
        message.ParseFromString(data)
        return message, WireFormat.PROTOBUF
    except (DecodeError, json_format.ParseError, ValueError, TypeError) as exc:
        kind = "text" if isinstance(data, str) else "binary"
        raise ProtocolError(
            f"malformed {kind} frame ({len(data)} {'chars' if kind == 'text' else 'bytes'})"
            f" for {message_type.DESCRIPTOR.name}: {exc}"
        ) from exc


def message_kind(message: agent_pb.WorkerMessage | agent_pb.ServerMessage) -> str | None:
    """Name of the ``message`` oneof member that is set (``"register"``, ...), or None."""
    kind: str | None = message.WhichOneof("message")
    return kind
