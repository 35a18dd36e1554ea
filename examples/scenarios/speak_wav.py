"""A ``dev --scenario``: a participant speaks a WAV file; print the transcripts it gets.

For ``examples/transcription_agent.py`` (publisher jobs: the job starts when the
participant publishes its microphone)::

    trio-lkagent dev examples/transcription_agent.py --job-type publisher \\
        --scenario examples/scenarios/speak_wav.py

The file played is ``$SPEAK_WAV`` (a 16-bit PCM WAV, mono or stereo, any rate),
by default ``tests/data/utterance.wav``. Transcripts arrive as JSON data on topic
``transcript`` (``{"text", "start", "end", ...}``).
"""

from __future__ import annotations

import json
import os
import pathlib

import trio

from trio_lkagent.events import DataReceived
from trio_lkagent.testing import DevScenario, speak_wav

FIXTURE = pathlib.Path(__file__).resolve().parents[2] / "tests" / "data" / "utterance.wav"
TOPIC = "transcript"
#: How long to wait for the last transcripts once the file has played.
GRACE = 5.0


async def scenario(dev: DevScenario) -> None:
    wav = pathlib.Path(os.environ.get("SPEAK_WAV") or FIXTURE)
    speaker = await dev.participant("speaker", name="WAV speaker")
    events = speaker.events()

    async def print_transcripts() -> None:
        async for event in events:
            if isinstance(event, DataReceived) and event.topic == TOPIC:
                message = json.loads(event.payload)
                dev.say(
                    f"transcript [{message['start']:.2f}-{message['end']:.2f} s]: {message['text']}"
                )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(print_transcripts)
        dev.say(f"speaker plays {wav.name}")
        seconds = await speak_wav(speaker, wav, trailing_silence=1.0)
        dev.say(f"played {seconds:.1f} s of audio; waiting {GRACE:.0f} s for transcripts")
        await trio.sleep(GRACE)
        nursery.cancel_scope.cancel()
