"""A local server that speaks the OpenAI audio API, backed by real offline engines.

``POST /v1/audio/transcriptions`` (multipart: ``file``, ``model``, ``language``,
``prompt``, ``response_format`` = json | text | verbose_json) transcribes with
PocketSphinx; ``POST /v1/audio/speech`` (JSON: ``model``, ``input``, ``voice``,
``speed``, ``response_format`` = pcm | wav) synthesises with eSpeak NG and streams
the body in chunks (24 kHz mono 16-bit for ``pcm``, as the API does). Requests are
validated as the API does (bearer token, required fields, limits), with the API's
error body ``{"error": {"message", "type", "param", "code"}}``. Formats that need an
encoder we do not have (mp3, opus, ...) are refused with a 400 that says so.

Every request is recorded in ``app.requests`` (method, path, headers, fields), so
tests can check what the client sent.
"""

from __future__ import annotations

import io
import json
import wave
from collections.abc import Awaitable, Callable
from email.parser import BytesParser
from email.policy import HTTP
from functools import partial
from typing import Any

import numpy as np
import trio

from trio_lkagent._media import AudioFrame
from trio_lkagent.plugins import EspeakTTS, PocketSphinxSTT, to_mono

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

VOICES = {"alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer"}


class OpenAIAudioApp:
    """The ASGI application."""

    def __init__(self, api_key: str = "sk-test") -> None:
        self.api_key = api_key
        self.requests: list[dict[str, Any]] = []
        self.stt = PocketSphinxSTT()
        self.tts = EspeakTTS()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        assert scope["type"] == "http"
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        record: dict[str, Any] = {
            "method": scope["method"],
            "path": scope["path"],
            "headers": headers,
        }
        self.requests.append(record)
        if headers.get("authorization") != f"Bearer {self.api_key}":
            await _error(
                send,
                401,
                "Incorrect API key provided.",
                "invalid_request_error",
                code="invalid_api_key",
            )
            return
        if scope["method"] != "POST":
            await _error(send, 405, "Method not allowed.", "invalid_request_error")
            return
        if scope["path"] == "/v1/audio/transcriptions":
            await self._transcribe(headers, body, record, send)
        elif scope["path"] == "/v1/audio/speech":
            await self._speech(body, record, send)
        else:
            await _error(send, 404, f"Invalid URL (POST {scope['path']})", "invalid_request_error")

    async def _transcribe(
        self, headers: dict[str, str], body: bytes, record: dict[str, Any], send: Send
    ) -> None:
        ctype = headers.get("content-type", "")
        if not ctype.startswith("multipart/form-data"):
            await _error(send, 400, "Expected multipart/form-data.", "invalid_request_error")
            return
        message = BytesParser(policy=HTTP).parsebytes(
            f"Content-Type: {ctype}\r\n\r\n".encode("latin-1") + body
        )
        fields: dict[str, str] = {}
        file: tuple[str, bytes] | None = None
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            if name == "file":
                file = (part.get_filename() or "", payload)
            elif isinstance(name, str):
                fields[name] = payload.decode("utf-8")
        record["fields"] = fields
        record["filename"] = file[0] if file else None
        if "model" not in fields:
            await _error(
                send, 400, "you must provide a model parameter", "invalid_request_error", "model"
            )
            return
        if file is None:
            await _error(
                send, 400, "you must provide a file parameter", "invalid_request_error", "file"
            )
            return
        fmt = fields.get("response_format", "json")
        if fmt not in ("json", "text", "verbose_json", "srt", "vtt"):
            await _error(
                send,
                400,
                f"Invalid response_format {fmt!r}",
                "invalid_request_error",
                "response_format",
            )
            return
        if fmt in ("srt", "vtt"):
            await _error(
                send,
                400,
                f"response_format {fmt!r} is not supported by this test server",
                "invalid_request_error",
                "response_format",
            )
            return
        try:
            with wave.open(io.BytesIO(file[1]), "rb") as w:
                if w.getsampwidth() != 2:
                    raise wave.Error("only 16-bit PCM")  # noqa: TRY301
                pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.int16)
                frame = AudioFrame(pcm, w.getframerate(), w.getnchannels())
        except (wave.Error, EOFError) as exc:
            await _error(
                send,
                400,
                f"Invalid file format. Supported formats: ['wav'] ({exc})",
                "invalid_request_error",
                "file",
            )
            return
        language = fields.get("language")
        if language not in (None, "", "en"):
            await _error(
                send, 400, f"Unsupported language {language!r}", "invalid_request_error", "language"
            )
            return
        event = await self.stt.recognize(frame)
        alt = event.alternatives[0]
        duration = frame.duration
        if fmt == "text":
            await _respond(send, 200, "text/plain; charset=utf-8", (alt.text + "\n").encode())
            return
        result: dict[str, Any] = {"text": alt.text}
        if fmt == "verbose_json":
            result = {
                "task": "transcribe",
                "language": "english",
                "duration": duration,
                "text": alt.text,
                "segments": [
                    {
                        "id": 0,
                        "seek": 0,
                        "start": alt.start_time,
                        "end": alt.end_time,
                        "text": " " + alt.text,
                        "tokens": [],
                        "temperature": 0.0,
                        "avg_logprob": float(np.log(max(alt.confidence, 1e-6))),
                        "compression_ratio": 1.0,
                        "no_speech_prob": 0.0,
                    }
                ]
                if alt.text
                else [],
            }
        await _respond(send, 200, "application/json", json.dumps(result).encode())

    async def _speech(self, body: bytes, record: dict[str, Any], send: Send) -> None:
        try:
            request = json.loads(body)
            assert isinstance(request, dict)
        except (ValueError, AssertionError):
            await _error(
                send,
                400,
                "We could not parse the JSON body of your request.",
                "invalid_request_error",
            )
            return
        record["json"] = request
        for name in ("model", "input", "voice"):
            if not request.get(name):
                await _error(
                    send,
                    400,
                    f"Missing required parameter: '{name}'.",
                    "invalid_request_error",
                    name,
                )
                return
        text = request["input"]
        if len(text) > 4096:
            await _error(
                send,
                400,
                "input is too long (max 4096 characters)",
                "invalid_request_error",
                "input",
            )
            return
        if request["voice"] not in VOICES:
            await _error(
                send, 400, f"Invalid voice {request['voice']!r}", "invalid_request_error", "voice"
            )
            return
        speed = float(request.get("speed", 1.0))
        if not 0.25 <= speed <= 4.0:
            await _error(
                send, 400, "speed must be between 0.25 and 4.0", "invalid_request_error", "speed"
            )
            return
        fmt = request.get("response_format", "mp3")
        if fmt not in ("pcm", "wav"):
            await _error(
                send,
                400,
                f"response_format {fmt!r} is not supported by this test server",
                "invalid_request_error",
                "response_format",
            )
            return
        ctype = "audio/pcm" if fmt == "pcm" else "audio/wav"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", ctype.encode()), (b"x-request-id", b"req_local")],
            }
        )
        if fmt == "wav":  # a streaming WAV header, as the API sends (unknown length)
            header = io.BytesIO()
            with wave.open(header, "wb") as w:
                w.setnchannels(1)
                w.setsampwidth(2)
                w.setframerate(24000)
            await send({"type": "http.response.body", "body": header.getvalue(), "more_body": True})
        async with self.tts.synthesize(text) as audio:
            async for frame in audio:
                pcm = to_mono(frame, 24000)  # the API's PCM is 24 kHz
                await send(
                    {
                        "type": "http.response.body",
                        "body": pcm.astype("<i2").tobytes(),
                        "more_body": True,
                    }
                )
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _respond(send: Send, status: int, ctype: str, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", ctype.encode()), (b"x-request-id", b"req_local")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _error(
    send: Send,
    status: int,
    message: str,
    type_: str,
    param: str | None = None,
    code: str | None = None,
) -> None:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    await _respond(send, status, "application/json", json.dumps(body).encode())


async def serve_openai_audio(
    app: OpenAIAudioApp, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve *app* on 127.0.0.1 (port from the OS); reports the API root ``http://.../v1``."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.graceful_timeout = 0.5
    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(
            partial(serve, app, config, shutdown_trigger=trio.sleep_forever)  # type: ignore[arg-type]
        )
        task_status.started(binds[0] + "/v1")
