"""Handler-style agents: lifecycle and participant hooks as ``async def`` methods.

A handler object replaces the entrypoint function (seed 001's ``UniversalHandler``)::

    from trio_lkagent import Worker
    from trio_lkagent.handlers import BaseHandler

    class Greeter(BaseHandler):
        async def on_participant_joined(self, ctx, participant):
            await ctx.publish_data(f"hello {participant.identity}")

    trio.run(Worker(Greeter(), options).serve)

The worker joins the room, awaits ``on_job_assigned`` and then each hook in one
dispatcher task per job, in the order the events happened. ``AutoDisconnect``
decides when a job leaves its room on its own. See ``docs/handlers.md``.
"""

from ._handler import AgentHandler as AgentHandler
from ._handler import AutoDisconnect as AutoDisconnect
from ._handler import BaseHandler as BaseHandler
from ._handler import SimpleHandler as SimpleHandler
from ._runner import watch_auto_disconnect as watch_auto_disconnect

__all__ = [
    "AgentHandler",
    "AutoDisconnect",
    "BaseHandler",
    "SimpleHandler",
    "watch_auto_disconnect",
]
