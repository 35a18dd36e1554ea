"""EventProcessor: filters, per-type handlers, batches and a bounded history of events."""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio

if TYPE_CHECKING:
    from .._room import Room

__all__ = [
    "BatchProcessor",
    "EventFilter",
    "EventProcessor",
    "EventProcessorStatistics",
    "RecordedEvent",
    "open_event_processor",
]

logger = logging.getLogger("trio_lkagent.coordination")

E = TypeVar("E")

#: ``filter(event) -> bool``: False drops the event before handlers, batches and history.
EventFilter = Callable[[Any], bool]


@attrs.frozen
class RecordedEvent:
    """An event in the history, with the time it was processed."""

    at: float
    event: Any


@attrs.frozen
class EventProcessorStatistics:
    """Counters from :meth:`EventProcessor.statistics`.

    Attributes:
        received: Events submitted.
        filtered: Dropped by a filter.
        handled: Handler calls that returned.
        handler_errors: Handler and batch calls that raised (logged).
        batches: Batches delivered.
        dropped: Events refused because the queue was full (``submit_nowait``).
        pending: Events waiting in the queue now.
        last_lag: Seconds between the last event's submission and its processing.
        max_lag: The largest such lag so far.
        history: Events held in the history now.
    """

    received: int
    filtered: int
    handled: int
    handler_errors: int
    batches: int
    dropped: int
    pending: int
    last_lag: float
    max_lag: float
    history: int


class BatchProcessor:
    """Collects events and hands them over in lists: every *max_events*, or *max_wait* s.

    Made by :meth:`EventProcessor.add_batch_processor`; a batch is delivered when it
    holds *max_events* events or its first event is *max_wait* seconds old,
    whichever comes first (the timed flush needs :meth:`EventProcessor.run`).
    """

    def __init__(
        self,
        handler: Callable[[list[Any]], Awaitable[None]],
        *,
        max_events: int,
        max_wait: float,
        types: tuple[type, ...] | None,
    ) -> None:
        if max_events < 1:
            raise ValueError(f"max_events must be >= 1, got {max_events}")
        if not max_wait > 0:
            raise ValueError(f"max_wait must be > 0 seconds, got {max_wait}")
        self.handler = handler
        self.max_events = max_events
        self.max_wait = max_wait
        self.types = types
        self._buffer: list[Any] = []
        self._deadline = math.inf
        self._lock = trio.Lock()

    @property
    def pending(self) -> int:
        """Events collected, not delivered yet."""
        return len(self._buffer)

    def _wants(self, event: Any) -> bool:
        return self.types is None or isinstance(event, self.types)


