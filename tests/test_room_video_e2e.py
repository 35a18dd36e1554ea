"""Video through a room, end to end: numpy frames published by one Trio room
reach another as numpy, through the dev server's VP8 relay (real WebRTC)."""

from __future__ import annotations

import numpy as np
import pytest
import trio

from trio_lkagent import AutoSubscribe, VideoFormat, VideoFrame, open_video_stream
from trio_lkagent.devserver import DevServer
from trio_lkagent.events import TrackSubscribed

# A safety net for real-time media, not a timing assertion.
SAFETY_TIMEOUT = 10
WIDTH, HEIGHT = 320, 180
COLOUR = (40, 180, 90)  # RGB


def frame_rgba() -> np.ndarray:
    pixels = np.empty((HEIGHT, WIDTH, 4), np.uint8)
    pixels[...] = (*COLOUR, 255)
    return pixels


def frame_i420() -> np.ndarray:
    """COLOUR in I420 (BT.601 limited range), as a flat Y, U, V buffer."""
    r, g, b = COLOUR
    y = 16 + (65.738 * r + 129.057 * g + 25.064 * b) / 256
    u = 128 + (-37.945 * r - 74.494 * g + 112.439 * b) / 256
    v = 128 + (112.439 * r - 94.154 * g - 18.285 * b) / 256
    planes = [
        np.full(WIDTH * HEIGHT, round(y), np.uint8),
        np.full(WIDTH * HEIGHT // 4, round(u), np.uint8),
        np.full(WIDTH * HEIGHT // 4, round(v), np.uint8),
    ]
    return np.concatenate(planes)


@pytest.mark.parametrize(
    ("sent_format", "received_format"),
    [(VideoFormat.RGBA, VideoFormat.I420), (VideoFormat.I420, VideoFormat.RGBA)],
)
async def test_numpy_video_crosses_the_room(
    server: DevServer, sent_format: VideoFormat, received_format: VideoFormat
) -> None:
    frame_out = (
        VideoFrame.from_ndarray(frame_rgba())
        if sent_format is VideoFormat.RGBA
        else VideoFrame.from_ndarray(frame_i420(), VideoFormat.I420, width=WIDTH, height=HEIGHT)
    )
    async with (
        server.open_participant("video", "camera") as camera,
        server.open_participant(
            "video", "viewer", auto_subscribe=AutoSubscribe.VIDEO_ONLY
        ) as viewer,
        trio.open_nursery() as nursery,
    ):
        events = viewer.events()
        async with camera.publish_video(WIDTH, HEIGHT, name="cam") as out:

            async def film() -> None:
                while True:
                    await out.write(frame_out)
                    await trio.sleep(1 / 30)  # the camera's frame rate

            nursery.start_soon(film)
            with trio.fail_after(SAFETY_TIMEOUT):
                async for event in events:
                    if isinstance(event, TrackSubscribed):
                        break
            assert (event.identity, event.track.name) == ("camera", "cam")
            async with open_video_stream(event.rtc_track, format=received_format) as frames:
                with trio.fail_after(SAFETY_TIMEOUT):
                    for _ in range(5):  # past the first, possibly black, frames
                        frame = await frames.receive()
            nursery.cancel_scope.cancel()
    assert (frame.width, frame.height, frame.format) == (WIDTH, HEIGHT, received_format)
    rgba = frame if frame.format is VideoFormat.RGBA else frame.convert(VideoFormat.RGBA)
    rgb = rgba.to_ndarray()[..., :3].reshape(-1, 3).mean(axis=0)
    assert np.abs(rgb - COLOUR).max() <= 12
