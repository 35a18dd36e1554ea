"""A counting agent for the kill -9 resume tests (run with ``trio-lkagent start``).

Each job loads ``count`` from its checkpoint (0 when fresh), prints whether it
resumed, then counts up forever, saving every step and printing it once saved.
"""

from __future__ import annotations

import trio

from trio_lkagent import JobContext, Worker, WorkerOptions


async def entrypoint(ctx: JobContext) -> None:
    count = await ctx.checkpoint.load("count", 0)
    print(f"job {ctx.job_id} room {ctx.room_name} resumed={ctx.resumed} count={count}", flush=True)
    while True:
        count += 1
        await ctx.checkpoint.save("count", count)
        print(f"saved count={count}", flush=True)
        await trio.sleep(0.02)


worker = Worker(entrypoint, WorkerOptions(agent_name="counter"))
