"""``trio-lkagent dev``: an agent, a local server and a simulated caller in one process.

Task tree::

    run_dev()
    '- open_devserver()              the in-package LiveKit server
       '- nursery
          |- _on_signals             first Ctrl-C: end the session; second: stop now
          |- serve_health
          |- exit_if_stuck           (shielded) serving ended, only stuck jobs left: exit 3
          |- worker.serve()
          '- the session             (its own cancel scope)
             '- open_room()          the simulated participant "dev-user"
                |- _report           what it sees: the agent joining, its tracks, data
                |- _play_tone        a 440 Hz tone as a microphone track
                '- _chat             a few data messages once the agent is there

After the session: the room is deleted (the server terminates the job), the
job's final status is printed, the worker drains, the server stops.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from functools import partial
from pathlib import Path

import attrs
import numpy as np
import trio
from livekit import rtc
from livekit.protocol import agent as agent_pb
from livekit.protocol import agent_dispatch as dispatch_pb

from ._config import ServiceConfig
from ._events import (
    DataReceived,
    ParticipantConnected,
    ParticipantDisconnected,
    RoomEvent,
    TrackPublished,
    TrackSubscribed,
)
from ._exceptions import ConfigurationError
from ._job import JobContext
from ._options import JobType
from ._room import Room
from ._service import Say, exit_if_stuck, say, start_health
from ._telemetry import WorkerObserver
from ._tracks import open_audio_stream
from ._worker import Worker, WorkerStatistics
from .devserver import DevServer, JobEndedError, open_devserver
from .testing._kit import ParticipantFactory
from .testing._scenario import DevScenario

__all__ = ["DevSettings", "load_scenario", "run_dev", "run_with_reload"]

IDENTITY = "dev-user"
RATE = 48_000
TONE_HZ = 440.0
MESSAGES = ("hello", "how are you?", "bye")
#: Bound on waiting for a terminated job to end (worker and server side).
TEARDOWN_TIMEOUT = 10.0
_AGENT = rtc.ParticipantKind.PARTICIPANT_KIND_AGENT


@attrs.frozen
class DevSettings:
    """The ``dev`` command's own settings."""

    host: str = "127.0.0.1"
    port: int = 0
    room: str = "dev-room"
    #: Seconds the participants stay once joined; None: until every job ended or Ctrl-C.
    duration: float | None = None
    #: "room", "publisher" or "participant": overrides the worker's job type.
    job_type: str | None = None
    #: Job metadata of the dispatch.
    metadata: str = ""
    #: Simulated participants of the built-in scenario.
    participants: int = 1
    #: A FILE.py defining ``async def scenario(dev)``, run instead of the built-in one.
    scenario: str | None = None
    #: Restart on file changes (handled by the parent process, see ``run_with_reload``).
    reload: bool = False
    #: An external LiveKit server instead of the embedded one.
    url: str | None = None


def _kind(kind: int) -> str:
    return rtc.TrackKind.Name(kind).removeprefix("KIND_").lower()  # type: ignore[arg-type]


def _level_dbfs(samples: np.ndarray) -> float:
    if samples.size == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(np.square(samples.astype(np.float64)))))
    return 20 * math.log10(rms / 32768) if rms > 0 else -math.inf


async def _hear(track: rtc.RemoteTrack, who: str, say: Say, me: str = IDENTITY) -> None:
    """Report once how loud *who*'s audio track is: half a second of it from the
    moment sound starts, or that it stayed silent for its first 3 seconds."""
    frames: list[np.ndarray] = []
    silent = 0
    async with open_audio_stream(track, sample_rate=RATE) as stream:
        async for frame in stream:
            if not frames and int(np.abs(frame.samples).max(initial=0)) < 64:
                silent += 1
                if silent == 300:
                    say(f"{me} hears only silence from {who} (3 s)")
                    return
                continue
            frames.append(frame.samples.copy())
            if len(frames) == 50:
                break
    if frames:
        level = _level_dbfs(np.concatenate(frames))
        say(f"{me} hears {who}'s audio at {level:.1f} dBFS")


