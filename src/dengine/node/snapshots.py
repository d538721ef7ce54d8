"""Snapshot files of one node: the store, writing one, and receiving one from the leader.

    DATA_DIR/snapshots/snap-<index>-<term>-<sha>/snapshot.bin     complete snapshots
    DATA_DIR/snapshots/incoming-<index>-<term>-<sha>/snapshot.part  a transfer in progress

(`<index>` and `<term>` are 20-digit numbers, `<sha>` the first 16 hex digits of the
file's SHA-256.) A complete snapshot directory only ever appears by an atomic rename of
a verified file, so a crash at any point of a transfer leaves the node's state machine
and log untouched; a partial file is resumed only for the very same snapshot (same index,
term and SHA-256) and deleted as soon as another one starts arriving.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import threading
from pathlib import Path

import crc32c

from dengine.proto import LogId, Membership, SnapshotAck, SnapshotChunk, SnapshotMetadata
from dengine.storage.fileio import RealDisk
from dengine.storage.kvfile import SNAPSHOT_FILE, StoreImage, write_snapshot

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(snap|incoming)-(\d{20})-(\d{20})-([0-9a-f]{16})$")
PART_FILE = "snapshot.part"
_HASH_BLOCK = 4 * 1024 * 1024


def _name(kind: str, metadata: SnapshotMetadata) -> str:
    last = metadata.last_included
    return f"{kind}-{last.index:020d}-{last.term:020d}-{metadata.checksum[:8].hex()}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> bytes:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.digest()


class SnapshotStore:
    """The snapshot directories under DATA_DIR/snapshots."""

    def __init__(self, root: Path, keep: int) -> None:
        self.root = root
        self.keep = keep

    def directory(self, metadata: SnapshotMetadata) -> Path:
        return self.root / _name("snap", metadata)

    def file(self, metadata: SnapshotMetadata) -> Path:
        return self.directory(metadata) / SNAPSHOT_FILE

    def has(self, metadata: SnapshotMetadata) -> bool:
        return self.file(metadata).is_file()

    def write(
        self, image: StoreImage, last: LogId, membership: Membership
    ) -> SnapshotMetadata:
        """Write the state at `last` as a complete snapshot directory (atomic rename)."""
        tmp = self.root / f"tmp-{last.index:020d}-{last.term:020d}"
        shutil.rmtree(tmp, ignore_errors=True)
        checksum = write_snapshot(RealDisk(), str(tmp), image, last, membership)
        metadata = SnapshotMetadata(last_included=last, checksum=checksum, membership=membership)
        final = self.directory(metadata)
        if final.exists():
            shutil.rmtree(tmp)  # the same bytes are there already
        else:
            os.replace(tmp, final)
            _fsync_dir(self.root)
        return metadata

    def snapshots(self) -> list[tuple[int, Path]]:
        """Complete snapshot directories as (index, path), oldest first."""
        out = []
        for entry in self.root.iterdir():
            m = _NAME.match(entry.name)
            if m and m.group(1) == "snap" and (entry / SNAPSHOT_FILE).is_file():
                out.append((int(m.group(2)), entry))
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
        for entry in self.root.iterdir() if leftovers else ():
            if entry.name.startswith("tmp-") or (
                entry.name.startswith("snap-") and not (entry / SNAPSHOT_FILE).is_file()
            ):
                removed.append(entry)
        for path in removed:
            shutil.rmtree(path, ignore_errors=True)
        if removed:
            _fsync_dir(self.root)
        return removed


class _Incoming:
    """The partial file of the snapshot being received."""

    def __init__(self, store: SnapshotStore, metadata: SnapshotMetadata) -> None:
        self.metadata = metadata
        self.directory = store.root / _name("incoming", metadata)
        self.directory.mkdir(exist_ok=True)
        self.path = self.directory / PART_FILE
        self.file = open(self.path, "ab")  # noqa: SIM115 - kept open across chunks
        self.have = self.file.tell()

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
        for entry in self.store.root.iterdir():
            if entry.name.startswith("incoming-") and entry.name != name:
                log.info("discarding the partial snapshot %s: another one is arriving", entry)
                shutil.rmtree(entry, ignore_errors=True)
        self._current = _Incoming(self.store, meta)
        return self._current

    def _discard(self, cur: _Incoming) -> None:
        cur.close()
        shutil.rmtree(cur.directory, ignore_errors=True)
        self._current = None

    def _finish(self, cur: _Incoming) -> str:
        """fsync, verify the SHA-256, rename into the store; an error message or ""."""
        cur.file.flush()
        os.fsync(cur.file.fileno())
        digest = file_sha256(cur.path)
        meta = cur.metadata
        if digest != meta.checksum:
            self._discard(cur)
            error = (f"snapshot at index {meta.last_included.index}: SHA-256 {digest.hex()} "
                     f"does not match the expected {meta.checksum.hex()}; refused")
            log.error("%s", error)
            return error
        cur.close()
        self._current = None
        os.replace(cur.path, cur.directory / SNAPSHOT_FILE)
        final = self.store.directory(meta)
        if final.exists():
            shutil.rmtree(cur.directory)
        else:
            os.replace(cur.directory, final)
        _fsync_dir(self.store.root)
        return ""

    def close(self) -> None:
        with self._lock:
            if self._current is not None:
                self._current.close()
                self._current = None
