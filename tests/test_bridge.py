"""Tests of the asyncio bridge (trio_lkagent._bridge)."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import traceback
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
import trio
import trio.lowlevel
import trio.testing

from trio_lkagent._bridge import (
    AsyncioBridge,
    AsyncioCancelledError,
    Handoff,
    TrioPortal,
    map_native_error,
    open_bridge,
)
from trio_lkagent._exceptions import ConnectError

# Only a safety net for what really waits on the other thread or on native audio.
SAFETY_TIMEOUT = 10


@pytest.fixture
async def bridge() -> AsyncIterator[AsyncioBridge]:
    async with open_bridge() as bridge:
        yield bridge


def bridge_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "trio-lkagent-asyncio"]


# ------------------------------------------------------------------ Trio -> asyncio calls


async def test_run_returns_the_coroutine_result(bridge: AsyncioBridge) -> None:
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    assert await bridge.run(add, 2, 3) == 5


async def test_run_raises_the_original_exception_with_its_traceback(
    bridge: AsyncioBridge,
) -> None:
    class Boom(Exception):
        pass

    async def fail_on_the_loop() -> None:
        await asyncio.sleep(0)
        raise Boom("from asyncio")

    with pytest.raises(Boom, match="from asyncio") as exc_info:
        await bridge.run(fail_on_the_loop)
    frames = [frame.name for frame in traceback.extract_tb(exc_info.value.__traceback__)]
    assert "fail_on_the_loop" in frames


async def test_run_raises_when_the_function_fails_before_awaiting(bridge: AsyncioBridge) -> None:
    def not_async() -> int:
        raise KeyError("sync part")

    with pytest.raises(KeyError):
        await bridge.run(not_async)  # type: ignore[arg-type]


async def test_cancelling_run_cancels_the_task_and_waits_for_its_finally(
    bridge: AsyncioBridge,
) -> None:
    token = trio.lowlevel.current_trio_token()
    started = trio.Event()
    log: list[str] = []

    async def sleeper() -> None:
        token.run_sync_soon(started.set)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            log.append("asyncio cancelled")
            raise
        finally:
            await asyncio.sleep(0)  # a finally block that awaits
            log.append("asyncio finally")

    async with trio.open_nursery() as nursery:

        async def cancel_once_started() -> None:
            await started.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(cancel_once_started)
        try:
            await bridge.run(sleeper)
        finally:
            log.append("run returned")
    assert nursery.cancel_scope.cancelled_caught
    assert log == ["asyncio cancelled", "asyncio finally", "run returned"]


async def test_run_is_a_checkpoint_when_already_cancelled(bridge: AsyncioBridge) -> None:
    ran: list[bool] = []

    async def record() -> None:
        ran.append(True)

    with trio.CancelScope() as scope:
        scope.cancel()
        await bridge.run(record)
    assert scope.cancelled_caught
    assert ran == []


async def test_a_task_that_completes_despite_cancellation_returns_its_result(
    bridge: AsyncioBridge,
) -> None:
    token = trio.lowlevel.current_trio_token()
    started = trio.Event()

    async def stubborn() -> str:
        token.run_sync_soon(started.set)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            return "finished anyway"
        return "not cancelled"

    results: list[str] = []
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:

            async def cancel_once_started() -> None:
                await started.wait()
                scope.cancel()

            nursery.start_soon(cancel_once_started)
            results.append(await bridge.run(stubborn))
            await trio.lowlevel.checkpoint()  # the cancellation is delivered here
            results.append("not reached")
    assert results == ["finished anyway"]
    assert scope.cancelled_caught


async def test_run_accepts_functions_returning_a_future() -> None:
    threads_before = set(threading.enumerate())
    async with open_bridge() as bridge:

        def in_default_executor() -> asyncio.Future[int]:
            return bridge.loop.run_in_executor(None, int, "7")

        assert await bridge.run(in_default_executor) == 7
    # The loop's executor threads are shut down and joined with it.
    assert set(threading.enumerate()) == threads_before


async def test_a_task_cancelled_on_the_asyncio_side_raises_a_clear_error(
    bridge: AsyncioBridge,
) -> None:
    async def cancel_myself() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)

    with pytest.raises(AsyncioCancelledError):
        await bridge.run(cancel_myself)


async def test_call_runs_on_the_loop_thread(bridge: AsyncioBridge) -> None:
    async def ident_in_a_task() -> int:
        return threading.get_ident()

    loop_thread = await bridge.call(threading.get_ident)
    assert loop_thread != threading.get_ident()
    assert await bridge.run(ident_in_a_task) == loop_thread
    assert await bridge.call(asyncio.get_running_loop) is bridge.loop


async def test_call_raises_what_the_function_raised(bridge: AsyncioBridge) -> None:
    with pytest.raises(ZeroDivisionError):
        await bridge.call(divmod, 1, 0)


def test_native_connect_error_is_mapped() -> None:
    from livekit import rtc

    native = rtc.ConnectError("refused")
    mapped = map_native_error(native)
    assert isinstance(mapped, ConnectError)
    assert mapped.__cause__ is native
    other = ValueError("x")
    assert map_native_error(other) is other


async def test_run_raises_our_connect_error_for_a_refused_room_connect(
    bridge: AsyncioBridge,
) -> None:
    from livekit import rtc

    room = await bridge.call(rtc.Room)
    with trio.fail_after(SAFETY_TIMEOUT), pytest.raises(ConnectError) as exc_info:
        await bridge.run(room.connect, "ws://127.0.0.1:9", "not-a-token")
    assert isinstance(exc_info.value.__cause__, rtc.ConnectError)


# ------------------------------------------------------------------ lifetime


async def test_users_share_one_loop_and_the_last_one_out_stops_and_joins_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    threads_before = set(threading.enumerate())
    caplog.set_level(logging.DEBUG)
    inner_entered = trio.Event()
    release_inner = trio.Event()
    loops: list[asyncio.AbstractEventLoop] = []

    async def concurrent_user() -> None:
        async with open_bridge() as bridge:
            loops.append(bridge.loop)
            inner_entered.set()
            await release_inner.wait()

    async with open_bridge() as outer:
        loops.append(outer.loop)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(concurrent_user)
            await inner_entered.wait()
            async with open_bridge() as nested:
                assert nested is outer
            release_inner.set()
        # Two users have left; the thread lives on for the remaining one.
        assert len(bridge_threads()) == 1
        assert await outer.call(lambda: 42) == 42
    assert loops[0] is loops[1]
    assert set(threading.enumerate()) == threads_before
    assert outer.loop.is_closed()
    assert [r.getMessage() for r in caplog.records if r.name == "trio_lkagent._bridge"] == []


async def test_shutdown_runs_cleanups_in_reverse_then_cancels_leftover_tasks() -> None:
    threads_before = set(threading.enumerate())
    log: list[str] = []

    async def cleanup(name: str) -> None:
        await asyncio.sleep(0)
        log.append(name)

    async def forgotten() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0)
            log.append("leftover finally")

    async with open_bridge() as bridge:
        bridge.add_cleanup(cleanup, "close stream")
        remove = bridge.add_cleanup(cleanup, "closed by its owner")
        bridge.add_cleanup(cleanup, "disconnect room")
        remove()
        remove()  # idempotent
        await bridge.call(lambda: bridge.loop.create_task(forgotten()))
    assert log == ["disconnect room", "close stream", "leftover finally"]
    assert set(threading.enumerate()) == threads_before


async def test_a_failing_cleanup_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[str] = []

    async def fail() -> None:
        raise RuntimeError("cleanup failed")

    async def record() -> None:
        log.append("ran")

    async with open_bridge() as bridge:
        bridge.add_cleanup(record)
        bridge.add_cleanup(fail)
    assert log == ["ran"]
    assert any("cleanup" in r.getMessage() for r in caplog.records)


async def test_a_bridge_used_after_shutdown_raises_closed() -> None:
    async with open_bridge() as bridge:
        pass
    with pytest.raises(trio.ClosedResourceError):
        await bridge.call(int)


async def test_a_new_user_after_shutdown_gets_a_fresh_loop() -> None:
    async with open_bridge() as first:
        pass
    async with open_bridge() as second:
        assert second is not first
        assert await second.call(lambda: 1) == 1


async def test_exit_is_clean_when_the_users_scope_is_cancelled() -> None:
    threads_before = set(threading.enumerate())
    with trio.CancelScope() as scope:
        async with open_bridge():
            scope.cancel()
            await trio.sleep_forever()
    assert set(threading.enumerate()) == threads_before


# ------------------------------------------------------------------ asyncio -> Trio hand-off


async def test_handoff_delivers_many_items_in_order(bridge: AsyncioBridge) -> None:
    n = 10_000
    handoff = Handoff[int]()
    received = handoff.subscribe(64)
    got: list[int] = []

    def produce(start: int, stop: int) -> None:
        for i in range(start, stop):
            handoff.put(i)

    async def consume() -> None:
        async for item in received:
            got.append(item)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume)
        # Small buffer and a concurrent consumer: delivery interleaves with receiving.
        for start in range(0, n, 50):
            await bridge.call(produce, start, start + 50)
            await trio.testing.wait_all_tasks_blocked()
        handoff.close()
    assert got == list(range(n))
    stats = handoff.statistics()
    assert stats.put == n
    assert stats.subscribers[0].delivered == n
    assert stats.subscribers[0].dropped == 0


async def test_handoff_drops_for_a_slow_subscriber_only(bridge: AsyncioBridge) -> None:
    n = 1_000
    handoff = Handoff[int]()
    fast = handoff.subscribe(n)
    slow = handoff.subscribe(4)

    def produce() -> None:
        for i in range(n):
            handoff.put(i)

    # Every drain scheduled by put() runs before call() returns (run_sync_soon is FIFO).
    await bridge.call(produce)
    fast_stats, slow_stats = handoff.statistics().subscribers
    assert (fast_stats.delivered, fast_stats.dropped) == (n, 0)
    assert (slow_stats.delivered, slow_stats.dropped) == (4, n - 4)
    assert [fast.receive_nowait() for _ in range(n)] == list(range(n))
    assert [slow.receive_nowait() for _ in range(4)] == [0, 1, 2, 3]


async def test_a_backlog_keeps_early_items_for_the_first_subscriber(bridge: AsyncioBridge) -> None:
    handoff = Handoff[int](backlog=3)
    await bridge.call(lambda: [handoff.put(i) for i in range(5)])
    first = handoff.subscribe(10)
    second = handoff.subscribe(10)
    await bridge.call(handoff.put, 5)
    assert [first.receive_nowait() for _ in range(4)] == [0, 1, 2, 5]
    assert second.receive_nowait() == 5
    assert [s.dropped for s in handoff.statistics().subscribers] == [2, 0]


async def test_items_reach_every_waiting_receiver_of_a_cloned_channel(
    bridge: AsyncioBridge,
) -> None:
    handoff = Handoff[int]()
    receive = handoff.subscribe(2)
    clone = receive.clone()
    got: list[int] = []

    async def take(channel: trio.MemoryReceiveChannel[int]) -> None:
        got.append(await channel.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, receive)
        nursery.start_soon(take, clone)
        await trio.testing.wait_all_tasks_blocked()
        # One batch of five: two go to the waiting receivers, two fill the buffer.
        await bridge.call(lambda: [handoff.put(i) for i in range(5)])
    assert sorted(got) == [0, 1]
    assert [receive.receive_nowait(), clone.receive_nowait()] == [2, 3]
    stats = handoff.statistics().subscribers[0]
    assert (stats.delivered, stats.dropped) == (4, 1)


async def test_a_closed_subscriber_stops_receiving_and_trio_keeps_running(
    bridge: AsyncioBridge,
) -> None:
    handoff = Handoff[str]()
    closed = handoff.subscribe(10)
    open_ = handoff.subscribe(10)
    closed.close()
    await bridge.call(handoff.put, "a")
    await bridge.call(handoff.put, "b")
    assert [open_.receive_nowait(), open_.receive_nowait()] == ["a", "b"]
    stats = handoff.statistics()
    assert [s.active for s in stats.subscribers] == [False, True]
    assert stats.subscribers[0].delivered == 0


async def test_closing_the_handoff_ends_every_subscriber(bridge: AsyncioBridge) -> None:
    with Handoff[int]() as handoff:
        first = handoff.subscribe(10)
        second = handoff.subscribe(10)
        handoff.put(1)  # from Trio: still pending, delivered by close()
    assert [item async for item in first] == [1]
    assert [item async for item in second] == [1]
    handoff.put(2)  # discarded, no error
    await bridge.call(handoff.put, 3)
    with pytest.raises(trio.ClosedResourceError):
        handoff.subscribe(1)


def test_put_after_the_trio_run_finished_does_not_raise() -> None:
    async def make() -> Handoff[int]:
        return Handoff[int]()

    handoff = trio.run(make)
    for i in range(3):
        handoff.put(i)
    put_from_thread = threading.Thread(target=handoff.put, args=(4,))
    put_from_thread.start()
    put_from_thread.join()


# ------------------------------------------------------------------ asyncio -> Trio calls


async def test_portal_returns_the_trio_result(bridge: AsyncioBridge) -> None:
    async def trio_handler(x: int) -> tuple[int, bool]:
        await trio.lowlevel.checkpoint()
        return x * 2, trio.lowlevel.current_trio_token() is not None

    async with trio.open_nursery() as nursery:
        portal = TrioPortal(nursery)
        assert await bridge.run(portal.run, trio_handler, 21) == (42, True)


async def test_portal_delivers_the_trio_exception_to_asyncio(bridge: AsyncioBridge) -> None:
    async def trio_handler() -> None:
        await trio.lowlevel.checkpoint()
        raise LookupError("from trio")

    async def asyncio_side(portal: TrioPortal) -> str:
        try:
            await portal.run(trio_handler)
        except LookupError as exc:
            return str(exc)
        return "no error"

    async with trio.open_nursery() as nursery:
        portal = TrioPortal(nursery)
        assert await bridge.run(asyncio_side, portal) == "from trio"
    # The error went to the asyncio caller, not into the nursery.


async def test_cancelling_the_asyncio_waiter_cancels_the_trio_task(
    bridge: AsyncioBridge,
) -> None:
    log: list[str] = []

    async def trio_handler(report_started: Callable[[], object]) -> None:
        report_started()
        try:
            await trio.sleep_forever()
        finally:
            log.append("trio task finished")

    async def asyncio_side(portal: TrioPortal) -> bool:
        loop = asyncio.get_running_loop()
        started = loop.create_future()
        report = functools.partial(loop.call_soon_threadsafe, started.set_result, None)
        task = loop.create_task(portal.run(trio_handler, report))
        await started
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            log.append("asyncio waiter cancelled")
        return task.cancelled()

    with trio.fail_after(SAFETY_TIMEOUT):  # a handler left running would hang the nursery
        async with trio.open_nursery() as nursery:
            portal = TrioPortal(nursery)
            assert await bridge.run(asyncio_side, portal)
    assert log == ["trio task finished", "asyncio waiter cancelled"]


async def test_portal_into_a_closed_nursery_fails_cleanly(bridge: AsyncioBridge) -> None:
    async with trio.open_nursery() as nursery:
        portal = TrioPortal(nursery)

    async def trio_handler() -> None:
        raise AssertionError("must not run")

    with pytest.raises(trio.BrokenResourceError):
        await bridge.run(portal.run, trio_handler)


async def test_portal_call_fails_cleanly_when_its_nursery_is_cancelled(
    bridge: AsyncioBridge,
) -> None:
    started = trio.Event()

    async def trio_handler() -> None:
        started.set()
        await trio.sleep_forever()

    async with trio.open_nursery() as outer, trio.open_nursery() as inner:
        portal = TrioPortal(inner)

        async def asyncio_side() -> None:
            with pytest.raises(trio.BrokenResourceError):
                await portal.run(trio_handler)

        outer.start_soon(bridge.run, asyncio_side)
        await started.wait()
        inner.cancel_scope.cancel()


def test_portal_after_the_trio_run_finished_fails_cleanly() -> None:
    async def make() -> TrioPortal:
        async with trio.open_nursery() as nursery:
            return TrioPortal(nursery)

    portal = trio.run(make)

    async def trio_handler() -> None:
        raise AssertionError("must not run")

    loop = asyncio.SelectorEventLoop()
    try:
        with pytest.raises(trio.BrokenResourceError):
            loop.run_until_complete(portal.run(trio_handler))
    finally:
        loop.close()


# ------------------------------------------------------------------ real livekit.rtc, no server


async def test_rtc_audio_loopback_carries_a_440_hz_tone(bridge: AsyncioBridge) -> None:
    from livekit import rtc

    rate, frame_len, n_frames, wanted = 48_000, 480, 30, 25
    tone = (np.sin(2 * np.pi * 440 * np.arange(n_frames * frame_len) / rate) * 10_000).astype(
        np.int16
    )
    source = await bridge.call(rtc.AudioSource, rate, 1, 1000)
    track = await bridge.call(rtc.LocalAudioTrack.create_audio_track, "tone", source)
    stream = await bridge.call(
        functools.partial(rtc.AudioStream.from_track, track=track, sample_rate=rate, num_channels=1)
    )
    handoff = Handoff[rtc.AudioFrame]()
    frames = handoff.subscribe(200)

    async def pump() -> None:  # asyncio side
        async for event in stream:
            handoff.put(event.frame)

    async def capture() -> None:  # asyncio side; the 1 s queue takes all 300 ms at once
        for i in range(n_frames):
            chunk = tone[i * frame_len : (i + 1) * frame_len]
            await source.capture_frame(rtc.AudioFrame(chunk.tobytes(), rate, 1, frame_len))

    received: list[np.ndarray] = []
    with trio.fail_after(SAFETY_TIMEOUT):  # the loopback is paced in real time
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bridge.run, pump)
            await bridge.run(capture)
            async for frame in frames:
                samples = np.frombuffer(frame.data, np.int16)
                if received or np.any(samples):  # skip silence before the tone
                    received.append(samples.copy())
                if len(received) == wanted:
                    break
            nursery.cancel_scope.cancel()
        await bridge.run(stream.aclose)
        await bridge.run(source.aclose)

    signal = np.concatenate(received).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    peak_hz = np.fft.rfftfreq(len(signal), 1 / rate)[int(np.argmax(spectrum))]
    assert abs(peak_hz - 440) <= 5, peak_hz
    assert handoff.statistics().subscribers[0].dropped == 0


async def test_native_objects_left_open_are_detached_at_shutdown() -> None:
    from livekit import rtc
    from livekit.rtc._ffi_client import FfiClient

    async with open_bridge() as bridge:
        source = await bridge.call(rtc.AudioSource, 48_000, 1)
        track = await bridge.call(rtc.LocalAudioTrack.create_audio_track, "left-open", source)
        await bridge.call(functools.partial(rtc.AudioStream.from_track, track=track))
        loop = bridge.loop
    # No native subscription may outlive the loop: it would log on every event.
    assert [s for s in FfiClient.instance.queue._subscribers if s[1] is loop] == []


async def test_a_user_waiting_for_the_start_is_counted_before_the_first_leaves() -> None:
    """A second user that arrives while the bridge starts gets a working bridge,
    even when the first user leaves as soon as the start is done (it used to
    get the closing bridge: "the asyncio bridge has been shut down")."""
    answers: list[int] = []

    async def first() -> None:
        async with open_bridge():
            pass  # leaves before the waiting user runs again

    async def second() -> None:
        async with open_bridge() as bridge:
            answers.append(await bridge.call(lambda: 42))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await trio.testing.wait_all_tasks_blocked()  # first is starting the bridge
        nursery.start_soon(second)
    assert answers == [42]
    assert not bridge_threads()
