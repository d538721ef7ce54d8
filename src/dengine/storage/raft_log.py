"""The file-backed Raft log: segment files of CRC-framed entries, hard state, compaction point.

Directory layout (see docs/formats.md)::

    seg-GGGGGG-IIIIIIIIIIIIIIIIIIII   segments of generation G whose first entry is index I
    hardstate                         append-only HardState records; the last valid one wins
    meta                              generation, compaction point, snapshot metadata (atomic)

Reads are served from memory (this class *is* a MemoryRaftLog, plus persistence), so the
read semantics are exactly those of the reference model. Each write method makes its
change durable before it changes memory.
"""

from __future__ import annotations

import bisect
import os
import re
import struct

from crc32c import crc32c
from google.protobuf.message import DecodeError

from dengine.errors import CorruptionError, StorageError
from dengine.proto import Entry, HardState, SnapshotMetadata
from dengine.storage import records
from dengine.storage.fileio import AppendFile, FileIO, RealDisk
from dengine.storage.log_api import LogUnavailable, MemoryRaftLog

_SEGMENT_NAME = re.compile(r"^seg-(\d{6})-(\d{20})$")
_META = struct.Struct("<QQQB")  # generation, compacted index, compacted term, has snapshot
HARD_STATE_REWRITE_BYTES = 64 * 1024
PREALLOCATE_BYTES = 1024 * 1024


def segment_name(generation: int, first_index: int) -> str:
    return f"seg-{generation:06d}-{first_index:020d}"


def parse_segment_name(name: str) -> tuple[int, int] | None:
    """(generation, first index) of a segment file name, or None for other files."""
    m = _SEGMENT_NAME.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def encode_meta(
    generation: int, index: int, term: int, snapshot: SnapshotMetadata | None
) -> bytes:
    body = _META.pack(generation, index, term, snapshot is not None)
    if snapshot is not None:
        body += snapshot.SerializeToString()
    return records.encode_header(records.MAGIC_LOG_META) + records.frame(body)


def decode_meta(
    payload: bytes, path: str
) -> tuple[int, int, int, SnapshotMetadata | None]:
    try:
        generation, index, term, has_snapshot = _META.unpack_from(payload, 0)
        snapshot = (
            SnapshotMetadata.FromString(payload[_META.size :]) if has_snapshot else None
        )
    except (struct.error, DecodeError) as e:
        raise CorruptionError(path, records.HEADER_SIZE, f"undecodable log metadata: {e}") from None
    return generation, index, term, snapshot


