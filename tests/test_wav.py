"""Speaking a WAV file as a simulated participant: the reader, the conversion to the
track's format, and a tone heard by an agent through the dev server."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest
import trio
from livekit import rtc

from trio_lkagent import JobContext, open_audio_output, open_audio_stream
from trio_lkagent.devserver import DevServer
from trio_lkagent.events import DataReceived, TrackSubscribed
from trio_lkagent.testing import (
    AgentWorkerFactory,
    ParticipantFactory,
    dispatch_job,
    read_wav,
    speak_wav,
    wait_for_agent,
)
from trio_lkagent.testing._wav import _convert

ROOT = Path(__file__).resolve().parent.parent


def _tone(freq: float, rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    mono = np.round(12_000 * np.sin(2 * np.pi * freq * t)).astype(np.int16)
    return np.repeat(mono, channels) if channels > 1 else mono


def _write_wav(path: Path, samples: np.ndarray, rate: int, channels: int, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


def _dominant(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


# ------------------------------------------------------------------ the reader


def test_reads_mono_at_its_rate(tmp_path: Path) -> None:
    tone = _tone(440, 22_050, 0.5)
    frame = read_wav(_write_wav(tmp_path / "a.wav", tone, 22_050, 1))
    assert (frame.sample_rate, frame.num_channels) == (22_050, 1)
    assert frame.samples.dtype == np.int16
    np.testing.assert_array_equal(frame.samples, tone)


def test_reads_stereo_interleaved(tmp_path: Path) -> None:
    left, right = _tone(440, 8_000, 0.25), _tone(1000, 8_000, 0.25)
    interleaved = np.stack([left, right], axis=1).reshape(-1)
    frame = read_wav(_write_wav(tmp_path / "s.wav", interleaved, 8_000, 2))
    assert (frame.sample_rate, frame.num_channels, frame.samples_per_channel) == (8_000, 2, 2000)
    np.testing.assert_array_equal(frame.as_channels()[:, 1], right)


@pytest.mark.parametrize("width", [1, 3, 4])
def test_rejects_other_sample_widths(tmp_path: Path, width: int) -> None:
    path = _write_wav(tmp_path / "w.wav", np.zeros(100 * width, np.uint8), 16_000, 1, width)
    with pytest.raises(
        ValueError, match=rf"w\.wav: {8 * width}-bit samples; supported: 16-bit PCM"
    ):
        read_wav(path)


def test_rejects_more_than_two_channels(tmp_path: Path) -> None:
    path = _write_wav(tmp_path / "c.wav", np.zeros(600, np.int16), 16_000, 6)
    with pytest.raises(ValueError, match=r"c\.wav: 6 channels; supported: .*mono or stereo"):
        read_wav(path)


def _riff(fmt_tag: int, bits: int, data: bytes) -> bytes:
    fmt = struct.pack("<HHIIHH", fmt_tag, 1, 8000, 8000 * bits // 8, bits // 8, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.mark.parametrize(("tag", "bits"), [(3, 32), (6, 8), (0x11, 4)])  # float, A-law, ADPCM
def test_rejects_compressed_and_float_wavs(tmp_path: Path, tag: int, bits: int) -> None:
    path = tmp_path / "x.wav"
    path.write_bytes(_riff(tag, bits, b"\0" * 64))
    with pytest.raises(ValueError, match=r"x\.wav: cannot read it as WAV .*supported: 16-bit PCM"):
        read_wav(path)


def test_rejects_what_is_not_a_wav(tmp_path: Path) -> None:
    path = tmp_path / "song.mp3"
    path.write_bytes(b"ID3\x03\x00" + b"\0" * 100)
    with pytest.raises(ValueError, match=r"song\.mp3: cannot read it as WAV"):
        read_wav(path)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.wav"):
        read_wav(empty)
    with pytest.raises(FileNotFoundError):
        read_wav(tmp_path / "missing.wav")


def test_converts_to_the_tracks_rate_and_channels(tmp_path: Path) -> None:
    stereo = _tone(440, 44_100, 1.0, channels=2)
    frame = read_wav(_write_wav(tmp_path / "t.wav", stereo, 44_100, 2))
    out = _convert(frame, 48_000, 1)
    assert (out.sample_rate, out.num_channels) == (48_000, 1)
    assert abs(out.samples_per_channel - 48_000) < 200  # the whole second, filter flushed
    assert abs(_dominant(out.samples, 48_000) - 440) < 2
    up = _convert(
        read_wav(_write_wav(tmp_path / "m.wav", _tone(300, 8_000, 0.5), 8_000, 1)), 24_000, 2
    )
    assert up.num_channels == 2 and abs(_dominant(up.as_channels()[:, 1], 24_000) - 300) < 3


async def test_bad_files_fail_before_publishing(tmp_path: Path) -> None:
    path = _write_wav(tmp_path / "b.wav", np.zeros(100, np.uint8), 16_000, 1, 1)

    class NoRoom:  # publishing is never reached
        def publish_audio(self, **kwargs: object) -> None:
            raise AssertionError("published")

    with pytest.raises(ValueError, match="8-bit"):
        await speak_wav(NoRoom(), path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="trailing_silence"):
        await speak_wav(NoRoom(), path, trailing_silence=-1)  # type: ignore[arg-type]


async def test_writes_into_an_output_at_its_format(tmp_path: Path) -> None:
    wav = _write_wav(tmp_path / "o.wav", _tone(440, 8_000, 0.5), 8_000, 1)
    async with open_audio_output(sample_rate=24_000, num_channels=2) as out:
        with trio.fail_after(30):
            played = await speak_wav(out, wav, trailing_silence=0.1)
        stats = out.statistics()
    assert played == pytest.approx(0.6)
    # 0.6 s handed to the native source at 24 kHz stereo, in 10 ms frames.
    assert stats.seconds == pytest.approx(0.6, abs=0.02) and stats.pending_samples == 0


# ------------------------------------------------------------------ end to end


async def _pitch_agent(ctx: JobContext) -> None:
    """Says the dominant frequency of each loud half second it hears (topic ``pitch``)."""
    async with ctx.connect() as room:
        track: rtc.Track | None = None
        async for event in room.events():
            if isinstance(event, TrackSubscribed) and isinstance(
                event.rtc_track, rtc.RemoteAudioTrack
            ):
                track = event.rtc_track
                break
        assert track is not None
        window: list[np.ndarray] = []
        async with open_audio_stream(track, sample_rate=16_000) as frames:
            async for frame in frames:
                window.append(frame.samples.copy())
                if sum(map(len, window)) >= 8_000:
                    samples = np.concatenate(window)
                    window.clear()
                    if np.sqrt(np.mean(samples.astype(np.float64) ** 2)) > 1_000:
                        await room.publish_data(f"{_dominant(samples, 16_000):.1f}", topic="pitch")


async def test_an_agent_hears_a_spoken_wav(
    tmp_path: Path,
    devserver: DevServer,
    agent_worker: AgentWorkerFactory,
    participant: ParticipantFactory,
) -> None:
    # Stereo at 22.05 kHz: the participant's 48 kHz mono track gets it remixed and resampled.
    wav = _write_wav(tmp_path / "tone.wav", _tone(440, 22_050, 2.0, channels=2), 22_050, 2)
    await agent_worker(_pitch_agent, agent_name="pitch")
    user = await participant("wav-room", "speaker")
    events = user.events()
    await dispatch_job(devserver, "wav-room", "pitch")
    with trio.fail_after(60):  # real time, on a loaded machine
        await wait_for_agent(user)
        played = await speak_wav(user, wav, trailing_silence=0.2)
        pitches = []
        async for event in events:
            if isinstance(event, DataReceived) and event.topic == "pitch":
                pitches.append(float(event.payload))
                if len(pitches) >= 2:
                    break
    assert played == pytest.approx(2.2)
    assert len(pitches) == 2 and all(abs(p - 440) < 5 for p in pitches), pitches


def test_dev_scenario_transcribes_the_utterance() -> None:
    """The documented command: the transcription agent hears the fixture's words."""
    pytest.importorskip("pocketsphinx")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
    env.pop("SPEAK_WAV", None)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "trio_lkagent",
            "dev",
            "examples/transcription_agent.py",
            "--job-type",
            "publisher",
            "--scenario",
            "examples/scenarios/speak_wav.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    transcripts = " ".join(
        line for line in result.stdout.splitlines() if line.startswith("transcript [")
    )
    assert "speaker plays utterance.wav" in result.stdout
    heard = {"one", "two", "three", "four", "five", "weather", "today"} & set(transcripts.split())
    assert len(heard) >= 4, result.stdout
