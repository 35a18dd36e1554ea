"""The one seam between Trio and asyncio: a dedicated asyncio thread and the ways across.

``livekit.rtc`` objects bind to an asyncio event loop when they are constructed and
silently stall when used from any other loop. So every such object (and later the
dev server's aiortc peer connections) is built and used on a single asyncio loop that
runs in its own thread, shared by everything in one ``trio.run``:

* :func:`open_bridge` gives Trio code access to that loop; the thread starts with
  the first user and is stopped and joined when the last one leaves. anyio owns
  the thread and the loop's life (``anyio.from_thread.start_blocking_portal``
  starts, runs and joins them); the bridge adds its ordered shutdown on top.
* :meth:`AsyncioBridge.run` / :meth:`AsyncioBridge.call` run code on the loop and
  wait for its result from Trio. A round trip is two cross-thread wake-ups: tens of
  µs on a fast idle host, a few hundred on a small VM (``bench/bench_bridge.py``).
* :class:`Handoff` carries items the other way (asyncio -> Trio), batched, without
  ever blocking the asyncio thread, into bounded Trio memory channels.
* :class:`TrioPortal` lets asyncio code await a Trio coroutine (an RPC handler)
  that runs in a nursery the Trio side chose.
* :func:`map_native_error` turns ``livekit.rtc`` exceptions into ours.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import itertools
import logging
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, Final, Generic, NoReturn, Self, TypeVar, TypeVarTuple, final

import anyio.from_thread
import attrs
import outcome
import trio

from ._exceptions import AsyncioCancelledError, ConnectError


def _let_native_threads_settle() -> None:
    """At exit, give livekit's native threads a moment after its own dispose.

    livekit 1.2.1's native threads can still call into Python just after
    ``livekit_ffi_dispose()`` returns; if the interpreter is finalizing by then the
    process aborts (exit 134, "panic in a function that cannot unwind"), in about
    3 % of runs after a room connect, plain asyncio included (measured: 4/150
    without this wait, 0/150 with it). Registered when this module is imported,
    before livekit initializes (lazily, on first use), so ``atexit`` runs it
    after livekit's dispose. Costs 0.2 s at exit, only in processes that used
    livekit.rtc.
    """
    ffi = sys.modules.get("livekit.rtc._ffi_client")
    if ffi is not None and getattr(ffi.FfiClient, "_instance", None) is not None:
        time.sleep(0.2)


atexit.register(_let_native_threads_settle)

__all__ = [
    "AsyncioBridge",
    "AsyncioCancelledError",
    "Handoff",
    "HandoffStatistics",
    "SubscriberStatistics",
    "TrioPortal",
    "map_native_error",
    "open_bridge",
]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

logger = logging.getLogger(__name__)

_THREAD_NAME: Final = "trio-lkagent-asyncio"
# Shutdown budget, all inside the shielded exit of the last ``open_bridge()``.
_CLEANUP_TIMEOUT: Final = 3.0  # registered cleanups (room disconnects, stream closes)
_LEFTOVER_TIMEOUT: Final = 2.0  # cancelled leftover asyncio tasks running their finally blocks
_EXECUTOR_TIMEOUT: Final = 1.0  # the loop's default executor, if anything used it
_STOP_TIMEOUT: Final = _CLEANUP_TIMEOUT + _LEFTOVER_TIMEOUT + _EXECUTOR_TIMEOUT + 2.0


def map_native_error(exc: BaseException) -> BaseException:
    """Translate an exception raised by ``livekit.rtc`` into the SDK's own type.

    This is the one place where native exception types are mapped;
    :meth:`AsyncioBridge.run` and :meth:`AsyncioBridge.call` apply it to everything
    they raise. ``livekit.rtc.ConnectError`` becomes
    :class:`~trio_lkagent._exceptions.ConnectError`; anything else is returned unchanged.

    Args:
        exc: The exception raised on the asyncio side.

    Returns:
        The exception to raise in Trio: *exc* itself, or a new exception whose
        ``__cause__`` is *exc* (so the native traceback stays visible).
    """
    rtc = sys.modules.get("livekit.rtc")  # not imported -> it cannot have raised
    if rtc is not None and isinstance(exc, rtc.ConnectError):
        mapped = ConnectError(f"could not connect to the room: {exc.message}")
        mapped.__cause__ = exc
        return mapped
    return exc


def _raise(exc: BaseException) -> NoReturn:
    # outcome.Error.unwrap() raises with the original traceback and breaks the
    # frame -> exception -> traceback -> frame cycle.
    outcome.Error(map_native_error(exc)).unwrap()


# --------------------------------------------------------------------------- Trio -> asyncio


@final
class _AsyncCall:
    """State of one :meth:`AsyncioBridge.run`, shared by the two threads."""

    __slots__ = ("args", "async_fn", "loop", "start_error", "task", "token", "trio_task")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        token: trio.lowlevel.TrioToken,
        async_fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
    ) -> None:
        self.loop = loop
        self.token = token
        self.async_fn = async_fn
        self.args = args
        self.trio_task = trio.lowlevel.current_task()
        self.task: asyncio.Future[Any] | None = None
        self.start_error: BaseException | None = None

    def start(self) -> None:  # asyncio thread
        try:
            awaitable = self.async_fn(*self.args)
            if asyncio.iscoroutine(awaitable):
                task: asyncio.Future[Any] = self.loop.create_task(awaitable)
            else:
                task = asyncio.ensure_future(awaitable, loop=self.loop)
        except BaseException as exc:  # a sync error in async_fn, or not an awaitable
            self.start_error = exc
            self.wake()
            return
        self.task = task
        task.add_done_callback(self.done)

    def done(self, _task: asyncio.Future[Any]) -> None:  # asyncio thread
        self.wake()

    def wake(self) -> None:  # asyncio thread
        self.token.run_sync_soon(trio.lowlevel.reschedule, self.trio_task, outcome.Value(None))

    def cancel(self) -> None:  # asyncio thread
        if self.task is not None:
            self.task.cancel()


@final
class _SyncCall:
    """State of one :meth:`AsyncioBridge.call`."""

    __slots__ = ("args", "fn", "token", "trio_task")

    def __init__(
        self,
        token: trio.lowlevel.TrioToken,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
    ) -> None:
        self.token = token
        self.fn = fn
        self.args = args
        self.trio_task = trio.lowlevel.current_task()

    def run(self) -> None:  # asyncio thread
        result = outcome.capture(self.fn, *self.args)
        # Wrapped in a Value so the outcome is unwrapped (and mapped) on the Trio side.
        self.token.run_sync_soon(trio.lowlevel.reschedule, self.trio_task, outcome.Value(result))


def _abort_failed(_raise_cancel: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED


@final
class AsyncioBridge:
    """The asyncio event loop (in its own thread) that owns every ``livekit.rtc`` object.

    Obtain it with :func:`open_bridge`; there is one per ``trio.run``, shared by all
    rooms, jobs and the dev server. Build native objects through :meth:`call` or
    inside coroutines given to :meth:`run`, never in Trio directly: they bind to the
    loop that is current when they are constructed.

    All methods must be called from the Trio thread unless their docstring says
    otherwise.
    """

    def __init__(
        self,
        portal_cm: contextlib.AbstractContextManager[anyio.from_thread.BlockingPortal],
        portal: anyio.from_thread.BlockingPortal,
        loop: asyncio.AbstractEventLoop,
        own_tasks: set[asyncio.Task[Any]],
    ) -> None:
        """Private: use :func:`open_bridge` (which starts it with :meth:`_start`)."""
        self._token = trio.lowlevel.current_trio_token()
        self._portal_cm = portal_cm
        self._portal = portal
        self._loop = loop
        #: The portal's own tasks, which the shutdown must not cancel.
        self._own_tasks = own_tasks
        self._closing = False
        self._cleanups: dict[int, tuple[Callable[..., Awaitable[object]], tuple[Any, ...]]] = {}
        self._cleanup_keys = itertools.count()

    @classmethod
    async def _start(cls) -> AsyncioBridge:
        """Start the loop thread: an anyio blocking portal on the asyncio backend.

        Entering the portal blocks until the thread's loop runs, so it is done
        in a worker thread (a few ms, once per bridge).
        """
        portal_cm = anyio.from_thread.start_blocking_portal("asyncio")

        def enter() -> tuple[
            anyio.from_thread.BlockingPortal, asyncio.AbstractEventLoop, set[asyncio.Task[Any]]
        ]:
            portal = portal_cm.__enter__()
            portal.call(_name_thread)  # (``name=`` needs a recent anyio)
            loop = portal.call(asyncio.get_running_loop)
            own_tasks = portal.call(_other_tasks)
            return portal, loop, own_tasks

        portal, loop, own_tasks = await trio.to_thread.run_sync(enter)
        return cls(portal_cm, portal, loop, own_tasks)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The asyncio loop, for ``loop=`` arguments and ``call_soon_threadsafe``."""
        return self._loop

    async def run(self, async_fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        """Run ``await async_fn(*args)`` as a task on the asyncio loop and return its result.

        Args:
            async_fn: A coroutine function (or any function returning an awaitable),
                called on the asyncio thread.
            *args: Positional arguments for *async_fn*; use :func:`functools.partial`
                for keyword arguments.

        Returns:
            What the coroutine returned.

        Raises:
            BaseException: Whatever the coroutine raised, with its own type and
                traceback, after :func:`map_native_error`.
            AsyncioCancelledError: The task was cancelled by asyncio code.
            trio.ClosedResourceError: The bridge has been shut down (or was shut
                down while the task ran).

        Cancellation:
            A checkpoint. If the Trio caller is cancelled, the asyncio task is
            cancelled and this waits (shielded) until it has really finished,
            finally blocks included, then raises :class:`trio.Cancelled`. If the
            task completed anyway, its result or exception is delivered instead and
            the cancellation arrives at the caller's next checkpoint.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        call = _AsyncCall(self._loop, self._token, async_fn, args)
        self._submit(call.start)
        raise_cancel: trio.lowlevel.RaiseCancelT | None = None

        def abort(raise_cancel_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            nonlocal raise_cancel
            raise_cancel = raise_cancel_
            try:
                self._loop.call_soon_threadsafe(call.cancel)
            except RuntimeError:  # loop closed: the task is already over
                pass
            return trio.lowlevel.Abort.FAILED

        await trio.lowlevel.wait_task_rescheduled(abort)
        if call.start_error is not None:
            _raise(call.start_error)
        task = call.task
        assert task is not None
        if task.cancelled():
            if raise_cancel is not None:
                raise_cancel()
            if self._closing:
                raise trio.ClosedResourceError("the asyncio bridge was shut down during the call")
            raise AsyncioCancelledError(f"asyncio cancelled the task running {async_fn!r}")
        exc = task.exception()
        if exc is not None:
            _raise(exc)
        result: T = task.result()
        return result

    async def call(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
        """Run the synchronous ``fn(*args)`` on the asyncio thread and return its result.

        Use it to construct native objects (``rtc.Room()``, ``rtc.AudioSource(...)``)
        so they bind to the bridge's loop, and for any non-blocking call that must
        happen on the loop thread. *fn* must not block: it stalls the whole loop.

        Args:
            fn: A synchronous function, called on the asyncio thread.
            *args: Positional arguments for *fn*.

        Returns:
            What *fn* returned.

        Raises:
            BaseException: Whatever *fn* raised, after :func:`map_native_error`.
            trio.ClosedResourceError: The bridge has been shut down.

        Cancellation:
            A checkpoint: cancellation is checked on entry. Once *fn* is submitted it
            runs to completion (it is short) and its result is returned; a pending
            cancellation is delivered at the caller's next checkpoint.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        call = _SyncCall(self._token, fn, args)
        self._submit(call.run)
        result: outcome.Outcome[T] = await trio.lowlevel.wait_task_rescheduled(_abort_failed)
        if isinstance(result, outcome.Error):
            _raise(result.error)
        return result.unwrap()

    def add_cleanup(
        self, async_fn: Callable[[*Ts], Awaitable[object]], *args: *Ts
    ) -> Callable[[], None]:
        """Register ``await async_fn(*args)`` to run on the loop when the bridge shuts down.

        A safety net for native objects whose owner may not get to close them
        (disconnect a room, close a stream or source): the owner registers the
        close when it creates the object and calls the returned function once it
        has closed it itself. Cleanups run on the asyncio loop in reverse order of
        registration (like an exit stack), within a shared deadline of a few
        seconds; a failing cleanup is logged and the others still run.

        Safe to call from any thread.

        Args:
            async_fn: Coroutine function run on the asyncio loop at shutdown.
            *args: Positional arguments for *async_fn*.

        Returns:
            A function that unregisters the cleanup (idempotent, any thread).
        """
        key = next(self._cleanup_keys)  # atomic under the GIL
        self._cleanups[key] = (async_fn, args)

        def remove() -> None:
            self._cleanups.pop(key, None)

        return remove

    def _submit(self, callback: Callable[[], object]) -> None:
        if self._closing:
            raise trio.ClosedResourceError("the asyncio bridge has been shut down")
        try:
            self._loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop is closed: its thread crashed
            raise trio.ClosedResourceError("the asyncio bridge loop is closed") from None

    # ----------------------------------------------------------------- lifetime

    async def _finalize(self) -> None:  # asyncio thread, the portal's last call
        loop = self._loop
        this_task = asyncio.current_task()
        assert this_task is not None
        spared = self._own_tasks | {this_task}
        cleanups = list(self._cleanups.values())
        self._cleanups.clear()
        try:
            async with asyncio.timeout(_CLEANUP_TIMEOUT):
                for async_fn, args in reversed(cleanups):
                    try:
                        await async_fn(*args)
                    except asyncio.CancelledError:
                        if this_task.cancelling():  # our deadline: stop cleaning up
                            raise
                        logger.warning("bridge cleanup %r was cancelled", async_fn)
                    except Exception:
                        logger.warning("bridge cleanup %r failed", async_fn, exc_info=True)
        except TimeoutError:
            logger.warning("bridge cleanups did not finish within %.1f s", _CLEANUP_TIMEOUT)
        # Cancel what is left and let finally blocks run; they may spawn more tasks.
        for _ in range(3):
            leftovers = [t for t in asyncio.all_tasks(loop) if t not in spared]
            if not leftovers:
                break
            for task in leftovers:
                task.cancel()
            done, pending = await asyncio.wait(leftovers, timeout=_LEFTOVER_TIMEOUT)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved: no "exception never retrieved" later
            if pending:
                logger.warning("%d asyncio tasks ignored cancellation at shutdown", len(pending))
                break
        await loop.shutdown_asyncgens()
        try:
            async with asyncio.timeout(_EXECUTOR_TIMEOUT):
                await loop.shutdown_default_executor()
        except TimeoutError:
            logger.warning("the asyncio default executor did not shut down in time")
        _detach_native_subscribers(loop)

    def _stop(self) -> None:  # a Trio worker thread
        """Finalize on the loop, then stop the portal (its loop closes) and join the thread."""
        try:
            self._portal.call(self._finalize)
        except BaseException:
            logger.exception("asyncio bridge loop crashed")
        self._portal_cm.__exit__(None, None, None)

    async def _aclose(self) -> None:
        """Stop the loop in order and join the thread (shielded, bounded)."""
        self._closing = True
        with trio.CancelScope(shield=True):
            with trio.move_on_after(_STOP_TIMEOUT) as waited:
                # Abandoned (left to finish as a daemon) only if it overruns.
                await trio.to_thread.run_sync(self._stop, abandon_on_cancel=True)
            if waited.cancelled_caught:
                logger.warning("asyncio bridge thread did not stop within %.1f s", _STOP_TIMEOUT)


def _name_thread() -> None:  # asyncio thread
    threading.current_thread().name = _THREAD_NAME


def _other_tasks() -> set[asyncio.Task[Any]]:  # asyncio thread
    """The tasks running now, except the caller (the portal's own, at start)."""
    return asyncio.all_tasks() - {asyncio.current_task()}


def _detach_native_subscribers(loop: asyncio.AbstractEventLoop) -> None:
    """Unsubscribe native event queues still bound to *loop* before it closes.

    A ``livekit.rtc`` object left open (a stream nobody closed) keeps a
    subscription that would log "error putting to queue" on every native event once
    the loop is closed. Uses livekit's private ``FfiQueue._subscribers``: livekit is
    pinned to a minor version, and a missing attribute just skips this.
    """
    ffi = sys.modules.get("livekit.rtc._ffi_client")
    client = getattr(getattr(ffi, "FfiClient", None), "_instance", None)
    queue = getattr(client, "queue", None)
    subscribers = getattr(queue, "_subscribers", None)
    if queue is None or subscribers is None:
        return
    stale = [sub[0] for sub in list(subscribers) if sub[1] is loop]
    for q in stale:
        queue.unsubscribe(q)
    if stale:
        logger.debug("detached %d native subscriptions left on the bridge loop", len(stale))


@final
class _Shared:
    __slots__ = ("bridge", "ready", "users")

    def __init__(self) -> None:
        self.bridge: AsyncioBridge | None = None
        self.ready = trio.Event()  # set once the bridge started (or failed to)
        self.users = 0


_SHARED: trio.lowlevel.RunVar[_Shared | None] = trio.lowlevel.RunVar(
    "trio_lkagent_bridge", default=None
)


@asynccontextmanager
async def open_bridge() -> AsyncIterator[AsyncioBridge]:
    """Use the asyncio bridge of the current ``trio.run``, starting it if needed.

    There is one bridge per ``trio.run``, reference-counted: the first
    ``async with open_bridge()`` starts the loop thread, nested and concurrent users
    share it, and the last one to leave shuts it down, in order: registered cleanups
    (:meth:`AsyncioBridge.add_cleanup`) run on the loop, leftover asyncio tasks are
    cancelled and their finally blocks run, async generators are finalised, the loop
    is stopped and closed, and the thread is joined. Nothing of the bridge runs or
    logs after that.

    Yields:
        The shared :class:`AsyncioBridge`.

    Cancellation:
        Entering is a checkpoint. The shutdown on exit is shielded and bounded (a
        few seconds): a loop thread stuck in a blocking call is logged and left
        behind (as a daemon thread) rather than hanging Trio.
    """
    await trio.lowlevel.checkpoint()
    shared = _SHARED.get()
    starting = shared is None
    if shared is None:
        shared = _Shared()
        _SHARED.set(shared)  # concurrent users wait for this start
    # Counted before any wait: the bridge is not closed under a user waiting for its start.
    shared.users += 1
    try:
        if starting:
            try:
                shared.bridge = await AsyncioBridge._start()
            finally:
                if shared.bridge is None and _SHARED.get() is shared:
                    _SHARED.set(None)
                shared.ready.set()
        else:
            await shared.ready.wait()
        if shared.bridge is None:
            raise trio.BrokenResourceError("the asyncio bridge failed to start")
        yield shared.bridge
    finally:
        shared.users -= 1
        if shared.users == 0 and shared.bridge is not None:
            # A user arriving during the shutdown gets a fresh bridge.
            if _SHARED.get() is shared:
                _SHARED.set(None)
            await shared.bridge._aclose()


# --------------------------------------------------------------------------- asyncio -> Trio


@attrs.frozen
class SubscriberStatistics:
    """What one :class:`Handoff` subscriber received.

    Attributes:
        delivered: Items put into the subscriber's channel.
        dropped: Items dropped because its channel was full.
        max_buffer_size: The size of its channel's buffer.
        active: False once its channel was closed; nothing is delivered after that.
    """

    delivered: int
    dropped: int
    max_buffer_size: int
    active: bool


@attrs.frozen
class HandoffStatistics:
    """A snapshot of a :class:`Handoff`'s counters.

    Attributes:
        put: Items given to :meth:`Handoff.put` while open (approximate if several
            threads put concurrently; the deliveries themselves are exact).
        pending: Items waiting for the next batch delivery.
        batches: Batch deliveries run so far (``put / batches`` is the mean batch).
        subscribers: One entry per subscriber, in subscription order, including
            the ones that stopped.
    """

    put: int
    pending: int
    batches: int
    subscribers: tuple[SubscriberStatistics, ...]


@final
class _Subscriber(Generic[T]):
    __slots__ = ("active", "delivered", "dropped", "max_buffer_size", "send")

    def __init__(self, send: trio.MemorySendChannel[T], max_buffer_size: int) -> None:
        self.send = send
        self.max_buffer_size = max_buffer_size
        self.delivered = 0
        self.dropped = 0
        self.active = True

    def statistics(self) -> SubscriberStatistics:
        return SubscriberStatistics(
            delivered=self.delivered,
            dropped=self.dropped,
            max_buffer_size=self.max_buffer_size,
            active=self.active,
        )


@final
class Handoff(Generic[T]):
    """Deliver items from the asyncio thread (or any thread) to Trio, fanned out.

    One source, any number of subscribers, each taking every item through its own
    bounded Trio memory channel. :meth:`put` never blocks and never waits for Trio:
    it appends to a deque and, once per batch, schedules a drain with
    ``TrioToken.run_sync_soon``; the drain runs in the Trio thread and hands the
    batch to each subscriber (``send_nowait`` for the first item and for receivers
    already waiting, one append for the rest: see :func:`_deliver`).

    Buffer policy: between the threads the deque is unbounded but emptied every
    time the Trio scheduler runs (one drain per batch, however many items). Each
    subscriber's channel holds at most ``max_buffer_size`` items; when it is full,
    new items are dropped *for that subscriber only* and counted in
    :meth:`statistics`, so a slow consumer loses items and never slows the others
    or the producer. A subscriber whose receive channel is closed is removed.
    Items reach every subscriber in the order they were put.

    Items put before anyone subscribed are lost, unless the hand-off was created
    with a *backlog*: then up to that many of them are held and handed to the first
    subscriber, ahead of everything later. That closes the gap between creating a
    source (joining a room) and its owner's first :meth:`subscribe`.

    Create it in Trio (it captures the current run); typical use is a room's event
    stream::

        handoff = Handoff[RoomEvent](backlog=256)
        room.on("participant_connected", handoff.put)   # on the asyncio thread
        events = handoff.subscribe(256)                  # one per consumer
    """

    def __init__(self, *, backlog: int = 0) -> None:
        """Create a hand-off into the current ``trio.run``; it has no subscribers yet.

        Args:
            backlog: Items held for the first subscriber while there is none yet
                (older ones are kept, newer ones dropped and counted as dropped
                for that subscriber). ``0``: nothing is held.

        Raises:
            ValueError: *backlog* is negative.
        """
        if backlog < 0:
            raise ValueError("backlog must be >= 0")
        self._token = trio.lowlevel.current_trio_token()
        self._buffer: collections.deque[T] = collections.deque()
        self._scheduled = False
        self._open = True  # read by put() in other threads
        self._subscribers: tuple[_Subscriber[T], ...] = ()
        self._all_subscribers: list[_Subscriber[T]] = []
        self._put = 0
        self._batches = 0
        # Items held for the first subscriber (None once it came, or without a backlog).
        self._backlog: list[T] | None = [] if backlog else None
        self._backlog_size = backlog
        self._backlog_dropped = 0

    def put(self, item: T) -> None:
        """Queue *item* for every subscriber; never blocks, never raises.

        Safe to call from any thread, typically from ``livekit.rtc`` callbacks on the
        asyncio thread. After :meth:`close`, or once the ``trio.run`` has finished,
        items are silently discarded.

        Args:
            item: The item to deliver.
        """
        if not self._open:
            return
        self._put += 1
        self._buffer.append(item)
        if not self._scheduled:
            self._scheduled = True
            try:
                self._token.run_sync_soon(self._drain)
            except trio.RunFinishedError:
                self._open = False
                self._buffer.clear()

    def subscribe(self, max_buffer_size: int) -> trio.MemoryReceiveChannel[T]:
        """Add a subscriber that receives every item put from now on.

        The first subscriber of a hand-off made with a *backlog* also receives,
        first, the items held for it.

        Args:
            max_buffer_size: Items the subscriber's channel holds before further
                items are dropped for it (``0``: only delivered to a task already
                waiting in ``receive()``).

        Returns:
            The receive side of the subscriber's channel. Close it to unsubscribe;
            it ends (``EndOfChannel``) when the hand-off is closed.

        Raises:
            trio.ClosedResourceError: The hand-off was closed.
            ValueError: *max_buffer_size* is negative.
        """
        if not self._open:
            raise trio.ClosedResourceError("the hand-off is closed")
        if max_buffer_size < 0:
            raise ValueError("max_buffer_size must be >= 0")
        send, receive = trio.open_memory_channel[T](max_buffer_size)
        subscriber = _Subscriber(send, max_buffer_size)
        self._subscribers = (*self._subscribers, subscriber)
        self._all_subscribers.append(subscriber)
        held, self._backlog = self._backlog, None
        if held is not None:  # the first subscriber: hand it what was held for it
            subscriber.dropped += self._backlog_dropped
            if held:
                _deliver(subscriber, held)
        return receive

    def close(self) -> None:
        """Deliver what is pending, then end every subscriber's channel.

        Idempotent. Subscribers see ``trio.EndOfChannel`` once they have received
        what was delivered; later :meth:`put` calls are discarded.
        """
        if not self._open:
            return
        self._drain()
        self._open = False
        for subscriber in self._subscribers:
            subscriber.active = False
            subscriber.send.close()
        self._subscribers = ()

    def __enter__(self) -> Self:
        """Return the hand-off; :meth:`close` it on exit."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the hand-off."""
        self.close()

    def statistics(self) -> HandoffStatistics:
        """Return a snapshot of the counters (call it from Trio)."""
        return HandoffStatistics(
            put=self._put,
            pending=len(self._buffer),
            batches=self._batches,
            subscribers=tuple(s.statistics() for s in self._all_subscribers),
        )

    def _drain(self) -> None:  # Trio thread, via run_sync_soon: must never raise
        # Reset before taking the batch: a put() racing with us schedules a new drain.
        self._scheduled = False
        buffer = self._buffer
        count = len(buffer)  # only this batch, so a busy producer cannot starve Trio
        if not count:
            return
        self._batches += 1
        popleft = buffer.popleft
        batch = [popleft() for _ in range(count)]
        subscribers = self._subscribers
        if not subscribers:
            held = self._backlog
            if held is not None:
                room = self._backlog_size - len(held)
                held.extend(batch[:room])
                self._backlog_dropped += max(0, count - room)
            return
        for subscriber in subscribers:
            if not _deliver(subscriber, batch):
                self._remove(subscriber)

    def _remove(self, subscriber: _Subscriber[T]) -> None:
        subscriber.active = False
        subscriber.send.close()
        self._subscribers = tuple(s for s in self._subscribers if s is not subscriber)


def _probe_bulk_append() -> bool:
    """Whether trio's memory channels have the internals :func:`_deliver` appends to.

    ``send_nowait`` costs ~0.4 µs an item; appending a whole batch to the channel's
    buffer deque costs ~0.02 µs. trio exposes no bulk send, so this checks, once, that
    the private layout is the one we know (``MemorySendChannel._state`` with a
    ``data`` deque, ``max_buffer_size``, ``receive_tasks``) and that items appended
    there come out of ``receive_nowait`` and ``statistics()``. Anything else: the
    plain ``send_nowait`` path is used.
    """
    try:
        send, receive = trio.open_memory_channel[int](4)
        state = send._state
        if not (
            isinstance(state.data, collections.deque)
            and isinstance(state.receive_tasks, dict)
            and state.max_buffer_size == 4
        ):
            return False
        send.send_nowait(0)
        state.data.extend((1, 2))
        ok = receive.statistics().current_buffer_used == 3 and [
            receive.receive_nowait() for _ in range(3)
        ] == [0, 1, 2]
        send.close()
        receive.close()
        return ok
    except Exception:  # a different trio: fall back
        return False


_BULK_APPEND: Final = _probe_bulk_append()


def _deliver(subscriber: _Subscriber[Any], batch: list[Any]) -> bool:
    """Put *batch* into one subscriber's channel without blocking; False if it is closed.

    Items that do not fit are dropped (newest first) and counted. Trio thread only.
    """
    send = subscriber.send
    count = len(batch)
    sent = 0
    try:
        if _BULK_APPEND:
            state = send._state
            # send_nowait for the first item (it checks for a closed channel) and
            # for every receiver already waiting (it wakes them); then, with
            # nobody waiting, append what fits in one go.
            send.send_nowait(batch[0])
            sent = 1
            while sent < count and state.receive_tasks:
                send.send_nowait(batch[sent])
                sent += 1
            data = state.data
            room = state.max_buffer_size - len(data)
            if sent < count and room > 0:
                end = count if room >= count - sent else sent + int(room)
                data.extend(batch[sent:end])
                sent = end
                if len(data) > getattr(state, "peak_buffer_used", len(data)):
                    state.peak_buffer_used = len(data)
        else:
            send_nowait = send.send_nowait
            for item in batch:
                send_nowait(item)
                sent += 1
    except trio.WouldBlock:
        # Nothing can receive while we run, so the rest would not fit either.
        pass
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        subscriber.delivered += sent
        return False
    subscriber.delivered += sent
    subscriber.dropped += count - sent
    return True


@final
class _PortalCall(Generic[T]):
    """State of one :meth:`TrioPortal.run`, shared by the two threads."""

    __slots__ = ("args", "async_fn", "finished", "finished_waiter", "future", "loop", "scope")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        async_fn: Callable[..., Awaitable[T]],
        args: tuple[Any, ...],
    ) -> None:
        self.loop = loop
        self.async_fn = async_fn
        self.args = args
        self.future: asyncio.Future[T] = loop.create_future()
        self.scope = trio.CancelScope()
        self.finished = False  # asyncio thread only
        self.finished_waiter: asyncio.Future[None] | None = None

    def settle_threadsafe(self, result: outcome.Outcome[T] | None) -> None:  # any thread
        try:
            self.loop.call_soon_threadsafe(self._settle, result)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass

    def _settle(self, result: outcome.Outcome[T] | None) -> None:  # asyncio thread
        self.finished = True
        if result is not None and not self.future.done():
            if isinstance(result, outcome.Error):
                self.future.set_exception(result.error)
            else:
                self.future.set_result(result.unwrap())
        if self.finished_waiter is not None and not self.finished_waiter.done():
            self.finished_waiter.set_result(None)


