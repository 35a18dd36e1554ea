"""The job-process frame protocol: round trips, truncation, garbage, a vanished peer."""

from __future__ import annotations

import socket
import struct

import hypothesis.strategies as st
import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import given, settings

from trio_lkagent import ProtocolError
from trio_lkagent.processes._ipc import MAX_FRAME, FrameChannel, decode_frame, encode_frame


def pair() -> tuple[FrameChannel, trio.SocketStream]:
    a, b = socket.socketpair()
    ours = FrameChannel(trio.SocketStream(trio.socket.from_stdlib_socket(a)))
    return ours, trio.SocketStream(trio.socket.from_stdlib_socket(b))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=100, deadline=None)
@given(
    messages=st.lists(
        st.fixed_dictionaries(
            {"type": st.text(min_size=1, max_size=10)}, optional={"x": json_values}
        ),
        min_size=1,
        max_size=5,
    ),
    chunk=st.integers(1, 50),
)
def test_messages_survive_any_chunking(messages: list[dict[str, object]], chunk: int) -> None:
    """Frames split at arbitrary points (as a socket may deliver them) decode intact."""

    async def main() -> None:
        ours, theirs = pair()
        data = b"".join(encode_frame(m) for m in messages)
        async with trio.open_nursery() as nursery:

            async def write() -> None:
                for i in range(0, len(data), chunk):
                    await theirs.send_all(data[i : i + chunk])
                    await trio.lowlevel.checkpoint()
                await theirs.aclose()

            nursery.start_soon(write)
            got = [await ours.receive() for _ in messages]
            with pytest.raises(trio.EndOfChannel):
                await ours.receive()
        assert got == messages

    trio.run(main)


async def test_a_peer_vanishing_mid_frame_is_broken_not_end() -> None:
    ours, theirs = pair()
    frame = encode_frame({"type": "done", "outcome": "returned"})
    await theirs.send_all(frame[:7])
    await theirs.aclose()
    with pytest.raises(trio.BrokenResourceError, match="mid-frame"):
        await ours.receive()


async def test_a_peer_vanishing_mid_header_is_broken() -> None:
    ours, theirs = pair()
    await theirs.send_all(b"\x00\x00")
    await theirs.aclose()
    with pytest.raises(trio.BrokenResourceError):
        await ours.receive()


async def test_a_clean_close_between_frames_is_end_of_channel() -> None:
    ours, theirs = pair()
    await theirs.send_all(encode_frame({"type": "ready"}))
    await theirs.aclose()
    assert await ours.receive() == {"type": "ready"}
    with pytest.raises(trio.EndOfChannel):
        await ours.receive()


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe not utf-8", b"{not json", b"[1, 2]", b'{"no_type": 1}', b'{"type": 5}'],
)
async def test_garbage_is_a_protocol_error(body: bytes) -> None:
    ours, theirs = pair()
    await theirs.send_all(struct.pack(">I", len(body)) + body)
    with pytest.raises(ProtocolError):
        await ours.receive()


async def test_an_oversized_length_is_refused_before_reading_it() -> None:
    ours, theirs = pair()
    await theirs.send_all(struct.pack(">I", MAX_FRAME + 1))
    with pytest.raises(ProtocolError, match="max"):
        await ours.receive()


async def test_sending_to_a_vanished_peer_is_broken() -> None:
    ours, theirs = pair()
    await theirs.aclose()
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(100):  # the first sends may still fit in the socket buffer
            await ours.send({"type": "log", "msg": "x" * 10000})


async def test_a_receive_cancelled_mid_frame_loses_nothing() -> None:
    ours, theirs = pair()
    frame = encode_frame({"type": "done", "outcome": "failed", "error": "E"})
    await theirs.send_all(frame[:6])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ours.receive)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    await theirs.send_all(frame[6:])
    assert await ours.receive() == {"type": "done", "outcome": "failed", "error": "E"}


def test_encode_refuses_messages_without_a_type() -> None:
    with pytest.raises(TypeError):
        encode_frame({"kind": "x"})
    assert decode_frame(b'{"type":"x"}') == {"type": "x"}
