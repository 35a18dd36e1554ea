"""Every error this SDK raises on its own account derives from :class:`LKAgentError`.

Errors about resources reuse Trio's own classes: :class:`trio.ClosedResourceError`
when *you* closed something and then used it, :class:`trio.BrokenResourceError`
when the other side went away.
"""

from __future__ import annotations

__all__ = [
    "AsyncioCancelledError",
    "AuthenticationError",
    "CircuitOpenError",
    "ConfigurationError",
    "ConnectError",
    "ConnectionLostError",
    "FatalError",
    "InvalidJobTypeError",
    "JobTimeoutError",
    "LKAgentError",
    "PluginError",
    "ProtocolError",
    "RecoveryFailedError",
    "ResourceExhaustedError",
    "RetryableError",
    "ShutdownTimeoutError",
    "WorkerNotConnectedError",
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


class WorkerNotConnectedError(LKAgentError):
    """An operation needs the agent-service socket while it is down.

    Wait for the worker to reconnect (``Worker.statistics().connected``) or let
    the operation be queued where the API offers that.
    """


class ConnectionLostError(ConnectError):
    """An established connection (agent service or room) went away."""


class RecoveryFailedError(ConnectError):
    """Reconnecting gave up: the reconnect policy's attempts are exhausted.

    ``serve`` raises it; a supervisor (``trio-lkagent start --processes``,
    Kubernetes) is expected to restart the process.
    """


class InvalidJobTypeError(LKAgentError, ValueError):
    """A job type that is not one of ``JobType``'s members was given."""


class JobTimeoutError(LKAgentError):
    """A job ran past its deadline (``WorkerOptions.job_timeout`` or ``accept(timeout=)``).

    The job ends ``JS_FAILED`` with the message ``"job timed out after N s"``.
    """


class ResourceExhaustedError(LKAgentError):
    """A resource limit (memory, CPU, jobs, uptime) was reached.

    Attributes:
        resource: Which resource ran out, e.g. ``"memory"``.
    """

    def __init__(self, message: str, *, resource: str = "") -> None:
        super().__init__(message)
        self.resource = resource


class ShutdownTimeoutError(LKAgentError):
    """Draining took longer than ``drain_timeout`` and jobs were still running.

    ``serve`` records it in its statistics and logs it; a caller that asked for
    a strict drain gets it raised.
    """


class RetryableError(LKAgentError):
    """Raised by user code: this failure is transient, a retry may succeed.

    Recovery (``WorkerOptions(recovery=...)``) retries jobs that fail with it,
    within the policy's limit.
    """


class FatalError(LKAgentError):
    """Raised by user code: this failure is permanent, never retry it."""


class CircuitOpenError(LKAgentError):
    """A call was refused because its circuit breaker is open.

    Attributes:
        retry_after: Seconds until the breaker lets a trial call through.
    """

    def __init__(self, message: str, *, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PluginError(LKAgentError):
    """A VAD, STT or TTS engine failed; the message carries the engine's own."""


class JobProcessError(LKAgentError):
    """A job run in its own process (``JobExecutor.PROCESS``) failed there.

    The message says how: the entrypoint's own error (``"ValueError: ..."``),
    or that the process died (``"job process exited with signal 11"``, ``"job
    process exceeded the memory limit ..."``). The job ends JS_FAILED with it.
    """
