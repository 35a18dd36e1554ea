"""OpenAI-compatible speech over HTTP: :class:`OpenAISTT` and :class:`OpenAITTS` (extra ``openai``).

They speak the OpenAI audio API, which the official Whisper / TTS service and many
local servers (whisper.cpp's server, faster-whisper-server, LocalAI, vLLM, ...)
implement:

* ``POST {base_url}/audio/transcriptions``: ``multipart/form-data`` with ``file``
  (a WAV we encode), ``model``, optional ``language`` / ``prompt`` /
  ``temperature``, ``response_format`` (``verbose_json`` by default, for segment
  times and the language; ``json`` and ``text`` are understood too).
* ``POST {base_url}/audio/speech``: JSON ``{model, input, voice, speed,
  response_format: "pcm"}``; the body streams raw 24 kHz 16-bit mono PCM, handed
  on as frames while it arrives.

httpx runs on Trio (through anyio). Each call opens its own client unless one is
given (share one ``httpx.AsyncClient`` across calls to reuse connections; its
lifetime is yours). HTTP errors and the API's error bodies become
:class:`~trio_lkagent.PluginError` with the server's message.
"""

from __future__ import annotations

import functools
import io
import json
import os
import wave
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from .._exceptions import PluginError
from .._media import AudioFrame
from ._base import (
    DEFAULT_BUFFER_SIZE,
    SpeechData,
    SpeechEvent,
    SpeechEventType,
    STTCapabilities,
    STTStream,
    SynthesizedAudio,
    to_mono,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["OpenAISTT", "OpenAITTS"]

_DEFAULT_URL = "https://api.openai.com/v1"
_PCM_RATE = 24000  # the API's "pcm" format: 24 kHz, 16-bit signed little-endian, mono


def _httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:
        raise ImportError("httpx is not installed: pip install 'trio-lkagent[openai]'") from exc
    return httpx


def _api_key(api_key: str | None) -> str | None:
    return api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")


def _error_message(status: int, body: bytes) -> str:
    try:
        error = json.loads(body)["error"]
        message = error.get("message") or error
    except (ValueError, KeyError, TypeError, AttributeError):
        message = body[:200].decode("utf-8", "replace") or "(empty body)"
    return f"HTTP {status}: {message}"


def _client(client: httpx.AsyncClient | None, timeout: float) -> AbstractAsyncContextManager[Any]:
    if client is not None:
        return nullcontext(client)
    return _httpx().AsyncClient(timeout=timeout)  # type: ignore[no-any-return]


def _wav(samples: np.ndarray[Any, np.dtype[np.int16]], rate: int) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return out.getvalue()


class OpenAISTT:
    """Transcription through an OpenAI-compatible ``/audio/transcriptions`` endpoint.

    Not streaming (the API takes whole files): wrap it in
    :class:`~trio_lkagent.plugins.StreamAdapter` for a live stream.

    Args:
        model: The model name the server knows (``"whisper-1"`` for OpenAI).
        base_url: The API root, up to and including ``/v1``.
        api_key: Bearer token (default: ``$OPENAI_API_KEY``; none is sent if unset).
        language: Default ISO-639-1 language hint.
        prompt: Optional text to guide the model's style/vocabulary.
        response_format: ``"verbose_json"`` (times and language), ``"json"`` or
            ``"text"``.
        sample_rate: Rate of the WAV uploaded (audio is resampled to it).
        timeout: Seconds for each HTTP request.
        client: A shared ``httpx.AsyncClient`` (default: one per request).
    """

    def __init__(
        self,
        *,
        model: str = "whisper-1",
        base_url: str = _DEFAULT_URL,
        api_key: str | None = None,
        language: str | None = None,
        prompt: str | None = None,
        response_format: str = "verbose_json",
        sample_rate: int = 16000,
        timeout: float = 30.0,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        _httpx()
        if response_format not in ("verbose_json", "json", "text"):
            raise ValueError("response_format must be verbose_json, json or text")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self._api_key = _api_key(api_key)
        self.language = language
        self.prompt = prompt
        self.response_format = response_format
        self.sample_rate = sample_rate
        self.timeout = timeout
        self._client = client

    @property
    def capabilities(self) -> STTCapabilities:
        """Not streaming (use :class:`~trio_lkagent.plugins.StreamAdapter`)."""
        return STTCapabilities(streaming=False)

    async def recognize(
        self, frames: Sequence[AudioFrame] | AudioFrame, *, language: str | None = None
    ) -> SpeechEvent:
        """Upload one utterance as a WAV file and return the transcript.

        Raises:
            PluginError: The request failed or the server answered with an error.
        """
        pcm = to_mono(frames, self.sample_rate)
        duration = len(pcm) / self.sample_rate
        data: dict[str, str] = {"model": self.model, "response_format": self.response_format}
        lang = language or self.language
        if lang:
            data["language"] = lang
        if self.prompt:
            data["prompt"] = self.prompt
        files = {"file": ("audio.wav", _wav(pcm, self.sample_rate), "audio/wav")}
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        httpx = _httpx()
        try:
            async with _client(self._client, self.timeout) as client:
                response = await client.post(
                    f"{self.base_url}/audio/transcriptions",
                    data=data,
                    files=files,
                    headers=headers,
                    timeout=self.timeout,
                )
        except httpx.HTTPError as exc:
            raise PluginError(f"OpenAISTT: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 400:
            raise PluginError(
                f"OpenAISTT: {_error_message(response.status_code, response.content)}"
            )
        request_id = response.headers.get("x-request-id", "")
        if self.response_format == "text":
            text = response.text.strip()
            return SpeechEvent(
                SpeechEventType.FINAL,
                (SpeechData(text, 0.0, 0.0, duration, lang or ""),),
                request_id,
            )
        try:
            body = response.json()
            text = str(body["text"]).strip()
        except (ValueError, KeyError, TypeError) as exc:
            raise PluginError(f"OpenAISTT: malformed response: {response.text[:200]!r}") from exc
        start, end = 0.0, duration
        segments = body.get("segments") or []
        confidence = 0.0
        if segments:
            start = float(segments[0].get("start", 0.0))
            end = float(segments[-1].get("end", duration))
            logprobs = [s["avg_logprob"] for s in segments if "avg_logprob" in s]
            if logprobs:
                confidence = float(np.exp(np.mean(logprobs)))
        language_out = str(body.get("language") or lang or "")
        return SpeechEvent(
            SpeechEventType.FINAL,
            (SpeechData(text, confidence, start, end, language_out),),
            request_id,
        )

    @asynccontextmanager
    async def stream(
        self, *, language: str | None = None, max_buffer_size: int = DEFAULT_BUFFER_SIZE
    ) -> AsyncIterator[STTStream]:
        """Not supported: raises :class:`PluginError` (wrap in ``StreamAdapter``)."""
        raise PluginError("OpenAISTT does not stream: wrap it in StreamAdapter(stt, vad)")
        yield  # pragma: no cover


class OpenAITTS:
    """Speech through an OpenAI-compatible ``/audio/speech`` endpoint (raw PCM, streamed).

    Args:
        model: The model name (``"tts-1"``, ``"gpt-4o-mini-tts"``, ...).
        voice: The voice (``"alloy"``, ...).
        speed: 0.25 to 4.0.
        base_url: The API root, up to and including ``/v1``.
        api_key: Bearer token (default: ``$OPENAI_API_KEY``).
        timeout: Seconds for the request (connect and between chunks).
        frame_ms: Length of the frames handed on.
        client: A shared ``httpx.AsyncClient`` (default: one per synthesis).
    """

    def __init__(
        self,
        *,
        model: str = "tts-1",
        voice: str = "alloy",
        speed: float = 1.0,
        base_url: str = _DEFAULT_URL,
        api_key: str | None = None,
        timeout: float = 30.0,
        frame_ms: int = 20,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        _httpx()
        if not 0.25 <= speed <= 4.0:
            raise ValueError("speed must be 0.25..4.0")
        if frame_ms <= 0:
            raise ValueError("frame_ms must be > 0")
        self.model = model
        self.voice = voice
        self.speed = speed
        self.base_url = base_url.rstrip("/")
        self._api_key = _api_key(api_key)
        self.timeout = timeout
        self.frame_ms = frame_ms
        self._client = client

    @property
    def sample_rate(self) -> int:
        """24000: the API's ``pcm`` format."""
        return _PCM_RATE

    @asynccontextmanager
    async def synthesize(self, text: str) -> AsyncIterator[SynthesizedAudio]:
        """Synthesise *text*; frames arrive while the response streams in.

        Raises:
            PluginError: (when the frames are read) the request failed or the server
                answered with an error.
        """
        audio = SynthesizedAudio(_PCM_RATE)
        async with audio._produced_by(functools.partial(self._run, text)) as produced:
            yield produced

    async def _run(self, text: str, audio: SynthesizedAudio) -> None:
        httpx = _httpx()
        body = {
            "model": self.model,
            "input": text,
            "voice": self.voice,
            "speed": self.speed,
            "response_format": "pcm",
        }
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        step = _PCM_RATE * self.frame_ms // 1000 * 2  # bytes per frame
        try:
            async with (
                _client(self._client, self.timeout) as client,
                client.stream(
                    "POST",
                    f"{self.base_url}/audio/speech",
                    json=body,
                    headers=headers,
                    timeout=self.timeout,
                ) as response,
            ):
                if response.status_code >= 400:
                    content = await response.aread()
                    message = _error_message(response.status_code, content)
                    raise PluginError(f"OpenAITTS: {message}")  # noqa: TRY301
                pending = b""
                position = 0
                async for chunk in response.aiter_bytes():
                    pending += chunk
                    whole = len(pending) // step * step
                    for i in range(0, whole, step):
                        samples = np.frombuffer(pending[i : i + step], "<i2").astype(np.int16)
                        if not await audio._put(samples, position / _PCM_RATE):
                            return
                        position += len(samples)
                    pending = pending[whole:]
                if len(pending) >= 2:
                    tail = pending[: len(pending) // 2 * 2]
                    await audio._put(
                        np.frombuffer(tail, "<i2").astype(np.int16), position / _PCM_RATE
                    )
        except trio.Cancelled:
            raise
        except httpx.HTTPError as exc:
            error = PluginError(f"OpenAITTS: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            audio._fail(error, "OpenAITTS")
        except Exception as exc:
            audio._fail(exc, "OpenAITTS")
        finally:
            audio._send.close()
