"""Snapshot files of one node: the store, writing one, and receiving one from the leader.

    DATA_DIR/snapshots/snap-<index>-<term>-<sha>/snapshot.bin     complete snapshots
    DATA_DIR/snapshots/incoming-<index>-<term>-<sha>/snapshot.part  a transfer in progress

(`<index>` and `<term>` are 20-digit numbers, `<sha>` the first 16 hex digits of the
file's SHA-256.) A complete snapshot directory only ever appears by an atomic rename of
a verified file, so a crash at any point of a transfer leaves the node's state machine
and log untouched; a partial file is resumed only for the very same snapshot (same index,
term and SHA-256) and deleted as soon as another one starts arriving.

Every file operation goes through a `FileIO` (the real disk by default; the whole-node
simulator's disk, which a power cut can tear, in `dengine.sim.nodesim`).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from pathlib import Path

import crc32c

from dengine.proto import LogId, Membership, SnapshotAck, SnapshotChunk, SnapshotMetadata
from dengine.storage.fileio import AppendFile, FileIO, RealDisk
from dengine.storage.kvfile import SNAPSHOT_FILE, StoreImage, write_snapshot

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(snap|incoming)-(\d{20})-(\d{20})-([0-9a-f]{16})$")
PART_FILE = "snapshot.part"
_HASH_BLOCK = 4 * 1024 * 1024


def _name(kind: str, metadata: SnapshotMetadata) -> str:
    last = metadata.last_included
    return f"{kind}-{last.index:020d}-{last.term:020d}-{metadata.checksum[:8].hex()}"


def file_sha256(path: Path, fileio: FileIO | None = None) -> bytes:
    digest = hashlib.sha256()
    for block in (fileio or RealDisk()).read_chunks(str(path), _HASH_BLOCK):
        digest.update(block)
    return digest.digest()


class SnapshotStore:
    """The snapshot directories under DATA_DIR/snapshots."""

    def __init__(self, root: Path, keep: int, fileio: FileIO | None = None) -> None:
        self.root = Path(root)
        self.keep = keep
        self.io = fileio or RealDisk()

    def directory(self, metadata: SnapshotMetadata) -> Path:
        return self.root / _name("snap", metadata)

    def file(self, metadata: SnapshotMetadata) -> Path:
        return self.directory(metadata) / SNAPSHOT_FILE

    def has(self, metadata: SnapshotMetadata) -> bool:
        return self._is_file(self.file(metadata))

    def _is_file(self, path: Path) -> bool:
        p = str(path)
        return self.io.exists(p) and not self.io.isdir(p)

    def _rmtree(self, path: Path) -> None:
        if self.io.exists(str(path)):
            self.io.rmtree(str(path))

    def sha256(self, metadata: SnapshotMetadata) -> bytes:
        """The SHA-256 of the snapshot's file as it is on disk (OSError if missing)."""
        return file_sha256(self.file(metadata), self.io)

    def remove(self, metadata: SnapshotMetadata) -> None:
        """Delete one snapshot directory (its file was found damaged)."""
        self._rmtree(self.directory(metadata))
        self.io.fsync_dir(str(self.root))

    def write(
        self, image: StoreImage, last: LogId, membership: Membership
    ) -> SnapshotMetadata:
        """Write the state at `last` as a complete snapshot directory (atomic rename)."""
        tmp = self.root / f"tmp-{last.index:020d}-{last.term:020d}"
        self._rmtree(tmp)
        checksum = write_snapshot(self.io, str(tmp), image, last, membership)
        metadata = SnapshotMetadata(last_included=last, checksum=checksum, membership=membership)
        final = self.directory(metadata)
        if self.io.exists(str(final)):
            self.io.rmtree(str(tmp))  # the same bytes are there already
        else:
            self.io.rename(str(tmp), str(final))
            self.io.fsync_dir(str(self.root))
        return metadata

    def snapshots(self) -> list[tuple[int, Path]]:
        """Complete snapshot directories as (index, path), oldest first."""
        out = []
        for name in self.io.listdir(str(self.root)):
            m = _NAME.match(name)
            if m and m.group(1) == "snap" and self._is_file(self.root / name / SNAPSHOT_FILE):
                out.append((int(m.group(2)), self.root / name))
        return sorted(out)

    def prune(self, current: SnapshotMetadata | None, *, leftovers: bool = False) -> list[Path]:
        """Keep the `keep` newest snapshots up to `current` (the log's) and any newer one
        (received, not installed yet); delete the rest. `leftovers` (at startup, when no
        snapshot is being written) also deletes what interrupted writes left behind."""
        removed = []
        current_index = current.last_included.index if current is not None else 0
        older = [(i, p) for i, p in self.snapshots() if i <= current_index]
        protected = {self.directory(current)} if current is not None else set()
        for _, path in older[: max(0, len(older) - self.keep)]:
            if path not in protected:
                removed.append(path)
        for name in self.io.listdir(str(self.root)) if leftovers else ():
            if name.startswith("tmp-") or (
                name.startswith("snap-") and not self._is_file(self.root / name / SNAPSHOT_FILE)
            ):
                removed.append(self.root / name)
        for path in removed:
            self._rmtree(path)
        if removed:
            self.io.fsync_dir(str(self.root))
        return removed


