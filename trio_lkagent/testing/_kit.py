"""Helpers for testing agents against the in-package dev server (end to end).

Everything here drives real parts: the dev server of :mod:`trio_lkagent.devserver`,
real workers, and real ``livekit.rtc`` participants over WebRTC.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol, TypeVar

import trio
from livekit import rtc
from livekit.protocol import agent as agent_pb

from .._exceptions import ConfigurationError
from .._options import WorkerOptions
from .._room import AutoSubscribe, Room
from .._worker import Entrypoint, Worker
from ..devserver import DevServer, ServerJob
from ..devserver._peer import DataRecord

__all__ = [
    "AgentTarget",
    "DEV_API_KEY",
    "DataRecord",
    "dispatch_job",
    "job_status_history",
    "make_worker",
    "received_data",
    "run_worker",
    "sign_token",
    "wait_for_agent",
    "wait_for_job_status",
]

#: The API key of the ``devserver`` fixture.
DEV_API_KEY = "devkey"

#: What ``agent_worker`` accepts: an ``async def entrypoint(ctx)``, a
#: :class:`~trio_lkagent.Worker`, or ``"module:attr"`` / ``"path/to/file.py:attr"``.
AgentTarget = Entrypoint | Worker | str

T = TypeVar("T")
_AGENT = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
_STATUS_NAMES = {
    "pending": agent_pb.JS_PENDING,
    "running": agent_pb.JS_RUNNING,
    "success": agent_pb.JS_SUCCESS,
    "failed": agent_pb.JS_FAILED,
}


def new_dev_secret() -> str:
    """A random API secret long enough for HS256 (no PyJWT key-length warning)."""
    return secrets.token_urlsafe(32)


def make_worker(target: AgentTarget, server: DevServer, **overrides: Any) -> Worker:
    """A worker for *target* pointing at *server* (not started).

    Args:
        target: An ``async def entrypoint(ctx)``, a :class:`~trio_lkagent.Worker`
            (copied with :meth:`~trio_lkagent.Worker.with_options`; the original is
            untouched), or ``"module:attr"`` / ``"file.py:attr"`` naming either.
        server: The dev server whose URL and keys the worker uses.
        **overrides: :class:`~trio_lkagent.WorkerOptions` fields
            (``agent_name="echo"``, ``max_jobs=1``, ...).

    Raises:
        ConfigurationError: an invalid option, or a target that is not a Worker
            nor an ``async def`` function.
    """
    if isinstance(target, str):
        from .._cli import UsageError, load_target

        try:
            target = load_target(target)
        except UsageError as exc:
            raise ConfigurationError(str(exc)) from None
    connection: dict[str, Any] = {
        "url": server.url,
        "api_key": server.api_key,
        "api_secret": server.api_secret,
    }
    if isinstance(target, Worker):
        return target.with_options(**connection, **overrides)
    if not callable(target):
        raise ConfigurationError(f"expected a Worker or an async entrypoint, got {target!r}")
    return Worker(target, WorkerOptions(**connection, **overrides))


@contextlib.asynccontextmanager
async def run_worker(
    target: AgentTarget, server: DevServer, **overrides: Any
) -> AsyncIterator[Worker]:
    """Serve *target* against *server* for the duration of the block.

    The block starts once the worker is registered (``worker.worker_id`` is set);
    leaving it stops the worker (running jobs are cancelled, their final statuses
    sent, the connection closed). This is what the ``agent_worker`` fixture uses.

    Example::

        async with open_devserver() as server, run_worker(entrypoint, server) as worker:
            job = await dispatch_job(server, "room-1")
    """
    worker = make_worker(target, server, **overrides)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.serve)
        try:
            yield worker
        finally:
            nursery.cancel_scope.cancel()


async def dispatch_job(
    server: DevServer,
    room: str,
    agent_name: str = "",
    metadata: str = "",
    *,
    attributes: Mapping[str, str] | None = None,
    wait: str | None = "running",
) -> ServerJob:
    """Dispatch *agent_name* to *room* (created if needed) with job *metadata*.

    Args:
        server: The dev server.
        room: The room.
        agent_name: The agent; "" dispatches the workers registered without an
            agent name (automatic dispatch: the room is created with it).
        metadata: ``ctx.job.metadata`` of the job.
        attributes: Dispatch attributes.
        wait: Return once the job has reached this status (``"running"``: the
            worker said the job runs; ``"success"``/``"failed"``: it ended);
            None returns as soon as the job exists.

    Returns:
        The server's record of the job (``job.id``, ``job.status_history``, ...).

    Raises:
        JobEndedError: the job ended without reaching *wait* (for example, no
            worker serves *agent_name*, or the worker rejected it).
    """
    if agent_name:
        dispatch = await server.create_dispatch(room, agent_name, metadata, attributes=attributes)
        dispatch_id = dispatch.id
    else:
        from livekit.protocol import agent_dispatch as dispatch_pb

        await server.create_room(
            room,
            agents=[dispatch_pb.RoomAgentDispatch(metadata=metadata)] if metadata else None,
        )
        dispatch_id = None
    status = None if wait is None else _status(wait)
    return await server.wait_for_job(room=room, dispatch_id=dispatch_id, status=status)


async def wait_for_job_status(server: DevServer, job_id: str, status: str) -> ServerJob:
    """Wait until the job has reached *status* (``"running"``, ``"success"``,
    ``"failed"``; an ended status is met by either end).

    Raises:
        KeyError: no such job.
        JobEndedError: it ended without reaching *status*.
    """
    wanted = _status(status)
    return await server.wait_job_status(job_id, wanted)


def job_status_history(server: DevServer, job_id: str) -> list[str]:
    """The statuses the server recorded for the job, oldest first, as lower-case
    names: ``["pending", "running", "success"]``."""
    job = server.jobs[job_id]
    return [agent_pb.JobStatus.Name(s).removeprefix("JS_").lower() for s in job.status_history]


def received_data(
    server: DevServer, room: str, *, topic: str | None = None, sender: str | None = None
) -> list[DataRecord]:
    """The user data packets the server relayed in *room*, oldest first.

    Args:
        server: The dev server.
        room: The room.
        topic: Only this topic.
        sender: Only from this identity ("" for the Server API).
    """
    return [
        record
        for record in server.data_received(room)
        if record.kind == "user"
        and (topic is None or record.topic == topic)
        and (sender is None or record.sender == sender)
    ]


async def wait_for_agent(room: Room, identity: str | None = None) -> rtc.RemoteParticipant:
    """Wait until an agent participant is in *room* (a participant's view).

    Put a deadline around it: ``with trio.fail_after(10): ...``.
    """
    return await room.wait_for_participant(identity, kind=_AGENT)


def sign_token(
    server: DevServer,
    room: str,
    identity: str,
    *,
    name: str = "",
    metadata: str = "",
    attributes: Mapping[str, str] | None = None,
    kind: str | None = None,
) -> str:
    """A join token for *room* signed with *server*'s key (for ``livekit.rtc`` or
    :func:`~trio_lkagent.open_room`)."""
    return server.create_participant_token(
        room, identity, name=name, metadata=metadata, attributes=attributes, kind=kind
    )


def _status(name: str) -> agent_pb.JobStatus:
    try:
        return _STATUS_NAMES[name.lower().removeprefix("js_")]
    except KeyError:
        raise ValueError(
            f"unknown job status {name!r}: expected one of {', '.join(_STATUS_NAMES)}"
        ) from None


async def _hold(
    manager: contextlib.AbstractAsyncContextManager[T], *, task_status: trio.TaskStatus[T]
) -> None:
    """Enter *manager* in a task of the fixture's nursery, hand back its value,
    stay inside until cancelled (so the fixture's task, not the test's, owns it)."""
    async with manager as value:
        task_status.started(value)
        await trio.sleep_forever()


class ParticipantSource(Protocol):
    """What :class:`ParticipantFactory` joins through: the dev server, or (for
    ``dev --url``) an external server with locally signed tokens."""

    def open_participant(
        self,
        room: str,
        identity: str,
        *,
        name: str = ...,
        metadata: str = ...,
        attributes: Mapping[str, str] | None = ...,
        kind: str | None = ...,
        auto_subscribe: AutoSubscribe = ...,
    ) -> contextlib.AbstractAsyncContextManager[Room]: ...


class ParticipantFactory:
    """The ``participant`` fixture: joins simulated participants, leaves them at teardown.

    ``await participant(room, identity)`` returns a joined
    :class:`~trio_lkagent.Room`: a real ``livekit.rtc`` client with a token the
    dev server signed. Drive it from Trio: ``publish_audio`` (numpy int16),
    ``publish_data``, ``send_text``, ``perform_rpc``, ``events()``.
    """

    def __init__(self, server: ParticipantSource, nursery: trio.Nursery) -> None:
        self._server = server
        self._nursery = nursery
        self._count = 0

    async def __call__(
        self,
        room: str,
        identity: str | None = None,
        *,
        name: str = "",
        metadata: str = "",
        attributes: Mapping[str, str] | None = None,
        kind: str | None = None,
        auto_subscribe: AutoSubscribe = AutoSubscribe.SUBSCRIBE_ALL,
    ) -> Room:
        """Join *room* (created on join if needed) as *identity* (default ``user-N``)."""
        self._count += 1
        joining = self._server.open_participant(
            room,
            identity or f"user-{self._count}",
            name=name,
            metadata=metadata,
            attributes=attributes,
            kind=kind,
            auto_subscribe=auto_subscribe,
        )
        joined: Room = await self._nursery.start(_hold, joining)
        return joined


class AgentWorkerFactory:
    """The ``agent_worker`` fixture: ``await agent_worker(target, **option_overrides)``
    starts a registered worker against the ``devserver`` fixture, stopped at teardown."""

    def __init__(self, server: DevServer, nursery: trio.Nursery) -> None:
        self._server = server
        self._nursery = nursery

    async def __call__(self, target: AgentTarget, **overrides: Any) -> Worker:
        """Start *target* (entrypoint, Worker or ``"module:attr"``); returns the
        registered :class:`~trio_lkagent.Worker`."""
        worker: Worker = await self._nursery.start(
            _hold, run_worker(target, self._server, **overrides)
        )
        return worker
