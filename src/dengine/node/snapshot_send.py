"""Snapshot files streamed to peers, beside the Raft messages (never through the lossy queue).

The transport's writer task of a peer sends the snapshot file in chunks whenever its message
queue is empty, with at most `window` unacknowledged chunks, so heartbeats keep flowing and
other peers are untouched. The receiver acknowledges cumulative offsets (`SnapshotAck`, sent
on its own connection to the sender); after a reconnect the sender resumes from the last
acknowledged offset, and a receiver that holds a different amount answers `mismatch` with
its own offset, where the sender resumes instead.

`SnapshotSender` owns the transfers (one per peer); the transport tells it about
connections and acks, asks it whether a chunk is due and for the chunk to write. Given a
`FileIO` (the whole-node simulator's disk), it reads the file whole through it when the
transfer starts, as an open descriptor keeps the file's bytes even if it is deleted.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

import crc32c

from dengine.proto import SnapshotAck, SnapshotChunk, SnapshotMetadata
from dengine.storage.fileio import FileIO

log = logging.getLogger("dengine.node.transport")  # the transport's lines, as before

SnapshotKey = tuple[int, int, bytes]
# (peer, metadata, ok, error): a snapshot transfer ended (acknowledged whole, or refused).
SnapshotDoneHandler = Callable[[int, SnapshotMetadata, bool, str], None]


def snapshot_key(metadata: SnapshotMetadata) -> SnapshotKey:
    """What identifies one snapshot file: (index, term, SHA-256)."""
    last = metadata.last_included
    return int(last.index), int(last.term), bytes(metadata.checksum)


def ack_key(ack: SnapshotAck) -> SnapshotKey:
    """The snapshot an acknowledgement is about."""
    return snapshot_key(SnapshotMetadata(last_included=ack.last_included, checksum=ack.checksum))


class _Transfer:
    """One snapshot file being streamed to one peer (the file stays open until it ends)."""

    def __init__(
        self, metadata: SnapshotMetadata, term: int, path: Path, fileio: FileIO | None
    ) -> None:
        self.metadata = metadata
        self.key = snapshot_key(metadata)
        self.term = term
        self.data: bytes | None = None  # the file's bytes, when read through a FileIO
        if fileio is None:
            self.fd = os.open(path, os.O_RDONLY)
            self.size = os.fstat(self.fd).st_size
        else:
            self.fd = -1
            self.data = fileio.read(str(path))
            self.size = len(self.data)
        self.acked = 0  # the receiver holds this many bytes
        self.sent = 0  # next offset to send
        self.attempt = 1  # bumped at each rewind, so stale mismatch answers are ignored
        self.reading = False  # a worker thread is reading the file
        self.closed = False

    def read(self, n: int, offset: int) -> bytes:
        """`n` bytes from `offset` (worker thread)."""
        if self.data is not None:
            return self.data[offset : offset + n]
        return os.pread(self.fd, n, offset)

    def close(self) -> None:
        """Release the file, or have the read in progress do it (the fd is not reused
        while a thread may still read it)."""
        self.closed = True
        if not self.reading and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SnapshotSender:
    """The snapshot transfers of one node, at most one per peer."""

    def __init__(
        self, node_id: int, chunk_bytes: int, window: int,
        on_done: SnapshotDoneHandler | None, fileio: FileIO | None = None,
    ) -> None:
        self.node_id = node_id
        self._io = fileio
        self.chunk_bytes = chunk_bytes
        self.window_bytes = window * chunk_bytes  # unacknowledged bytes in flight, at most
        self._on_done = on_done
        self._transfers: dict[int, _Transfer] = {}

    def start(self, peer: int, metadata: SnapshotMetadata, term: int, path: Path) -> bool:
        """Stream `path` to `peer` (continue it if already under way); False if it cannot
        be opened."""
        current = self._transfers.get(peer)
        if current is not None and current.key == snapshot_key(metadata):
            current.term = max(current.term, term)
            return True
        try:
            transfer = _Transfer(metadata, term, path, self._io)
        except OSError as e:
            log.warning("node %d: cannot open snapshot %s for node %d: %s",
                        self.node_id, path, peer, e)
            return False
        if current is not None:
            current.close()
        self._transfers[peer] = transfer
        return True

    def cancel(self, peer: int) -> bool:
        """Stop the transfer to `peer`; False if there was none."""
        transfer = self._transfers.pop(peer, None)
        if transfer is None:
            return False
        transfer.close()
        return True

    def peers(self) -> list[int]:
        """Peers a snapshot is being streamed to."""
        return list(self._transfers)

    def close(self) -> None:
        for transfer in self._transfers.values():
            transfer.close()
        self._transfers.clear()

    def reconnected(self, peer: int) -> None:
        """A new connection to `peer`: chunks in flight on the old one may be lost, so
        resume from the last acknowledged offset (resend the last chunk if all were acked,
        so that the receiver answers whether it finished)."""
        t = self._transfers.get(peer)
        if t is not None:
            t.attempt += 1
            t.sent = t.acked if t.acked < t.size else max(0, t.size - self.chunk_bytes)

    def on_ack(self, peer: int, ack: SnapshotAck) -> bool:
        """Take `peer`'s acknowledgement; True if the writer has chunks to send again."""
        transfer = self._transfers.get(peer)
        if transfer is None or ack_key(ack) != transfer.key:
            return False
        if ack.done or ack.error:
            del self._transfers[peer]
            transfer.close()
            if self._on_done is not None:
                self._on_done(peer, transfer.metadata, ack.done, ack.error)
            return False
        if ack.mismatch:
            if ack.attempt != transfer.attempt:
                return False  # answers a chunk sent before the last rewind
            transfer.attempt += 1
            transfer.acked = transfer.sent = min(int(ack.offset), transfer.size)
        else:
            transfer.acked = max(transfer.acked, min(int(ack.offset), transfer.size))
            transfer.sent = max(transfer.sent, transfer.acked)
        return True

    def due(self, peer: int) -> bool:
        """A chunk is to be sent to `peer` (there is one left and the window has room)."""
        t = self._transfers.get(peer)
        return t is not None and t.sent < t.size and t.sent - t.acked < self.window_bytes

    async def next_chunk(self, peer: int) -> SnapshotChunk | None:
        """The next chunk for `peer` (read by a worker thread), counted as sent; None if
        the transfer changed while reading, or ended."""
        t = self._transfers.get(peer)
        assert t is not None
        offset = t.sent
        n = min(self.chunk_bytes, t.size - offset)
        t.reading = True
        try:
            data = await asyncio.to_thread(t.read, n, offset)
        finally:
            t.reading = False
            if t.closed:
                t.close()
        if self._transfers.get(peer) is not t or t.sent != offset:
            return None  # replaced, cancelled or rewound while reading
        if len(data) != n:
            log.error("node %d: snapshot file for node %d shrank while being sent",
                      self.node_id, peer)
            del self._transfers[peer]
            t.close()
            if self._on_done is not None:
                self._on_done(peer, t.metadata, False, "snapshot file shrank")
            return None
        chunk = SnapshotChunk(
            metadata=t.metadata, offset=offset, data=data, done=offset + n == t.size,
            term=t.term, crc32c=crc32c.crc32c(data), total_size=t.size, attempt=t.attempt,
        )
        t.sent = offset + n
        return chunk
