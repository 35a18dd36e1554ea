"""ParticipantCoordinator: who is in a room, what they do, in which groups, with whom."""

from __future__ import annotations

import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..events import (
    ActiveSpeakersChanged,
    DataReceived,
    ParticipantConnected,
    ParticipantDisconnected,
    ParticipantMetadataChanged,
    RoomEvent,
    TrackPublished,
    TrackUnpublished,
)

if TYPE_CHECKING:
    from .._room import Room

__all__ = [
    "Activity",
    "ActivityHandler",
    "ActivityMetrics",
    "ActivityType",
    "CoordinatedParticipant",
    "CoordinationRule",
    "Interaction",
    "ParticipantCoordinator",
    "ParticipantGroup",
    "open_coordinator",
]

logger = logging.getLogger("trio_lkagent.coordination")

_AGENT_KIND = 4  # livekit.rtc.ParticipantKind.PARTICIPANT_KIND_AGENT


class ActivityType(enum.Enum):
    """What a participant did (seed 001's ``ActivityType``)."""

    JOINED = "joined"
    LEFT = "left"
    TRACK_PUBLISHED = "track_published"
    TRACK_UNPUBLISHED = "track_unpublished"
    DATA_RECEIVED = "data_received"
    SPEAKING = "speaking"
    METADATA_CHANGED = "metadata_changed"


@attrs.frozen
class Activity:
    """One thing a participant did, at ``at`` (the coordinator's clock).

    Attributes:
        identity: Who.
        type: What.
        at: When, in seconds of the coordinator's clock (``trio.current_time``).
        detail: The track sid, the data's topic, True/False for speaking, the new
            metadata; None for joins and leaves.
    """

    identity: str
    type: ActivityType
    at: float
    detail: Any = None


@attrs.frozen
class Interaction:
    """*source* did something towards *target* (``kind``: ``"data"``, ``"spoke_after"``, ...)."""

    source: str
    target: str
    kind: str
    at: float
    data: Any = attrs.field(default=None, eq=False)


@attrs.define
class CoordinatedParticipant:
    """What the coordinator knows of one identity; kept after it leaves.

    Attributes:
        identity: The participant's identity (the key: a rejoin under it is the same
            participant, with its groups and counts).
        name: Display name, as last seen.
        kind: ``livekit.rtc.ParticipantKind`` value.
        present: In the room now.
        joined_at: Last join time; left_at: last leave time (None while present).
        last_activity_at: Time of the latest activity of any type.
        activity_counts: Activities so far, by type.
        speaking: An active speaker now.
        tracks: Sids of the tracks it has published now.
        metadata: Its metadata, as last seen.
        attributes: Its attributes, as when it last joined.
    """

    identity: str
    name: str = ""
    kind: int = 0
    present: bool = False
    joined_at: float | None = None
    left_at: float | None = None
    last_activity_at: float | None = None
    activity_counts: dict[ActivityType, int] = attrs.field(factory=dict)
    speaking: bool = False
    tracks: set[str] = attrs.field(factory=set)
    metadata: str = ""
    attributes: dict[str, str] = attrs.field(factory=dict)


@attrs.define
class ParticipantGroup:
    """A named set of identities with metadata; survives its members leaving."""

    id: str
    name: str
    metadata: dict[str, Any] = attrs.field(factory=dict)
    members: set[str] = attrs.field(factory=set)
    created_at: float = 0.0


@attrs.frozen
class ActivityMetrics:
    """A snapshot from :meth:`ParticipantCoordinator.metrics`."""

    participants_seen: int
    participants_present: int
    activities: Mapping[ActivityType, int]
    interactions: int
    groups: int
    speaking: tuple[str, ...]
    most_active: str | None
    rule_actions: int
    handler_errors: int


#: ``async def handler(coordinator, activity) -> None``.
ActivityHandler = Callable[["ParticipantCoordinator", Activity], Awaitable[None]]


@attrs.frozen
class CoordinationRule:
    """A condition over the coordinator's state and an async action.

    Evaluated after every change; the action runs when the condition *becomes*
    true (false before, true now), awaited in the coordinator's task, so it sees
    the state that triggered it. A rule whose condition stays true does not fire
    again until it has been false.

    Attributes:
        name: Unique among the coordinator's rules.
        condition: ``condition(coordinator) -> bool``; must not block.
        action: ``async def action(coordinator) -> None``.
    """

    name: str
    condition: Callable[[ParticipantCoordinator], bool] = attrs.field(eq=False)
    action: Callable[[ParticipantCoordinator], Awaitable[None]] = attrs.field(eq=False)


