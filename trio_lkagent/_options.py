"""Worker configuration: :class:`WorkerOptions` and the small types it is built from."""

from __future__ import annotations

import enum
import math
import os
import random
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
from livekit.protocol import agent as agent_pb
from livekit.protocol import models as models_pb

from ._exceptions import ConfigurationError, InvalidJobTypeError
from ._protocol import WireFormat

if TYPE_CHECKING:
    from ._worker import WorkerStatistics
    from .resilience import (
        CheckpointStore,
        HealthMonitor,
        LoadCalculator,
        RecoveryHandler,
        ResourceLimits,
        ResourceThresholds,
    )

__all__ = [
    "JobExecutor",
    "JobType",
    "LoadFn",
    "Permissions",
    "ReconnectPolicy",
    "WorkerOptions",
]


class JobType(enum.IntEnum):
    """Which server events dispatch a job to this worker.

    The values are the protocol's ``JobType`` numbers, so ``JobType(job.type)``
    converts a protocol job's type.
    """

    #: One job per room, when the room is created (or dispatched explicitly).
    ROOM = agent_pb.JT_ROOM
    #: One job per participant that starts publishing.
    PUBLISHER = agent_pb.JT_PUBLISHER
    #: One job per participant that joins.
    PARTICIPANT = agent_pb.JT_PARTICIPANT


def to_job_type(value: object) -> JobType:
    """*value* as a :class:`JobType` (a member, or its protocol number).

    Raises:
        InvalidJobTypeError: *value* is not one of ``ROOM``, ``PUBLISHER``, ``PARTICIPANT``.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            return JobType(value)
        except ValueError:
            pass
    names = ", ".join(f"{t.name} ({t.value})" for t in JobType)
    raise InvalidJobTypeError(f"invalid job type {value!r}: expected one of {names}")


class JobExecutor(enum.Enum):
    """Where a job's entrypoint runs (``WorkerOptions.job_executor``; docs/processes.md)."""

    #: A Trio task in the worker's process: microseconds to start, 9 KB a job;
    #: a job that blocks the loop, leaks or crashes natively affects every job.
    TASK = "task"
    #: Its own process, taken from a pool of prewarmed ones (agent modules
    #: imported, setup hook run): a crash or the memory limit ends that job only.
    PROCESS = "process"


#: A user load function: gets the worker's statistics, returns a load in [0, 1].
LoadFn = Callable[["WorkerStatistics"], float]


@attrs.frozen
class Permissions:
    """What the agent participant may do in the rooms it joins.

    Sent to the server at registration; the server writes them into each job's
    room token.
    """

    can_publish: bool = True
    can_subscribe: bool = True
    can_publish_data: bool = True
    can_update_metadata: bool = True
    #: Hidden participants are invisible to the others in the room.
    hidden: bool = False

    def to_proto(self) -> models_pb.ParticipantPermission:
        """The protocol message sent in ``RegisterWorkerRequest.allowed_permissions``."""
        return models_pb.ParticipantPermission(
            can_publish=self.can_publish,
            can_subscribe=self.can_subscribe,
            can_publish_data=self.can_publish_data,
            can_update_metadata=self.can_update_metadata,
            hidden=self.hidden,
            agent=True,
        )


def _positive(name: str) -> Callable[[object, attrs.Attribute[float], float], None]:
    def check(_inst: object, _attr: attrs.Attribute[float], value: float) -> None:
        if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
            raise ConfigurationError(f"{name} must be a number > 0, got {value!r}")

    return check


def _positive_or_none(
    name: str,
) -> Callable[[object, attrs.Attribute[float | None], float | None], None]:
    def check(inst: object, attr: attrs.Attribute[float | None], value: float | None) -> None:
        if value is not None:
            _positive(name)(inst, attr, value)  # type: ignore[arg-type]

    return check


