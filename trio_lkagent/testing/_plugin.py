"""The pytest plugin of :mod:`trio_lkagent.testing` (entry point ``pytest11``).

Installing trio-lkagent registers it; its fixtures need pytest-trio (``trio_mode
= true``, or ``@pytest.mark.trio`` on the tests). Loading it imports nothing but
pytest: the SDK is imported when a fixture is first used, so test runs that use
none of them pay nothing.

Fixtures (all function-scoped: each Trio test is its own ``trio.run``):

- ``devserver``: a :class:`~trio_lkagent.devserver.DevServer` on 127.0.0.1, a
  port the OS chose, key ``devkey`` and a random 43-character secret.
- ``agent_worker``: ``await agent_worker(target, **option_overrides)`` starts a
  worker against ``devserver`` and returns it registered.
- ``participant``: ``await participant(room, identity)`` joins a simulated
  participant (a real ``livekit.rtc`` client) and returns its
  :class:`~trio_lkagent.Room`.

Teardown runs in the reverse order of setup: participants leave and workers stop
(their jobs cancelled, final statuses sent) before the dev server closes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from ..devserver import DevServer
    from ._kit import AgentWorkerFactory, ParticipantFactory


@pytest.fixture
async def devserver() -> AsyncIterator[DevServer]:
    """A dev server on 127.0.0.1 and a free port, closed at teardown."""
    from ..devserver import open_devserver
    from ._kit import DEV_API_KEY, new_dev_secret

    async with open_devserver(
        host="127.0.0.1", port=0, api_key=DEV_API_KEY, api_secret=new_dev_secret()
    ) as server:
        yield server


@pytest.fixture
async def agent_worker(devserver: DevServer) -> AsyncIterator[AgentWorkerFactory]:
    """``await agent_worker(entrypoint | worker | "module:attr", **option_overrides)``:
    a worker registered with ``devserver``; stopped at teardown."""
    import trio

    from ._kit import AgentWorkerFactory

    async with trio.open_nursery() as nursery:
        yield AgentWorkerFactory(devserver, nursery)
        nursery.cancel_scope.cancel()


@pytest.fixture
async def participant(devserver: DevServer) -> AsyncIterator[ParticipantFactory]:
    """``await participant(room, identity=None, **token_fields)``: a simulated
    participant joined to *room* on ``devserver``; it leaves at teardown."""
    import trio

    from ._kit import ParticipantFactory

    async with trio.open_nursery() as nursery:
        yield ParticipantFactory(devserver, nursery)
        nursery.cancel_scope.cancel()
