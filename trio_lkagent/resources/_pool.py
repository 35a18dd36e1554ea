"""A pool of expensive resources (engines, connections, processes) for Trio tasks."""

from __future__ import annotations

import collections
import inspect
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Generic, Self, TypeVar

import attrs
import trio

__all__ = ["ResourcePool", "ResourcePoolStatistics"]

logger = logging.getLogger("trio_lkagent.resources")

T = TypeVar("T")


@attrs.frozen
class ResourcePoolStatistics:
    """A snapshot of a :class:`ResourcePool`, from :meth:`ResourcePool.statistics`."""

    #: Resources that exist or are being created (``available + in_use + creating``).
    size: int
    #: Idle resources ready to be acquired.
    available: int
    #: Resources held by tasks.
    in_use: int
    #: Factory calls under way.
    creating: int
    #: Tasks waiting in :meth:`ResourcePool.acquire`.
    waiting: int
    min_size: int
    max_size: int
    #: Resources the factory made, since the pool opened.
    created: int
    #: Resources closed (discarded, reaped, taken out or at the pool's end).
    closed: int
    #: Resources discarded as broken (an error in the ``acquire`` block, :meth:`discard`,
    #: or the pool's ``is_broken`` check).
    discarded: int
    #: Idle resources closed after ``max_idle_time``.
    reaped: int
    #: Factory calls that raised.
    factory_failures: int


class _Waiter(Generic[T]):
    __slots__ = ("event", "may_create", "resource")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.resource: T | None = None
        #: Handed a free slot instead of a resource: create one.
        self.may_create = False


