"""Shared plumbing of the dev server's components: change notification, counters, faults."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import attrs
import trio

__all__ = ["Changes", "Counters", "Faults"]

T = TypeVar("T")


class Changes:
    """A broadcast "something changed" signal: the dev server's condition variable.

    Every state change calls :meth:`notify`; waiters re-check their predicate.
    No polling, no sleeps.
    """

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        """Wake every waiter."""
        self._event.set()
        self._event = trio.Event()

    async def wait_for(self, predicate: Callable[[], T | None]) -> T:
        """Wait until *predicate* returns something other than None, and return it.

        Always a checkpoint. The predicate may raise to end the wait.
        """
        await trio.lowlevel.checkpoint()
        while True:
            value = predicate()
            if value is not None:
                return value
            await self._event.wait()


@attrs.define
class Counters:
    """Running totals behind ``DevServer.statistics()``."""

    upgrades_accepted: int = 0
    upgrades_rejected: int = 0
    registrations: int = 0
    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    malformed_frames: int = 0
    protocol_violations: int = 0
    ignored_messages: int = 0
    pings: int = 0
    pongs: int = 0
    job_requests: int = 0
    job_requests_failed: int = 0
    terminations_sent: int = 0


@attrs.define
class Faults:
    """Fault injection for reliability tests; change the attributes at any time.

    Attributes:
        reject_upgrade_status: Answer every WebSocket upgrade with this HTTP
            status (401, 403, 503, ...) instead of serving it; None to serve.
        reject_upgrade_body: The body of those answers.
        withhold_register: Never answer ``RegisterWorkerRequest``; the register
            timeout then drops the socket, as the Go server does.
        withhold_pong: Never answer ``WorkerPing``.
        withhold_assignment: Take availability answers as usual but never send the
            ``JobAssignment``: the server believes the job runs (as if the message
            were lost on the way).
        availability_delay: Seconds to wait before each ``AvailabilityRequest``.
            It counts against the job request's deadline (``job_request_timeout``).
    """

    reject_upgrade_status: int | None = None
    reject_upgrade_body: str = "upgrade refused by a dev server fault hook"
    withhold_register: bool = False
    withhold_pong: bool = False
    withhold_assignment: bool = False
    availability_delay: float = 0.0
