"""The smallest useful trio-lkagent worker.

Against a real LiveKit server (credentials from the environment)::

    LIVEKIT_URL=ws://... LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=... \\
        python examples/minimal_worker.py

With nothing else installed: ``--demo`` starts the in-package LiveKit dev
server in the same process, runs the worker against it, dispatches a few jobs
and prints what happens::

    python examples/minimal_worker.py --demo
"""

from __future__ import annotations

import argparse
import logging
import secrets

import trio

from trio_lkagent import JobContext, JobRequest, Worker, WorkerOptions

AGENT_NAME = "minimal-agent"


async def entrypoint(ctx: JobContext) -> None:
    """One call per job: here, say hello, wait a moment and finish."""
    print(f"[job {ctx.job_id}] running in room {ctx.room_name!r} as {ctx.identity!r}")
    if ctx.job.metadata == "long":
        await ctx.sleep(3600)  # until terminated
    await trio.sleep(0.1)
    print(f"[job {ctx.job_id}] done")


async def on_request(req: JobRequest) -> None:
    """Accept every job under a readable identity."""
    await req.accept(identity=f"minimal-{req.job_id[-6:]}", name="Minimal agent")


def make_worker(options: WorkerOptions) -> Worker:
    """The worker this example runs."""
    return Worker(entrypoint, options, request_handler=on_request)


async def demo() -> None:
    """Run the worker against an in-process dev server and dispatch three jobs."""
    from livekit.protocol import agent as agent_pb

    from trio_lkagent.devserver import open_devserver

    # A fresh secret per run (the LiveKit dev default "secret" is short enough
    # for PyJWT to warn about it).
    secret = secrets.token_urlsafe(32)
    async with open_devserver(api_secret=secret) as server, trio.open_nursery() as nursery:
        print(f"dev server at {server.url} (api key {server.api_key!r})")
        worker = make_worker(
            WorkerOptions(
                url=server.url,
                api_key=server.api_key,
                api_secret=server.api_secret,
                agent_name=AGENT_NAME,
            )
        )
        worker_id = await nursery.start(worker.serve)
        print(f"worker registered as {worker_id}")
        for room in ("demo-a", "demo-b"):
            await server.create_dispatch(room=room, agent_name=AGENT_NAME)
        long = await server.create_dispatch(room="demo-c", agent_name=AGENT_NAME, metadata="long")
        for room in ("demo-a", "demo-b"):
            job = await server.wait_for_job(room=room, status=agent_pb.JS_SUCCESS)
            status = agent_pb.JobStatus.Name(job.job.state.status)
            print(f"server: job {job.job.id} in {room} ended {status}")
        job = await server.wait_for_job(room="demo-c", status=agent_pb.JS_RUNNING)
        print(f"server: terminating job {job.job.id} (dispatch {long.id})")
        await server.terminate_job(job.job.id)
        job = await server.wait_job_status(job.job.id, agent_pb.JS_SUCCESS)
        print(f"server: job {job.job.id} ended {agent_pb.JobStatus.Name(job.job.state.status)}")
        worker.drain()
    print("worker drained; bye")


def main() -> None:
    """Command-line entry: ``--demo`` or a real server from the environment."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="run against an in-process dev server")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING)
    if args.demo:
        trio.run(demo)
        return
    worker = make_worker(WorkerOptions(agent_name=AGENT_NAME))
    try:
        trio.run(worker.serve)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
