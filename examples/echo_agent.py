"""An agent that joins its room, echoes data back and says how loud you are.

Try it with nothing else installed (the local server, the worker and a simulated
participant who plays a tone and says hello, all in one process)::

    python examples/echo_agent.py dev --duration 10

(the same as ``trio-lkagent dev examples/echo_agent.py --duration 10``).

Against a real LiveKit server::

    LIVEKIT_URL=wss://... LIVEKIT_API_KEY=... LIVEKIT_API_SECRET=... \\
        python examples/echo_agent.py start --agent-name echo

What it does in the room, per job:

- every data message is sent back to its sender as ``echo: <message>`` (topic ``echo``);
- every participant's microphone is played back on an audio track of its own,
  ``echo-<identity>``;
- once a second, each participant gets the level of their audio (topic ``level``);
- when the last participant leaves, the job ends (successfully).

The CLI finds ``entrypoint`` below (``examples/echo_agent.py:entrypoint``);
the agent name comes from ``--agent-name`` / ``LIVEKIT_AGENT_NAME``.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import trio
from livekit import rtc

from trio_lkagent import JobContext, Room, open_audio_stream, run_app
from trio_lkagent.events import DataReceived, ParticipantDisconnected, TrackSubscribed

logger = logging.getLogger("echo_agent")

RATE = 48_000


def dbfs(samples: np.ndarray) -> float:
    """RMS level of int16 samples in dB below full scale."""
    rms = float(np.sqrt(np.mean(np.square(samples.astype(np.float64))))) if samples.size else 0.0
    return 20 * math.log10(rms / 32768) if rms > 0 else -math.inf


async def echo_audio(room: Room, track: rtc.RemoteTrack, who: str) -> None:
    """Play *who*'s audio back on a track of its own and report its level to them
    every second. (One output per speaker: an output has one writer at a time.)"""
    second: list[np.ndarray] = []
    async with (
        room.publish_audio(sample_rate=RATE, name=f"echo-{who}") as out,
        open_audio_stream(track, sample_rate=RATE) as frames,
    ):
        async for frame in frames:
            await out.write(frame.samples)
            second.append(frame.samples.copy())
            if len(second) == 100:  # 100 frames of 10 ms
                level = dbfs(np.concatenate(second))
                second.clear()
                await room.publish_data(
                    f"your audio: {level:.1f} dBFS", destination_identities=[who], topic="level"
                )


async def entrypoint(ctx: JobContext) -> None:
    """One call per job: join, echo until everyone has left."""
    async with ctx.connect() as room:
        events = room.events()  # subscribe before looking at who is there
        logger.info("joined room %s as %s", room.name, ctx.identity)
        async with trio.open_nursery() as nursery:
            async for event in events:
                match event:
                    case DataReceived(identity=who, payload=payload) if who:
                        logger.info("echoing %d byte(s) to %s", len(payload), who)
                        await room.publish_data(
                            b"echo: " + payload, destination_identities=[who], topic="echo"
                        )
                    case TrackSubscribed(identity=who, rtc_track=track) if (
                        track.kind == rtc.TrackKind.KIND_AUDIO
                    ):
                        nursery.start_soon(echo_audio, room, track, who)
                    case ParticipantDisconnected() if not room.remote_participants:
                        logger.info("everyone left: ending the job")
                        nursery.cancel_scope.cancel()
                        break
                    case _:
                        pass


if __name__ == "__main__":
    run_app(entrypoint)
