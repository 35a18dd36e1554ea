"""Dispatch latency and memory per idle job of the trio-lkagent worker.

    python bench/bench_dispatch.py [--jobs 1000] [--idle 10000]

Two processes, so that each figure belongs to the worker alone:

* the *server* process runs the in-package dev server (this script with
  ``--serve``); it dispatches jobs one at a time and notes, with
  ``time.perf_counter()`` (CLOCK_MONOTONIC, shared by all processes on Linux),
  the moment each availability request is handed to the WebSocket;
* this process runs the worker; its entrypoint notes the moment it starts.

Dispatch latency = entrypoint start - availability request sent (p50/p99 over
``--jobs`` jobs, one at a time). It includes the server's own work for the
answer and the assignment (a Python server here; LiveKit's Go server is faster).

Memory per idle job = growth of this process's RSS while ``--idle`` jobs are
running (each parked in ``trio.sleep_forever()``), divided by their number.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio
import trio.testing

AGENT = "bench"
OFFICIAL_WORKER = str(Path(__file__).resolve().parent.parent / "tests/peers/official_worker.py")


def rss_bytes() -> int:
    """Resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


# -- the server process ----------------------------------------------------------


async def serve(jobs: int, idle: int) -> None:
    from livekit.protocol import agent as agent_pb

    from trio_lkagent.devserver import open_devserver
    from trio_lkagent.devserver._agent_service import ServerWorker

    sent: dict[str, float] = {}
    original_send = ServerWorker.send

    async def timed_send(self: ServerWorker, message: agent_pb.ServerMessage) -> None:
        if message.WhichOneof("message") == "availability":
            sent[message.availability.job.id] = time.perf_counter()
        await original_send(self, message)

    ServerWorker.send = timed_send  # type: ignore[method-assign]
    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())

    def emit(obj: object) -> None:
        print(json.dumps(obj), flush=True)

    async with open_devserver(api_key="bench", api_secret="b" * 40) as server:
        emit({"url": server.url, "api_key": server.api_key, "api_secret": server.api_secret})
        await server.wait_for_worker(agent_name=AGENT)
        for i in range(jobs):
            await server.create_dispatch(room=f"lat-{i}", agent_name=AGENT)
            await server.wait_for_job(room=f"lat-{i}", status=agent_pb.JS_SUCCESS)
        emit({"sent": sent})
        await stdin.receive_some()  # the worker measured its baseline
        async with trio.open_nursery() as nursery:
            for i in range(idle):
                nursery.start_soon(server.create_dispatch, f"idle-{i}", AGENT)
                if i % 200 == 199:
                    await trio.testing.wait_all_tasks_blocked()
        for i in range(idle):
            await server.wait_for_job(room=f"idle-{i}", status=agent_pb.JS_RUNNING)
        emit({"ready": idle})
        await stdin.receive_some()


# -- the worker process ------------------------------------------------------------


