"""Testing examples/echo_agent.py as its author would (docs/testing.md).

Only public names: the fixtures ``devserver``, ``agent_worker`` and
``participant`` come from the trio-lkagent pytest plugin, registered by
installing the package.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trio

from trio_lkagent.events import DataReceived, TrackSubscribed
from trio_lkagent.testing import (
    FakeJobContext,
    dispatch_job,
    job_status_history,
    received_data,
    run_entrypoint,
    wait_for_agent,
    wait_for_job_status,
)

AGENT = str(Path(__file__).resolve().parent.parent / "examples" / "echo_agent.py")


async def test_echoes_data_back_to_its_sender(devserver, agent_worker, participant) -> None:  # type: ignore[no-untyped-def]
    worker = await agent_worker(f"{AGENT}:entrypoint", agent_name="echo")
    alice = await participant("echo-room", "alice")
    events = alice.events()
    job = await dispatch_job(devserver, "echo-room", "echo", metadata="test")
    with trio.fail_after(30):
        await wait_for_agent(alice)
        await alice.publish_data("hello", topic="chat")
        async for event in events:
            if isinstance(event, DataReceived) and event.topic == "echo":
                break
    assert event.payload == b"echo: hello"
    assert [r.payload for r in received_data(devserver, "echo-room", sender="alice")] == [b"hello"]
    assert job.job.metadata == "test"
    # Everyone leaving ends the job, successfully.
    await alice.aclose()
    with trio.fail_after(30):
        await wait_for_job_status(devserver, job.id, "success")  # any end will do
        while worker.statistics().running_jobs:  # noqa: ASYNC110 - polling a statistic
            await trio.sleep(0.05)
    assert worker.statistics().jobs_succeeded == 1
    assert job_status_history(devserver, job.id) == ["pending", "running", "success"]


async def test_plays_your_audio_back_and_reports_its_level(  # type: ignore[no-untyped-def]
    devserver, agent_worker, participant
) -> None:
    await agent_worker(f"{AGENT}:entrypoint", agent_name="echo")
    bob = await participant("audio-room", "bob")
    events = bob.events()
    await dispatch_job(devserver, "audio-room", "echo")
    tone = (np.sin(2 * np.pi * 440 * np.arange(48_000) / 48_000) * 8_000).astype(np.int16)
    heard_echo = False
    with trio.fail_after(60):
        async with (
            bob.publish_audio(sample_rate=48_000, name="mic") as mic,
            trio.open_nursery() as nursery,
        ):

            async def speak() -> None:
                while True:
                    await mic.write(tone)

            nursery.start_soon(speak)
            async for event in events:
                if isinstance(event, TrackSubscribed) and event.track.name == "echo-bob":
                    heard_echo = True
                if isinstance(event, DataReceived) and event.topic == "level":
                    break
            nursery.cancel_scope.cancel()
    assert heard_echo
    level = float(event.payload.decode().removeprefix("your audio: ").split()[0])
    assert -30 < level < -5  # a 8000/32768 sine is about -15 dBFS


async def test_unit_echo_without_a_server() -> None:
    """The entrypoint's data logic, in memory, in milliseconds (no WebRTC)."""
    from examples.echo_agent import entrypoint

    ctx = FakeJobContext(room_name="unit-room")
    room = ctx.fake_room
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_entrypoint, entrypoint, ctx)
        room.join("carol")
        room.send("ping", sender="carol", topic="chat")
        with trio.fail_after(10):
            await room.wait_for_sent(1)
        assert [(d.text, d.topic, d.destination_identities) for d in room.sent] == [
            ("echo: ping", "echo", ("carol",))
        ]
        assert not room.audio_outputs  # an echo track only for someone who speaks
        room.leave("carol")  # the last one leaves: the entrypoint returns
    assert ctx.shutdown_reason is None
