"""``ctx.proc``: the process a job runs in, with what the setup hook prepared."""

from __future__ import annotations

import inspect
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import attrs

from .._options import JobExecutor

__all__ = ["JobProcess", "SetupFn", "run_setup"]


@attrs.define
class JobProcess:
    """The process a job's entrypoint runs in (``ctx.proc``).

    With the task executor it is the worker's own process, shared by all jobs;
    with the process executor, the job's own prewarmed process.
    """

    #: Process id.
    pid: int = attrs.field(factory=os.getpid)
    #: Filled by the setup hook (``Worker(setup=...)``) once per process; every
    #: job of the process sees the same dict (load models here, once).
    userdata: dict[str, Any] = attrs.field(factory=dict)
    executor: JobExecutor = JobExecutor.TASK


#: ``def setup(proc: JobProcess) -> None`` or ``async def setup(proc)``.
SetupFn: TypeAlias = Callable[[JobProcess], Awaitable[None] | None]


async def run_setup(setup: SetupFn, proc: JobProcess) -> None:
    """Call the setup hook (sync or async) for *proc*."""
    result = setup(proc)
    if inspect.isawaitable(result):
        await result
