"""A circuit breaker: stop calling something that keeps failing, try again later."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import ParamSpec, TypeVar

import attrs
import trio

from .._exceptions import CircuitOpenError, ConfigurationError

__all__ = ["BreakerState", "CircuitBreaker", "CircuitBreakerStatistics"]

P = ParamSpec("P")
T = TypeVar("T")


class BreakerState(enum.Enum):
    """Where a :class:`CircuitBreaker` is."""

    #: Calls go through; consecutive failures are counted.
    CLOSED = "closed"
    #: Calls are refused with :class:`~trio_lkagent.CircuitOpenError` until ``reset_timeout``.
    OPEN = "open"
    #: Up to ``half_open_max`` trial calls go through; a success closes, a failure re-opens.
    HALF_OPEN = "half_open"


@attrs.frozen
class CircuitBreakerStatistics:
    """A snapshot from :meth:`CircuitBreaker.statistics`."""

    state: BreakerState
    consecutive_failures: int
    calls: int
    failures: int
    rejected: int
    #: Seconds until an open breaker lets a trial call through (0 otherwise).
    retry_after: float


class CircuitBreaker:
    """Refuses calls after ``failure_threshold`` consecutive failures, for ``reset_timeout`` s.

    ::

        breaker = CircuitBreaker(failure_threshold=5, reset_timeout=30)
        reply = await breaker.call(fetch, url)
        async with breaker:          # the block counts as one call
            await risky()

    CLOSED counts consecutive failures (a success resets the count); at the
    threshold the breaker OPENs and refuses calls with
    :class:`~trio_lkagent.CircuitOpenError` (its ``retry_after`` says for how
    long). After ``reset_timeout`` it is HALF_OPEN: up to ``half_open_max``
    calls run at once as trials; a success CLOSEs it, a failure re-OPENs it.
    Only ``Exception`` s count as failures (by default any, see
    *failure_types*); ``trio.Cancelled`` and other ``BaseException`` s never do
    and free the trial slot.

    Args:
        failure_threshold: Consecutive failures that open the breaker.
        reset_timeout: Seconds open before trials are allowed.
        half_open_max: Concurrent trial calls while half-open.
        failure_types: Exception types that count as failures.
        clock: Seconds as a float (default ``trio.current_time``); inject one in tests.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 30.0,
        half_open_max: int = 1,
        failure_types: tuple[type[BaseException], ...] = (Exception,),
        clock: Callable[[], float] | None = None,
    ) -> None:
        if failure_threshold < 1 or half_open_max < 1 or reset_timeout < 0:
            raise ConfigurationError(
                "failure_threshold and half_open_max must be >= 1, reset_timeout >= 0"
            )
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.half_open_max = half_open_max
        self.failure_types = failure_types
        self._clock = clock or trio.current_time
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._trials = 0
        self._calls = self._failures = self._rejected = 0

    @property
    def state(self) -> BreakerState:
        """The state now (an open breaker whose timeout passed reads HALF_OPEN)."""
        if (
            self._state is BreakerState.OPEN
            and self._clock() >= self._opened_at + self.reset_timeout
        ):
            self._state = BreakerState.HALF_OPEN
            self._trials = 0
        return self._state

    def statistics(self) -> CircuitBreakerStatistics:
        """A frozen snapshot."""
        state = self.state
        retry_after = 0.0
        if state is BreakerState.OPEN:
            retry_after = max(0.0, self._opened_at + self.reset_timeout - self._clock())
        return CircuitBreakerStatistics(
            state=state,
            consecutive_failures=self._consecutive,
            calls=self._calls,
            failures=self._failures,
            rejected=self._rejected,
            retry_after=retry_after,
        )

    def reset(self) -> None:
        """Close the breaker and forget the failures."""
        self._state = BreakerState.CLOSED
        self._consecutive = 0
        self._trials = 0

    def acquire(self) -> None:
        """Admit one call or raise :class:`~trio_lkagent.CircuitOpenError` (pair with a
        :meth:`record_success` / :meth:`record_failure` / :meth:`release`)."""
        state = self.state
        if state is BreakerState.OPEN or (
            state is BreakerState.HALF_OPEN and self._trials >= self.half_open_max
        ):
            self._rejected += 1
            retry_after = max(0.0, self._opened_at + self.reset_timeout - self._clock())
            raise CircuitOpenError(
                f"circuit open after {self._consecutive} consecutive failure(s);"
                f" retry in {retry_after:.1f} s",
                retry_after=retry_after,
            )
        if state is BreakerState.HALF_OPEN:
            self._trials += 1
        self._calls += 1

    def record_success(self) -> None:
        """The admitted call succeeded."""
        if self._state is BreakerState.HALF_OPEN:
            self._trials = max(0, self._trials - 1)
        self._state = BreakerState.CLOSED
        self._consecutive = 0

    def record_failure(self) -> None:
        """The admitted call failed."""
        self._failures += 1
        self._consecutive += 1
        if self._state is BreakerState.HALF_OPEN or self._consecutive >= self.failure_threshold:
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()
            self._trials = 0

    def release(self) -> None:
        """The admitted call neither succeeded nor failed (cancelled): free its trial slot."""
        if self._state is BreakerState.HALF_OPEN:
            self._trials = max(0, self._trials - 1)

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """``await fn(*args, **kwargs)`` through the breaker.

        Raises:
            CircuitOpenError: the breaker is open (*fn* is not called).
        """
        async with self:
            return await fn(*args, **kwargs)

    async def __aenter__(self) -> CircuitBreaker:
        await trio.lowlevel.checkpoint()
        self.acquire()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.record_success()
        elif isinstance(exc, self.failure_types):
            self.record_failure()
        else:
            self.release()
