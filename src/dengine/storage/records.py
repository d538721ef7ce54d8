"""The one record codec for every on-disk file: a file header, then CRC32C-framed records.

File layout::

    header  = magic (4 bytes) | u16 format version | u16 reserved (0)      little-endian
    record  = u32 length | u32 crc32c | payload (length bytes)             little-endian

The CRC32C covers the 4 length bytes *and* the payload, so a corrupted length is caught
and a zero-filled region (length 0, crc 0) never reads as a valid empty record.

Reading stops at the first bad record. If nothing valid follows it, the bad region is a
torn tail (a write cut by a crash): the caller truncates it and logs a warning. If a valid
record follows it, data we once wrote is damaged: `CorruptionError(path, offset, reason)`.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from crc32c import crc32c

from dengine.errors import CorruptionError
from dengine.storage.fileio import FileIO

log = logging.getLogger("dengine.storage")

HEADER = struct.Struct("<4sHH")
HEADER_SIZE = HEADER.size
FRAME = struct.Struct("<II")
FRAME_SIZE = FRAME.size
LENGTH = struct.Struct("<I")
_NONZERO = re.compile(rb"[^\x00]")

# Magic numbers of every file kind (docs/formats.md).
MAGIC_SEGMENT = b"DLOG"  # Raft log segment: records are encoded `Entry` messages
MAGIC_LOG_META = b"DLMT"  # Raft log metadata: compaction point, snapshot metadata
MAGIC_HARD_STATE = b"DLHS"  # Raft hard state: one `HardState` record, replaced atomically
MAGIC_WAL = b"DSMW"  # state machine write-ahead log
MAGIC_CHECKPOINT = b"DSMC"  # state machine checkpoint (the full map)
MAGIC_SNAPSHOT = b"DSNP"  # snapshot file (self-describing, SHA-256 in SnapshotMetadata)

FORMAT_VERSION = 1
# The version each kind is written with, when not FORMAT_VERSION, and the older versions
# this release still reads (docs/formats.md).
# WAL 4, checkpoint 4 and snapshot 3 hold leases (lease ops 11-12, the lease table); WAL
# 5, checkpoint 5 and snapshot 4 the auth state (op 20, the auth image); WAL 6 etcd requests
# stamped with who proposed them (key = an encoded AuthInfo, checked as they apply); WAL 7
# and log segment 2 batch entries (WriteCommand.batch: one entry, many commands; in the
# WAL one op per command, the entry's index repeated). The versions before them are read
# as they are (they cannot hold a lease, an auth change, a batch).
WRITE_VERSIONS = {MAGIC_WAL: 7, MAGIC_CHECKPOINT: 5, MAGIC_SNAPSHOT: 4, MAGIC_HARD_STATE: 2,
                  MAGIC_SEGMENT: 2}
READ_VERSIONS = {
    MAGIC_WAL: (3, 4, 5, 6, 7), MAGIC_CHECKPOINT: (3, 4, 5), MAGIC_SNAPSHOT: (2, 3, 4),
    MAGIC_HARD_STATE: (1, 2), MAGIC_SEGMENT: (1, 2),
}
# Files of the state machine before etcd's data model (keys without revisions): refused.
_BEFORE_MVCC = {MAGIC_WAL: 3, MAGIC_CHECKPOINT: 3, MAGIC_SNAPSHOT: 2}


def write_version(magic: bytes) -> int:
    return WRITE_VERSIONS.get(magic, FORMAT_VERSION)


def encode_header(magic: bytes, version: int | None = None) -> bytes:
    return HEADER.pack(magic, write_version(magic) if version is None else version, 0)


def check_header(data: bytes, magic: bytes, path: str) -> int:
    """The file's format version; CorruptionError unless it is a header this release reads."""
    if len(data) < HEADER_SIZE:
        raise CorruptionError(path, 0, f"file header truncated ({len(data)} bytes)")
    found, version, reserved = HEADER.unpack_from(data, 0)
    if found != magic:
        raise CorruptionError(path, 0, f"bad magic {found!r}, expected {magic!r}")
    if reserved:  # always written 0: a damaged header, whatever its version says
        raise CorruptionError(path, 0, f"reserved header bytes are {reserved:#06x}, not 0")
    readable = READ_VERSIONS.get(magic, (FORMAT_VERSION,))
    if version not in readable:
        why = ""
        if version < _BEFORE_MVCC.get(magic, 0):
            why = (": written before revisions (etcd's data model), which this release "
                   "cannot make up; see docs/formats.md, 'Data directory'")
        raise CorruptionError(
            path, 0, f"unsupported format version {version} (this release reads "
            f"{', '.join(map(str, readable))}){why}"
        )
    return int(version)


