"""The ``trio-lkagent`` command line, run as a user runs it: subprocesses, signals, HTTP.

Workers started by the CLI connect to the in-test dev server (``server``
fixture) through ``LIVEKIT_URL``; health servers bind port 0 and print their
URL. Every wait has a safety timeout; nothing is asserted about time.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from livekit import api as lkapi
from livekit import rtc
from livekit.protocol import agent as agent_pb

from trio_lkagent._bridge import open_bridge
from trio_lkagent._cli import main
from trio_lkagent.devserver import DevServer

from ._http import http_get
from .test_health import metric_values

ROOT = Path(__file__).resolve().parent.parent
AGENT = str(ROOT / "tests" / "cli_agent.py")
ECHO = str(ROOT / "examples" / "echo_agent.py")
#: The console script pip installed next to this interpreter.
SCRIPT = Path(sys.executable).parent / "trio-lkagent"
# A safety net for subprocesses that start a Python each, not a timing assertion.
SAFETY = 60


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any LIVEKIT_* variable, plus *extra*."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    env.update(extra)
    return env


def server_env(server: DevServer, **extra: str) -> dict[str, str]:
    return clean_env(
        LIVEKIT_URL=server.url,
        LIVEKIT_API_KEY=server.api_key,
        LIVEKIT_API_SECRET=server.api_secret,
        **extra,
    )


class CLI:
    """A running ``trio-lkagent`` whose stdout is read line by line."""

    def __init__(self, process: trio.Process, stderr: Path) -> None:
        self.process = process
        self.lines: list[str] = []
        self._stderr = stderr
        self._buffer = b""
        self._eof = False

    @property
    def stderr(self) -> str:
        return self._stderr.read_text(errors="replace")

    async def _read_line(self) -> str | None:
        assert self.process.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.process.stdout.receive_some()
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        text = line.decode()
        self.lines.append(text)
        return text

    async def expect(self, pattern: str) -> re.Match[str]:
        """Read stdout until a line matches *pattern* (a regex)."""
        with trio.fail_after(SAFETY):
            while (line := await self._read_line()) is not None:
                if match := re.search(pattern, line):
                    return match
        raise AssertionError(f"no line matching {pattern!r} in {self.lines}\n{self.stderr}")

    async def finish(self) -> int:
        """Read stdout to its end and wait for the exit code."""
        with trio.fail_after(SAFETY):
            while await self._read_line() is not None:
                pass
            return await self.process.wait()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


@asynccontextmanager
async def run_cli(
    args: Sequence[str], env: Mapping[str, str], tmp_path: Path
) -> AsyncIterator[CLI]:
    stderr = tmp_path / f"stderr-{args[0]}.txt"
    with open(stderr, "wb") as err:  # noqa: ASYNC230 - a local file, before the process starts
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "trio_lkagent", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            env=dict(env),
            cwd=ROOT,
        )
    try:
        yield CLI(process, stderr)
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            assert process.stdout is not None
            await process.stdout.aclose()


# ------------------------------------------------------------------ configuration errors


@pytest.fixture
def no_logging_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs of ``main`` must fail before touching the test's logging."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("configure_logging called by an in-process test")

    monkeypatch.setattr("trio_lkagent._cli.configure_logging", forbidden)


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        ("LIVEKIT_MAX_CONCURRENT_JOBS", "lots", "an integer >= 1"),
        ("LIVEKIT_LOG_LEVEL", "loud", "one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("LIVEKIT_RECOVERY_ENABLED", "perhaps", "one of 1, 0, true, false, yes, no, on, off"),
    ],
)
@pytest.mark.usefixtures("no_logging_setup")
def test_a_bad_variable_is_one_line_and_exit_2(
    variable: str, value: str, accepted: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(variable, value)
        assert main(["start", AGENT]) == 2
    err = capsys.readouterr().err
    assert err == f"trio-lkagent: error: {variable}={value!r} is not valid: expected {accepted}\n"


def test_the_console_script_reports_bad_values_the_same_way() -> None:
    result = subprocess.run(
        [str(SCRIPT), "start", AGENT],
        env=clean_env(LIVEKIT_WEBSOCKET_DEBUG="sometimes", LIVEKIT_URL="ws://127.0.0.1:1"),
        capture_output=True,
        text=True,
        timeout=SAFETY,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "trio-lkagent: error: LIVEKIT_WEBSOCKET_DEBUG='sometimes' is not valid:"
        " expected one of 1, 0, true, false, yes, no, on, off"
    ]
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["start", ECHO], "LIVEKIT_URL is not set: set it or pass --url"),
        (["start", "no/such/file.py"], "target file 'no/such/file.py' does not exist"),
        (["start", "no_such_module_xyz:app"], "cannot import module 'no_such_module_xyz'"),
        (["start", f"{ECHO}:missing"], "has no attribute 'missing'"),
        (["start", f"{ECHO}:RATE"], "'RATE' is of type int, expected a Worker"),
        (["start", AGENT], "no server URL: pass WorkerOptions(url=...) or set LIVEKIT_URL"),
        (["start", ECHO, "--health-port", "http"], "--health-port='http' is not valid"),
        (["dispatch", "--agent-name", "a", "--url", "ws://h:1"], "LIVEKIT_ROOM is not set"),
    ],
)
@pytest.mark.usefixtures("no_logging_setup")
def test_usage_errors_are_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("LIVEKIT_")]:
            mp.delenv(name)
        assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("trio-lkagent: error: ") and message in err
    assert err.count("\n") == 1


# ------------------------------------------------------------------ start


async def test_start_serves_health_and_drains_on_sigterm(server: DevServer, tmp_path: Path) -> None:
    release = tmp_path / "release"
    env = server_env(server, LIVEKIT_AGENT_NAME="cli-agent", LIVEKIT_HEALTH_PORT="0")
    async with run_cli(["start", f"{AGENT}:entrypoint"], env, tmp_path) as cli:
        health = (await cli.expect(r"health server at (http://\S+)"))[1]
        await cli.expect(r"worker AW_\w+ registered at ws://.*, agent name 'cli-agent'")
        await server.create_dispatch(room="cli-room", agent_name="cli-agent", metadata=str(release))
        job = await server.wait_for_job(room="cli-room", status=agent_pb.JS_RUNNING)
        await cli.expect(f"job {job.id} started in room cli-room")

        assert (await http_get(health + "/"))[0] == 200
        report = json.loads((await http_get(health + "/worker"))[2])
        assert report["jobs"] == [{"id": job.id, "room": "cli-room"}]
        assert (report["status"], report["agent_name"]) == ("available", "cli-agent")
        metrics = metric_values((await http_get(health + "/metrics"))[2])
        assert metrics["lkagent_jobs_running"] == 1
        assert metrics["lkagent_dispatch_latency_seconds_count"] == 1

        cli.process.send_signal(signal.SIGTERM)
        await cli.expect(r"SIGTERM: draining \(1 job\(s\) running")
        status, _, body = await http_get(health + "/")
        assert (status, body) == (503, b"draining: 1 job(s) still running\n")
        release.touch()  # the job ends by itself: draining waited for it
        await cli.expect(f"job {job.id} finished")
        assert await cli.finish() == 0, cli.stderr
    assert server.jobs[job.id].status == agent_pb.JS_SUCCESS
    assert "worker stopped: 1 job(s) run, 1 succeeded, 0 failed" in cli.output
    # Log records of the job carry its context.
    assert f"cli_agent: job started [worker={report['worker_id']} job={job.id}" in cli.stderr
    assert "Traceback" not in cli.stderr


@pytest.mark.parametrize("signals", [1, 2], ids=["drain", "cancel"])
async def test_start_exits_on_schedule_despite_a_job_that_ignores_cancellation(
    server: DevServer, tmp_path: Path, signals: int
) -> None:
    # stubborn_worker: drain_timeout 1 s, shutdown_grace 1 s; its job never ends.
    env = server_env(server, LIVEKIT_HEALTH_PORT="off")
    async with run_cli(["start", f"{AGENT}:stubborn_worker"], env, tmp_path) as cli:
        await cli.expect(r"worker AW_\w+ registered at ws://.*, agent name 'cli-stubborn'")
        await server.create_dispatch(room="stuck-room", agent_name="cli-stubborn")
        job = await server.wait_for_job(room="stuck-room", status=agent_pb.JS_RUNNING)
        await cli.expect(f"job {job.id} started in room stuck-room")
        sw = server.workers[job.job.state.worker_id]
        t0 = trio.current_time()
        for _ in range(signals):
            cli.process.send_signal(signal.SIGTERM)
            await cli.expect(r"SIGTERM(: draining| again: cancelling)")
        # Without the exit the process would wait for the stuck task forever.
        code = None
        with trio.move_on_after(1.0 + 1.0 + 15):  # drain + grace + a margin for a loaded VM
            code = await cli.finish()
        assert code is not None, f"still running after SIGTERM: {cli.output}\n{cli.stderr}"
        elapsed = trio.current_time() - t0
    assert code == 3, cli.stderr
    line = (
        f"worker stopped: 1 job(s) ignored cancellation and cannot be stopped: {job.id}"
        f" (at {AGENT}:"
    )
    assert [text for text in cli.lines if text.startswith(line)], cli.output
    assert "in stubborn); they were reported failed" in cli.output
    assert "exiting with code 3" in cli.stderr  # the same line in the log
    # The server has the job's final status and the session closed normally.
    record = server.jobs[job.id]
    assert record.status == agent_pb.JS_FAILED
    assert record.job.state.error == "job ignored cancellation"
    assert sw.close_code == 1000
    assert "Traceback" not in cli.stderr
    assert elapsed < 1.0 + 1.0 + 15


async def test_processes_register_separately_and_a_killed_one_is_restarted(
    server: DevServer, tmp_path: Path
) -> None:
    env = server_env(server, LIVEKIT_HEALTH_PORT="off")
    async with run_cli(["start", AGENT, "--processes", "2"], env, tmp_path) as cli:
        registered: dict[int, str] = {}  # pid -> worker id
        while len(registered) < 2:
            match = await cli.expect(r"worker (AW_\w+) registered .*'cli-worker' \(pid (\d+)\)")
            registered[int(match[2])] = match[1]
        await server.wait_for_worker(agent_name="cli-worker", count=2)
        victim, survivor = list(registered)
        os.kill(victim, signal.SIGKILL)
        await cli.expect(rf"process \d/2 \(pid {victim}\) exited with code -9; restarting")
        match = await cli.expect(r"worker (AW_\w+) registered .*\(pid (\d+)\)")
        new_id, new_pid = match[1], int(match[2])
        assert new_pid not in registered and new_id not in registered.values()

        def connected() -> set[str]:
            return {w.worker_id for w in server.workers.values() if w.connected}

        await server.wait_until(
            lambda: True if connected() == {registered[survivor], new_id} else None
        )
        cli.process.send_signal(signal.SIGTERM)
        assert await cli.finish() == 0, cli.stderr
    assert cli.output.count("worker stopped: 0 job(s) run") == 2
    assert not connected()


# ------------------------------------------------------------------ dev, devserver, dispatch


async def test_dev_runs_the_echo_example_and_exits_after_duration(tmp_path: Path) -> None:
    async with run_cli(["dev", ECHO, "--duration", "2"], clean_env(), tmp_path) as cli:
        assert await cli.finish() == 0, cli.stderr
    out = cli.output
    for expected in (
        r"^dev server at http://127\.0\.0\.1:\d+",
        r"^worker AW_\w+ registered",
        r"^room 'dev-room' created with automatic dispatch",
        r"^job (AJ_\w+) dispatched to worker AW_\w+: running",
        r"^participant 'dev-user' joined room 'dev-room'",
        r"^agent 'agent-AJ_\w+' is in the room",
        r"^job AJ_\w+ ended JS_SUCCESS$",
        r"^participant 'dev-user' left",
        r"^worker drained: 1 job\(s\) run, 1 succeeded, 0 failed",
        r"^dev server stopped$",
    ):
        assert re.search(expected, out, re.MULTILINE), (expected, out)


async def test_dev_stops_cleanly_on_ctrl_c_after_the_agent_answered(tmp_path: Path) -> None:
    async with run_cli(["dev", ECHO, "--room", "ctrl-c"], clean_env(), tmp_path) as cli:
        await cli.expect(r"^agent-AJ_\w+ published track 'echo-dev-user' \(audio\)$")
        await cli.expect(r"^agent-AJ_\w+ -> dev-user \[echo\]: echo: ")
        cli.process.send_signal(signal.SIGINT)
        await cli.expect(r"^SIGINT: ending the session")
        assert await cli.finish() == 0, cli.stderr
    assert re.search(r"^job AJ_\w+ ended JS_SUCCESS$", cli.output, re.MULTILINE), cli.output
    assert cli.lines[-1] == "dev server stopped"


# The conventional dev key pair is shorter than PyJWT likes; the client signs with it.
@pytest.mark.filterwarnings("ignore:The HMAC key is")
async def test_devserver_prints_its_url_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    async with run_cli(["devserver", "--port", "0"], clean_env(), tmp_path) as cli:
        url = (await cli.expect(r"^LiveKit dev server at (http://127\.0\.0\.1:\d+)"))[1]
        await cli.expect(r"^  api key:    devkey$")
        await cli.expect(r"^  api secret: secret$")
        await cli.expect(rf"^  export LIVEKIT_URL={url} LIVEKIT_API_KEY=devkey ")
        assert (await http_get(url + "/"))[0] == 200
        # A plain livekit.rtc client, with a token it signs itself, joins a room there.
        token = (
            lkapi.AccessToken("devkey", "secret")
            .with_identity("plain")
            .with_grants(lkapi.VideoGrants(room_join=True, room="cli-room"))
            .to_jwt()
        )

        async def join() -> tuple[str, str]:  # on the asyncio bridge
            room = rtc.Room()
            await room.connect(url.replace("http://", "ws://"), token)
            try:
                return room.name, await room.sid
            finally:
                await room.disconnect()

        async with open_bridge() as bridge:
            with trio.fail_after(SAFETY):
                name, sid = await bridge.run(join)
        assert (name, sid[:3]) == ("cli-room", "RM_")
        cli.process.send_signal(signal.SIGINT)
        assert await cli.finish() == 0, cli.stderr
    assert cli.lines[-1] == "dev server stopped"
    assert "plain joined room cli-room" in cli.stderr


async def test_dispatch_creates_a_dispatch_through_the_server_api(
    server: DevServer, tmp_path: Path
) -> None:
    args = ["dispatch", "--room", "d-room", "--agent-name", "d-agent", "--metadata", "{}"]
    async with run_cli(args, server_env(server), tmp_path) as cli:
        match = await cli.expect(r"^dispatch (AD_\w+) created: agent 'd-agent' in room 'd-room'")
        assert await cli.finish() == 0, cli.stderr
    (dispatch,) = [d for d in await server.list_dispatches("d-room") if d.agent_name]
    assert (dispatch.id, dispatch.agent_name, dispatch.metadata) == (match[1], "d-agent", "{}")
