"""Checkpoints: the stores (memory, SQLite, a real Redis), ctx.checkpoint, resume after kill -9."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from livekit.protocol import agent as agent_pb

from trio_lkagent import ConfigurationError, JobContext, JobType
from trio_lkagent.devserver import DevServer
from trio_lkagent.resilience import (
    CheckpointStore,
    MemoryCheckpointStore,
    RedisCheckpointStore,
    SQLiteCheckpointStore,
    open_checkpoint_store,
)
from trio_lkagent.resilience._checkpoint import checkpoint_scope

from ..test_cli import run_cli, server_env
from ._util import running_worker

HERE = Path(__file__).resolve().parent
AGENT = str(HERE / "checkpoint_agent.py")


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[CheckpointStore]:
    if request.param == "memory":
        made: CheckpointStore = MemoryCheckpointStore()
    elif request.param == "sqlite":
        made = SQLiteCheckpointStore(tmp_path / "ckpt.db")
    else:
        url = request.getfixturevalue("redis_url")
        made = RedisCheckpointStore(url, prefix=f"test:{os.getpid()}:{tmp_path.name}:")
    try:
        yield made
    finally:
        await made.aclose()


async def test_store_contract(store: CheckpointStore) -> None:
    assert isinstance(store, CheckpointStore)
    assert not await store.exists("a/room")
    assert await store.load("a/room", "k") is None
    await store.save("a/room", "k", '{"n":1}')
    await store.save("a/room", "k", '{"n":2}')  # replaced
    await store.save("a/room", "other", '"x"')
    await store.save("b/room", "k", "3")
    assert await store.exists("a/room")
    assert await store.load("a/room", "k") == '{"n":2}'
    await store.clear("a/room")
    assert not await store.exists("a/room")
    assert await store.load("a/room", "other") is None
    assert await store.load("b/room", "k") == "3"  # other scopes untouched
    await store.aclose()
    await store.aclose()  # idempotent


def test_store_urls(tmp_path: Path) -> None:
    assert isinstance(open_checkpoint_store("memory://"), MemoryCheckpointStore)
    sqlite = open_checkpoint_store(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(sqlite, SQLiteCheckpointStore) and sqlite.path == tmp_path / "x.db"
    assert isinstance(open_checkpoint_store("redis://127.0.0.1:1/2"), RedisCheckpointStore)
    for bad in ("postgres://x", "redis://h/notanumber", "sqlite://"):
        with pytest.raises(ConfigurationError):
            open_checkpoint_store(bad)


def test_scope_is_the_identity_that_survives_a_redispatch() -> None:
    room_job = agent_pb.Job(id="AJ_1", type=agent_pb.JT_ROOM, room={"name": "r 1"})
    again = agent_pb.Job(id="AJ_2", type=agent_pb.JT_ROOM, room={"name": "r 1"})
    assert checkpoint_scope(room_job, "bot") == checkpoint_scope(again, "bot") == "/bot/r%201"
    alice = agent_pb.Job(
        id="AJ_3", type=agent_pb.JT_PARTICIPANT, room={"name": "r"}, participant={"identity": "al"}
    )
    bob = agent_pb.Job(
        id="AJ_4", type=agent_pb.JT_PARTICIPANT, room={"name": "r"}, participant={"identity": "bo"}
    )
    assert checkpoint_scope(alice, "bot", "ns") == "ns/bot/r/al"
    assert checkpoint_scope(alice, "bot") != checkpoint_scope(bob, "bot")


async def test_sqlite_is_safe_across_processes(tmp_path: Path) -> None:
    """Three processes write 50 keys each into one file at the same time: none is lost."""
    db = tmp_path / "shared.db"
    code = (
        "import sys, trio\n"
        "from trio_lkagent.resilience import SQLiteCheckpointStore\n"
        "async def main():\n"
        "    store = SQLiteCheckpointStore(sys.argv[1])\n"
        "    for i in range(50):\n"
        "        await store.save('scope', f'{sys.argv[2]}-{i}', str(i))\n"
        "    await store.aclose()\n"
        "trio.run(main)\n"
    )
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for name in "abc":
                nursery.start_soon(trio.run_process, [sys.executable, "-c", code, str(db), name])
    store = SQLiteCheckpointStore(db)
    try:
        for name in "abc":
            for i in (0, 25, 49):
                assert await store.load("scope", f"{name}-{i}") == str(i)
    finally:
        await store.aclose()


async def test_ctx_checkpoint_through_the_worker(server: DevServer, tmp_path: Path) -> None:
    seen: list[tuple[str, bool, object]] = []

    async def entrypoint(ctx: JobContext) -> None:
        value = await ctx.checkpoint.load("progress", {"step": 0})
        seen.append((ctx.room_name, ctx.resumed, value))
        await ctx.checkpoint.save("progress", {"step": value["step"] + 1})
        if ctx.job.metadata == "done":
            await ctx.checkpoint.clear()

    url = f"sqlite:///{tmp_path}/w.db"
    async with running_worker(server, entrypoint, checkpoint_store=url):
        for metadata in ("", "", "done", ""):
            await server.create_dispatch(room="steps", agent_name="test-agent", metadata=metadata)
            await server.wait_until(
                lambda: (
                    (
                        len(server.jobs) > 0
                        and all(j.status == agent_pb.JS_SUCCESS for j in server.jobs.values())
                    )
                    or None
                )
            )
        await server.create_dispatch(room="elsewhere", agent_name="test-agent")
        await server.wait_for_job(room="elsewhere", status=agent_pb.JS_SUCCESS)
    assert seen == [
        ("steps", False, {"step": 0}),
        ("steps", True, {"step": 1}),
        ("steps", True, {"step": 2}),
        ("steps", False, {"step": 0}),  # cleared by the job before
        ("elsewhere", False, {"step": 0}),
    ]


async def test_default_store_is_in_memory(server: DevServer) -> None:
    async def entrypoint(ctx: JobContext) -> None:
        assert ctx.job_type is JobType.ROOM
        await ctx.checkpoint.save("x", 1)
        assert await ctx.checkpoint.load("x") == 1

    async with running_worker(server, entrypoint, checkpoint_store=None):
        await server.create_dispatch(room="mem", agent_name="test-agent")
        await server.wait_for_job(room="mem", status=agent_pb.JS_SUCCESS)


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_state_survives_kill_9(
    kind: str, server: DevServer, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A worker process killed mid-job; a new worker, a new dispatch for the room: it continues."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path}/resume.db"
    else:
        url = request.getfixturevalue("redis_url")
        url = url.rsplit("/", 1)[0] + "/3"  # a database of its own
    env = server_env(server, LIVEKIT_HEALTH_PORT="off", LIVEKIT_CHECKPOINT_URL=url)
    room = f"resume-{kind}-{os.getpid()}-{tmp_path.name}"
    async with run_cli(["start", AGENT], env, tmp_path) as first:
        await first.expect(r"worker AW_\w+ registered")
        await server.create_dispatch(room=room, agent_name="counter")
        await first.expect(rf"room {room} resumed=False count=0")
        await first.expect(r"saved count=5$")
        os.kill(first.process.pid, signal.SIGKILL)
        assert await first.process.wait() == -signal.SIGKILL
    saved = max(int(line.split("=")[1]) for line in first.lines if line.startswith("saved count="))
    async with run_cli(["start", AGENT], env, tmp_path) as second:
        await second.expect(r"worker AW_\w+ registered")
        await server.create_dispatch(room=room, agent_name="counter")
        match = await second.expect(rf"room {room} resumed=(\w+) count=(\d+)")
        assert match[1] == "True"
        # Every save printed had been committed: the count continues from there.
        assert int(match[2]) >= saved
        await second.expect(rf"saved count={int(match[2]) + 1}$")
