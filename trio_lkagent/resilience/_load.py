"""How loaded the worker is: the number it reports to the server and its admission rule."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .._exceptions import ConfigurationError
from .._options import JobType

if TYPE_CHECKING:
    from .._worker import WorkerStatistics

__all__ = ["CustomLoadCalculator", "DefaultLoadCalculator", "LoadCalculator", "LoadScope"]


@runtime_checkable
class LoadCalculator(Protocol):
    """Decides the load a worker reports and whether it takes a job.

    The worker calls :meth:`calculate_load` every ``WorkerOptions.load_interval``
    with a fresh :class:`~trio_lkagent.WorkerStatistics` (its ``resources`` holds
    the latest CPU/memory sample) and reports the result, clamped to [0, 1]; at
    or above ``load_threshold`` it reports WS_FULL. :meth:`should_accept_job`
    is asked for every availability request; False declines it. Both are
    called on the event loop and must not block.
    """

    def calculate_load(self, stats: WorkerStatistics) -> float:
        """The load in [0, 1]."""
        ...

    def should_accept_job(self, job_type: JobType, load: float) -> bool:
        """Whether to take a job of *job_type* at the current *load*."""
        ...


class LoadScope(enum.Enum):
    """What :class:`DefaultLoadCalculator` measures CPU and memory of."""

    #: The machine, or the container when cgroup limits apply (the default):
    #: right when the worker is alone on its machine or container.
    MACHINE = "machine"
    #: This worker's process tree, against the machine's (container's) capacity:
    #: right when several services share a machine.
    PROCESS = "process"


class DefaultLoadCalculator:
    """Load from CPU, memory and jobs, weighted, smoothed so one spike does not flip WS_FULL.

    ``load = (cpu_weight * cpu + memory_weight * memory + job_weight * jobs) /
    (sum of weights)``, each term a fraction in [0, 1] (``jobs`` is running plus
    reserved over ``max_jobs``), then an exponential moving average:
    ``smoothed = smoothing * load + (1 - smoothing) * previous``.

    Args:
        cpu_weight: Weight of CPU use.
        memory_weight: Weight of memory use.
        job_weight: Weight of the job ratio.
        scope: Measure the machine/container (default) or this process tree.
        smoothing: Weight of the newest value in the moving average, in (0, 1]
            (1 disables smoothing).
        accept_below: :meth:`should_accept_job` is True below this load.
    """

    def __init__(
        self,
        *,
        cpu_weight: float = 0.4,
        memory_weight: float = 0.3,
        job_weight: float = 0.3,
        scope: LoadScope = LoadScope.MACHINE,
        smoothing: float = 0.5,
        accept_below: float = 1.0,
    ) -> None:
        weights = (cpu_weight, memory_weight, job_weight)
        if any(w < 0 or math.isnan(w) for w in weights) or sum(weights) <= 0:
            raise ConfigurationError(f"weights must be >= 0 with a positive sum, got {weights}")
        if not 0 < smoothing <= 1:
            raise ConfigurationError(f"smoothing must be in (0, 1], got {smoothing!r}")
        self.cpu_weight = cpu_weight
        self.memory_weight = memory_weight
        self.job_weight = job_weight
        self.scope = LoadScope(scope)
        self.smoothing = smoothing
        self.accept_below = accept_below
        self._smoothed: float | None = None

    def raw_load(self, stats: WorkerStatistics) -> float:
        """The weighted load of *stats*, before smoothing."""
        res = stats.resources
        cpu = memory = 0.0
        if res is not None:
            if self.scope is LoadScope.MACHINE:
                cpu = res.machine_cpu_percent / 100.0
                memory = res.machine_memory_percent / 100.0
            else:
                cpu = res.process_cpu_fraction
                memory = res.process_memory_fraction
        jobs = (stats.running_jobs + stats.reserved_jobs) / max(stats.max_jobs, 1)
        total = self.cpu_weight + self.memory_weight + self.job_weight
        value = (
            self.cpu_weight * cpu + self.memory_weight * memory + self.job_weight * jobs
        ) / total
        return min(1.0, max(0.0, value))

    def calculate_load(self, stats: WorkerStatistics) -> float:
        """The smoothed weighted load."""
        raw = self.raw_load(stats)
        previous = self._smoothed
        self._smoothed = (
            raw if previous is None else (self.smoothing * raw + (1 - self.smoothing) * previous)
        )
        return self._smoothed

    def should_accept_job(self, job_type: JobType, load: float) -> bool:
        """True below ``accept_below``."""
        return load < self.accept_below


class CustomLoadCalculator:
    """A :class:`LoadCalculator` from two functions.

    Args:
        calculator: ``stats -> load`` (the ``WorkerOptions.load_fn`` shorthand
            is ``CustomLoadCalculator(calculator=load_fn)``).
        acceptor: ``(job_type, load) -> bool``; default: always accept (the
            worker's ``load_threshold`` and ``max_jobs`` still apply).
    """

    def __init__(
        self,
        calculator: Callable[[WorkerStatistics], float],
        acceptor: Callable[[JobType, float], bool] | None = None,
    ) -> None:
        self.calculator = calculator
        self.acceptor = acceptor

    def calculate_load(self, stats: WorkerStatistics) -> float:
        """``calculator(stats)``."""
        return float(self.calculator(stats))

    def should_accept_job(self, job_type: JobType, load: float) -> bool:
        """``acceptor(job_type, load)``, or True without one."""
        return True if self.acceptor is None else bool(self.acceptor(job_type, load))
