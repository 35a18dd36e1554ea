"""A transcription agent: every participant who publishes audio gets live transcripts.

One ``JT_PUBLISHER`` job per publishing participant: the agent subscribes to that
participant's audio, brings it to 16 kHz mono with a media pipeline
(``trio_lkagent.media``), segments it with a VAD and transcribes each utterance with
PocketSphinx (offline; the model ships in its wheel), then sends every final
transcript twice:

- as a LiveKit transcription (clients get ``TranscriptionReceived``, what LiveKit's
  UI components show as captions), attributed to the speaker and their track;
- as JSON data on topic ``transcript``:
  ``{"participant", "track_sid", "text", "start", "end", "language"}``.

Inference runs on one :func:`~trio_lkagent.plugins.open_inference_executor` shared by
all the worker's jobs: PocketSphinx holds the GIL, so it decodes in worker
processes (warmed up before the worker registers); the VAD runs on its threads.

Needs the speech extras: ``pip install "trio-lkagent[plugins]"``.

Try it with nothing else (dev server, worker and a simulated participant who plays a
recorded utterance, all in one process)::

    python examples/transcription_agent.py --demo

Against a real LiveKit server::

    LIVEKIT_URL=wss://... LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=... \\
        python examples/transcription_agent.py

(``trio-lkagent start examples/transcription_agent.py`` works too: the CLI takes
``entrypoint``, which then opens a small executor per job instead of sharing one.)
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import secrets
import wave
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import numpy as np
import trio
from livekit import rtc

from trio_lkagent import JobContext, JobType, Room, Worker, WorkerOptions, open_audio_stream
from trio_lkagent.events import DataReceived, ParticipantDisconnected, TrackSubscribed
from trio_lkagent.media import MediaPipeline, PipelineConfig, Rechunk, Remix, Resample
from trio_lkagent.plugins import (
    VAD,
    EnergyVAD,
    InferenceExecutor,
    PocketSphinxSTT,
    SpeechEvent,
    SpeechEventType,
    StreamAdapter,
    VADOptions,
    open_inference_executor,
    warm_pocketsphinx,
)

logger = logging.getLogger("transcription_agent")

AGENT_NAME = "transcriber"
RATE = 16_000  # what the STT wants
TOPIC = "transcript"


def make_vad(executor: InferenceExecutor | None) -> VAD:
    """Silero (neural) when its extra is installed, else the energy detector."""
    options = VADOptions(min_silence_duration=0.5, prefix_padding_duration=0.3)
    try:
        from trio_lkagent.plugins import SileroVAD

        return SileroVAD(options, executor=executor)
    except ImportError:
        return EnergyVAD(options, executor=executor)


def make_stt(executor: InferenceExecutor | None) -> StreamAdapter:
    """PocketSphinx made streaming by VAD segmentation."""
    return StreamAdapter(PocketSphinxSTT(executor=executor), make_vad(executor))


async def send_transcript(
    room: Room, who: str, track_sid: str, number: int, event: SpeechEvent
) -> None:
    """Send one final transcript as a LiveKit transcription and on topic ``transcript``."""
    alt = event.alternatives[0]
    segment = rtc.TranscriptionSegment(
        id=f"{track_sid}-{number}",
        text=alt.text,
        start_time=int(alt.start_time * 1000),
        end_time=int(alt.end_time * 1000),
        language=alt.language,
        final=True,
    )
    await room.publish_transcription([segment], participant_identity=who, track_sid=track_sid)
    message = {
        "participant": who,
        "track_sid": track_sid,
        "text": alt.text,
        "start": alt.start_time,
        "end": alt.end_time,
        "language": alt.language,
    }
    await room.publish_data(json.dumps(message), topic=TOPIC)


async def transcribe(room: Room, event: TrackSubscribed, stt: StreamAdapter) -> None:
    """Transcribe one audio track until it ends."""
    who, track_sid = event.identity, event.track.sid
    number = 0
    # The track as WebRTC delivers it (48 kHz), made what the STT wants by a media
    # pipeline: resampled to 16 kHz, mixed to mono, cut in 20 ms frames.
    pipeline = MediaPipeline(
        PipelineConfig(sample_rate=RATE, channels=1, frame_ms=20),
        [Resample(), Remix(), Rechunk()],
    )
    async with (
        open_audio_stream(event.rtc_track, sample_rate=48_000) as mic,
        pipeline.open(mic) as frames,
        stt.stream(language="en") as speech,
        trio.open_nursery() as nursery,
    ):

        async def feed() -> None:
            async for frame in frames:
                speech.push_frame(frame)
            speech.end_input()

        nursery.start_soon(feed)
        async for result in speech:
            if result.type is SpeechEventType.FINAL and result.text:
                number += 1
                logger.info("%s: %s", who, result.text)
                await send_transcript(room, who, track_sid, number, result)


def make_entrypoint(executor: InferenceExecutor | None) -> Callable[[JobContext], Awaitable[None]]:
    """The job function, sharing *executor* (None: each job opens its own)."""

    async def entrypoint(ctx: JobContext) -> None:
        # A publisher job transcribes its publisher; a room job, everyone.
        target = ctx.job.participant.identity if ctx.job_type is JobType.PUBLISHER else None
        async with AsyncExitStack() as stack:
            shared = executor
            if shared is None:
                shared = await stack.enter_async_context(
                    open_inference_executor(threads=1, processes=1)
                )
            stt = make_stt(shared)
            room = await stack.enter_async_context(ctx.connect())
            events = room.events()
            nursery = await stack.enter_async_context(trio.open_nursery())
            async for event in events:
                match event:
                    case TrackSubscribed(identity=who, rtc_track=track) if (
                        track.kind == rtc.TrackKind.KIND_AUDIO and target in (None, who)
                    ):
                        logger.info("transcribing %s's track %s", who, event.track.sid)
                        nursery.start_soon(transcribe, room, event, stt)
                    case ParticipantDisconnected(identity=who) if (
                        who == target or not room.remote_participants
                    ):
                        logger.info("%s left: ending the job", who)
                        nursery.cancel_scope.cancel()
                        break
                    case _:
                        pass

    return entrypoint


#: For ``trio-lkagent start/dev``: each job opens a small executor of its own.
entrypoint = make_entrypoint(None)


def make_options(**overrides: object) -> WorkerOptions:
    """Worker options: publisher jobs for agent ``transcriber``."""
    kwargs: dict[str, object] = {"agent_name": AGENT_NAME, "job_type": JobType.PUBLISHER}
    kwargs.update(overrides)
    return WorkerOptions(**kwargs)  # type: ignore[arg-type]


async def serve(
    options: WorkerOptions, *, task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the worker with one executor shared by its jobs (warmed up first)."""
    async with open_inference_executor(
        threads=2, processes=2, warmup=[warm_pocketsphinx]
    ) as executor:
        worker = Worker(make_entrypoint(executor), options)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            task_status.started(worker)


