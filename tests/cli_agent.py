"""Targets for the CLI tests (run as ``trio-lkagent start tests/cli_agent.py[:attr]``).

``worker`` is what the CLI finds by default; ``entrypoint`` is the same agent
without options of its own. A job runs until the file named by its metadata
exists (so a test decides when it ends, with no clock involved).
"""

from __future__ import annotations

import logging
from pathlib import Path

import trio

from trio_lkagent import JobContext, Worker, WorkerOptions

logger = logging.getLogger("cli_agent")


async def entrypoint(ctx: JobContext) -> None:
    """Print, then wait for the release file named by the job's metadata."""
    print(f"job {ctx.job_id} started in room {ctx.room_name}", flush=True)
    logger.info("job started")
    release = Path(ctx.job.metadata) if ctx.job.metadata else None
    while release is None or not release.exists():  # noqa: ASYNC110 - a file, not a trio event
        await trio.sleep(0.02)
    print(f"job {ctx.job_id} finished", flush=True)


worker = Worker(entrypoint, WorkerOptions(agent_name="cli-worker"))


async def stubborn(ctx: JobContext) -> None:
    """A broken job: it swallows every cancellation and never ends."""
    print(f"job {ctx.job_id} started in room {ctx.room_name}", flush=True)
    while True:
        try:
            await trio.sleep(0.05)
        except trio.Cancelled:  # the bug under test: never do this
            pass


#: ``trio-lkagent start tests/cli_agent.py:stubborn_worker``: drain and grace short.
stubborn_worker = Worker(
    stubborn, WorkerOptions(agent_name="cli-stubborn", drain_timeout=1.0, shutdown_grace=1.0)
)
