"""trio-lkagent: a Trio-native, structured-concurrency SDK for LiveKit agents.

The whole public surface is re-exported here::

    import trio
    from trio_lkagent import JobContext, Worker, WorkerOptions

    async def entrypoint(ctx: JobContext) -> None: ...

    trio.run(Worker(entrypoint, WorkerOptions(agent_name="x")).serve)

What is here, by purpose:

- the worker: ``Worker``, ``WorkerOptions`` (with ``JobType``, ``Permissions``,
  ``ReconnectPolicy``, ``WireFormat``), ``WorkerStatistics``;
- jobs: ``JobRequest`` (``accept``/``reject``, ``AcceptInfo``), ``JobContext``;
- errors: ``LKAgentError`` and its subclasses (``docs/worker.md``);
- running as a service: ``run_app``, ``ServiceConfig``,
  ``load_config_from_env``, ``validate_config``, ``serve_health``;
- observability: ``WorkerObserver``, ``JobLogFilter``;
- rooms and media, imported on first use: ``open_room``/``Room``, audio and
  video streams and outputs, ``AudioFrame``/``VideoFrame``; ``ResourcePool``.

Larger capabilities live in subpackages, imported from there:
:mod:`~trio_lkagent.handlers` (handler-style agents),
:mod:`~trio_lkagent.coordination`, :mod:`~trio_lkagent.resilience`,
:mod:`~trio_lkagent.processes`, :mod:`~trio_lkagent.plugins` (speech),
:mod:`~trio_lkagent.media` (pipelines), :mod:`~trio_lkagent.events`,
:mod:`~trio_lkagent.testing` and :mod:`~trio_lkagent.devserver` (the local
LiveKit server). The ``trio-lkagent`` command line (``start``, ``dev``,
``devserver``, ``dispatch``) runs workers as services (``docs/cli.md``).
"""

# -- loaded with the package: what a worker needs to register ---------------------
from typing import TYPE_CHECKING, Any

from ._config import ServiceConfig as ServiceConfig
from ._config import load_config_from_env as load_config_from_env
from ._config import validate_config as validate_config
from ._exceptions import AsyncioCancelledError as AsyncioCancelledError
from ._exceptions import AuthenticationError as AuthenticationError
from ._exceptions import CircuitOpenError as CircuitOpenError
from ._exceptions import ConfigurationError as ConfigurationError
from ._exceptions import ConnectError as ConnectError
from ._exceptions import ConnectionLostError as ConnectionLostError
from ._exceptions import FatalError as FatalError
from ._exceptions import InvalidJobTypeError as InvalidJobTypeError
from ._exceptions import JobTimeoutError as JobTimeoutError
from ._exceptions import LKAgentError as LKAgentError
from ._exceptions import PluginError as PluginError
from ._exceptions import ProtocolError as ProtocolError
from ._exceptions import RecoveryFailedError as RecoveryFailedError
from ._exceptions import ResourceExhaustedError as ResourceExhaustedError
from ._exceptions import RetryableError as RetryableError
from ._exceptions import ShutdownTimeoutError as ShutdownTimeoutError
from ._exceptions import WorkerNotConnectedError as WorkerNotConnectedError
from ._health import serve_health as serve_health
from ._job import AcceptInfo as AcceptInfo
from ._job import JobContext as JobContext
from ._job import JobRequest as JobRequest
from ._logging import JobLogFilter as JobLogFilter
from ._options import JobType as JobType
from ._options import Permissions as Permissions
from ._options import ReconnectPolicy as ReconnectPolicy
from ._options import WorkerOptions as WorkerOptions
from ._protocol import WireFormat as WireFormat
from ._telemetry import WorkerObserver as WorkerObserver
from ._worker import Worker as Worker
from ._worker import WorkerStatistics as WorkerStatistics

__version__ = "0.1.0"

# -- loaded on first use ---------------------------------------------------------
# The room layer (livekit.rtc, numpy) and other heavy parts: each name below is
# importable from ``trio_lkagent`` as usual, and its module is imported the
# first time the name is looked up (``python -X importtime -c "import
# trio_lkagent"`` shows what the package itself costs). To add a name: one line
# in the ``TYPE_CHECKING`` block (for type checkers and IDEs) and one entry in
# ``_LAZY`` (name -> private module).

if TYPE_CHECKING:
    from ._cli import run_app as run_app
    from ._media import AudioFrame as AudioFrame
    from ._media import AudioProcessor as AudioProcessor
    from ._media import VideoFormat as VideoFormat
    from ._media import VideoFrame as VideoFrame
    from ._room import AutoSubscribe as AutoSubscribe
    from ._room import ByteStream as ByteStream
    from ._room import Room as Room
    from ._room import RoomStatistics as RoomStatistics
    from ._room import TextStream as TextStream
    from ._room import open_room as open_room
    from ._tracks import AudioOutput as AudioOutput
    from ._tracks import AudioReceiveStream as AudioReceiveStream
    from ._tracks import VideoOutput as VideoOutput
    from ._tracks import VideoReceiveStream as VideoReceiveStream
    from ._tracks import open_audio_output as open_audio_output
    from ._tracks import open_audio_stream as open_audio_stream
    from ._tracks import open_video_output as open_video_output
    from ._tracks import open_video_stream as open_video_stream
    from .resources import ResourcePool as ResourcePool

_LAZY: dict[str, str] = {
    "run_app": "._cli",
    "AudioFrame": "._media",
    "AudioProcessor": "._media",
    "VideoFormat": "._media",
    "VideoFrame": "._media",
    "AutoSubscribe": "._room",
    "ByteStream": "._room",
    "Room": "._room",
    "RoomStatistics": "._room",
    "TextStream": "._room",
    "open_room": "._room",
    "AudioOutput": "._tracks",
    "AudioReceiveStream": "._tracks",
    "VideoOutput": "._tracks",
    "VideoReceiveStream": "._tracks",
    "open_audio_output": "._tracks",
    "open_audio_stream": "._tracks",
    "open_video_output": "._tracks",
    "open_video_stream": "._tracks",
    "ResourcePool": ".resources",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
