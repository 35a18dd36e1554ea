"""``trio-lkagent dev`` flags: scenarios, metadata, job types, several participants,
the exit code of a failed job, stopping once every job ended, --reload, --help."""

from __future__ import annotations

import re
import signal
import textwrap
from pathlib import Path

import trio

from tests.test_cli import AGENT, ECHO, clean_env, run_cli
from trio_lkagent.devserver import DevServer

ECHO_SOURCE = Path(ECHO).read_text()

SCENARIO = textwrap.dedent(
    """
    from trio_lkagent.events import DataReceived
    from trio_lkagent.testing import DevScenario, wait_for_agent

    async def scenario(dev: DevScenario) -> None:
        alice = await dev.participant("alice")
        events = alice.events()
        agent = await wait_for_agent(alice)
        dev.say(f"scenario: {agent.identity} is here; metadata {dev.metadata}")
        await alice.publish_data("ping", topic="chat")
        async for event in events:
            if isinstance(event, DataReceived) and event.topic == "echo":
                dev.say(f"scenario got {event.payload.decode()}")
                break
        await dev.server.create_dispatch(dev.room, "ghost")
        await dev.server.wait_until(lambda: dev.server.dispatch_notes or None)
    """
)

FAILING = textwrap.dedent(
    """
    from trio_lkagent import JobContext

    async def entrypoint(ctx: JobContext) -> None:
        async with ctx.connect():
            raise RuntimeError(f"bad metadata {ctx.job.metadata}")
    """
)


async def test_a_scenario_file_drives_the_session(tmp_path: Path) -> None:
    scenario = tmp_path / "my_scenario.py"
    scenario.write_text(SCENARIO)
    args = ["dev", ECHO, "--agent-name", "echo", "--scenario", str(scenario)]
    async with run_cli([*args, "--metadata", '{"lang": "fr"}'], clean_env(), tmp_path) as cli:
        assert await cli.finish() == 0, cli.stderr
    out = cli.output
    assert re.search(r"^scenario: agent-AJ_\w+ is here; metadata \{\"lang\": \"fr\"\}$", out, re.M)
    assert "scenario got echo: ping" in out
    assert (
        "dev server: no worker registered for agent 'ghost' in room 'dev-room'"
        " (registered: 'echo')" in out
    )
    assert "scenario finished" in out and "dev-user" not in out  # replaces the built-in one


async def test_a_failed_job_ends_the_session_and_exits_1(tmp_path: Path) -> None:
    agent = tmp_path / "failing.py"
    agent.write_text(FAILING)
    # No --duration: the session ends because every job ended.
    async with run_cli(["dev", str(agent), "--metadata", "x"], clean_env(), tmp_path) as cli:
        assert await cli.finish() == 1
    assert "every job ended" in cli.output
    assert "worker drained: 1 job(s) run, 0 succeeded, 1 failed" in cli.output
    assert "RuntimeError: bad metadata x" in cli.stderr


async def test_participant_jobs_and_several_participants(tmp_path: Path) -> None:
    args = ["dev", ECHO, "--job-type", "participant", "--participants", "2", "--duration", "2"]
    async with run_cli(args, clean_env(), tmp_path) as cli:
        assert await cli.finish() == 0, cli.stderr
    out = cli.output
    assert re.search(r"^worker AW_\w+ registered, agent name '', job type PARTICIPANT$", out, re.M)
    assert "participant 'dev-user-1' joined room 'dev-room'" in out
    assert "participant 'dev-user-2' joined room 'dev-room'" in out
    assert len(re.findall(r"^job AJ_\w+ ended JS_SUCCESS$", out, re.M)) == 2  # one each


async def test_reload_restarts_when_the_agent_changes(tmp_path: Path) -> None:
    agent = tmp_path / "agent.py"
    agent.write_text(ECHO_SOURCE)
    async with run_cli(["dev", str(agent), "--reload"], clean_env(), tmp_path) as cli:
        await cli.expect(r"^watching .* for changes \(--reload\)$")
        await cli.expect(r"^worker AW_\w+ registered")
        agent.write_text(ECHO_SOURCE + "\n# changed\n")
        await cli.expect(r"^agent\.py changed: restarting$")
        await cli.expect(r"^worker AW_\w+ registered")
        cli.process.send_signal(signal.SIGINT)
        assert await cli.finish() == 0, cli.stderr
    assert cli.lines[-1] == "stopped (--reload)"


