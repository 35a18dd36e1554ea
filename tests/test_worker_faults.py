"""A real Worker under seeded random faults from the dev server; invariants on what
the server received.

Each run draws, from a fixed seed, a sequence of events: dispatch bursts, jobs
ending by themselves (returning, failing, ``ctx.shutdown``), server
terminations, dropped sockets (with or without a close frame), withheld
assignments, and finally a drain. Virtual time (``autojump_clock``), real
loopback WebSockets. The same invariants as ``tests/test_jobstate.py``, checked
on the server's record of every ``UpdateJobStatus`` the worker sent:

- per job, ``JS_RUNNING`` precedes the final status, there is at most one
  final status and nothing after it;
- the jobs the worker reported running and not yet ended never exceed
  ``max_jobs`` (checked after every event), and neither do its own counts;
- a job's entrypoint runs at most once (a late or duplicate assignment never
  runs it again);
- once drained, every job that ran has exactly one final status on the server,
  including those that ended while the socket was down.
"""

from __future__ import annotations

import collections
import random

import pytest
import trio
import trio.testing
from livekit.protocol import agent as agent_pb

from trio_lkagent import JobContext, ReconnectPolicy, Worker
from trio_lkagent.devserver import DevServer

from .conftest import worker_options

FINAL = {agent_pb.JS_SUCCESS, agent_pb.JS_FAILED}
MAX_JOBS = 3
EVENTS = 80


class Jobs:
    """Entrypoints whose end the test decides: return, fail, shutdown, or run on."""

    def __init__(self) -> None:
        self.runs: collections.Counter[str] = collections.Counter()
        self.running: dict[str, tuple[JobContext, trio.Event]] = {}
        self.how: dict[str, str] = {}

    async def entrypoint(self, ctx: JobContext) -> None:
        self.runs[ctx.job_id] += 1
        done = trio.Event()
        self.running[ctx.job_id] = (ctx, done)
        try:
            await done.wait()
        finally:
            del self.running[ctx.job_id]
        how = self.how.pop(ctx.job_id, "return")
        if how == "fail":
            raise RuntimeError("the job failed on purpose")
        if how == "shutdown":
            ctx.shutdown("done")
            await trio.sleep_forever()

    def end(self, job_id: str, how: str) -> None:
        self.how[job_id] = how
        self.running[job_id][1].set()


def reports(server: DevServer) -> dict[str, list[int]]:
    """Every status the worker sent, per job, in order: recorded, then ignored
    (sent on a later connection, which the server ignores as Go does), then late."""
    return {
        job.id: [u.status for _, u in job.updates + job.ignored_updates + job.late_updates]
        for job in server.jobs.values()
    }


def check_wire(server: DevServer) -> None:
    running_now = 0
    for job_id, statuses in reports(server).items():
        finals = [s for s in statuses if s in FINAL]
        assert len(finals) <= 1, (job_id, statuses)
        if finals:
            assert statuses[-1] in FINAL, f"{job_id}: status after the final one: {statuses}"
            assert statuses[0] == agent_pb.JS_RUNNING, f"{job_id}: final first: {statuses}"
        elif statuses:
            running_now += 1
    assert running_now <= MAX_JOBS


@pytest.mark.parametrize("seed", range(1, 17))
async def test_random_faults_keep_the_invariants(
    server: DevServer, autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    rng = random.Random(seed)
    jobs = Jobs()
    options = worker_options(
        server,
        max_jobs=MAX_JOBS,
        assignment_timeout=2,
        reconnect=ReconnectPolicy(initial_delay=0.1, max_delay=1, stable_after=5),
        drain_timeout=30,
    )
    worker = Worker(jobs.entrypoint, options)
    done = trio.Event()
    seen: collections.Counter[str] = collections.Counter()
    rooms = 0

    async def serve(*, task_status: trio.TaskStatus[str]) -> None:
        try:
            await worker.serve(task_status=task_status)
        finally:
            done.set()

    async with trio.open_nursery() as nursery:
        await nursery.start(serve)
        for _ in range(EVENTS):
            event = rng.choice(
                ["burst"] * 4 + ["end"] * 5 + ["terminate", "drop", "withhold", "wait"]
            )
            seen[event] += 1
            if event == "burst":
                for _ in range(rng.randint(1, 4)):
                    rooms += 1
                    await server.create_dispatch(f"room-{seed}-{rooms}", "test-agent")
            elif event == "end" and jobs.running:
                job_id = rng.choice(sorted(jobs.running))
                jobs.end(job_id, rng.choice(["return", "fail", "shutdown"]))
            elif event == "terminate":
                live = [j.id for j in server.jobs.values() if server._agents.is_live(j.id)]
                if live:
                    await server.terminate_job(rng.choice(sorted(live)))
            elif event == "drop":
                connected = [w for w in server.workers.values() if w.connected]
                if connected:
                    code = rng.choice([None, 1011])
                    await server.drop_worker(connected[0].worker_id, code)
            elif event == "withhold":  # a burst whose assignments are lost on the way
                server.faults.withhold_assignment = True
                for _ in range(rng.randint(1, 2)):
                    rooms += 1
                    await server.create_dispatch(f"room-{seed}-{rooms}", "test-agent")
                await trio.sleep(rng.uniform(0, 3))  # reservations expire after 2 s
                server.faults.withhold_assignment = False
            await trio.sleep(rng.uniform(0, 1.5))
            stats = worker.statistics()
            assert stats.running_jobs + stats.reserved_jobs <= MAX_JOBS
            check_wire(server)
            assert all(n == 1 for n in jobs.runs.values()), jobs.runs

        # The end: no more faults, let the worker come back, end every job, drain.
        while not worker.statistics().registered:  # noqa: ASYNC110 - virtual time
            await trio.sleep(0.1)
        for job_id in sorted(jobs.running):
            jobs.end(job_id, "return")
        worker.drain()
        with trio.fail_after(60):
            await done.wait()

    check_wire(server)
    sent = reports(server)
    assert all(n == 1 for n in jobs.runs.values()), jobs.runs
    for job_id in jobs.runs:  # every job that ran: exactly one final on the server
        assert sum(s in FINAL for s in sent.get(job_id, [])) == 1, (job_id, sent.get(job_id))
    stats = worker.statistics()
    assert stats.jobs_started == len(jobs.runs) == stats.jobs_succeeded + stats.jobs_failed
    # The run did exercise the faults (the seeds are fixed: this is deterministic).
    assert len(jobs.runs) >= 8 and seen["drop"] >= 1 and stats.reconnects >= 1, (seen, stats)
    assert seen["withhold"] >= 1 and seen["terminate"] >= 1, seen
