"""Checkpoints of the file state machine: the full map at some last_applied, plus the
first WAL to replay (format in docs/formats.md).

`Checkpointer` owns the checkpoint file of one state machine directory: loading it at
recovery, writing a new one (inline, or on a background thread while applies go on), the
WALs it makes obsolete, and the WAL size at which the next one is due. The state machine
freezes the point to write (a copy of the map, a new WAL) under its own lock and hands it over.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import threading
from collections.abc import Iterator

from google.protobuf.message import DecodeError

from dengine.errors import CorruptionError
from dengine.proto import LogId, Membership, SnapshotMetadata
from dengine.storage import kvfile, records
from dengine.storage.fileio import FileIO

log = logging.getLogger("dengine.storage")

CHECKPOINT_FILE = "checkpoint"
_WAL_NAME = re.compile(r"^wal-(\d{10})$")
_CHECKPOINT_META = struct.Struct("<QQQQ")  # last applied index, term, first WAL seq, key count


def wal_name(seq: int) -> str:
    return f"wal-{seq:010d}"


def parse_wal_name(name: str) -> int | None:
    m = _WAL_NAME.match(name)
    return int(m.group(1)) if m else None


def encode_checkpoint_meta(
    last_applied: LogId,
    wal_seq: int,
    count: int,
    membership: Membership | None,
    snapshot_meta: SnapshotMetadata | None,
) -> bytes:
    return (
        _CHECKPOINT_META.pack(last_applied.index, last_applied.term, wal_seq, count)
        + kvfile.pack_blob(membership.SerializeToString() if membership is not None else b"")
        + kvfile.pack_blob(
            snapshot_meta.SerializeToString() if snapshot_meta is not None else b""
        )
        + bytes([(membership is not None) | (snapshot_meta is not None) << 1])
    )


def decode_checkpoint_meta(
    payload: bytes, path: str, offset: int
) -> tuple[LogId, int, int, Membership | None, SnapshotMetadata | None]:
    try:
        index, term, wal_seq, count = _CHECKPOINT_META.unpack_from(payload, 0)
        m_blob, end = kvfile.unpack_blob(payload, _CHECKPOINT_META.size)
        s_blob, end = kvfile.unpack_blob(payload, end)
        flags = payload[end]
        membership = Membership.FromString(m_blob) if flags & 1 else None
        snapshot_meta = SnapshotMetadata.FromString(s_blob) if flags & 2 else None
    except (struct.error, IndexError, DecodeError) as e:
        raise CorruptionError(path, offset, f"undecodable checkpoint metadata: {e}") from None
    return LogId(index=index, term=term), wal_seq, count, membership, snapshot_meta


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

    def load(
        self,
    ) -> tuple[dict[bytes, bytes], LogId, int, Membership | None, SnapshotMetadata | None]:
        """The checkpoint's map, last applied, first WAL seq, membership, snapshot metadata."""
        loaded = kvfile.load_strict(self._io, self._path, records.MAGIC_CHECKPOINT)
        self.threshold = max(self._checkpoint_bytes, loaded.scan.valid_end)
        last, wal_seq, count, membership, snapshot_meta = decode_checkpoint_meta(
            loaded.meta, self._path, loaded.meta_offset
        )
        if count != loaded.keys:
            raise CorruptionError(
                self._path, loaded.scan.valid_end, f"{loaded.keys} keys, expected {count}"
            )
        return loaded.state, last, int(wal_seq), membership, snapshot_meta

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, state: dict[bytes, bytes], meta: bytes, seq: int) -> None:
        """Write the checkpoint and drop the WALs before `seq` on a background thread."""
        self._thread = threading.Thread(
            target=self._finish_logged, args=(state, meta, seq), name="dengine-checkpoint",
            daemon=True,
        )
        self._thread.start()

    def wait(self) -> None:
        """Wait for the background checkpoint, if one is running."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def finish(self, state: dict[bytes, bytes], meta: bytes, seq: int) -> None:
        """Write the checkpoint, then drop the WALs it covers (those before `seq`)."""
        self.write(state, meta)
        self.drop_wals_before(seq)

    def _finish_logged(self, state: dict[bytes, bytes], meta: bytes, seq: int) -> None:
        try:
            self.finish(state, meta, seq)
        except Exception:
            # The WALs are intact, so nothing is lost; the next checkpoint retries.
            log.exception("%s: background checkpoint failed", self._dir)

    def write(self, state: dict[bytes, bytes], meta: bytes) -> None:
        """Replace the checkpoint file atomically (write temp, fsync, rename, fsync dir)."""
        written = 0

        def chunks() -> Iterator[bytes]:
            nonlocal written
            head = records.encode_header(records.MAGIC_CHECKPOINT) + records.frame(meta)
            written += len(head)
            yield head
            for chunk in kvfile.encode_blocks(state.items()):
                written += len(chunk)
                yield chunk

        self._io.atomic_write(self._path, chunks())
        self.threshold = max(self._checkpoint_bytes, written)

    def drop_wals_before(self, seq: int) -> None:
        names = self._io.listdir(self._dir)
        old = [n for n in names if (s := parse_wal_name(n)) is not None and s < seq]
        self._io.remove_durably([os.path.join(self._dir, n) for n in old])
