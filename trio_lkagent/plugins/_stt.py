"""Speech-to-text: the VAD-segmented :class:`StreamAdapter` and :class:`PocketSphinxSTT`.

A non-streaming engine only implements ``recognize`` (one utterance in, one
``FINAL`` event out); :class:`StreamAdapter` makes it a streaming one by cutting the
audio into utterances with a VAD and recognising each as it ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._exceptions import PluginError
from .._media import AudioFrame
from ._base import (
    DEFAULT_BUFFER_SIZE,
    STT,
    VAD,
    Int16Array,
    SpeechData,
    SpeechEvent,
    SpeechEventType,
    STTCapabilities,
    STTStream,
    VADEventType,
    _Converter,
    to_mono,
)
from ._executor import process_cache

if TYPE_CHECKING:
    from ._executor import InferenceExecutor

__all__ = ["PocketSphinxSTT", "StreamAdapter"]


class StreamAdapter:
    """Makes a non-streaming STT streaming: the VAD cuts utterances, the STT
    recognises each one as it ends.

    Events per utterance: ``START_OF_SPEECH``, ``END_OF_SPEECH``, then ``FINAL``
    (unless the engine heard no words), with times on the stream's clock.

    Args:
        stt: The engine (its ``recognize`` is used).
        vad: The detector that segments the audio.
    """

    def __init__(self, stt: STT, vad: VAD) -> None:
        self.stt = stt
        self.vad = vad

    @property
    def capabilities(self) -> STTCapabilities:
        """Streaming, without interim results."""
        return STTCapabilities(streaming=True, interim_results=False)

    async def recognize(
        self, frames: Sequence[AudioFrame] | AudioFrame, *, language: str | None = None
    ) -> SpeechEvent:
        """Recognise one utterance with the wrapped engine."""
        return await self.stt.recognize(frames, language=language)

    @asynccontextmanager
    async def stream(
        self, *, language: str | None = None, max_buffer_size: int = DEFAULT_BUFFER_SIZE
    ) -> AsyncIterator[STTStream]:
        """Open a VAD-segmented recognition stream.

        Args:
            language: Passed to every ``recognize``.
            max_buffer_size: Bound of the frame and event buffers.

        Yields:
            The stream: ``push_frame`` audio, iterate :class:`SpeechEvent` s.
        """
        stream = _AdapterStream(self, language, max_buffer_size=max_buffer_size)
        async with stream._open():
            yield stream


class _AdapterStream(STTStream):
    def __init__(
        self, adapter: StreamAdapter, language: str | None, *, max_buffer_size: int
    ) -> None:
        super().__init__(max_buffer_size=max_buffer_size, name=type(adapter.stt).__name__)
        self._adapter = adapter
        self._language = language

    async def _process(self) -> None:
        adapter = self._adapter
        async with adapter.vad.stream(max_buffer_size=self._max) as vad_stream:

            async def forward() -> None:
                async for frame in self._frames:
                    vad_stream.push_frame(frame)
                vad_stream.end_input()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(forward)
                async for event in vad_stream:
                    if event.type is VADEventType.START_OF_SPEECH:
                        await self._emit(SpeechEvent(SpeechEventType.START_OF_SPEECH))
                    elif event.type is VADEventType.END_OF_SPEECH:
                        await self._emit(SpeechEvent(SpeechEventType.END_OF_SPEECH))
                        if not event.frames:
                            continue
                        result = await adapter.stt.recognize(event.frames, language=self._language)
                        offset = event.frames[0].timestamp
                        alternatives = tuple(
                            attrs.evolve(
                                alt,
                                start_time=alt.start_time + offset,
                                end_time=alt.end_time + offset,
                            )
                            for alt in result.alternatives
                            if alt.text
                        )
                        if alternatives:
                            await self._emit(
                                SpeechEvent(SpeechEventType.FINAL, alternatives, result.request_id)
                            )


# --------------------------------------------------------------------------- pocketsphinx

_PS_RATE = 16000
_PS_FRAME_SECONDS = 0.01  # pocketsphinx's default frame rate: 100 frames/s


def _ps_decoder(config: tuple[tuple[str, Any], ...]) -> Any:
    try:
        import pocketsphinx
    except ImportError as exc:
        raise ImportError(
            "pocketsphinx is not installed: pip install 'trio-lkagent[pocketsphinx]'"
        ) from exc
    return pocketsphinx.Decoder(samprate=_PS_RATE, loglevel="FATAL", **dict(config))


def _ps_decode(config: tuple[tuple[str, Any], ...], pcm: bytes) -> tuple[str, float, float, float]:
    """Decode 16 kHz mono int16 PCM; returns (text, confidence, start, end).

    Module level so that it runs in worker processes; the decoder is built once per
    process (:func:`process_cache`).
    """
    decoder, cmn = _ps_decoder_cached(config)
    # Each utterance starts from the model's cepstral mean: carried over from the
    # previous utterance, it makes the result depend on what was decoded before.
    decoder.set_cmn(cmn)
    decoder.start_utt()
    try:
        decoder.process_raw(pcm, full_utt=True)
    finally:
        decoder.end_utt()
    hyp = decoder.hyp()
    if hyp is None or not hyp.hypstr:
        return "", 0.0, 0.0, 0.0
    words = [
        seg
        for seg in decoder.seg()
        if not seg.word.startswith("<") and not seg.word.startswith("[")
    ]
    start = words[0].start_frame * _PS_FRAME_SECONDS if words else 0.0
    end = (words[-1].end_frame + 1) * _PS_FRAME_SECONDS if words else 0.0
    confidence = float(decoder.get_logmath().exp(hyp.prob))
    return str(hyp.hypstr), min(max(confidence, 0.0), 1.0), start, end


def warm_pocketsphinx() -> None:
    """Load the default pocketsphinx model into this process (an executor warmup)."""
    _ps_decoder_cached(())


def _ps_decoder_cached(config: tuple[tuple[str, Any], ...]) -> tuple[Any, str]:
    def build() -> tuple[Any, str]:
        decoder = _ps_decoder(config)
        return decoder, decoder.get_cmn(False)

    return process_cache(("pocketsphinx", config), build)


class PocketSphinxSTT:
    """Offline English speech recognition with CMU PocketSphinx (extra ``pocketsphinx``).

    The wheel ships a US English acoustic model, language model and dictionary: no
    download. ``recognize`` decodes whole utterances (about 0.2-0.25 s per second of
    speech, holding the GIL: give it an executor with worker processes,
    ``run_process``; without one it runs on a Trio worker thread);
    ``StreamAdapter(PocketSphinxSTT(executor=...), vad)`` makes that streaming.
    ``stream()`` decodes live on a thread, with interim results.

    Args:
        executor: Decode in this executor's worker processes.
        hmm: Acoustic model directory (default: the wheel's en-us model).
        lm: Language model file.
        dict: Pronunciation dictionary file.
    """

    def __init__(
        self,
        *,
        executor: InferenceExecutor | None = None,
        hmm: str | None = None,
        lm: str | None = None,
        dict: str | None = None,
    ) -> None:
        try:
            import pocketsphinx  # noqa: F401
        except ImportError as exc:
            raise ImportError(
                "pocketsphinx is not installed: pip install 'trio-lkagent[pocketsphinx]'"
            ) from exc
        options = {"hmm": hmm, "lm": lm, "dict": dict}
        self._config = tuple(sorted((k, v) for k, v in options.items() if v is not None))
        self._executor = executor

    @property
    def capabilities(self) -> STTCapabilities:
        """Streaming, with interim results (``stream()``)."""
        return STTCapabilities(streaming=True, interim_results=True)

    async def recognize(
        self, frames: Sequence[AudioFrame] | AudioFrame, *, language: str | None = None
    ) -> SpeechEvent:
        """Transcribe one utterance.

        Args:
            frames: The utterance (any rate; resampled to 16 kHz mono).
            language: ``None``, ``"en"`` or ``"en-US"`` (the model's language).

        Returns:
            A ``FINAL`` event (text "" if no words were heard).

        Raises:
            PluginError: Another language was asked for, or the decoder failed.
        """
        if language is not None and language.lower() not in ("en", "en-us", "en_us"):
            raise PluginError(f"PocketSphinxSTT: no model for language {language!r}")
        pcm: Int16Array = to_mono(frames, _PS_RATE)
        try:
            if self._executor is not None:
                text, conf, start, end = await self._executor.run_process(
                    _ps_decode, self._config, pcm.tobytes()
                )
            else:
                text, conf, start, end = await trio.to_thread.run_sync(
                    _ps_decode, self._config, pcm.tobytes()
                )
        except trio.Cancelled:
            raise
        except Exception as exc:
            raise PluginError(f"PocketSphinxSTT: {exc}") from exc
        return SpeechEvent(SpeechEventType.FINAL, (SpeechData(text, conf, start, end, "en-US"),))

    @asynccontextmanager
    async def stream(
        self, *, language: str | None = None, max_buffer_size: int = DEFAULT_BUFFER_SIZE
    ) -> AsyncIterator[STTStream]:
        """Live recognition with interim results (PocketSphinx's own endpointer).

        The stream has a decoder of its own, fed on a Trio worker thread as audio
        arrives (it holds the GIL while it decodes: for many concurrent streams
        prefer :class:`StreamAdapter` over an executor with processes). Per
        utterance: ``START_OF_SPEECH``, ``INTERIM`` events as the hypothesis grows,
        ``FINAL`` (unless no words were heard), ``END_OF_SPEECH``; times on the
        stream's clock. The endpointer (WebRTC's VAD inside pocketsphinx) ends an
        utterance after about 0.3 s of silence.

        Raises:
            PluginError: Another language was asked for.
        """
        if language is not None and language.lower() not in ("en", "en-us", "en_us"):
            raise PluginError(f"PocketSphinxSTT: no model for language {language!r}")
        stream = _PocketSphinxStream(self._config, max_buffer_size=max_buffer_size)
        async with stream._open():
            yield stream


class _PocketSphinxStream(STTStream):
    def __init__(self, config: tuple[tuple[str, Any], ...], *, max_buffer_size: int) -> None:
        super().__init__(max_buffer_size=max_buffer_size, name="PocketSphinxSTT")
        self._config = config
        self._last = ""
        self._utterance_start = 0.0

    async def _process(self) -> None:
        import pocketsphinx

        decoder = await trio.to_thread.run_sync(_ps_decoder, self._config)
        endpointer = pocketsphinx.Endpointer(sample_rate=_PS_RATE)
        step = int(endpointer.frame_bytes)
        conv = _Converter(_PS_RATE)
        pending = b""

        def run(chunks: list[bytes], last: bool) -> list[SpeechEvent]:  # a worker thread
            events: list[SpeechEvent] = []
            for i, chunk in enumerate(chunks):
                was_speaking = endpointer.in_speech
                if last and i == len(chunks) - 1:
                    speech = endpointer.end_stream(chunk)
                else:
                    speech = endpointer.process(chunk)
                if speech is None:
                    continue
                if not was_speaking:
                    decoder.start_utt()
                    self._last = ""
                    self._utterance_start = float(endpointer.speech_start)
                    events.append(SpeechEvent(SpeechEventType.START_OF_SPEECH))
                decoder.process_raw(speech)
                if endpointer.in_speech:
                    hyp = decoder.hyp()
                    if hyp is not None and hyp.hypstr and hyp.hypstr != self._last:
                        self._last = hyp.hypstr
                        events.append(self._event(SpeechEventType.INTERIM, hyp, decoder))
                else:
                    decoder.end_utt()
                    hyp = decoder.hyp()
                    if hyp is not None and hyp.hypstr:
                        events.append(self._event(SpeechEventType.FINAL, hyp, decoder))
                    events.append(SpeechEvent(SpeechEventType.END_OF_SPEECH))
            return events

        async def feed(chunks: list[bytes], last: bool) -> None:
            for event in await trio.to_thread.run_sync(run, chunks, last):
                await self._emit(event, droppable=event.type is SpeechEventType.INTERIM)

        async for frame in self._frames:
            pending += conv.push(frame).tobytes()
            whole = len(pending) // step * step
            if whole:
                chunks = [pending[i : i + step] for i in range(0, whole, step)]
                pending = pending[whole:]
                await feed(chunks, False)
        pending += conv.flush().tobytes()
        # end_stream needs at least one sample: one of silence when nothing is left.
        tail = [pending[i : i + step] for i in range(0, len(pending), step)] or [b"\0\0"]
        await feed(tail, True)

    def _event(self, kind: SpeechEventType, hyp: Any, decoder: Any) -> SpeechEvent:
        words = [seg for seg in decoder.seg() if not seg.word.startswith(("<", "["))]
        # Word frames count from the utterance's start (the endpointer's speech_start).
        offset = self._utterance_start
        start = offset + (words[0].start_frame * _PS_FRAME_SECONDS if words else 0.0)
        end = offset + ((words[-1].end_frame + 1) * _PS_FRAME_SECONDS if words else 0.0)
        confidence = min(max(float(decoder.get_logmath().exp(hyp.prob)), 0.0), 1.0)
        return SpeechEvent(kind, (SpeechData(str(hyp.hypstr), confidence, start, end, "en-US"),))
