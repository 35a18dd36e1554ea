"""Resource health: memory, CPU, Trio tasks, threads, file descriptors; OOM and leak events."""

from __future__ import annotations

import collections
import enum
import itertools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import attrs
import trio

from .._exceptions import ConfigurationError
from ._sampler import ResourceSample, ResourceSampler

__all__ = [
    "ResourceEvent",
    "ResourceEventKind",
    "ResourceHealth",
    "ResourceMonitor",
    "ResourceStatus",
    "ResourceThresholds",
    "count_trio_tasks",
    "open_resource_monitor",
]

logger = logging.getLogger("trio_lkagent.resources")

#: Events kept for a slow reader of :attr:`ResourceMonitor.events`; later ones are
#: dropped (and counted).
EVENT_BUFFER = 64


class ResourceHealth(enum.IntEnum):
    """How close to its limits the worker is (ordered: ``CRITICAL > WARNING > GOOD``)."""

    GOOD = 0
    WARNING = 1
    CRITICAL = 2


@attrs.frozen
class ResourceThresholds:
    """Where :class:`ResourceHealth` changes; the defaults are the seeds'.

    GOOD below ``memory_warning`` % memory and ``tasks_warning`` Trio tasks;
    WARNING up to ``memory_critical`` % / ``tasks_critical`` tasks; CRITICAL above.
    """

    memory_warning: float = 80.0
    memory_critical: float = 90.0
    tasks_warning: int = 5000
    tasks_critical: int = 8000
    #: Trio tasks added over ``leak_samples`` samples with no job added: a leak.
    leak_growth: int = 100
    leak_samples: int = 5

    def __attrs_post_init__(self) -> None:
        if not 0 < self.memory_warning <= self.memory_critical:
            raise ConfigurationError("need 0 < memory_warning <= memory_critical")
        if not 0 < self.tasks_warning <= self.tasks_critical:
            raise ConfigurationError("need 0 < tasks_warning <= tasks_critical")
        if self.leak_growth < 1 or self.leak_samples < 2:
            raise ConfigurationError("need leak_growth >= 1 and leak_samples >= 2")


@attrs.frozen
class ResourceStatus:
    """One reading of :class:`ResourceMonitor`."""

    #: Memory counted against the limit, in MB (the container's or machine's use,
    #: or this process tree's when an explicit ``memory_limit_mb`` was given).
    memory_used_mb: float
    memory_limit_mb: float
    memory_percent: float
    #: Resident memory of this worker's process tree, MB.
    process_memory_mb: float
    #: CPU of the process tree, percent of one core.
    cpu_percent: float
    #: Trio tasks in this run (the seeds' goroutine count).
    task_count: int
    #: ``ResourceThresholds.tasks_critical``.
    task_limit: int
    thread_count: int
    #: Open file descriptors (-1 where unsupported).
    open_fds: int
    health: ResourceHealth
    oom_risk: bool
    leak_detected: bool
    #: ``time.time()`` of the reading.
    timestamp: float


class ResourceEventKind(enum.Enum):
    """What a :class:`ResourceEvent` reports."""

    #: Memory reached the critical threshold: the worker risks being OOM-killed
    #: (once per crossing).
    OOM_RISK = "oom_risk"
    #: Trio tasks keep growing with no matching job growth.
    TASK_LEAK = "task_leak"
    #: :class:`ResourceHealth` changed (either way).
    HEALTH_CHANGED = "health_changed"


@attrs.frozen
class ResourceEvent:
    """Something the monitor noticed."""

    kind: ResourceEventKind
    status: ResourceStatus
    #: For TASK_LEAK: tasks added over the window; for others 0.
    count: int = 0


def count_trio_tasks() -> int:
    """Tasks in the current Trio run (walks the task tree from the root)."""
    stack = [trio.lowlevel.current_root_task()]
    count = 0
    while stack:
        task = stack.pop()
        if task is None:
            continue
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


OomCallback = Callable[[ResourceStatus], Awaitable[None]]
LeakCallback = Callable[[int], Awaitable[None]]


