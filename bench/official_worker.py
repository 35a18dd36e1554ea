"""The official ``livekit-agents`` worker, as a yardstick for ``bench_dispatch.py``.

Runs under an environment that has ``livekit-agents`` (it pins another
``livekit`` than this project, so it cannot share our virtual environment)::

    python3 -m venv /tmp/official && /tmp/official/bin/pip install livekit-agents==1.8.9
    python bench/bench_dispatch.py --official /tmp/official/bin/python

Environment: LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET, BENCH_AGENT_NAME,
BENCH_MARKS (a file: one ``<job id> <perf_counter>`` line per entrypoint start).
Jobs whose room starts with ``idle-`` stay running until terminated.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from livekit import agents  # type: ignore[import-not-found]


async def entrypoint(ctx: agents.JobContext) -> None:
    started = time.perf_counter()
    with open(os.environ["BENCH_MARKS"], "a") as f:  # noqa: ASYNC230 - one short line
        f.write(f"{ctx.job.id} {started}\n")
    if ctx.job.room.name.startswith("idle-"):
        await asyncio.Event().wait()
    ctx.shutdown("done")  # the official worker only ends a job on shutdown


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    server = agents.AgentServer(
        ws_url=os.environ["LIVEKIT_URL"],
        api_key=os.environ["LIVEKIT_API_KEY"],
        api_secret=os.environ["LIVEKIT_API_SECRET"],
        job_executor_type=agents.JobExecutorType.THREAD,
        load_threshold=float("inf"),
        num_idle_processes=0,
        port=0,
        host="127.0.0.1",
    )
    server.rtc_session(agent_name=os.environ["BENCH_AGENT_NAME"])(entrypoint)
    asyncio.run(server.run(devmode=True))


if __name__ == "__main__":
    main()
