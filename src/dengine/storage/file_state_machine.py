"""The durable key-value state machine: a WAL per applied chunk plus periodic checkpoints.

Directory layout (see docs/formats.md)::

    checkpoint         the full map at some last_applied, plus the first WAL to replay
    wal-SSSSSSSSSS     write-ahead logs, one record per applied chunk (what happened)

`apply_chunk` appends one CRC-framed record holding every entry's op to the current WAL
with one write and one fdatasync, then updates the in-memory map. Recovery applies a
record whole or not at all, so a chunk is atomic. When the WAL passes `checkpoint_bytes`, a new
WAL is started and the map as of that point is written to a new checkpoint (write temp,
fsync, rename, fsync dir), by default on a background thread; the older WALs are then
deleted. Recovery = checkpoint + replay of the WALs it names, torn tail truncated.

With `sync_apply=False` (the node's mode), `apply_chunk` writes its record without the
fdatasync and `sync()` makes everything written durable later: the Raft log, fsynced on a
quorum, is then the durable record of the entries above `durable_index()`, and the caller
must re-apply them after a crash and must not drop them from its log before `sync()`.
`replayable_from` tells recovery the first index such a log can re-apply: damage in the
last WAL that follows a record at or above `replayable_from - 1` is then an unsynced
tail a power cut tore (truncated like a torn tail); anywhere else it stays corruption.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from itertools import repeat
from typing import TypeVar

from dengine.errors import CorruptionError, StorageError
from dengine.kv.codec import (
    OP_BATCH,
    OP_INSERT,
    SHAPES,
    batch_inserts,
    batch_ops,
    decode_entry,
)
from dengine.kv.mvcc import MvccStore
from dengine.kv.store import ApplyResult, Op
from dengine.proto import Entry, LogId, Membership, SnapshotMetadata
from dengine.storage import kvfile, records
from dengine.storage.checkpoints import (
    CHECKPOINT_FILE,
    Checkpointer,
    CheckpointMeta,
    checkpoint_chunks,
    parse_wal_name,
    wal_name,
)
from dengine.storage.fileio import AppendFile, FileIO, RealDisk
from dengine.storage.state_machine import (
    OP_LAST_APPLIED,
    OP_SNAPSHOT_META,
    InsertResults,
    apply_to_store,
    check_snapshot_point,
    copy_log_id,
    current_values,
    image_of,
    store_of,
)

log = logging.getLogger("dengine.storage")

T = TypeVar("T")
WAL_OP = struct.Struct("<QQBII")  # index, term, op, key length, value length
_OP_BYTE = 16  # offset of `op` in WAL_OP
PREALLOCATE_BYTES = 1024 * 1024


def encode_wal_ops(ops: list[Op]) -> bytes:
    """The payload of one WAL record: each op's header, key and value."""
    pack = WAL_OP.pack
    return b"".join(
        pack(index, term, op, len(key), len(value)) + key + value
        for index, term, op, key, value in ops
    )


def decode_wal_ops(payload: bytes, path: str, offset: int) -> list[Op]:
    """The ops of one WAL record."""
    ops: list[Op] = []
    put = ops.append
    unpack = WAL_OP.unpack_from
    header = WAL_OP.size
    size = len(payload)
    pos = 0
    while pos < size:
        if pos + header > size:
            raise CorruptionError(path, offset, f"WAL op header at byte {pos} runs past the record")
        index, term, op, klen, vlen = unpack(payload, pos)
        pos += header
        end = pos + klen + vlen
        if end > size:
            raise CorruptionError(path, offset, f"WAL op at byte {pos} runs past the record")
        put((index, term, op, payload[pos : pos + klen], payload[pos + klen : end]))
        pos = end
    if not ops:
        raise CorruptionError(path, offset, "empty WAL record")
    return ops


