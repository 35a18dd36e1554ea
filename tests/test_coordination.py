"""ParticipantCoordinator and EventProcessor: end to end on a room with real clients, and
their timing rules (batch deadlines, history age) under the autojump clock."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import trio
import trio.testing

from trio_lkagent._bridge import open_bridge
from trio_lkagent.coordination import (
    Activity,
    ActivityType,
    CoordinationRule,
    EventProcessor,
    ParticipantCoordinator,
    open_coordinator,
    open_event_processor,
)
from trio_lkagent.devserver import DevServer
from trio_lkagent.events import (
    ActiveSpeakersChanged,
    DataReceived,
    ParticipantConnected,
    ParticipantDisconnected,
    ParticipantInfo,
)

from .test_handlers import token
from .test_room_e2e import SAFETY_TIMEOUT, client_microphone, open_agent, open_client

# ------------------------------------------------------------------ end to end


async def test_coordinator_follows_a_room_with_groups_rules_and_interactions(
    server: DevServer,
) -> None:
    fired: list[tuple[str, ...]] = []
    joins: list[Activity] = []

    async def pair_present(coord: ParticipantCoordinator) -> None:
        fired.append(tuple(sorted(p.identity for p in coord.active_participants())))

    async def on_join(coord: ParticipantCoordinator, activity: Activity) -> None:
        joins.append(activity)

    async with (
        open_agent(server, "c-room") as agent,
        open_bridge() as bridge,
        open_coordinator(agent) as coord,
    ):
        coord.on(ActivityType.JOINED, on_join)
        coord.add_rule(
            CoordinationRule("pair", lambda c: c.metrics().participants_present == 2, pair_present)
        )
        team = coord.create_group("team", "The team", {"topic": "planning"})
        coord.add_to_group("alice", "team")
        url = server.url
        async with open_client(bridge, url, token(server, "c-room", "bob")):
            async with open_client(bridge, url, token(server, "c-room", "alice")) as alice:
                with trio.fail_after(SAFETY_TIMEOUT):
                    await coord.wait_for(lambda c: c.metrics().participants_present == 2)
                async with client_microphone(alice):
                    with trio.fail_after(SAFETY_TIMEOUT):
                        await coord.wait_for(lambda c: bool(c.participant("alice").tracks))
                local = alice.room.local_participant
                await bridge.run(functools.partial(local.publish_data, b"hello", topic="chat"))
                with trio.fail_after(SAFETY_TIMEOUT):  # data and signalling: separate paths
                    await coord.wait_for(lambda c: bool(c.interactions("alice")))
                await bridge.run(local.set_metadata, "leading")
                with trio.fail_after(SAFETY_TIMEOUT):
                    await coord.wait_for(lambda c: c.participant("alice").metadata == "leading")
            with trio.fail_after(SAFETY_TIMEOUT):
                await coord.wait_for(lambda c: not c.participant("alice").present)
            # Gone, but still in the group; a rejoin under the same identity is the same one.
            assert coord.groups_of("alice") == [team]
            async with open_client(bridge, url, token(server, "c-room", "alice")):
                with trio.fail_after(SAFETY_TIMEOUT):
                    await coord.wait_for(lambda c: c.participant("alice").present)
                assert coord.group_members("team") == {"alice"}
        with trio.fail_after(SAFETY_TIMEOUT):
            await coord.wait_for(lambda c: c.metrics().participants_present == 0)

    alice_record = coord.participant("alice")
    counts = alice_record.activity_counts
    assert counts[ActivityType.JOINED] == 2
    assert counts[ActivityType.LEFT] == 2
    assert counts[ActivityType.TRACK_PUBLISHED] == 1
    assert counts[ActivityType.TRACK_UNPUBLISHED] == 1
    assert counts[ActivityType.DATA_RECEIVED] == 1
    assert counts[ActivityType.METADATA_CHANGED] == 1
    assert alice_record.last_activity_at is not None
    assert (
        alice_record.left_at is not None and alice_record.left_at >= alice_record.last_activity_at
    )
    # alice's data went to everyone present: bob and the agent.
    assert coord.interaction_graph() == {"alice": {"bob": 1, "agent": 1}}
    assert {(i.target, i.kind, i.data) for i in coord.interactions("alice")} == {
        ("bob", "data", b"hello"),
        ("agent", "data", b"hello"),
    }
    # The rule fired when both were there, and again after alice came back.
    assert fired == [("alice", "bob"), ("alice", "bob")]
    assert [a.identity for a in joins] == ["bob", "alice", "alice"]
    metrics = coord.metrics()
    assert (metrics.participants_seen, metrics.groups, metrics.rule_actions) == (2, 1, 2)
    assert metrics.most_active == "alice"


async def test_event_processor_on_a_room(server: DevServer) -> None:
    batches: list[list[bytes]] = []
    handled: list[str] = []
    two_batches = trio.Event()

    async def on_batch(batch: list[Any]) -> None:
        batches.append([e.payload for e in batch])
        if len(batches) == 2:
            two_batches.set()

    async def on_join(event: ParticipantConnected) -> None:
        handled.append(event.identity)

    async with (
        open_agent(server, "p-room") as agent,
        open_bridge() as bridge,
        open_event_processor(agent) as processor,
    ):
        processor.add_filter(lambda e: getattr(e, "identity", "") != "mallory")
        processor.on(ParticipantConnected, on_join)
        processor.add_batch_processor(on_batch, max_events=3, max_wait=0.5, types=[DataReceived])
        url = server.url
        async with (
            open_client(bridge, url, token(server, "p-room", "mallory")) as mallory,
            open_client(bridge, url, token(server, "p-room", "zoe")) as zoe,
        ):
            for payload in (b"1", b"2", b"3", b"4"):
                await bridge.run(zoe.room.local_participant.publish_data, payload)
            await bridge.run(mallory.room.local_participant.publish_data, b"spam")
            with trio.fail_after(SAFETY_TIMEOUT):
                # 3 at once by count; the 4th alone once it is 0.5 s old.
                await two_batches.wait()
        stats = processor.statistics()
        joined = processor.history(ParticipantConnected)
    assert batches == [[b"1", b"2", b"3"], [b"4"]]
    assert handled == ["zoe"]
    assert [r.event.identity for r in joined] == ["zoe"]
    assert stats.filtered >= 2  # mallory's join and data
    assert stats.batches == 2
    assert stats.handler_errors == 0


# ------------------------------------------------------------------ timing, offline


def joined(identity: str) -> ParticipantConnected:
    return ParticipantConnected(identity, ParticipantInfo(identity))


def left(identity: str) -> ParticipantDisconnected:
    return ParticipantDisconnected(identity, ParticipantInfo(identity))


async def test_batches_flush_on_count_or_age(autojump_clock: trio.testing.MockClock) -> None:
    flushed: list[tuple[float, int]] = []

    async def on_batch(batch: list[Any]) -> None:
        flushed.append((trio.current_time(), len(batch)))

    processor = EventProcessor()
    processor.add_batch_processor(on_batch, max_events=2, max_wait=5.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(processor.run)
        start = trio.current_time()
        await processor.submit(joined("a"))
        await processor.submit(joined("b"))  # two: flushed at once
        await trio.testing.wait_all_tasks_blocked()
        await processor.submit(joined("c"))  # one: flushed 5 s later
        await trio.sleep(10)
        nursery.cancel_scope.cancel()
    assert [(round(t - start, 3), n) for t, n in flushed] == [(0.0, 2), (5.0, 1)]


async def test_history_by_type_time_and_age(autojump_clock: trio.testing.MockClock) -> None:
    processor = EventProcessor(history_size=3, history_max_age=60)
    for who in ("a", "b"):
        processor.submit_nowait(joined(who))
    assert await processor.process_pending() == 2
    await trio.sleep(30)
    middle = trio.current_time()
    processor.submit_nowait(left("a"))
    processor.submit_nowait(joined("c"))
    await processor.process_pending()
    # Bounded by count: the oldest of four is gone.
    assert [r.event.identity for r in processor.history()] == ["b", "a", "c"]
    assert [r.event.identity for r in processor.history(ParticipantConnected)] == ["b", "c"]
    assert [r.event.identity for r in processor.history(since=middle)] == ["a", "c"]
    assert [r.event.identity for r in processor.history(limit=1)] == ["c"]
    await trio.sleep(40)  # b is 70 s old now
    assert [r.event.identity for r in processor.history()] == ["a", "c"]


async def test_handler_errors_are_counted_and_the_queue_is_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def broken(event: Any) -> None:
        raise RuntimeError("broken handler")

    processor = EventProcessor(max_pending=2)
    processor.on(ParticipantConnected, broken)
    processor.submit_nowait(joined("a"))
    await trio.sleep(2)
    processor.submit_nowait(joined("b"))
    with pytest.raises(trio.WouldBlock):
        processor.submit_nowait(joined("c"))
    assert await processor.process_pending() == 2
    stats = processor.statistics()
    assert (stats.received, stats.dropped, stats.handler_errors, stats.handled) == (3, 1, 2, 0)
    assert stats.max_lag == pytest.approx(2.0)
    assert stats.pending == 0


async def test_speakers_make_speaking_activity_and_spoke_after_edges(
    autojump_clock: trio.testing.MockClock,
) -> None:
    coord = ParticipantCoordinator()
    for who in ("ann", "ben"):
        await coord.handle_event(joined(who))
    await coord.handle_event(ActiveSpeakersChanged(("ann",)))
    await trio.sleep(1)
    await coord.handle_event(ActiveSpeakersChanged(("ben",)))
    await coord.handle_event(ActiveSpeakersChanged(()))
    await coord.handle_event(ActiveSpeakersChanged(("ann",)))
    assert coord.metrics().speaking == ("ann",)
    assert coord.interaction_graph() == {"ben": {"ann": 1}, "ann": {"ben": 1}}
    assert coord.participant("ben").activity_counts[ActivityType.SPEAKING] == 2  # on, off
    # A participant who leaves while speaking stops speaking.
    await coord.handle_event(left("ann"))
    assert coord.metrics().speaking == ()
