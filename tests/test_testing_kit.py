"""The testing kit itself: fixtures that leak nothing, helpers, the fake context,
and a Worker module importable without configuration."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
from livekit import rtc

from trio_lkagent import JobContext, Worker, WorkerOptions
from trio_lkagent.devserver import DevServer
from trio_lkagent.events import ParticipantConnected, ParticipantDisconnected
from trio_lkagent.testing import (
    AgentWorkerFactory,
    FakeJobContext,
    FakeRoom,
    ParticipantFactory,
    dispatch_job,
    job_status_history,
    run_entrypoint,
    sign_token,
    wait_for_agent,
    wait_for_job_status,
)

ROOT = Path(__file__).resolve().parent.parent
pytest_plugins = ["pytester"]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}


def test_a_module_building_a_worker_imports_without_configuration() -> None:
    code = (
        "import tests.cli_agent as m; print(type(m.worker).__name__, m.worker.options.url or '-')"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_clean_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["Worker", "-"]


async def _rpc_agent(ctx: JobContext) -> None:
    async def shout(data: rtc.RpcInvocationData) -> str:
        return data.payload.upper()

    async with ctx.connect() as room:
        await room.register_rpc_method("shout", shout)
        await room.publish_data(ctx.job.metadata, topic="metadata")
        await trio.sleep_forever()


async def test_fixtures_drive_a_worker_and_participants(
    devserver: DevServer, agent_worker: AgentWorkerFactory, participant: ParticipantFactory
) -> None:
    worker = await agent_worker(_rpc_agent, agent_name="rpc")
    assert worker.worker_id in devserver.workers  # registered when it returns
    user = await participant("kit-room", "user")
    job = await dispatch_job(devserver, "kit-room", "rpc", metadata="meta-1")
    with trio.fail_after(30):
        agent = await wait_for_agent(user)
        for _ in range(100):  # the handler is registered right after joining
            try:
                answer = await user.perform_rpc(agent.identity, "shout", "hi")
                break
            except rtc.RpcError:
                await trio.sleep(0.05)
    assert answer == "HI"
    assert job_status_history(devserver, job.id) == ["pending", "running"]
    # A second worker from a Worker object and from "module:attr".
    w2 = await agent_worker(Worker(_rpc_agent, WorkerOptions(url="ws://unused:1")), agent_name="b")
    w3 = await agent_worker("tests.cli_agent:worker")
    assert w2.options.url == devserver.url and w3.options.agent_name == "cli-worker"
    assert sign_token(devserver, "r", "x").count(".") == 2


def test_no_fixture_leaks_a_thread_or_task(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ntrio_mode = true\n")
    pytester.makepyfile(
        textwrap.dedent(
            """
            import threading
            import trio
            from trio_lkagent.testing import dispatch_job, wait_for_agent

            def ours():
                # Dummy threads are the native library's own threads that once
                # called into Python (livekit's FFI callbacks): not started by us.
                # "Trio thread N" are trio's idle thread cache (trio.to_thread
                # keeps a finished worker thread ~10 s for reuse): trio's, not ours.
                return {
                    t for t in threading.enumerate()
                    if not isinstance(t, threading._DummyThread)
                    and not t.name.startswith("Trio thread ")
                }

            BEFORE = ours()

            async def agent(ctx):
                async with ctx.connect():
                    await trio.sleep_forever()

            async def test_uses_everything(devserver, agent_worker, participant):
                await agent_worker(agent, agent_name="a")
                room = await participant("r", "u")
                await dispatch_job(devserver, "r", "a")
                with trio.fail_after(30):
                    await wait_for_agent(room)
                assert len(ours()) > len(BEFORE)  # the bridges' threads run

            def test_after_teardown():
                assert ours() == BEFORE
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=120)
    result.assert_outcomes(passed=2)


async def test_fake_context_is_the_real_api() -> None:
    ctx = FakeJobContext(room_name="unit", metadata="m", identity="bot")
    assert isinstance(ctx, JobContext) and ctx.job.metadata == "m" and ctx.identity == "bot"
    seen: list[object] = []

    async def entrypoint(ctx: JobContext) -> None:
        async with ctx.connect() as room:
            events = room.events()
            await room.register_rpc_method("echo", _echo)
            who = await room.wait_for_participant("alice")
            seen.append(who.identity)
            async for event in events:
                seen.append(type(event).__name__)
                if isinstance(event, ParticipantDisconnected):
                    return

    room = ctx.fake_room
    assert isinstance(room, FakeRoom)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_entrypoint, entrypoint, ctx)
        await room.wait_for_subscriber()
        with trio.fail_after(5):
            while "echo" not in room._rpc:
                await trio.lowlevel.checkpoint()
        room.join("alice")
        await trio.testing.wait_all_tasks_blocked()  # no threads here: this is exact
        assert await room.call_rpc("alice", "echo", "x") == "x"
        room.leave("alice")
    assert seen == ["alice", ParticipantConnected.__name__, ParticipantDisconnected.__name__]
    with pytest.raises(NotImplementedError, match="devserver"):
        _ = room.local_participant


async def _echo(data: rtc.RpcInvocationData) -> str:
    return data.payload


async def test_wait_for_job_status_names() -> None:
    with pytest.raises(ValueError, match="unknown job status"):
        await wait_for_job_status(None, "x", "done")  # type: ignore[arg-type]


async def _forever(ctx: JobContext) -> None:
    await trio.sleep_forever()


async def test_automatic_dispatch_with_metadata(
    devserver: DevServer, agent_worker: AgentWorkerFactory
) -> None:
    await agent_worker(_forever)  # no agent name: automatic dispatch
    with trio.fail_after(30):
        job = await dispatch_job(devserver, "auto-room", metadata='{"k": 1}')
    assert (job.agent_name, job.job.metadata) == ("", '{"k": 1}')
    assert [j.id for j in devserver.jobs.values()] == [job.id]
