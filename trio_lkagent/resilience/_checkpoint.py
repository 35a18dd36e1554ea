"""Job checkpoints: state a job saves as it goes, found again when its room is re-dispatched.

A job's checkpoints are keyed by what stays the same when the job is
dispatched again after a crash: the agent's namespace and name, the room, and
(for JT_PARTICIPANT jobs) the participant's identity. Never the job id, which
changes. Values are JSON.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import trio

from .._exceptions import ConfigurationError
from ._resp import RedisConnection

if TYPE_CHECKING:
    from livekit.protocol import agent as agent_pb

__all__ = [
    "Checkpoint",
    "CheckpointStore",
    "MemoryCheckpointStore",
    "RedisCheckpointStore",
    "SQLiteCheckpointStore",
    "checkpoint_scope",
    "open_checkpoint_store",
]


@runtime_checkable
class CheckpointStore(Protocol):
    """Where checkpoints live: a map of scopes (one per job identity) to key -> JSON text.

    Implementations must be safe to share between the jobs of one worker and,
    for persistent stores, between worker processes.
    """

    async def save(self, scope: str, key: str, value: str) -> None:
        """Store *value* (JSON text) under (*scope*, *key*)."""
        ...

    async def load(self, scope: str, key: str) -> str | None:
        """The JSON text under (*scope*, *key*), or None."""
        ...

    async def exists(self, scope: str) -> bool:
        """True if *scope* holds any key."""
        ...

    async def clear(self, scope: str) -> None:
        """Remove every key of *scope*."""
        ...

    async def aclose(self) -> None:
        """Release connections and files (idempotent)."""
        ...


def checkpoint_scope(job: agent_pb.Job, agent_name: str, namespace: str = "") -> str:
    """The identity of *job* that survives a re-dispatch: namespace/agent/room[/participant]."""
    from livekit.protocol import agent as agent_pb

    parts = [namespace, agent_name or job.agent_name, job.room.name]
    if job.type == agent_pb.JT_PARTICIPANT:
        parts.append(job.participant.identity)
    return "/".join(urllib.parse.quote(p, safe="") for p in parts)


class Checkpoint:
    """``ctx.checkpoint``: save, load and clear this job's state.

    ::

        count = await ctx.checkpoint.load("processed", 0)
        ...
        await ctx.checkpoint.save("processed", count)
        await ctx.checkpoint.clear()     # finished: nothing to resume

    Values must be JSON-encodable (dicts, lists, str, numbers, bool, None).
    """

    def __init__(self, store: CheckpointStore, scope: str) -> None:
        self._store = store
        self._scope = scope

    @property
    def scope(self) -> str:
        """This job's key prefix in the store (namespace/agent/room[/participant])."""
        return self._scope

    async def save(self, key: str, value: Any) -> None:
        """Store *value* under *key*, replacing what was there.

        Raises:
            TypeError: *value* is not JSON-encodable.
        """
        await self._store.save(self._scope, key, json.dumps(value, separators=(",", ":")))

    async def load(self, key: str, default: Any = None) -> Any:
        """The value saved under *key*, or *default*."""
        text = await self._store.load(self._scope, key)
        return default if text is None else json.loads(text)

    async def clear(self) -> None:
        """Forget everything this job saved (its next dispatch starts fresh)."""
        await self._store.clear(self._scope)

    async def exists(self) -> bool:
        """True if anything is saved for this job."""
        return await self._store.exists(self._scope)


class MemoryCheckpointStore:
    """Checkpoints in a dict: survive retries and jobs within one process, not a crash."""

    def __init__(self) -> None:
        self._data: dict[str, dict[str, str]] = {}

    async def save(self, scope: str, key: str, value: str) -> None:
        """See :class:`CheckpointStore`."""
        await trio.lowlevel.checkpoint()
        self._data.setdefault(scope, {})[key] = value

    async def load(self, scope: str, key: str) -> str | None:
        """See :class:`CheckpointStore`."""
        await trio.lowlevel.checkpoint()
        return self._data.get(scope, {}).get(key)

    async def exists(self, scope: str) -> bool:
        """See :class:`CheckpointStore`."""
        await trio.lowlevel.checkpoint()
        return self.exists_nowait(scope)

    def exists_nowait(self, scope: str) -> bool:
        """:meth:`exists` without yielding (the worker uses it on the job start path)."""
        return bool(self._data.get(scope))

    async def clear(self, scope: str) -> None:
        """See :class:`CheckpointStore`."""
        await trio.lowlevel.checkpoint()
        self._data.pop(scope, None)

    async def aclose(self) -> None:
        """Nothing to release."""
        await trio.lowlevel.checkpoint()


