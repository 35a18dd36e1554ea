"""Speaking a WAV file as a simulated participant."""

from __future__ import annotations

import os
import wave
from typing import Final

import numpy as np

from .._media import AudioFrame
from .._room import Room
from .._tracks import AudioOutput

__all__ = ["read_wav", "speak_wav"]

_SUPPORTED: Final = "16-bit PCM WAV (mono or stereo, any sample rate)"


def read_wav(path: str | os.PathLike[str]) -> AudioFrame:
    """Read a 16-bit PCM WAV file (mono or stereo, any sample rate) with :mod:`wave`.

    Returns:
        One :class:`~trio_lkagent.AudioFrame` holding the whole file: ``int16``
        samples interleaved by channel, at the file's rate and channel count.

    Raises:
        ValueError: the file is not a WAV file the stdlib can read (compressed or
            float WAV, not RIFF), or its samples are not 16-bit, or it has more
            than two channels. The message names the file and what is supported.
        OSError: the file cannot be opened.
    """
    name = os.fspath(path)
    try:
        with wave.open(name, "rb") as w:
            width = w.getsampwidth()
            channels = w.getnchannels()
            rate = w.getframerate()
            data = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(
            f"{name}: cannot read it as WAV ({exc}); supported: {_SUPPORTED}"
        ) from None
    if width != 2:
        raise ValueError(f"{name}: {8 * width}-bit samples; supported: {_SUPPORTED}")
    if channels not in (1, 2):
        raise ValueError(f"{name}: {channels} channels; supported: {_SUPPORTED}")
    if rate <= 0:
        raise ValueError(f"{name}: sample rate {rate}; supported: {_SUPPORTED}")
    usable = len(data) - len(data) % (2 * channels)  # a truncated last frame is dropped
    samples = np.frombuffer(data[:usable], dtype="<i2").astype(np.int16)
    return AudioFrame(samples, rate, channels)


def _convert(frame: AudioFrame, sample_rate: int, num_channels: int) -> AudioFrame:
    """*frame* remixed to *num_channels* and resampled to *sample_rate* (the media
    package's stages; the resampler's tail is flushed)."""
    from ..media import Remix, Resample

    (frame,) = Remix(num_channels).process(frame)
    if frame.sample_rate == sample_rate:
        return frame
    resample = Resample(sample_rate, quality="high")
    parts = [*resample.process(frame), *resample.flush()]
    samples = np.concatenate([p.samples for p in parts]) if parts else np.zeros(0, np.int16)
    return AudioFrame(samples, sample_rate, num_channels)


async def speak_wav(
    target: Room | AudioOutput,
    path: str | os.PathLike[str],
    *,
    sample_rate: int = 48_000,
    num_channels: int = 1,
    name: str = "microphone",
    trailing_silence: float = 0.0,
) -> float:
    """Play a WAV file as a participant's microphone, in real time, until it has played out.

    The file is read with :func:`read_wav`, then remixed and resampled to what the
    track takes (:class:`~trio_lkagent.media.Remix` and
    :class:`~trio_lkagent.media.Resample`, ``livekit.rtc``'s resampler).

    Example (a test or a ``dev --scenario``)::

        alice = await participant("room-1", "alice")
        await speak_wav(alice, "tests/data/utterance.wav", trailing_silence=1.0)

    Args:
        target: A joined :class:`~trio_lkagent.Room` (the ``participant`` fixture's,
            ``dev.participant()``'s): a track is published for the file and
            unpublished once it has played out. Or an
            :class:`~trio_lkagent.AudioOutput` already published (from
            ``room.publish_audio()``): the file is written to it at its rate and
            channels, and it stays published.
        path: A 16-bit PCM WAV file, mono or stereo, any sample rate.
        sample_rate: The published track's rate (a Room *target* only).
        num_channels: The published track's channels (a Room *target* only).
        name: The published track's name (a Room *target* only).
        trailing_silence: Seconds of silence played after the file (what lets a
            voice activity detector see the end of the utterance).

    Returns:
        The seconds of audio played (the file plus the trailing silence).

    Raises:
        ValueError: an unsupported WAV file (see :func:`read_wav`), or a negative
            *trailing_silence*; raised before anything is published.

    Cancellation:
        Safe to cancel; a track published here is unpublished (audio still queued
        is dropped).
    """
    if trailing_silence < 0:
        raise ValueError(f"trailing_silence must be >= 0, got {trailing_silence!r}")
    frame = read_wav(path)
    if isinstance(target, AudioOutput):
        await _play(target, frame, trailing_silence)
    else:
        async with target.publish_audio(
            sample_rate=sample_rate, num_channels=num_channels, name=name
        ) as output:
            await _play(output, frame, trailing_silence)
    return frame.duration + trailing_silence


async def _play(output: AudioOutput, frame: AudioFrame, trailing_silence: float) -> None:
    converted = _convert(frame, output.sample_rate, output.num_channels)
    await output.write(converted.samples)
    silence = round(trailing_silence * output.sample_rate) * output.num_channels
    if silence:
        await output.write(np.zeros(silence, np.int16))
    await output.wait_for_playout()
