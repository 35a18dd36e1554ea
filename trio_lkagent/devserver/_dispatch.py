"""The Go server's agent dispatch rules, as pure functions (no I/O, no clock, no tasks).

Everything here mirrors a named piece of the LiveKit server (``livekit/livekit``) so
that the dev server behaves like the real one and the same rules can later serve the
Twirp ``AgentDispatchService``:

- ``pkg/agent/worker.go``: registration checks and default permissions
  (``WorkerRegisterer.HandleRegister``), the job state a worker update produces
  (``Worker.UpdateJobStatus``), the outcome of a server-side termination
  (``Worker.TerminateJob``), the agent's room token (``AssignJob``, which calls
  ``protocol/agent.BuildAgentToken``).
- ``pkg/service/agentservice.go``: workers grouped by :class:`WorkerKey`, the
  weighted-random selection by ``1 - load`` (``selectWorkerWeightedByLoad``) and
  which assignment failures move on to another worker (``JobRequest``).
- ``pkg/agent/client.go``: which namespaces a dispatch fans out to
  (``LaunchJob``/``getDispatcher``/``checkEnabled``).
- ``pkg/rtc/room.go``: which participants trigger participant/publisher jobs
  (``launchTargetAgents`` skips dependent participants).

Times are passed in (``now_ns``) so callers decide the clock.
"""

from __future__ import annotations

import calendar
import datetime
import enum
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, TypeVar

import attrs
import jwt
from livekit import api as lkapi
from livekit.protocol import agent as agent_pb
from livekit.protocol import models as models_pb

from ._auth import quiet_short_keys

__all__ = [
    "AGENT_NAME_ATTRIBUTE",
    "AGENT_TOKEN_TTL",
    "MAX_DEPLOYMENT_LENGTH",
    "AssignFailure",
    "Candidate",
    "JobRequest",
    "TerminateReason",
    "WorkerKey",
    "apply_job_update",
    "build_agent_token",
    "default_permissions",
    "dispatch_namespaces",
    "effective_permissions",
    "is_dependent_participant",
    "job_status_is_ended",
    "new_job",
    "retry_after",
    "select_worker_weighted_by_load",
    "termination_outcome",
    "validate_deployment",
    "validate_registration",
]

#: Attribute the server adds to every agent's token (``agent.AgentNameAttributeKey``).
AGENT_NAME_ATTRIBUTE = "lk.agent_name"
#: Lifetime of the room token in a ``JobAssignment`` (``BuildAgentToken``: 1 hour).
AGENT_TOKEN_TTL = datetime.timedelta(hours=1)
#: ``protocol/agent.MaxDeploymentLength``.
MAX_DEPLOYMENT_LENGTH = 64

_KNOWN_JOB_TYPES = frozenset((agent_pb.JT_ROOM, agent_pb.JT_PUBLISHER, agent_pb.JT_PARTICIPANT))


@attrs.frozen
class WorkerKey:
    """The group a worker serves and a job is offered to (Go's ``workerKey``)."""

    agent_name: str
    namespace: str
    job_type: agent_pb.JobType
    deployment: str

    @classmethod
    def of_registration(cls, req: agent_pb.RegisterWorkerRequest) -> WorkerKey:
        """The key a worker registers under."""
        return cls(req.agent_name, req.namespace, req.type, req.deployment)

    @classmethod
    def of_job(cls, job: agent_pb.Job) -> WorkerKey:
        """The key of the workers a job may go to."""
        return cls(job.agent_name, job.namespace, job.type, job.deployment)


class TerminateReason(enum.Enum):
    """Why the server ends a job (Go's ``rpc.JobTerminateReason``)."""

    #: An operator, a deleted dispatch: the job is recorded as successful.
    TERMINATION_REQUESTED = "termination_requested"
    #: The agent's participant left the room (also how a room's closing reaches
    #: its agents in Go): the job is recorded as failed.
    AGENT_LEFT_ROOM = "agent_left_room"


class AssignFailure(enum.Enum):
    """Why offering a job to one worker did not produce a state (``AssignJob``'s errors)."""

    #: ``AvailabilityResponse.available = false`` (``ErrWorkerNotAvailable``).
    NOT_AVAILABLE = "worker not available"
    #: The worker's connection closed while the server waited (``ErrWorkerClosed``).
    WORKER_CLOSED = "worker closed"
    #: No answer within the availability timeout (``ErrAvailabilityTimeout``).
    AVAILABILITY_TIMEOUT = "agent worker availability timeout"
    #: The whole job request ran out of time (the psrpc deadline: ``ctx.Err()``).
    DEADLINE_EXCEEDED = "context deadline exceeded"
    #: The job is already being offered to this worker (``ErrDuplicateJobAssignment``).
    DUPLICATE = "duplicate job assignment"
    #: The token could not be built.
    TOKEN_ERROR = "failed to build agent token"


