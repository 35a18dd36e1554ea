"""A local LiveKit server for tests and development, Trio-native.

Today it serves the agent protocol (``/agent``) and the server API (Twirp
RoomService and AgentDispatchService, for the official ``livekit-api`` client)
the way the Go server does, with rooms and agent dispatches kept in memory;
media (``/rtc``) comes next. See ``docs/devserver.md``.

::

    from trio_lkagent.devserver import open_devserver

    async with open_devserver(api_key="devkey", api_secret="secret") as server:
        ...  # point workers at server.url
"""

from ._agent_service import ServerJob as ServerJob
from ._agent_service import ServerWorker as ServerWorker
from ._agent_service import Termination as Termination
from ._config import DevServerConfig as DevServerConfig
from ._rooms import ServerRoom as ServerRoom
from ._server import DevServer as DevServer
from ._server import DevServerStatistics as DevServerStatistics
from ._server import JobEndedError as JobEndedError
from ._server import open_devserver as open_devserver
from ._server import serve_devserver as serve_devserver
from ._state import Faults as Faults
from ._tracksettings import TrackSettingsRecord as TrackSettingsRecord

__all__ = [
    "DevServer",
    "DevServerConfig",
    "DevServerStatistics",
    "Faults",
    "JobEndedError",
    "ServerJob",
    "ServerRoom",
    "ServerWorker",
    "Termination",
    "TrackSettingsRecord",
    "open_devserver",
    "serve_devserver",
]