class ResourcePool(Generic[T]):
    """Resources made by an async factory, lent to tasks one at a time.

    Use it as ``async with ResourcePool(factory, ...) as pool:``; the block owns
    the pool's background task (filling up to ``min_size`` and closing idle
    resources beyond it after ``max_idle_time``) and closes everything at its end::

        async def make_engine() -> Engine: ...

        async with ResourcePool(make_engine, close=Engine.aclose, max_size=4) as pool:
            async with pool.acquire() as engine:
                await engine.run(...)

    Waiting is fair: tasks get resources in the order they asked, and a
    resource released while tasks wait goes straight to the first of them. A
    resource whose ``acquire`` block ends with an exception (cancellation
    included: it may be left half-used), that :meth:`discard` marked, or for
    which ``is_broken(resource)`` is true, is closed instead of returned.

    Args:
        factory: ``async def factory() -> T`` (or a sync callable).
        close: ``async def close(resource)`` (or sync), called once for every
            resource the pool lets go; default: nothing.
        min_size: Resources kept ready (created in the background).
        max_size: Most resources at once (in use, idle and being created).
        max_idle_time: Idle resources beyond ``min_size`` are closed after this
            many seconds; None keeps them.
        is_broken: ``is_broken(resource) -> bool``, checked before lending an
            idle resource and when one comes back.
        close_timeout: Bound on each ``close`` call (it runs shielded).

    Raises:
        ValueError: sizes out of range.
    """

    def __init__(
        self,
        factory: Callable[[], Awaitable[T] | T],
        *,
        close: Callable[[T], Awaitable[None] | None] | None = None,
        min_size: int = 0,
        max_size: int = 10,
        max_idle_time: float | None = 300.0,
        is_broken: Callable[[T], bool] | None = None,
        close_timeout: float = 10.0,
    ) -> None:
        if not (isinstance(max_size, int) and max_size >= 1):
            raise ValueError(f"max_size must be an integer >= 1, got {max_size!r}")
        if not (isinstance(min_size, int) and 0 <= min_size <= max_size):
            raise ValueError(f"min_size must be an integer in [0, max_size], got {min_size!r}")
        if max_idle_time is not None and not max_idle_time >= 0:
            raise ValueError(f"max_idle_time must be >= 0 or None, got {max_idle_time!r}")
        self._factory = factory
        self._close = close
        self._min_size = min_size
        self._max_size = max_size
        self._max_idle_time = math.inf if max_idle_time is None else max_idle_time
        self._is_broken = is_broken
        self._close_timeout = close_timeout
        #: Idle resources with the time they became idle; most recent on the right.
        self._idle: collections.deque[tuple[T, float]] = collections.deque()
        self._waiters: collections.deque[_Waiter[T]] = collections.deque()
        self._lent: dict[int, T] = {}
        self._marked: set[int] = set()
        self._size = 0
        self._creating = 0
        self._nursery: trio.Nursery | None = None
        self._opened = False
        self._closed = False
        self._wake = trio.Event()
        self._created = self._closed_count = self._discarded = 0
        self._reaped = self._factory_failures = 0

    # -- life -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._opened:
            raise RuntimeError("a ResourcePool can be opened once")
        self._opened = True
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        self._nursery.start_soon(self._maintain, name="ResourcePool maintenance")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        self._shut()
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()  # the maintenance task; closes are shielded
        return await self._nursery_cm.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Close the pool: idle resources now, lent ones when they come back.

        Tasks waiting in :meth:`acquire` get :class:`trio.ClosedResourceError`.
        Idempotent.
        """
        self._shut()
        await trio.lowlevel.checkpoint()

    def _shut(self) -> None:
        if not self._closed:
            self._closed = True
            while self._waiters:
                self._waiters.popleft().event.set()  # nothing handed over: they raise
            while self._idle:
                resource, _ = self._idle.pop()
                self._size -= 1
                self._let_go(resource)
            self._wake.set()

    # -- introspection ----------------------------------------------------------------

    @property
    def size(self) -> int:
        """Resources that exist or are being created."""
        return self._size

    @property
    def min_size(self) -> int:
        """Resources kept ready; settable (raising it fills the pool in the background)."""
        return self._min_size

    @min_size.setter
    def min_size(self, value: int) -> None:
        if not (isinstance(value, int) and 0 <= value <= self._max_size):
            raise ValueError(f"min_size must be an integer in [0, max_size], got {value!r}")
        self._min_size = value
        self._wake.set()

    @property
    def available(self) -> int:
        """Idle resources ready to lend."""
        return len(self._idle)

    @property
    def in_use(self) -> int:
        """Resources held by tasks."""
        return len(self._lent)

    def statistics(self) -> ResourcePoolStatistics:
        """A frozen snapshot of the pool's counters."""
        return ResourcePoolStatistics(
            size=self._size,
            available=len(self._idle),
            in_use=len(self._lent),
            creating=self._creating,
            waiting=len(self._waiters),
            min_size=self._min_size,
            max_size=self._max_size,
            created=self._created,
            closed=self._closed_count,
            discarded=self._discarded,
            reaped=self._reaped,
            factory_failures=self._factory_failures,
        )

    # -- lending ----------------------------------------------------------------------

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[T]:
        """Borrow a resource for the block (waiting for one if all are in use).

        Raises:
            trio.ClosedResourceError: the pool is (or gets) closed.
            RuntimeError: the pool is not open (use ``async with pool``).
            Exception: whatever the factory raised, when a new resource was needed.

        Cancellation:
            Safe while waiting: the place in line is given up (a resource handed
            over at that moment goes to the next waiter).
        """
        resource = await self._get()
        broken = False
        try:
            yield resource
        except BaseException:
            broken = True
            raise
        finally:
            self._put(resource, broken)

    async def take(self) -> T:
        """Remove a resource from the pool for good: the caller uses and closes it.

        The slot it held is free at once (``min_size`` is refilled in the
        background): for resources good for one use, like a prewarmed process.
        """
        resource = await self._get()
        del self._lent[id(resource)]
        self._marked.discard(id(resource))
        self._size -= 1
        self._slot_freed()
        return resource

    def discard(self, resource: T) -> None:
        """Mark a lent *resource* as broken: it is closed when its block ends."""
        if id(resource) not in self._lent:
            raise ValueError("discard() takes a resource lent by this pool")
        self._marked.add(id(resource))

    async def _get(self) -> T:
        if not self._opened or self._nursery is None:
            raise RuntimeError("use the pool inside `async with ResourcePool(...) as pool:`")
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._closed:
                raise trio.ClosedResourceError("the resource pool is closed")
            if self._waiters:
                break  # others were first
            if self._idle:
                resource, _ = self._idle.pop()
                if self._broken(resource):
                    self._size -= 1
                    self._discarded += 1
                    self._let_go(resource)
                    continue
                self._lent[id(resource)] = resource
                await trio.lowlevel.cancel_shielded_checkpoint()
                return resource
            if self._size < self._max_size:
                self._size += 1
                return await self._create()
            break
        waiter: _Waiter[T] = _Waiter()
        self._waiters.append(waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            if not waiter.event.is_set():
                self._waiters.remove(waiter)
            elif waiter.resource is not None:
                # Handed over as we were cancelled: pass it on.
                del self._lent[id(waiter.resource)]
                self._return(waiter.resource)
            elif waiter.may_create:
                self._size -= 1
                self._slot_freed()
            raise
        if waiter.resource is not None:
            return waiter.resource
        if waiter.may_create:
            return await self._create()
        raise trio.ClosedResourceError("the resource pool is closed")

    async def _create(self) -> T:
        """Make a resource for a slot already counted in ``_size``; it is lent at once."""
        self._creating += 1
        try:
            made = self._factory()
            resource: T = await made if inspect.isawaitable(made) else made
        except BaseException:
            self._creating -= 1
            self._factory_failures += 1
            self._size -= 1
            self._slot_freed()
            raise
        self._creating -= 1
        self._created += 1
        if self._closed:
            self._size -= 1
            self._let_go(resource)
            raise trio.ClosedResourceError("the resource pool is closed")
        self._lent[id(resource)] = resource
        return resource

    def _put(self, resource: T, broken: bool) -> None:
        key = id(resource)
        if key not in self._lent:
            return  # taken out meanwhile
        del self._lent[key]
        if broken or key in self._marked:
            self._marked.discard(key)
            self._size -= 1
            self._discarded += 1
            self._let_go(resource)
            self._slot_freed()
        else:
            self._return(resource)

    def _return(self, resource: T) -> None:
        """A good resource is free: to the first waiter, else idle (or closed)."""
        if self._closed or self._broken(resource):
            if not self._closed:
                self._discarded += 1
            self._size -= 1
            self._let_go(resource)
            self._slot_freed()
            return
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter.resource = resource
            self._lent[id(resource)] = resource
            waiter.event.set()
            return
        self._idle.append((resource, trio.current_time()))
        self._wake.set()

    def _slot_freed(self) -> None:
        """``_size`` went down: the first waiter may create, or maintenance refills."""
        if self._closed:
            return
        if self._waiters and self._size < self._max_size:
            waiter = self._waiters.popleft()
            waiter.may_create = True
            self._size += 1
            waiter.event.set()
        else:
            self._wake.set()

    def _broken(self, resource: T) -> bool:
        if self._is_broken is None:
            return False
        try:
            return bool(self._is_broken(resource))
        except Exception:
            logger.exception("is_broken(%r) raised; discarding it", resource)
            return True

    # -- closing and maintenance --------------------------------------------------------

    def _let_go(self, resource: T) -> None:
        """Close *resource* in the pool's nursery (shielded, bounded)."""
        assert self._nursery is not None
        try:
            self._nursery.start_soon(self._close_one, resource, name="ResourcePool close")
        except RuntimeError:
            # Lent past the pool's block (a task outliving it): nothing can await
            # the close any more.
            logger.warning("pooled resource %r came back after its pool closed", resource)

    async def _close_one(self, resource: T) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(self._close_timeout) as scope:
            try:
                if self._close is not None:
                    done = self._close(resource)
                    if inspect.isawaitable(done):
                        await done
            except Exception:
                logger.exception("closing pooled resource %r failed", resource)
        if scope.cancelled_caught:
            logger.warning(
                "closing pooled resource %r took over %.1f s", resource, self._close_timeout
            )
        self._closed_count += 1

    async def _maintain(self) -> None:
        """Fill up to ``min_size``; close idle resources beyond it after ``max_idle_time``."""
        while not self._closed:
            self._wake = trio.Event()
            await self._fill()
            deadline = self._reap(trio.current_time())
            with trio.move_on_at(deadline):
                await self._wake.wait()

    async def _fill(self) -> None:
        while not self._closed and not self._waiters and self._size < self._min_size:
            self._size += 1
            try:
                resource = await self._create()
            except trio.ClosedResourceError:
                return
            except Exception:
                logger.exception("creating a pooled resource failed; retrying in 1 s")
                await trio.sleep(1.0)
                continue
            del self._lent[id(resource)]
            self._return(resource)

    def _reap(self, now: float) -> float:
        """Close expired idle resources; the time the next one expires."""
        while self._idle and self._size > self._min_size:
            resource, since = self._idle[0]
            if since + self._max_idle_time > now:
                return since + self._max_idle_time
            self._idle.popleft()
            self._size -= 1
            self._reaped += 1
            self._let_go(resource)
        return math.inf
