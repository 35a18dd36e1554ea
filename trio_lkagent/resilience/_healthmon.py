"""HealthMonitor: periodic checks; N results in a row flip the worker healthy/unhealthy."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import attrs
import trio

from .._exceptions import ConfigurationError
from ._monitor import ResourceHealth

if TYPE_CHECKING:
    from .._worker import Worker

__all__ = ["HealthCheck", "HealthMonitor", "HealthStatistics"]

logger = logging.getLogger("trio_lkagent.health.monitor")

#: ``async def check() -> None | bool | str``: None/True pass; False, a string
#: (the reason) or an exception fail.
HealthCheck = Callable[[], Awaitable[bool | str | None]]


@attrs.frozen
class HealthStatistics:
    """A snapshot from :meth:`HealthMonitor.statistics`."""

    healthy: bool
    #: Why unhealthy (the failing checks), "" when healthy.
    reason: str
    consecutive_failures: int
    consecutive_successes: int
    checks_run: int
    #: Check name -> last failure reason ("" for a pass).
    last_results: dict[str, str]


class HealthMonitor:
    """Runs health checks every ``check_interval`` s; flips state after N results in a row.

    Healthy at start; ``unhealthy_threshold`` failed rounds in a row make it
    unhealthy (``on_unhealthy(reason)`` is awaited), ``healthy_threshold``
    passing rounds make it healthy again (``on_healthy()``). A round fails when
    any check fails. Given as ``WorkerOptions(health_monitor=...)``, it runs
    while the worker serves, with built-in checks (registered with the server;
    ping RTT under ``max_ping_rtt``; resource health not CRITICAL) besides
    those added with :meth:`add_check`, and the health server's ``/`` answers
    503 with its reason while it is unhealthy.

    Args:
        check_interval: Seconds between rounds.
        healthy_threshold: Passing rounds in a row to become healthy.
        unhealthy_threshold: Failing rounds in a row to become unhealthy.
        check_timeout: Seconds one check may take (then it fails).
        max_ping_rtt: Built-in check: the last WorkerPing round trip under this (None: off).
        on_healthy: ``async def on_healthy()``.
        on_unhealthy: ``async def on_unhealthy(reason)``.
    """

    def __init__(
        self,
        *,
        check_interval: float = 10.0,
        healthy_threshold: int = 2,
        unhealthy_threshold: int = 3,
        check_timeout: float = 5.0,
        max_ping_rtt: float | None = None,
        on_healthy: Callable[[], Awaitable[None]] | None = None,
        on_unhealthy: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        if check_interval <= 0 or check_timeout <= 0:
            raise ConfigurationError("check_interval and check_timeout must be > 0")
        if healthy_threshold < 1 or unhealthy_threshold < 1:
            raise ConfigurationError("healthy_threshold and unhealthy_threshold must be >= 1")
        self.check_interval = check_interval
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold
        self.check_timeout = check_timeout
        self.max_ping_rtt = max_ping_rtt
        self.on_healthy = on_healthy
        self.on_unhealthy = on_unhealthy
        self._checks: dict[str, HealthCheck] = {}
        self._healthy = True
        self._reason = ""
        self._fails = self._passes = self._runs = 0
        self._last: dict[str, str] = {}

    @property
    def healthy(self) -> bool:
        """The current verdict."""
        return self._healthy

    @property
    def reason(self) -> str:
        """Why unhealthy ("" when healthy)."""
        return self._reason

    def add_check(self, name: str, check: HealthCheck) -> None:
        """Run ``await check()`` each round (replaces a check of the same name)."""
        self._checks[name] = check

    def statistics(self) -> HealthStatistics:
        """A frozen snapshot."""
        return HealthStatistics(
            healthy=self._healthy,
            reason=self._reason,
            consecutive_failures=self._fails,
            consecutive_successes=self._passes,
            checks_run=self._runs,
            last_results=dict(self._last),
        )

    def _worker_checks(self, worker: Worker) -> dict[str, HealthCheck]:
        async def registered() -> str | None:
            await trio.lowlevel.checkpoint()
            stats = worker.statistics()
            return None if stats.registered or stats.status == "draining" else "not registered"

        async def ping() -> str | None:
            await trio.lowlevel.checkpoint()
            rtt = worker.statistics().ping_rtt
            if self.max_ping_rtt is not None and rtt is not None and rtt > self.max_ping_rtt:
                return f"ping RTT {rtt * 1000:.0f} ms > {self.max_ping_rtt * 1000:.0f} ms"
            return None

        async def resources() -> str | None:
            await trio.lowlevel.checkpoint()
            status = worker.resource_monitor.status()
            if status is not None and status.health is ResourceHealth.CRITICAL:
                return (
                    f"resources critical: memory {status.memory_percent:.0f}%,"
                    f" {status.task_count} tasks"
                )
            return None

        return {"registered": registered, "ping": ping, "resources": resources}

    async def check_once(self, worker: Worker | None = None) -> bool:
        """Run one round now and update the state; returns whether the round passed."""
        checks = dict(self._worker_checks(worker)) if worker is not None else {}
        checks.update(self._checks)
        failures: list[str] = []
        for name, check in checks.items():
            reason = ""
            try:
                with trio.fail_after(self.check_timeout):
                    result = await check()
                if result is False:
                    reason = "failed"
                elif isinstance(result, str) and result:
                    reason = result
            except trio.TooSlowError:
                reason = f"no answer within {self.check_timeout} s"
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
            self._last[name] = reason
            if reason:
                failures.append(f"{name}: {reason}")
        self._runs += 1
        if failures:
            self._fails += 1
            self._passes = 0
            if self._healthy and self._fails >= self.unhealthy_threshold:
                self._healthy = False
                self._reason = "; ".join(failures)
                logger.warning("unhealthy: %s", self._reason)
                await self._call(self.on_unhealthy, self._reason)
            elif not self._healthy:
                self._reason = "; ".join(failures)
        else:
            self._passes += 1
            self._fails = 0
            if not self._healthy and self._passes >= self.healthy_threshold:
                self._healthy = True
                self._reason = ""
                logger.info("healthy again")
                await self._call(self.on_healthy)
        return not failures

    async def _call(self, callback: Callable[..., Awaitable[None]] | None, *args: str) -> None:
        if callback is None:
            return
        try:
            await callback(*args)
        except Exception:
            logger.exception("health monitor callback %r failed", callback)

    async def run(
        self,
        worker: Worker | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run a round every ``check_interval`` s until cancelled (the worker runs this itself)."""
        task_status.started()
        while True:
            await trio.sleep(self.check_interval)
            await self.check_once(worker)
