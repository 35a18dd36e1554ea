"""Shared fixtures: a local dev server on port 0 and workers connected to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import pytest
import trio
from livekit import api as lkapi

from trio_lkagent import WorkerOptions
from trio_lkagent._bridge import open_bridge
from trio_lkagent.devserver import DevServer, open_devserver

T = TypeVar("T")

API_KEY = "devkey"
API_SECRET = "devsecret-0123456789abcdef0123456789"


@pytest.fixture
async def server() -> AsyncIterator[DevServer]:
    """A dev server bound to 127.0.0.1 on a port the OS chose."""
    async with open_devserver(
        host="127.0.0.1", port=0, api_key=API_KEY, api_secret=API_SECRET
    ) as s:
        yield s


def worker_options(server: DevServer, **overrides: object) -> WorkerOptions:
    """WorkerOptions pointing at *server*, with quick reconnects for tests."""
    kwargs: dict[str, object] = {
        "url": server.url,
        "api_key": server.api_key,
        "api_secret": server.api_secret,
        "agent_name": "test-agent",
    }
    kwargs.update(overrides)
    return WorkerOptions(**kwargs)  # type: ignore[arg-type]


async def call_api(
    server: DevServer, fn: Callable[[lkapi.LiveKitAPI], Awaitable[T]], *, token: str | None = None
) -> T:
    """Run ``await fn(lkapi)`` on the bridge's loop with a fresh ``LiveKitAPI``."""

    async def on_loop() -> T:
        if token is None:
            client = lkapi.LiveKitAPI(server.url, server.api_key, server.api_secret)
        else:
            client = lkapi.LiveKitAPI.with_token(token, server.url)
        try:
            return await fn(client)
        finally:
            await client.aclose()

    async with open_bridge() as bridge:
        with trio.fail_after(5):
            return await bridge.run(on_loop)
