"""Helpers shared by the resilience tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import trio

from trio_lkagent import JobContext, JobRequest, Worker
from trio_lkagent.devserver import DevServer

from ..conftest import worker_options

Entrypoint = Callable[[JobContext], Awaitable[None]]


async def forever(ctx: JobContext) -> None:
    await trio.sleep_forever()


async def eventually(predicate: Callable[[], object], *, within: float = 60.0) -> None:
    """Poll *predicate* every 10 ms (a safety net bound, not a timing assertion)."""
    with trio.fail_after(within):
        while not predicate():  # noqa: ASYNC110 - polling another process / the OS
            await trio.sleep(0.01)


@asynccontextmanager
async def running_worker(
    server: DevServer,
    entrypoint: Entrypoint = forever,
    request_handler: Callable[[JobRequest], Awaitable[None]] | None = None,
    **options: object,
) -> AsyncIterator[Worker]:
    """A registered worker serving in a nursery; cancelled when the block ends."""
    worker = Worker(entrypoint, worker_options(server, **options), request_handler=request_handler)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        yield worker
        nursery.cancel_scope.cancel()