class FileStateMachine:
    """A durable `StateMachine`: an `MvccStore` in memory, CRC-framed WAL, atomic checkpoints."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        checkpoint_bytes: int = 64 * 1024 * 1024,
        fileio: FileIO | None = None,
        background_checkpoint: bool = True,
        preallocate: int = PREALLOCATE_BYTES,
        sync_apply: bool = True,
        replayable_from: int | None = None,
    ) -> None:
        self._io = fileio or RealDisk()
        self._sync_apply = sync_apply
        self._replayable_from = replayable_from
        self._dir = os.fspath(data_dir)
        self._checkpoints = Checkpointer(
            self._io, self._dir, checkpoint_bytes, background_checkpoint
        )
        self._preallocate = preallocate
        self._lock = threading.RLock()
        self._failed: str | None = None
        self._load()

    # -- recovery

    def _path(self, name: str) -> str:
        return os.path.join(self._dir, name)

    def _load(self) -> None:
        io = self._io
        self._store = MvccStore()
        self._last_applied = LogId()
        self._membership: Membership | None = None
        self._snapshot: SnapshotMetadata | None = None
        self._wal: AppendFile | None = None
        self._wal_seq = 0
        self._wal_size = 0
        self._durable_index = 0  # every entry applied up to here is on disk (synced)
        io.makedirs(self._dir)
        names = io.listdir(self._dir)
        io.remove_durably([self._path(n) for n in names if n.endswith(".tmp")])
        first_seq = 0
        has_checkpoint = CHECKPOINT_FILE in names
        if has_checkpoint:
            head, image = self._checkpoints.load()
            self._store = store_of(image)
            self._last_applied, first_seq = head.last_applied, head.wal_seq
            self._membership, self._snapshot = head.membership, head.snapshot
        seqs = sorted(s for n in names if (s := parse_wal_name(n)) is not None)
        io.remove_durably([self._path(wal_name(s)) for s in seqs if s < first_seq])
        seqs = [s for s in seqs if s >= first_seq]
        if has_checkpoint and (not seqs or seqs[0] != first_seq):
            raise CorruptionError(
                self._path(wal_name(first_seq)), 0, "WAL named by the checkpoint is missing"
            )
        for n, seq in enumerate(seqs):
            path = self._path(wal_name(seq))
            if seq != first_seq + n:
                raise CorruptionError(path, 0, f"WAL sequence gap: expected {first_seq + n}")
            self._replay(path, last=n == len(seqs) - 1)
        if seqs:
            self._wal_seq = seqs[-1]
            self._wal = io.open_append(
                self._path(wal_name(self._wal_seq)),
                position=self._wal_size, preallocate=self._preallocate,
            )
        else:
            self._wal_seq = first_seq
            self._wal = self._create_wal(first_seq)
            self._wal_size = records.HEADER_SIZE
        if not self._sync_apply:
            self._wal.sync()  # a truncated torn tail stays truncated: appends are not synced
        self._durable_index = self._last_applied.index

    def _replay(self, path: str, *, last: bool) -> None:
        """Apply one WAL's records, read in chunks.

        The records before a bad one are applied as they are read; a bad one that may not
        be cut off then raises, and the state built so far is thrown away with this object.
        """
        scan = records.ScanResult(path)
        apply_ops = self._store.apply_ops
        applied = self._last_applied.index
        last_index = last_term = None
        for batch in records.scan_stream(self._io, path, records.MAGIC_WAL, scan):
            data = batch.data
            for start, end in zip(batch.starts, batch.ends, strict=True):
                offset = batch.base + start - records.FRAME_SIZE
                ops = decode_wal_ops(data[start:end], path, offset)
                index, term, op = ops[0][:3]
                if index > applied and op != OP_LAST_APPLIED and op != OP_SNAPSHOT_META:
                    # A chunk's record (kv ops only, increasing indexes), all of it new.
                    membership = apply_ops(ops)
                    if membership is not None:
                        self._membership = membership
                    applied = last_index = ops[-1][0]
                    last_term = ops[-1][1]
                    continue
                floor = applied  # a batch entry's ops share its index (format 7)
                for item in ops:
                    index, term, op, _, value = item
                    if op == OP_SNAPSHOT_META:
                        self._snapshot = SnapshotMetadata.FromString(value)
                        continue
                    if op == OP_LAST_APPLIED:
                        floor = index
                    else:
                        if index <= floor:
                            continue  # already in the checkpoint: never apply twice
                        membership = apply_ops((item,))
                        if membership is not None:
                            self._membership = membership
                    applied = last_index = index
                    last_term = term
        if scan.corruption is not None and not (last and self._replayable_from is not None):
            raise scan.corruption
        if scan.torn:
            if not last:
                raise CorruptionError(
                    path, scan.valid_end, f"{scan.torn_reason} in a WAL that is not the last"
                )
            records.truncate_torn(self._io, scan, records.MAGIC_WAL)
        if last_index is not None:
            self._last_applied = LogId(index=last_index, term=last_term)
        if scan.corruption is not None:
            self._drop_unsynced_tail(scan, applied)
        self._wal_size = max(scan.valid_end, records.HEADER_SIZE)

    def _drop_unsynced_tail(self, scan: records.ScanResult, applied: int) -> None:
        """Last WAL damaged before a valid record: a tear of unsynced writes if the Raft
        log can re-apply everything after the last good record, else corruption."""
        assert scan.corruption is not None and self._replayable_from is not None
        if scan.version == 0 or applied < self._replayable_from - 1:
            raise scan.corruption
        scan.torn_reason = f"unsynced tail lost ({scan.corruption.args[0]})"
        scan.corruption = None
        records.truncate_torn(self._io, scan, records.MAGIC_WAL)

    def _create_wal(self, seq: int) -> AppendFile:
        path = self._path(wal_name(seq))
        if self._io.exists(path):
            self._io.unlink(path)
        f = self._io.open_append(path, preallocate=self._preallocate)
        f.write(records.encode_header(records.MAGIC_WAL))
        f.sync()
        self._io.fsync_dir(self._dir)
        return f

    # -- lifecycle

    def stop(self) -> None:
        """Wait for a running checkpoint, then make every applied entry durable."""
        self._checkpoints.wait()
        if self._wal is not None and self._failed is None:
            self.sync()

    def close(self) -> None:
        """Stop and release the WAL file handle."""
        self.stop()
        with self._lock:
            if self._wal is not None:
                self._wal.close()
                self._wal = None

    # -- reads

    def get(self, key: bytes) -> bytes | None:
        return self._store.get(key)

    def read(self, fn: Callable[[MvccStore], T]) -> T:
        """`fn(store)` under the lock (applies wait)."""
        with self._lock:
            return fn(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def items(self) -> dict[bytes, bytes]:
        """key -> current value, a copy (tests and tools)."""
        with self._lock:
            return current_values(self._store)

    def image(self) -> kvfile.StoreImage:
        """A copy of the store's image (snapshots)."""
        with self._lock:
            return image_of(self._store)

    def last_applied(self) -> LogId:
        return copy_log_id(self._last_applied)

    def durable_index(self) -> int:
        """The last applied index known to be on disk (below last_applied without sync)."""
        return self._durable_index

    def membership(self) -> Membership | None:
        return self._membership

    def snapshot_metadata(self) -> SnapshotMetadata | None:
        return self._snapshot

    # -- writes

    def apply_chunk(self, entries: Sequence[Entry]) -> Sequence[ApplyResult]:
        """Apply committed entries: one WAL record, one write (+ one fdatasync unless
        `sync_apply` is off), then the store.

        One pass decodes each entry and encodes its op; the store changes only after the
        WAL record is written (from the encoded ops), so a failed write changes nothing.
        An etcd request is recorded as it came (its bytes) and executed by the store, on
        replay too: the store is deterministic. A chunk of plain inserts is the hot path:
        one `insert_all`, and results made only when read (`InsertResults`).
        """
        with self._lock:
            applied = self._last_applied.index
            prev = applied
            pack = WAL_OP.pack
            get_shape = SHAPES.get
            out: list[bytes] = []
            put = out.extend
            indexes: list[int] = []
            add_index = indexes.append
            only_inserts = True
            term = 0
            for entry in entries:
                index = entry.index
                if index <= prev:
                    raise StorageError(
                        f"apply_chunk: entry index {index} is not above {prev} "
                        f"({'last applied' if prev == applied else 'the previous entry'})"
                    )
                prev = index
                term = entry.term
                cmd = entry.payload.command
                n = len(cmd)
                shape = get_shape(cmd[:5] if n > 129 else cmd[:4])
                if shape is not None and shape[0] == n:
                    key, mid, value = shape[1](cmd)
                    op = shape[3] if mid == shape[2] else -1
                else:
                    op = -1
                if op < 0:
                    columns = batch_inserts(cmd)
                    if columns is not None:  # a batch of same-shape inserts: by columns
                        keys, values = columns
                        count = len(keys)
                        run = [pack(index, term, OP_INSERT, len(keys[0]), len(values[0]))
                               ] * (3 * count)
                        run[1::3] = keys
                        run[2::3] = values
                        put(run)
                        indexes += repeat(index, count)
                        continue
                    op, key, value = decode_entry(entry)
                    if op == OP_BATCH:  # each of its commands is an op at this index
                        for op, key, value in batch_ops(value):  # noqa: B020
                            put((pack(index, term, op, len(key), len(value)), key, value))
                            if op != OP_INSERT:
                                only_inserts = False
                            add_index(index)
                        continue
                put((pack(index, term, op, len(key), len(value)), key, value))
                if op != OP_INSERT:
                    only_inserts = False
                add_index(index)
            if not indexes:
                return []
            self._write_wal(records.frame(b"".join(out)), self._sync_apply)
            # out holds (op header, key, value) per entry.
            results: Sequence[ApplyResult]
            if only_inserts:
                store = self._store
                results = InsertResults(indexes, store.revision + 1)
                store.insert_all(out[1::3], out[2::3])
            else:
                ops = zip(indexes, out[::3], out[1::3], out[2::3], strict=True)
                results, membership = apply_to_store(self._store, [
                    (index, 0, header[_OP_BYTE], key, value)
                    for index, header, key, value in ops
                ])
                if membership is not None:
                    self._membership = membership
            self._last_applied = LogId(index=prev, term=term)
            if self._sync_apply:
                self._durable_index = prev
        if self._wal_size >= self._checkpoints.threshold:
            self.maybe_checkpoint()
        return results

    def _append_wal(self, ops: list[Op]) -> None:
        self._write_wal(records.frame(encode_wal_ops(ops)))

    def _write_wal(self, data: bytes, sync: bool = True) -> None:
        if self._failed is not None or self._wal is None:
            raise StorageError(
                f"{self._dir}: state machine unusable after a failed write ({self._failed}); "
                "restart to recover from disk"
                if self._failed else f"{self._dir}: state machine is closed"
            )
        try:
            self._wal.write(data)
            if sync:
                self._wal.sync()
        except BaseException as e:
            self._failed = repr(e)
            raise
        self._wal_size += len(data)

    def persist_last_applied(self, log_id: LogId) -> None:
        with self._lock:
            self._append_wal([(log_id.index, log_id.term, OP_LAST_APPLIED, b"", b"")])
            self._last_applied = copy_log_id(log_id)
            self._durable_index = log_id.index

    def persist_last_snapshot_metadata(self, metadata: SnapshotMetadata) -> None:
        with self._lock:
            self._append_wal([(0, 0, OP_SNAPSHOT_META, b"", metadata.SerializeToString())])
            self._snapshot = metadata
            self._durable_index = self._last_applied.index

    def sync(self) -> None:
        """fdatasync what `apply_chunk` wrote without syncing; then durable_index() is
        last_applied. Run it on the thread that applies, or between applies."""
        with self._lock:
            if self._wal is None or self._durable_index == self._last_applied.index:
                return
            self._sync_wal(self._wal)

    def _sync_wal(self, wal: AppendFile) -> None:
        """Under the lock: fdatasync `wal`, the file every unsynced record went to."""
        try:
            wal.sync()
        except BaseException as e:
            self._failed = repr(e)
            raise
        self._durable_index = self._last_applied.index

    # -- checkpoints

    def checkpoint_headroom(self) -> int:
        """WAL bytes an apply may still write before it starts a checkpoint (which copies
        the whole map: a caller that must not stall, such as an event loop, checks this)."""
        return self._checkpoints.threshold - self._wal_size

    def checkpoint_progress(self) -> tuple[int, bool]:
        """Checkpoints written since this state machine was opened, and whether one is
        being written in the background now (benchmarks, tests)."""
        return self._checkpoints.written, self._checkpoints.running()

    def maybe_checkpoint(self) -> bool:
        """Checkpoint if the WAL passed the threshold and none is running. True if started.
        Call it from the thread that applies (as `apply_chunk` does)."""
        if self._wal_size < self._checkpoints.threshold or self._checkpoints.running():
            return False
        if not self._checkpoints.background:
            self.checkpoint()
        else:
            self._checkpoints.start(*self._begin_checkpoint())
        return True

    def checkpoint(self) -> None:
        """Write a checkpoint now, synchronously, and drop the WALs it covers."""
        self._checkpoints.wait()
        self._checkpoints.finish(*self._begin_checkpoint())

    def _begin_checkpoint(self) -> tuple[Iterator[bytes], int]:
        """Freeze a consistent point: start a new WAL and copy the store as of then.

        Run by the thread that applies, so nothing is applied meanwhile. Readers take the
        lock too, the node's event loop among them, so it covers only the switch to the
        new WAL and the copies, done at C speed (a dict's and a deque's own copy: ~40 and
        ~20 ms at 1,000,000 keys and 1,280,000 changes); the old WAL's fdatasync and the
        new one's creation happen before it. Copying the changelog as namedtuples under
        the lock took ~2 s there: the loop, waiting on a read, lost the lead.
        """
        old = self._wal
        if old is not None and self._durable_index != self._last_applied.index:
            self._sync_wal(old)  # only the last WAL may end in an unsynced tail
        seq = self._wal_seq + 1
        new = self._create_wal(seq)
        with self._lock:
            self._wal, self._wal_seq, self._wal_size = new, seq, records.HEADER_SIZE
            image = image_of(self._store)
            head = CheckpointMeta(copy_log_id(self._last_applied), seq, len(image.items),
                                  self._membership, self._snapshot, image.revision,
                                  image.compact_revision, leases=image.leases,
                                  auth=image.auth)
        if old is not None:
            old.close()
        return checkpoint_chunks(head, image.items.items(), image.changes), seq

    # -- snapshots

    def generate_snapshot_data(self, directory: str, last_included: LogId) -> bytes:
        """Write a snapshot of the state at `last_included` (must equal last_applied)."""
        with self._lock:
            check_snapshot_point(self._last_applied, last_included)
            image = image_of(self._store)
            membership = self._membership
        checksum = kvfile.write_snapshot(self._io, directory, image, last_included, membership)
        with self._lock:
            self._snapshot = SnapshotMetadata(
                last_included=copy_log_id(last_included), checksum=checksum, membership=membership
            )
        return checksum

    def apply_snapshot_from_file(self, metadata: SnapshotMetadata, directory: str) -> None:
        """Verify the snapshot's SHA-256, then install it atomically (a new checkpoint)."""
        data = kvfile.read_snapshot(self._io, directory, metadata)
        image = data.image
        store = store_of(image)
        self._checkpoints.wait()
        with self._lock:
            old = self._wal
            if old is not None and self._durable_index != self._last_applied.index:
                self._sync_wal(old)  # only the last WAL may end in an unsynced tail
            seq = self._wal_seq + 1
            new_wal = self._create_wal(seq)
            head = CheckpointMeta(data.last_included, seq, len(image.items), data.membership,
                                  metadata, image.revision, image.compact_revision,
                                  leases=image.leases, auth=image.auth)
            try:
                self._checkpoints.write(
                    checkpoint_chunks(head, image.items.items(), image.changes)
                )
            except BaseException:
                new_wal.close()
                self._failed = "snapshot install failed"
                raise
            if self._wal is not None:
                self._wal.close()
            self._wal = new_wal
            self._wal_seq = seq
            self._wal_size = records.HEADER_SIZE
            self._store = store
            self._last_applied = data.last_included
            self._durable_index = data.last_included.index
            self._membership = data.membership
            self._snapshot = metadata
            self._checkpoints.drop_wals_before(seq)

    def reset(self) -> None:
        """Remove every file and start empty."""
        self._checkpoints.wait()
        with self._lock:
            if self._wal is not None:
                self._wal.close()
                self._wal = None
            if self._io.exists(self._dir):
                # Not synced here: _load() recreates the directory with makedirs, whose
                # fsync of the parent makes the removal and the new directory durable together.
                self._io.rmtree(self._dir)
            self._failed = None
            self._load()
