"""Peer transport: Raft messages over persistent TCP connections with framed protobuf.

Each node keeps one outbound connection per peer (used only to send) and accepts one
inbound connection from each peer (used only to receive). A frame is
(`dengine.node.peer_frames`)

    u32 length | u32 crc32c(payload) | payload      (little-endian; payload = PeerFrame)

Both sides open with a `Hello{cluster_id, node_id, client_address, peer_address,
log_format}`; a Hello from an unknown node id or another cluster, a bad checksum, an
undecodable or oversized frame is a protocol error: logged, connection closed. A Raft
message outside the bounds of `dengine.raft.limits` (terms and indexes up to 2**62, ...), or
a MSG_SNAPSHOT (snapshots travel as chunks), is dropped and counted (`rejected_messages`). A
node that is in no membership yet (joining) accepts any node of its cluster and dials it
back at the Hello's `peer_address`. `log_format`: `PeerLogFormats`. The per-peer send queue
is a bounded deque that drops its oldest messages when full (Raft tolerates loss), and each
peer has its own writer task, so a slow or dead peer never blocks the others nor grows
memory without bound. When the writer task is idle and the socket's buffer empty, `send`
writes the frame itself (the bytes leave at once, without waiting for the task's turn of the
loop); otherwise everything queued for a peer while its previous write drained goes out as
one frame.

Snapshots travel beside the Raft messages, never through the lossy queue: the writer task
of a peer sends a snapshot's chunks whenever its message queue is empty
(`dengine.node.snapshot_send`).

A watchdog checks every link a few times per `stall_timeout` (the node passes its election
timeout, at least 1 s): a
connection that has had bytes or messages waiting but sent nothing for that long (a peer
that stopped reading, a half-open connection, a writer that missed its wake-up) is torn
down and dialed again, logged at INFO; a link task that ended on an unexpected error is
logged and restarted. Peer sockets also use TCP keep-alive and TCP_USER_TIMEOUT
(`dengine.netutil.set_keepalive`), so the kernel ends a connection whose peer vanished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path

from dengine.config import parse_address
from dengine.errors import DengineError
from dengine.kv.codec import LOG_FORMAT
from dengine.netutil import set_keepalive
from dengine.node.peer_frames import HEADER as HEADER  # the frame header, for callers
from dengine.node.peer_frames import (
    PeerLogFormats,
    PeerProtocolError,
    encode_frame,
    encode_message_frames,
    read_frame,
    write,
)
from dengine.node.snapshot_send import SnapshotDoneHandler, SnapshotKey, SnapshotSender, ack_key
from dengine.proto import (
    Hello,
    Message,
    MessageType,
    PeerFrame,
    SnapshotAck,
    SnapshotChunk,
    SnapshotMetadata,
)
from dengine.raft.limits import MAX_INDEX, MAX_TERM, message_problem
from dengine.tls import PeerTls, accepting, handshake_problem, node_certificate_problem

log = logging.getLogger(__name__)

# The first frame of an inbound connection (a Hello) is read only up to this size: an
# unidentified connection cannot make the node buffer a whole max_frame_bytes.
HELLO_MAX_BYTES = 64 * 1024

MessageHandler = Callable[[int, Sequence[Message]], None]
PeerHandler = Callable[[int], None]
SnapshotChunkHandler = Callable[[int, SnapshotChunk], Awaitable[None]]

_MSG_SNAPSHOT = MessageType.MSG_SNAPSHOT


class _Link:
    """The outbound side of one peer: bounded queue + one writer task."""

    def __init__(self, node_id: int, address: str, queue_limit: int) -> None:
        self.node_id = node_id
        self.address = address
        self.queue: deque[Message] = deque(maxlen=queue_limit)
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.connected = False
        # the connection as last logged: "" (never tried), "unreachable" (never up yet),
        # "up", "down" (lost): logged once per change, not per retry
        self.state = ""
        # The connection's writer while the writer task waits with nothing to do: `send`
        # may then write directly.
        self.idle_writer: asyncio.StreamWriter | None = None
        self.dropped = 0
        self.sent_frames = 0
        self.acks: dict[SnapshotKey, SnapshotAck] = {}  # latest ack per snapshot, unsent
        # The live connection (None while dialing) and its end: set by the watcher (the
        # peer closed it) or the watchdog (no progress), checked by the writer task.
        self.writer: asyncio.StreamWriter | None = None
        self.lost: asyncio.Event | None = None
        self.drains = 0  # writes the writer task has seen drained: its progress
        # watchdog state: what it saw last, and since when nothing moved
        self.seen: tuple[int, int] = (0, 0)
        self.stalled_since = 0.0
        self.torn_down: asyncio.StreamWriter | None = None  # the connection it tore down
        self.stalls = 0  # connections torn down by the watchdog

    def pending(self) -> int:
        """Bytes (in the connection's buffer) or messages waiting to go; 0 if none."""
        writer = self.writer
        buffered = writer.transport.get_write_buffer_size() if writer is not None else 0
        return buffered + len(self.queue) + len(self.acks)

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()


class Transport:
    """Sends Raft messages to peers and hands received ones to `on_messages(from_id, msgs)`.

    `send` never blocks and never awaits; handlers are called from the transport's own
    reader tasks and must not block either (the node just puts them in its inbox).
    """

    def __init__(
        self,
        *,
        node_id: int,
        cluster_id: str,
        listen: str,
        peers: dict[int, str],
        on_messages: MessageHandler,
        client_address: str = "",
        max_frame_bytes: int = 16 * 1024 * 1024,
        queue_limit: int = 4096,
        backoff_min: float = 0.02,
        backoff_max: float = 1.0,
        handshake_timeout: float = 5.0,
        on_unreachable: PeerHandler | None = None,
        on_snapshot_chunk: SnapshotChunkHandler | None = None,
        on_snapshot_done: SnapshotDoneHandler | None = None,
        accept_unknown: Callable[[], bool] | None = None,
        is_removed: Callable[[int], bool] | None = None,
        on_removed: PeerHandler | None = None,
        snapshot_chunk_bytes: int = 1024 * 1024,
        snapshot_window: int = 4,
        rng: random.Random | None = None,
        max_inbound: int = 64,
        stall_timeout: float = 1.0,
        tls: PeerTls | None = None,
    ) -> None:
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.listen = listen
        self.client_address = client_address
        self.max_frame_bytes = max_frame_bytes
        self.queue_limit = queue_limit
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.handshake_timeout = handshake_timeout
        self._on_messages = on_messages
        self._on_unreachable = on_unreachable
        self._on_snapshot_chunk = on_snapshot_chunk
        self._accept_unknown = accept_unknown
        self._is_removed = is_removed  # node ids to tell, when they connect, they were removed
        self._on_removed = on_removed  # a peer told us we were removed
        self._inbound_from: dict[int, set[asyncio.StreamWriter]] = {}
        self._snapshots = SnapshotSender(
            node_id, max(1, min(snapshot_chunk_bytes, max_frame_bytes - 64 * 1024)),
            snapshot_window, on_snapshot_done)
        self._rng = rng or random.Random()
        self._links: dict[int, _Link] = {}
        self._peer_addresses = dict(peers)
        self._client_addresses: dict[int, str] = {}
        self.log_formats = PeerLogFormats(node_id)
        self._inbound: set[asyncio.Task[None]] = set()
        # Inbound connections beyond this many are closed at once (a peer needs one; the
        # rest is room for reconnects while an old connection is not yet seen dead).
        self.max_inbound = max_inbound
        # A connection with something to send that sends nothing for this long is torn
        # down and dialed again (the node passes its election timeout).
        self.stall_timeout = stall_timeout
        self._watchdog: asyncio.Task[None] | None = None
        self._server: asyncio.Server | None = None
        self._closed = False
        self.tls = tls  # mutual TLS with the cluster's CA (None: plaintext)
        self.refused_connections = 0
        self.rejected_messages = 0  # out of bounds (dengine.raft.limits): dropped

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Bind the peer listener and start connecting to every peer."""
        host, port = parse_address(self.listen)
        if self.tls is None:
            self._server = await asyncio.start_server(self._accept, host, port)
        else:  # asyncio.start_server's streams, behind TLS that reports its failures
            loop = asyncio.get_running_loop()

            def streams() -> asyncio.BaseProtocol:
                return asyncio.StreamReaderProtocol(asyncio.StreamReader(), self._accept)

            self._server = await loop.create_server(accepting(
                streams, self.tls.server_context, self._tls_refused), host, port)
        self.set_peers(self._peer_addresses)
        self._watchdog = asyncio.create_task(
            self._watch_links(), name=f"dengine-peer-watchdog-{self.node_id}")

    async def close(self) -> None:
        """Stop every connection and the listener; queued messages are discarded."""
        self._closed = True
        tasks = [link.task for link in self._links.values() if link.task is not None]
        tasks += list(self._inbound)
        if self._watchdog is not None:
            tasks.append(self._watchdog)
        for task in tasks:
            task.cancel()
        for link in self._links.values():
            link.close()
        self._snapshots.close()
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        self._links.clear()

    def set_peers(self, peers: dict[int, str]) -> None:
        """Track exactly these peers (membership change): connect new ones, drop removed."""
        self._peer_addresses = {i: a for i, a in peers.items() if i != self.node_id}
        if self._server is None or self._closed:
            return
        for node_id in list(self._links):
            link = self._links[node_id]
            if self._peer_addresses.get(node_id) != link.address:
                link.close()
                self._snapshots.cancel(node_id)
                del self._links[node_id]
        for node_id, writers in self._inbound_from.items():
            if node_id not in self._peer_addresses:
                for writer in writers:  # it reconnects, and learns why it is refused
                    writer.close()
        for node_id, address in self._peer_addresses.items():
            if node_id not in self._links:
                link = _Link(node_id, address, self.queue_limit)
                self._start_link(link)
                self._links[node_id] = link

    def _start_link(self, link: _Link) -> None:
        link.task = asyncio.create_task(
            self._run_link(link), name=f"dengine-peer-{self.node_id}->{link.node_id}"
        )

    # -- sending -----------------------------------------------------------------------

    def send(self, messages: Iterable[Message]) -> None:
        """Queue messages for their `to_id` peers; never blocks. Unknown peers are skipped."""
        touched: set[_Link] = set()
        for msg in messages:
            link = self._links.get(msg.to_id)
            if link is None:
                log.debug("node %d: no link to node %d, dropping %s",
                          self.node_id, msg.to_id, msg.type)
                continue
            if len(link.queue) == link.queue.maxlen:
                link.dropped += 1
            link.queue.append(msg)
            touched.add(link)
        for link in touched:
            writer = link.idle_writer
            if writer is None or writer.is_closing() or writer.transport.get_write_buffer_size():
                link.wakeup.set()  # the writer task sends it, and waits for the drain
                continue
            batch = list(link.queue)
            link.queue.clear()
            batch = self.log_formats.replicable(link.node_id, batch)
            frames = encode_message_frames(batch, self.max_frame_bytes)
            writer.write(b"".join(frames))
            link.sent_frames += len(frames)

    def peer_client_address(self, node_id: int) -> str:
        """The client API address a peer announced in its Hello ("" if not heard yet)."""
        return self._client_addresses.get(node_id, "")

    def peer_log_format(self, node_id: int) -> int:
        return self.log_formats.of(node_id)  # PeerLogFormats

    def is_connected(self, node_id: int) -> bool:
        link = self._links.get(node_id)
        return link is not None and link.connected

    def dropped(self, node_id: int) -> int:
        """How many messages for this peer were dropped because its queue was full."""
        link = self._links.get(node_id)
        return link.dropped if link is not None else 0

    def queued(self, node_id: int) -> int:
        link = self._links.get(node_id)
        return len(link.queue) if link is not None else 0

    def send_snapshot(
        self, peer: int, metadata: SnapshotMetadata, term: int, path: Path
    ) -> bool:
        """Stream the snapshot file at `path` to `peer` (continue it if already under way).

        False when there is no link to `peer` or the file cannot be opened. The end is
        reported through `on_snapshot_done`.
        """
        link = self._links.get(peer)
        if link is None or not self._snapshots.start(peer, metadata, term, path):
            return False
        link.wakeup.set()
        return True

    def cancel_snapshot(self, peer: int) -> bool:
        """Stop streaming a snapshot to `peer` (it is not needed any more)."""
        return self._snapshots.cancel(peer)

    def snapshot_transfers(self) -> list[int]:
        """Peers a snapshot is being streamed to."""
        return self._snapshots.peers()

    def send_snapshot_ack(self, peer: int, ack: SnapshotAck) -> None:
        """Queue an acknowledgement for the sender `peer` (replaces an unsent older one)."""
        link = self._links.get(peer)
        if link is None:
            log.debug("node %d: no link to node %d for a snapshot ack", self.node_id, peer)
            return
        link.acks[ack_key(ack)] = ack
        link.wakeup.set()

    def _on_ack(self, from_id: int, ack: SnapshotAck) -> None:
        link = self._links.get(from_id)
        if link is not None and self._snapshots.on_ack(from_id, ack):
            link.wakeup.set()

    async def _send_chunk(self, link: _Link, writer: asyncio.StreamWriter) -> None:
        chunk = await self._snapshots.next_chunk(link.node_id)
        if chunk is not None:
            write(writer, encode_frame(PeerFrame(snapshot_chunk=chunk).SerializeToString()))
            link.sent_frames += 1
            await writer.drain()

    def _hello(self, to_id: int) -> bytes:
        hello = Hello(cluster_id=self.cluster_id, node_id=self.node_id,
                      client_address=self.client_address, to_id=to_id,
                      peer_address=self.listen, log_format=LOG_FORMAT)
        return encode_frame(PeerFrame(hello=hello).SerializeToString())

    async def _run_link(self, link: _Link) -> None:
        """Connect, handshake, then write whatever is queued; reconnect with backoff."""
        backoff = self.backoff_min
        while not self._closed:
            writer: asyncio.StreamWriter | None = None
            try:
                host, port = parse_address(link.address)
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a
                # cancellation that comes as the awaited call completes (close() hung)
                tls = self.tls.client_context() if self.tls is not None else None
                async with asyncio.timeout(self.handshake_timeout):
                    reader, stream = await asyncio.open_connection(
                        host, port, ssl=tls, server_hostname=host if tls else None)
                writer = stream
                set_keepalive(stream.get_extra_info("socket"))
                write(stream, self._hello(link.node_id))
                async with asyncio.timeout(self.handshake_timeout):
                    reply = await read_frame(reader, self.max_frame_bytes)
                if reply.WhichOneof("frame") == "hello" and reply.hello.removed:
                    if self._on_removed is not None:
                        self._on_removed(link.node_id)
                    raise PeerProtocolError("it says this node was removed from the cluster")
                self._check_hello(reply, expected_id=link.node_id)
                backoff = self.backoff_min
                link.connected = True
                if link.state != "up":
                    log.info("node %d: %s node %d at %s", self.node_id,
                             "reconnected to" if link.state == "down" else "connected to",
                             link.node_id, link.address)
                    link.state = "up"
                self._snapshots.reconnected(link.node_id)
                log.debug("node %d: connected to node %d at %s",
                          self.node_id, link.node_id, link.address)
                await self._write_loop(link, reader, stream)
            except asyncio.CancelledError:
                raise
            except PeerProtocolError as e:
                log.warning("node %d: peer %d at %s refused: %s",
                            self.node_id, link.node_id, link.address, e.message)
            except ssl.SSLError as e:
                if link.state != "tls" and not self._closed:
                    log.warning("node %d: TLS handshake with node %d at %s failed: %s; "
                                "retrying", self.node_id, link.node_id, link.address,
                                handshake_problem(e))
                    link.state = "tls"
            except (OSError, EOFError, TimeoutError, asyncio.IncompleteReadError) as e:
                log.debug("node %d: link to node %d down: %r", self.node_id, link.node_id, e)
                if link.state in ("", "up") and not self._closed:
                    log.info("node %d: %s node %d at %s (%s); retrying", self.node_id,
                             "lost the connection to" if link.state else "cannot reach",
                             link.node_id, link.address, e.__class__.__name__)
                    link.state = "down" if link.state else "unreachable"
            except Exception:
                # A bug, not the network: say so, and keep the link alive.
                log.exception("node %d: the link to node %d failed; reconnecting",
                              self.node_id, link.node_id)
                link.state = "down" if link.state else "unreachable"
            finally:
                if link.writer is None or link.writer is writer:  # else a newer task's
                    link.connected = False
                    link.writer = link.lost = None
                if writer is not None:
                    writer.close()
            if self._closed:
                return
            if self._on_unreachable is not None:
                self._on_unreachable(link.node_id)
            await asyncio.sleep(backoff * self._rng.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self.backoff_max)

    async def _write_loop(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        lost = asyncio.Event()

        async def watch() -> None:
            # Nothing is expected back after the Hello: any byte or EOF means the peer is gone.
            with contextlib.suppress(Exception):
                await reader.read(1)
            lost.set()
            link.wakeup.set()

        watcher = asyncio.create_task(watch())
        link.writer, link.lost = writer, lost
        link.stalled_since = 0.0
        chunk_due, peer = self._snapshots.due, link.node_id
        try:
            while True:
                # Checked before the idle wait too: the watcher may have set `lost` (and
                # the wake-up this loop then cleared) while a drain was awaited.
                if lost.is_set() or self._closed:
                    raise EOFError("connection closed by peer")
                if not link.queue and not link.acks and not chunk_due(peer):
                    link.wakeup.clear()
                    link.idle_writer = writer
                    try:
                        await link.wakeup.wait()
                    finally:
                        link.idle_writer = None
                    continue
                frames: list[bytes] = []
                if link.acks:
                    acks = list(link.acks.values())
                    link.acks.clear()
                    frames += [encode_frame(PeerFrame(snapshot_ack=a).SerializeToString())
                               for a in acks]
                if link.queue:
                    batch = list(link.queue)
                    link.queue.clear()
                    batch = self.log_formats.replicable(peer, batch)
                    frames += encode_message_frames(batch, self.max_frame_bytes)
                if frames:
                    # Raft messages and acks first; a snapshot chunk only when none wait.
                    write(writer, b"".join(frames))
                    link.sent_frames += len(frames)
                    await writer.drain()
                elif chunk_due(peer):
                    await self._send_chunk(link, writer)
                link.drains += 1
        finally:
            watcher.cancel()

    # -- watchdog ----------------------------------------------------------------------

    async def _watch_links(self) -> None:
        """Tear down connections that stopped moving; restart link tasks that ended."""
        period = max(0.01, self.stall_timeout / 4)
        while not self._closed:
            await asyncio.sleep(period)
            now = time.monotonic()
            for link in list(self._links.values()):
                try:
                    self._check_link(link, now)
                except Exception:
                    log.exception("node %d: checking the link to node %d failed",
                                  self.node_id, link.node_id)

    def _check_link(self, link: _Link, now: float) -> None:
        task = link.task
        if task is not None and task.done() and not self._closed:
            error = None if task.cancelled() else task.exception()
            log.error("node %d: the link task to node %d ended (%r); restarting it",
                      self.node_id, link.node_id, error)
            link.connected = False
            link.writer = link.lost = link.idle_writer = None
            self._start_link(link)
            return
        writer = link.writer
        if writer is None or not link.connected:
            link.stalled_since = 0.0
            return
        pending = link.pending()
        seen = (link.drains, pending)
        moved = seen[0] != link.seen[0] or pending < link.seen[1]
        link.seen = seen
        if not pending or moved or not link.stalled_since:
            link.stalled_since = now if pending else 0.0
            return
        idle = now - link.stalled_since
        if idle < self.stall_timeout:
            return
        if link.torn_down is writer:
            # Torn down an election timeout ago and still in use: the task is stuck
            # somewhere the teardown did not reach; start it afresh.
            if idle >= 2 * self.stall_timeout and task is not None:
                log.warning("node %d: the link task to node %d did not let go of a dead "
                            "connection; restarting it", self.node_id, link.node_id)
                task.cancel()
                link.connected = False
                link.writer = link.lost = link.idle_writer = None
                self._start_link(link)
            return
        link.stalls += 1
        link.torn_down = writer
        log.info("node %d: the connection to node %d at %s sent nothing for %.2f s with "
                 "%d messages and %d bytes waiting; reconnecting", self.node_id, link.node_id,
                 link.address, idle, len(link.queue) + len(link.acks),
                 writer.transport.get_write_buffer_size())
        if link.lost is not None:
            link.lost.set()
        link.wakeup.set()
        writer.transport.abort()

    # -- receiving ---------------------------------------------------------------------

    def _check_hello(
        self, frame: PeerFrame, expected_id: int = 0, remote_host: str = ""
    ) -> Hello:
        if frame.WhichOneof("frame") != "hello":
            raise PeerProtocolError("the first frame must be a Hello")
        hello = frame.hello
        if hello.cluster_id != self.cluster_id:
            raise PeerProtocolError(
                f"node {hello.node_id} belongs to cluster {hello.cluster_id!r}, "
                f"not {self.cluster_id!r}"
            )
        if expected_id and hello.node_id != expected_id:
            raise PeerProtocolError(
                f"expected node {expected_id} at this address, found node {hello.node_id}"
            )
        if hello.to_id and hello.to_id != self.node_id:
            raise PeerProtocolError(
                f"node {hello.node_id} wanted node {hello.to_id}, this is node {self.node_id}"
            )
        if hello.node_id not in self._peer_addresses:
            joining = not expected_id and self._accept_unknown is not None and (
                self._accept_unknown()
            )
            if not joining or hello.node_id == self.node_id or hello.node_id <= 0:
                raise PeerProtocolError(f"unknown node id {hello.node_id}")
            self._discover(hello.node_id, hello.peer_address, remote_host)
        if hello.client_address:
            self._client_addresses[hello.node_id] = hello.client_address
        self.log_formats.heard(hello)
        return hello

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername")
        if len(self._inbound) >= self.max_inbound:
            self.refused_connections += 1
            if self.refused_connections % 1000 == 1:
                log.warning("node %d: %d peer connections open (max_peer_connections); "
                            "refusing more (%d refused so far)", self.node_id,
                            len(self._inbound), self.refused_connections)
            writer.close()
            return
        self._inbound.add(task)
        set_keepalive(writer.get_extra_info("socket"))
        try:
            if self.tls is not None:
                tls = writer.get_extra_info("ssl_object")
                problem = node_certificate_problem(tls.getpeercert(True) if tls else None)
                if problem:
                    raise PeerProtocolError(problem)
            async with asyncio.timeout(self.handshake_timeout):
                first = await read_frame(reader, HELLO_MAX_BYTES)
            peername = writer.get_extra_info("peername")
            remote_host = str(peername[0]) if isinstance(peername, tuple) else ""
            try:
                hello = self._check_hello(first, remote_host=remote_host)
            except PeerProtocolError:
                self._tell_if_removed(first, writer)
                raise
            write(writer, self._hello(0))
            inbound = self._inbound_from.setdefault(hello.node_id, set())
            inbound.add(writer)
            try:
                await self._read_loop(hello.node_id, reader)
            finally:
                inbound.discard(writer)
        except PeerProtocolError as e:
            self.refused_connections += 1
            log.warning("node %d: refused connection from %s: %s", self.node_id, peer, e.message)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # close() cancels us; ending normally keeps asyncio's stream callback quiet.
            pass
        finally:
            self._inbound.discard(task)
            writer.close()

    def _tls_refused(self, peer: object, problem: str) -> None:
        self.refused_connections += 1
        log.warning("node %d: refused connection from %s: TLS handshake failed: %s",
                    self.node_id, peer, problem)

    def _tell_if_removed(self, first: PeerFrame, writer: asyncio.StreamWriter) -> None:
        """A refused Hello from a member our applied configuration removed: say so, so
        that it stops (else it would retry and campaign forever)."""
        hello = first.hello
        if (
            first.WhichOneof("frame") == "hello"
            and hello.cluster_id == self.cluster_id
            and self._is_removed is not None
            and self._is_removed(hello.node_id)
        ):
            reply = Hello(cluster_id=self.cluster_id, node_id=self.node_id, removed=True)
            with contextlib.suppress(ConnectionResetError):
                write(writer, encode_frame(PeerFrame(hello=reply).SerializeToString()))

    async def _read_loop(self, from_id: int, reader: asyncio.StreamReader) -> None:
        while not self._closed:
            frame = await read_frame(reader, self.max_frame_bytes)
            kind = frame.WhichOneof("frame")
            if kind == "messages":
                msgs = [m for m in frame.messages.messages
                        if m.from_id == from_id and m.to_id == self.node_id]
                if len(msgs) != len(frame.messages.messages):
                    log.warning("node %d: dropped misaddressed messages from node %d",
                                self.node_id, from_id)
                valid = []
                for m in msgs:
                    problem = message_problem(m) or (
                        "a MSG_SNAPSHOT outside a snapshot transfer"
                        if m.type == _MSG_SNAPSHOT else "")
                    if problem:
                        self._rejected(from_id, problem)
                    else:
                        valid.append(m)
                if valid:
                    self._on_messages(from_id, valid)
            elif kind == "snapshot_chunk" and self._on_snapshot_chunk is not None:
                chunk = frame.snapshot_chunk
                last = chunk.metadata.last_included
                if chunk.term > MAX_TERM or last.term > chunk.term or last.index > MAX_INDEX:
                    self._rejected(from_id, f"a snapshot chunk of term {chunk.term} for "
                                   f"index {last.index}, term {last.term}")
                    continue
                # Awaited: the next frame is read only once this chunk is stored, which
                # pushes back on the sender through TCP instead of buffering here.
                await self._on_snapshot_chunk(from_id, frame.snapshot_chunk)
            elif kind == "snapshot_ack":
                self._on_ack(from_id, frame.snapshot_ack)
            else:
                raise PeerProtocolError(f"unexpected {kind or 'empty'} frame after the Hello")

    def _rejected(self, from_id: int, problem: str) -> None:
        self.rejected_messages += 1
        n = self.rejected_messages
        if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th ... are logged
            log.warning("node %d: dropped a message from node %d: %s (%d dropped so far)",
                        self.node_id, from_id, problem, n)

    def _discover(self, node_id: int, peer_address: str, remote_host: str) -> None:
        """A joining node learns a peer from its Hello and dials it back (for its answers)."""
        try:
            host, port = parse_address(peer_address)
        except DengineError:
            log.warning("node %d: node %d announced no usable peer address %r",
                        self.node_id, node_id, peer_address)
            return
        if host in ("0.0.0.0", "::", "") and remote_host:
            host = remote_host
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        log.info("node %d: not a member yet; accepting node %d (%s) of cluster %r",
                 self.node_id, node_id, address, self.cluster_id)
        self.set_peers({**self._peer_addresses, node_id: address})