class RaftLog(MemoryRaftLog):
    """`LogStorage` on disk. `append` costs one write and one fdatasync per batch."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = 64 * 1024 * 1024,
        fileio: FileIO | None = None,
        preallocate: int = PREALLOCATE_BYTES,
    ) -> None:
        super().__init__()
        self._io = fileio or RealDisk()
        self._dir = os.fspath(directory)
        self._segment_bytes = segment_bytes
        self._preallocate = preallocate
        self._generation = 0
        # Segments on disk, ordered: first indexes and paths. The last one is appended to.
        self._seg_first: list[int] = []
        self._seg_path: list[str] = []
        self._active: AppendFile | None = None
        self._active_size = 0
        # File offset of each in-memory entry's record (parallel to self._entries).
        self._positions: list[int] = []
        self._hs_file: AppendFile | None = None
        self._hs_size = 0
        self._closed = False
        self._recover()

    # -- recovery

    def _path(self, name: str) -> str:
        return os.path.join(self._dir, name)

    def _recover(self) -> None:
        io = self._io
        io.makedirs(self._dir)
        names = io.listdir(self._dir)
        io.remove_durably([self._path(n) for n in names if n.endswith(".tmp")])
        self._load_meta()
        self._load_hard_state()

        found = sorted(
            (first, gen, name)
            for name in names
            if (parsed := parse_segment_name(name)) is not None
            for gen, first in [parsed]
        )
        stale = [self._path(name) for _, gen, name in found if gen != self._generation]
        segments = [(first, name) for first, gen, name in found if gen == self._generation]
        loaded: list[tuple[int, str, list[Entry], list[int], int]] = []
        expected_next: int | None = None
        for n, (first, name) in enumerate(segments):
            path = self._path(name)
            entries, positions, end = self._load_segment(path, first, last=n == len(segments) - 1)
            if expected_next is not None and first != expected_next:
                raise CorruptionError(
                    path, 0, f"segment starts at index {first}, expected {expected_next}"
                )
            expected_next = first + len(entries)
            loaded.append((first, path, entries, positions, end))

        offset = self._offset
        for first, path, entries, positions, end in loaded:
            if first + len(entries) - 1 <= offset:
                stale.append(path)  # fully compacted; its deletion was interrupted
                continue
            if first > offset + 1 and not self._seg_first:
                raise CorruptionError(
                    path, 0, f"log starts at index {first}, but only {offset} is compacted"
                )
            skip = max(0, offset + 1 - first)
            self._entries.extend(entries[skip:])
            self._positions.extend(positions[skip:])
            self._seg_first.append(first)
            self._seg_path.append(path)
            self._active_size = end
        io.remove_durably(stale)
        if self._seg_path:
            self._active = io.open_append(
                self._seg_path[-1], position=self._active_size, preallocate=self._preallocate
            )

    def _load_segment(
        self, path: str, first: int, *, last: bool
    ) -> tuple[list[Entry], list[int], int]:
        scan = records.scan(self._io.read(path), path, records.MAGIC_SEGMENT)
        scan.raise_if_corrupt()
        if scan.torn:
            if not last:
                raise CorruptionError(
                    path, scan.valid_end, f"{scan.torn_reason} in a segment that is not the last"
                )
            records.truncate_torn(self._io, scan, records.MAGIC_SEGMENT)
        entries: list[Entry] = []
        from_bytes = Entry.FromString
        index = first
        for payload, offset in zip(scan.records, scan.offsets, strict=True):
            try:
                entry = from_bytes(payload)
            except DecodeError as e:
                raise CorruptionError(path, offset, f"undecodable entry: {e}") from None
            if entry.index != index:
                raise CorruptionError(path, offset, f"entry index {entry.index}, expected {index}")
            entries.append(entry)
            index += 1
        return entries, scan.offsets, max(scan.valid_end, records.HEADER_SIZE)


    def _load_meta(self) -> None:
        path = self._path("meta")
        if not self._io.exists(path):
            return
        scan = records.scan(self._io.read(path), path, records.MAGIC_LOG_META)
        scan.raise_if_corrupt()
        if scan.torn or len(scan.records) != 1:
            raise CorruptionError(path, scan.valid_end, "log metadata is not exactly one record")
        generation, index, term, snapshot = decode_meta(scan.records[0], path)
        self._generation = generation
        self._offset = index
        self._offset_term = term
        self._snapshot = snapshot

    def _load_hard_state(self) -> None:
        path = self._path("hardstate")
        if not self._io.exists(path):
            return
        scan = records.scan(self._io.read(path), path, records.MAGIC_HARD_STATE)
        scan.raise_if_corrupt()
        if scan.torn:
            records.truncate_torn(self._io, scan, records.MAGIC_HARD_STATE)
        if scan.records:
            try:
                self._hard_state = HardState.FromString(scan.records[-1])
            except DecodeError as e:
                raise CorruptionError(
                    path, scan.offsets[-1], f"undecodable hard state: {e}"
                ) from None
        self._hs_size = max(scan.valid_end, records.HEADER_SIZE)
        self._hs_file = self._io.open_append(path, position=self._hs_size)

    # -- writes

    def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        self._check_open()
        first = entries[0].index
        if first != self.last_index() + 1:
            raise StorageError(f"append at index {first}, expected {self.last_index() + 1}")
        if entries[-1].index != first + len(entries) - 1:
            raise StorageError(f"append of non-consecutive indexes {first}..{entries[-1].index}")
        new_segment = self._active is None or self._active_size >= self._segment_bytes
        pos = records.HEADER_SIZE if new_segment else self._active_size
        positions = self._positions
        pack_len = records.LENGTH.pack
        crc = crc32c
        out: list[bytes] = [records.encode_header(records.MAGIC_SEGMENT)] if new_segment else []
        put = out.append
        for entry in entries:
            payload = entry.SerializeToString()
            length = pack_len(len(payload))
            put(length)
            put(pack_len(crc(payload, crc(length))))
            put(payload)
            positions.append(pos)
            pos += records.FRAME_SIZE + len(payload)
        data = b"".join(out)
        try:
            if new_segment:
                self._open_segment(first, data)
            else:
                assert self._active is not None
                self._active.write(data)
                self._active.sync()
        except BaseException:
            del positions[len(positions) - len(entries) :]
            self._fail()
            raise
        self._active_size = pos
        self._entries.extend(entries)

    def _open_segment(self, first: int, data: bytes) -> None:
        if self._active is not None:
            self._active.close()
            self._active = None
            # Give back the unused preallocated tail of the finished segment.
            self._io.truncate(self._seg_path[-1], self._active_size)
        path = self._path(segment_name(self._generation, first))
        f = self._io.open_append(path, preallocate=self._preallocate)
        f.write(data)
        f.sync()
        self._io.fsync_dir(self._dir)
        self._active = f
        self._seg_first.append(first)
        self._seg_path.append(path)

    def truncate_suffix(self, index: int) -> None:
        self._check_open()
        if index <= self._offset:
            raise StorageError(f"cannot truncate at {index}: compacted up to {self._offset}")
        if index > self.last_index():
            return
        k = bisect.bisect_right(self._seg_first, index) - 1
        position = self._positions[index - self._offset - 1]
        try:
            # Later segments go first, newest first, so a crash leaves a contiguous log.
            assert self._active is not None
            self._active.close()
            self._active = None
            later = self._seg_path[k + 1 :]
            if later:
                self._io.remove_durably(later[::-1])
                del self._seg_first[k + 1 :]
                del self._seg_path[k + 1 :]
            self._io.truncate(self._seg_path[k], position)
            self._io.fsync(self._seg_path[k])
            self._active = self._io.open_append(
                self._seg_path[k], position=position, preallocate=self._preallocate
            )
        except BaseException:
            self._fail()
            raise
        self._active_size = position
        del self._positions[index - self._offset - 1 :]
        super().truncate_suffix(index)

    def compact_prefix(self, index: int, snapshot: SnapshotMetadata | None = None) -> None:
        self._check_open()
        if index <= self._offset:
            return
        if index > self.last_index():
            raise LogUnavailable(f"cannot compact to {index}: last index {self.last_index()}")
        if snapshot is not None and snapshot.last_included.index < index:
            raise StorageError(
                f"cannot compact to {index} with a snapshot at {snapshot.last_included.index}"
            )
        term = self.term(index)
        # The compaction point and the snapshot it relies on change in one atomic write.
        self._write_meta(self._generation, index, term, snapshot or self._snapshot)
        # Whole segments below the compaction point go; the active one always stays.
        drop = bisect.bisect_right(self._seg_first, index + 1) - 1
        drop = min(drop, len(self._seg_path) - 1)
        if drop > 0:
            self._io.remove_durably(self._seg_path[:drop])
            del self._seg_first[:drop]
            del self._seg_path[:drop]
        del self._positions[: index - self._offset]
        super().compact_prefix(index, snapshot)

    def install_snapshot(self, metadata: SnapshotMetadata) -> None:
        self._check_open()
        last = metadata.last_included
        # The metadata with a new generation is the commit point: segments of older
        # generations are deleted at recovery even if the removal below is cut short.
        self._write_meta(self._generation + 1, last.index, last.term, metadata)
        self._generation += 1
        if self._active is not None:
            self._active.close()
            self._active = None
        self._io.remove_durably(self._seg_path)
        self._seg_first = []
        self._seg_path = []
        self._positions = []
        self._active_size = 0
        super().install_snapshot(metadata)

    def set_hard_state(self, hs: HardState) -> None:
        self._check_open()
        if hs == self._hard_state:
            return
        path = self._path("hardstate")
        record = records.frame(hs.SerializeToString())
        try:
            if self._hs_file is None or self._hs_size + len(record) > HARD_STATE_REWRITE_BYTES:
                if self._hs_file is not None:
                    self._hs_file.close()
                    self._hs_file = None
                header = records.encode_header(records.MAGIC_HARD_STATE)
                self._io.atomic_write(path, [header, record])
                self._hs_file = self._io.open_append(path)
                self._hs_size = len(header) + len(record)
            else:
                self._hs_file.write(record)
                self._hs_file.sync()
                self._hs_size += len(record)
        except BaseException:
            self._fail()
            raise
        super().set_hard_state(hs)

    def _write_meta(
        self, generation: int, index: int, term: int, snapshot: SnapshotMetadata | None
    ) -> None:
        try:
            meta = encode_meta(generation, index, term, snapshot)
            self._io.atomic_write(self._path("meta"), [meta])
        except BaseException:
            self._fail()
            raise

    # -- lifecycle

    def close(self) -> None:
        """Release file handles. Everything is already durable; nothing is written here."""
        for f in (self._active, self._hs_file):
            if f is not None:
                f.close()
        self._active = None
        self._hs_file = None
        self._closed = True

    def _fail(self) -> None:
        """After a failed write the files may disagree with memory: refuse further writes."""
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(f"{self._dir}: raft log is closed (or a write failed); reopen it")

    @property
    def directory(self) -> str:
        return self._dir