@attrs.frozen
class ReconnectPolicy:
    """How the worker reconnects after losing the server.

    Delays grow exponentially from ``initial_delay`` by ``multiplier`` up to
    ``max_delay``, each spread by up to ``jitter`` (a fraction) either way so a
    fleet of workers does not reconnect in lock step. The attempt counter goes back
    to zero only after a connection stayed registered for ``stable_after``
    seconds: a server that accepts and then drops every connection meets the
    growing delays, never a tight loop.
    """

    initial_delay: float = attrs.field(default=0.5, validator=_positive("initial_delay"))
    max_delay: float = attrs.field(default=30.0, validator=_positive("max_delay"))
    multiplier: float = attrs.field(default=2.0)
    jitter: float = attrs.field(default=0.2)
    #: Give up (``serve`` raises :class:`ConnectError`) after this many failed
    #: attempts in a row; ``None`` retries forever.
    max_attempts: int | None = None
    stable_after: float = attrs.field(default=30.0, validator=_positive("stable_after"))

    def __attrs_post_init__(self) -> None:
        if self.multiplier < 1:
            raise ConfigurationError(f"multiplier must be >= 1, got {self.multiplier!r}")
        if not 0 <= self.jitter < 1:
            raise ConfigurationError(f"jitter must be in [0, 1), got {self.jitter!r}")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be >= 1 or None, got {self.max_attempts}")

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before reconnect attempt number *attempt* (1-based)."""
        base = min(self.max_delay, self.initial_delay * self.multiplier ** max(0, attempt - 1))
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1 + spread))


def _env(name: str) -> Callable[[], str]:
    return lambda: os.environ.get(name, "")


_URL_MISSING = "no server URL: pass WorkerOptions(url=...) or set LIVEKIT_URL (for example ws://127.0.0.1:7880)"


def _url_check(_inst: object, _attr: attrs.Attribute[str], value: str) -> None:
    if not value:
        return  # may come from LIVEKIT_URL when serving starts (resolved())
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"url must look like ws[s]://host[:port] or http[s]://host[:port], got {value!r}"
        )


#: WorkerOptions field -> (what, environment variable), for the lazily required ones.
_CONNECTION_FIELDS = {
    "url": ("server URL", "LIVEKIT_URL"),
    "api_key": ("API key", "LIVEKIT_API_KEY"),
    "api_secret": ("API secret", "LIVEKIT_API_SECRET"),
}


@attrs.frozen(kw_only=True)
class WorkerOptions:
    """Everything a :class:`~trio_lkagent.Worker` needs to know, validated up front.

    ``url``, ``api_key`` and ``api_secret`` default to the ``LIVEKIT_URL``,
    ``LIVEKIT_API_KEY`` and ``LIVEKIT_API_SECRET`` environment variables, read
    when the options are built and, for those still empty, again when the worker
    starts serving (:meth:`resolved`). So a module may build its ``Worker`` at
    import time without any ``LIVEKIT_*`` set (tests, ``trio-lkagent dev``);
    missing connection settings raise :class:`~trio_lkagent.ConfigurationError`
    naming the setting when ``Worker.serve`` starts. Every other invalid value
    raises it here, when the options are built.

    Times are in seconds.
    """

    url: str = attrs.field(factory=_env("LIVEKIT_URL"), validator=_url_check)
    api_key: str = attrs.field(factory=_env("LIVEKIT_API_KEY"))
    api_secret: str = attrs.field(factory=_env("LIVEKIT_API_SECRET"), repr=False)
    #: Explicit dispatch targets workers by this name; empty means automatic dispatch.
    agent_name: str = ""
    job_type: JobType = attrs.field(default=JobType.ROOM, converter=to_job_type)
    namespace: str = ""
    version: str = ""
    permissions: Permissions = attrs.field(factory=Permissions)
    #: Hard cap on jobs: running ones plus those reserved while awaiting assignment.
    max_jobs: int = 100
    #: Replaces the default load (running jobs / max_jobs). Clamped to [0, 1].
    load_fn: LoadFn | None = None
    #: At or above this load the worker reports WS_FULL and declines requests.
    load_threshold: float = 1.0
    #: How often the load is sampled and reported (also reported on every change).
    load_interval: float = attrs.field(default=2.5, validator=_positive("load_interval"))
    wire_format: WireFormat = WireFormat.PROTOBUF
    #: Application-level ``WorkerPing`` period.
    ping_interval: float = attrs.field(default=10.0, validator=_positive("ping_interval"))
    #: No message from the server for this long: the connection is dead, reconnect.
    ping_timeout: float = attrs.field(default=30.0, validator=_positive("ping_timeout"))
    reconnect: ReconnectPolicy = attrs.field(factory=ReconnectPolicy)
    #: Opening the WebSocket (TCP + upgrade) must finish within this.
    connect_timeout: float = attrs.field(default=10.0, validator=_positive("connect_timeout"))
    #: The server must confirm registration within this.
    register_timeout: float = attrs.field(default=10.0, validator=_positive("register_timeout"))
    #: A message not sent within this means the server stopped reading: the
    #: connection is dropped and re-established.
    send_timeout: float = attrs.field(default=10.0, validator=_positive("send_timeout"))
    #: Bound on the WebSocket close handshake (the TCP stream is closed after it).
    close_timeout: float = attrs.field(default=2.0, validator=_positive("close_timeout"))
    #: A user request handler must accept or reject within this (else: rejected).
    request_timeout: float = attrs.field(default=5.0, validator=_positive("request_timeout"))
    #: A slot reserved by an accepted request is released if no assignment comes.
    assignment_timeout: float = attrs.field(default=7.5, validator=_positive("assignment_timeout"))
    #: ``drain()`` waits this long for running jobs before cancelling them.
    drain_timeout: float = attrs.field(default=1800.0, validator=_positive("drain_timeout"))
    #: On cancellation of ``serve``, time allowed for final job statuses and a clean close.
    shutdown_grace: float = attrs.field(default=2.0, validator=_positive("shutdown_grace"))
    #: Log every protocol message (tokens redacted).
    websocket_debug: bool = False
    #: Largest server frame accepted.
    max_message_size: int = 1 << 20

    # -- job deadlines ----------------------------------------------------------------
    #: Seconds a job may run (None: no limit). On expiry the job's cancel scope is
    #: cancelled and it ends JS_FAILED "job timed out after N s"; ``ctx.deadline``
    #: shows it; ``req.accept(timeout=...)`` overrides it per job.
    job_timeout: float | None = attrs.field(
        default=None, validator=_positive_or_none("job_timeout")
    )

    # -- resilience (trio_lkagent.resilience, docs/resilience.md) --------------------
    #: Decides the reported load and admission (``load_fn`` is its one-function
    #: shorthand; give one or the other). None: running / max_jobs.
    load_calculator: LoadCalculator | None = None
    #: Limits past which the worker reports WS_FULL and declines (and max_uptime drains).
    resource_limits: ResourceLimits | None = None
    #: GOOD/WARNING/CRITICAL thresholds of ``worker.resource_monitor`` (None: the seeds').
    resource_thresholds: ResourceThresholds | None = None
    #: Periodic health checks feeding the health server's ``/``.
    health_monitor: HealthMonitor | None = None
    #: What to do when a job fails (RETRY/BACKOFF in place, SKIP, TERMINATE). None:
    #: failed jobs are not retried. ``LIVEKIT_RECOVERY_ENABLED=true`` sets the default one.
    recovery: RecoveryHandler | None = None
    #: Where ``ctx.checkpoint`` saves: a store, or a URL (``sqlite:///path``,
    #: ``redis://host:port/db``, ``memory://``). Default: ``LIVEKIT_CHECKPOINT_URL``,
    #: else in memory (survives retries, not a crash).
    checkpoint_store: CheckpointStore | str | None = attrs.field(
        factory=lambda: os.environ.get("LIVEKIT_CHECKPOINT_URL") or None
    )

    # -- per-job processes (trio_lkagent.processes, docs/processes.md) ----------------
    #: TASK (default) runs each job as a Trio task; PROCESS in a prewarmed process.
    job_executor: JobExecutor = attrs.field(default=JobExecutor.TASK, converter=JobExecutor)
    #: PROCESS: processes kept started ahead (modules imported, setup run).
    num_idle_processes: int = 2
    #: PROCESS: a job process above this resident memory (MB) is logged, once.
    job_memory_warn_mb: float = 500.0
    #: PROCESS: a job process above this resident memory (MB) is killed, its job
    #: failed; None: no limit.
    job_memory_limit_mb: float | None = None
    #: PROCESS: ``"forkserver"`` (default), ``"spawn"`` or ``"fork"`` (see docs/processes.md).
    process_start_method: str = "forkserver"

    def __attrs_post_init__(self) -> None:
        if (
            not isinstance(self.max_jobs, int)
            or isinstance(self.max_jobs, bool)
            or self.max_jobs < 1
        ):
            raise ConfigurationError(f"max_jobs must be an integer >= 1, got {self.max_jobs!r}")
        if not (isinstance(self.load_threshold, int | float) and self.load_threshold > 0):
            raise ConfigurationError(
                f"load_threshold must be a number > 0, got {self.load_threshold!r}"
            )
        if math.isnan(self.load_threshold):
            raise ConfigurationError("load_threshold must not be NaN")
        if not isinstance(self.wire_format, WireFormat):
            raise ConfigurationError(
                f"wire_format must be a WireFormat (PROTOBUF or JSON), got {self.wire_format!r}"
            )
        if not isinstance(self.num_idle_processes, int) or self.num_idle_processes < 0:
            raise ConfigurationError(
                f"num_idle_processes must be an integer >= 0, got {self.num_idle_processes!r}"
            )
        if self.process_start_method not in ("forkserver", "spawn", "fork"):
            raise ConfigurationError(
                "process_start_method must be 'forkserver', 'spawn' or 'fork', got"
                f" {self.process_start_method!r}"
            )
        if self.job_memory_limit_mb is not None and not self.job_memory_limit_mb > 0:
            raise ConfigurationError(
                f"job_memory_limit_mb must be > 0 or None, got {self.job_memory_limit_mb!r}"
            )
        if self.ping_timeout <= self.ping_interval:
            raise ConfigurationError(
                f"ping_timeout ({self.ping_timeout}) must exceed ping_interval"
                f" ({self.ping_interval}), or a healthy connection would be dropped"
            )

    def resolved(self, environ: Mapping[str, str] | None = None) -> WorkerOptions:
        """These options with the connection settings complete, as serving needs them.

        Empty ``url``, ``api_key`` and ``api_secret`` are read again from
        ``LIVEKIT_URL``, ``LIVEKIT_API_KEY`` and ``LIVEKIT_API_SECRET``.
        ``Worker.serve`` calls this first.

        Args:
            environ: The variables (default ``os.environ``).

        Returns:
            Options whose URL and keys are set (``self`` if nothing was missing).

        Raises:
            ConfigurationError: one is still missing, e.g. ``no API key: pass
                WorkerOptions(api_key=...) or set LIVEKIT_API_KEY``, or the URL
                from the environment is invalid.
        """
        env = os.environ if environ is None else environ
        changes: dict[str, Any] = {
            name: env.get(var, "")
            for name, (_what, var) in _CONNECTION_FIELDS.items()
            if not getattr(self, name)
        }
        for name, value in changes.items():
            if not value:
                what, var = _CONNECTION_FIELDS[name]
                if name == "url":
                    raise ConfigurationError(_URL_MISSING)
                raise ConfigurationError(f"no {what}: pass WorkerOptions({name}=...) or set {var}")
        return attrs.evolve(self, **changes) if changes else self

    @property
    def agent_ws_url(self) -> str:
        """The ``/agent`` WebSocket URL derived from :attr:`url` (http -> ws)."""
        parts = urllib.parse.urlsplit(self.url)
        scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
        path = parts.path.rstrip("/") + "/agent"
        query = urllib.parse.urlencode({"protocol": 1})
        return urllib.parse.urlunsplit((scheme, parts.netloc, path, query, ""))