class ResourceMonitor:
    """Reads resource use, grades it GOOD/WARNING/CRITICAL, reports OOM risk and task leaks.

    Events go to :attr:`events` (a bounded memory channel: read it or not,
    the monitor never blocks; events beyond its buffer are dropped and
    counted) and to the optional async callbacks ``on_oom(status)`` and
    ``on_leak(count)``. Run it with :func:`open_resource_monitor`; every worker
    also has one (``worker.resource_monitor``) fed by its own sampler.

    Args:
        thresholds: Where the health levels change.
        memory_limit_mb: Grade this process tree's memory against this many MB
            (default: the container's or machine's memory use against its limit).
        jobs: Returns the number of running jobs (for leak detection: task
            growth that comes with job growth is not a leak).
        on_oom: ``async def on_oom(status)``, awaited on each OOM-risk event.
        on_leak: ``async def on_leak(count)``, awaited on each leak event.
    """

    def __init__(
        self,
        *,
        thresholds: ResourceThresholds | None = None,
        memory_limit_mb: float | None = None,
        jobs: Callable[[], int] | None = None,
        on_oom: OomCallback | None = None,
        on_leak: LeakCallback | None = None,
    ) -> None:
        self.thresholds = thresholds or ResourceThresholds()
        self.memory_limit_mb = memory_limit_mb
        self._jobs = jobs or (lambda: 0)
        self.on_oom = on_oom
        self.on_leak = on_leak
        self._send, self.events = trio.open_memory_channel[ResourceEvent](EVENT_BUFFER)
        self._status: ResourceStatus | None = None
        self._history: collections.deque[tuple[int, int]] = collections.deque(
            maxlen=self.thresholds.leak_samples
        )
        self.events_dropped = 0

    def status(self) -> ResourceStatus | None:
        """The latest reading (None before the first)."""
        return self._status

    def grade(self, sample: ResourceSample, task_count: int) -> ResourceStatus:
        """Grade *sample* (pure: no events, no state change)."""
        t = self.thresholds
        if self.memory_limit_mb is not None:
            limit = float(self.memory_limit_mb)
            used = sample.process_memory_mb
        else:
            limit = sample.memory_limit_mb
            used = limit * sample.machine_memory_percent / 100.0
        percent = 100.0 * used / limit if limit > 0 else 0.0
        if percent > t.memory_critical or task_count > t.tasks_critical:
            health = ResourceHealth.CRITICAL
        elif percent >= t.memory_warning or task_count >= t.tasks_warning:
            health = ResourceHealth.WARNING
        else:
            health = ResourceHealth.GOOD
        return ResourceStatus(
            memory_used_mb=used,
            memory_limit_mb=limit,
            memory_percent=percent,
            process_memory_mb=sample.process_memory_mb,
            cpu_percent=sample.process_cpu_percent,
            task_count=task_count,
            task_limit=t.tasks_critical,
            thread_count=sample.threads,
            open_fds=sample.open_fds,
            health=health,
            oom_risk=percent >= t.memory_critical,
            leak_detected=False,
            timestamp=sample.timestamp,
        )

    def update(self, sample: ResourceSample, task_count: int) -> list[ResourceEvent]:
        """Take a new reading; returns the events it raised (also queued on :attr:`events`)."""
        status = self.grade(sample, task_count)
        jobs = self._jobs()
        self._history.append((task_count, jobs))
        leak = 0
        t = self.thresholds
        if len(self._history) == t.leak_samples:
            tasks = [h[0] for h in self._history]
            growth = tasks[-1] - tasks[0]
            steady = all(b >= a for a, b in itertools.pairwise(tasks))
            if steady and growth >= t.leak_growth and self._history[-1][1] <= self._history[0][1]:
                leak = growth
                self._history.clear()  # report once per window
        if leak:
            status = attrs.evolve(status, leak_detected=True)
        previous = self._status
        self._status = status
        events: list[ResourceEvent] = []
        changed = status.health is not (
            ResourceHealth.GOOD if previous is None else previous.health
        )
        if changed:
            events.append(ResourceEvent(ResourceEventKind.HEALTH_CHANGED, status))
        if status.oom_risk and (previous is None or not previous.oom_risk):
            events.append(ResourceEvent(ResourceEventKind.OOM_RISK, status))
        if leak:
            events.append(ResourceEvent(ResourceEventKind.TASK_LEAK, status, leak))
        for event in events:
            self._log(event)
            try:
                self._send.send_nowait(event)
            except trio.WouldBlock:
                self.events_dropped += 1
        return events

    def _log(self, event: ResourceEvent) -> None:
        s = event.status
        if event.kind is ResourceEventKind.OOM_RISK:
            logger.warning(
                "OOM risk: memory %.0f/%.0f MB (%.1f%%)",
                s.memory_used_mb,
                s.memory_limit_mb,
                s.memory_percent,
            )
        elif event.kind is ResourceEventKind.TASK_LEAK:
            logger.warning(
                "task leak suspected: %d Trio tasks added with no new job (now %d)",
                event.count,
                s.task_count,
            )
        else:
            logger.info("resource health: %s", s.health.name)

    async def dispatch(self, events: list[ResourceEvent]) -> None:
        """Await the callbacks for *events* (failures are logged, not raised)."""
        for event in events:
            try:
                if event.kind is ResourceEventKind.OOM_RISK and self.on_oom is not None:
                    await self.on_oom(event.status)
                elif event.kind is ResourceEventKind.TASK_LEAK and self.on_leak is not None:
                    await self.on_leak(event.count)
            except Exception:
                logger.exception("resource monitor callback failed")

    async def run(
        self,
        interval: float = 5.0,
        *,
        sampler: ResourceSampler | None = None,
        task_status: trio.TaskStatus[ResourceMonitor] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Sample every *interval* seconds until cancelled (the lower tier of
        :func:`open_resource_monitor`)."""
        if not (interval > 0 and math.isfinite(interval)):
            raise ConfigurationError(f"interval must be a finite number > 0, got {interval!r}")
        taker = sampler if sampler is not None else ResourceSampler()
        started = False
        while True:
            sample = taker.sample()
            events = self.update(sample, count_trio_tasks())
            if not started:
                started = True
                task_status.started(self)
            await self.dispatch(events)
            await trio.sleep(interval)


@asynccontextmanager
async def open_resource_monitor(
    *,
    interval: float = 5.0,
    thresholds: ResourceThresholds | None = None,
    memory_limit_mb: float | None = None,
    jobs: Callable[[], int] | None = None,
    on_oom: OomCallback | None = None,
    on_leak: LeakCallback | None = None,
) -> AsyncIterator[ResourceMonitor]:
    """Monitor this process's resources while the block runs.

    ::

        async with open_resource_monitor(interval=2) as monitor:
            print(monitor.status())
            async for event in monitor.events: ...

    The first reading is taken before the block starts. See :class:`ResourceMonitor`.
    """
    monitor = ResourceMonitor(
        thresholds=thresholds,
        memory_limit_mb=memory_limit_mb,
        jobs=jobs,
        on_oom=on_oom,
        on_leak=on_leak,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run, interval)
        try:
            yield monitor
        finally:
            nursery.cancel_scope.cancel()
            monitor._send.close()
