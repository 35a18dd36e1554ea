"""The official ``livekit-agents`` worker as a peer: for conformance tests and the bench.

Runs under an environment with ``livekit-agents`` 1.8.9 (it pins another
``livekit`` than this project, so it cannot share our virtual environment;
``.ci/run`` makes one and names its interpreter in
``TRIO_LKAGENT_OFFICIAL_PYTHON``).

Environment: LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET, PEER_AGENT_NAME,
PEER_EVENTS (a file that gets one line per event: ``start <job id> <room>
<perf_counter>`` when an entrypoint starts, ``end <job id> <reason>`` when the
job shuts down). A job whose metadata is ``wait`` (or whose room starts with
``idle-``) runs until the server terminates it; ``connect`` joins the room first
(``ctx.connect()``, real WebRTC), sends ``hello from the official worker`` on
topic ``official`` and then waits; ``connect-shutdown`` joins and then ends its
job itself (``ctx.shutdown("done")``); others end at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from livekit import agents  # type: ignore[import-not-found, unused-ignore]


def _event(line: str) -> None:
    with open(os.environ["PEER_EVENTS"], "a") as f:
        f.write(line + "\n")


async def entrypoint(ctx: agents.JobContext) -> None:
    started = time.perf_counter()
    _event(f"start {ctx.job.id} {ctx.job.room.name} {started}")

    async def on_shutdown(reason: str) -> None:
        _event(f"end {ctx.job.id} {reason or '-'}")

    ctx.add_shutdown_callback(on_shutdown)
    if ctx.job.metadata in ("connect", "connect-shutdown"):
        await ctx.connect()
        _event(f"connected {ctx.job.id} {ctx.room.local_participant.identity}")
        await ctx.room.local_participant.publish_data(
            b"hello from the official worker", topic="official"
        )
        if ctx.job.metadata == "connect":
            await asyncio.Event().wait()
    if ctx.job.metadata == "wait" or ctx.job.room.name.startswith("idle-"):
        await asyncio.Event().wait()
    ctx.shutdown("done")  # the official worker only ends a job on shutdown


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    server = agents.AgentServer(
        ws_url=os.environ["LIVEKIT_URL"],
        api_key=os.environ["LIVEKIT_API_KEY"],
        api_secret=os.environ["LIVEKIT_API_SECRET"],
        load_threshold=float("inf"),
        # PEER_EXECUTOR=process: the official defaults (a process per job, idle
        # processes prewarmed); otherwise threads, its fastest start.
        **(
            {}
            if os.environ.get("PEER_EXECUTOR") == "process"
            else {"job_executor_type": agents.JobExecutorType.THREAD, "num_idle_processes": 0}
        ),
        port=0,
        host="127.0.0.1",
    )
    server.rtc_session(agent_name=os.environ["PEER_AGENT_NAME"])(entrypoint)
    asyncio.run(server.run(devmode=True))


if __name__ == "__main__":
    main()
