"""The transcription agent end to end: a real ``livekit.rtc`` participant speaks, gets text.

The participant publishes the committed utterance (tests/data/utterance.wav, made with
eSpeak NG) through the dev server (Opus over WebRTC); the example's worker gets a
``JT_PUBLISHER`` job, transcribes with a VAD + PocketSphinx on a shared inference
executor, and the participant receives each final transcript both as a LiveKit
transcription (``transcription_received``) and as data on topic ``transcript``.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np
import trio
from livekit.protocol import agent as agent_pb
from livekit.protocol import agent_dispatch as dispatch_pb

from trio_lkagent._bridge import open_bridge
from trio_lkagent.devserver import DevServer
from trio_lkagent.plugins import to_mono

from .test_examples import _load_example
from .test_plugins import WORDS_1, WORDS_2, load_fixture, share
from .test_room_e2e import RATE, client_microphone, join_token, open_client, play

# A safety net for real-time media on a loaded machine, not a timing assertion.
SAFETY_TIMEOUT = 60


async def test_a_participant_speaks_and_receives_transcripts(server: DevServer) -> None:
    example = _load_example("transcription_agent")
    room_name = "e2e-transcribe"
    speech = to_mono(load_fixture(), RATE)
    speech = np.concatenate([np.zeros(RATE, np.int16), speech, np.zeros(RATE, np.int16)])
    with trio.fail_after(SAFETY_TIMEOUT):
        async with trio.open_nursery() as nursery, open_bridge() as bridge:
            await nursery.start(
                example.serve,
                example.make_options(
                    url=server.url, api_key=server.api_key, api_secret=server.api_secret
                ),
            )
            await server.create_room(
                room_name, agents=[dispatch_pb.RoomAgentDispatch(agent_name=example.AGENT_NAME)]
            )
            token = join_token(server, room_name, "speaker")
            async with open_client(bridge, server.url, token) as client:

                def watch() -> None:  # bridge thread
                    client.room.on(
                        "transcription_received",
                        functools.partial(client._put, "transcription_received"),
                    )

                await bridge.call(watch)
                async with client_microphone(client) as source:
                    # The publisher job starts on the first publish; speak once its
                    # agent has joined (auto-subscribe follows at once).
                    await server.wait_for_job(room=room_name, status=agent_pb.JS_RUNNING)
                    await client.next("participant_connected")
                    await play(client, source, speech)
                    captions: list[Any] = []
                    data: list[dict[str, Any]] = []
                    while len(captions) < 2 or len(data) < 2:
                        name, args = await _next_of(
                            client, "transcription_received", "data_received"
                        )
                        if name == "transcription_received":
                            captions.extend(args[0])
                            participant = args[1]
                        elif args[0].topic == example.TOPIC:
                            data.append(json.loads(args[0].data))
            nursery.cancel_scope.cancel()
    # LiveKit transcriptions: attributed to the speaker, final, in order.
    assert participant is not None and participant.identity == "speaker"
    assert all(seg.final for seg in captions)
    assert captions[0].start_time < captions[0].end_time <= captions[1].start_time
    assert share(captions[0].text, WORDS_1) >= 0.6, captions[0].text
    assert share(captions[1].text, WORDS_2) >= 0.5, captions[1].text
    # The same texts as data on topic "transcript".
    assert [d["text"] for d in data] == [c.text for c in captions]
    assert {d["participant"] for d in data} == {"speaker"}
    assert data[0]["language"] == "en-US"


async def _next_of(client: Any, *names: str) -> tuple[str, tuple[Any, ...]]:
    async for got, args in client.received:
        if got in names:
            return got, args
    raise AssertionError("client closed")  # pragma: no cover
