"""Resource limits the worker enforces by declining jobs (and, for uptime, by draining)."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from .._exceptions import ConfigurationError
from ._sampler import ResourceSample

__all__ = ["LimitHook", "ResourceLimiter", "ResourceLimits"]

#: ``async def on_memory_limit(reason: str) -> None`` (and the CPU and job ones).
LimitHook = Callable[[str], Awaitable[None]]


def _optional_positive(_inst: object, attr: attrs.Attribute[Any], value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ConfigurationError(f"{attr.name} must be a number > 0 or None, got {value!r}")
    if isinstance(value, float) and math.isnan(value):
        raise ConfigurationError(f"{attr.name} must not be NaN")


@attrs.frozen(kw_only=True)
class ResourceLimits:
    """Limits past which the worker reports WS_FULL and declines jobs (None: no limit).

    Over a limit the worker holds WS_FULL, declines every request with the
    reason (logged, in ``statistics().full_reason`` and ``/worker``), and asks
    ``WorkerOptions.recovery.on_resource_exhausted(resource)``: TERMINATE
    drains it. Back under every limit, it takes jobs again. At ``max_uptime``
    it drains and ``serve`` returns, so a supervisor (``trio-lkagent start
    --processes N``, systemd, Kubernetes) starts a fresh one.

    The ``on_*_limit`` hooks are awaited once each time the limit is crossed.
    """

    #: Resident memory of the worker's process tree, MB.
    max_memory_mb: float | None = attrs.field(default=None, validator=_optional_positive)
    #: CPU of the worker's process tree, percent of the available cores (100 = all).
    max_cpu_percent: float | None = attrs.field(default=None, validator=_optional_positive)
    #: Running jobs.
    max_jobs: int | None = attrs.field(default=None, validator=_optional_positive)
    #: Seconds from ``serve`` to draining.
    max_uptime: float | None = attrs.field(default=None, validator=_optional_positive)
    on_memory_limit: LimitHook | None = None
    on_cpu_limit: LimitHook | None = None
    on_job_limit: LimitHook | None = None


class ResourceLimiter:
    """Checks a :class:`ResourceLimits` against a sample: which limits are exceeded, and why."""

    def __init__(self, limits: ResourceLimits) -> None:
        self.limits = limits

    def check(self, sample: ResourceSample | None, running_jobs: int) -> dict[str, str]:
        """``{resource: reason}`` for every limit exceeded now (empty: all fine)."""
        limits = self.limits
        over: dict[str, str] = {}
        if sample is not None:
            if limits.max_memory_mb is not None and sample.process_memory_mb > limits.max_memory_mb:
                over["memory"] = (
                    f"memory limit: {sample.process_memory_mb:.0f} MB used,"
                    f" max_memory_mb={limits.max_memory_mb:g}"
                )
            cpu = 100.0 * sample.process_cpu_fraction
            if limits.max_cpu_percent is not None and cpu > limits.max_cpu_percent:
                over["cpu"] = (
                    f"CPU limit: {cpu:.0f}% of {sample.cpu_cores:g} core(s),"
                    f" max_cpu_percent={limits.max_cpu_percent:g}"
                )
        if limits.max_jobs is not None and running_jobs >= limits.max_jobs:
            over["jobs"] = f"job limit: {running_jobs} running, max_jobs={limits.max_jobs}"
        return over

    def hook(self, resource: str) -> LimitHook | None:
        """The ``on_<resource>_limit`` hook, if set."""
        return {
            "memory": self.limits.on_memory_limit,
            "cpu": self.limits.on_cpu_limit,
            "jobs": self.limits.on_job_limit,
        }.get(resource)
