"""Speech plugins on real audio: VADs, PocketSphinx, the stream adapter, eSpeak, the executor."""

from __future__ import annotations

import os
import pathlib
import time
import wave
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from trio_lkagent import PluginError
from trio_lkagent._media import AudioFrame
from trio_lkagent.plugins import (
    STT,
    VAD,
    EnergyVAD,
    EspeakTTS,
    PocketSphinxSTT,
    SileroVAD,
    SpeechEvent,
    SpeechEventType,
    StreamAdapter,
    STTCapabilities,
    VADEvent,
    VADEventType,
    VADOptions,
    WebRTCVAD,
    open_inference_executor,
    to_mono,
    warm_pocketsphinx,
)

FIXTURE = pathlib.Path(__file__).parent / "data" / "utterance.wav"
# tests/data/make_utterance.py: 0.5 s silence, utterance 1, 1 s silence, utterance 2, 1 s.
WORDS_1 = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
WORDS_2 = ["the", "weather", "today", "is", "sunny", "and", "warm"]


def load_fixture() -> AudioFrame:
    with wave.open(str(FIXTURE), "rb") as w:
        data = w.readframes(w.getnframes())
        return AudioFrame(np.frombuffer(data, np.int16), w.getframerate(), w.getnchannels())


def frames_of(audio: AudioFrame, ms: int = 10) -> list[AudioFrame]:
    ch = audio.num_channels
    n = audio.sample_rate * ms // 1000 * ch
    return [
        AudioFrame(audio.samples[i : i + n], audio.sample_rate, ch, i / ch / audio.sample_rate)
        for i in range(0, len(audio.samples) - n + 1, n)
    ]


def upsample_48k(audio: AudioFrame) -> AudioFrame:
    """The fixture at WebRTC's rate, in stereo: what a room subscription delivers."""
    x = np.repeat(audio.samples, 3)
    return AudioFrame(np.repeat(x, 2), 48000, 2)


def share(heard: str, words: Sequence[str]) -> float:
    got = heard.lower().split()
    return sum(w in got for w in words) / len(words)


async def run_vad(vad: VAD, frames: list[AudioFrame]) -> list[VADEvent]:
    events: list[VADEvent] = []
    async with vad.stream(max_buffer_size=len(frames) + 10) as s:
        for f in frames:
            s.push_frame(f)
        s.end_input()
        events = [e async for e in s]
    return events


def speech_events(events: list[VADEvent]) -> list[VADEvent]:
    return [e for e in events if e.type is not VADEventType.INFERENCE]


@pytest.mark.parametrize(
    "make",
    [EnergyVAD, WebRTCVAD, SileroVAD],
    ids=["energy", "webrtc", "silero"],
)
async def test_vad_finds_the_two_utterances(make: type[EnergyVAD]) -> None:
    audio = load_fixture()
    vad = make(VADOptions(min_silence_duration=0.4))
    events = await run_vad(vad, frames_of(upsample_48k(audio)))
    kinds = [e.type for e in speech_events(events)]
    assert kinds == [
        VADEventType.START_OF_SPEECH,
        VADEventType.END_OF_SPEECH,
        VADEventType.START_OF_SPEECH,
        VADEventType.END_OF_SPEECH,
    ]
    s1, e1, s2, e2 = speech_events(events)
    assert e2.timestamp > s2.timestamp
    # Utterance 1 starts at 0.5 s, the second one about 1 s after the first ends.
    assert 0.45 <= s1.timestamp <= 0.9
    assert s2.timestamp - e1.timestamp > 0.3
    # The utterance's audio comes with END_OF_SPEECH: mono at the VAD's rate, about
    # as long as the speech (+ prefix padding, + the silence that ended it).
    (u1,) = e1.frames
    assert u1.sample_rate == vad.sample_rate and u1.num_channels == 1
    assert 1.5 < u1.duration < 4.5
    assert e1.speech_duration > 1.0
    inferences = [e for e in events if e.type is VADEventType.INFERENCE]
    assert max(e.probability for e in inferences) > 0.5
    assert min(e.probability for e in inferences) < 0.2