@final
class TrioPortal:
    """Let asyncio code await Trio coroutines that run in a Trio nursery.

    For ``livekit.rtc`` callbacks that need a result from Trio code, such as an RPC
    method handler written as a Trio coroutine. Create it in Trio with the nursery
    the calls should run in (its lifetime bounds theirs); then, on the asyncio
    side, ``await portal.run(handler, data)``.
    """

    def __init__(self, nursery: trio.Nursery) -> None:
        """Create a portal into *nursery*; call this from Trio.

        Args:
            nursery: Where the Trio side of each call runs. Once it is closed, calls
                fail with :class:`trio.BrokenResourceError`.
        """
        self._nursery = nursery
        self._token = trio.lowlevel.current_trio_token()

    async def run(self, async_fn: Callable[[*Ts], Awaitable[T]], *args: *Ts) -> T:
        """Run ``await async_fn(*args)`` as a Trio task; await this on an asyncio loop.

        Args:
            async_fn: A Trio coroutine function, started in the portal's nursery
                with its own cancel scope.
            *args: Positional arguments for *async_fn*.

        Returns:
            What the Trio coroutine returned.

        Raises:
            Exception: Whatever the Trio coroutine raised (it is delivered here,
                not to the nursery).
            trio.BrokenResourceError: The ``trio.run`` has finished, the nursery is
                closed, or the nursery was cancelled while the call ran.

        Cancellation:
            Cancelling the awaiting asyncio task cancels the Trio task's scope, waits
            until the Trio task has finished, then raises
            :class:`asyncio.CancelledError`.
        """
        loop = asyncio.get_running_loop()
        call: _PortalCall[T] = _PortalCall(loop, async_fn, args)
        try:
            self._token.run_sync_soon(self._spawn, call)
        except trio.RunFinishedError:
            raise trio.BrokenResourceError("the Trio run has finished") from None
        try:
            return await call.future
        except asyncio.CancelledError:
            if not call.finished:
                await self._cancel_and_wait(call)
            raise

    async def _cancel_and_wait(self, call: _PortalCall[T]) -> None:  # asyncio thread
        waiter = call.finished_waiter = call.loop.create_future()
        try:
            self._token.run_sync_soon(call.scope.cancel)
        except trio.RunFinishedError:
            return
        while not waiter.done():
            try:
                await asyncio.shield(waiter)
            except asyncio.CancelledError:
                continue  # already cancelling: keep waiting for the Trio task

    def _spawn(self, call: _PortalCall[T]) -> None:  # Trio thread, via run_sync_soon
        try:
            self._nursery.start_soon(self._runner, call)
        except RuntimeError:  # "Nursery is closed to new arrivals"
            call.settle_threadsafe(
                outcome.Error(trio.BrokenResourceError("the Trio nursery is closed"))
            )

    @staticmethod
    async def _runner(call: _PortalCall[T]) -> None:  # Trio task
        try:
            with call.scope:
                value = await call.async_fn(*call.args)
                call.settle_threadsafe(outcome.Value(value))
                return
        except Exception as exc:
            call.settle_threadsafe(outcome.Error(exc))
            return
        except BaseException:  # cancelled from outside (nursery shutting down), KI
            call.settle_threadsafe(
                outcome.Error(trio.BrokenResourceError("the Trio nursery was cancelled"))
            )
            raise
        # Our own scope absorbed the cancellation: the asyncio waiter gave up.
        call.settle_threadsafe(None)
