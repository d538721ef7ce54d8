"""Checkpoints of the file state machine: the store's image at some last_applied, plus the
first WAL to replay (format in docs/formats.md).

`Checkpointer` owns the checkpoint file of one state machine directory: loading it at
recovery, writing a new one (inline, or in the background while applies go on), the WALs
it makes obsolete, and the WAL size at which the next one is due. The state machine
freezes the point to write (a new WAL, and the state as of then) under its own lock and
hands it over.

In the background, a thread writes a copy of the store taken under the state machine's
lock (a dict's own copy: ~60-180 ms at a million keys), and paces itself: after each
~1 MiB it encodes, it sleeps three times the CPU time that took, so that it holds the GIL
at most a quarter of the time and the apply path keeps the rest (BACKGROUND_DUTY).
Encoding a million keys takes ~1.5 s of CPU; paced, the checkpoint takes ~6 s, during
which the WAL simply grows. A forked child (copy-on-write, as Redis' BGSAVE) was measured
and dropped: on this VM each copy-on-write fault costs 10-30 us and the parent takes 2-3
per applied insert after the fork, so its apply rate fell to 15-60k entries/s for the
first second of every checkpoint (docs/performance.md, "Checkpoint cost").
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from dengine.errors import CorruptionError
from dengine.proto import LogId, Membership, SnapshotMetadata
from dengine.storage import kvfile, records
from dengine.storage.fileio import FileIO

log = logging.getLogger("dengine.storage")

CHECKPOINT_FILE = "checkpoint"
BACKGROUND_DUTY = 0.25  # the share of its time a background checkpoint may hold the GIL
_WAL_NAME = re.compile(r"^wal-(\d{10})$")
_CHECKPOINT_META = struct.Struct("<QQQQ")  # last applied index, term, first WAL seq, key count


def wal_name(seq: int) -> str:
    return f"wal-{seq:010d}"


def parse_wal_name(name: str) -> int | None:
    m = _WAL_NAME.match(name)
    return int(m.group(1)) if m else None


@dataclass
class CheckpointMeta:
    """Record 0 of a checkpoint (format 5): where the state is, what to replay after it,
    the counts of the store image that follows, the lease table and the auth state."""

    last_applied: LogId
    wal_seq: int  # the first WAL to replay
    key_count: int
    membership: Membership | None
    snapshot: SnapshotMetadata | None
    revision: int = 1
    compact_revision: int = -1
    change_count: int = 0
    leases: Sequence[kvfile.LeaseTuple] = ()
    auth: bytes = b""


def encode_checkpoint_meta(m: CheckpointMeta) -> bytes:
    return (
        _CHECKPOINT_META.pack(m.last_applied.index, m.last_applied.term, m.wal_seq, m.key_count)
        + kvfile.pack_blob(m.membership.SerializeToString() if m.membership is not None else b"")
        + kvfile.pack_blob(m.snapshot.SerializeToString() if m.snapshot is not None else b"")
        + bytes([(m.membership is not None) | (m.snapshot is not None) << 1])
        + kvfile.encode_counts(m.revision, m.compact_revision, m.change_count, m.leases,
                                 m.auth)
    )


def decode_checkpoint_meta(payload: bytes, path: str, offset: int) -> CheckpointMeta:
    try:
        index, term, wal_seq, count = _CHECKPOINT_META.unpack_from(payload, 0)
        m_blob, end = kvfile.unpack_blob(payload, _CHECKPOINT_META.size)
        s_blob, end = kvfile.unpack_blob(payload, end)
        flags = payload[end]
        membership = Membership.FromString(m_blob) if flags & 1 else None
        snapshot_meta = SnapshotMetadata.FromString(s_blob) if flags & 2 else None
        revision, compact, changes, leases, auth = kvfile.decode_counts(payload, end + 1)
    except (struct.error, IndexError, DecodeError) as e:
        raise CorruptionError(path, offset, f"undecodable checkpoint metadata: {e}") from None
    return CheckpointMeta(LogId(index=index, term=term), wal_seq, count, membership,
                          snapshot_meta, revision, compact, changes, leases, auth)


def checkpoint_chunks(
    head: CheckpointMeta, items: Iterable[tuple[bytes, bytes]],
    changes: kvfile.Changes,
) -> Iterator[bytes]:
    """A checkpoint's bytes after the file header: record 0 (`head`, its change count
    taken from `changes`), the live keys' `(key, packed)` blocks, then the change blocks."""
    head.change_count = len(changes)
    yield records.frame(encode_checkpoint_meta(head))
    yield from kvfile.encode_blocks(items)
    yield from kvfile.encode_change_blocks(changes)