async def test_vad_is_quiet_on_silence_and_honours_min_speech() -> None:
    silence = AudioFrame(np.zeros(16000 * 2, np.int16), 16000)
    assert speech_events(await run_vad(EnergyVAD(), frames_of(silence))) == []
    # A 50 ms click is shorter than min_speech_duration=0.2: no speech.
    click = np.zeros(16000, np.int16)
    click[8000:8800] = (np.sin(np.arange(800) / 3) * 20000).astype(np.int16)
    vad = EnergyVAD(VADOptions(min_speech_duration=0.2))
    assert speech_events(await run_vad(vad, frames_of(AudioFrame(click, 16000)))) == []
    vad = EnergyVAD(VADOptions(min_speech_duration=0.02, min_silence_duration=0.1))
    kinds = [e.type for e in speech_events(await run_vad(vad, frames_of(AudioFrame(click, 16000))))]
    assert kinds == [VADEventType.START_OF_SPEECH, VADEventType.END_OF_SPEECH]


async def test_slow_consumer_drops_inference_events_never_speech_events(
    autojump_clock: trio.testing.MockClock,
) -> None:
    frames = frames_of(load_fixture())
    got: list[VADEvent] = []
    async with EnergyVAD(VADOptions(min_silence_duration=0.4)).stream(max_buffer_size=20) as s:

        async def feed() -> None:
            for f in frames:  # real time: a 10 ms frame every 10 ms
                s.push_frame(f)
                await trio.sleep(0.01)
            s.end_input()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(feed)
            async for e in s:  # the consumer handles 50 events/s of the 100/s produced
                got.append(e)
                await trio.sleep(0.02)
        stats = s.statistics()
    kinds = [e.type for e in speech_events(got)]
    assert kinds == [VADEventType.START_OF_SPEECH, VADEventType.END_OF_SPEECH] * 2
    assert stats.events_dropped > 100
    assert stats.events_sent == len(got)
    assert stats.frames_pushed + stats.frames_dropped == len(frames)


async def test_engine_behind_drops_newest_frames_counted() -> None:
    frames = frames_of(load_fixture())
    async with EnergyVAD().stream(max_buffer_size=10) as s:
        for f in frames[:100]:
            s.push_frame(f)  # never blocks; the engine has not run yet
        stats = s.statistics()
        assert (stats.frames_pushed, stats.frames_dropped, stats.frames_queued) == (10, 90, 10)
        s.end_input()
        with pytest.raises(trio.ClosedResourceError):
            s.push_frame(frames[0])
        events = [e async for e in s]
    assert len(events) == 10 * 160 // EnergyVAD().window_samples


class _BrokenVAD(EnergyVAD):
    def _new_model(self):  # type: ignore[no-untyped-def]
        def model(window: np.ndarray) -> float:  # type: ignore[type-arg]
            raise RuntimeError("model file is corrupt")

        return model


async def test_engine_failure_is_a_plugin_error_with_the_engine_message() -> None:
    async with _BrokenVAD().stream() as s:
        s.push_frame(frames_of(load_fixture())[0])
        with pytest.raises(PluginError, match="_BrokenVAD: model file is corrupt") as info:
            await s.receive()
        assert isinstance(info.value.__cause__, RuntimeError)
        with pytest.raises(PluginError):
            s.push_frame(frames_of(load_fixture())[0])
    # Unobserved: raised when the block exits.
    with pytest.raises(PluginError):
        async with _BrokenVAD().stream() as s:
            s.push_frame(frames_of(load_fixture())[0])
            s.end_input()
            await trio.testing.wait_all_tasks_blocked()


async def test_pocketsphinx_recognizes_the_fixture_at_48k_stereo() -> None:
    audio = load_fixture()
    stt = PocketSphinxSTT()
    first = AudioFrame(audio.samples[: 16000 * 4], 16000)  # utterance 1 only
    event = await stt.recognize(frames_of(upsample_48k(first)))
    assert event.type is SpeechEventType.FINAL
    assert share(event.text, WORDS_1) >= 0.7, event.text
    alt = event.alternatives[0]
    assert alt.language == "en-US"
    assert 0.3 <= alt.start_time < alt.end_time <= 4.0
    with pytest.raises(PluginError, match="language 'fr'"):
        await stt.recognize(first, language="fr")
    with pytest.raises(PluginError, match="language 'de'"):
        async with stt.stream(language="de"):
            pass


