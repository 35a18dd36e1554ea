"""ResourcePool: lending, fairness, broken resources, reaping, closing; a state machine."""

from __future__ import annotations

import itertools

import hypothesis.strategies as st
import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import HealthCheck, given, settings

from trio_lkagent.resources import ResourcePool


class Thing:
    """A resource that knows whether it was closed (and how often)."""

    _ids = itertools.count()

    def __init__(self) -> None:
        self.id = next(self._ids)
        self.closed = 0
        self.broken = False

    def __repr__(self) -> str:
        return f"Thing({self.id})"


class Factory:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.made: list[Thing] = []
        self.fail_next = 0

    async def __call__(self) -> Thing:
        await trio.sleep(self.delay)
        if self.fail_next:
            self.fail_next -= 1
            raise OSError("factory failed")
        thing = Thing()
        self.made.append(thing)
        return thing


async def close(thing: Thing) -> None:
    await trio.lowlevel.checkpoint()
    thing.closed += 1


def pool_of(factory: Factory, **kwargs: object) -> ResourcePool[Thing]:
    return ResourcePool(factory, close=close, is_broken=lambda t: t.broken, **kwargs)  # type: ignore[arg-type]


async def test_reuses_and_counts() -> None:
    factory = Factory()
    async with pool_of(factory, max_size=2) as pool:
        async with pool.acquire() as a:
            assert (pool.size, pool.in_use, pool.available) == (1, 1, 0)
        async with pool.acquire() as b:
            assert b is a
        stats = pool.statistics()
        assert (stats.created, stats.available, stats.in_use) == (1, 1, 0)
    assert a.closed == 1
    assert pool.statistics().closed == 1


async def test_waiters_are_served_in_order(autojump_clock: trio.testing.MockClock) -> None:
    factory = Factory()
    order: list[int] = []
    async with pool_of(factory, max_size=1) as pool:

        async def user(i: int) -> None:
            async with pool.acquire():
                order.append(i)
                await trio.sleep(1)

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(user, i)
                await trio.testing.wait_all_tasks_blocked()
            assert pool.statistics().waiting == 4
    assert order == [0, 1, 2, 3, 4]
    assert len(factory.made) == 1


async def test_cancelled_waiter_gives_up_its_place(autojump_clock: trio.testing.MockClock) -> None:
    async with pool_of(Factory(), max_size=1) as pool:
        got: list[str] = []
        async with trio.open_nursery() as nursery:
            scope = trio.CancelScope()

            async def impatient() -> None:
                with scope:
                    async with pool.acquire():
                        got.append("impatient")  # pragma: no cover

            async def patient() -> None:
                async with pool.acquire():
                    got.append("patient")

            async with pool.acquire():
                nursery.start_soon(impatient)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(patient)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
                await trio.testing.wait_all_tasks_blocked()
                assert pool.statistics().waiting == 1
        assert got == ["patient"]
        assert (pool.in_use, pool.size) == (0, 1)


async def test_a_holder_cancelled_mid_use_discards_the_resource() -> None:
    factory = Factory()
    async with pool_of(factory, max_size=1) as pool:
        with trio.CancelScope() as scope:
            async with pool.acquire() as thing:
                scope.cancel()
                await trio.lowlevel.checkpoint()  # cancelled here, resource half-used
        await trio.testing.wait_all_tasks_blocked()
        assert thing.closed == 1
        assert (pool.size, pool.statistics().discarded) == (0, 1)


async def test_broken_resources_are_discarded() -> None:
    factory = Factory()
    async with pool_of(factory, max_size=3) as pool:
        with pytest.raises(ValueError, match="boom"):
            async with pool.acquire() as first:
                raise ValueError("boom")
        async with pool.acquire() as second:
            pool.discard(second)
        async with pool.acquire() as third:
            pass
        third.broken = True  # broken while idle: not lent again
        async with pool.acquire() as fourth:
            assert fourth not in (first, second, third)
        await trio.testing.wait_all_tasks_blocked()
        assert [first.closed, second.closed, third.closed] == [1, 1, 1]
        assert pool.statistics().discarded == 3
        assert pool.size == 1