def retry_after(failure: AssignFailure, *, retry_on_availability_timeout: bool = False) -> bool:
    """Whether ``JobRequest`` tries another worker after *failure*.

    Go retries only ``ErrWorkerNotAvailable`` and ``ErrWorkerClosed``
    (``utils.ErrorIsOneOf(err, agent.ErrWorkerNotAvailable, agent.ErrWorkerClosed)``);
    an availability timeout ends the request. *retry_on_availability_timeout* is a
    dev-server option that also retries those.
    """
    if failure in (AssignFailure.NOT_AVAILABLE, AssignFailure.WORKER_CLOSED):
        return True
    return retry_on_availability_timeout and failure is AssignFailure.AVAILABILITY_TIMEOUT


def job_status_is_ended(status: agent_pb.JobStatus) -> bool:
    """Go's ``JobStatusIsEnded``: only SUCCESS and FAILED end a job (not CANCELLED)."""
    return status in (agent_pb.JS_SUCCESS, agent_pb.JS_FAILED)


def validate_deployment(deployment: str) -> str | None:
    """``protocol/agent.ValidateDeployment``: the problem with *deployment*, or None."""
    if not deployment:
        return None
    raw = deployment.encode()
    if len(raw) > MAX_DEPLOYMENT_LENGTH:
        return f"deployment exceeds {MAX_DEPLOYMENT_LENGTH} bytes"
    for i, c in enumerate(raw):
        if c == ord("_"):
            return "deployment contains reserved character '_'"
        if c <= ord(" ") or c == 0x7F:
            return f"deployment contains whitespace or control byte at position {i}"
    return None


def validate_registration(req: agent_pb.RegisterWorkerRequest) -> str | None:
    """``WorkerRegisterer.HandleRegister``'s checks: the error text, or None if valid."""
    if req.type not in _KNOWN_JOB_TYPES:
        return "unknown job type"
    return validate_deployment(req.deployment)


def default_permissions() -> models_pb.ParticipantPermission:
    """Permissions of a worker that sent no ``allowed_permissions``."""
    return models_pb.ParticipantPermission(
        can_subscribe=True, can_publish=True, can_publish_data=True, can_update_metadata=True
    )


def effective_permissions(req: agent_pb.RegisterWorkerRequest) -> models_pb.ParticipantPermission:
    """The permissions the server grants this worker's agents."""
    if req.HasField("allowed_permissions"):
        perms = models_pb.ParticipantPermission()
        perms.CopyFrom(req.allowed_permissions)
        return perms
    return default_permissions()


class Candidate(Protocol):
    """What worker selection needs to know about a worker."""

    @property
    def worker_id(self) -> str: ...
    @property
    def status(self) -> agent_pb.WorkerStatus: ...
    @property
    def load(self) -> float: ...


C = TypeVar("C", bound=Candidate)


def select_worker_weighted_by_load(
    workers: Sequence[C], ignore: Iterable[str], rng: random.Random
) -> tuple[C | None, str]:
    """Go's ``selectWorkerWeightedByLoad``.

    Among *workers* (one group, in registration order) that are ``WS_AVAILABLE``
    and not in *ignore*, pick one at random with weight ``max(0, 1 - load)``.

    Returns:
        ``(worker, "")``, or ``(None, reason)`` with Go's error text:
        ``"no workers available"`` (empty group) or
        ``"no workers with sufficient capacity"``.
    """
    if not workers:
        return None, "no workers available"
    skip = set(ignore)
    weighted = [
        (w, max(0.0, 1.0 - w.load))
        for w in workers
        if w.worker_id not in skip and w.status == agent_pb.WS_AVAILABLE
    ]
    total = sum(weight for _, weight in weighted)
    if total <= 0:
        return None, "no workers with sufficient capacity"
    remaining = rng.random() * total
    for w, weight in weighted:
        remaining -= weight
        if remaining <= 0 and weight > 0:
            return w, ""
    # Float rounding: Go falls back to workers[0]; the last weighted one is closer
    # to the intent and always eligible.
    return next(w for w, weight in reversed(weighted) if weight > 0), ""


def dispatch_namespaces(
    registrations: Iterable[WorkerKey], agent_name: str, job_type: agent_pb.JobType
) -> list[str] | None:
    """Which namespaces a dispatch fans out to (``agentClient.getDispatcher``).

    ``CheckEnabled`` reports every registered namespace (of any job type) when at
    least one worker serves *job_type*; a named dispatch goes ahead only if some
    worker registered that agent name. One job is requested per namespace.

    Returns:
        The namespaces, sorted; or None when Go logs "not dispatching agent job
        since no worker is available" and creates no job.
    """
    keys = list(registrations)
    if not any(k.job_type == job_type for k in keys):
        return [] if agent_name == "" else None
    if agent_name and agent_name not in {k.agent_name for k in keys}:
        return None
    return sorted({k.namespace for k in keys})


