"""Per-job processes: isolation for jobs that must not take each other down.

``WorkerOptions(job_executor=JobExecutor.PROCESS)`` runs each job in its own
process, taken from a pool of ``num_idle_processes`` prewarmed ones (the
agent's modules imported, the setup hook run). The job keeps the same
:class:`~trio_lkagent.JobContext` API; a crash, a native abort or the memory
limit fails that job only. See docs/processes.md for when to choose it.
"""

from typing import TYPE_CHECKING, Any

from .._exceptions import JobProcessError as JobProcessError
from .._options import JobExecutor as JobExecutor
from ._proc import JobProcess as JobProcess
from ._proc import SetupFn as SetupFn

# The pool itself loads when a worker with the process executor starts.
if TYPE_CHECKING:
    from ._pool import JobProcessInfo as JobProcessInfo
    from ._pool import ProcessPoolStatistics as ProcessPoolStatistics

_LAZY = {"JobProcessInfo": "._pool", "ProcessPoolStatistics": "._pool"}

__all__ = [
    "JobExecutor",
    "JobProcess",
    "JobProcessError",
    "JobProcessInfo",
    "ProcessPoolStatistics",
    "SetupFn",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
