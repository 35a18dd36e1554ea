"""Running a job's agent: a plain entrypoint, or a handler with its dispatcher task.

Task tree of a handler job (all inside the job's cancel scope)::

    run_agent(ctx)
    '- ctx.connect()                   the room, joined before anything else
       '- nursery
          |- on_job_assigned(ctx)      the job's body
          |- _dispatch                 room events -> hooks, one at a time, in order
          '- _auto_disconnect          ends the job when the room is left empty
       finally: on_job_terminated      shielded, bounded, still in the room
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from .._options import JobType
from ..events import (
    ActiveSpeakersChanged,
    ConnectionQualityChanged,
    DataReceived,
    ParticipantConnected,
    ParticipantDisconnected,
    ParticipantMetadataChanged,
    RoomEvent,
    TrackPublished,
    TrackSubscribed,
    TrackUnpublished,
    TrackUnsubscribed,
)
from ._handler import AgentHandler, AutoDisconnect, is_handler

if TYPE_CHECKING:
    from livekit import rtc

    from .._job import JobContext
    from .._room import Room

__all__ = ["run_agent", "watch_auto_disconnect"]

logger = logging.getLogger("trio_lkagent.handlers")

_AGENT = 4  # livekit.rtc.ParticipantKind.PARTICIPANT_KIND_AGENT (not imported: lazy)


async def run_agent(ctx: JobContext, default: Any, *, grace: float = 2.0) -> None:
    """Run the job's agent: the one chosen at accept time, else *default*.

    A handler joins the room, runs ``on_job_assigned`` and its hooks; an
    entrypoint is awaited (with the auto-disconnect watcher when the accept asked
    for one). *grace* bounds ``on_job_terminated``.
    """
    accept = ctx.accept_info
    agent = accept.entrypoint if accept.entrypoint is not None else default
    if is_handler(agent):
        policy = accept.auto_disconnect or AutoDisconnect.DEFAULT
        await _collapsed(_run_handler(ctx, agent, policy, grace))
        return
    entrypoint: Callable[[JobContext], Awaitable[None]] = agent  # type: ignore[assignment]
    policy = accept.auto_disconnect or AutoDisconnect.NONE
    if not policy.enabled:
        await entrypoint(ctx)  # exactly as without this layer
        return
    await _collapsed(_with_watcher(ctx, entrypoint, policy))


async def _with_watcher(
    ctx: JobContext, entrypoint: Callable[[JobContext], Awaitable[None]], policy: AutoDisconnect
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch_rooms_of, ctx, policy)
        await entrypoint(ctx)
        nursery.cancel_scope.cancel()


async def _collapsed(body: Awaitable[None]) -> None:
    """Await *body*; a group around one failure (from our nurseries) is raised as that failure.

    So the job's error and the recovery policy see the exception a hook or the
    body raised, not a group around it. A cancellation that came with it is
    raised again at the next checkpoint (cancellation is level-triggered).
    """
    try:
        await body
    except BaseExceptionGroup as group:
        _, rest = group.split(trio.Cancelled)
        leaves = _leaves(rest) if rest is not None else []
        if len(leaves) == 1 and isinstance(leaves[0], Exception):
            raise leaves[0] from None
        raise


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


async def _watch_rooms_of(ctx: JobContext, policy: AutoDisconnect) -> None:
    """Auto-disconnect for an entrypoint: watch every room it joins with ``ctx.connect``."""
    while True:
        room = ctx._room
        if room is None:
            await ctx._room_changed.wait()
            continue
        await watch_auto_disconnect(room, ctx, policy)
        while ctx._room is room:
            await ctx._room_changed.wait()


async def watch_auto_disconnect(room: Room, ctx: JobContext, policy: AutoDisconnect) -> None:
    """End *ctx* (``ctx.shutdown``) once the last non-agent participant left *room*.

    Only after at least one non-agent participant was seen; waits ``policy.grace``
    seconds for one to come (back) first. Returns when the room closes.
    """
    present: set[str] = set()
    with room.events() as events:
        for identity, participant in room.remote_participants.items():
            if participant.kind != _AGENT:
                present.add(identity)
        seen = bool(present)

        def apply(event: RoomEvent) -> None:
            nonlocal seen
            if isinstance(event, ParticipantConnected) and event.info.kind != _AGENT:
                present.add(event.identity)
                seen = True
            elif isinstance(event, ParticipantDisconnected):
                present.discard(event.identity)

        try:
            while True:
                while not (seen and not present):
                    apply(await events.receive())
                with trio.move_on_after(policy.grace) as waited:
                    while not present:
                        apply(await events.receive())
                if waited.cancelled_caught:
                    logger.info(
                        "job %s: the last participant left %.1f s ago; leaving the room",
                        ctx.job_id,
                        policy.grace,
                    )
                    ctx.shutdown("auto disconnect: the last participant left")
                    return
        except trio.EndOfChannel:
            return


async def _run_handler(
    ctx: JobContext, handler: AgentHandler, policy: AutoDisconnect, grace: float
) -> None:
    accept = ctx.accept_info
    told = False

    async def terminated(reason: str) -> None:
        nonlocal told
        if not told:
            told = True
            await _terminated(handler, ctx, reason, grace)

    try:
        async with ctx.connect(auto_subscribe=accept.auto_subscribe) as room:
            # Subscribed before anything awaits: the events since joining come first.
            events = room.events()
            try:
                with events:  # the dispatcher's; closed here if it never started
                    await _serve_handler(ctx, handler, room, events, policy)
            except BaseException as exc:
                await terminated(_reason(ctx, exc))
                raise
            await terminated("room disconnected")
    except BaseException as exc:
        await terminated(_reason(ctx, exc))  # joining failed: the handler hears of it too
        raise


async def _serve_handler(
    ctx: JobContext,
    handler: AgentHandler,
    room: Room,
    events: trio.MemoryReceiveChannel[RoomEvent],
    policy: AutoDisconnect,
) -> None:
    """The connected part of a handler job: target, body, dispatcher, auto-disconnect."""
    if ctx.job_type in (JobType.PARTICIPANT, JobType.PUBLISHER):
        target = ctx.job.participant.identity
        ctx._participant = await room.wait_for_participant(target)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_dispatch, handler, ctx, room, events)
        if policy.enabled:
            nursery.start_soon(watch_auto_disconnect, room, ctx, policy)
        await handler.on_job_assigned(ctx)
        await room.wait_disconnected()
        nursery.cancel_scope.cancel()


def _reason(ctx: JobContext, exc: BaseException) -> str:
    if ctx.shutdown_reason is not None:
        return ctx.shutdown_reason
    timed_out = getattr(ctx, "_timed_out", None)  # the job deadline (job_timeout)
    if timed_out is not None and timed_out():
        return f"job timed out after {ctx._timeout:g} s"
    if isinstance(exc, trio.Cancelled):
        return "cancelled"
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)
        if rest is None:
            return "cancelled"
        exc = rest.exceptions[0] if len(rest.exceptions) == 1 else rest
    text = str(exc)
    return f"failed: {type(exc).__name__}: {text}" if text else f"failed: {type(exc).__name__}"


async def _terminated(handler: AgentHandler, ctx: JobContext, reason: str, grace: float) -> None:
    with trio.CancelScope(shield=True) as scope:
        scope.deadline = trio.current_time() + grace
        try:
            await handler.on_job_terminated(ctx, reason)
        except Exception:
            logger.exception("on_job_terminated of job %s failed", ctx.job_id)
    if scope.cancelled_caught:
        logger.warning(
            "on_job_terminated of job %s did not finish within %.1f s", ctx.job_id, grace
        )


async def _dispatch(
    handler: AgentHandler,
    ctx: JobContext,
    room: Room,
    events: trio.MemoryReceiveChannel[RoomEvent],
) -> None:
    """Await the handler's hook for each room event, in order, one at a time."""
    speaking: dict[str, rtc.Participant] = {}
    joined: set[str] = set()
    published: set[str] = set()
    with events:
        # Those already in the room when we joined are "joined" too, with their tracks.
        for identity, participant in room.remote_participants.items():
            joined.add(identity)
            await handler.on_participant_joined(ctx, participant)
            for publication in list(participant.track_publications.values()):
                published.add(publication.sid)
                await handler.on_track_published(ctx, publication, participant)
        async for event in events:
            if isinstance(event, TrackPublished):
                if event.track.sid in published:
                    continue  # announced from the snapshot already
                published.add(event.track.sid)
            elif isinstance(event, TrackUnpublished):
                published.discard(event.track.sid)
            for hook in _hook_call(handler, ctx, event, speaking, joined):
                await hook()


