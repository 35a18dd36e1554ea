"""Testing your agent: a pytest plugin, end-to-end helpers and a fake job context.

Installing trio-lkagent registers a pytest plugin (``pytest11`` entry point)
with three fixtures; tests need pytest-trio (``trio_mode = true``):

- ``devserver``: the in-package LiveKit server on a free port
  (:class:`~trio_lkagent.devserver.DevServer`);
- ``agent_worker``: ``await agent_worker(entrypoint | worker | "module:attr",
  **option_overrides)`` starts your agent against it, registered;
- ``participant``: ``await participant(room, identity)`` joins a simulated
  participant, a real ``livekit.rtc`` client driven from Trio (a
  :class:`~trio_lkagent.Room`: ``publish_audio``, ``publish_data``,
  ``send_text``, ``perform_rpc``, ``events()``).

Helpers: :func:`dispatch_job`, :func:`wait_for_agent`,
:func:`wait_for_job_status`, :func:`job_status_history`, :func:`received_data`,
:func:`sign_token`, :func:`run_worker`, :func:`make_worker`.

For unit tests of an entrypoint's logic without WebRTC: :class:`FakeJobContext`
(a real ``JobContext`` subclass) and :class:`FakeRoom` (a ``Room`` subclass that
simulates the data-level API in memory), with :func:`run_entrypoint`.

See ``docs/testing.md``.
"""

from ._fake import FakeJobContext as FakeJobContext
from ._fake import FakeParticipant as FakeParticipant
from ._fake import FakeRoom as FakeRoom
from ._fake import SentData as SentData
from ._fake import run_entrypoint as run_entrypoint
from ._kit import DEV_API_KEY as DEV_API_KEY
from ._kit import AgentTarget as AgentTarget
from ._kit import AgentWorkerFactory as AgentWorkerFactory
from ._kit import DataRecord as DataRecord
from ._kit import ParticipantFactory as ParticipantFactory
from ._kit import dispatch_job as dispatch_job
from ._kit import job_status_history as job_status_history
from ._kit import make_worker as make_worker
from ._kit import received_data as received_data
from ._kit import run_worker as run_worker
from ._kit import sign_token as sign_token
from ._kit import wait_for_agent as wait_for_agent
from ._kit import wait_for_job_status as wait_for_job_status
from ._scenario import DevScenario as DevScenario

__all__ = [
    "DEV_API_KEY",
    "AgentTarget",
    "AgentWorkerFactory",
    "DataRecord",
    "DevScenario",
    "FakeJobContext",
    "FakeParticipant",
    "FakeRoom",
    "ParticipantFactory",
    "SentData",
    "dispatch_job",
    "job_status_history",
    "make_worker",
    "received_data",
    "run_entrypoint",
    "run_worker",
    "sign_token",
    "wait_for_agent",
    "wait_for_job_status",
]