async def _report(
    room: Room, events: trio.MemoryReceiveChannel[RoomEvent], say: Say, nursery: trio.Nursery
) -> None:
    """Print what the participant sees the others do."""
    seen: set[str] = set()

    def joined(identity: str, kind: int) -> None:
        if identity not in seen:
            seen.add(identity)
            what = "agent" if kind == _AGENT else "participant"
            say(f"{what} {identity!r} is in the room")

    for participant in room.remote_participants.values():
        joined(participant.identity, participant.kind)
    async for event in events:
        match event:
            case ParticipantConnected(identity=who, info=info):
                joined(who, info.kind)
            case ParticipantDisconnected(identity=who):
                seen.discard(who)
                say(f"{who!r} left the room")
            case TrackPublished(identity=who, track=track):
                say(f"{who} published track {track.name!r} ({_kind(track.kind)})")
            case TrackSubscribed(identity=who, track=track, rtc_track=rtc_track):
                if track.kind == rtc.TrackKind.KIND_AUDIO:
                    me = room.local_participant.identity
                    nursery.start_soon(_hear, rtc_track, who, say, me)
            case DataReceived(identity=who, payload=payload, topic=topic):
                text = payload.decode("utf-8", "replace")
                me = room.local_participant.identity
                say(f"{who or 'server'} -> {me} [{topic or '-'}]: {text}")
            case _:
                pass


async def _play_tone(room: Room, say: Say, hz: float = TONE_HZ) -> None:
    """Publish a microphone track playing a steady tone (real time, paced by the source)."""
    chunk = RATE // 10
    phase = 0
    me = room.local_participant.identity
    async with room.publish_audio(sample_rate=RATE, name="tone") as out:
        say(f"{me} publishes a {hz:g} Hz tone")
        while True:
            t = (np.arange(chunk) + phase) / RATE
            await out.write((np.sin(2 * np.pi * hz * t) * 8_000).astype(np.int16))
            phase += chunk


async def _chat(room: Room, say: Say) -> None:
    """Once an agent is in the room, send it a few data messages, one a second."""
    agent = await room.wait_for_participant(kind=_AGENT)
    await trio.sleep(0.5)  # let the agent's entrypoint subscribe to its room's events
    me = room.local_participant.identity
    for text in MESSAGES:
        say(f"{me} -> {agent.identity} [chat]: {text}")
        await room.publish_data(text, topic="chat")
        await trio.sleep(1.0)


async def _wait_running(server: DevServer, room: str, say: Say) -> str | None:
    try:
        job = await server.wait_for_job(room=room, status=agent_pb.JS_RUNNING)
    except JobEndedError as exc:
        say(f"job {exc.job.id} ended without running: {exc}")
        return None
    say(f"job {job.id} dispatched to worker {job.worker_id}: running")
    return job.id


async def _unless(stop: trio.Event, fn: Callable[[], Awaitable[object]]) -> None:
    """Run *fn*; cancel it if *stop* is set first."""
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            await stop.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        await fn()
        nursery.cancel_scope.cancel()


def _identities(count: int) -> list[str]:
    return [IDENTITY] if count == 1 else [f"{IDENTITY}-{i}" for i in range(1, count + 1)]


def load_scenario(path: str) -> Callable[[DevScenario], Awaitable[None]]:
    """The ``scenario`` function of *path*.

    Raises:
        ConfigurationError: no such function, or a plain ``def``.
    """
    import importlib.util
    import inspect

    spec = importlib.util.spec_from_file_location("_trio_lkagent_scenario", path)
    if spec is None or spec.loader is None:
        raise ConfigurationError(f"--scenario {path!r}: cannot import it as Python")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        raise ConfigurationError(f"{exc.filename}:{exc.lineno}: syntax error: {exc.msg}") from None
    fn = getattr(module, "scenario", None)
    if fn is None:
        raise ConfigurationError(f"--scenario {path!r} defines no `async def scenario(dev)`")
    if not inspect.iscoroutinefunction(fn):
        raise ConfigurationError(f"--scenario {path!r}: `scenario` must be `async def`")
    return fn  # type: ignore[no-any-return]


async def _builtin(room: Room, others: list[Room], say: Say, nursery: trio.Nursery) -> None:
    """The built-in script: the first participant reports what it sees; every
    participant plays a tone and sends a few messages."""
    events = room.events()
    nursery.start_soon(_report, room, events, say, nursery)
    for index, each in enumerate([room, *others]):
        nursery.start_soon(_play_tone, each, say, TONE_HZ * (1 + index * 0.25))
        nursery.start_soon(_chat, each, say)


async def _say_notes(server: DevServer, say: Say) -> None:
    """Print the dev server's explanations of its dispatch decisions as they come."""
    seen = 0
    while True:
        notes = await server.wait_until(
            lambda: server.dispatch_notes[seen:] or None  # noqa: B023 - read at each change
        )
        for note in notes:
            say(f"dev server: {note}")
        seen += len(notes)