def is_dependent_participant(info: models_pb.ParticipantInfo) -> bool:
    """``ParticipantImpl.IsDependent``: agents and egress never trigger agent jobs."""
    if info.kind in (models_pb.ParticipantInfo.AGENT, models_pb.ParticipantInfo.EGRESS):
        return True
    return bool(info.permission.agent or info.permission.recorder)


@attrs.frozen
class JobRequest:
    """What a room asks of the agent service (Go's ``agent.JobRequest``)."""

    job_type: agent_pb.JobType
    room: models_pb.Room
    agent_name: str = ""
    dispatch_id: str = ""
    metadata: str = ""
    deployment: str = ""
    attributes: Mapping[str, str] = attrs.field(factory=dict)
    #: Only for JT_PARTICIPANT / JT_PUBLISHER jobs.
    participant: models_pb.ParticipantInfo | None = None


def new_job(
    request: JobRequest,
    *,
    job_id: str,
    namespace: str,
    enable_recording: bool = False,
    enable_redaction: bool = False,
) -> agent_pb.Job:
    """The ``Job`` proto ``LaunchJob`` builds for one namespace (no state yet)."""
    job = agent_pb.Job(
        id=job_id,
        dispatch_id=request.dispatch_id,
        type=request.job_type,
        namespace=namespace,
        agent_name=request.agent_name,
        metadata=request.metadata,
        enable_recording=enable_recording,
        enable_redaction=enable_redaction,
        deployment=request.deployment,
    )
    job.room.CopyFrom(request.room)
    if request.participant is not None:
        job.participant.CopyFrom(request.participant)
    job.attributes.update(request.attributes)
    return job


def apply_job_update(
    state: agent_pb.JobState, update: agent_pb.UpdateJobStatus, now_ns: int
) -> bool:
    """Apply a worker's ``UpdateJobStatus`` to *state* (``Worker.UpdateJobStatus``).

    Returns:
        Whether the job has ended (the server then forgets it).
    """
    state.updated_at = now_ns
    if state.status == agent_pb.JS_PENDING and update.status != agent_pb.JS_PENDING:
        state.started_at = now_ns
    state.status = update.status
    state.error = update.error
    if job_status_is_ended(update.status):
        state.ended_at = now_ns
        return True
    return False


def termination_outcome(reason: TerminateReason) -> tuple[agent_pb.JobStatus, str]:
    """The status and error Go records when it terminates a job (``Worker.TerminateJob``)."""
    if reason is TerminateReason.AGENT_LEFT_ROOM:
        return agent_pb.JS_FAILED, "agent worker left the room"
    return agent_pb.JS_SUCCESS, ""


def build_agent_token(
    *,
    api_key: str,
    api_secret: str,
    room_name: str,
    identity: str,
    name: str,
    metadata: str,
    attributes: Mapping[str, str],
    permissions: models_pb.ParticipantPermission,
    now: datetime.datetime | None = None,
) -> str:
    """The room join token of a ``JobAssignment`` (``protocol/agent.BuildAgentToken``).

    Grants: ``roomJoin``, ``agent``, the job's room, and the worker's permissions
    (``canSubscribe``, ``canPublish``, ``canPublishData``, ``hidden``,
    ``canUpdateOwnMetadata`` from ``can_update_metadata``, ``canSubscribeMetrics``);
    kind ``agent``; valid one hour. *attributes* must already hold
    :data:`AGENT_NAME_ATTRIBUTE`.

    The claims are built with :class:`livekit.api.AccessToken`; the JWT is signed here
    because ``AccessToken.to_jwt`` refuses an empty identity, which Go signs anyway.
    """
    grants = lkapi.VideoGrants(
        room_join=True,
        agent=True,
        room=room_name,
        can_subscribe=permissions.can_subscribe,
        can_publish=permissions.can_publish,
        can_publish_data=permissions.can_publish_data,
        # Go's `Hidden bool` is omitempty; the pointers above are always sent.
        hidden=True if permissions.hidden else None,
        can_update_own_metadata=permissions.can_update_metadata,
        can_subscribe_metrics=permissions.can_subscribe_metrics,
    )
    token = (
        lkapi.AccessToken(api_key, api_secret)
        .with_grants(grants)
        .with_identity(identity)
        .with_name(name)
        .with_kind("agent")
        .with_metadata(metadata)
        .with_attributes(dict(attributes))
        .with_ttl(AGENT_TOKEN_TTL)
    )
    issued = now or datetime.datetime.now(datetime.UTC)
    iat = calendar.timegm(issued.utctimetuple())
    claims = token.claims.asdict()
    claims.update(
        {
            "sub": identity,
            "iss": api_key,
            "iat": iat,
            "nbf": iat,
            "exp": calendar.timegm((issued + AGENT_TOKEN_TTL).utctimetuple()),
        }
    )
    with quiet_short_keys():
        return jwt.encode(claims, api_secret, algorithm="HS256")
