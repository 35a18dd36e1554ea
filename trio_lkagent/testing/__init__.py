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
:func:`sign_token`, :func:`run_worker`, :func:`make_worker`; :func:`speak_wav`
(a participant plays a WAV file as its microphone) and :func:`read_wav`.

For unit tests of an entrypoint's logic without WebRTC: :class:`FakeJobContext`
(a real ``JobContext`` subclass) and :class:`FakeRoom` (a ``Room`` subclass that
simulates the data-level API in memory), with :func:`run_entrypoint`.

See ``docs/testing.md``.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
    from ._wav import read_wav as read_wav
    from ._wav import speak_wav as speak_wav

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
    "read_wav",
    "received_data",
    "run_entrypoint",
    "run_worker",
    "sign_token",
    "speak_wav",
    "wait_for_agent",
    "wait_for_job_status",
]

# Imported on first use: the pytest plugin lives in this package, and loading it
# (at the start of every pytest run, in every project that installed
# trio-lkagent) must not import the SDK.
_LAZY = {
    "FakeJobContext": "._fake",
    "FakeParticipant": "._fake",
    "FakeRoom": "._fake",
    "SentData": "._fake",
    "run_entrypoint": "._fake",
    "DEV_API_KEY": "._kit",
    "AgentTarget": "._kit",
    "AgentWorkerFactory": "._kit",
    "DataRecord": "._kit",
    "ParticipantFactory": "._kit",
    "dispatch_job": "._kit",
    "job_status_history": "._kit",
    "make_worker": "._kit",
    "received_data": "._kit",
    "run_worker": "._kit",
    "sign_token": "._kit",
    "wait_for_agent": "._kit",
    "wait_for_job_status": "._kit",
    "DevScenario": "._scenario",
    "read_wav": "._wav",
    "speak_wav": "._wav",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
