"""Why a dispatch made no job, in words a developer can act on.

The dev server logs these (logger ``trio_lkagent.devserver``, WARNING) and keeps
them in :attr:`DevServer.dispatch_notes` for ``trio-lkagent dev`` to print.
"""

from __future__ import annotations

from collections.abc import Iterable

from livekit.protocol import agent as agent_pb

from . import _dispatch as rules

__all__ = ["explain_no_worker", "explain_rejection"]


def _name(agent_name: str) -> str:
    return f"{agent_name!r}" if agent_name else "'' (automatic dispatch)"


def _type(job_type: agent_pb.JobType) -> str:
    return agent_pb.JobType.Name(job_type)


_WHEN = {
    agent_pb.JT_ROOM: "with the dispatch",
    agent_pb.JT_PARTICIPANT: "when a participant joins",
    agent_pb.JT_PUBLISHER: "when a participant publishes",
}


def explain_no_worker(
    keys: Iterable[rules.WorkerKey], agent_name: str, job_type: agent_pb.JobType, room: str
) -> str | None:
    """The note for a job request no worker group serves, or None when it is not
    worth a warning (a room or participant with no agent waiting for it).

    Only the ``JT_ROOM`` request of a dispatch is explained: every dispatch also
    makes participant and publisher requests, which workers of the other types
    ignore by design.
    """
    if job_type != agent_pb.JT_ROOM:
        return None
    keys = list(keys)
    same_name = sorted({_type(k.job_type) for k in keys if k.agent_name == agent_name})
    if same_name:
        types = " and ".join(same_name)
        when = ", ".join(
            _WHEN[k.job_type] for k in keys if k.agent_name == agent_name and k.job_type in _WHEN
        )
        return (
            f"job type mismatch in room {room!r}: agent {_name(agent_name)} is registered"
            f" for {types}, not {_type(job_type)}; its jobs start {when}"
        )
    if not agent_name:
        return None  # automatic dispatch with no automatic worker: nothing was asked
    registered = ", ".join(sorted({_name(k.agent_name) for k in keys})) or "none"
    return (
        f"no worker registered for agent {_name(agent_name)} in room {room!r}"
        f" (registered: {registered})"
    )


def explain_rejection(job_id: str, worker_id: str, agent_name: str) -> str:
    """The note for a worker answering a job request with ``available = false``."""
    return f"job {job_id} rejected by worker {worker_id} (agent {_name(agent_name)})"