class EventProcessor:
    """Processes events through filters, per-type handlers, batch processors and a history.

    Seed 001's ``ParticipantEventProcessor``. Events are submitted
    (:meth:`submit`, :meth:`submit_nowait`, or from a room with
    :func:`open_event_processor`) into a bounded queue and processed one at a
    time, in order, by :meth:`run` (or by :meth:`process_pending`, e.g. in
    tests): filters first (all must pass), then each handler whose type matches
    (``isinstance``), then the batch processors, then the history. A handler that
    raises is logged and counted, and processing goes on.

    Args:
        max_pending: Size of the queue; :meth:`submit` waits when it is full,
            :meth:`submit_nowait` raises ``trio.WouldBlock`` (counted as dropped).
        history_size: Events kept in the history (oldest dropped first).
        history_max_age: Also drop history older than this many seconds (None: no limit).
        clock: Where history and lag times come from (default
            ``trio.current_time``); batch deadlines always use Trio's clock.
    """

    def __init__(
        self,
        *,
        max_pending: int = 1000,
        history_size: int = 1000,
        history_max_age: float | None = None,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        if history_size < 0:
            raise ValueError(f"history_size must be >= 0, got {history_size}")
        self._clock = clock
        self._send, self._receive = trio.open_memory_channel[tuple[float, Any]](max_pending)
        self._filters: list[EventFilter] = []
        self._handlers: list[tuple[type, Callable[[Any], Awaitable[None]]]] = []
        self._batchers: list[BatchProcessor] = []
        self._history: collections.deque[RecordedEvent] = collections.deque(maxlen=history_size)
        self._history_max_age = history_max_age
        self._wake_timer = trio.Event()
        self._received = self._filtered = self._handled = self._errors = 0
        self._batches = self._dropped = 0
        self._last_lag = self._max_lag = 0.0

    # ------------------------------------------------------------------ configuring

    def add_filter(self, predicate: EventFilter) -> None:
        """Drop events for which ``predicate(event)`` is false."""
        self._filters.append(predicate)

    def on(self, event_type: type[E], handler: Callable[[E], Awaitable[None]]) -> None:
        """Await ``handler(event)`` for every event that is an instance of *event_type*."""
        self._handlers.append((event_type, handler))

    def add_batch_processor(
        self,
        handler: Callable[[list[Any]], Awaitable[None]],
        *,
        max_events: int = 10,
        max_wait: float = 1.0,
        types: Sequence[type] | None = None,
    ) -> BatchProcessor:
        """Deliver events to ``await handler(batch)`` in lists (flush on N events or T s).

        Args:
            handler: Receives each batch, oldest event first.
            max_events: Flush when this many are collected.
            max_wait: Flush when the oldest collected is this many seconds old.
            types: Only events of these types (default: every event that passed).
        """
        batcher = BatchProcessor(
            handler,
            max_events=max_events,
            max_wait=max_wait,
            types=tuple(types) if types is not None else None,
        )
        self._batchers.append(batcher)
        return batcher

    # ------------------------------------------------------------------ feeding

    async def submit(self, event: Any) -> None:
        """Queue *event*; waits while the queue is full."""
        self._received += 1
        await self._send.send((self._clock(), event))

    def submit_nowait(self, event: Any) -> None:
        """Queue *event* now.

        Raises:
            trio.WouldBlock: the queue is full (the event is counted as dropped).
        """
        self._received += 1
        try:
            self._send.send_nowait((self._clock(), event))
        except trio.WouldBlock:
            self._dropped += 1
            raise

    async def process_pending(self, *, flush: bool = False) -> int:
        """Process the events queued now, in this task; returns how many.

        Args:
            flush: Also deliver partly filled batches (as :meth:`flush` does).
        """
        count = 0
        while True:
            try:
                submitted, event = self._receive.receive_nowait()
            except trio.WouldBlock:
                break
            await self._process(submitted, event)
            count += 1
        if flush:
            await self.flush()
        return count

    async def flush(self) -> None:
        """Deliver every batch processor's collected events now."""
        for batcher in self._batchers:
            await self._flush(batcher)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Process queued events and flush timed batches, until cancelled.

        Cancellation:
            Events still queued stay queued (:meth:`process_pending` can take them).
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._batch_timer)
            task_status.started()
            while True:
                submitted, event = await self._receive.receive()
                await self._process(submitted, event)

    # ------------------------------------------------------------------ queries

    def history(
        self,
        event_type: type | tuple[type, ...] | None = None,
        *,
        since: float | None = None,
        limit: int | None = None,
    ) -> list[RecordedEvent]:
        """Processed events (that passed the filters), oldest first.

        Args:
            event_type: Only instances of this type (or these types).
            since: Only those processed at or after this time (the processor's clock).
            limit: Only the latest *limit* of them.
        """
        self._expire_history()
        found = [
            r
            for r in self._history
            if (event_type is None or isinstance(r.event, event_type))
            and (since is None or r.at >= since)
        ]
        return found[-limit:] if limit is not None else found

    def statistics(self) -> EventProcessorStatistics:
        """Counters, a frozen snapshot."""
        return EventProcessorStatistics(
            received=self._received,
            filtered=self._filtered,
            handled=self._handled,
            handler_errors=self._errors,
            batches=self._batches,
            dropped=self._dropped,
            pending=self._receive.statistics().current_buffer_used,
            last_lag=self._last_lag,
            max_lag=self._max_lag,
            history=len(self._history),
        )

    # ------------------------------------------------------------------ internals

    async def _process(self, submitted: float, event: Any) -> None:
        now = self._clock()
        self._last_lag = now - submitted
        self._max_lag = max(self._max_lag, self._last_lag)
        for predicate in self._filters:
            try:
                keep = predicate(event)
            except Exception:
                self._errors += 1
                logger.exception("event filter %r failed; dropping the event", predicate)
                keep = False
            if not keep:
                self._filtered += 1
                return
        for event_type, handler in list(self._handlers):
            if isinstance(event, event_type):
                try:
                    await handler(event)
                except Exception:
                    self._errors += 1
                    logger.exception("event handler %r failed", handler)
                else:
                    self._handled += 1
        for batcher in self._batchers:
            if batcher._wants(event):
                if not batcher._buffer:
                    batcher._deadline = trio.current_time() + batcher.max_wait
                    self._wake_timer.set()
                batcher._buffer.append(event)
                if len(batcher._buffer) >= batcher.max_events:
                    await self._flush(batcher)
        if self._history.maxlen != 0:
            self._history.append(RecordedEvent(now, event))
            self._expire_history()

    def _expire_history(self) -> None:
        if self._history_max_age is None:
            return
        oldest = self._clock() - self._history_max_age
        while self._history and self._history[0].at < oldest:
            self._history.popleft()

    async def _flush(self, batcher: BatchProcessor) -> None:
        async with batcher._lock:
            batch, batcher._buffer = batcher._buffer, []
            batcher._deadline = math.inf
            if not batch:
                return
            self._batches += 1
            try:
                await batcher.handler(batch)
            except Exception:
                self._errors += 1
                logger.exception("batch processor %r failed", batcher.handler)

    async def _batch_timer(self) -> None:
        while True:
            deadline = min((b._deadline for b in self._batchers), default=math.inf)
            with trio.move_on_at(deadline):
                await self._wake_timer.wait()
                self._wake_timer = trio.Event()
                continue
            now = trio.current_time()
            for batcher in self._batchers:
                if batcher._deadline <= now:
                    await self._flush(batcher)


@asynccontextmanager
async def open_event_processor(
    room: Room | None = None, *, processor: EventProcessor | None = None, **options: Any
) -> AsyncIterator[EventProcessor]:
    """An :class:`EventProcessor` running in a task this block owns, fed from *room* if given.

    Keyword arguments are those of :class:`EventProcessor`; or pass a configured
    *processor* (then its filters and handlers see the room's first events too).
    On exit, partly filled batches are delivered (shielded, bounded to 1 s) and
    the tasks stop.
    """
    if processor is None:
        processor = EventProcessor(**options)
    elif options:
        raise TypeError("give a processor or its options, not both")
    async with trio.open_nursery() as nursery:
        await nursery.start(processor.run)
        if room is not None:
            events = room.events()

            async def feed() -> None:
                with events:
                    async for event in events:
                        await processor.submit(event)

            nursery.start_soon(feed)
        try:
            yield processor
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await processor.flush()