class ParticipantCoordinator:
    """Tracks a room's participants: activity, groups, interactions, rules (seed 001).

    Feed it from a room with :func:`open_coordinator` (or :meth:`run`), or call
    :meth:`handle_event` yourself. Activity handlers and rule actions are awaited
    in the feeding task, in event order; one that raises is logged and counted
    (``metrics().handler_errors``) and does not stop the coordinator.

    Args:
        clock: Where times come from (default ``trio.current_time``).
        local_identity: The agent's own identity (interactions addressed to "us").
    """

    def __init__(
        self, *, clock: Callable[[], float] = trio.current_time, local_identity: str = ""
    ) -> None:
        self._clock = clock
        self.local_identity = local_identity
        self._participants: dict[str, CoordinatedParticipant] = {}
        self._groups: dict[str, ParticipantGroup] = {}
        self._interactions: list[Interaction] = []
        self._graph: dict[str, dict[str, int]] = {}
        self._activity_counts: dict[ActivityType, int] = {}
        self._rules: dict[str, CoordinationRule] = {}
        self._rule_state: dict[str, bool] = {}
        self._handlers: dict[ActivityType, list[ActivityHandler]] = {}
        self._last_speaker: str | None = None
        self._rule_actions = 0
        self._handler_errors = 0
        self._changed = trio.Event()

    # ------------------------------------------------------------------ queries

    @property
    def participants(self) -> Mapping[str, CoordinatedParticipant]:
        """Everyone seen, present or not, by identity (live records: do not modify)."""
        return self._participants

    def participant(self, identity: str) -> CoordinatedParticipant:
        """The record of *identity*.

        Raises:
            KeyError: never seen.
        """
        return self._participants[identity]

    def active_participants(self) -> list[CoordinatedParticipant]:
        """Those in the room now, most recently active first."""
        present = [p for p in self._participants.values() if p.present]
        return sorted(present, key=lambda p: -(p.last_activity_at or 0.0))

    def interaction_graph(self) -> dict[str, dict[str, int]]:
        """``graph[source][target]``: how many interactions from *source* to *target* (a copy)."""
        return {source: dict(targets) for source, targets in self._graph.items()}

    def interactions(self, identity: str | None = None) -> list[Interaction]:
        """Recorded interactions, oldest first (those *identity* took part in, if given)."""
        if identity is None:
            return list(self._interactions)
        return [i for i in self._interactions if identity in (i.source, i.target)]

    def metrics(self) -> ActivityMetrics:
        """Activity metrics, a frozen snapshot."""
        totals = {p.identity: sum(p.activity_counts.values()) for p in self._participants.values()}
        return ActivityMetrics(
            participants_seen=len(self._participants),
            participants_present=sum(p.present for p in self._participants.values()),
            activities=dict(self._activity_counts),
            interactions=len(self._interactions),
            groups=len(self._groups),
            speaking=tuple(sorted(p.identity for p in self._participants.values() if p.speaking)),
            most_active=max(totals, key=lambda who: totals[who]) if totals else None,
            rule_actions=self._rule_actions,
            handler_errors=self._handler_errors,
        )

    # ------------------------------------------------------------------ groups

    @property
    def groups(self) -> Mapping[str, ParticipantGroup]:
        """All groups by id."""
        return self._groups

    def create_group(
        self, group_id: str, name: str = "", metadata: Mapping[str, Any] | None = None
    ) -> ParticipantGroup:
        """Create an empty group.

        Raises:
            ValueError: a group with this id exists.
        """
        if group_id in self._groups:
            raise ValueError(f"group {group_id!r} exists already")
        group = ParticipantGroup(
            group_id, name or group_id, dict(metadata or {}), set(), self._clock()
        )
        self._groups[group_id] = group
        self._notify()
        return group

    def delete_group(self, group_id: str) -> None:
        """Remove a group (its members stay participants).

        Raises:
            KeyError: no such group.
        """
        del self._groups[group_id]
        self._notify()

    def add_to_group(self, identity: str, group_id: str) -> None:
        """Make *identity* a member of *group_id* (present or not: groups are by identity).

        Raises:
            KeyError: no such group.
        """
        self._group(group_id).members.add(identity)
        self._notify()

    def remove_from_group(self, identity: str, group_id: str) -> None:
        """Take *identity* out of *group_id* (no error if it was not a member).

        Raises:
            KeyError: no such group.
        """
        self._group(group_id).members.discard(identity)
        self._notify()

    def group_members(self, group_id: str) -> frozenset[str]:
        """The identities in *group_id*.

        Raises:
            KeyError: no such group.
        """
        return frozenset(self._group(group_id).members)

    def groups_of(self, identity: str) -> list[ParticipantGroup]:
        """The groups *identity* belongs to."""
        return [g for g in self._groups.values() if identity in g.members]

    def _group(self, group_id: str) -> ParticipantGroup:
        try:
            return self._groups[group_id]
        except KeyError:
            raise KeyError(f"no group {group_id!r}") from None

    # ------------------------------------------------------------------ rules, handlers

    def add_rule(self, rule: CoordinationRule) -> None:
        """Evaluate *rule* after every change from now on.

        Raises:
            ValueError: a rule with this name exists.
        """
        if rule.name in self._rules:
            raise ValueError(f"rule {rule.name!r} exists already")
        self._rules[rule.name] = rule
        self._rule_state[rule.name] = False

    def remove_rule(self, name: str) -> None:
        """Stop evaluating the rule called *name* (no error if there is none)."""
        self._rules.pop(name, None)
        self._rule_state.pop(name, None)

    def on(self, activity: ActivityType, handler: ActivityHandler) -> None:
        """Await ``handler(coordinator, activity)`` for every activity of this type."""
        self._handlers.setdefault(activity, []).append(handler)

    # ------------------------------------------------------------------ feeding

    async def run(
        self, room: Room, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Feed the coordinator from *room*'s events until the room closes.

        Subscribes, records who is there already, then reports started.
        """
        events = room.events()
        with events:
            try:
                self.local_identity = self.local_identity or room.local_participant.identity
            except RuntimeError:
                pass
            for participant in room.remote_participants.values():
                await self._joined(
                    participant.identity,
                    participant.name,
                    participant.kind,
                    participant.metadata,
                    participant.attributes,
                )
                for publication in participant.track_publications.values():
                    await self._track(participant.identity, publication.sid, published=True)
            task_status.started()
            async for event in events:
                await self.handle_event(event)

    async def handle_event(self, event: RoomEvent) -> None:
        """Apply one room event (what :meth:`run` does for each), then hooks and rules."""
        match event:
            case ParticipantConnected(identity=who, info=info):
                await self._joined(who, info.name, info.kind, info.metadata, info.attributes)
            case ParticipantDisconnected(identity=who):
                await self._left(who)
            case TrackPublished(identity=who, track=track):
                await self._track(who, track.sid, published=True)
            case TrackUnpublished(identity=who, track=track):
                await self._track(who, track.sid, published=False)
            case DataReceived(identity=who, topic=topic, payload=payload) if who:
                await self._activity(who, ActivityType.DATA_RECEIVED, topic)
                for target in self._present_others(who):
                    self.record_interaction(who, target, "data", payload)
                await self._changed_state()
            case ActiveSpeakersChanged(identities=identities):
                await self._speakers(identities)
            case ParticipantMetadataChanged(identity=who, metadata=metadata):
                if who in self._participants:
                    self._participants[who].metadata = metadata
                await self._activity(who, ActivityType.METADATA_CHANGED, metadata)
                await self._changed_state()
            case _:
                pass

    def record_interaction(
        self, source: str, target: str, kind: str = "interaction", data: Any = None
    ) -> Interaction:
        """Add an edge *source* -> *target* to the interaction graph (also for your own kinds)."""
        interaction = Interaction(source, target, kind, self._clock(), data)
        self._interactions.append(interaction)
        targets = self._graph.setdefault(source, {})
        targets[target] = targets.get(target, 0) + 1
        self._notify()
        return interaction

    async def wait_for(self, predicate: Callable[[ParticipantCoordinator], bool]) -> None:
        """Wait until ``predicate(coordinator)`` is true (checked after each change)."""
        while not predicate(self):
            await self._changed.wait()

    # ------------------------------------------------------------------ internals

    def _record(self, identity: str) -> CoordinatedParticipant:
        record = self._participants.get(identity)
        if record is None:
            record = self._participants[identity] = CoordinatedParticipant(identity)
        return record

    def _present_others(self, identity: str) -> Iterable[str]:
        others = [p.identity for p in self._participants.values() if p.present]
        if self.local_identity:
            others.append(self.local_identity)
        return [who for who in others if who != identity]

    async def _joined(
        self,
        identity: str,
        name: str,
        kind: int,
        metadata: str,
        attributes: Mapping[str, str] | None = None,
    ) -> None:
        record = self._record(identity)
        if record.present:
            return  # seen in the snapshot already
        record.attributes = dict(attributes or {})
        at = self._clock()
        record.present, record.name, record.kind, record.metadata = True, name, kind, metadata
        record.joined_at, record.left_at = at, None
        await self._activity(identity, ActivityType.JOINED, at=at)
        await self._changed_state()

    async def _left(self, identity: str) -> None:
        record = self._record(identity)
        at = self._clock()
        record.present, record.left_at = False, at
        record.tracks.clear()
        if record.speaking:
            record.speaking = False
            await self._activity(identity, ActivityType.SPEAKING, False, at=at)
        await self._activity(identity, ActivityType.LEFT, at=at)
        await self._changed_state()

    async def _track(self, identity: str, sid: str, *, published: bool) -> None:
        record = self._record(identity)
        if published:
            if sid in record.tracks:
                return
            record.tracks.add(sid)
            await self._activity(identity, ActivityType.TRACK_PUBLISHED, sid)
        else:
            record.tracks.discard(sid)
            await self._activity(identity, ActivityType.TRACK_UNPUBLISHED, sid)
        await self._changed_state()

    async def _speakers(self, identities: Iterable[str]) -> None:
        now = set(identities)
        for record in self._participants.values():
            if record.speaking and record.identity not in now:
                record.speaking = False
                await self._activity(record.identity, ActivityType.SPEAKING, False)
        for identity in identities:  # loudest first
            record = self._record(identity)
            if record.speaking:
                continue
            record.speaking = True
            previous = self._last_speaker
            if previous is not None and previous != identity:
                self.record_interaction(identity, previous, "spoke_after")
            self._last_speaker = identity
            await self._activity(identity, ActivityType.SPEAKING, True)
        await self._changed_state()

    async def _activity(
        self, identity: str, kind: ActivityType, detail: Any = None, *, at: float | None = None
    ) -> None:
        record = self._record(identity)
        at = self._clock() if at is None else at
        record.last_activity_at = at
        record.activity_counts[kind] = record.activity_counts.get(kind, 0) + 1
        self._activity_counts[kind] = self._activity_counts.get(kind, 0) + 1
        activity = Activity(identity, kind, at, detail)
        for handler in list(self._handlers.get(kind, ())):
            try:
                await handler(self, activity)
            except Exception:
                self._handler_errors += 1
                logger.exception("coordination handler %r for %s failed", handler, kind.value)

    async def _changed_state(self) -> None:
        self._notify()
        for name, rule in list(self._rules.items()):
            try:
                now = bool(rule.condition(self))
            except Exception:
                self._handler_errors += 1
                logger.exception("condition of coordination rule %r failed", name)
                continue
            before = self._rule_state.get(name, False)
            self._rule_state[name] = now
            if now and not before:
                self._rule_actions += 1
                try:
                    await rule.action(self)
                except Exception:
                    self._handler_errors += 1
                    logger.exception("action of coordination rule %r failed", name)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


@asynccontextmanager
async def open_coordinator(
    room: Room,
    *,
    clock: Callable[[], float] = trio.current_time,
    coordinator: ParticipantCoordinator | None = None,
) -> AsyncIterator[ParticipantCoordinator]:
    """A :class:`ParticipantCoordinator` fed from *room* by a task this block owns.

    Those already in the room are recorded before the block starts; the task
    stops when the block exits (or the room closes)::

        async with open_coordinator(room) as coord:
            coord.create_group("speakers")
            ...

    Args:
        room: The room to follow.
        clock: Where times come from (for a new coordinator).
        coordinator: Feed this one instead of a new one: rules and handlers added
            before see those already in the room join too.
    """
    if coordinator is None:
        coordinator = ParticipantCoordinator(clock=clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(coordinator.run, room)
        yield coordinator
        nursery.cancel_scope.cancel()
