"""Make tests/data/utterance.wav once (committed): two utterances separated by silence.

Run: python tests/data/make_utterance.py  (needs the ``espeak`` extra)
"""

from __future__ import annotations

import pathlib
import wave

import numpy as np
import trio

from trio_lkagent.plugins import EspeakTTS, to_mono

TEXTS = ("one two three four five six seven eight nine", "the weather today is sunny and warm")
RATE = 16000


async def main() -> None:
    tts = EspeakTTS("en-us+klatt", rate=160)
    silence = np.zeros(RATE // 2, np.int16)
    parts = [silence]
    for text in TEXTS:
        async with tts.synthesize(text) as audio:
            parts.append(to_mono(await audio.collect(), RATE))
        parts.append(np.zeros(RATE, np.int16))
    path = pathlib.Path(__file__).with_name("utterance.wav")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.concatenate(parts).tobytes())
    print(path, sum(len(p) for p in parts) / RATE, "s")


if __name__ == "__main__":
    trio.run(main)