async def _every_job_ended(server: DevServer, room: str) -> None:
    """Return once the room has had jobs and all of them ended."""

    def done() -> bool | None:
        jobs = [j for j in server.jobs.values() if j.room_name == room]
        return True if jobs and all(j.ended for j in jobs) else None

    await server.wait_until(done)


async def _session(
    server: DevServer,
    worker: Worker,
    dev: DevSettings,
    stop: trio.Event,
    say: Say,
    scenario: Callable[[DevScenario], Awaitable[None]] | None = None,
) -> None:
    """Create the room, join it, run the activity until *stop*, the duration or
    every job ended; end the jobs."""
    watcher = _JobWatcher()
    worker.add_observer(watcher)
    agent_name = worker.options.agent_name
    if agent_name or dev.metadata:
        agents = [dispatch_pb.RoomAgentDispatch(agent_name=agent_name, metadata=dev.metadata)]
    else:
        agents = None
    await server.create_room(dev.room, agents=agents)
    how = f"a dispatch for agent {agent_name!r}" if agent_name else "automatic dispatch"
    say(f"room {dev.room!r} created with {how}")
    room_job = worker.options.job_type is JobType.ROOM
    if room_job:
        await _unless(stop, partial(_wait_running, server, dev.room, say))
    if stop.is_set():
        await _end_jobs(server, worker, watcher, dev.room, say)
        return

    async def until_all_ended() -> None:
        await _every_job_ended(server, dev.room)
        say("every job ended")

    async with trio.open_nursery() as holders:
        participants = ParticipantFactory(server, holders)

        async def activity() -> None:
            async with trio.open_nursery() as nursery:
                if not room_job:
                    nursery.start_soon(_wait_running, server, dev.room, say)
                if scenario is not None:
                    session = DevScenario(
                        server=server,
                        room=dev.room,
                        worker=worker,
                        participants=participants,
                        say=say,
                        metadata=dev.metadata,
                    )

                    async def run_scenario() -> None:
                        await scenario(session)
                        say("scenario finished")
                        nursery.cancel_scope.cancel()

                    nursery.start_soon(run_scenario)
                else:
                    joined = []
                    for identity in _identities(dev.participants):
                        joined.append(await participants(dev.room, identity, name="Dev user"))
                        say(f"participant {identity!r} joined room {dev.room!r}")
                    await _builtin(joined[0], joined[1:], say, nursery)
                if dev.duration is not None:
                    await trio.sleep(dev.duration)
                    nursery.cancel_scope.cancel()

        async def watched() -> None:
            async with trio.open_nursery() as nursery:

                async def then_stop(fn: Callable[[], Awaitable[None]]) -> None:
                    await fn()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(then_stop, activity)
                nursery.start_soon(then_stop, until_all_ended)

        await _unless(stop, watched)
        # End the jobs while the participants are still there: deleting the room
        # terminates them, as an operator would.
        await _end_jobs(server, worker, watcher, dev.room, say)
        holders.cancel_scope.cancel()
    if scenario is None:
        for identity in _identities(dev.participants):
            say(f"participant {identity!r} left")
    with contextlib.suppress(KeyError):  # closed already
        await server.delete_room(dev.room)


class _JobWatcher(WorkerObserver):
    """Knows when the worker itself is done with a job (entrypoint and room left)."""

    def __init__(self) -> None:
        self._running: dict[str, trio.Event] = {}

    def job_started(self, ctx: JobContext) -> None:
        self._running[ctx.job_id] = trio.Event()

    def job_ended(self, ctx: JobContext, outcome: str, error: str) -> None:
        self._running.pop(ctx.job_id, trio.Event()).set()

    async def wait_ended(self, job_id: str) -> None:
        event = self._running.get(job_id)
        if event is not None:
            await event.wait()


async def until_abandoned(worker: Worker, job_ids: Callable[[], Iterable[str]]) -> None:
    """Return once every job of *job_ids* (read at each check) is one the worker gave
    up on because it ignored cancellation: its task never ends, so no observer hears
    of its end; the worker reported it ``JS_FAILED`` after ``shutdown_grace``."""
    while True:  # polled: the worker has no event for this (it is rare and ends a session)
        ids = set(job_ids())
        if ids and ids <= worker._abandoned:
            return
        await trio.sleep(0.1)


async def first_of(*fns: Callable[[], Awaitable[object]]) -> None:
    """Run *fns* concurrently until the first one returns."""
    async with trio.open_nursery() as nursery:
        for fn in fns:

            async def run(fn: Callable[[], Awaitable[object]] = fn) -> None:
                await fn()
                nursery.cancel_scope.cancel()

            nursery.start_soon(run)


