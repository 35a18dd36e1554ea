"""Handler objects: the seeds' ``UniversalHandler`` as a Protocol of ``async def`` methods."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeGuard, runtime_checkable

import attrs

if TYPE_CHECKING:
    from livekit import rtc

    from .._job import JobContext, JobRequest

__all__ = ["AgentHandler", "AutoDisconnect", "BaseHandler", "SimpleHandler", "is_handler"]


@attrs.frozen
class AutoDisconnect:
    """When a job leaves its room on its own.

    ``AutoDisconnect.DEFAULT``: once a non-agent participant has been in the room
    and the last one has left, wait :attr:`grace` seconds (a participant that comes
    back in time keeps the job) and then end the job as successful (``JS_SUCCESS``).
    ``AutoDisconnect.NONE``: never; the job runs until it returns, is shut down
    or terminated. ``AutoDisconnect(grace=10.0)`` is the default rule with another
    grace.

    Attributes:
        enabled: False for :attr:`NONE`.
        grace: Seconds to wait for someone to come back before leaving.
    """

    enabled: bool = True
    grace: float = attrs.field(default=2.0)

    #: Leave after the last non-agent participant left, after a 2 s grace.
    DEFAULT: ClassVar[AutoDisconnect]
    #: Never leave on our own.
    NONE: ClassVar[AutoDisconnect]

    @grace.validator
    def _check_grace(self, _attribute: object, value: float) -> None:
        if not value >= 0:
            raise ValueError(f"grace must be >= 0 seconds, got {value!r}")


AutoDisconnect.DEFAULT = AutoDisconnect()
AutoDisconnect.NONE = AutoDisconnect(enabled=False)


@runtime_checkable
class AgentHandler(Protocol):
    """What a handler-style agent implements (seed 001's ``UniversalHandler``).

    Every method is ``async`` and is awaited by a Trio task of the job (never from
    a native thread). The participant hooks of one job run one at a time, in the
    order the room's events happened, in the job's dispatcher task: a slow hook
    delays that job's later hooks only. A hook that raises fails the job
    (``JS_FAILED`` with the error), as an entrypoint that raises does.
    Subclass :class:`BaseHandler` to implement only the hooks you need.
    """

    async def on_job_request(self, req: JobRequest) -> None:
        """Decide on an offered job: ``await req.accept(...)`` or ``await req.reject()``."""

    async def on_job_assigned(self, ctx: JobContext) -> None:
        """The job's body; the room is joined already (``ctx.room``).

        For a participant or publisher job, ``ctx.participant`` is the target,
        waited for before this is called. When it returns the job keeps running
        (the hooks keep coming) until it is shut down, terminated, the room
        closes, or the auto-disconnect rule ends it.
        """

    async def on_job_terminated(self, ctx: JobContext, reason: str) -> None:
        """Clean up: shielded, bounded by ``WorkerOptions.shutdown_grace``, still in the room."""

    async def on_participant_joined(
        self, ctx: JobContext, participant: rtc.RemoteParticipant
    ) -> None:
        """A remote participant joined (also called for those present when joining)."""

    async def on_participant_left(
        self, ctx: JobContext, participant: rtc.RemoteParticipant
    ) -> None:
        """A remote participant left."""

    async def on_track_published(
        self,
        ctx: JobContext,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        """A remote participant published a track."""

    async def on_track_unpublished(
        self,
        ctx: JobContext,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        """A remote participant unpublished a track."""

    async def on_track_subscribed(
        self,
        ctx: JobContext,
        track: rtc.RemoteTrack,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        """We subscribed to a remote track (pass *track* to ``open_audio_stream``)."""

    async def on_track_unsubscribed(
        self,
        ctx: JobContext,
        track: rtc.RemoteTrack | None,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        """We unsubscribed from a remote track."""

    async def on_data_received(
        self,
        ctx: JobContext,
        data: bytes,
        participant: rtc.RemoteParticipant | None,
        topic: str,
    ) -> None:
        """A data packet arrived (*participant* is None when a server API sent it)."""

    async def on_speaking_changed(
        self, ctx: JobContext, participant: rtc.Participant, speaking: bool
    ) -> None:
        """*participant* started (True) or stopped (False) being an active speaker."""

    async def on_connection_quality_changed(
        self, ctx: JobContext, participant: rtc.Participant | None, quality: int
    ) -> None:
        """A participant's ``livekit.rtc.ConnectionQuality`` changed."""

    async def on_metadata_changed(
        self, ctx: JobContext, participant: rtc.Participant, old_metadata: str, metadata: str
    ) -> None:
        """A participant's metadata changed."""


class BaseHandler:
    """An :class:`AgentHandler` whose every hook does nothing; override what you need.

    The default :meth:`on_job_request` accepts every job with the default
    identity (``agent-<job id>``).
    """

    async def on_job_request(self, req: JobRequest) -> None:
        """Accept the job with the default identity."""
        await req.accept()

    async def on_job_assigned(self, ctx: JobContext) -> None:
        """Do nothing: the job stays in its room until ended."""

    async def on_job_terminated(self, ctx: JobContext, reason: str) -> None:
        """Do nothing."""

    async def on_participant_joined(
        self, ctx: JobContext, participant: rtc.RemoteParticipant
    ) -> None:
        """Do nothing."""

    async def on_participant_left(
        self, ctx: JobContext, participant: rtc.RemoteParticipant
    ) -> None:
        """Do nothing."""

    async def on_track_published(
        self,
        ctx: JobContext,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        """Do nothing."""

    async def on_track_unpublished(
        self,
        ctx: JobContext,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        """Do nothing."""

    async def on_track_subscribed(
        self,
        ctx: JobContext,
        track: rtc.RemoteTrack,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        """Do nothing."""

    async def on_track_unsubscribed(
        self,
        ctx: JobContext,
        track: rtc.RemoteTrack | None,
        publication: rtc.RemoteTrackPublication,
        participant: rtc.RemoteParticipant,
    ) -> None:
        """Do nothing."""

    async def on_data_received(
        self,
        ctx: JobContext,
        data: bytes,
        participant: rtc.RemoteParticipant | None,
        topic: str,
    ) -> None:
        """Do nothing."""

    async def on_speaking_changed(
        self, ctx: JobContext, participant: rtc.Participant, speaking: bool
    ) -> None:
        """Do nothing."""

    async def on_connection_quality_changed(
        self, ctx: JobContext, participant: rtc.Participant | None, quality: int
    ) -> None:
        """Do nothing."""

    async def on_metadata_changed(
        self, ctx: JobContext, participant: rtc.Participant, old_metadata: str, metadata: str
    ) -> None:
        """Do nothing."""


_HOOKS = (
    "on_job_request",
    "on_job_assigned",
    "on_job_terminated",
    "on_participant_joined",
    "on_participant_left",
    "on_track_published",
    "on_track_unpublished",
    "on_track_subscribed",
    "on_track_unsubscribed",
    "on_data_received",
    "on_speaking_changed",
    "on_connection_quality_changed",
    "on_metadata_changed",
)


class SimpleHandler(BaseHandler):
    """A handler built from plain ``async`` functions, one per hook you need.

    Each keyword is a hook name of :class:`AgentHandler` (without ``self``);
    ``on_job`` is short for ``on_job_assigned``::

        async def greet(ctx, participant):
            await ctx.publish_data(f"hello {participant.identity}")

        worker = Worker(SimpleHandler(on_participant_joined=greet), options)

    Raises:
        TypeError: an unknown hook name, or a value that is not callable.
    """

    def __init__(self, **hooks: Callable[..., Awaitable[None]] | None) -> None:
        if "on_job" in hooks:
            if "on_job_assigned" in hooks:
                raise TypeError("give on_job or on_job_assigned, not both")
            hooks["on_job_assigned"] = hooks.pop("on_job")
        for name, function in hooks.items():
            if name not in _HOOKS:
                raise TypeError(f"SimpleHandler got an unknown hook {name!r}")
            if function is None:
                continue
            if not callable(function):
                raise TypeError(f"{name} must be an async function, got {function!r}")
            setattr(self, name, function)

    def __repr__(self) -> str:
        hooks = [name for name in _HOOKS if name in self.__dict__]
        return f"SimpleHandler({', '.join(hooks)})"


def is_handler(agent: Any) -> TypeGuard[AgentHandler]:
    """Whether *agent* is a handler object (not a plain entrypoint function)."""
    return callable(getattr(agent, "on_job_assigned", None))