class _Incoming:
    """The partial file of the snapshot being received."""

    def __init__(self, store: SnapshotStore, metadata: SnapshotMetadata) -> None:
        self.metadata = metadata
        self.directory = store.root / _name("incoming", metadata)
        io = store.io
        if not io.isdir(str(self.directory)):
            io.mkdir(str(self.directory))
        self.path = self.directory / PART_FILE
        self.file: AppendFile = io.open_append(str(self.path))  # kept open across chunks
        self.have = io.size(str(self.path))

    def close(self) -> None:
        self.file.close()


class SnapshotReceiver:
    """Stores the chunks of snapshots streamed by a leader and verifies them.

    `receive` is blocking (file I/O, SHA-256): call it from a worker thread. It returns
    the acknowledgement for the sender; `done` means the snapshot is complete, verified
    and in the store, ready to be handed to Raft.
    """

    def __init__(self, store: SnapshotStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._current: _Incoming | None = None
    def receive(self, chunk: SnapshotChunk) -> SnapshotAck:
        meta = chunk.metadata
        ack = SnapshotAck(last_included=meta.last_included, checksum=meta.checksum,
                          attempt=chunk.attempt)
        with self._lock:
            if self.store.has(meta):
                ack.offset, ack.done = chunk.total_size, True
                return ack
            if len(meta.checksum) != 32:
                ack.error = "snapshot metadata carries no SHA-256"
                return ack
            cur = self._open(meta)
            if cur.have > chunk.total_size:
                self._discard(cur)
                cur = self._open(meta)
            if cur.have < chunk.total_size:
                data = chunk.data
                if (
                    chunk.offset != cur.have
                    or crc32c.crc32c(data) != chunk.crc32c
                    or chunk.offset + len(data) > chunk.total_size
                ):
                    ack.offset, ack.mismatch = cur.have, True
                    return ack
                cur.file.write(data)
                cur.have += len(data)
            ack.offset = cur.have
            if cur.have == chunk.total_size:
                error = self._finish(cur)
                if error:
                    ack.offset, ack.error = 0, error
                else:
                    ack.done = True
            return ack

    def _open(self, meta: SnapshotMetadata) -> _Incoming:
        cur = self._current
        if cur is not None and cur.metadata == meta:
            return cur
        if cur is not None:
            cur.close()
        name = _name("incoming", meta)
        store = self.store
        for entry in store.io.listdir(str(store.root)):
            if entry.startswith("incoming-") and entry != name:
                log.info("discarding the partial snapshot %s: another one is arriving", entry)
                store.io.rmtree(str(store.root / entry))
        self._current = _Incoming(self.store, meta)
        return self._current

    def _discard(self, cur: _Incoming) -> None:
        cur.close()
        self._current = None
        self.store._rmtree(cur.directory)

    def _finish(self, cur: _Incoming) -> str:
        """fsync, verify the SHA-256, rename into the store; an error message or ""."""
        io = self.store.io
        cur.file.sync()
        digest = file_sha256(cur.path, io)
        meta = cur.metadata
        if digest != meta.checksum:
            self._discard(cur)
            error = (f"snapshot at index {meta.last_included.index}: SHA-256 {digest.hex()} "
                     f"does not match the expected {meta.checksum.hex()}; refused")
            log.error("%s", error)
            return error
        cur.close()
        self._current = None
        io.rename(str(cur.path), str(cur.directory / SNAPSHOT_FILE))
        final = self.store.directory(meta)
        if io.exists(str(final)):
            io.rmtree(str(cur.directory))
        else:
            io.rename(str(cur.directory), str(final))
        io.fsync_dir(str(self.store.root))
        return ""

    def close(self) -> None:
        with self._lock:
            if self._current is not None:
                self._current.close()
                self._current = None
