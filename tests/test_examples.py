"""The examples run as a newcomer runs them."""

from __future__ import annotations

import functools
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import trio
import trio.testing
from livekit import api as lkapi
from livekit.protocol import agent as agent_pb
from livekit.protocol import agent_dispatch as dispatch_pb

from trio_lkagent import open_room
from trio_lkagent.devserver import DevServer

from .conftest import worker_options

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


async def test_minimal_worker_demo_runs_jobs_against_the_dev_server() -> None:
    with trio.fail_after(60):  # a safety net for a subprocess, not a timing assertion
        result = await trio.run_process(
            [sys.executable, str(EXAMPLES / "minimal_worker.py"), "--demo"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    assert "worker registered as AW_" in out
    assert out.count("] done") == 2
    assert out.count("ended JS_SUCCESS") == 3
    assert "worker drained; bye" in out
    assert "Traceback" not in result.stderr.decode()


# ------------------------------------------------------------------ room analytics


def _load_example(name: str) -> Any:
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _token(server: DevServer, room: str, identity: str, **attributes: str) -> str:
    return (
        lkapi.AccessToken(server.api_key, server.api_secret)
        .with_identity(identity)
        .with_attributes(attributes)
        .with_grants(lkapi.VideoGrants(room_join=True, room=room))
        .to_jwt()
    )


async def test_room_analytics_example(server: DevServer) -> None:
    example = _load_example("room_analytics")
    analytics = example.AnalyticsCollector()
    worker = example.make_worker(worker_options(server, agent_name=example.AGENT_NAME), analytics)
    with trio.fail_after(60):  # a safety net around real rooms, not a timing assertion
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            await server.create_room(
                "ex-analytics",
                agents=[dispatch_pb.RoomAgentDispatch(agent_name=example.AGENT_NAME)],
            )
            job = await server.wait_for_job(room="ex-analytics", status=agent_pb.JS_RUNNING)
            agent = job.accepted_identity
            url = server.url
            async with (
                open_room(url, _token(server, "ex-analytics", "ivy", team="blue")) as ivy,
                open_room(url, _token(server, "ex-analytics", "jay")),
            ):
                await ivy.wait_for_participant(agent)
                # The session is made when the job's on_job_assigned starts.
                while "ex-analytics" not in analytics.sessions:  # noqa: ASYNC110
                    await trio.sleep(0.01)
                session = analytics.sessions["ex-analytics"]
                coord = session.coordinator
                # Joins (signalling) and data (data channel) take separate paths.
                await coord.wait_for(lambda c: {"ivy", "jay"} <= set(c.participants))
                await ivy.publish_data(b'{"hello": "analytics"}')
                async with ivy.publish_audio(sample_rate=48_000) as out:
                    await out.write(np.zeros(4800, dtype=np.int16))
                    await coord.wait_for(
                        lambda c: (
                            bool(c.participant("ivy").tracks)
                            and c.metrics().activities.get(example.ActivityType.DATA_RECEIVED)
                        )
                    )
                    assert session.stats().tracks == 1
            # Both gone: the agent leaves after AutoDisconnect's grace, the job ends.
            await server.wait_job_status(job.id, agent_pb.JS_SUCCESS)
            worker.drain()
    stats = session.stats()
    assert (stats.participants, stats.tracks, stats.data_messages) == (0, 0, 1)
    assert session.ended_at is not None
    report = analytics.report()
    assert report[0].startswith("Room: ex-analytics (ended) - Participants: 0")
    ivy_line = next(line for line in report if line.startswith("  ivy (left"))
    assert "joined 1" in ivy_line and "data_received 1" in ivy_line
    assert "track_published 1" in ivy_line
    assert "  group publishers: ivy" in report
    assert "  group team:blue: ivy" in report
    assert "  ivy -> jay: 1" in report
    assert f"  ivy -> {agent}: 1" in report
    assert analytics.summary()[:2] == ["Total rooms monitored: 1", "Total participants: 2"]


async def test_room_analytics_reports_every_30_and_60_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from trio_lkagent.coordination import EventProcessor, ParticipantCoordinator
    from trio_lkagent.events import DataReceived, ParticipantConnected, ParticipantInfo

    example = _load_example("room_analytics")
    lines: list[tuple[float, str]] = []
    analytics = example.AnalyticsCollector(
        emit=lambda line: lines.append((trio.current_time(), line))
    )
    start = trio.current_time()
    coord = ParticipantCoordinator(local_identity="agent")
    session = example.RoomSession("r", "AJ_1", coord, EventProcessor())
    analytics.sessions["r"] = session
    example.watch(session)
    info = ParticipantInfo("kim", attributes={"team": "red"})
    await coord.handle_event(ParticipantConnected("kim", info))
    await coord.handle_event(DataReceived("kim", b"hi"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(example.run_status, session, analytics.emit, 30.0)
        nursery.start_soon(analytics.run_reporter, 60.0)
        await trio.sleep(61)
        nursery.cancel_scope.cancel()
    at = [(round(t - start), line) for t, line in lines]
    status = "Room status - Name: r, Participants: 1, Tracks: 0, Messages: 1, Duration: "
    assert at[0] == (30, status + "30s")
    assert (60, status + "60s") in at
    report = [line for t, line in at if t == 60 and not line.startswith("Room status")]
    assert report == [
        "=== Analytics Report ===",
        "Room: r (active) - Participants: 1, Tracks: 0, Messages: 1, Duration: 60s",
        "  kim (present): joined 1, data_received 1; last active 60s ago",
        "  group publishers: -",
        "  group team:red: kim",
        "  kim -> agent: 1",
    ]


async def test_room_analytics_prints_the_summary_on_sigterm(server: DevServer) -> None:
    env = dict(
        os.environ,
        LIVEKIT_URL=server.url,
        LIVEKIT_API_KEY=server.api_key,
        LIVEKIT_API_SECRET=server.api_secret,
    )
    command = [sys.executable, str(EXAMPLES / "room_analytics.py")]
    with trio.fail_after(60):  # a safety net for a subprocess, not a timing assertion
        async with trio.open_nursery() as nursery:
            process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    command,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    check=False,
                )
            )
            await server.wait_for_worker("simple-room-agent")
            process.send_signal(signal.SIGTERM)
            assert process.stdout is not None
            out = b""
            async for chunk in process.stdout:
                out += chunk
            await process.wait()
    assert process.returncode == 0
    assert out.decode().splitlines() == [
        "=== Final Summary ===",
        "Total rooms monitored: 0",
        "Total participants: 0",
        "Total tracks: 0",
        "Total data messages: 0",
        "Total monitoring time: 0s",
    ]


async def test_transcription_agent_demo_prints_what_was_said() -> None:
    with trio.fail_after(120):  # a safety net for a subprocess, not a timing assertion
        result = await trio.run_process(
            [sys.executable, str(EXAMPLES / "transcription_agent.py"), "--demo"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    out = result.stdout.decode()
    assert result.returncode == 0, result.stderr.decode()
    lines = [line for line in out.splitlines() if line.startswith("transcript [")]
    assert len(lines) == 2, out
    assert "four five six" in lines[0]
    assert "weather today" in lines[1]
    assert "Traceback" not in result.stderr.decode()