async def test_pocketsphinx_streams_interim_and_final_results() -> None:
    stt = PocketSphinxSTT()
    assert stt.capabilities.streaming and stt.capabilities.interim_results
    async with stt.stream(language="en", max_buffer_size=2000) as s:
        for f in frames_of(upsample_48k(load_fixture())):
            s.push_frame(f)
        s.end_input()
        events = [e async for e in s]
    finals = [e for e in events if e.type is SpeechEventType.FINAL]
    assert [e.type for e in events if e.type is not SpeechEventType.INTERIM] == [
        SpeechEventType.START_OF_SPEECH,
        SpeechEventType.FINAL,
        SpeechEventType.END_OF_SPEECH,
    ] * 2
    interims = [e for e in events if e.type is SpeechEventType.INTERIM]
    assert len(interims) > 10  # the hypothesis grows while the words arrive
    # Live decoding starts from the model's default cepstral mean: the first
    # utterance comes out rougher than the second.
    assert share(finals[0].text, WORDS_1) >= 0.4, finals[0].text
    assert share(finals[1].text, WORDS_2) >= 0.5, finals[1].text
    a1, a2 = finals[0].alternatives[0], finals[1].alternatives[0]
    assert 0.3 < a1.start_time < a1.end_time < a2.start_time < a2.end_time < 7.5


async def test_stream_adapter_gives_one_final_per_utterance() -> None:
    stt = StreamAdapter(PocketSphinxSTT(), EnergyVAD(VADOptions(min_silence_duration=0.4)))
    assert stt.capabilities.streaming
    async with stt.stream(language="en", max_buffer_size=1000) as s:
        for f in frames_of(load_fixture()):
            s.push_frame(f)
        s.end_input()
        events = [e async for e in s]
    kinds = [e.type for e in events]
    assert kinds == [
        SpeechEventType.START_OF_SPEECH,
        SpeechEventType.END_OF_SPEECH,
        SpeechEventType.FINAL,
        SpeechEventType.START_OF_SPEECH,
        SpeechEventType.END_OF_SPEECH,
        SpeechEventType.FINAL,
    ]
    f1, f2 = events[2], events[5]
    assert share(f1.text, WORDS_1) >= 0.7, f1.text
    assert share(f2.text, WORDS_2) >= 0.5, f2.text
    # Times are on the stream's clock: the second utterance comes later.
    a1, a2 = f1.alternatives[0], f2.alternatives[0]
    assert 0.3 < a1.start_time < a1.end_time < a2.start_time < a2.end_time < 7.2


async def test_espeak_streams_frames_and_stops_early() -> None:
    tts = EspeakTTS()
    assert tts.sample_rate == 22050
    async with tts.synthesize("one two three four five six seven eight nine") as audio:
        frames = [f async for f in audio]
    assert len(frames) > 3  # produced in chunks, not in one piece
    assert all(f.sample_rate == 22050 and f.num_channels == 1 for f in frames)
    total = sum(f.duration for f in frames)
    assert 1.5 < total < 5.0
    assert frames[1].timestamp == pytest.approx(frames[0].duration)
    # Leaving early: the synthesis stops, its thread is joined.
    async with tts.synthesize("a long text " * 200) as audio:
        await audio.receive()
    with pytest.raises(PluginError, match="unknown voice"):
        async with EspeakTTS("no-such-voice").synthesize("hello") as audio:
            await audio.collect()


async def test_tts_to_stt_round_trip() -> None:
    async with EspeakTTS().synthesize("the weather today is sunny and warm") as audio:
        speech = await audio.collect()
    event = await PocketSphinxSTT().recognize(speech)
    assert share(event.text, WORDS_2) >= 0.5, event.text


async def test_to_mono_resamples_and_mixes() -> None:
    tone = (np.sin(np.arange(48000) * 2 * np.pi * 440 / 48000) * 10000).astype(np.int16)
    stereo = AudioFrame(np.repeat(tone, 2), 48000, 2)
    out = to_mono(frames_of(stereo), 16000)
    assert abs(len(out) - 16000) < 200
    assert 6000 < np.abs(out).max() < 11000


