"""What the worker does when a job fails, the connection drops or a resource runs out."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import attrs

from .._exceptions import ConfigurationError, FatalError, RetryableError

if TYPE_CHECKING:
    from livekit.protocol import agent as agent_pb

__all__ = ["DefaultRecoveryHandler", "FailedJob", "RecoveryAction", "RecoveryHandler"]


class RecoveryAction(enum.Enum):
    """A recovery decision."""

    #: Run the job's entrypoint again at once (same job, same room token).
    RETRY = "retry"
    #: Give up on this job (it ends JS_FAILED) and carry on serving.
    SKIP = "skip"
    #: Stop the worker cleanly: drain, then ``serve`` returns.
    TERMINATE = "terminate"
    #: Retry after a delay that grows with the attempt (``backoff_delay``).
    BACKOFF = "backoff"


@attrs.frozen
class FailedJob:
    """What :meth:`RecoveryHandler.on_job_failed` learns about a failed job."""

    #: The protocol ``Job`` (id, type, room, participant, metadata).
    job: agent_pb.Job
    #: The attempt that failed, 1-based (1: the first run).
    attempt: int

    @property
    def job_id(self) -> str:
        """The job's id."""
        return self.job.id


@runtime_checkable
class RecoveryHandler(Protocol):
    """Decides how the worker recovers. Called on the event loop; must not block.

    A handler may also define ``backoff_delay(attempt: int) -> float``, the
    seconds to wait before attempt ``attempt + 1`` after BACKOFF; without it the
    worker uses :class:`DefaultRecoveryHandler`'s defaults.
    """

    def on_job_failed(self, job: FailedJob, error: BaseException) -> RecoveryAction:
        """A job's entrypoint raised *error*: RETRY, BACKOFF, SKIP or TERMINATE."""
        ...

    def on_connection_lost(self) -> RecoveryAction:
        """The server connection dropped: TERMINATE stops the worker; anything else reconnects."""
        ...

    def on_resource_exhausted(self, resource: str) -> RecoveryAction:
        """A :class:`ResourceLimits` limit was crossed (``"memory"``, ``"cpu"``,
        ``"jobs"``): TERMINATE drains the worker; anything else holds it WS_FULL
        until back under the limit."""
        ...


class DefaultRecoveryHandler:
    """Retry failed jobs with exponential backoff, up to a limit.

    * :class:`~trio_lkagent.FatalError` (anywhere in an exception group): SKIP, never retried.
    * Any other ``Exception`` (:class:`~trio_lkagent.RetryableError` among them)
      while ``attempt <= max_retries``: BACKOFF (RETRY when ``backoff_base`` is 0).
    * Past the limit: SKIP (the job ends JS_FAILED).
    * Connection lost: BACKOFF (the worker's ``ReconnectPolicy`` paces reconnects).
    * Resource exhausted: BACKOFF (hold WS_FULL until back under the limit).

    Args:
        max_retries: Re-runs after the first attempt (3: up to 4 runs).
        backoff_base: Delay before the first retry, seconds.
        backoff_multiplier: Growth per retry.
        max_backoff: Cap on one delay.
        retry_only_retryable: Retry only :class:`~trio_lkagent.RetryableError`
            (other errors are SKIPped at once).
    """

    def __init__(
        self,
        *,
        max_retries: int = 3,
        backoff_base: float = 1.0,
        backoff_multiplier: float = 2.0,
        max_backoff: float = 30.0,
        retry_only_retryable: bool = False,
    ) -> None:
        if max_retries < 0:
            raise ConfigurationError(f"max_retries must be >= 0, got {max_retries!r}")
        if backoff_base < 0 or backoff_multiplier < 1 or max_backoff < 0:
            raise ConfigurationError(
                "backoff_base and max_backoff must be >= 0 and backoff_multiplier >= 1"
            )
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_multiplier = backoff_multiplier
        self.max_backoff = max_backoff
        self.retry_only_retryable = retry_only_retryable

    def backoff_delay(self, attempt: int) -> float:
        """Seconds to wait after failed attempt *attempt* (1-based)."""
        return min(self.max_backoff, self.backoff_base * self.backoff_multiplier ** (attempt - 1))

    def on_job_failed(self, job: FailedJob, error: BaseException) -> RecoveryAction:
        """See the class docstring."""
        if _contains(error, FatalError):
            return RecoveryAction.SKIP
        if self.retry_only_retryable and not _contains(error, RetryableError):
            return RecoveryAction.SKIP
        if job.attempt > self.max_retries:
            return RecoveryAction.SKIP
        return RecoveryAction.BACKOFF if self.backoff_base > 0 else RecoveryAction.RETRY

    def on_connection_lost(self) -> RecoveryAction:
        """BACKOFF: reconnect per the worker's ``ReconnectPolicy``."""
        return RecoveryAction.BACKOFF

    def on_resource_exhausted(self, resource: str) -> RecoveryAction:
        """BACKOFF: report WS_FULL until back under the limit."""
        return RecoveryAction.BACKOFF


def _contains(error: BaseException, kind: type[BaseException]) -> bool:
    if isinstance(error, kind):
        return True
    if isinstance(error, BaseExceptionGroup):
        return any(_contains(sub, kind) for sub in error.exceptions)
    return False