def frame(payload: bytes) -> bytes:
    """One record: length, CRC32C (over length + payload), payload."""
    length = LENGTH.pack(len(payload))
    return length + LENGTH.pack(crc32c(payload, crc32c(length))) + payload


def frame_all(payloads: Iterable[bytes]) -> bytes:
    """Many records as one buffer, so that a batch costs one `write` call."""
    pack_len = LENGTH.pack
    out: list[bytes] = []
    append = out.append
    for payload in payloads:
        length = pack_len(len(payload))
        append(length)
        append(pack_len(crc32c(payload, crc32c(length))))
        append(payload)
    return b"".join(out)


@dataclass
class ScanResult:
    """What a scan of one file found. `valid_end` is where the last good record ends."""

    path: str
    records: list[bytes] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    valid_end: int = 0
    size: int = 0
    torn_reason: str | None = None  # the bytes from valid_end to size are a torn tail
    free_tail: bool = False  # the bytes from valid_end to size are preallocated zeros
    corruption: CorruptionError | None = None
    version: int = 0  # the header's format version (0 when the header is unreadable)

    @property
    def torn(self) -> bool:
        return self.torn_reason is not None

    def raise_if_corrupt(self) -> None:
        if self.corruption is not None:
            raise self.corruption


def _bad_record(data: bytes, offset: int) -> str | None:
    """Why the record at `offset` is not valid, or None when it is."""
    size = len(data)
    if offset + FRAME_SIZE > size:
        return f"incomplete record header ({size - offset} bytes)"
    length, crc = FRAME.unpack_from(data, offset)
    end = offset + FRAME_SIZE + length
    if end > size:
        return f"record length {length} runs past the end of the file"
    body = memoryview(data)[offset + FRAME_SIZE : end]
    if crc32c(body, crc32c(data[offset : offset + 4])) != crc:
        return "record checksum mismatch"
    return None


def _valid_record_after(data: bytes, offset: int) -> int | None:
    """The offset of the first valid record starting after `offset`, if any.

    Only runs on the error path. A record is only valid when its CRC over length and
    payload matches, so a false match in garbage has probability ~2**-32 per offset.
    """
    size = len(data)
    unpack = FRAME.unpack_from
    view = memoryview(data)
    pos = offset
    while pos < size - FRAME_SIZE:
        pos += 1
        if not data[pos]:
            # A record never starts with 8 zero bytes (the CRC covers the length), so
            # jump over runs of zeros (preallocated space) in C rather than byte by byte.
            nonzero = _NONZERO.search(data, pos)
            if nonzero is None:
                return None
            if nonzero.start() - pos >= FRAME_SIZE:
                pos = nonzero.start() - FRAME_SIZE + 1
        length, crc = unpack(data, pos)
        end = pos + FRAME_SIZE + length
        if end <= size and crc32c(view[pos + FRAME_SIZE : end], crc32c(view[pos : pos + 4])) == crc:
            return pos
    return None


def scan(data: bytes, path: str, magic: bytes) -> ScanResult:
    """Check the header, then read records, classifying the first bad one as torn or corrupt.

    A header that is missing or a strict prefix of the expected one (possibly followed by
    zeros), with no valid record anywhere after it, is a torn tail at offset 0 (a file
    whose creation was cut short). Any other header problem is corruption.
    """
    result = ScanResult(path=path, size=len(data))
    head = data[:HEADER_SIZE]
    headers = [encode_header(magic, v) for v in READ_VERSIONS.get(magic, (FORMAT_VERSION,))]
    if (
        head not in headers
        and any(h.startswith(head.rstrip(b"\0")) for h in headers)
        and _valid_record_after(data, -1) is None
    ):
        result.torn_reason = f"file header incomplete ({len(data)} bytes)"
        return result
    try:
        result.version = check_header(data, magic, path)
    except CorruptionError as e:
        result.corruption = e
        return result
    records = result.records
    offsets = result.offsets
    size = len(data)
    unpack = FRAME.unpack_from
    view = memoryview(data)
    pos = HEADER_SIZE
    while pos + FRAME_SIZE <= size:
        length, crc = unpack(data, pos)
        end = pos + FRAME_SIZE + length
        if end > size:
            break
        body = view[pos + FRAME_SIZE : end]
        if crc32c(body, crc32c(view[pos : pos + 4])) != crc:
            break
        records.append(bytes(body))
        offsets.append(pos)
        pos = end
    result.valid_end = pos
    if pos < size and _NONZERO.search(data, pos) is None:
        result.free_tail = True  # preallocated space, never written
    elif pos < size:
        reason = _bad_record(data, pos) or "bad record"
        later = _valid_record_after(data, pos)
        if later is None:
            result.torn_reason = reason
        else:
            result.corruption = CorruptionError(
                path, pos, f"{reason}; a valid record follows at offset {later}"
            )
    return result


