"""What an operator and a developer see: enum fields that print their names, the
TrackInfo slip explained, one INFO line per job start and end, quiet native logs."""

from __future__ import annotations

import logging

import pytest
import trio
from livekit import rtc

from trio_lkagent import (
    JobContext,
    JobRequest,
    JobType,
    Worker,
    WorkerOptions,
    open_audio_stream,
    open_video_stream,
)
from trio_lkagent._logging import configure_logging
from trio_lkagent.devserver import DevServer
from trio_lkagent.events import (
    ConnectionQuality,
    ConnectionQualityChanged,
    ConnectionStateChanged,
    DisconnectReason,
    ParticipantDisconnected,
    ParticipantInfo,
    ParticipantKind,
    TrackInfo,
    TrackKind,
    TrackSource,
)
from trio_lkagent.testing import AgentWorkerFactory, dispatch_job


def test_enum_fields_print_names_and_equal_livekit_ints() -> None:
    track = TrackInfo(sid="TR_1", kind=rtc.TrackKind.KIND_AUDIO, source=2)
    assert "kind=<TrackKind.AUDIO: 1>" in repr(track)
    assert track.kind == rtc.TrackKind.KIND_AUDIO == 1 and track.kind is TrackKind.AUDIO
    assert track.source is TrackSource.MICROPHONE
    info = ParticipantInfo(identity="a", kind=rtc.ParticipantKind.PARTICIPANT_KIND_AGENT)
    assert info.kind is ParticipantKind.AGENT
    gone = ParticipantDisconnected("a", info, reason=rtc.DisconnectReason.ROOM_DELETED)
    assert gone.reason is DisconnectReason.ROOM_DELETED
    assert int(gone.reason) == 5
    assert ConnectionQualityChanged("a", 2).quality is ConnectionQuality.EXCELLENT
    assert ConnectionStateChanged(rtc.ConnectionState.CONN_RECONNECTING).state == 2
    assert repr(ConnectionStateChanged(1)) == (
        "ConnectionStateChanged(state=<ConnectionState.CONNECTED: 1>)"
    )
    # A value a newer livekit may send stays a plain int rather than failing.
    assert TrackInfo(sid="", kind=9).kind == 9


@pytest.mark.parametrize("opener", [open_audio_stream, open_video_stream])
async def test_passing_the_track_snapshot_names_rtc_track(opener: object) -> None:
    with pytest.raises(TypeError, match=r"pass event\.rtc_track, not event\.track"):
        async with opener(TrackInfo(sid="TR_1", kind=1)):  # type: ignore[operator]
            pass


def test_native_chatter_stays_below_info() -> None:
    root = logging.getLogger()
    saved = (root.level, list(root.handlers))
    try:
        configure_logging("INFO")
        assert not logging.getLogger("livekit").isEnabledFor(logging.INFO)
        configure_logging("DEBUG")
        assert logging.getLogger("livekit").isEnabledFor(logging.DEBUG)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[1]:
            root.addHandler(handler)
        root.setLevel(saved[0])
        logging.getLogger("livekit").setLevel(logging.NOTSET)


async def _brief(ctx: JobContext) -> None:
    if ctx.job.metadata == "fail":
        raise RuntimeError("boom")
    await trio.lowlevel.checkpoint()


async def test_one_info_line_per_job_start_and_end(
    devserver: DevServer, agent_worker: AgentWorkerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="trio_lkagent.job")
    await agent_worker(_brief, agent_name="brief")
    ok = await dispatch_job(devserver, "log-room", "brief", wait="success")
    bad = await dispatch_job(devserver, "log-room-2", "brief", metadata="fail", wait="failed")
    with trio.fail_after(10):
        while len([r for r in caplog.records if "ended" in r.getMessage()]) < 2:  # noqa: ASYNC110
            await trio.sleep(0.02)
    lines = [r.getMessage() for r in caplog.records if r.name == "trio_lkagent.job"]
    assert f"job {ok.id} started: type=ROOM room=log-room identity=agent-{ok.id}" in lines
    assert any(line.startswith(f"job {ok.id} ended: returned after ") for line in lines)
    assert any(
        line.startswith(f"job {bad.id} ended: failed after ") and "RuntimeError: boom" in line
        for line in lines
    ), lines


async def _reject(req: JobRequest) -> None:
    await req.reject()


async def test_devserver_explains_why_a_dispatch_made_no_job(
    devserver: DevServer, agent_worker: AgentWorkerFactory
) -> None:
    await agent_worker(_brief, agent_name="room-agent")
    await agent_worker(_brief, agent_name="caller", job_type=JobType.PARTICIPANT)
    picky = await agent_worker(
        Worker(_brief, WorkerOptions(url="ws://x:1"), request_handler=_reject), agent_name="picky"
    )

    async def note(fragment: str) -> str:
        with trio.fail_after(10):
            return await devserver.wait_until(
                lambda: next((n for n in devserver.dispatch_notes if fragment in n), None)
            )

    await devserver.create_dispatch("r1", "nobody")
    assert await note("'nobody'") == (
        "no worker registered for agent 'nobody' in room 'r1'"
        " (registered: 'caller', 'picky', 'room-agent')"
    )
    await devserver.create_dispatch("r2", "caller")
    assert await note("mismatch") == (
        "job type mismatch in room 'r2': agent 'caller' is registered for JT_PARTICIPANT,"
        " not JT_ROOM; its jobs start when a participant joins"
    )
    await devserver.create_dispatch("r3", "picky")
    assert (await note("rejected")).endswith(
        f"rejected by worker {picky.worker_id} (agent 'picky')"
    )


async def test_dev_default_keys_sign_without_pyjwt_warnings() -> None:
    import warnings

    from trio_lkagent.devserver import open_devserver
    from trio_lkagent.testing import run_worker

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        async with (
            open_devserver(api_key="devkey", api_secret="secret") as server,
            run_worker(_brief, server, agent_name="keys"),
        ):
            await dispatch_job(server, "keys-room", "keys", wait="success")
        assert not [w for w in caught if "HMAC key" in str(w.message)], caught
        # Another short secret still warns: only the dev convention is exempt.
        from livekit import api as lkapi

        lkapi.AccessToken("k", "short").with_identity("x").to_jwt()
    assert any("HMAC key" in str(w.message) for w in caught)
