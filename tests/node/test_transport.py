"""Peer transport: framing, handshake checks, reconnect, bounded queues."""

from __future__ import annotations

import asyncio
import struct

import crc32c
from hypothesis import given, settings
from hypothesis import strategies as st
from node_helpers import free_port, run, until

from dengine.node.peer_frames import _varint
from dengine.node.transport import (
    HEADER,
    Transport,
    encode_frame,
    encode_message_frames,
)
from dengine.proto import Entry, Hello, Message, MessageType, PeerFrame


class Inbox:
    """Collects what a transport delivers."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, Message]] = []

    def __call__(self, from_id: int, msgs: list[Message]) -> None:
        self.messages.extend((from_id, m) for m in msgs)


def make(node_id: int, ports: dict[int, int], inbox: Inbox, **kw: object) -> Transport:
    peers = {i: f"127.0.0.1:{p}" for i, p in ports.items() if i != node_id}
    return Transport(
        node_id=node_id,
        cluster_id=str(kw.pop("cluster_id", "c1")),
        listen=f"127.0.0.1:{ports[node_id]}",
        peers=peers,
        on_messages=inbox,
        client_address=f"client-{node_id}:9081",
        **kw,  # type: ignore[arg-type]
    )


def msg(frm: int, to: int, term: int = 1, **kw: object) -> Message:
    return Message(type=MessageType.MSG_APPEND, from_id=frm, to_id=to, term=term, **kw)


def test_two_transports_exchange_messages_and_learn_client_addresses() -> None:
    async def main() -> None:
        ports = {1: free_port(), 2: free_port()}
        in1, in2 = Inbox(), Inbox()
        t1, t2 = make(1, ports, in1), make(2, ports, in2)
        await t1.start()
        await t2.start()
        try:
            t1.send([msg(1, 2, term=i) for i in range(1, 101)])
            t2.send([msg(2, 1, term=7)])
            await until(lambda: len(in2.messages) == 100 and len(in1.messages) == 1)
            assert [m.term for _, m in in2.messages] == list(range(1, 101))
            assert all(frm == 1 for frm, _ in in2.messages)
            assert in1.messages[0][1].term == 7
            assert t1.peer_client_address(2) == "client-2:9081"
            assert t2.peer_client_address(1) == "client-1:9081"
            # batching: 100 messages sent in one call travel in few frames
            assert t1._links[2].sent_frames <= 2
        finally:
            await t1.close()
            await t2.close()

    run(main())


def test_other_cluster_is_refused() -> None:
    async def main() -> None:
        ports = {1: free_port(), 2: free_port()}
        in1, in2 = Inbox(), Inbox()
        t1 = make(1, ports, in1)
        t2 = make(2, ports, in2, cluster_id="other", backoff_min=0.01, backoff_max=0.05)
        await t1.start()
        await t2.start()
        try:
            t2.send([msg(2, 1)])
            await until(lambda: t1.refused_connections >= 2)
            t2.send([msg(2, 1)])
            await asyncio.sleep(0.1)
            assert in1.messages == []
            assert not t2.is_connected(1)
            assert t1.peer_client_address(2) == ""
        finally:
            await t1.close()
            await t2.close()

    run(main())


def test_unknown_node_id_is_refused() -> None:
    async def main() -> None:
        ports = {1: free_port(), 2: free_port(), 3: free_port()}
        in1, in3 = Inbox(), Inbox()
        t1 = make(1, {1: ports[1], 2: ports[2]}, in1)  # knows only node 2
        t3 = make(3, ports, in3, backoff_min=0.01, backoff_max=0.05)
        await t1.start()
        await t3.start()
        try:
            t3.send([msg(3, 1)])
            await until(lambda: t1.refused_connections >= 1)
            await asyncio.sleep(0.05)
            assert in1.messages == []
        finally:
            await t1.close()
            await t3.close()

    run(main())


async def _raw_hello(
    port: int, node_id: int = 2
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    hello = Hello(cluster_id="c1", node_id=node_id, to_id=1)
    writer.write(encode_frame(PeerFrame(hello=hello).SerializeToString()))
    header = await reader.readexactly(HEADER.size)
    length, _ = HEADER.unpack(header)
    reply = PeerFrame.FromString(await reader.readexactly(length))
    assert reply.hello.node_id == 1
    return reader, writer


def test_oversized_frame_closes_the_connection() -> None:
    async def main() -> None:
        ports = {1: free_port(), 2: free_port()}
        in1 = Inbox()
        t1 = make(1, ports, in1, max_frame_bytes=1024)
        await t1.start()
        try:
            reader, writer = await _raw_hello(ports[1])
            writer.write(struct.pack("<II", 1025, 0))  # announces a frame over the limit
            assert await asyncio.wait_for(reader.read(1), 5) == b""  # closed by t1
            writer.close()
            assert in1.messages == []
        finally:
            await t1.close()

    run(main())


def test_corrupt_frame_closes_the_connection() -> None:
    async def main() -> None:
        ports = {1: free_port(), 2: free_port()}
        in1 = Inbox()
        t1 = make(1, ports, in1)
        await t1.start()
        try:
            reader, writer = await _raw_hello(ports[1])
            good = encode_message_frames([msg(2, 1)], 1 << 20)[0]
            bad = good[:HEADER.size] + bytes([good[HEADER.size] ^ 1]) + good[HEADER.size + 1:]
            writer.write(bad)
            assert await asyncio.wait_for(reader.read(1), 5) == b""
            writer.close()
            assert in1.messages == []
        finally:
            await t1.close()

    run(main())


def test_misaddressed_messages_are_dropped() -> None:
    async def main() -> None:
        ports = {1: free_port(), 2: free_port()}
        in1 = Inbox()
        t1 = make(1, ports, in1)
        await t1.start()
        try:
            _, writer = await _raw_hello(ports[1])
            frames = encode_message_frames(
                [msg(3, 1, term=1), msg(2, 4, term=2), msg(2, 1, term=3)], 1 << 20
            )
            writer.write(b"".join(frames))
            await until(lambda: len(in1.messages) == 1)
            assert in1.messages[0][1].term == 3
            writer.close()
        finally:
            await t1.close()

    run(main())


def test_reconnects_after_peer_restart() -> None:
    async def main() -> None:
        ports = {1: free_port(), 2: free_port()}
        in1, in2 = Inbox(), Inbox()
        t1 = make(1, ports, in1, backoff_min=0.01, backoff_max=0.1)
        t2 = make(2, ports, in2)
        await t1.start()
        await t2.start()
        t1.send([msg(1, 2, term=1)])
        await until(lambda: len(in2.messages) == 1)
        await t2.close()
        await until(lambda: not t1.is_connected(2))
        in2b = Inbox()
        t2b = make(2, ports, in2b)
        await t2b.start()
        try:
            await until(lambda: t1.is_connected(2))
            t1.send([msg(1, 2, term=2)])
            await until(lambda: any(m.term == 2 for _, m in in2b.messages))
        finally:
            await t1.close()
            await t2b.close()

    run(main())


def test_queue_to_dead_peer_is_bounded_and_does_not_block_others() -> None:
    async def main() -> None:
        ports = {1: free_port(), 2: free_port(), 3: free_port()}  # node 3 never starts
        in1, in2 = Inbox(), Inbox()
        t1 = make(1, ports, in1, queue_limit=100, backoff_min=0.01, backoff_max=0.05)
        t2 = make(2, ports, in2)
        await t1.start()
        await t2.start()
        try:
            for term in range(1, 10_001):
                t1.send([msg(1, 3, term=term), msg(1, 2, term=term)])
            assert t1.queued(3) <= 100
            assert t1.dropped(3) >= 10_000 - 100
            await until(lambda: len(in2.messages) >= 1 and in2.messages[-1][1].term == 10_000)
            assert t1.queued(3) <= 100
        finally:
            await t1.close()
            await t2.close()

    run(main())


_messages = st.lists(
    st.builds(
        lambda term, n, size: Message(
            type=MessageType.MSG_APPEND, to_id=2, from_id=1, term=term,
            entries=[Entry(index=i + 1, term=term) for i in range(n)],
            context=b"x" * size,
        ),
        st.integers(1, 2**40), st.integers(0, 5), st.integers(0, 3000),
    ),
    max_size=30,
)


@settings(max_examples=60, deadline=None)
@given(messages=_messages, limit=st.integers(256, 20_000))
def test_frames_roundtrip_under_limit(messages: list[Message], limit: int) -> None:
    frames = encode_message_frames(messages, limit)
    decoded: list[Message] = []
    for frame in frames:
        length, crc = HEADER.unpack(frame[:HEADER.size])
        payload = frame[HEADER.size:]
        assert length == len(payload) <= limit
        assert crc == crc32c.crc32c(payload)
        decoded.extend(PeerFrame.FromString(payload).messages.messages)
    def framed_size(m: Message) -> int:
        return 1 + len(_varint(m.ByteSize())) + m.ByteSize()

    # every message that fits a frame arrives, in order; only the too-big ones are dropped
    assert decoded == [m for m in messages if framed_size(m) <= limit - 64]


def test_idle_link_writes_at_once_and_keeps_order_under_backlog() -> None:
    """An idle connected link sends from `send` itself (no writer-task turn); under a
    backlog the writer task takes over; either way messages arrive in order."""

    async def main() -> None:
        ports = {1: free_port(), 2: free_port()}
        in1, in2 = Inbox(), Inbox()
        t1, t2 = make(1, ports, in1), make(2, ports, in2)
        await t1.start()
        await t2.start()
        try:
            t1.send([msg(1, 2, term=1)])
            await until(lambda: len(in2.messages) == 1)
            link = t1._links[2]
            await until(lambda: link.idle_writer is not None)
            t1.send([msg(1, 2, term=2)])
            assert not link.queue  # written by send itself
            big = Entry(index=1, term=1)
            big.payload.command = b"x" * 200_000
            term = 3
            for _ in range(30):  # ~6 MB: fills the socket, so later sends queue
                t1.send([msg(1, 2, term=term, entries=[big])])
                t1.send([msg(1, 2, term=term + 1)])
                term += 2
            await until(lambda: len(in2.messages) == term - 1, timeout=10)
            assert [m.term for _, m in in2.messages] == list(range(1, term))
        finally:
            await t1.close()
            await t2.close()

    run(main())
