"""OpenAISTT / OpenAITTS against a local server that speaks the OpenAI audio API."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest
import trio

from trio_lkagent import PluginError
from trio_lkagent._media import AudioFrame
from trio_lkagent.plugins import (
    EnergyVAD,
    OpenAISTT,
    OpenAITTS,
    PocketSphinxSTT,
    SpeechEventType,
    StreamAdapter,
    VADOptions,
)

from .openai_server import OpenAIAudioApp, serve_openai_audio
from .test_plugins import WORDS_1, WORDS_2, frames_of, load_fixture, share, upsample_48k


@pytest.fixture
async def api(nursery: trio.Nursery) -> AsyncIterator[tuple[OpenAIAudioApp, str]]:
    app = OpenAIAudioApp(api_key="sk-test")
    url = await nursery.start(serve_openai_audio, app)
    yield app, url


async def test_transcription_uploads_a_wav_and_reads_verbose_json(
    api: tuple[OpenAIAudioApp, str],
) -> None:
    app, url = api
    stt = OpenAISTT(base_url=url, api_key="sk-test", model="whisper-1", language="en")
    first = AudioFrame(load_fixture().samples[: 16000 * 4], 16000)
    event = await stt.recognize(frames_of(upsample_48k(first)))
    assert event.type is SpeechEventType.FINAL
    assert share(event.text, WORDS_1) >= 0.7, event.text
    alt = event.alternatives[0]
    assert alt.language == "english"
    assert 0.2 < alt.start_time < alt.end_time < 4.0
    assert 0.0 < alt.confidence <= 1.0
    assert event.request_id == "req_local"
    (request,) = app.requests
    assert request["path"] == "/v1/audio/transcriptions"
    assert request["fields"] == {
        "model": "whisper-1",
        "response_format": "verbose_json",
        "language": "en",
    }
    assert request["filename"] == "audio.wav"
    assert request["headers"]["content-type"].startswith("multipart/form-data; boundary=")


async def test_transcription_json_and_text_formats(api: tuple[OpenAIAudioApp, str]) -> None:
    _app, url = api
    first = AudioFrame(load_fixture().samples[: 16000 * 4], 16000)
    for fmt in ("json", "text"):
        stt = OpenAISTT(base_url=url, api_key="sk-test", response_format=fmt)
        event = await stt.recognize(first)
        assert share(event.text, WORDS_1) >= 0.7, (fmt, event.text)


async def test_server_errors_become_plugin_errors_with_the_message(
    api: tuple[OpenAIAudioApp, str],
) -> None:
    _app, url = api
    first = AudioFrame(load_fixture().samples[:16000], 16000)
    with pytest.raises(PluginError, match=r"HTTP 401: Incorrect API key provided"):
        await OpenAISTT(base_url=url, api_key="sk-wrong").recognize(first)
    with pytest.raises(PluginError, match=r"HTTP 400: Unsupported language 'fr'"):
        await OpenAISTT(base_url=url, api_key="sk-test").recognize(first, language="fr")
    with pytest.raises(PluginError, match=r"HTTP 400: Invalid voice 'nobody'"):
        async with OpenAITTS(base_url=url, api_key="sk-test", voice="nobody").synthesize(
            "hi"
        ) as audio:
            await audio.collect()
    # Nothing listening: a connection error, as a PluginError chained to httpx's.
    async with trio.open_nursery() as nursery:
        listener = (await nursery.start(trio.serve_tcp, lambda s: s.aclose(), 0))[0]
        port = listener.socket.getsockname()[1]
        nursery.cancel_scope.cancel()
    with pytest.raises(PluginError, match="OpenAISTT: ConnectError") as info:
        await OpenAISTT(base_url=f"http://127.0.0.1:{port}/v1", api_key="k").recognize(first)
    assert isinstance(info.value.__cause__, httpx.ConnectError)


async def test_speech_streams_pcm_frames(api: tuple[OpenAIAudioApp, str]) -> None:
    app, url = api
    tts = OpenAITTS(base_url=url, api_key="sk-test", voice="alloy", frame_ms=20)
    assert tts.sample_rate == 24000
    async with tts.synthesize("the weather today is sunny and warm") as audio:
        frames = [f async for f in audio]
    assert len(frames) > 20
    assert all(f.sample_rate == 24000 for f in frames)
    assert {len(f.samples) for f in frames[:-1]} == {480}
    assert frames[5].timestamp == pytest.approx(5 * 0.02)
    speech = AudioFrame(np.concatenate([f.samples for f in frames]), 24000)
    assert 1.0 < speech.duration < 5.0
    # What came over HTTP is speech: PocketSphinx hears the words.
    heard = await PocketSphinxSTT().recognize(speech)
    assert share(heard.text, WORDS_2) >= 0.5, heard.text
    assert app.requests[0]["json"] == {
        "model": "tts-1",
        "input": "the weather today is sunny and warm",
        "voice": "alloy",
        "speed": 1.0,
        "response_format": "pcm",
    }


async def test_openai_stt_through_the_stream_adapter(api: tuple[OpenAIAudioApp, str]) -> None:
    app, url = api
    async with httpx.AsyncClient() as client:  # one shared connection pool
        stt = StreamAdapter(
            OpenAISTT(base_url=url, api_key="sk-test", client=client),
            EnergyVAD(VADOptions(min_silence_duration=0.4)),
        )
        async with stt.stream(max_buffer_size=1000) as s:
            for f in frames_of(load_fixture()):
                s.push_frame(f)
            s.end_input()
            finals = [e async for e in s if e.type is SpeechEventType.FINAL]
    assert len(finals) == 2
    assert share(finals[0].text, WORDS_1) >= 0.7
    assert share(finals[1].text, WORDS_2) >= 0.5
    assert len(app.requests) == 2
