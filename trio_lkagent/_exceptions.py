"""Every error this SDK raises on its own account derives from :class:`LKAgentError`.

Errors about resources reuse Trio's own classes: :class:`trio.ClosedResourceError`
when *you* closed something and then used it, :class:`trio.BrokenResourceError`
when the other side went away.
"""

from __future__ import annotations

__all__ = [
    "AsyncioCancelledError",
    "AuthenticationError",
    "ConfigurationError",
    "ConnectError",
    "LKAgentError",
    "ProtocolError",
]


class LKAgentError(Exception):
    """Base class of the errors trio-lkagent raises."""


class ConfigurationError(LKAgentError, ValueError):
    """A setting is missing or has a value that cannot work.

    Raised at construction time (``WorkerOptions(...)``), never later at connect
    time, so a misconfigured service fails on start-up with a message that names
    the setting.
    """


class AuthenticationError(LKAgentError):
    """The server refused our credentials (HTTP 401 or 403 on the upgrade).

    This is fatal: retrying with the same key and secret cannot succeed, so the
    worker does not reconnect.

    Attributes:
        status_code: The HTTP status the server answered with.
        body: The response body, decoded leniently (servers put the reason here).
    """

    def __init__(self, message: str, *, status_code: int, body: str = "") -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body


class ConnectError(LKAgentError):
    """A connection (to the agent service or to a room) could not be established."""


class ProtocolError(LKAgentError):
    """A message from the peer could not be decoded or violates the protocol.

    The worker logs and ignores these; they never end a job or the worker.
    """


class AsyncioCancelledError(LKAgentError):
    """The asyncio task behind :meth:`AsyncioBridge.run` was cancelled by asyncio code.

    Raised when something on the asyncio side (not the Trio caller) cancelled the
    task, so there is no result to return. When the Trio caller itself is cancelled
    it gets :class:`trio.Cancelled` as usual, never this.
    """
