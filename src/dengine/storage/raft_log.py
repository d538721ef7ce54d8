"""The file-backed Raft log: segment files of CRC-framed entries, hard state, compaction point.

Directory layout (see docs/formats.md)::

    seg-GGGGGG-IIIIIIIIIIIIIIIIIIII   segments of generation G whose first entry is index I
    hardstate                         the HardState, one record, replaced atomically
    meta                              generation, compaction point, snapshot metadata (atomic)

Reads have the semantics of the reference model (`MemoryRaftLog`). Each write method
makes its change durable before it changes memory.

In memory, each entry is its term and the file offset of its record (16 bytes); the most
recent `recent_entries` to twice that many are also kept as the `Entry` objects given to
`append`, and reads of those (replication to followers that keep up, apply) return them
without decoding. An older entry (a lagging follower, restart recovery) is read back from
its segment — one `pread` per run of entries, CRC-checked again, then decoded. Holding
every uncompacted entry as an object (~1.2 KB each) cost hundreds of MB and seconds of
decoding at a restart with 100,000+ uncompacted entries; as records, still ~300 bytes each.
"""

from __future__ import annotations

import bisect
import os
import re
import struct
from array import array

from crc32c import crc32c
from google.protobuf.message import DecodeError

from dengine.errors import CorruptionError, StorageError
from dengine.proto import Entry, HardState, SnapshotMetadata
from dengine.raft.storage import (
    MemoryRaftLog,
    check_range,
    compaction_needed,
    limit_size,
    position,
)
from dengine.storage import records
from dengine.storage.fileio import AppendFile, FileIO, RealDisk

_SEGMENT_NAME = re.compile(r"^seg-(\d{6})-(\d{20})$")
_META = struct.Struct("<QQQB")  # generation, compacted index, compacted term, has snapshot
PREALLOCATE_BYTES = 1024 * 1024
RECENT_ENTRIES = 4096  # the last entries kept as objects (between this and twice this)
_CONFIG_TAG = 0x1A  # EntryPayload.config: field 3, length-delimited
_SEGMENT_VERSION = records.write_version(records.MAGIC_SEGMENT)
_NO_INDEX = 1 << 64


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


def _header(data: bytes, pos: int, end: int) -> tuple[int, int, bool] | None:
    """(index, term, whether it is a config entry) of the encoded `Entry` in data[pos:end],
    read from its first bytes (index, term and payload, which protobuf writes in field
    order; the payload's first byte tells its kind) without decoding the rest. None if
    the record does not start that way: then decode it whole."""
    if end - pos < 4 or data[pos] != 0x08:
        return None
    byte = data[pos + 1]
    index = byte & 0x7F
    shift = 7
    pos += 2
    while byte & 0x80 and pos < end:
        byte = data[pos]
        pos += 1
        index |= (byte & 0x7F) << shift
        shift += 7
    if pos + 1 >= end or data[pos] != 0x10:
        return None
    byte = data[pos + 1]
    term = byte & 0x7F
    shift = 7
    pos += 2
    while byte & 0x80 and pos < end:
        byte = data[pos]
        pos += 1
        term |= (byte & 0x7F) << shift
        shift += 7
    if byte & 0x80 or pos + 2 >= end or data[pos] != 0x1A:
        return None  # (an entry without a payload has no kind: decode it)
    byte = data[pos + 1]  # the payload's length, then its first field's tag
    pos += 2
    while byte & 0x80 and pos < end:
        byte = data[pos]
        pos += 1
    if pos >= end:
        return None
    return index, term, data[pos] == _CONFIG_TAG


