"""``run_app`` (``python my_agent.py dev``) and the one-line errors at the edges."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from trio_lkagent._cli import main
from trio_lkagent.devserver import DevServer

ROOT = Path(__file__).resolve().parent.parent
ECHO = ROOT / "examples" / "echo_agent.py"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    env["PYTHONWARNINGS"] = "error::UserWarning"  # e.g. PyJWT's InsecureKeyLengthWarning
    return env


def _run(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=120
    )


def test_python_agent_py_dev_runs_the_agent() -> None:
    result = _run([str(ECHO), "dev", "--duration", "2", "--room", "app-room"])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "room 'app-room' created with automatic dispatch" in out
    assert "-> dev-user [echo]: echo: hello" in out
    assert "ended JS_SUCCESS" in out and out.rstrip().endswith("dev server stopped")
    assert "Traceback" not in result.stderr


def test_python_agent_py_help_has_the_commands_without_a_target() -> None:
    result = _run([str(ECHO), "start", "--help"])
    assert result.returncode == 0
    assert result.stdout.startswith("usage: echo_agent.py start [-h]")
    assert "TARGET" not in result.stdout and "--agent-name" in result.stdout


def test_run_app_rejects_a_plain_def(tmp_path: Path) -> None:
    agent = tmp_path / "sync_agent.py"
    agent.write_text(
        "from trio_lkagent import run_app\n"
        "def entrypoint(ctx):\n    pass\n"
        "if __name__ == '__main__':\n    run_app(entrypoint)\n"
    )
    result = _run([str(agent), "dev"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "sync_agent.py: error: run_app('entrypoint') is a plain `def`: an entrypoint must be"
        " `async def entrypoint(ctx)`"
    ]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def entrypoint(ctx):\n    pass\n", "is a plain `def`: an entrypoint must be `async def"),
        ("async def entrypoint(ctx):\n    x = (\n", "bad.py:2: syntax error: "),
    ],
)
def test_bad_targets_are_one_line_and_exit_2(
    tmp_path: Path, source: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "bad.py"
    target.write_text(source)
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("LIVEKIT_")]:
            mp.delenv(name)
        assert main(["start", str(target), "--url", "ws://127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


async def test_dispatch_to_an_agent_nobody_serves_warns(devserver: DevServer) -> None:
    env = {**_env(), "LIVEKIT_URL": devserver.url}
    env.update(LIVEKIT_API_KEY=devserver.api_key, LIVEKIT_API_SECRET=devserver.api_secret)
    args = [sys.executable, "-m", "trio_lkagent", "dispatch", "--room", "d1"]
    with trio.fail_after(60):
        result = await trio.run_process(
            [*args, "--agent-name", "ghost"], env=env, capture_stdout=True, capture_stderr=True
        )
    assert result.returncode == 0
    assert "dispatch AD_" in result.stdout.decode()
    assert result.stderr.decode().splitlines() == [
        "trio-lkagent: warning: no job started for agent 'ghost' within 3 s: is a worker"
        " registered with --agent-name ghost?"
    ]
    assert any("'ghost'" in note for note in devserver.dispatch_notes)


def test_health_port_in_use_names_the_port_and_the_flag() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["start", "tests/cli_agent.py", "--url", "ws://127.0.0.1:1", "--api-key", "k"]
        result = _run(
            ["-m", "trio_lkagent", *args, "--api-secret", "s", "--health-port", str(port)]
        )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"trio-lkagent: error: health server port {port} is in use: pass --health-port 0"
        " (any free port) or off, or set LIVEKIT_HEALTH_PORT"
    ]
