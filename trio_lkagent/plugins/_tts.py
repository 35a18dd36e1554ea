"""Offline text-to-speech: :class:`EspeakTTS` (eSpeak NG through ctypes).

The ``espeakng-loader`` wheel (extra ``espeak``) ships ``libespeak-ng`` and its data,
so ``pip install "trio-lkagent[espeak]"`` is all it needs. The library has one global
synthesiser per process: synthesis runs on a Trio worker thread under a process-wide
lock, and each chunk the library produces is handed to the consumer as it comes
(the thread waits while the consumer's buffer is full).
"""

from __future__ import annotations

import ctypes
import functools
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import trio

from .._exceptions import PluginError
from ._base import SynthesizedAudio

__all__ = ["EspeakTTS"]

_LOCK = threading.Lock()
_STATE: dict[str, Any] = {}

_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE = 1
_PITCH = 3
_EE_OK = 0


def _library() -> tuple[Any, int]:
    """Load and initialise libespeak-ng once per process; returns (lib, sample_rate)."""
    if "lib" in _STATE:
        return _STATE["lib"], _STATE["rate"]
    try:
        import espeakng_loader
    except ImportError as exc:
        raise ImportError(
            "espeakng-loader is not installed: pip install 'trio-lkagent[espeak]'"
        ) from exc
    lib: Any = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_uint,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_Synchronize.restype = ctypes.c_int
    rate = lib.espeak_Initialize(
        _AUDIO_OUTPUT_SYNCHRONOUS, 100, espeakng_loader.get_data_path().encode(), 0
    )
    if rate <= 0:
        raise PluginError("EspeakTTS: espeak_Initialize failed")
    _STATE.update(lib=lib, rate=rate)
    return lib, rate


class EspeakTTS:
    """eSpeak NG speech synthesis, offline (extra ``espeak``).

    Args:
        voice: An eSpeak voice name, optionally with a variant
            (``"en-us+klatt"``, the default, is the variant speech recognisers such
            as pocketsphinx understand best; ``"en"`` is eSpeak's default voice).
        rate: Speaking rate in words per minute (80-450).
        pitch: Base pitch, 0-100.
    """

    def __init__(self, voice: str = "en-us+klatt", *, rate: int = 160, pitch: int = 50) -> None:
        if not 80 <= rate <= 450:
            raise ValueError("rate must be 80..450 words per minute")
        if not 0 <= pitch <= 100:
            raise ValueError("pitch must be 0..100")
        self.voice = voice
        self.rate = rate
        self.pitch = pitch
        _lib, self._sample_rate = _library()

    @property
    def sample_rate(self) -> int:
        """Rate of the frames produced (22050 Hz for eSpeak NG's voices)."""
        return self._sample_rate

    @asynccontextmanager
    async def synthesize(self, text: str) -> AsyncIterator[SynthesizedAudio]:
        """Synthesise *text*; frames (mono, ``sample_rate``) arrive as produced.

        Cancellation:
            Leaving the block early stops the synthesis (the library is told to
            abort at its next chunk) and waits for its thread.
        """
        audio = SynthesizedAudio(self._sample_rate)
        async with audio._produced_by(functools.partial(self._run, text)) as produced:
            yield produced

    async def _run(self, text: str, audio: SynthesizedAudio) -> None:
        stop = threading.Event()
        token = trio.lowlevel.current_trio_token()
        position = [0]

        def on_chunk(wav: Any, n: int, _events: Any) -> int:
            if stop.is_set():
                return 1
            if n > 0 and wav:
                samples = np.ctypeslib.as_array(wav, (n,)).astype(np.int16, copy=True)
                timestamp = position[0] / self._sample_rate
                position[0] += n
                try:
                    wanted = trio.from_thread.run(audio._put, samples, timestamp, trio_token=token)
                except (trio.Cancelled, trio.RunFinishedError):
                    wanted = False
                if not wanted:
                    stop.set()
                    return 1
            return 0

        def synth() -> None:
            lib, _rate = _library()
            callback = _CALLBACK(on_chunk)
            data = text.encode("utf-8")
            with _LOCK:
                lib.espeak_SetSynthCallback(callback)
                if lib.espeak_SetVoiceByName(self.voice.encode()) != _EE_OK:
                    raise PluginError(f"EspeakTTS: unknown voice {self.voice!r}")
                lib.espeak_SetParameter(_RATE, self.rate, 0)
                lib.espeak_SetParameter(_PITCH, self.pitch, 0)
                err = lib.espeak_Synth(
                    data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
                )
                lib.espeak_Synchronize()
            if err != _EE_OK and not stop.is_set():
                raise PluginError(f"EspeakTTS: espeak_Synth failed (error {err})")

        try:
            await trio.to_thread.run_sync(synth)
        except trio.Cancelled:
            stop.set()
            raise
        except Exception as exc:
            audio._fail(exc, "EspeakTTS")
        finally:
            audio._send.close()