class SQLiteCheckpointStore:
    """Checkpoints in one SQLite file: the embedded default, safe across processes.

    WAL journal and a busy timeout let the ``--processes N`` workers of one
    machine share the file; each write is its own transaction, committed before
    :meth:`save` returns (a kill -9 right after loses nothing). The blocking
    sqlite3 calls run in a worker thread (``trio.to_thread.run_sync``), one at a
    time per store.

    Args:
        path: The database file (created with its table if missing).
        busy_timeout: Seconds a write waits for another process's lock.
    """

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._limiter = trio.CapacityLimiter(1)
        self._closed = False
        self._thread_lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise trio.ClosedResourceError("the checkpoint store is closed")
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout, check_same_thread=False, isolation_level=None
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS lkagent_checkpoints ("
                " scope TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,"
                " updated REAL NOT NULL, PRIMARY KEY (scope, key))"
            )
            self._conn = conn
        return self._conn

    async def _run(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        def work() -> list[tuple[Any, ...]]:
            with self._thread_lock:
                return list(self._connection().execute(sql, params).fetchall())

        return await trio.to_thread.run_sync(work, limiter=self._limiter)

    async def save(self, scope: str, key: str, value: str) -> None:
        """See :class:`CheckpointStore`."""
        await self._run(
            "INSERT INTO lkagent_checkpoints (scope, key, value, updated) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value,"
            " updated = excluded.updated",
            (scope, key, value, time.time()),
        )

    async def load(self, scope: str, key: str) -> str | None:
        """See :class:`CheckpointStore`."""
        rows = await self._run(
            "SELECT value FROM lkagent_checkpoints WHERE scope = ? AND key = ?", (scope, key)
        )
        return str(rows[0][0]) if rows else None

    async def exists(self, scope: str) -> bool:
        """See :class:`CheckpointStore`."""
        rows = await self._run(
            "SELECT 1 FROM lkagent_checkpoints WHERE scope = ? LIMIT 1", (scope,)
        )
        return bool(rows)

    async def clear(self, scope: str) -> None:
        """See :class:`CheckpointStore`."""
        await self._run("DELETE FROM lkagent_checkpoints WHERE scope = ?", (scope,))

    async def aclose(self) -> None:
        """Close the database (idempotent)."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:

            def close() -> None:
                with self._thread_lock:
                    conn.close()

            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(close, limiter=self._limiter)


class RedisCheckpointStore:
    """Checkpoints in Redis, for fleets on several machines: one hash per job identity.

    Each scope is the hash ``<prefix><scope>``; :meth:`save` is one ``HSET``.
    With ``ttl`` set, a scope expires that many seconds after its last save.

    Args:
        url: ``redis://[user:password@]host[:port][/db]``.
        prefix: Prepended to every key.
        ttl: Seconds a scope lives after its last save (None: forever).
    """

    def __init__(
        self, url: str, *, prefix: str = "lkagent:checkpoint:", ttl: float | None = None
    ) -> None:
        self._redis = RedisConnection(url)
        self._prefix = prefix
        self._ttl = ttl

    def _key(self, scope: str) -> str:
        return self._prefix + scope

    async def save(self, scope: str, key: str, value: str) -> None:
        """See :class:`CheckpointStore`."""
        await self._redis.execute("HSET", self._key(scope), key, value)
        if self._ttl is not None:
            await self._redis.execute("PEXPIRE", self._key(scope), int(self._ttl * 1000))

    async def load(self, scope: str, key: str) -> str | None:
        """See :class:`CheckpointStore`."""
        value = await self._redis.execute("HGET", self._key(scope), key)
        return value.decode() if isinstance(value, bytes) else None

    async def exists(self, scope: str) -> bool:
        """See :class:`CheckpointStore`."""
        return await self._redis.execute("EXISTS", self._key(scope)) == 1

    async def clear(self, scope: str) -> None:
        """See :class:`CheckpointStore`."""
        await self._redis.execute("DEL", self._key(scope))

    async def aclose(self) -> None:
        """Close the connection (idempotent)."""
        await self._redis.aclose()


def open_checkpoint_store(url: str) -> CheckpointStore:
    """A store from a URL: ``memory://``, ``sqlite:///path/to/file.db`` or ``redis://host:port/db``.

    ``sqlite:///rel.db`` is relative to the working directory,
    ``sqlite:////abs/file.db`` absolute (SQLAlchemy's convention).

    Raises:
        ConfigurationError: an unknown scheme or a malformed URL.
    """
    scheme, _, rest = url.partition("://")
    if scheme == "memory":
        return MemoryCheckpointStore()
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        if not path:
            raise ConfigurationError(f"sqlite checkpoint URL without a path: {url!r}")
        return SQLiteCheckpointStore(path)
    if scheme == "redis":
        RedisConnection(url)  # validate now
        return RedisCheckpointStore(url)
    raise ConfigurationError(
        "checkpoint store URL must be memory://, sqlite:///path or redis://host:port/db,"
        f" got {url!r}"
    )