async def _end_jobs(
    server: DevServer, worker: Worker, watcher: _JobWatcher, room: str, say: Say
) -> None:
    """Terminate *room*'s running jobs (as an operator would), wait until the worker
    is done with them (or gave up on one that ignores cancellation) and print how
    each ended."""
    jobs = [j for j in server.jobs.values() if j.room_name == room]
    for job in jobs:
        if not job.ended:
            try:
                await server.terminate_job(job.id)
                say(f"job {job.id}: termination requested")
            except KeyError:
                pass  # ended meanwhile, or its worker is gone
    for job in jobs:
        with trio.move_on_after(TEARDOWN_TIMEOUT):
            await first_of(
                partial(watcher.wait_ended, job.id),
                partial(until_abandoned, worker, lambda: [job.id]),  # noqa: B023 - awaited here
            )
            await server.wait_job_status(job.id, agent_pb.JS_SUCCESS)  # any end will do
        status = agent_pb.JobStatus.Name(job.status)
        error = f" ({job.job.state.error})" if job.job.state.error else ""
        # The server records a terminated job's end at once (as LiveKit does); the
        # worker's own later report of a stuck job is said here.
        stuck = (
            "; the worker: failed, job ignored cancellation" if job.id in worker._abandoned else ""
        )
        say(f"job {job.id} ended {status}{error}{stuck}")