# Bigger chunks read no faster, and glibc keeps freed multi-MB buffers in the heap (4 MiB
# chunks left ~10 MB more resident after a restart).
STREAM_CHUNK_BYTES = 1 << 20


@dataclass
class Batch:
    """Consecutive valid records of one file, read together: payload `n` is
    `data[starts[n] : ends[n]]`, and its record (frame) begins at file offset
    `base + starts[n] - FRAME_SIZE`."""

    data: bytes
    base: int
    starts: list[int]
    ends: list[int]


def scan_stream(
    io: FileIO, path: str, magic: bytes, result: ScanResult,
    chunk_bytes: int = STREAM_CHUNK_BYTES,
) -> Iterator[Batch]:
    """`scan` that reads the file in chunks and yields its valid records batch by batch.

    Once the generator is exhausted, `result` holds what `scan` would return except
    `records` and `offsets` (left empty): version, valid_end, size, and the first bad
    record classified as a free tail, a torn tail or corruption. The batches before a bad
    record are yielded first: a caller must check `result` at the end before trusting
    what it built from them. Memory: one chunk plus one record, never the whole file.
    """
    result.path = path
    chunks = io.read_chunks(path, chunk_bytes)
    pieces: list[bytes] = []
    have = 0
    for chunk in chunks:
        pieces.append(chunk)
        have += len(chunk)
        if have >= HEADER_SIZE:
            break
    data = b"".join(pieces)
    headers = [encode_header(magic, v) for v in READ_VERSIONS.get(magic, (FORMAT_VERSION,))]
    if data[:HEADER_SIZE] not in headers:
        # Not a header this release writes (torn, damaged, or odd reserved bytes): leave
        # it to `scan` of the whole file, as rare as it is.
        data += b"".join(chunks)
        whole = scan(data, path, magic)
        records, offsets = whole.records, whole.offsets
        whole.records, whole.offsets = [], []
        result.__dict__.update(vars(whole))
        if records:
            firsts = [offset + FRAME_SIZE for offset in offsets]
            yield Batch(data, 0, firsts, [s + len(r) for s, r in zip(firsts, records, strict=True)])
        return
    result.version = check_header(data, magic, path)
    unpack = FRAME.unpack_from
    base = 0  # file offset of data[0]
    pos = HEADER_SIZE
    bad = False
    while True:
        size = len(data)
        view = memoryview(data)
        starts: list[int] = []
        ends: list[int] = []
        need = pos + FRAME_SIZE
        while pos + FRAME_SIZE <= size:
            length, crc = unpack(data, pos)
            end = pos + FRAME_SIZE + length
            if end > size:
                need = end
                break
            body = view[pos + FRAME_SIZE : end]
            if crc32c(body, crc32c(view[pos : pos + 4])) != crc:
                bad = True
                break
            starts.append(pos + FRAME_SIZE)
            ends.append(end)
            pos = end
        else:
            need = pos + FRAME_SIZE
        view.release()
        if starts:
            yield Batch(data, base, starts, ends)
        if bad:
            break
        # Read on until the pending record (its length is known once its frame is) is whole.
        pieces = [data[pos:]]
        have = size - pos
        for chunk in chunks:
            pieces.append(chunk)
            have += len(chunk)
            if have >= need - pos and have >= chunk_bytes:
                break
        if have == size - pos:
            break  # end of file
        base += pos
        data = b"".join(pieces)
        pos = 0
    rest = data[pos:] + b"".join(chunks)
    result.valid_end = base + pos
    result.size = result.valid_end + len(rest)
    if not rest:
        return
    if _NONZERO.search(rest) is None:
        result.free_tail = True
        return
    reason = _bad_record(rest, 0) or "bad record"
    later = _valid_record_after(rest, 0)
    if later is None:
        result.torn_reason = reason
    else:
        result.corruption = CorruptionError(
            path, result.valid_end,
            f"{reason}; a valid record follows at offset {result.valid_end + later}",
        )


def truncate_torn(io: FileIO, scan: ScanResult, magic: bytes) -> None:
    """Cut a torn tail off (logged), restoring the header if the cut reached into it.

    Not synced: a lost truncation only brings the same torn tail back, and the next
    synced append to this file makes the truncation durable along with it.
    """
    log.warning(
        "%s: torn tail at offset %d (%s): truncating %d bytes",
        scan.path, scan.valid_end, scan.torn_reason, scan.size - scan.valid_end,
    )
    if scan.valid_end < HEADER_SIZE:
        io.truncate(scan.path, 0)
        f = io.open_append(scan.path)
        try:
            f.write(encode_header(magic))
        finally:
            f.close()
        scan.valid_end = HEADER_SIZE
    else:
        io.truncate(scan.path, scan.valid_end)