def _hook_call(
    handler: AgentHandler,
    ctx: JobContext,
    event: RoomEvent,
    speaking: dict[str, rtc.Participant],
    joined: set[str],
) -> list[Callable[[], Awaitable[None]]]:
    """The hook invocations *event* maps to (updating the dispatcher's state)."""
    h = handler
    match event:
        case ParticipantConnected():
            if event.identity in joined:
                return []  # already announced from the snapshot
            joined.add(event.identity)
            return [_bind(h.on_participant_joined, ctx, event.participant)]
        case ParticipantDisconnected():
            joined.discard(event.identity)
            calls: list[Callable[[], Awaitable[None]]] = []
            gone = speaking.pop(event.identity, None)
            if gone is not None:
                calls.append(_bind(h.on_speaking_changed, ctx, gone, False))
            calls.append(_bind(h.on_participant_left, ctx, event.participant))
            return calls
        case TrackPublished():
            return [_bind(h.on_track_published, ctx, event.publication, event.participant)]
        case TrackUnpublished():
            return [_bind(h.on_track_unpublished, ctx, event.publication, event.participant)]
        case TrackSubscribed():
            return [
                _bind(
                    h.on_track_subscribed,
                    ctx,
                    event.rtc_track,
                    event.publication,
                    event.participant,
                )
            ]
        case TrackUnsubscribed():
            return [
                _bind(
                    h.on_track_unsubscribed,
                    ctx,
                    event.rtc_track,
                    event.publication,
                    event.participant,
                )
            ]
        case DataReceived():
            return [_bind(h.on_data_received, ctx, event.payload, event.participant, event.topic)]
        case ActiveSpeakersChanged():
            now = dict(zip(event.identities, event.participants, strict=False))
            stopped = [p for who, p in speaking.items() if who not in now]
            started = [p for who, p in now.items() if who not in speaking]
            speaking.clear()
            speaking.update(now)
            return [_bind(h.on_speaking_changed, ctx, p, False) for p in stopped] + [
                _bind(h.on_speaking_changed, ctx, p, True) for p in started
            ]
        case ConnectionQualityChanged():
            return [_bind(h.on_connection_quality_changed, ctx, event.participant, event.quality)]
        case ParticipantMetadataChanged():
            return [
                _bind(
                    h.on_metadata_changed,
                    ctx,
                    event.participant,
                    event.old_metadata,
                    event.metadata,
                )
            ]
        case _:
            return []


def _bind(hook: Callable[..., Awaitable[None]], *args: Any) -> Callable[[], Awaitable[None]]:
    return lambda: hook(*args)