async def serve_session_worker(
    nursery: trio.Nursery, worker: Worker, config: ServiceConfig, stop: trio.Event, say: Say
) -> trio.Event:
    """The worker side of a dev session, in *nursery*: signals (the first sets
    *stop*, a second cancels *nursery*), the health server if configured, and
    ``worker.serve`` once registered. Returns an event set when serving ended.

    Like ``start``, the process exits with code 3 once serving ended and only
    jobs that ignored cancellation are left (:func:`exit_if_stuck`, after the
    usual "worker drained" line): ``serve`` cannot return while their tasks run.
    That watch is shielded, so that a second Ctrl-C (which cancels *nursery*)
    does not stop it; it ends when ``serve`` returns.
    """

    async def on_signals(*, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            task_status.started()
            async for signum in signals:
                name = signal.Signals(signum).name
                if not stop.is_set():
                    say(f"{name}: ending the session (repeat to stop at once)")
                    stop.set()
                else:
                    say(f"{name} again: stopping now")
                    nursery.cancel_scope.cancel()

    await nursery.start(on_signals)
    if config.health_port is not None:
        url = await start_health(nursery, worker, config.health_host, config.health_port)
        say(f"health server at {url} (/ /worker /metrics)")
    served = trio.Event()
    stuck_watch = trio.CancelScope(shield=True)

    async def serve(*, task_status: trio.TaskStatus[str]) -> None:
        try:
            await worker.serve(task_status=task_status)
        finally:
            served.set()
            stuck_watch.cancel()

    async def exit_when_stuck() -> None:
        with stuck_watch:
            await exit_if_stuck(worker, say, summary=partial(_say_drained, worker, say))

    worker_id = await nursery.start(serve)
    nursery.start_soon(exit_when_stuck)
    say(
        f"worker {worker_id} registered, agent name {worker.options.agent_name!r},"
        f" job type {worker.options.job_type.name}"
    )
    return served


async def drain_session_worker(worker: Worker, served: trio.Event, say: Say) -> WorkerStatistics:
    """Drain the session's worker, wait until it stopped serving and say what it ran."""
    worker.drain()
    await served.wait()
    return _say_drained(worker, say)


def _say_drained(worker: Worker, say: Say) -> WorkerStatistics:
    stats = worker.statistics()
    say(
        f"worker drained: {stats.jobs_started} job(s) run, {stats.jobs_succeeded} succeeded,"
        f" {stats.jobs_failed} failed"
    )
    return stats


async def run_dev(
    load_worker: Callable[[ServiceConfig], Worker],
    config: ServiceConfig,
    dev: DevSettings,
    *,
    say: Say = say,
) -> int:
    """Run the ``dev`` session; returns the exit code: 0, or 1 when a job failed.

    A job that ignores cancellation keeps ``serve`` from returning: once serving
    ended and only such jobs are left, the process prints its "worker drained"
    line and the one naming the stuck jobs, and exits with code 3 instead of
    returning (see :func:`serve_session_worker`).

    Args:
        load_worker: Builds the worker from a config pointing at the dev server
            (the target is imported then, with ``LIVEKIT_URL`` and the keys set).
        config: Service settings (URL and keys are replaced by the dev server's).
        dev: Host, port, room, duration, job type, metadata, participants, scenario.
        say: Where progress lines go.

    Raises:
        ConfigurationError: the scenario file is unusable.
    """
    scenario = load_scenario(dev.scenario) if dev.scenario else None
    if dev.url:
        from ._dev_remote import run_dev_remote

        return await run_dev_remote(
            load_worker,
            config,
            dev,
            dev.url,
            say,
            scenario,
            _builtin,
            _identities(dev.participants),
        )
    secret = secrets.token_urlsafe(32)
    stop = trio.Event()
    async with (
        open_devserver(host=dev.host, port=dev.port, api_key="devkey", api_secret=secret) as server,
        trio.open_nursery() as nursery,
    ):
        say(f"dev server at {server.url} (api key {server.api_key!r})")
        os.environ.update(
            LIVEKIT_URL=server.url, LIVEKIT_API_KEY=server.api_key, LIVEKIT_API_SECRET=secret
        )
        local = attrs.evolve(
            config,
            url=server.url,
            api_key=server.api_key,
            api_secret=secret,
            explicit=config.explicit | {"url", "api_key", "api_secret"},
        )
        worker = load_worker(local)
        if dev.job_type is not None:
            worker = worker.with_options(job_type=JobType[dev.job_type.upper()])

        nursery.start_soon(_say_notes, server, say)
        served = await serve_session_worker(nursery, worker, local, stop, say)
        await _session(server, worker, dev, stop, say, scenario)
        stats = await drain_session_worker(worker, served, say)
        failed = stats.jobs_failed + sum(
            1
            for job in server.jobs.values()
            if job.room_name == dev.room and job.status == agent_pb.JS_FAILED and not job.worker_id
        )
        nursery.cancel_scope.cancel()
    say("dev server stopped")
    return 1 if failed else 0


async def run_with_reload(argv: Sequence[str], watch: Path, *, say: Say = say) -> int:
    """``dev --reload``: run *argv* (a ``dev`` command without ``--reload``) as a
    child process and restart it whenever a ``.py`` file under *watch* changes.

    Returns the last child's exit code once it exits on its own, or 0 at Ctrl-C.

    Raises:
        ConfigurationError: watchfiles is not installed.
    """
    try:
        import watchfiles
    except ImportError:
        raise ConfigurationError(
            '--reload needs watchfiles: pip install "trio-lkagent[reload]"'
        ) from None
    env = {k: v for k, v in os.environ.items() if k != "LIVEKIT_DEV_RELOAD"}
    say(f"watching {watch} for changes (--reload)")

    async def changed() -> set[str]:
        async for changes in watchfiles.awatch(
            watch, watch_filter=watchfiles.PythonFilter(), debounce=300
        ):
            return {path for _change, path in changes}
        return set()

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        while True:
            outcome = await _run_once(argv, env, changed, signals)
            if outcome == "signal":
                say("stopped (--reload)")
                return 0
            if isinstance(outcome, set):
                names = ", ".join(sorted(Path(p).name for p in outcome))
                say(f"{names} changed: restarting")
                continue
            return outcome if isinstance(outcome, int) else 1


async def _run_once(
    argv: Sequence[str],
    env: dict[str, str],
    changed: Callable[[], Awaitable[set[str]]],
    signals: AsyncIterator[int],
) -> int | set[str] | str:
    """One child run: its exit code, the changed files, or "signal"."""
    result: list[int | set[str] | str] = []
    async with trio.open_nursery() as nursery:

        async def child() -> None:
            proc = await trio.run_process(
                list(argv),
                env=env,
                check=False,
                start_new_session=True,
                deliver_cancel=_terminate,
            )
            result.append(proc.returncode)
            nursery.cancel_scope.cancel()

        async def watcher() -> None:
            result.append(await changed())
            nursery.cancel_scope.cancel()

        async def interrupted() -> None:
            async for _ in signals:
                result.append("signal")
                nursery.cancel_scope.cancel()
                return

        nursery.start_soon(child)
        nursery.start_soon(watcher)
        nursery.start_soon(interrupted)
    return result[0] if result else "signal"


async def _terminate(proc: trio.Process) -> None:
    """Stop a reloaded child: SIGINT twice (its own Ctrl-C handling), then kill."""
    for _ in range(2):
        proc.send_signal(signal.SIGINT)
        with trio.move_on_after(TEARDOWN_TIMEOUT):
            await proc.wait()
            return
    proc.kill()
