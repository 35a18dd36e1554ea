"""How long submitting work to the bridge's loop blocks the Trio thread.

Run: ``python bench/bench_portal_submit.py`` (prints figures; not a test).

anyio's ``BlockingPortal.start_task_soon`` spawns the task with a *blocking*
``run_sync_from_thread`` (the caller waits until the loop thread has run
``TaskGroup.start_soon``): a cross-thread round trip with the whole Trio
scheduler stopped. ``loop.call_soon_threadsafe`` only appends and writes to the
loop's self-pipe. This is why the bridge lets anyio own the loop thread's life
but keeps ``call_soon_threadsafe`` for ``run``/``call`` (docs/performance.md).
"""

from __future__ import annotations

import time

import trio
import trio.lowlevel

from trio_lkagent._bridge import open_bridge


async def nop() -> None:
    pass


async def main() -> None:
    async with open_bridge() as bridge:
        portal, loop = bridge._portal, bridge.loop
        submitters = (
            ("loop.call_soon_threadsafe", lambda: loop.call_soon_threadsafe(lambda: None)),
            ("portal.start_task_soon", lambda: portal.start_task_soon(nop)),
        )
        for label, submit in submitters:
            samples = []
            for _ in range(2000):
                start = time.perf_counter()
                submit()
                samples.append(time.perf_counter() - start)
                await trio.lowlevel.checkpoint()
            samples.sort()
            print(
                f"{label:28s} blocks the Trio thread: p50 {samples[1000] * 1e6:6.1f} us"
                f" | p99 {samples[1980] * 1e6:7.1f} us"
            )


if __name__ == "__main__":
    trio.run(main)