# ------------------------------------------------------------------ the demo

FIXTURE = pathlib.Path(__file__).parent.parent / "tests" / "data" / "utterance.wav"


def read_wav(path: pathlib.Path) -> tuple[np.ndarray, int]:
    """Mono int16 samples and rate of a WAV file."""
    with wave.open(str(path), "rb") as w:
        data = np.frombuffer(w.readframes(w.getnframes()), np.int16)
        return data[:: w.getnchannels()].copy(), w.getframerate()


async def demo(wav: pathlib.Path) -> None:
    """Dev server + this worker + a participant who speaks *wav*; print the transcripts."""
    from livekit import api as lkapi
    from livekit.protocol import agent_dispatch as dispatch_pb

    from trio_lkagent import open_room
    from trio_lkagent.devserver import open_devserver

    samples, rate = read_wav(wav)
    secret = secrets.token_urlsafe(32)
    async with open_devserver(api_secret=secret) as server, trio.open_nursery() as nursery:
        options = make_options(url=server.url, api_key=server.api_key, api_secret=secret)
        await nursery.start(serve, options)
        await server.create_room(
            "demo", agents=[dispatch_pb.RoomAgentDispatch(agent_name=AGENT_NAME)]
        )
        token = (
            lkapi.AccessToken(server.api_key, secret)
            .with_identity("speaker")
            .with_grants(lkapi.VideoGrants(room_join=True, room="demo"))
            .to_jwt()
        )
        async with open_room(server.url, token) as room:
            events = room.events()
            print(f"speaker plays {wav.name} ({len(samples) / rate:.1f} s)")
            async with room.publish_audio(sample_rate=rate, name="mic") as mic:
                await mic.write(samples)
                await mic.write(np.zeros(rate, np.int16))  # a second of silence ends it
                with trio.move_on_after(len(samples) / rate + 5):
                    async for event in events:
                        if isinstance(event, DataReceived) and event.topic == TOPIC:
                            message = json.loads(event.payload)
                            span = f"{message['start']:.2f}-{message['end']:.2f} s"
                            print(f"transcript [{span}]: {message['text']}")
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", action="store_true", help="run against an in-process dev server")
    parser.add_argument("--wav", type=pathlib.Path, default=FIXTURE, help="what the demo plays")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.demo:
        trio.run(demo, args.wav)
    else:
        trio.run(serve, make_options())


if __name__ == "__main__":
    main()