def _sleepy(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


async def test_executor_threads_and_processes() -> None:
    async with open_inference_executor(
        threads=2, processes=1, warmup=[warm_pocketsphinx]
    ) as executor:
        pids = {await executor.run_process(_sleepy, 0) for _ in range(4)}
        assert os.getpid() not in pids
        assert len(pids) == 1  # warm: the same process serves every call
        # Recognition in a worker process gives the same words as in-process.
        stt = PocketSphinxSTT(executor=executor)
        first = AudioFrame(load_fixture().samples[: 16000 * 4], 16000)
        event = await stt.recognize(first)
        assert share(event.text, WORDS_1) >= 0.7
        # A running process call is killed on cancellation, at once.
        start = trio.current_time()
        with trio.move_on_after(0.5):
            await executor.run_process(_sleepy, 30)
        assert trio.current_time() - start < 10
        # ... and a fresh process takes its place.
        assert await executor.run_process(_sleepy, 0) not in pids
        # Thread calls are bounded: 4 calls of 0.2 s on 2 threads take two rounds.
        t0 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(executor.run_sync, _sleepy, 0.2)
        assert time.perf_counter() - t0 >= 0.4
        stats = executor.statistics()
        assert stats.cancelled == 1
        assert stats.completed >= 10
        assert stats.threads_busy == 0 and stats.waiting == 0
    with pytest.raises(trio.ClosedResourceError):
        await executor.run_sync(_sleepy, 0)


async def test_vad_on_executor_threads_matches_inline() -> None:
    frames = frames_of(load_fixture())
    vad = SileroVAD()
    inline = await run_vad(vad, frames)
    # The second stream reuses the first one's engine, reset: the same verdicts.
    again = await run_vad(vad, frames)
    assert [e.probability for e in again] == [e.probability for e in inline]
    async with open_inference_executor(threads=1, processes=0) as executor:
        threaded = await run_vad(SileroVAD(executor=executor), frames)
        assert executor.statistics().completed > 0
    assert [(e.type, round(e.probability, 4)) for e in inline] == [
        (e.type, round(e.probability, 4)) for e in threaded
    ]


class _FailingSTT:
    """A user-written engine: the protocol is all it needs."""

    @property
    def capabilities(self) -> STTCapabilities:
        return STTCapabilities(streaming=False)

    async def recognize(
        self, frames: Sequence[AudioFrame] | AudioFrame, *, language: str | None = None
    ) -> SpeechEvent:
        raise PluginError("FailingSTT: quota exceeded")

    def stream(self, **kwargs: object) -> Any:
        raise NotImplementedError


async def test_adapter_reports_the_engine_error_to_the_consumer() -> None:
    engine = _FailingSTT()
    assert isinstance(engine, STT)
    adapter = StreamAdapter(engine, EnergyVAD(VADOptions(min_silence_duration=0.4)))
    async with adapter.stream(max_buffer_size=1000) as s:
        for f in frames_of(load_fixture()):
            s.push_frame(f)
        s.end_input()
        kinds = []
        with pytest.raises(PluginError, match="FailingSTT: quota exceeded"):
            async for event in s:
                kinds.append(event.type)
    assert kinds == [SpeechEventType.START_OF_SPEECH, SpeechEventType.END_OF_SPEECH]


async def test_prefix_padding_is_kept_before_the_speech() -> None:
    frames = frames_of(load_fixture())
    starts = []
    for padding in (0.0, 0.3):
        vad = EnergyVAD(VADOptions(min_silence_duration=0.4, prefix_padding_duration=padding))
        end = next(e for e in await run_vad(vad, frames) if e.type is VADEventType.END_OF_SPEECH)
        (utterance,) = end.frames
        starts.append(utterance.timestamp)
        # The utterance's audio ends where END_OF_SPEECH was decided.
        assert utterance.timestamp + utterance.duration == pytest.approx(end.timestamp, abs=0.011)
    # Speech starts at 0.5 s: no padding starts there, 0.3 s of padding 0.3 s earlier.
    assert starts[0] == pytest.approx(0.51, abs=0.03)
    assert starts[0] - starts[1] == pytest.approx(0.3, abs=0.02)


async def test_pocketsphinx_stream_ends_an_utterance_cut_by_end_input() -> None:
    audio = load_fixture()
    cut = frames_of(AudioFrame(audio.samples[: int(2.0 * 16000)], 16000))  # mid-speech
    async with PocketSphinxSTT().stream() as s:
        for f in cut:
            s.push_frame(f)
        s.end_input()
        kinds = [e.type for e in [e async for e in s] if e.type is not SpeechEventType.INTERIM]
    assert kinds == [
        SpeechEventType.START_OF_SPEECH,
        SpeechEventType.FINAL,
        SpeechEventType.END_OF_SPEECH,
    ]
