"""A whole room job in one process, for the exit test (``test_room_e2e.py``).

A dev server, a worker whose job joins the room, reads the user's audio and plays it
back, and a user who talks and hears the echo. Then the server terminates the job
(everything the job opened closes by cancellation: audio stream, published track,
room), the user leaves, the worker drains and ``trio.run`` returns. Logging goes to
stderr at WARNING, the level livekit's own problems are reported at; a clean run
prints nothing there.
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import trio
from livekit.protocol import agent as agent_pb

from trio_lkagent import JobContext, Worker, WorkerOptions
from trio_lkagent._room import open_room
from trio_lkagent._tracks import open_audio_stream
from trio_lkagent.devserver import open_devserver
from trio_lkagent.events import RoomEvent, TrackSubscribed

RATE = 48_000
ROOM = "exit-room"


def tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * 440 * t) * 8_000).astype(np.int16)


async def first_track(events: trio.MemoryReceiveChannel[RoomEvent]) -> TrackSubscribed:
    async for event in events:
        if isinstance(event, TrackSubscribed):
            return event
    raise RuntimeError("the room closed first")


async def entrypoint(ctx: JobContext) -> None:
    """Echo the first audio track heard, until the job is ended."""
    async with ctx.connect() as room:
        events = room.events()
        heard = await first_track(events)
        async with (
            open_audio_stream(heard.rtc_track, sample_rate=RATE) as frames,
            room.publish_audio(sample_rate=RATE, queue_ms=100) as out,
        ):
            async for frame in frames:
                await out.write(frame.samples)


async def main() -> str:
    async with open_devserver(
        host="127.0.0.1",
        port=0,
        api_key="devkey",
        api_secret="devsecret-0123456789abcdef0123456789",
    ) as server:
        options = WorkerOptions(
            url=server.url, api_key=server.api_key, api_secret=server.api_secret, agent_name="echo"
        )
        worker = Worker(entrypoint, options)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.serve)
            await server.create_dispatch(ROOM, "echo")
            token = server.create_participant_token(ROOM, "user")
            async with (
                open_room(server.url, token) as user,
                user.publish_audio(sample_rate=RATE) as mic,
                trio.open_nursery() as talking,
            ):
                events = user.events()
                talking.start_soon(mic.write, tone(2.0))
                echo = await first_track(events)
                async with open_audio_stream(echo.rtc_track, sample_rate=RATE) as frames:
                    async for frame in frames:
                        if np.abs(frame.samples).max() > 1_000:
                            break  # heard ourselves
                job = await server.wait_for_job(room=ROOM)
                await server.terminate_job(job.id)
                await server.wait_job_status(job.id, agent_pb.JS_SUCCESS)
                talking.cancel_scope.cancel()
            worker.drain()
        return str(agent_pb.JobStatus.Name(job.status))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    status = trio.run(main)
    print(f"job ended {status}; bye", flush=True)
