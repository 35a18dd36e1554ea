"""Soak: N jobs through one worker under periodic faults; prints what survived.

    python bench/soak.py [--jobs 1000] [--concurrency 20] [--max-seconds 180]

One process, real clock: the in-package dev server and one worker
(``max_jobs=--concurrency``). Jobs are dispatched in a steady stream (each runs
50-250 ms, one in ten fails on purpose) while a fault task, every
``--fault-every`` seconds, in turn drops the worker's socket without a close
frame, sends it malformed frames, and terminates a running job. It stops by
itself once every job is dispatched and settled, or after ``--max-seconds``.

Printed figures:

* jobs/s (dispatched jobs that ran, over the wall time);
* final statuses the worker sent vs jobs it started (must be equal: exactly one
  each, counted from everything the server received, including reports it
  ignored after a reconnect, as Go does);
* lost jobs: started by the worker, no final status ever sent;
* not placed: dispatches that found no available worker (during a reconnect,
  or all slots busy) -- the server's JS_FAILED/JSR_NO_CAPACITY, not a loss;
* over capacity: times running + reserved exceeded max_jobs (must be 0);
* RSS, fds and threads of the process, and the worker's Trio tasks, before and
  after (RSS includes the dev server: same process);
* reconnects, worst and p99 dispatch latency (dispatch call -> entrypoint start).

Figures measured on a machine shared with other work are noisy.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import threading
import time

import trio
from livekit.protocol import agent as agent_pb

from trio_lkagent import JobContext, ReconnectPolicy, Worker, WorkerOptions
from trio_lkagent.devserver import open_devserver

AGENT = "soak"
FINAL = (agent_pb.JS_SUCCESS, agent_pb.JS_FAILED)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def count_tasks(root: trio.lowlevel.Task) -> int:
    todo, n = [root], 0
    while todo:
        task = todo.pop()
        n += 1
        for nursery in task.child_nurseries:
            todo.extend(nursery.child_tasks)
    return n


async def soak(args: argparse.Namespace) -> None:
    dispatched_at: dict[str, float] = {}
    latencies: list[float] = []

    async def entrypoint(ctx: JobContext) -> None:
        t0 = dispatched_at.get(ctx.room_name)
        if t0 is not None:
            latencies.append(time.perf_counter() - t0)
        n = int(ctx.room_name.rsplit("-", 1)[1])
        await trio.sleep(0.05 + (n % 5) * 0.05)
        if n % 10 == 9:
            raise RuntimeError("fails on purpose")

    async with open_devserver(
        host="127.0.0.1",
        port=0,
        api_key="soak",
        api_secret="soak-secret-0123456789abcdef0123",
        retain_ended=None,
        job_request_timeout=10,
    ) as server:
        options = WorkerOptions(
            url=server.url,
            api_key="soak",
            api_secret="soak-secret-0123456789abcdef0123",
            agent_name=AGENT,
            max_jobs=args.concurrency,
            # A drop comes every third fault: a connection counts as stable after one
            # fault period (default 30 s), or the growing backoff (up to 30 s) would
            # keep the worker offline most of the run.
            reconnect=ReconnectPolicy(stable_after=args.fault_every),
        )
        worker = Worker(entrypoint, options)
        over_capacity = 0
        faults = {"drops": 0, "garbage": 0, "terminations": 0}
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            (serve_task,) = [t for t in nursery.child_tasks if t.name.endswith("Worker.serve")]
            await trio.sleep(0.5)
            before = (
                rss_mb(),
                len(os.listdir("/proc/self/fd")),
                threading.active_count(),
                count_tasks(serve_task),
            )

            async def watch() -> None:
                nonlocal over_capacity
                while True:
                    s = worker.statistics()
                    if s.running_jobs + s.reserved_jobs > s.max_jobs:
                        over_capacity += 1
                    await trio.sleep(0.005)

            fault_scope = trio.CancelScope()

            async def fault_loop() -> None:
                with fault_scope:
                    await _faults()

            async def _faults() -> None:
                step = 0
                while True:
                    await trio.sleep(args.fault_every)
                    wid = worker.worker_id
                    record = server.workers.get(wid or "")
                    if wid is None or record is None or not record.connected:
                        continue  # between connections: nothing to hurt
                    try:
                        if step % 3 == 0:
                            await server.drop_worker(wid)
                            faults["drops"] += 1
                        elif step % 3 == 1:
                            for frame in (b"\xff\xfe", "{oops", b"\x08\x96\x01"):
                                await server.send_raw(wid, frame)
                            faults["garbage"] += 3
                        else:
                            running = [
                                j
                                for j in server.jobs.values()
                                if j.status == agent_pb.JS_RUNNING and j.worker_id == wid
                            ]
                            if running:
                                await server.terminate_job(running[0].id)
                                faults["terminations"] += 1
                    except (KeyError, trio.ClosedResourceError):
                        pass
                    step += 1

            nursery.start_soon(watch)
            nursery.start_soon(fault_loop)
            t_start = time.perf_counter()
            deadline = trio.current_time() + args.max_seconds
            for n in range(args.jobs):
                # A client dispatches while the worker is there and has room
                # (requests the server has not resolved yet count against it too).
                while True:
                    s = worker.statistics()
                    unresolved = sum(
                        1 for j in server.jobs.values() if not j.launched and not j.ended
                    )
                    busy = s.running_jobs + s.reserved_jobs + unresolved  # (overlaps: cautious)
                    if s.registered and busy < args.concurrency:
                        break
                    await trio.sleep(0.005)
                room = f"soak-{n}"
                dispatched_at[room] = time.perf_counter()
                await server.create_dispatch(room=room, agent_name=AGENT)
                if trio.current_time() > deadline:
                    break
            fault_scope.cancel()  # the faults stop with the dispatches; the worker settles
            with trio.move_on_at(deadline):
                # Polling the worker's statistics is what a monitoring client does.
                while worker.statistics().running_jobs or worker.statistics().reserved_jobs:  # noqa: ASYNC110
                    await trio.sleep(0.05)
                while not worker.statistics().registered:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            elapsed = time.perf_counter() - t_start
            await trio.sleep(0.5)
            stats = worker.statistics()
            print(f"worker status at the end   {stats.status}")
            after = (
                rss_mb(),
                len(os.listdir("/proc/self/fd")),
                threading.active_count(),
                count_tasks(serve_task),
            )
            nursery.cancel_scope.cancel()

        jobs = [j for j in server.jobs.values() if j.room_name.startswith("soak-")]
        started = [j for j in jobs if j.launched]
        finals = 0
        lost = 0
        doubled = 0
        for job in started:
            mine = [
                u
                for _, u in job.updates + job.ignored_updates + job.late_updates
                if u.status in FINAL
            ]
            finals += len(mine)
            lost += not mine
            doubled += len(mine) > 1
        not_placed = sum(1 for j in jobs if j.job.state.reason == agent_pb.JSR_NO_CAPACITY)
        lat = sorted(latencies)
        print(f"jobs created by server    {len(jobs)}  ({args.jobs} dispatches)")
        print(
            f"jobs started (worker)     {stats.jobs_started}  (server saw {len(started)} launched)"
        )
        print(f"wall time                 {elapsed:.1f} s")
        print(f"jobs/s                    {stats.jobs_started / elapsed:.1f}")
        produced = stats.jobs_succeeded + stats.jobs_failed
        print(f"final statuses produced   {produced} / {stats.jobs_started} jobs started")
        print(f"final statuses received   {finals} / {len(started)} launched  (doubled: {doubled})")
        print(f"lost jobs                 {stats.jobs_started - produced}  (no final status)")
        print(
            f"reports lost in transit   {lost - (len(started) - stats.jobs_started)}"
            "  (sent as the server cut the socket)"
        )
        print(
            f"assignments lost          {len(started) - stats.jobs_started}"
            "  (sent as the server cut the socket)"
        )
        print(f"not placed (no capacity)  {not_placed}")
        print(f"over capacity samples     {over_capacity}")
        print(f"faults                    {faults}")
        print(f"reconnects                {stats.reconnects}")
        if lat:
            p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
            print(
                f"dispatch latency          p50 {statistics.median(lat) * 1e3:.1f} ms,"
                f" p99 {p99 * 1e3:.1f} ms, worst {lat[-1] * 1e3:.1f} ms"
            )
        print(f"RSS MB   before/after     {before[0]:.1f} / {after[0]:.1f}")
        print(f"fds      before/after     {before[1]} / {after[1]}")
        print(f"threads  before/after     {before[2]} / {after[2]}")
        print(f"tasks    before/after     {before[3]} / {after[3]}  (the worker's tree)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--fault-every", type=float, default=1.0)
    parser.add_argument("--max-seconds", type=float, default=180.0)
    parser.add_argument("--verbose", action="store_true", help="log worker errors")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.CRITICAL)
    trio.run(soak, args)


if __name__ == "__main__":
    main()