async def test_help_shows_the_dev_defaults(tmp_path: Path) -> None:
    async with run_cli(["dev", "--help"], clean_env(), tmp_path) as cli:
        assert await cli.finish() == 0
    text = " ".join(cli.output.split())
    assert "default 0 under dev: any free port" in text
    assert "default WARNING under dev" in text
    assert "--job-type {room,publisher,participant}" in text
    assert "--scenario FILE.py" in text and "--reload" in text


async def test_url_runs_the_session_against_an_external_server(
    tmp_path: Path, devserver: DevServer
) -> None:
    # The in-package server plays the external one: dev talks to it through the
    # server API and WebRTC only.
    env = clean_env(LIVEKIT_API_KEY=devserver.api_key, LIVEKIT_API_SECRET=devserver.api_secret)
    args = ["dev", ECHO, "--url", devserver.url, "--agent-name", "echo", "--duration", "2"]
    async with run_cli(args, env, tmp_path) as cli:
        assert await cli.finish() == 0, cli.stderr
    out = cli.output
    assert f"using the LiveKit server at {devserver.url}" in out
    assert re.search(r"^job AJ_\w+ running in this worker$", out, re.M), out
    assert re.search(r"^agent-AJ_\w+ -> dev-user \[echo\]: echo: hello$", out, re.M), out
    assert "room 'dev-room' deleted" in out
    (job,) = devserver.jobs.values()
    assert job.agent_name == "echo" and job.ended


async def _dev_on_a_stubborn_job(args: list[str], env: dict[str, str], tmp_path: Path) -> str:
    """Run ``dev`` on the agent whose job swallows cancellation (tests/cli_agent.py:
    stubborn_worker, drain_timeout 1 s, shutdown_grace 1 s) for one second; check
    it exits on schedule with code 3 and the line naming the stuck job."""
    async with run_cli([*args, "--duration", "1"], env, tmp_path) as cli:
        match = await cli.expect(r"^job (AJ_\w+) started in room dev-room$")
        job_id = match.group(1)
        t0 = trio.current_time()
        code = None
        # duration + grace + the 1 s exit delay + a margin for a loaded VM; without
        # the exit, dev would wait for the stuck task forever.
        with trio.move_on_after(1.0 + 1.0 + 1.0 + 15):
            code = await cli.finish()
        assert code is not None, f"still running: {cli.output}\n{cli.stderr}"
        elapsed = trio.current_time() - t0
    out = cli.output
    assert code == 3, f"{out}\n{cli.stderr}"
    # The usual summary first, then the one line saying why and how it exits.
    drained = "worker drained: 1 job(s) run, 0 succeeded, 1 failed"
    stopped = (
        f"worker stopped: 1 job(s) ignored cancellation and cannot be stopped: {job_id}"
        f" (at {AGENT}:"
    )
    index = {text: i for i, text in enumerate(cli.lines)}
    (line,) = [text for text in cli.lines if text.startswith(stopped)]
    assert drained in index and index[drained] < index[line], out
    assert "in stubborn); they were reported failed" in line
    assert line.endswith("exiting with code 3")
    assert "Traceback" not in cli.stderr
    assert elapsed < 1.0 + 1.0 + 1.0 + 15
    return out


async def test_dev_exits_3_on_schedule_despite_a_job_that_ignores_cancellation(
    tmp_path: Path,
) -> None:
    out = await _dev_on_a_stubborn_job(["dev", f"{AGENT}:stubborn_worker"], clean_env(), tmp_path)
    # The server recorded the terminated job's end at once (as LiveKit does); the
    # worker's report that it failed is said too.
    ended = r"^job AJ_\w+ ended JS_\w+; the worker: failed, job ignored cancellation$"
    assert re.search(ended, out, re.M), out


async def test_dev_url_exits_3_on_schedule_despite_a_job_that_ignores_cancellation(
    tmp_path: Path, devserver: DevServer
) -> None:
    env = clean_env(LIVEKIT_API_KEY=devserver.api_key, LIVEKIT_API_SECRET=devserver.api_secret)
    args = ["dev", f"{AGENT}:stubborn_worker", "--url", devserver.url]
    out = await _dev_on_a_stubborn_job(args, env, tmp_path)
    assert re.search(r"^job AJ_\w+ ended: failed: job ignored cancellation$", out, re.M), out
    (job,) = devserver.jobs.values()
    assert job.ended  # the server ended it with the room (its own reason)
    assert devserver.workers[job.job.state.worker_id].close_code == 1000
