"""The process executor: dispatch latency warm and cold, memory per process.

    python bench/bench_processes.py [--jobs 30]

The dev server and the worker run in this process; job processes are its
fork server's children. Figures:

* availability -> entrypoint: from the moment the dev server hands the
  availability request to the WebSocket to the entrypoint's first line in the
  job process (``time.perf_counter()``, CLOCK_MONOTONIC, shared by processes on
  Linux), p50/p99 over ``--jobs`` jobs run one at a time:
  - task executor (reference),
  - process executor, warm: ``num_idle_processes=4``, the pool refilled
    before each job,
  - process executor, cold: ``num_idle_processes=0`` (each job starts its
    process: a fork from the fork server, which has the modules imported);
* PSS (proportional set size: shared pages divided among the sharers, from
  /proc/<pid>/smaps_rollup) of each idle process, and of a process running a
  job that joined a room (livekit.rtc loaded, WebRTC up).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import trio

MARKS = os.environ.get("BENCH_MARKS", "")


async def entrypoint(ctx: object) -> None:
    """Notes when it started; ``echo`` joins the room and waits."""
    started = time.perf_counter()
    from trio_lkagent import JobContext

    assert isinstance(ctx, JobContext)
    with open(os.environ["BENCH_MARKS"], "a") as f:  # noqa: ASYNC230 - one short line
        f.write(f"{ctx.job_id} {started}\n")
    if ctx.job.metadata == "room":
        async with ctx.connect():
            await trio.sleep_forever()


def pss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def forkserver_children() -> list[int]:
    from multiprocessing import forkserver

    server = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == server:
                pids.append(int(entry.name))
    return pids


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def dispatch_latency(executor: str, idle: int, jobs: int, marks: str) -> list[float]:
    from livekit.protocol import agent as agent_pb

    from trio_lkagent import Worker, WorkerOptions
    from trio_lkagent.devserver import open_devserver
    from trio_lkagent.devserver._agent_service import ServerWorker
    from trio_lkagent.processes import JobExecutor

    sent: dict[str, float] = {}
    original = ServerWorker.send

    async def timed_send(self: ServerWorker, message: agent_pb.ServerMessage) -> bool:
        if message.WhichOneof("message") == "availability":
            sent[message.availability.job.id] = time.perf_counter()
        return await original(self, message)

    ServerWorker.send = timed_send  # type: ignore[method-assign]
    try:
        async with open_devserver() as server, trio.open_nursery() as nursery:
            opts = WorkerOptions(
                url=server.url,
                api_key=server.api_key,
                api_secret=server.api_secret,
                agent_name="bench",
                job_executor=JobExecutor(executor),
                num_idle_processes=idle,
            )
            worker = Worker(entrypoint, opts)
            await nursery.start(worker.serve)
            for i in range(jobs):
                if executor == "process":
                    while worker.statistics().processes.idle < idle:  # type: ignore[union-attr]  # noqa: ASYNC110
                        await trio.sleep(0.01)
                room = f"lat-{executor}-{idle}-{i}"
                await server.create_dispatch(room, "bench", metadata="quick")
                await server.wait_for_job(room=room, status=agent_pb.JS_SUCCESS)
            nursery.cancel_scope.cancel()
    finally:
        ServerWorker.send = original  # type: ignore[method-assign]
    started = dict(line.split() for line in Path(marks).read_text().splitlines())  # noqa: ASYNC240
    return [(float(started[j]) - t) * 1e3 for j, t in sent.items() if j in started]


async def memory(marks: str) -> tuple[list[int], list[int]]:
    from livekit.protocol import agent as agent_pb

    from trio_lkagent import Worker, WorkerOptions
    from trio_lkagent.devserver import open_devserver
    from trio_lkagent.processes import JobExecutor

    async with open_devserver() as server, trio.open_nursery() as nursery:
        opts = WorkerOptions(
            url=server.url,
            api_key=server.api_key,
            api_secret=server.api_secret,
            agent_name="bench",
            job_executor=JobExecutor.PROCESS,
            num_idle_processes=4,
        )
        worker = Worker(entrypoint, opts)
        await nursery.start(worker.serve)
        while worker.statistics().processes.idle < 4:  # type: ignore[union-attr]  # noqa: ASYNC110
            await trio.sleep(0.05)
        await trio.sleep(1)
        idle = [pss_kb(pid) for pid in forkserver_children()]
        for i in range(2):
            await server.create_dispatch(f"mem-{i}", "bench", metadata="room")
            await server.wait_for_job(room=f"mem-{i}", status=agent_pb.JS_RUNNING)
        while len(worker.statistics().processes.running) < 2:  # type: ignore[union-attr]  # noqa: ASYNC110
            await trio.sleep(0.05)
        await trio.sleep(3)  # joined the room
        running_pids = [p.pid for p in worker.statistics().processes.running.values()]  # type: ignore[union-attr]
        running = [pss_kb(pid) for pid in running_pids]
        nursery.cancel_scope.cancel()
    return idle, running


async def main(jobs: int) -> None:
    marks = tempfile.mktemp(prefix="lk-bench-proc-")
    os.environ["BENCH_MARKS"] = marks
    Path(marks).touch()  # noqa: ASYNC240
    rows = [
        ("task executor", "task", 0),
        ("process executor, warm (4 idle)", "process", 4),
        ("process executor, cold (0 idle)", "process", 0),
    ]
    print(f"availability -> entrypoint, {jobs} jobs one at a time (ms):")
    for title, executor, idle in rows:
        latencies = await dispatch_latency(executor, idle, jobs, marks)
        print(
            f"  {title:<34} p50 {pct(latencies, 50):7.2f}  p99 {pct(latencies, 99):7.2f}"
            f"  (n={len(latencies)})"
        )
    idle, running = await memory(marks)
    print("PSS per process (MB):")
    print(
        f"  idle job process                   {statistics.mean(idle) / 1024:7.1f}  (n={len(idle)})"
    )
    print(
        f"  job process in a room              {statistics.mean(running) / 1024:7.1f}"
        f"  (n={len(running)})"
    )
    print(f"  this worker process (for scale)    {pss_kb(os.getpid()) / 1024:7.1f}")
    os.unlink(marks)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=30)
    args = parser.parse_args()
    trio.run(main, args.jobs)
