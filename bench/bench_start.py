"""Process start -> registered: trio-lkagent's worker next to the official one.

    python bench/bench_start.py [--runs 5]

The dev server runs in this process. Each run starts a fresh worker process
(``python -c ...`` with a minimal agent) and measures the time from just before
the process is spawned until the dev server has the worker registered (its
RegisterWorkerResponse sent). Runs alternate between the two workers so both
see the same machine load. The official livekit-agents worker runs when
``TRIO_LKAGENT_OFFICIAL_PYTHON`` names an interpreter that has it (``.ci/run``
makes one); it uses the thread executor and no idle processes, its fastest
start.

Also printed: ``import trio_lkagent`` alone (median of the runs), and the
worker with ``JobExecutor.PROCESS`` (registration does not wait for the warm
pool; the pool fills while the worker is registered).
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import trio

from trio_lkagent.devserver import open_devserver

OFFICIAL_WORKER = str(Path(__file__).resolve().parent.parent / "tests/peers/official_worker.py")

OURS = """
import os, trio
from trio_lkagent import Worker, WorkerOptions

async def entrypoint(ctx):
    pass

trio.run(Worker(entrypoint, WorkerOptions(agent_name=os.environ["PEER_AGENT_NAME"])).serve)
"""

OURS_PROCESS = """
import os, trio
from trio_lkagent import Worker, WorkerOptions
from trio_lkagent.processes import JobExecutor

async def entrypoint(ctx):
    pass

options = WorkerOptions(
    agent_name=os.environ["PEER_AGENT_NAME"], job_executor=JobExecutor.PROCESS, num_idle_processes=2
)
trio.run(Worker(entrypoint, options).serve)
"""


async def time_to_register(server: object, argv: list[str], agent: str) -> float:
    """Seconds from spawning *argv* to the server having it registered as *agent*."""
    env = dict(
        os.environ,
        LIVEKIT_URL=server.url,  # type: ignore[attr-defined]
        LIVEKIT_API_KEY=server.api_key,  # type: ignore[attr-defined]
        LIVEKIT_API_SECRET=server.api_secret,  # type: ignore[attr-defined]
        PEER_AGENT_NAME=agent,
        PEER_EVENTS=os.devnull,
    )
    async with trio.open_nursery() as nursery:
        started = time.perf_counter()
        proc: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                argv,
                env=env,
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        with trio.fail_after(60):
            await server.wait_for_worker(agent)  # type: ignore[attr-defined]
        elapsed = time.perf_counter() - started
        proc.terminate()
    return elapsed


def import_time() -> float:
    """Wall time of ``import trio_lkagent`` in a fresh interpreter."""
    code = "import time; t = time.perf_counter(); import trio_lkagent; print(time.perf_counter()-t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout)


async def main(runs: int) -> None:
    official = os.environ.get("TRIO_LKAGENT_OFFICIAL_PYTHON")
    kinds: dict[str, list[str]] = {
        "trio-lkagent (task executor)": [sys.executable, "-c", OURS],
        "trio-lkagent (process executor, 2 idle)": [sys.executable, "-c", OURS_PROCESS],
    }
    if official:
        kinds["official livekit-agents 1.8.9 (thread executor)"] = [official, OFFICIAL_WORKER]
        kinds["official livekit-agents 1.8.9 (defaults: processes)"] = [
            "env",
            "PEER_EXECUTOR=process",
            official,
            OFFICIAL_WORKER,
        ]
    else:
        print("TRIO_LKAGENT_OFFICIAL_PYTHON not set: the official worker is skipped")
    results: dict[str, list[float]] = {k: [] for k in kinds}
    imports = []
    async with open_devserver() as server:
        for run in range(runs):
            imports.append(import_time())
            for i, (name, argv) in enumerate(kinds.items()):
                agent = f"start-{run}-{i}"
                results[name].append(await time_to_register(server, argv, agent))
    print(f"process start -> registered, {runs} run(s) each, alternating (median / min / max):")
    for name, values in results.items():
        print(
            f"  {name:<50} {statistics.median(values) * 1e3:7.0f} ms"
            f" / {min(values) * 1e3:5.0f} / {max(values) * 1e3:5.0f}"
        )
    print(f"  {'import trio_lkagent (alone)':<50} {statistics.median(imports) * 1e3:7.0f} ms")
    if official:
        ours = statistics.median(results["trio-lkagent (task executor)"])
        theirs = statistics.median(results["official livekit-agents 1.8.9 (thread executor)"])
        print(f"  ratio official (threads) / trio-lkagent (tasks): {theirs / ours:.1f}x")
        theirs = statistics.median(results["official livekit-agents 1.8.9 (defaults: processes)"])
        print(f"  ratio official (defaults) / trio-lkagent (tasks): {theirs / ours:.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    trio.run(main, args.runs)
