"""A handler for the process-executor test (importable, and picklable, by job processes)."""

from __future__ import annotations

import os

from livekit import rtc

from trio_lkagent import JobContext, JobRequest
from trio_lkagent.handlers import AutoDisconnect, BaseHandler


class EchoHandler(BaseHandler):
    """Answers every data packet on topic ``ping`` with ``handled:<payload>:<pid>``."""

    async def on_job_request(self, req: JobRequest) -> None:
        await req.accept(auto_disconnect=AutoDisconnect(grace=0))

    async def on_data_received(
        self,
        ctx: JobContext,
        data: bytes,
        participant: rtc.RemoteParticipant | None,
        topic: str,
    ) -> None:
        if topic == "ping":
            await ctx.publish_data(f"handled:{data.decode()}:{os.getpid()}", topic="pong")


HANDLER = EchoHandler()
