"""The examples run as a newcomer runs them."""

from __future__ import annotations

import sys
from pathlib import Path

import trio

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