async def bench(jobs: int, idle: int) -> None:
    from trio_lkagent import JobContext, Worker, WorkerOptions

    started: dict[str, float] = {}

    async def entrypoint(ctx: JobContext) -> None:
        started[ctx.job_id] = time.perf_counter()
        if ctx.room_name.startswith("idle-"):
            await trio.sleep_forever()

    async with trio.open_nursery() as outer:
        proc: trio.Process = await outer.start(
            functools.partial(
                trio.run_process,
                [sys.executable, __file__, "--serve", "--jobs", str(jobs), "--idle", str(idle)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                check=False,
            )
        )
        assert proc.stdout is not None and proc.stdin is not None
        lines = _lines(proc.stdout)
        info = json.loads(await lines.__anext__())
        options = WorkerOptions(
            url=info["url"],
            api_key=info["api_key"],
            api_secret=info["api_secret"],
            agent_name=AGENT,
            max_jobs=idle + 10,
        )
        worker = Worker(entrypoint, options)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            sent = json.loads(await lines.__anext__())["sent"]
            latencies = sorted((started[j] - t) * 1e3 for j, t in sent.items())
            gc.collect()
            base = rss_bytes()
            await proc.stdin.send_all(b"go\n")
            json.loads(await lines.__anext__())
            while worker.statistics().running_jobs < idle:  # noqa: ASYNC110 - a bench
                await trio.sleep(0.01)
            gc.collect()
            grown = rss_bytes() - base
            running = worker.statistics().running_jobs
            await proc.stdin.send_all(b"stop\n")
            nursery.cancel_scope.cancel()

    _report("trio-lkagent worker", latencies, grown, running)


async def bench_official(python: str, jobs: int, idle: int) -> None:
    """The same measurement with the official livekit-agents worker as the peer."""
    import os
    import tempfile

    marks_path = tempfile.mktemp(prefix="lk-official-marks-")
    async with trio.open_nursery() as outer:
        srv: trio.Process = await outer.start(
            functools.partial(
                trio.run_process,
                [sys.executable, __file__, "--serve", "--jobs", str(jobs), "--idle", str(idle)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                check=False,
            )
        )
        assert srv.stdout is not None and srv.stdin is not None
        lines = _lines(srv.stdout)
        info = json.loads(await lines.__anext__())
        env = dict(
            os.environ,
            LIVEKIT_URL=info["url"],
            LIVEKIT_API_KEY=info["api_key"],
            LIVEKIT_API_SECRET=info["api_secret"],
            PEER_AGENT_NAME=AGENT,
            PEER_EVENTS=marks_path,
        )
        wrk: trio.Process = await outer.start(
            functools.partial(trio.run_process, [python, OFFICIAL_WORKER], env=env, check=False)
        )
        sent = json.loads(await lines.__anext__())["sent"]
        started = _read_marks(marks_path)
        latencies = sorted((started[j] - t) * 1e3 for j, t in sent.items() if j in started)
        base = _tree_rss(wrk.pid)
        await srv.stdin.send_all(b"go\n")
        json.loads(await lines.__anext__())
        while len(_read_marks(marks_path)) < jobs + idle:  # noqa: ASYNC110
            await trio.sleep(0.05)
        grown = _tree_rss(wrk.pid) - base
        await srv.stdin.send_all(b"stop\n")
        wrk.terminate()
    os.unlink(marks_path)
    _report("official livekit-agents worker (thread executor)", latencies, grown, idle)


def _read_marks(path: str) -> dict[str, float]:
    """Entrypoint start times from the official worker's ``start`` event lines."""
    lines = Path(path).read_text().splitlines()
    return {f[1]: float(f[3]) for f in (line.split() for line in lines) if f[0] == "start"}


def _tree_rss(pid: int) -> int:
    """RSS of a process and its children, in bytes."""
    import pathlib

    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            total += int(pathlib.Path(f"/proc/{p}/statm").read_text().split()[1]) * 4096
            for task in pathlib.Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                pids.extend(int(c) for c in children)
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def _report(title: str, latencies: list[float], grown: int, running: int) -> None:
    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))]

    print(title)
    print(
        f"  dispatch latency over {len(latencies)} jobs (availability sent -> entrypoint running):"
    )
    print(
        f"    p50 {pct(50):.3f} ms   p90 {pct(90):.3f} ms   p99 {pct(99):.3f} ms"
        f"   mean {statistics.fmean(latencies):.3f} ms   max {latencies[-1]:.3f} ms"
    )
    print(f"  memory: {running} idle jobs grew the worker's RSS by {grown / 2**20:.1f} MiB")
    print(f"    = {grown / max(1, running) / 1024:.1f} KiB per idle job")


async def _lines(stream: trio.abc.ReceiveStream):  # type: ignore[no-untyped-def]
    buf = b""
    while True:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode()
        chunk = await stream.receive_some()
        if not chunk:
            return
        buf += chunk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs timed one at a time")
    parser.add_argument("--idle", type=int, default=10_000, help="concurrent idle jobs")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--official",
        metavar="PYTHON",
        help="measure the official livekit-agents worker, run by this interpreter",
    )
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, args.jobs, args.idle)
    elif args.official:
        trio.run(bench_official, args.official, args.jobs, args.idle)
    else:
        trio.run(bench, args.jobs, args.idle)


if __name__ == "__main__":
    main()
