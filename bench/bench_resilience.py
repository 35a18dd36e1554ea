"""What resilience costs a worker: sampler CPU when idle, and added dispatch latency.

    python bench/bench_resilience.py [--jobs 300] [--idle-seconds 20] [--rounds 2]

The dev server runs in a subprocess (``bench_dispatch.py --serve``); the
worker runs here, alternately in two modes, in the same run:

* ``off``: the resilience hooks replaced by no-ops and no sampler task,
  which is the worker as it was before ``trio_lkagent.resilience``;
* ``on``: the worker as shipped (sampler every ``load_interval`` = 2.5 s,
  admission check, byte counters, the recovery/checkpoint wrapper around
  the entrypoint, with the default in-memory checkpoint store).

Figures: dispatch latency (availability request sent by the server ->
entrypoint running, p50/p90/p99 over ``--jobs`` jobs one at a time), the
worker process's CPU time per minute while idle and registered, and the cost
of one resource sample. On a shared machine the figures are noisy: compare
the two modes of one run, not runs.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

HERE = Path(__file__).resolve().parent
AGENT = "bench"


async def _lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[str]:
    buf = b""
    while True:
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            yield line.decode()
        chunk = await stream.receive_some()
        if not chunk:
            return
        buf += chunk


def _patch_off() -> Callable[[], None]:
    """Replace the resilience hooks with no-ops; returns the undo."""
    from trio_lkagent.resilience._runtime import WorkerResilience

    async def no_sampler(self: WorkerResilience) -> None:
        await trio.sleep_forever()

    async def plain_run(
        self: WorkerResilience, entrypoint: Callable[[Any], Awaitable[None]], ctx: Any
    ) -> None:
        await entrypoint(ctx)

    def nothing(self: WorkerResilience, *args: object) -> None:
        return None

    saved = {
        name: getattr(WorkerResilience, name)
        for name in (
            "_sampler_loop",
            "run_entrypoint",
            "refusal",
            "received",
            "sent",
            "job_assigned",
            "update_load",
        )
    }
    WorkerResilience._sampler_loop = no_sampler  # type: ignore[method-assign]
    WorkerResilience.run_entrypoint = plain_run  # type: ignore[method-assign]
    for name in ("refusal", "received", "sent", "job_assigned", "update_load"):
        setattr(WorkerResilience, name, nothing)

    def undo() -> None:
        for name, value in saved.items():
            setattr(WorkerResilience, name, value)

    return undo


async def one_round(mode: str, jobs: int, idle_seconds: float) -> tuple[list[float], float]:
    """Latencies (ms) and idle CPU seconds per minute of one worker in *mode*."""
    from trio_lkagent import JobContext, Worker, WorkerOptions

    undo = _patch_off() if mode == "off" else (lambda: None)
    started: dict[str, float] = {}

    async def entrypoint(ctx: JobContext) -> None:
        started[ctx.job_id] = time.perf_counter()

    try:
        async with trio.open_nursery() as outer:
            cmd = [sys.executable, str(HERE / "bench_dispatch.py"), "--serve"]
            proc: trio.Process = await outer.start(
                functools.partial(
                    trio.run_process,
                    [*cmd, "--jobs", str(jobs), "--idle", "0"],
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
            )
            worker = Worker(entrypoint, options)
            async with trio.open_nursery() as nursery:
                await nursery.start(worker.serve)
                sent = json.loads(await lines.__anext__())["sent"]
                latencies = sorted((started[j] - t) * 1e3 for j, t in sent.items())
                await trio.sleep(1)  # settle
                cpu0, wall0 = time.process_time(), time.monotonic()
                await trio.sleep(idle_seconds)
                cpu = time.process_time() - cpu0
                wall = time.monotonic() - wall0
                await proc.stdin.send_all(b"go\n")
                await lines.__anext__()
                await proc.stdin.send_all(b"stop\n")
                nursery.cancel_scope.cancel()
    finally:
        undo()
    return latencies, cpu / wall * 60


def sample_cost(n: int = 2000) -> float:
    """Milliseconds per ResourceSampler.sample() of this process."""
    from trio_lkagent.resilience import ResourceSampler

    sampler = ResourceSampler()
    sampler.sample()
    t0 = time.perf_counter()
    for _ in range(n):
        sampler.sample()
    return (time.perf_counter() - t0) / n * 1e3


async def hook_cost(n: int = 20000) -> float:
    """Microseconds of worker CPU the hooks add to one dispatch, measured in isolation.

    refusal() at the request, received()/sent() for the four frames of the
    exchange, job_assigned() and the checkpoint setup of run_entrypoint() with
    the default in-memory store.
    """
    from livekit.protocol import agent as agent_pb

    from trio_lkagent import JobContext, Worker, WorkerOptions
    from trio_lkagent._job import AcceptInfo

    async def entrypoint(ctx: JobContext) -> None:
        pass

    worker = Worker(entrypoint, WorkerOptions(url="ws://127.0.0.1:1", api_key="k", api_secret="s"))
    res = worker._resilience
    job = agent_pb.Job(id="AJ_bench", type=agent_pb.JT_ROOM, room={"name": "bench-room"})
    ctx = JobContext(job=job, url="ws://x", token="t", worker_id="AW_x", accept=AcceptInfo("a"))
    t0 = time.perf_counter()
    for _ in range(n):
        res.refusal(job)
        res.received(200)
        res.sent(200)
        res.received(600)
        res.sent(50)
        res.job_assigned()
        await res.run_entrypoint(entrypoint, ctx)
    hooked = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(n):
        await entrypoint(ctx)  # what the worker did before
    plain = time.perf_counter() - t0
    return (hooked - plain) / n * 1e6


async def main(jobs: int, idle_seconds: float, rounds: int) -> None:
    results: dict[str, tuple[list[float], list[float]]] = {"off": ([], []), "on": ([], [])}
    for r in range(rounds):
        for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
            latencies, cpu_per_min = await one_round(mode, jobs, idle_seconds)
            results[mode][0].extend(latencies)
            results[mode][1].append(cpu_per_min)
            print(
                f"  round {r + 1} {mode:3}: p50 {statistics.median(latencies):.3f} ms,"
                f" idle CPU {cpu_per_min * 1e3:.1f} ms/min",
                flush=True,
            )
    print(f"resource sample: {sample_cost():.3f} ms each (every load_interval = 2.5 s)")
    print(f"hooks on the dispatch path, in isolation: {await hook_cost():.1f} µs per job")
    for mode, label in (("off", "without resilience hooks"), ("on", "with resilience")):
        lat = sorted(results[mode][0])

        def pct(p: float, lat: list[float] = lat) -> float:
            return lat[min(len(lat) - 1, int(p / 100 * len(lat)))]

        cpu = results[mode][1]
        print(
            f"{label:26}: dispatch p50 {pct(50):.3f} ms  p90 {pct(90):.3f} ms"
            f"  p99 {pct(99):.3f} ms  (n={len(lat)});"
            f"  idle CPU {statistics.fmean(cpu) * 1e3:.1f} ms per minute"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    trio.run(main, args.jobs, args.idle_seconds, args.rounds)
