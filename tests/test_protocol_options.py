"""The wire codec and WorkerOptions validation."""

from __future__ import annotations

import random
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from livekit.protocol import agent as agent_pb

from trio_lkagent import (
    ConfigurationError,
    JobContext,
    JobType,
    ReconnectPolicy,
    WireFormat,
    Worker,
    WorkerOptions,
)
from trio_lkagent._exceptions import ProtocolError
from trio_lkagent._protocol import decode, encode

text = st.text(max_size=20)


@st.composite
def server_messages(draw: st.DrawFn) -> agent_pb.ServerMessage:
    job = agent_pb.Job(
        id=draw(text),
        type=draw(st.sampled_from([agent_pb.JT_ROOM, agent_pb.JT_PUBLISHER])),
        metadata=draw(text),
    )
    job.room.name = draw(text)
    job.attributes.update(draw(st.dictionaries(text, text, max_size=3)))
    kind = draw(st.sampled_from(["availability", "assignment", "termination", "pong"]))
    if kind == "availability":
        return agent_pb.ServerMessage(availability=agent_pb.AvailabilityRequest(job=job))
    if kind == "assignment":
        return agent_pb.ServerMessage(assignment=agent_pb.JobAssignment(job=job, token=draw(text)))
    if kind == "termination":
        return agent_pb.ServerMessage(termination=agent_pb.JobTermination(job_id=job.id))
    ts = draw(st.integers(0, 2**62))
    return agent_pb.ServerMessage(pong=agent_pb.WorkerPong(last_timestamp=ts, timestamp=ts))


@given(server_messages(), st.sampled_from(list(WireFormat)))
def test_codec_round_trips(message: agent_pb.ServerMessage, fmt: WireFormat) -> None:
    data = encode(message, fmt)
    assert isinstance(data, bytes if fmt is WireFormat.PROTOBUF else str)
    decoded, seen = decode(data, agent_pb.ServerMessage)
    assert decoded == message
    assert seen is fmt


@pytest.mark.parametrize(
    "data",
    [b"\xff\xff\xff", b"\x0a\x05abc", "not json", '{"pong": 5}', "[1, 2]"],
)
def test_malformed_frames_raise_protocol_error(data: bytes | str) -> None:
    with pytest.raises(ProtocolError, match="malformed"):
        decode(data, agent_pb.ServerMessage)


def test_json_matches_go_and_ignores_unknown_fields() -> None:
    message = agent_pb.ServerMessage(register=agent_pb.RegisterWorkerResponse(worker_id="AW_1"))
    text = encode(message, WireFormat.JSON)
    assert '"workerId": "AW_1"' in text  # protojson's lowerCamelCase, as Go writes it
    decoded, _ = decode('{"register": {"worker_id": "AW_1", "fromTheFuture": 1}}', type(message))
    assert decoded == message


def test_options_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVEKIT_URL", "https://lk.example.com")
    monkeypatch.setenv("LIVEKIT_API_KEY", "k")
    monkeypatch.setenv("LIVEKIT_API_SECRET", "s")
    opts = WorkerOptions(agent_name="x", job_type=JobType.PUBLISHER)
    assert (opts.url, opts.api_key, opts.api_secret) == ("https://lk.example.com", "k", "s")
    assert opts.agent_ws_url == "wss://lk.example.com/agent?protocol=1"
    assert "s" not in repr(opts).split("api_key")[1].split(",")[0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "ftp://x"}, "url must look like"),
        ({"max_jobs": 0}, "max_jobs"),
        ({"load_threshold": -1}, "load_threshold"),
        ({"ping_interval": 0}, "ping_interval"),
        ({"ping_interval": 10, "ping_timeout": 5}, "ping_timeout"),
        ({"wire_format": "json"}, "wire_format"),
    ],
)
def test_bad_options_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, object], message: str
) -> None:
    for var in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        monkeypatch.delenv(var, raising=False)
    base: dict[str, object] = {"url": "ws://127.0.0.1:7880", "api_key": "k", "api_secret": "s"}
    base.update(kwargs)
    with pytest.raises(ConfigurationError, match=message):
        WorkerOptions(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("url", "no server URL: pass WorkerOptions(url=...) or set LIVEKIT_URL"),
        ("api_key", "no API key: pass WorkerOptions(api_key=...) or set LIVEKIT_API_KEY"),
        ("api_secret", "no API secret: pass WorkerOptions(api_secret=...) or set"),
    ],
)
async def test_missing_connection_settings_are_reported_when_serving_starts(
    monkeypatch: pytest.MonkeyPatch, missing: str, message: str
) -> None:
    for var in ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET"):
        monkeypatch.delenv(var, raising=False)
    base: dict[str, Any] = {"url": "ws://127.0.0.1:1", "api_key": "k", "api_secret": "s"}
    del base[missing]
    opts = WorkerOptions(agent_name="x", **base)  # building them is fine: import time
    worker = Worker(_noop, opts)
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        await worker.serve()
    # ... and the variable set by then is used (as `dev` and test fixtures do).
    value = "ws://h:1" if missing == "url" else "v"
    monkeypatch.setenv(f"LIVEKIT_{missing.upper()}", value)
    assert getattr(opts.resolved(), missing) == value


def test_with_options_copies_the_worker() -> None:
    worker = Worker(_noop, WorkerOptions(url="ws://a:1", api_key="k", api_secret="s"))
    other = worker.with_options(url="ws://b:2", max_jobs=3)
    assert (other.options.url, other.options.max_jobs) == ("ws://b:2", 3)
    assert worker.options.url == "ws://a:1" and other is not worker
    with pytest.raises(ConfigurationError, match="max_jobs"):
        worker.with_options(max_jobs=0)


async def _noop(ctx: JobContext) -> None:
    pass


def test_backoff_grows_caps_and_jitters() -> None:
    policy = ReconnectPolicy(initial_delay=1, max_delay=10, multiplier=2, jitter=0.1)
    rng = random.Random(1)
    delays = [policy.delay(n, rng) for n in range(1, 8)]
    for got, base in zip(delays, [1, 2, 4, 8, 10, 10, 10], strict=True):
        assert base * 0.9 <= got <= base * 1.1
    assert len({round(d, 6) for d in delays[4:]}) == 3  # jittered, not lock step