class Checkpointer:
    """The checkpoint file of one state machine directory and the thread that writes it."""

    def __init__(
        self, io: FileIO, directory: str, checkpoint_bytes: int, background: bool
    ) -> None:
        self._io = io
        self._dir = directory
        self._path = os.path.join(directory, CHECKPOINT_FILE)
        self._checkpoint_bytes = checkpoint_bytes
        self.background = background
        self._thread: threading.Thread | None = None
        # WAL bytes that trigger a checkpoint: `checkpoint_bytes`, or the size of the last
        # checkpoint written or loaded if larger, so a big store is rewritten at most once
        # per its own size of WAL (amortized O(1) per applied entry, write amplification
        # <= 2x).
        self.threshold = checkpoint_bytes
        self.written = 0  # checkpoints written (installed) since this object was made

    def load(self) -> tuple[CheckpointMeta, kvfile.StoreImage]:
        """The checkpoint's record 0 and the store image it holds."""
        heads: list[CheckpointMeta] = []

        def key_count(meta: bytes, offset: int) -> int:
            heads.append(decode_checkpoint_meta(meta, self._path, offset))
            return heads[0].key_count

        loaded = kvfile.load_strict(self._io, self._path, records.MAGIC_CHECKPOINT, key_count)
        self.threshold = max(self._checkpoint_bytes, loaded.scan.valid_end)
        head = heads[0]
        if len(loaded.changes) != head.change_count:
            raise CorruptionError(
                self._path, loaded.scan.valid_end,
                f"{len(loaded.changes)} changes, expected {head.change_count}",
            )
        image = kvfile.StoreImage(head.revision, head.compact_revision, loaded.state,
                                  loaded.changes, head.leases, head.auth)
        return head, image

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, chunks: Iterable[bytes], seq: int) -> None:
        """Write the checkpoint (`chunks`: the file's bytes after the header, from a copy
        of the state) and drop the WALs before `seq` on a background thread, paced."""
        self._thread = threading.Thread(
            target=self._finish_logged, args=(paced(chunks), seq), name="dengine-checkpoint",
            daemon=True,
        )
        self._thread.start()

    def wait(self) -> None:
        """Wait for the background checkpoint, if one is running."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def finish(self, chunks: Iterable[bytes], seq: int) -> None:
        """Write the checkpoint, then drop the WALs it covers (those before `seq`)."""
        self.write(chunks)
        self.drop_wals_before(seq)

    def _finish_logged(self, chunks: Iterable[bytes], seq: int) -> None:
        try:
            self.finish(chunks, seq)
        except Exception:
            # The WALs are intact, so nothing is lost; the next checkpoint retries.
            log.exception("%s: background checkpoint failed", self._dir)

    def write(self, chunks: Iterable[bytes]) -> None:
        """Replace the checkpoint file atomically (write temp, fsync, rename, fsync dir)."""
        written = 0

        def counted() -> Iterator[bytes]:
            nonlocal written
            for chunk in _with_header(chunks):
                written += len(chunk)
                yield chunk

        self._io.atomic_write(self._path, counted())
        self.threshold = max(self._checkpoint_bytes, written)
        self.written += 1

    def drop_wals_before(self, seq: int) -> None:
        names = self._io.listdir(self._dir)
        old = [n for n in names if (s := parse_wal_name(n)) is not None and s < seq]
        self._io.remove_durably([os.path.join(self._dir, n) for n in old])


def paced(
    chunks: Iterable[bytes], duty: float = BACKGROUND_DUTY,
    clock: Callable[[], float] = time.thread_time, sleep: Callable[[float], None] = time.sleep,
) -> Iterator[bytes]:
    """`chunks`, producing each with at most `duty` of this thread's time: after a chunk
    that took t seconds of CPU to make, sleep t * (1 - duty) / duty (the GIL is free
    meanwhile)."""
    rest = (1 - duty) / duty
    it = iter(chunks)
    while True:
        began = clock()
        chunk = next(it, None)
        if chunk is None:
            return
        spent = clock() - began
        yield chunk
        sleep(spent * rest)


def _with_header(chunks: Iterable[bytes]) -> Iterator[bytes]:
    yield records.encode_header(records.MAGIC_CHECKPOINT)
    yield from chunks
