"""Benchmark the agent layer's per-event cost: handler dispatch, coordinator, event processor.

Run: ``python bench/bench_coordination.py`` (prints figures; this is not a test).

Each figure is events per second through one component, in one Trio task, with
synthetic room events (no network), so it is the component's own cost:

1. The handler dispatcher's event-to-hook mapping plus awaiting a no-op hook
   (``handlers._runner._hook_call``), for data packets and speaker changes.
2. ``ParticipantCoordinator.handle_event`` for data packets (each adds interaction
   edges to every participant present) with 10 participants, with and without a
   rule whose condition reads ``metrics()`` (evaluated after every change).
3. ``EventProcessor``: ``submit_nowait`` + ``process_pending`` with a filter, a
   handler and a batch processor (flush every 100), and the history on.

Figures vary with the machine's load; compare runs made at the same time.
"""

from __future__ import annotations

import time

import trio

from trio_lkagent.coordination import CoordinationRule, EventProcessor, ParticipantCoordinator
from trio_lkagent.events import (
    ActiveSpeakersChanged,
    DataReceived,
    ParticipantConnected,
    ParticipantInfo,
)
from trio_lkagent.handlers import BaseHandler
from trio_lkagent.handlers._runner import _hook_call

N = 50_000


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:>12,.0f} events/s"


async def bench_dispatch() -> None:
    handler = BaseHandler()
    ctx: object = None
    speaking: dict[str, object] = {}
    joined: set[str] = set()
    data = [DataReceived(f"p{i % 10}", b"x") for i in range(N)]
    start = time.perf_counter()
    for event in data:
        for hook in _hook_call(handler, ctx, event, speaking, joined):  # type: ignore[arg-type]
            await hook()
    print(f"dispatcher, data packets           {rate(N, time.perf_counter() - start)}")
    speakers = [ActiveSpeakersChanged((f"p{i % 3}",)) for i in range(N)]
    start = time.perf_counter()
    for change in speakers:
        for hook in _hook_call(handler, ctx, change, speaking, joined):  # type: ignore[arg-type]
            await hook()
    print(f"dispatcher, speaker changes        {rate(N, time.perf_counter() - start)}")


async def bench_coordinator(with_rule: bool) -> None:
    coord = ParticipantCoordinator(local_identity="agent")
    for i in range(10):
        await coord.handle_event(ParticipantConnected(f"p{i}", ParticipantInfo(f"p{i}")))
    if with_rule:

        async def act(_: ParticipantCoordinator) -> None:
            pass

        coord.add_rule(
            CoordinationRule("crowd", lambda c: c.metrics().participants_present > 100, act)
        )
    events = [DataReceived(f"p{i % 10}", b"x") for i in range(N // 10)]
    start = time.perf_counter()
    for event in events:
        await coord.handle_event(event)
    label = "coordinator, data, 10 present" + (", 1 rule" if with_rule else "")
    print(f"{label:<35}{rate(len(events), time.perf_counter() - start)}")


async def bench_processor() -> None:
    batches = 0

    async def on_batch(batch: list[object]) -> None:
        nonlocal batches
        batches += 1

    async def on_data(event: DataReceived) -> None:
        pass

    processor = EventProcessor(max_pending=N, history_size=1000)
    processor.add_filter(lambda e: getattr(e, "identity", "") != "nobody")
    processor.on(DataReceived, on_data)
    processor.add_batch_processor(on_batch, max_events=100, max_wait=60)
    start = time.perf_counter()
    for i in range(N):
        processor.submit_nowait(DataReceived(f"p{i % 10}", b"x"))
    await processor.process_pending()
    elapsed = time.perf_counter() - start
    print(f"event processor (filter, handler, batches of 100) {rate(N, elapsed)}")
    assert batches == N // 100


async def main() -> None:
    await bench_dispatch()
    await bench_coordinator(with_rule=False)
    await bench_coordinator(with_rule=True)
    await bench_processor()


if __name__ == "__main__":
    trio.run(main)