class FileRaftLog(MemoryRaftLog):
    """`LogStorage` on disk. `append` costs one write and one fdatasync per batch."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        segment_bytes: int = 64 * 1024 * 1024,
        fileio: FileIO | None = None,
        preallocate: int = PREALLOCATE_BYTES,
        recent_entries: int = RECENT_ENTRIES,
    ) -> None:
        super().__init__()
        self._io = fileio or RealDisk()
        self._dir = os.fspath(directory)
        self._segment_bytes = segment_bytes
        self._preallocate = preallocate
        self._recent_max = max(1, recent_entries)
        self._generation = 0
        # Segments on disk, ordered: first indexes, paths, and where their records end (for
        # the last one, the active one appended to, `_active_size`).
        self._seg_first: list[int] = []
        # The first index of a segment written in this release's format: the segments
        # before it are an older release's (read, never appended to: see append).
        self._current_from = _NO_INDEX
        self._seg_path: list[str] = []
        self._seg_end: list[int] = []
        self._active: AppendFile | None = None
        self._active_size = 0
        # Entries offset + 1 .. last index (entry k has index offset + 1 + k): the term and
        # the record's file offset in its segment; `_recent`, the last len(_recent) entries
        # as objects. (MemoryRaftLog's `_entries` stays empty.)
        self._terms = array("Q")
        self._positions = array("Q")
        self._recent: list[Entry] = []
        # Indexes of the config entries among the in-memory ones, ascending, known up to
        # `_configs_known` (found at recovery; appended entries are examined when asked).
        self._configs: list[int] = []
        self._configs_known = 0
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
        expected_next: int | None = None
        for n, (first, name) in enumerate(segments):
            path = self._path(name)
            if expected_next is not None and first != expected_next:
                raise CorruptionError(
                    path, 0, f"segment starts at index {first}, expected {expected_next}"
                )
            count, end, version = self._load_segment(path, first, last=n == len(segments) - 1)
            if version >= _SEGMENT_VERSION:
                self._current_from = min(self._current_from, first)
            expected_next = first + count
            if first + count - 1 <= self._offset:
                stale.append(path)  # fully compacted; its deletion was interrupted
                continue
            if first > self._offset + 1 and not self._seg_first:
                raise CorruptionError(
                    path, 0, f"log starts at index {first}, but only {self._offset} is compacted"
                )
            self._seg_first.append(first)
            self._seg_path.append(path)
            self._seg_end.append(end)
            self._active_size = end
        io.remove_durably(stale)
        self._configs_known = self.last_index()
        if self._seg_path:
            self._active = io.open_append(
                self._seg_path[-1], position=self._active_size, preallocate=self._preallocate
            )

    def _load_segment(self, path: str, first: int, *, last: bool) -> tuple[int, int, int]:
        """Check one segment's records; note the term and offset of those above the
        compaction point (nothing is decoded beyond each entry's first bytes). Returns the
        number of entries the segment holds, where its valid records end and its format
        version."""
        scan = records.ScanResult(path)
        index = first
        offset = self._offset
        terms = self._terms
        positions = self._positions
        for batch in records.scan_stream(self._io, path, records.MAGIC_SEGMENT, scan):
            data = batch.data
            starts = batch.starts
            skip = max(0, min(len(starts), offset + 1 - index))  # compacted: not kept
            for n in range(skip, len(starts)):
                start = starts[n]
                found = _header(data, start, batch.ends[n])
                if found is None:
                    found = self._decode_header(data, start, batch.ends[n], path, batch.base)
                if found[0] != index + n:
                    raise CorruptionError(
                        path, batch.base + start - records.FRAME_SIZE,
                        f"entry index {found[0]}, expected {index + n}",
                    )
                terms.append(found[1])
                if found[2]:
                    self._configs.append(found[0])
            if skip < len(starts):
                base = batch.base - records.FRAME_SIZE
                positions.extend([base + start for start in starts[skip:]])
            index += len(starts)
        scan.raise_if_corrupt()
        if scan.torn:
            if not last:
                raise CorruptionError(
                    path, scan.valid_end, f"{scan.torn_reason} in a segment that is not the last"
                )
            records.truncate_torn(self._io, scan, records.MAGIC_SEGMENT)
        # version 0: a torn header, written again in this release's format (truncate_torn)
        return (index - first, max(scan.valid_end, records.HEADER_SIZE),
                scan.version or _SEGMENT_VERSION)

    @staticmethod
    def _decode_header(
        data: bytes, start: int, end: int, path: str, base: int
    ) -> tuple[int, int, bool]:
        """`_header` of a record it could not read: decode the whole entry."""
        try:
            entry = Entry.FromString(data[start:end])
        except DecodeError as e:
            raise CorruptionError(
                path, base + start - records.FRAME_SIZE, f"undecodable entry: {e}"
            ) from None
        return int(entry.index), int(entry.term), entry.payload.HasField("config")

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
        """The term and vote must never be forgotten: `hardstate` is replaced atomically
        (format version 2), so it is never torn and any damage is corruption. A version 1
        file (append-only records, the last valid one wins, written by earlier releases)
        may end in a torn append, cut as before; the next save replaces it by version 2."""
        path = self._path("hardstate")
        if not self._io.exists(path):
            return
        scan = records.scan(self._io.read(path), path, records.MAGIC_HARD_STATE)
        if scan.version >= 2 and (scan.torn or scan.free_tail or len(scan.records) != 1):
            reason = scan.torn_reason or (
                "bytes after the record" if scan.free_tail else f"{len(scan.records)} records"
            )
            scan.corruption = scan.corruption or CorruptionError(
                path, scan.valid_end, f"{reason}; the hard state is replaced atomically, so "
                "this is damage, not a torn write (refusing to start rather than forget the "
                "term and vote)"
            )
        elif scan.torn and scan.version == 0:
            scan.corruption = CorruptionError(
                path, 0, f"{scan.torn_reason}; the hard state is replaced atomically, so "
                "this is damage, not a torn write"
            )
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

    # -- reads

    def last_index(self) -> int:
        return self._offset + len(self._terms)

    def term(self, index: int) -> int:
        n = position(index, self._offset, self.last_index())
        return self._terms[n] if n >= 0 else self._offset_term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        last = self.last_index()
        check_range(lo, hi, self._offset, last)
        if lo >= hi:
            return []
        recent = self._recent
        first_recent = last + 1 - len(recent)
        if lo >= first_recent:
            return limit_size(recent[lo - first_recent : hi - first_recent], max_bytes)
        out = self._decode(lo, min(hi, first_recent), max_bytes)
        if hi > first_recent and len(out) == first_recent - lo:
            tail = recent[: hi - first_recent]
            if max_bytes is None:
                out += tail
            else:
                size = sum(entry.ByteSize() for entry in out)
                for entry in tail:
                    size += entry.ByteSize()
                    if size > max_bytes:
                        break
                    out.append(entry)
        return out

    def config_indexes(self) -> list[int]:
        last = self.last_index()
        if self._configs_known < last:
            lo = max(self._configs_known, self._offset) + 1
            for entry in self.entries(lo, last + 1):
                if entry.payload.HasField("config"):
                    self._configs.append(int(entry.index))
            self._configs_known = last
        return list(self._configs)

    def _decode(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        """Entries [lo, hi) read back from their segments and decoded (at least one, then
        up to `max_bytes` of them): one read per segment, every record's CRC checked."""
        out: list[Entry] = []
        put = out.append
        from_bytes = Entry.FromString
        unpack = records.FRAME.unpack_from
        crc = crc32c
        positions = self._positions
        offset = self._offset
        seg_first = self._seg_first
        size = 0
        index = lo
        while index < hi:
            k = bisect.bisect_right(seg_first, index) - 1
            stop = min(hi, seg_first[k + 1]) if k + 1 < len(seg_first) else hi
            full = True
            if max_bytes is not None:
                # The sizes are known from the offsets: read only the entries that fit.
                for n in range(index, stop):
                    size += self._record_end(n, k) - positions[n - offset - 1]
                    size -= records.FRAME_SIZE
                    if size > max_bytes and (out or n > index):
                        stop, full = n, False
                        break
            if stop > index:
                start = positions[index - offset - 1]
                path = self._seg_path[k]
                data = self._io.read_range(path, start, self._record_end(stop - 1, k) - start)
                view = memoryview(data)
                pos = 0
                for n in range(index, stop):
                    length, expected = unpack(data, pos)
                    body = pos + records.FRAME_SIZE
                    if body + length > len(data) or crc(
                        view[body : body + length], crc(view[pos : pos + 4])
                    ) != expected:
                        raise CorruptionError(
                            path, start + pos, f"entry {n}: record changed on disk since written"
                        )
                    put(from_bytes(data[body : body + length]))
                    pos = body + length
                view.release()
            if not full:
                break
            index = stop
        return out

    def _record_end(self, index: int, k: int) -> int:
        """File offset where the record of entry `index` (in segment `k`) ends."""
        if index < self.last_index() and (k + 1 == len(self._seg_first)
                                           or index + 1 < self._seg_first[k + 1]):
            return self._positions[index - self._offset]
        return self._active_size if k + 1 == len(self._seg_first) else self._seg_end[k]

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
        # Never into an older release's segment: it would read a batch entry of ours
        # (WriteCommand.batch) as a rejected command, where its version check refuses ours.
        new_segment = (self._active is None or self._active_size >= self._segment_bytes
                       or self._seg_first[-1] < self._current_from)
        pos = records.HEADER_SIZE if new_segment else self._active_size
        positions: list[int] = []
        mark = positions.append
        pack_len = records.LENGTH.pack
        crc = crc32c
        out: list[bytes] = []
        put = out.append
        for entry in entries:
            payload = entry.SerializeToString()
            length = pack_len(len(payload))
            put(length)
            put(pack_len(crc(payload, crc(length))))
            put(payload)
            mark(pos)
            pos += records.FRAME_SIZE + len(payload)
        data = b"".join(out)
        try:
            if new_segment:
                self._open_segment(first, records.encode_header(records.MAGIC_SEGMENT) + data)
            else:
                assert self._active is not None
                self._active.write(data)
                self._active.sync()
        except BaseException:
            self._fail()
            raise
        self._active_size = pos
        self._positions.extend(positions)
        self._terms.extend([entry.term for entry in entries])
        recent = self._recent
        recent += entries
        if len(recent) > 2 * self._recent_max:
            del recent[: len(recent) - self._recent_max]

    def _open_segment(self, first: int, data: bytes) -> None:
        if self._active is not None:
            self._active.close()
            self._active = None
            # Give back the unused preallocated tail of the finished segment.
            self._io.truncate(self._seg_path[-1], self._active_size)
        path = self._path(segment_name(self._generation, first))
        self._current_from = min(self._current_from, first)
        f = self._io.open_append(path, preallocate=self._preallocate)
        f.write(data)
        f.sync()
        self._io.fsync_dir(self._dir)
        if self._seg_end:
            self._seg_end[-1] = self._active_size
        self._active = f
        self._seg_first.append(first)
        self._seg_path.append(path)
        self._seg_end.append(len(data))

    def truncate_suffix(self, index: int) -> None:
        self._check_open()
        if index <= self._offset:
            raise StorageError(f"cannot truncate at {index}: compacted up to {self._offset}")
        last = self.last_index()
        if index > last:
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
                del self._seg_end[k + 1 :]
            self._io.truncate(self._seg_path[k], position)
            self._io.fsync(self._seg_path[k])
            self._active = self._io.open_append(
                self._seg_path[k], position=position, preallocate=self._preallocate
            )
        except BaseException:
            self._fail()
            raise
        self._active_size = position
        self._seg_end[k] = position
        keep = index - self._offset - 1
        del self._positions[keep:]
        del self._terms[keep:]
        first_recent = last + 1 - len(self._recent)
        del self._recent[max(0, index - first_recent) :]
        del self._configs[bisect.bisect_left(self._configs, index) :]
        self._configs_known = min(self._configs_known, index - 1)

    def compact_prefix(self, index: int, snapshot: SnapshotMetadata | None = None) -> None:
        self._check_open()
        if not compaction_needed(index, snapshot, self._offset, self.last_index()):
            return
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
            del self._seg_end[:drop]
        first_recent = self.last_index() + 1 - len(self._recent)
        del self._recent[: max(0, index + 1 - first_recent)]
        gone = index - self._offset
        del self._positions[:gone]
        del self._terms[:gone]
        del self._configs[: bisect.bisect_right(self._configs, index)]
        self._configs_known = max(self._configs_known, index)
        self._offset = index
        self._offset_term = term
        if snapshot is not None:
            self._snapshot = snapshot

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
        self._seg_end = []
        self._active_size = 0
        self._terms = array("Q")
        self._positions = array("Q")
        self._recent = []
        self._configs = []
        self._configs_known = last.index
        super().install_snapshot(metadata)

    def set_hard_state(self, hs: HardState) -> None:
        """Replace `hardstate` atomically (write-temp, fdatasync, rename, fsync the dir):
        the file is the old state or the new one, never torn, so recovery can treat any
        damage as corruption. It changes only with the term or the vote (and at stop)."""
        self._check_open()
        if hs == self._hard_state:
            return
        try:
            self._io.atomic_write(
                self._path("hardstate"),
                [records.encode_header(records.MAGIC_HARD_STATE),
                 records.frame(hs.SerializeToString())],
            )
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
        if self._active is not None:
            self._active.close()
        self._active = None
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
