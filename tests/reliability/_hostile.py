"""A raw agent-service endpoint on wsproto that misbehaves on demand.

The dev server is a well-behaved LiveKit server; the attacks here need a peer
that breaks the WebSocket rules at chosen moments (pings into our close
handshake, never answering a close, never reading). Built on wsproto over a
plain trio socket so every frame is under the test's control.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import attrs
import trio
import wsproto
import wsproto.events as ev
from livekit.protocol import agent as agent_pb

from trio_lkagent import WorkerOptions

from ..conftest import API_KEY, API_SECRET


class PeerGone(Exception):
    """The worker closed the TCP connection."""


class HostileConn:
    """One accepted worker connection: raw frames in and out."""

    def __init__(self, stream: trio.SocketStream, index: int) -> None:
        self.stream = stream
        self.index = index
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        self._pending: list[ev.Event] = []
        self.close_received = trio.Event()
        self.tcp_closed = trio.Event()
        self.messages: list[agent_pb.WorkerMessage] = []

    async def send(self, event: ev.Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def send_raw_ping(self, payload: bytes = b"race") -> None:
        """A Ping frame written by hand: wsproto refuses to send one after a Close,
        which is exactly what the Go server and hypercorn do (their ping timers)."""
        assert len(payload) < 126
        await self.stream.send_all(bytes([0x89, len(payload)]) + payload)

    async def send_message(self, message: agent_pb.ServerMessage) -> None:
        await self.send(ev.BytesMessage(data=message.SerializeToString()))

    async def next_event(self) -> ev.Event:
        while not self._pending:
            data = await self.stream.receive_some(65536)
            if not data:
                self.tcp_closed.set()
                raise PeerGone
            self.ws.receive_data(data)
            self._pending.extend(self.ws.events())
        event = self._pending.pop(0)
        if isinstance(event, ev.CloseConnection):
            self.close_received.set()
        return event

    async def accept(self) -> None:
        event = await self.next_event()
        assert isinstance(event, ev.Request)
        await self.send(ev.AcceptConnection())

    async def next_message(self) -> agent_pb.WorkerMessage:
        """The next worker message (answering pings of the WebSocket layer)."""
        while True:
            event = await self.next_event()
            if isinstance(event, ev.BytesMessage):
                message = agent_pb.WorkerMessage()
                message.ParseFromString(bytes(event.data))
                self.messages.append(message)
                return message
            if isinstance(event, ev.Ping):
                await self.send(event.response())

    async def register(self, worker_id: str = "AW_hostile") -> None:
        message = await self.next_message()
        assert message.WhichOneof("message") == "register"
        await self.send_message(
            agent_pb.ServerMessage(register=agent_pb.RegisterWorkerResponse(worker_id=worker_id))
        )

    async def read_until_close(self) -> None:
        """Read (and record) worker messages until its Close frame or the TCP close."""
        try:
            while not isinstance(await self.next_event_recording(), ev.CloseConnection):
                pass
        except PeerGone:
            pass

    async def next_event_recording(self) -> ev.Event:
        event = await self.next_event()
        if isinstance(event, ev.BytesMessage):
            message = agent_pb.WorkerMessage()
            message.ParseFromString(bytes(event.data))
            self.messages.append(message)
        return event

    async def drain_tcp(self) -> None:
        """Read and discard until the worker closes the TCP connection."""
        try:
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    self.tcp_closed.set()
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.tcp_closed.set()


Behaviour = Callable[[HostileConn], Awaitable[None]]


@attrs.define
class HostileServer:
    """Accepts worker connections on 127.0.0.1 and runs ``behaviours[i]`` for the i-th."""

    port: int
    connections: list[HostileConn] = attrs.field(factory=list)
    new_connection: trio.Event = attrs.field(factory=trio.Event)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def options(self, **overrides: object) -> WorkerOptions:
        kwargs: dict[str, object] = {
            "url": self.url,
            "api_key": API_KEY,
            "api_secret": API_SECRET,
            "agent_name": "hostile",
        }
        kwargs.update(overrides)
        return WorkerOptions(**kwargs)  # type: ignore[arg-type]

    async def wait_connections(self, n: int) -> HostileConn:
        while len(self.connections) < n:
            self.new_connection = trio.Event()
            await self.new_connection.wait()
        return self.connections[n - 1]


@asynccontextmanager
async def hostile_server(*behaviours: Behaviour) -> AsyncIterator[HostileServer]:
    """Serve; connection *i* runs ``behaviours[i]`` (the last one repeats)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    server = HostileServer(port=port)

    async def handle(stream: trio.SocketStream) -> None:
        conn = HostileConn(stream, len(server.connections))
        server.connections.append(conn)
        server.new_connection.set()
        behaviour = behaviours[min(conn.index, len(behaviours) - 1)]
        try:
            await conn.accept()
            await behaviour(conn)
        except (PeerGone, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        yield server
        nursery.cancel_scope.cancel()


async def well_behaved(conn: HostileConn) -> None:
    """Register, answer pings and WorkerPings, close when asked."""
    await conn.register(f"AW_good{conn.index}")
    while True:
        event = await conn.next_event_recording()
        if isinstance(event, ev.Ping):
            await conn.send(event.response())
        elif isinstance(event, ev.CloseConnection):
            await conn.send(event.response())
            await conn.drain_tcp()
            return
        elif isinstance(event, ev.BytesMessage):
            message = conn.messages[-1]
            if message.WhichOneof("message") == "ping":
                await conn.send_message(
                    agent_pb.ServerMessage(
                        pong=agent_pb.WorkerPong(
                            last_timestamp=message.ping.timestamp, timestamp=message.ping.timestamp
                        )
                    )
                )