async def test_factory_failure_reaches_the_caller_and_frees_the_slot() -> None:
    factory = Factory()
    async with pool_of(factory, max_size=1) as pool:
        factory.fail_next = 1
        with pytest.raises(OSError, match="factory failed"):
            async with pool.acquire():
                pass  # pragma: no cover
        assert pool.size == 0
        async with pool.acquire() as thing:
            assert thing is factory.made[0]
        assert pool.statistics().factory_failures == 1


async def test_a_waiter_gets_the_slot_of_a_discarded_resource(
    autojump_clock: trio.testing.MockClock,
) -> None:
    factory = Factory(delay=1)
    async with pool_of(factory, max_size=1) as pool:
        got: list[Thing] = []
        async with trio.open_nursery() as nursery:

            async def waiter() -> None:
                async with pool.acquire() as r:
                    got.append(r)

            async with pool.acquire() as held:
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                pool.discard(held)
        assert got and got[0] is not held
        assert pool.size == 1


async def test_idle_resources_beyond_min_size_are_reaped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    factory = Factory()
    async with pool_of(factory, min_size=1, max_size=3, max_idle_time=10) as pool:
        await trio.testing.wait_all_tasks_blocked()
        assert pool.available == 1  # prefilled
        async with pool.acquire(), pool.acquire(), pool.acquire():
            assert pool.size == 3
        assert pool.available == 3
        await trio.sleep(9)
        assert pool.available == 3
        await trio.sleep(2)
        await trio.testing.wait_all_tasks_blocked()
        assert (pool.available, pool.size) == (1, 1)
        assert pool.statistics().reaped == 2
        assert sum(t.closed for t in factory.made) == 2


async def test_take_removes_it_and_min_size_is_refilled() -> None:
    factory = Factory()
    async with pool_of(factory, min_size=2, max_size=2, max_idle_time=None) as pool:
        taken = await pool.take()
        await trio.testing.wait_all_tasks_blocked()
        assert (pool.size, pool.available) == (2, 2)
        assert taken not in [t for t in factory.made[1:]]
    assert taken.closed == 0  # the caller's to close
    assert all(t.closed == 1 for t in factory.made if t is not taken)


async def test_aclose_wakes_waiters_and_closes_lent_ones_on_return() -> None:
    async with pool_of(Factory(), max_size=1) as pool:
        errors: list[BaseException] = []
        async with trio.open_nursery() as nursery:

            async def waiter() -> None:
                try:
                    async with pool.acquire():
                        pass  # pragma: no cover
                except trio.ClosedResourceError as exc:
                    errors.append(exc)

            async with pool.acquire() as held:
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                await pool.aclose()
        assert len(errors) == 1
        with pytest.raises(trio.ClosedResourceError):
            async with pool.acquire():
                pass  # pragma: no cover
    assert held.closed == 1


async def test_sync_factory_and_close() -> None:
    closed: list[int] = []
    counter = itertools.count()
    pool = ResourcePool(lambda: next(counter), close=closed.append, max_size=2)
    async with pool, pool.acquire() as a, pool.acquire() as b:
        assert (a, b) == (0, 1)
    assert sorted(closed) == [0, 1]


def test_sizes_are_validated() -> None:
    with pytest.raises(ValueError, match="max_size"):
        ResourcePool(Factory(), max_size=0)
    with pytest.raises(ValueError, match="min_size"):
        ResourcePool(Factory(), min_size=3, max_size=2)


async def test_acquire_outside_the_block_is_an_error() -> None:
    pool = pool_of(Factory())
    with pytest.raises(RuntimeError, match="async with"):
        async with pool.acquire():
            pass  # pragma: no cover


# -- the state machine ----------------------------------------------------------------
#
# Each example is one trio run on an autojump clock; hypothesis picks the next
# operation among those valid in the current state (st.data()), so failures
# shrink to short operation sequences. Operations: a task starts acquiring
# (and holds what it gets), a holder releases (good, broken by an exception,
# or discard()), a waiting task is cancelled, the factory fails next time,
# time passes (reaping), the pool closes. After every step the invariants are
# checked against a model of who holds what. (Fairness, order of service among
# waiters, is asserted deterministically in test_waiters_are_served_in_order.)


@settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    data=st.data(),
    min_size=st.integers(0, 2),
    extra=st.integers(0, 2),
    max_idle=st.sampled_from([None, 0.0, 5.0]),
)
def test_pool_state_machine(
    data: st.DataObject, min_size: int, extra: int, max_idle: float | None
) -> None:
    max_size = max(1, min_size + extra)
    factory = Factory(delay=0.5)

    async def main() -> None:
        async with (
            pool_of(factory, min_size=min_size, max_size=max_size, max_idle_time=max_idle) as pool,
            trio.open_nursery() as nursery,
        ):
            holders: dict[int, dict[str, object]] = {}
            ids = itertools.count()
            closed_pool = False

            async def user(i: int, task_status: trio.TaskStatus[None]) -> None:
                me = holders[i]
                with trio.CancelScope() as scope:
                    me["scope"] = scope
                    task_status.started()
                    try:
                        async with pool.acquire() as r:
                            me["resource"] = r
                            release: trio.Event = me["release"]  # type: ignore[assignment]
                            await release.wait()
                            how = me["how"]
                            if how == "discard":
                                pool.discard(r)
                            elif how == "raise":
                                raise KeyError("broken")  # noqa: TRY301
                    except (KeyError, OSError, trio.ClosedResourceError):
                        pass
                holders.pop(i, None)

            def check() -> None:
                stats = pool.statistics()
                assert stats.size <= max_size
                assert stats.size == stats.available + stats.in_use + stats.creating
                held = [h["resource"] for h in holders.values() if "resource" in h]
                assert len({id(r) for r in held}) == len(held), "a resource lent twice"
                assert all(t.closed == 0 for t in held), "a lent resource was closed"
                for t in factory.made:
                    assert t.closed <= 1, "closed twice"
                # Nobody waits while a resource is idle (hand-off, no lost wake-up).
                assert not (stats.waiting and stats.available), stats
                # Nobody waits while a slot is free, unless the pool is closed.
                assert not (stats.waiting and stats.size < max_size and not closed_pool), stats

            for _ in range(data.draw(st.integers(1, 25), label="steps")):
                await trio.testing.wait_all_tasks_blocked()
                check()
                holding = [i for i, h in holders.items() if "resource" in h]
                waiting = [i for i, h in holders.items() if "resource" not in h]
                ops = ["acquire", "time", "fail"]
                if holding:
                    ops.append("release")
                if waiting:
                    ops.append("cancel")
                if not closed_pool:
                    ops.append("close")
                op = data.draw(st.sampled_from(ops), label="op")
                if op == "acquire":
                    i = next(ids)
                    holders[i] = {"release": trio.Event(), "how": "ok"}
                    await nursery.start(user, i)
                elif op == "release":
                    i = data.draw(st.sampled_from(sorted(holding)), label="holder")
                    holders[i]["how"] = data.draw(st.sampled_from(["ok", "discard", "raise"]))
                    holders[i]["release"].set()  # type: ignore[attr-defined]
                elif op == "cancel":
                    i = data.draw(st.sampled_from(sorted(waiting)), label="waiter")
                    holders[i]["scope"].cancel()  # type: ignore[attr-defined]
                elif op == "fail":
                    factory.fail_next += 1
                elif op == "time":
                    await trio.sleep(data.draw(st.sampled_from([0.1, 1.0, 10.0])))
                else:
                    closed_pool = True
                    await pool.aclose()
            for h in list(holders.values()):
                h["release"].set()  # type: ignore[attr-defined]
                h["scope"].cancel()  # type: ignore[attr-defined]
        # The pool's block is over: every resource it made was closed exactly once.
        assert [t.closed for t in factory.made] == [1] * len(factory.made)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


async def test_leaving_the_block_under_cancellation_still_closes_everything() -> None:
    factory = Factory()
    with trio.CancelScope() as scope:
        async with pool_of(factory, min_size=2, max_size=2) as pool:
            await trio.testing.wait_all_tasks_blocked()
            assert pool.available == 2
            scope.cancel()
            await trio.sleep_forever()
    assert [t.closed for t in factory.made] == [1, 1]


async def test_raising_min_size_fills_the_pool() -> None:
    factory = Factory()
    async with pool_of(factory, min_size=0, max_size=3) as pool:
        await trio.testing.wait_all_tasks_blocked()
        assert pool.size == 0
        pool.min_size = 2
        await trio.testing.wait_all_tasks_blocked()
        assert (pool.available, pool.size) == (2, 2)
        with pytest.raises(ValueError, match="min_size"):
            pool.min_size = 4
