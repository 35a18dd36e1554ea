"""The worker's side of resilience: what ``Worker`` calls at its hooks.

One :class:`WorkerResilience` per serving worker owns the sampler, the
worker's :class:`ResourceMonitor`, the limiter, the recovery policy and the
checkpoint store, and runs their tasks in the worker's root nursery
(:meth:`run`, ended when the worker stops). The worker calls into it at a few
points only: admission (:meth:`refusal`), the periodic load report
(:meth:`update_load`), the job runner (:meth:`run_entrypoint`), the socket
(:meth:`received`, :meth:`sent`) and :meth:`statistics_fields`.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from .._exceptions import ConfigurationError
from .._options import JobType
from ._checkpoint import Checkpoint, CheckpointStore, MemoryCheckpointStore, checkpoint_scope
from ._checkpoint import open_checkpoint_store as _store_from_url
from ._limits import ResourceLimiter
from ._load import CustomLoadCalculator, LoadCalculator
from ._monitor import ResourceMonitor, count_trio_tasks
from ._recovery import DefaultRecoveryHandler, FailedJob, RecoveryAction, RecoveryHandler
from ._sampler import ResourceSample, ResourceSampler

if TYPE_CHECKING:
    from livekit.protocol import agent as agent_pb

    from .._job import JobContext
    from .._worker import Worker

__all__ = ["LOAD_HISTORY", "WorkerResilience"]

logger = logging.getLogger("trio_lkagent.resilience")

#: Load values kept in ``WorkerStatistics.load_history``.
LOAD_HISTORY = 60
_DEFAULT_BACKOFF = DefaultRecoveryHandler()


class WorkerResilience:
    """Resilience state and tasks of one worker (internal; see the module docstring)."""

    def __init__(self, worker: Worker) -> None:
        opts = worker.options
        self._worker = worker
        if opts.load_calculator is not None and opts.load_fn is not None:
            raise ConfigurationError("give load_calculator or load_fn, not both")
        self.calculator: LoadCalculator | None = opts.load_calculator or (
            CustomLoadCalculator(opts.load_fn) if opts.load_fn is not None else None
        )
        self.limiter = ResourceLimiter(opts.resource_limits) if opts.resource_limits else None
        self.recovery: RecoveryHandler | None = opts.recovery
        self.monitor = ResourceMonitor(
            thresholds=opts.resource_thresholds, jobs=lambda: worker._state.running
        )
        store = opts.checkpoint_store
        self._owns_store = not isinstance(store, CheckpointStore)
        if isinstance(store, str) and store:
            self.store: CheckpointStore = _store_from_url(store)
        elif isinstance(store, CheckpointStore):
            self.store = store
        else:
            self.store = MemoryCheckpointStore()
        self.sample: ResourceSample | None = None
        self.start_time: float | None = None
        self._stopped_at: float | None = None
        self.last_job_time: float | None = None
        self.last_heartbeat: float | None = None
        self.bytes_in = self.bytes_out = 0
        self.load_history: collections.deque[float] = collections.deque(maxlen=LOAD_HISTORY)
        self.full_reason: str | None = None
        self._over: dict[str, str] = {}
        self._expired: str | None = None
        self.retries = 0
        self.decisions: collections.Counter[str] = collections.Counter()

    # -- hooks the worker calls -------------------------------------------------------

    def received(self, size: int) -> None:
        """A frame of *size* bytes arrived from the server (a heartbeat)."""
        self.bytes_in += size
        self.last_heartbeat = time.time()

    def sent(self, size: int) -> None:
        """A frame of *size* bytes went to the server."""
        self.bytes_out += size

    def connection_lost(self, reason: str) -> None:
        """The connection dropped: ask the recovery policy; TERMINATE drains the worker."""
        if self.recovery is None:
            return
        try:
            action = self.recovery.on_connection_lost()
        except Exception:
            logger.exception("recovery handler on_connection_lost failed; reconnecting")
            return
        self._decide(action, "connection lost")
        if action is RecoveryAction.TERMINATE:
            logger.warning("recovery: connection lost (%s); terminating the worker", reason)
            self._worker.drain()

    def job_assigned(self) -> None:
        """A job starts now."""
        self.last_job_time = time.time()

    def refusal(self, job: agent_pb.Job) -> str | None:
        """Why to decline *job* now (a limit exceeded, the load calculator), or None."""
        if self.full_reason is not None:
            return self.full_reason
        if self.calculator is not None:
            load = self._worker._state.load
            try:
                ok = self.calculator.should_accept_job(JobType(job.type), load)
            except Exception:
                logger.exception("load calculator should_accept_job failed; accepting")
                ok = True
            if not ok:
                return f"load calculator declined at load {load:.2f}"
        return None

    def update_load(self) -> None:
        """Recompute the load (periodic report) and remember it in the history."""
        state = self._worker._state
        if self.calculator is not None:
            try:
                state.set_load(float(self.calculator.calculate_load(self._worker.statistics())))
            except Exception:
                logger.exception("load calculator failed; keeping the previous load")
        self.load_history.append(state.load)

    def statistics_fields(self) -> dict[str, Any]:
        """The resilience fields of ``WorkerStatistics``."""
        worker = self._worker
        sample = self.sample
        if worker._stopped or worker._connection_ended.is_set():
            connection = "stopped"
        elif worker._ws is not None:
            connection = "connected"
        else:
            connection = "connecting"
        return {
            "start_time": self.start_time,
            "uptime": self._uptime_now(),
            "last_job_time": self.last_job_time,
            "cpu_percent": sample.process_cpu_percent if sample else 0.0,
            "memory_mb": sample.process_memory_mb if sample else 0.0,
            "network_bytes_in": self.bytes_in,
            "network_bytes_out": self.bytes_out,
            "load_history": tuple(self.load_history),
            "connection_state": connection,
            "last_heartbeat": self.last_heartbeat,
            "full_reason": self.full_reason,
            "resources": sample,
            "job_retries": self.retries,
            "recovery_decisions": dict(self.decisions),
        }

    def _uptime_now(self) -> float:
        if self.start_time is None:
            return 0.0
        end = self._stopped_at if self._stopped_at is not None else time.time()
        return max(0.0, end - self.start_time)

    # -- the worker's tasks -----------------------------------------------------------

    async def run(self, stop: trio.Event) -> None:
        """Sample resources, enforce limits and uptime, run the health monitor; until *stop*."""
        self.start_time = time.time()
        opts = self._worker.options
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sampler_loop)
                limits = opts.resource_limits
                if limits is not None and limits.max_uptime is not None:
                    nursery.start_soon(self._uptime, limits.max_uptime)
                if opts.health_monitor is not None:
                    nursery.start_soon(opts.health_monitor.run, self._worker)
                await stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._stopped_at = time.time()
            if self._owns_store:
                with trio.move_on_after(1, shield=True):
                    await self.store.aclose()

    async def _sampler_loop(self) -> None:
        interval = self._worker.options.load_interval
        sampler: ResourceSampler | None = None
        failing = False
        while True:
            try:
                sampler = sampler or ResourceSampler()
                self.sample = sampler.sample()  # ~0.5 ms, on the loop (see _sampler.py)
                events = self.monitor.update(self.sample, count_trio_tasks())
            except Exception:
                # psutil on an unusual platform or /proc going away: the worker
                # keeps serving on its last sample; logged once per outage.
                if not failing:
                    logger.exception("resource sampling failed; keeping the last sample")
                failing = True
            else:
                failing = False
                await self._enforce_limits()
                await self.monitor.dispatch(events)
            await trio.sleep(interval)

    async def _enforce_limits(self) -> None:
        if self.limiter is None:
            return
        worker = self._worker
        over = self.limiter.check(self.sample, worker._state.running)
        crossed = [r for r in over if r not in self._over]
        self._over = over
        reason = "; ".join([*over.values(), *([self._expired] if self._expired else [])]) or None
        if reason != self.full_reason:
            if reason is None:
                logger.info("back under the resource limits: taking jobs again")
            else:
                logger.warning("over a resource limit, declining jobs: %s", reason)
            self.full_reason = reason
            worker._state.hold = reason
            worker._notify()
        for resource in crossed:
            action = (self.recovery or _DEFAULT_BACKOFF).on_resource_exhausted(resource)
            self._decide(action, f"resource exhausted: {resource}")
            hook = self.limiter.hook(resource)
            if hook is not None:
                try:
                    await hook(over[resource])
                except Exception:
                    logger.exception("on_%s_limit hook failed", resource)
            if action is RecoveryAction.TERMINATE:
                logger.warning("recovery: terminating the worker (%s)", over[resource])
                worker.drain()

    async def _uptime(self, max_uptime: float) -> None:
        await trio.sleep(max_uptime)
        logger.warning(
            "max_uptime (%.0f s) reached: draining so a supervisor restarts us", max_uptime
        )
        self._expired = self.full_reason = f"max_uptime {max_uptime:g} s reached"
        self._worker.drain()

    # -- the job runner ---------------------------------------------------------------

    def _decide(self, action: RecoveryAction, what: str) -> None:
        self.decisions[action.value] += 1
        logger.debug("recovery decision for %s: %s", what, action.value)

    async def prepare_job(self, ctx: JobContext) -> None:
        """Attach ``ctx.checkpoint`` and find out whether the job resumes."""
        opts = self._worker.options
        scope = checkpoint_scope(ctx.job, opts.agent_name, opts.namespace)
        ctx._checkpoint = Checkpoint(self.store, scope)
        try:
            if isinstance(self.store, MemoryCheckpointStore):  # no yield on the start path
                ctx._resumed = self.store.exists_nowait(scope)
            else:
                ctx._resumed = await self.store.exists(scope)
        except (OSError, trio.BrokenResourceError) as exc:
            logger.warning(
                "checkpoint store unavailable (%s): job %s starts fresh", exc, ctx.job_id
            )
        except Exception:
            logger.exception("checkpoint store failed: job %s starts fresh", ctx.job_id)
        if ctx._resumed:
            logger.info("job %s resumes from its checkpoint (%s)", ctx.job_id, scope)

    async def run_entrypoint(
        self, entrypoint: Callable[[JobContext], Awaitable[None]], ctx: JobContext
    ) -> None:
        """Run the entrypoint, re-running it as the recovery policy decides."""
        await self.prepare_job(ctx)
        attempt = 1
        while True:
            ctx._attempt = attempt
            try:
                await entrypoint(ctx)
                return
            except Exception as exc:
                handler = self.recovery
                if handler is None or ctx.shutdown_reason is not None:
                    raise
                try:
                    action = handler.on_job_failed(FailedJob(ctx.job, attempt), exc)
                except Exception:
                    logger.exception("recovery handler failed; not retrying job %s", ctx.job_id)
                    raise exc from None
                self._decide(action, "job failed")
                if action in (RecoveryAction.SKIP, RecoveryAction.TERMINATE):
                    logger.warning(
                        "recovery: job %s failed on attempt %d (%s: %s); %s",
                        ctx.job_id,
                        attempt,
                        type(exc).__name__,
                        exc,
                        "terminating the worker"
                        if action is RecoveryAction.TERMINATE
                        else ("not retried" if attempt == 1 else "retries exhausted"),
                    )
                    if action is RecoveryAction.TERMINATE:
                        self._worker.drain()
                    raise
                delay = 0.0
                if action is RecoveryAction.BACKOFF:
                    backoff = getattr(handler, "backoff_delay", _DEFAULT_BACKOFF.backoff_delay)
                    delay = float(backoff(attempt))
                logger.warning(
                    "recovery: job %s failed on attempt %d (%s: %s); retrying in %.2f s",
                    ctx.job_id,
                    attempt,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                self.retries += 1
            await trio.sleep(delay)
            attempt += 1
