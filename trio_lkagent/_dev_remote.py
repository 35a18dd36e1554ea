"""``trio-lkagent dev --url URL``: the dev session against an external LiveKit server.

The same session as with the embedded server (the worker, a room with a
dispatch, simulated participants running the built-in script or a scenario),
but the room and its dispatch are made through the server API (``livekit-api``)
and what is known of the jobs comes from the worker itself: the job runs, it
ended, how. The session ends by deleting the room (the server then terminates
the jobs).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import attrs
import trio
from livekit import api as lkapi

from ._config import ServiceConfig, dev_keys_quiet
from ._dev import drain_session_worker, first_of, serve_session_worker, until_abandoned
from ._job import JobContext
from ._options import JobType
from ._room import AutoSubscribe, Room, open_room
from ._service import Say
from ._telemetry import WorkerObserver
from ._worker import Worker
from .devserver._auth import participant_access_token
from .testing._kit import ParticipantFactory
from .testing._scenario import DevScenario

__all__ = ["RemoteServer", "run_dev_remote"]

#: Bound on waiting for the worker to be done with a terminated job.
TEARDOWN_TIMEOUT = 10.0
#: Bound on each server API call.
API_TIMEOUT = 15.0


class RemoteServer:
    """An external LiveKit server, as much of it as a dev session needs."""

    def __init__(self, url: str, api_key: str, api_secret: str) -> None:
        self.url = url
        self.api_key = api_key
        self.api_secret = api_secret

    def create_participant_token(self, room: str, identity: str, **fields: Any) -> str:
        """A join token for *room*, signed here with the API key."""
        token = participant_access_token(self.api_key, self.api_secret, room, identity, **fields)
        with dev_keys_quiet(self.api_secret):
            return token.to_jwt()

    @contextlib.asynccontextmanager
    async def open_participant(
        self,
        room: str,
        identity: str,
        *,
        name: str = "",
        metadata: str = "",
        attributes: Mapping[str, str] | None = None,
        kind: str | None = None,
        auto_subscribe: AutoSubscribe = AutoSubscribe.SUBSCRIBE_ALL,
    ) -> AsyncIterator[Room]:
        """Join *room* as a simulated participant for the duration of the block."""
        token = self.create_participant_token(
            room, identity, name=name, metadata=metadata, attributes=attributes, kind=kind
        )
        async with open_room(self.url, token, auto_subscribe=auto_subscribe) as joined:
            yield joined

    async def call(self, fn: Callable[[lkapi.LiveKitAPI], Awaitable[Any]]) -> Any:
        """``await fn(client)`` with a fresh ``LiveKitAPI`` on the asyncio bridge."""
        from ._bridge import open_bridge

        async def on_loop() -> Any:
            client = lkapi.LiveKitAPI(self.url, self.api_key, self.api_secret)
            try:
                return await fn(client)
            finally:
                await client.aclose()

        async with open_bridge() as bridge:
            with trio.fail_after(API_TIMEOUT):
                return await bridge.run(on_loop)


class _Jobs(WorkerObserver):
    """The worker's own view of its jobs in the session's room."""

    def __init__(self, room: str) -> None:
        self.room = room
        self.running: dict[str, JobContext] = {}
        self.ended: dict[str, str] = {}  # job id -> outcome
        self.changed = trio.Event()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def job_started(self, ctx: JobContext) -> None:
        if ctx.room_name == self.room:
            self.running[ctx.job_id] = ctx
            self._wake()

    def job_ended(self, ctx: JobContext, outcome: str, error: str) -> None:
        if self.running.pop(ctx.job_id, None) is not None:
            self.ended[ctx.job_id] = f"{outcome}: {error}" if error else outcome
            self._wake()

    async def wait_started(self) -> str:
        while not (self.running or self.ended):
            await self.changed.wait()
        return next(iter(self.running or self.ended))

    async def wait_all_ended(self) -> None:
        while not self.ended or self.running:
            await self.changed.wait()


async def run_dev_remote(
    load_worker: Callable[[ServiceConfig], Worker],
    config: ServiceConfig,
    dev: Any,
    url: str,
    say: Say,
    scenario: Callable[[DevScenario], Awaitable[None]] | None,
    builtin: Callable[[Room, list[Room], Say, trio.Nursery], Awaitable[None]],
    identities: list[str],
) -> int:
    """Run the dev session against *url* with the configured API key and secret.

    Returns 0, or 1 when a job failed (a job that ignores cancellation: the
    process exits with code 3, see ``serve_session_worker``).
    """
    remote = RemoteServer(url, config.api_key, config.api_secret)
    local = attrs.evolve(config, url=url, explicit=config.explicit | {"url"})
    worker = load_worker(local)
    if dev.job_type is not None:
        worker = worker.with_options(job_type=JobType[dev.job_type.upper()])
    jobs = _Jobs(dev.room)
    worker.add_observer(jobs)
    stop = trio.Event()
    say(f"using the LiveKit server at {url} (api key {config.api_key!r})")
    async with trio.open_nursery() as nursery:
        served = await serve_session_worker(nursery, worker, local, stop, say)
        agent_name = worker.options.agent_name
        agents = []
        if agent_name or dev.metadata:
            agents = [lkapi.RoomAgentDispatch(agent_name=agent_name, metadata=dev.metadata)]
        await remote.call(
            lambda c: c.room.create_room(lkapi.CreateRoomRequest(name=dev.room, agents=agents))
        )
        how = f"a dispatch for agent {agent_name!r}" if agent_name else "automatic dispatch"
        say(f"room {dev.room!r} created with {how}")

        async def announce() -> None:
            job_id = await jobs.wait_started()
            say(f"job {job_id} running in this worker")

        async with trio.open_nursery() as session:
            session.start_soon(_cancel_on, stop, session.cancel_scope)
            if worker.options.job_type is JobType.ROOM:
                await announce()
            async with trio.open_nursery() as holders:
                participants = ParticipantFactory(remote, holders)

                async def activity() -> None:
                    async with trio.open_nursery() as inner:
                        if worker.options.job_type is not JobType.ROOM:
                            inner.start_soon(announce)
                        if scenario is not None:
                            await scenario(
                                DevScenario(
                                    server=None,
                                    room=dev.room,
                                    worker=worker,
                                    participants=participants,
                                    say=say,
                                    metadata=dev.metadata,
                                )
                            )
                            say("scenario finished")
                        else:
                            joined = []
                            for identity in identities:
                                joined.append(await participants(dev.room, identity))
                                say(f"participant {identity!r} joined room {dev.room!r}")
                            await builtin(joined[0], joined[1:], say, inner)
                            if dev.duration is not None:
                                await trio.sleep(dev.duration)
                            else:
                                await trio.sleep_forever()
                        inner.cancel_scope.cancel()
                    session.cancel_scope.cancel()

                async def all_ended() -> None:
                    await jobs.wait_all_ended()
                    say("every job ended")
                    session.cancel_scope.cancel()

                session.start_soon(activity)
                session.start_soon(all_ended)
                await trio.sleep_forever()
        # Deleting the room ends the jobs (the server terminates them).
        with contextlib.suppress(Exception):
            await remote.call(lambda c: c.room.delete_room(lkapi.DeleteRoomRequest(room=dev.room)))
        say(f"room {dev.room!r} deleted")
        with trio.move_on_after(TEARDOWN_TIMEOUT):
            # A job that ignores cancellation never ends: the worker gives up on it
            # (JS_FAILED) after shutdown_grace, and the session goes on.
            await first_of(
                jobs.wait_all_ended, partial(until_abandoned, worker, lambda: jobs.running)
            )
        for job_id, how in jobs.ended.items():
            say(f"job {job_id} ended: {how}")
        for job_id in jobs.running:
            if job_id in worker._abandoned:
                say(f"job {job_id} ended: failed: job ignored cancellation")
        stats = await drain_session_worker(worker, served, say)
        nursery.cancel_scope.cancel()
    return 1 if stats.jobs_failed else 0


async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()
