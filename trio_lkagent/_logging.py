"""Log records that say which worker, job and room they come from.

The worker binds two context variables: the serving worker (in ``serve``, so
every task below it sees it) and the current job (in each job's task and its
request handler's task, so every record of a job's code, and of tasks it
starts, carries it). :class:`JobLogFilter` copies them onto each record as
``worker_id``, ``job_id`` and ``room`` (empty strings outside).

Trio gives every task a copy of its parent's context, so nothing leaks from one
job to another.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import json
import logging
import sys
from collections.abc import Iterator
from typing import Protocol, TextIO

__all__ = [
    "JobLogFilter",
    "bind_job",
    "bind_worker",
    "configure_logging",
]

#: Logger of the agent-protocol messages (``websocket_debug``).
WS_LOGGER = "trio_lkagent.ws"


class _HasWorkerId(Protocol):
    @property
    def worker_id(self) -> str | None: ...


_worker: contextvars.ContextVar[_HasWorkerId | None] = contextvars.ContextVar(
    "trio_lkagent_worker", default=None
)
#: (job id, room name, worker id) of the job the current task belongs to.
_job: contextvars.ContextVar[tuple[str, str, str] | None] = contextvars.ContextVar(
    "trio_lkagent_job", default=None
)


def bind_worker(worker: _HasWorkerId) -> contextvars.Token[_HasWorkerId | None]:
    """Mark the current task (and tasks it starts from now on) as *worker*'s."""
    return _worker.set(worker)


def unbind_worker(token: contextvars.Token[_HasWorkerId | None]) -> None:
    """Undo :func:`bind_worker`."""
    _worker.reset(token)


def bind_job(job_id: str, room: str, worker_id: str) -> None:
    """Mark the current task (a job's, or its request handler's) as the job's.

    Not undone: the task is the job's for its whole life.
    """
    _job.set((job_id, room, worker_id))


#: Job id -> how many of the SDK's own shielded cleanups run in that job's tasks now.
_cleanups: dict[str, int] = {}


@contextlib.contextmanager
def sdk_cleanup() -> Iterator[None]:
    """Mark a shielded, bounded cleanup of the SDK's own (unpublish, stream close, leave).

    A job asked to stop runs these under shielded cancel scopes, each bounded by
    its own deadline; a few in a row on a struggling native client can take
    longer than ``shutdown_grace``. The worker's watchdog, which reports a job
    that ignores cancellation, gives a job more time (bounded) while one of these
    is under way in its tasks instead of mistaking it for code that swallowed
    ``trio.Cancelled``.
    """
    job = _job.get()
    if job is None:
        yield
        return
    job_id = job[0]
    _cleanups[job_id] = _cleanups.get(job_id, 0) + 1
    try:
        yield
    finally:
        left = _cleanups[job_id] - 1
        if left:
            _cleanups[job_id] = left
        else:
            del _cleanups[job_id]


def in_sdk_cleanup(job_id: str) -> bool:
    """True while a :func:`sdk_cleanup` block runs in one of *job_id*'s tasks."""
    return job_id in _cleanups


def current_context() -> dict[str, str]:
    """``worker_id``, ``job_id`` and ``room`` of the current task ("" when unknown)."""
    job = _job.get()
    worker = _worker.get()
    worker_id = (worker.worker_id if worker is not None else None) or ""
    if job is None:
        return {"worker_id": worker_id, "job_id": "", "room": ""}
    return {"worker_id": job[2] or worker_id, "job_id": job[0], "room": job[1]}


class JobLogFilter(logging.Filter):
    """Adds ``worker_id``, ``job_id`` and ``room`` to every record it sees.

    Attach it to a *handler* (a logger's filters only see that logger's own
    records)::

        handler = logging.StreamHandler()
        handler.addFilter(JobLogFilter())
        handler.setFormatter(logging.Formatter(
            "%(levelname)s %(name)s [%(job_id)s %(room)s] %(message)s"))

    Outside a worker or a job the fields are empty strings.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Set the fields (keeping ones already set, e.g. by ``extra=``); never drops."""
        for key, value in current_context().items():
            if not getattr(record, key, None):
                setattr(record, key, value)
        return True


class TextFormatter(logging.Formatter):
    """``time level logger: message [worker=... job=... room=...]``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The standard line, with the job context appended when there is one."""
        text = super().format(record)
        tags = [
            f"{key.removesuffix('_id')}={value}"
            for key in ("worker_id", "job_id", "room")
            if (value := getattr(record, key, ""))
        ]
        if not tags:
            return text
        first, sep, rest = text.partition("\n")
        return f"{first} [{' '.join(tags)}]{sep}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, context, exception."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as a single line of JSON."""
        payload: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("worker_id", "job_id", "room"):
            value = getattr(record, key, "")
            if value:
                payload[key] = value
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(
    level: str = "INFO",
    fmt: str = "text",
    *,
    websocket_debug: bool = False,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every record to *stream* (stderr) with the job context: what the CLI does.

    Args:
        level: Root level name.
        fmt: ``"text"`` or ``"json"``.
        websocket_debug: Also log every agent-protocol message (logger
            ``trio_lkagent.ws`` at DEBUG, tokens redacted), whatever *level* is.
        stream: Where to write (default ``sys.stderr``).

    Returns:
        The handler installed on the root logger (replacing any there).
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(JobLogFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger(WS_LOGGER).setLevel(logging.DEBUG if websocket_debug else logging.NOTSET)
    # The dev server's WebRTC stack narrates every ICE check at INFO, the native
    # client its signalling: keep them to warnings unless DEBUG was asked for.
    chatty = logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(chatty)
    logging.captureWarnings(True)
    return handler


#: Libraries whose INFO records are noise for an agent's operator (``livekit``:
#: the native client's own log, forwarded through the ``livekit`` logger).
_CHATTY_LIBRARIES = ("aioice", "aiortc", "livekit")
