"""Publish options (bitrate, simulcast, codec) for ``Room.publish_audio`` / ``publish_video``.

Validated here, before they reach the native client, and turned into a
``livekit.rtc.TrackPublishOptions``. Only what the caller sets is set: anything left
as None keeps livekit's own default.
"""

from __future__ import annotations

from typing import Final, cast

from livekit import rtc

__all__ = ["VIDEO_CODECS", "default_video_bitrate", "publish_options"]

#: Codec names ``publish_video(codec=)`` accepts, with their ``livekit.rtc.VideoCodec``.
VIDEO_CODECS: Final = {
    "vp8": rtc.VideoCodec.VP8,
    "h264": rtc.VideoCodec.H264,
    "av1": rtc.VideoCodec.AV1,
    "vp9": rtc.VideoCodec.VP9,
    "h265": rtc.VideoCodec.H265,
}


#: livekit's video presets (height -> max bitrate), for a ``max_framerate`` given alone:
#: the native options need both fields of the encoding.
_PRESET_BITRATES: Final = ((180, 160_000), (360, 450_000), (540, 800_000), (720, 1_700_000))
_DEFAULT_BITRATE: Final = 3_000_000
_DEFAULT_FRAMERATE: Final = 30.0


def default_video_bitrate(height: int) -> int:
    """Return livekit's preset max bitrate for a video of *height* pixels."""
    return next((rate for top, rate in _PRESET_BITRATES if height <= top), _DEFAULT_BITRATE)


def _video_codec(codec: int | str) -> int:
    if isinstance(codec, str):
        try:
            return int(VIDEO_CODECS[codec.lower()])
        except KeyError:
            raise ValueError(
                f"unknown video codec {codec!r}; one of {', '.join(VIDEO_CODECS)}"
            ) from None
    if codec not in VIDEO_CODECS.values():
        raise ValueError(f"unknown video codec {codec!r}")
    return int(codec)


def publish_options(
    source: int,
    *,
    max_bitrate: int | None = None,
    max_framerate: float | None = None,
    simulcast: bool | None = None,
    codec: int | str | None = None,
    dtx: bool | None = None,
    red: bool | None = None,
    video_height: int | None = None,
) -> rtc.TrackPublishOptions:
    """Build the native publish options; see ``Room.publish_audio`` / ``publish_video``.

    *video_height* is given for video tracks (None: an audio track).

    Raises:
        ValueError: A non-positive bitrate or frame rate, or an unknown codec.
    """
    if max_bitrate is not None and max_bitrate <= 0:
        raise ValueError(f"max_bitrate must be > 0 bits per second, got {max_bitrate!r}")
    if max_framerate is not None and not max_framerate > 0:
        raise ValueError(f"max_framerate must be > 0, got {max_framerate!r}")
    options = rtc.TrackPublishOptions(source=cast("rtc.TrackSource.ValueType", source))
    if video_height is not None:
        if max_bitrate is not None or max_framerate is not None:
            encoding = options.video_encoding  # both fields are required natively
            encoding.max_bitrate = (
                default_video_bitrate(video_height) if max_bitrate is None else max_bitrate
            )
            encoding.max_framerate = _DEFAULT_FRAMERATE if max_framerate is None else max_framerate
        if simulcast is not None:
            options.simulcast = simulcast
        if codec is not None:
            options.video_codec = cast("rtc.VideoCodec.ValueType", _video_codec(codec))
    else:
        if max_bitrate is not None:
            options.audio_encoding.max_bitrate = max_bitrate
        if dtx is not None:
            options.dtx = dtx
        if red is not None:
            options.red = red
    return options
