"""Per-job processes: isolation for jobs that must not take each other down.

``WorkerOptions(job_executor=JobExecutor.PROCESS)`` runs each job in its own
process, taken from a pool of ``num_idle_processes`` prewarmed ones (the
agent's modules imported, the setup hook run). The job keeps the same
:class:`~trio_lkagent.JobContext` API; a crash, a native abort or the memory
limit fails that job only. See docs/processes.md for when to choose it.
"""

from .._exceptions import JobProcessError as JobProcessError
from .._options import JobExecutor as JobExecutor
from ._pool import JobProcessInfo as JobProcessInfo
from ._pool import ProcessPoolStatistics as ProcessPoolStatistics
from ._proc import JobProcess as JobProcess
from ._proc import SetupFn as SetupFn

__all__ = [
    "JobExecutor",
    "JobProcess",
    "JobProcessError",
    "JobProcessInfo",
    "ProcessPoolStatistics",
    "SetupFn",
]
