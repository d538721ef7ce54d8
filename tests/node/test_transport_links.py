"""Peer links that must not stay up-but-silent (issue 14's stuck peer link).

Each test drives a real Transport against a fake peer (a TCP server that does the Hello
and then reads, stops reading, or drops the connection at a chosen moment), on asyncio's
event loop and on uvloop (the one `dengine serve` runs on).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
from node_helpers import free_port, until

from dengine.node import transport as transport_mod
from dengine.node.transport import HEADER, Transport, encode_frame
from dengine.proto import Entry, Hello, Message, MessageType, PeerFrame

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
    uvloop = None

LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(
    uvloop is None, reason="uvloop not installed"))]


def run_on(loop: str, coro: Coroutine[Any, Any, None], timeout: float = 60.0) -> None:
    factory = uvloop.new_event_loop if loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(asyncio.wait_for(coro, timeout))


class FakePeer:
    """Node 2 of cluster c1: answers the Hello; then `on_connection(n, reader, writer)`
    (n counts connections from 1) decides what happens; by default it reads frames and
    counts the messages in them."""

    def __init__(self) -> None:
        self.port = free_port()
        self.accepted = 0
        self.messages = 0
        self.on_connection: Callable[
            [int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]
        ] = self.read_all
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            length, _ = HEADER.unpack(await reader.readexactly(HEADER.size))
            await reader.readexactly(length)
            self.accepted += 1
            hello = Hello(cluster_id="c1", node_id=2, to_id=1)
            writer.write(encode_frame(PeerFrame(hello=hello).SerializeToString()))
            await self.on_connection(self.accepted, reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.transport.abort()

    async def read_all(self, n: int, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        while True:
            length, _ = HEADER.unpack(await reader.readexactly(HEADER.size))
            frame = PeerFrame.FromString(await reader.readexactly(length))
            self.messages += len(frame.messages.messages)


def sender(peer: FakePeer, **kw: Any) -> Transport:
    return Transport(node_id=1, cluster_id="c1", listen=f"127.0.0.1:{free_port()}",
                     peers={2: f"127.0.0.1:{peer.port}"}, on_messages=lambda f, m: None,
                     backoff_min=0.01, backoff_max=0.05, **kw)


def heartbeat(i: int = 1, payload: int = 0) -> Message:
    m = Message(type=MessageType.MSG_APPEND, from_id=1, to_id=2, term=1, index=i)
    if payload:
        m.entries.append(Entry(index=i + 1, term=1))
        m.entries[0].payload.command = b"x" * payload
    return m


@pytest.mark.parametrize("loop", LOOPS)
def test_connection_closed_under_a_busy_writer_is_redialed(loop: str) -> None:
    """The connection closes (reset) while messages wait for the writer task, which runs
    before the watcher sees the close: on uvloop its write raised RuntimeError ("the
    handler is closed"), which ended the link's task silently: never redialed."""

    async def main() -> None:
        peer = FakePeer()
        await peer.start()
        t = sender(peer)
        await t.start()
        try:
            t.send([heartbeat()])
            await until(lambda: peer.messages == 1)
            await until(lambda: t._links[2].idle_writer is not None)
            writer = t._links[2].idle_writer
            assert writer is not None
            writer.transport.abort()  # the connection is reset under the idle writer task
            t.send([heartbeat(2)])  # the writer task wakes before the watcher sees it
            await until(lambda: peer.accepted == 2, timeout=5)
            t.send([heartbeat(3)])
            await until(lambda: peer.messages >= 2, timeout=5)
            assert not t._links[2].task.done()  # type: ignore[union-attr]
        finally:
            await t.close()
            await peer.stop()

    run_on(loop, main())


@pytest.mark.parametrize("loop", LOOPS)
def test_peer_that_stops_reading_is_torn_down_and_redialed(
    loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A peer that accepts, then stops reading, with no FIN nor RST (a paused or wedged
    process, a half-open connection): the link's buffers fill and its writes never
    complete. The watchdog tears the connection down after `stall_timeout` without
    progress and dials again, at INFO."""

    async def main() -> None:
        peer = FakePeer()
        hold = asyncio.Event()

        async def stall_first(n: int, reader: asyncio.StreamReader,
                              writer: asyncio.StreamWriter) -> None:
            if n == 1:
                await hold.wait()  # never reads again
            else:
                await peer.read_all(n, reader, writer)

        peer.on_connection = stall_first
        await peer.start()
        t = sender(peer, stall_timeout=0.2)
        await t.start()
        try:
            await until(lambda: peer.accepted == 1)
            i = 0
            while peer.accepted < 2:  # ~64 MiB at most, far more than socket buffers
                assert i < 1000, "the stalled connection was never torn down"
                i += 1
                t.send([heartbeat(i, payload=64 * 1024)])
                await asyncio.sleep(0.005)
            await until(lambda: peer.messages > 0, timeout=5)
            assert t._links[2].stalls == 1
        finally:
            hold.set()
            await t.close()
            await peer.stop()

    with caplog.at_level(logging.INFO, logger="dengine.node.transport"):
        run_on(loop, main())
    assert any("sent nothing for" in r.getMessage() and r.levelno == logging.INFO
               for r in caplog.records)


class _FakeReader:
    def __init__(self) -> None:
        self.eof = asyncio.get_running_loop().create_future()

    async def read(self, n: int) -> bytes:
        return await self.eof  # type: ignore[no-any-return]


class _FakeTransport:
    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        pass


class _FakeWriter:
    def __init__(self) -> None:
        self.transport = _FakeTransport()
        self.draining = asyncio.Event()
        self.drained = asyncio.get_running_loop().create_future()
        self.written: list[bytes] = []

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    async def drain(self) -> None:
        self.draining.set()
        await self.drained


def test_close_seen_during_a_drain_ends_the_write_loop() -> None:
    """The watcher sees the peer's EOF while the writer task awaits a drain: the loop
    cleared the wake-up and went idle with the connection already lost (until a later
    send happened to find the transport closing)."""

    async def main() -> None:
        peer = FakePeer()
        t = sender(peer)
        link = transport_mod._Link(2, "127.0.0.1:1", 16)
        reader, writer = _FakeReader(), _FakeWriter()
        link.queue.append(heartbeat())
        loop_task = asyncio.create_task(
            t._write_loop(link, reader, writer))  # type: ignore[arg-type]
        await asyncio.wait_for(writer.draining.wait(), 5)
        reader.eof.set_result(b"")  # the peer closed: the watcher sets lost + wakeup
        await asyncio.sleep(0.01)
        writer.drained.set_result(None)  # then the drain returns, nothing else queued
        with pytest.raises(EOFError):
            await asyncio.wait_for(loop_task, 2)

    run_on("asyncio", main())


def test_link_task_error_is_logged_and_the_link_recovers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected error in a link's task (a bug) is logged with its traceback and the
    link reconnects, instead of ending the task without a word."""
    real = transport_mod.encode_message_frames
    calls = {"n": 0}

    def flaky(messages: Any, limit: int) -> list[bytes]:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ValueError("boom")
        return real(messages, limit)

    async def main() -> None:
        peer = FakePeer()
        await peer.start()
        t = sender(peer)
        await t.start()
        try:
            await until(lambda: peer.accepted == 1)
            link = t._links[2]
            await until(lambda: link.idle_writer is not None)
            link.idle_writer = None  # the writer task sends the next batch itself
            monkeypatch.setattr(transport_mod, "encode_message_frames", flaky)
            t.send([heartbeat(1)])
            await until(lambda: peer.accepted == 2, timeout=5)
            t.send([heartbeat(2)])
            await until(lambda: peer.messages >= 1, timeout=5)
        finally:
            await t.close()
            await peer.stop()

    with caplog.at_level(logging.INFO, logger="dengine.node.transport"):
        run_on("asyncio", main())
    assert any(r.levelno == logging.ERROR and "failed" in r.getMessage()
               for r in caplog.records)
