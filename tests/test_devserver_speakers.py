"""The dev server reports active speakers and connection quality, as the Go server does.

A real ``livekit.rtc`` client plays a tone into its microphone track; the server
measures the relayed audio's level and tells every participant who speaks. The
1 s / 2 s bounds are the issue's own (the Go server reports within ~0.8 s and
~1.2 s with its 400 ms windows).
"""

from __future__ import annotations

import numpy as np
import pytest
import trio
from livekit import rtc

from trio_lkagent._bridge import open_bridge
from trio_lkagent.devserver import DevServer, _speakers
from trio_lkagent.devserver._speakers import AudioLevel, TrackQuality, quality_of
from trio_lkagent.events import ActiveSpeakersChanged, ConnectionQualityChanged

from .test_handlers import Recorder, serving, token
from .test_room_e2e import SAFETY_TIMEOUT, client_microphone, open_agent, open_client, play, tone


@pytest.mark.parametrize("source", ["extension", "decoded"])
async def test_a_tone_makes_an_active_speaker_and_silence_ends_it(
    server: DevServer, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    # The client sends the RTP audio-level extension; "decoded" ignores it, so the
    # server measures the decoded audio instead.
    monkeypatch.setattr(_speakers, "READ_EXTENSION", source == "extension")
    monkeypatch.setattr(_speakers, "DECODE_FALLBACK_AFTER", 0.0 if source == "decoded" else 1.0)
    async with open_agent(server, "s-tone") as agent, open_bridge() as bridge:
        events = agent.events()
        async with (
            open_client(bridge, server.url, token(server, "s-tone", "tess")) as tess,
            client_microphone(tess) as mic,
        ):
            await agent.wait_for_participant("tess")
            started = stopped = became_active = became_quiet = 0.0
            async with trio.open_nursery() as nursery:

                async def speak() -> None:
                    nonlocal started, stopped
                    started = trio.current_time()
                    await play(tess, mic, tone(440, 1.5))
                    stopped = trio.current_time()

                nursery.start_soon(speak)
                with trio.fail_after(SAFETY_TIMEOUT):
                    async for event in events:
                        if not isinstance(event, ActiveSpeakersChanged):
                            continue
                        if "tess" in event.identities and not became_active:
                            became_active = trio.current_time()
                        elif became_active and "tess" not in event.identities:
                            became_quiet = trio.current_time()
                            break
            assert stopped, "the tone was still playing when tess stopped being a speaker"
            (publication,) = server._rtc._rooms["s-tone"].sessions["tess"].published.values()
            assert publication.tap is not None and publication.tap.source == source
    assert became_active - started < 1.0
    assert became_quiet - stopped < 2.0


async def test_handler_hears_speaking_and_connection_quality(server: DevServer) -> None:
    recorder = Recorder()
    async with (
        serving(server, recorder, "s-hook") as (_, bridge),
        open_client(bridge, server.url, token(server, "s-hook", "ula")) as ula,
        client_microphone(ula) as source,
    ):
        await recorder.wait_for(lambda calls: ("joined", "ula") in calls)
        await play(ula, source, tone(300, 1.0))
        await recorder.wait_for(lambda calls: ("speaking", "ula", False) in calls)
        await recorder.wait_for(lambda calls: any(c[:2] == ("quality", "ula") for c in calls))
    speaking = [c for c in recorder.calls if c[0] == "speaking" and c[1] == "ula"]
    # Started, then stopped (a loaded machine may starve the tone briefly: more pairs).
    assert speaking[0] == ("speaking", "ula", True)
    assert speaking[-1] == ("speaking", "ula", False)
    assert [c[2] for c in speaking] == [True, False] * (len(speaking) // 2)
    quality = next(c for c in recorder.calls if c[:2] == ("quality", "ula"))
    # Loopback loses nothing; jitter depends on how loaded the machine is.
    assert quality[2] in (
        rtc.ConnectionQuality.QUALITY_EXCELLENT,
        rtc.ConnectionQuality.QUALITY_GOOD,
    )


async def test_everyone_gets_connection_quality(server: DevServer) -> None:
    async with open_agent(server, "s-quality") as agent, open_bridge() as bridge:
        events = agent.events()
        async with open_client(bridge, server.url, token(server, "s-quality", "vic")):
            seen: dict[str, int] = {}
            with trio.fail_after(SAFETY_TIMEOUT):
                async for event in events:
                    if isinstance(event, ConnectionQualityChanged):
                        seen[event.identity] = event.quality
                        if "vic" in seen:
                            break
    # Publishing nothing, vic's connection is excellent.
    assert seen["vic"] == rtc.ConnectionQuality.QUALITY_EXCELLENT


# ------------------------------------------------------------------ the rules, offline


def test_audio_level_follows_go_rules() -> None:
    level = AudioLevel()
    now = 0.0
    for _ in range(20):  # 400 ms of loud packets (-13 dBov)
        now += 20
        level.observe(13, 20, now)
    value, active = level.level(now)
    assert active and value > 0.1
    for _ in range(20):  # 400 ms of silence: the next window is inactive
        now += 20
        level.observe(127, 20, now)
    assert level.level(now) == (0.0, False)
    for _ in range(6):  # 120 ms loud of 400: under 40 %, not active
        now += 20
        level.observe(13, 20, now)
    for _ in range(14):
        now += 20
        level.observe(127, 20, now)
    assert level.level(now)[1] is False
    for _ in range(20):
        now += 20
        level.observe(13, 20, now)
    assert level.level(now)[1] is True
    assert level.level(now + 800) == (0.0, False)  # stale: no packets for two windows


def test_decoded_level() -> None:
    t = np.arange(960) / 48_000
    loud = (np.sin(2 * np.pi * 440 * t) * 10_000).astype(np.int16)
    assert _speakers.level_dbov(loud) == 13  # RMS 7071 of 32767: -13 dBov
    assert _speakers.level_dbov(np.zeros(960, dtype=np.int16)) == 127


def test_quality_bands() -> None:
    assert quality_of([]) == 2  # EXCELLENT
    assert quality_of([TrackQuality(100, 0, 0.005)]) == 2
    assert quality_of([TrackQuality(100, 5, 0.005)]) == 1  # GOOD
    assert quality_of([TrackQuality(100, 30, 0.005)]) == 0  # POOR
    assert quality_of([TrackQuality(100, 0, 0.2)]) == 0
    assert quality_of([TrackQuality(0, 0, 0.0), TrackQuality(50, 0, 0.0)]) == 2
