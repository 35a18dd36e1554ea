"""Entrypoints and a setup hook for the process-executor tests (importable by job processes).

The job's dispatch metadata picks the behaviour: ``echo`` joins the room and
answers every data packet with ``echo:<payload>:<setup runs in this
process>:<pid>``; ``exit``, ``segv``, ``memory`` and ``fail`` die or fail in
the ways their names say; ``wait`` runs until ended and logs its shutdown.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time

import trio
import trio.lowlevel

from trio_lkagent import JobContext
from trio_lkagent.events import DataReceived
from trio_lkagent.processes import JobProcess

logger = logging.getLogger("tests.process_agents")

SETUP_RUNS = 0


def setup(proc: JobProcess) -> None:
    global SETUP_RUNS
    SETUP_RUNS += 1
    proc.userdata["setup_runs"] = SETUP_RUNS
    proc.userdata["setup_pid"] = os.getpid()


async def async_setup(proc: JobProcess) -> None:
    await trio.lowlevel.checkpoint()
    setup(proc)


def failing_setup(proc: JobProcess) -> None:
    raise RuntimeError("the model file is missing")


async def entrypoint(ctx: JobContext) -> None:
    kind = ctx.job.metadata
    logger.info("job %s starts (%s) in process %d", ctx.job_id, kind, os.getpid())

    async def on_shutdown(reason: str) -> None:
        logger.info("shutdown callback: %s", reason)

    ctx.add_shutdown_callback(on_shutdown)
    if kind == "echo":
        async with ctx.connect() as room:
            async for event in room.events():
                if isinstance(event, DataReceived) and event.payload == b"bye":
                    ctx.shutdown("asked to leave")
                if isinstance(event, DataReceived) and event.topic == "ping":
                    runs = ctx.proc.userdata.get("setup_runs", 0)
                    same = ctx.proc.userdata.get("setup_pid") == os.getpid() == ctx.proc.pid
                    reply = f"echo:{event.payload.decode()}:{runs}:{same}:{os.getpid()}"
                    await room.publish_data(reply.encode(), topic="pong")
    elif kind == "exit":
        os._exit(1)
    elif kind == "segv":
        ctypes.string_at(0)
    elif kind == "memory":
        hog = []
        while True:
            hog.append(bytearray(16 << 20))
            hog[-1][::4096] = b"x" * len(range(0, 16 << 20, 4096))  # touch every page
            await trio.sleep(0.02)
    elif kind == "fail":
        raise ValueError("boom in the child")
    elif kind == "quick":
        pass
    elif kind == "checkpoint":
        await ctx.checkpoint.save("saved_by", os.getpid())
    elif kind == "check-setup":
        if ctx.proc.userdata.get("setup_runs") != 1 or ctx.proc.pid != os.getpid():
            raise AssertionError(f"setup did not run once here: {ctx.proc}")
    elif kind == "stuck":
        logger.info("blocking the event loop")
        time.sleep(3600)  # noqa: ASYNC251 - a job that never checkpoints, on purpose
    else:  # wait
        await trio.sleep_forever()
