"""A worker whose jobs transcribe: does the rest of the worker stay responsive?

    python bench/bench_inference.py [--mode process|thread|loop] [--jobs 4] [--probes 15]

Two processes: the dev server (this script with ``--serve``), which also runs a
``livekit`` participant that pings an echo job; and the worker (this process), whose
jobs are of three kinds (by dispatch metadata):

* ``transcribe``: decodes the first utterance of tests/data/utterance.wav (3.7 s)
  with PocketSphinx over and over, without pause, as a job transcribing a
  continuous stream does;
* ``echo``: joins its room and answers every data packet on topic ``ping`` with one
  on ``pong``;
* ``probe``: notes when its entrypoint starts, and ends.

Figures, first with no transcribing job (idle), then with ``--jobs`` of them:

* dispatch latency: the server is asked for a dispatch -> the ``probe`` job's
  entrypoint runs (p50/p90 over ``--probes``, one at a time);
* data round trip: the participant sends ``ping`` -> receives the echo job's
  ``pong`` (p50/p90).

``--mode`` says where the decoding runs: ``process`` (an InferenceExecutor with
worker processes, the SDK's way for GIL-holding engines), ``thread`` (a Trio worker
thread; pocketsphinx holds the GIL) or ``loop`` (called in the job's task: what the
executor exists to prevent).
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio
import trio.lowlevel

AGENT = "bench-inference"
FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "data" / "utterance.wav"


# -- the server process -----------------------------------------------------------


async def serve() -> None:
    from livekit import api as lkapi

    from trio_lkagent import open_room
    from trio_lkagent.devserver import open_devserver
    from trio_lkagent.events import DataReceived

    stdin = trio.lowlevel.FdStream(sys.stdin.fileno())
    buffer = b""

    async def line() -> str:
        nonlocal buffer
        while b"\n" not in buffer:
            chunk = await stdin.receive_some()
            if not chunk:
                raise SystemExit(0)
            buffer += chunk
        text, _, buffer = buffer.partition(b"\n")
        return text.decode()

    def emit(obj: object) -> None:
        print(json.dumps(obj), flush=True)

    async with open_devserver(api_key="bench", api_secret="b" * 40) as server:
        emit({"url": server.url})
        room: Any = None
        events: Any = None
        async with trio.open_nursery() as nursery:
            while True:
                command, *args = (await line()).split()
                if command == "dispatch":
                    await server.create_dispatch(room=args[0], agent_name=AGENT, metadata=args[1])
                    emit({"ok": True})
                elif command == "join":
                    token = (
                        lkapi.AccessToken("bench", "b" * 40)
                        .with_identity("pinger")
                        .with_grants(lkapi.VideoGrants(room_join=True, room=args[0]))
                        .to_jwt()
                    )
                    room = await nursery.start(_hold_room, open_room, server.url, token)
                    events = room.events()
                    await room.wait_for_participant()
                    emit({"ok": True})
                elif command == "ping":
                    rtts = []
                    for _ in range(int(args[0])):
                        start = time.perf_counter()
                        await room.publish_data(b"ping", topic="ping")
                        async for event in events:
                            if isinstance(event, DataReceived) and event.topic == "pong":
                                break
                        rtts.append((time.perf_counter() - start) * 1e3)
                        await trio.sleep(0.05)
                    emit({"rtt": rtts})
                elif command == "stop":
                    emit({"ok": True})
                    nursery.cancel_scope.cancel()
                    return


async def _hold_room(open_room: Any, url: str, token: str, *, task_status: Any) -> None:
    async with open_room(url, token) as room:
        task_status.started(room)
        await trio.sleep_forever()


# -- the worker process -------------------------------------------------------------


async def bench(mode: str, jobs: int, probes: int) -> dict[str, Any]:
    import wave

    import numpy as np

    from trio_lkagent import JobContext, Worker, WorkerOptions
    from trio_lkagent.events import DataReceived
    from trio_lkagent.plugins import PocketSphinxSTT, open_inference_executor, warm_pocketsphinx
    from trio_lkagent.plugins._stt import _ps_decode

    with wave.open(str(FIXTURE), "rb") as w:
        pcm = w.readframes(int(3.7 * w.getframerate()))  # the first utterance
    utterance = np.frombuffer(pcm, np.int16)
    started: dict[str, float] = {}
    decoded = [0]

    async with open_inference_executor(
        threads=1, processes=2 if mode == "process" else 0, warmup=[warm_pocketsphinx]
    ) as executor:
        from trio_lkagent._media import AudioFrame

        stt = PocketSphinxSTT(executor=executor if mode == "process" else None)

        async def entrypoint(ctx: JobContext) -> None:
            kind = ctx.job.metadata
            if kind == "probe":
                started[ctx.room_name] = time.perf_counter()
                return
            if kind == "transcribe":
                while True:
                    if mode == "loop":
                        _ps_decode((), pcm)
                        await trio.lowlevel.checkpoint()
                    else:
                        await stt.recognize(AudioFrame(utterance, 16000))
                    decoded[0] += 1
            if kind == "echo":
                async with ctx.connect() as room:
                    async for event in room.events():
                        if isinstance(event, DataReceived) and event.topic == "ping":
                            await room.publish_data(b"pong", topic="pong")

        async with trio.open_nursery() as outer:
            proc: trio.Process = await outer.start(
                functools.partial(
                    trio.run_process,
                    [sys.executable, __file__, "--serve"],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    check=False,
                )
            )
            assert proc.stdout is not None and proc.stdin is not None
            lines = _lines(proc.stdout)
            url = json.loads(await lines.__anext__())["url"]
            options = WorkerOptions(url=url, api_key="bench", api_secret="b" * 40, agent_name=AGENT)
            worker = Worker(entrypoint, options)

            async def command(text: str) -> Any:
                assert proc.stdin is not None
                await proc.stdin.send_all(text.encode() + b"\n")
                return json.loads(await lines.__anext__())

            async def measure(tag: str) -> dict[str, list[float]]:
                dispatch = []
                for i in range(probes):
                    room = f"probe-{tag}-{i}"
                    t0 = time.perf_counter()
                    await command(f"dispatch {room} probe")
                    while room not in started:  # noqa: ASYNC110 - a bench
                        await trio.sleep(0.001)
                    dispatch.append((started[room] - t0) * 1e3)
                rtt = (await command(f"ping {probes}"))["rtt"]
                return {"dispatch": dispatch, "rtt": rtt}

            async with trio.open_nursery() as nursery:
                await nursery.start(worker.serve)
                await command("dispatch echo echo")
                await command("join echo")
                await command("ping 3")  # warm the path
                idle = await measure("idle")
                for i in range(jobs):
                    await command(f"dispatch transcribe-{i} transcribe")
                # Every transcriber busy: wait for the first decodes to complete.
                while decoded[0] < 1:  # noqa: ASYNC110 - a bench
                    await trio.sleep(0.1)
                before = decoded[0]
                t0 = time.perf_counter()
                loaded = await measure("loaded")
                elapsed = time.perf_counter() - t0
                rate = (decoded[0] - before) * len(utterance) / 16000 / elapsed
                await command("stop")
                nursery.cancel_scope.cancel()
            outer.cancel_scope.cancel()
    return {
        "idle": idle,
        "loaded": loaded,
        "audio_seconds_per_second": rate,
        "decoded": decoded[0],
    }


async def _lines(stream: trio.abc.ReceiveStream) -> Any:
    buffer = b""
    async for chunk in stream:
        buffer += chunk
        while b"\n" in buffer:
            text, _, buffer = buffer.partition(b"\n")
            if text.startswith(b"{"):
                yield text


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--mode", choices=["process", "thread", "loop"], default="process")
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--probes", type=int, default=15)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve)
        return
    result = trio.run(bench, args.mode, args.jobs, args.probes)
    print(f"mode={args.mode}, {args.jobs} transcribing jobs (loaded) vs none (idle)")
    for name in ("dispatch", "rtt"):
        idle, loaded = result["idle"][name], result["loaded"][name]
        print(
            f"  {name:8s} idle p50 {statistics.median(idle):7.1f} ms p90 {_pct(idle, 0.9):7.1f}"
            f" | loaded p50 {statistics.median(loaded):7.1f} ms p90 {_pct(loaded, 0.9):7.1f}"
            f" | ratio p50 {statistics.median(loaded) / statistics.median(idle):5.2f}x"
        )
    print(f"  decodes: {result['decoded']}")
    print(f"  transcribed while loaded: {result['audio_seconds_per_second']:.2f} s of audio per s")


if __name__ == "__main__":
    main()
