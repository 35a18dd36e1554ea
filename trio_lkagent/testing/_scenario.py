"""What a ``trio-lkagent dev --scenario FILE.py`` scenario gets."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs

from .._room import AutoSubscribe, Room
from .._worker import Worker
from ..devserver import DevServer
from ._kit import ParticipantFactory

__all__ = ["DevScenario"]


@attrs.frozen
class DevScenario:
    """The session a ``dev`` scenario drives.

    A scenario file defines ``async def scenario(dev: DevScenario) -> None``;
    ``dev`` runs it once the room exists (and, for ROOM jobs, once the job runs),
    instead of the built-in tone-and-chat script. The session ends when it returns
    (the jobs are then terminated) or when every job has ended.

    Example (``my_scenario.py``)::

        import numpy as np
        from trio_lkagent.testing import DevScenario, wait_for_agent

        async def scenario(dev: DevScenario) -> None:
            alice = await dev.participant("alice")
            agent = await wait_for_agent(alice)
            await alice.publish_data("hello", topic="chat")
            print(await alice.perform_rpc(agent.identity, "ping", "{}"))

    Attributes:
        server: The dev server (``server.jobs``, ``server.create_dispatch``, ...);
            None with ``dev --url`` (an external server).
        room: The room's name.
        worker: The worker being run.
        participants: The factory behind :meth:`participant` (joins any room).
        say: Print a line in ``dev``'s output.
        metadata: The job metadata given with ``--metadata``.
    """

    server: DevServer | None
    room: str
    worker: Worker
    participants: ParticipantFactory
    say: Callable[[str], None]
    metadata: str = ""

    async def participant(
        self,
        identity: str | None = None,
        *,
        name: str = "",
        metadata: str = "",
        attributes: Mapping[str, str] | None = None,
        kind: str | None = None,
        auto_subscribe: AutoSubscribe = AutoSubscribe.SUBSCRIBE_ALL,
    ) -> Room:
        """Join a simulated participant to the session's room; it leaves when the
        session ends (or at ``await room.aclose()``)."""
        return await self.participants(
            self.room,
            identity,
            name=name,
            metadata=metadata,
            attributes=attributes,
            kind=kind,
            auto_subscribe=auto_subscribe,
        )
