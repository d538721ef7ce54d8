"""Key-value files: the snapshot file and the state machine checkpoint share this codec.

A key-value file is a header, one metadata record, then one record per key
(`u32 key length | key | value`). A snapshot file is self-describing: its metadata
record holds `last_included` and the membership, and its SHA-256 is the checksum stored
in `SnapshotMetadata.checksum`, verified before anything is installed.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from crc32c import crc32c

from dengine.errors import CorruptionError, StorageError
from dengine.proto import LogId, Membership, SnapshotMetadata
from dengine.storage import records
from dengine.storage.fileio import FileIO

SNAPSHOT_FILE = "snapshot.bin"
_KEY_LEN = struct.Struct("<I")
_SNAPSHOT_META = struct.Struct("<QQQ")  # last included index, term, key count
_CHUNK_BYTES = 1 << 20
_SORT_RUN = 8192


def sorted_keys(state: dict[bytes, bytes]) -> Iterator[bytes]:
    """The keys of `state` in order, sorted in short runs then merged.

    One `sorted()` of a million keys holds the GIL for seconds (it is a single C call),
    which would freeze the event loop of a node snapshotting in a worker thread; runs of
    a few thousand keys and a lazy merge give the same order in GIL-sized slices.
    """
    keys = list(state)
    runs = [sorted(keys[i : i + _SORT_RUN]) for i in range(0, len(keys), _SORT_RUN)]
    if len(runs) == 1:
        return iter(runs[0])
    return heapq.merge(*runs)


def encode_items(items: Iterable[tuple[bytes, bytes]]) -> Iterator[bytes]:
    """Framed key-value records, yielded in chunks of about 1 MiB."""
    pack = records.LENGTH.pack
    out: list[bytes] = []
    put = out.append
    size = 0
    for key, value in items:
        payload = pack(len(key)) + key + value
        length = pack(len(payload))
        put(length)
        put(pack(crc32c(payload, crc32c(length))))
        put(payload)
        size += len(payload) + records.FRAME_SIZE
        if size >= _CHUNK_BYTES:
            yield b"".join(out)
            out.clear()
            size = 0
    if out:
        yield b"".join(out)


def decode_items(scan: records.ScanResult, first: int) -> dict[bytes, bytes]:
    """The key-value records of `scan` from record number `first` on."""
    state: dict[bytes, bytes] = {}
    unpack = _KEY_LEN.unpack_from
    for n in range(first, len(scan.records)):
        payload = scan.records[n]
        if len(payload) < 4:
            raise CorruptionError(scan.path, scan.offsets[n], "key-value record too short")
        (klen,) = unpack(payload, 0)
        if 4 + klen > len(payload):
            raise CorruptionError(scan.path, scan.offsets[n], "key length runs past the record")
        state[payload[4 : 4 + klen]] = payload[4 + klen :]
    return state


def read_strict(io: FileIO, path: str, magic: bytes) -> records.ScanResult:
    """Scan a file that was written whole (atomically): any bad byte is corruption."""
    scan = records.scan(io.read(path), path, magic)
    scan.raise_if_corrupt()
    if scan.torn:
        raise CorruptionError(path, scan.valid_end, f"incomplete file: {scan.torn_reason}")
    if not scan.records:
        raise CorruptionError(path, records.HEADER_SIZE, "metadata record missing")
    return scan


def pack_blob(blob: bytes) -> bytes:
    return _KEY_LEN.pack(len(blob)) + blob


def unpack_blob(data: bytes, offset: int) -> tuple[bytes, int]:
    (n,) = _KEY_LEN.unpack_from(data, offset)
    end = offset + 4 + n
    if end > len(data):
        raise struct.error("blob runs past the record")
    return data[offset + 4 : end], end


@dataclass
class SnapshotData:
    state: dict[bytes, bytes]
    last_included: LogId
    membership: Membership | None


def write_snapshot(
    io: FileIO,
    directory: str,
    state: dict[bytes, bytes],
    last_included: LogId,
    membership: Membership | None,
) -> bytes:
    """Write `directory/snapshot.bin` atomically (sorted keys) and return its SHA-256."""
    io.makedirs(directory)
    meta = _SNAPSHOT_META.pack(last_included.index, last_included.term, len(state))
    meta += pack_blob(membership.SerializeToString() if membership is not None else b"")
    meta += bytes([membership is not None])
    digest = hashlib.sha256()

    def chunks() -> Iterator[bytes]:
        for chunk in (
            records.encode_header(records.MAGIC_SNAPSHOT) + records.frame(meta),
            *encode_items((k, state[k]) for k in sorted_keys(state)),
        ):
            digest.update(chunk)
            yield chunk

    io.atomic_write(os.path.join(directory, SNAPSHOT_FILE), chunks())
    return digest.digest()


def read_snapshot(io: FileIO, directory: str, metadata: SnapshotMetadata) -> SnapshotData:
    """Verify the SHA-256 against `metadata.checksum`, then decode. Raises before any change."""
    path = os.path.join(directory, SNAPSHOT_FILE)
    if not io.exists(path):
        raise StorageError(f"{path}: snapshot file missing")
    data = io.read(path)
    digest = hashlib.sha256(data).digest()
    if digest != metadata.checksum:
        expected = metadata.checksum.hex() or "(none)"
        raise CorruptionError(
            path, 0, f"SHA-256 {digest.hex()} does not match the expected {expected}"
        )
    scan = records.scan(data, path, records.MAGIC_SNAPSHOT)
    scan.raise_if_corrupt()
    if scan.torn or not scan.records:
        raise CorruptionError(path, scan.valid_end, "incomplete snapshot file")
    try:
        index, term, count = _SNAPSHOT_META.unpack_from(scan.records[0], 0)
        blob, end = unpack_blob(scan.records[0], _SNAPSHOT_META.size)
        membership = Membership.FromString(blob) if scan.records[0][end:] == b"\x01" else None
    except Exception as e:
        raise CorruptionError(
            path, scan.offsets[0], f"undecodable snapshot metadata: {e}"
        ) from None
    if (index, term) != (metadata.last_included.index, metadata.last_included.term):
        raise StorageError(
            f"{path}: snapshot is at ({term}, {index}), metadata says "
            f"({metadata.last_included.term}, {metadata.last_included.index})"
        )
    if count != len(scan.records) - 1:
        raise CorruptionError(
            path, scan.valid_end, f"{len(scan.records) - 1} keys, expected {count}"
        )
    return SnapshotData(decode_items(scan, 1), LogId(index=index, term=term), membership)
