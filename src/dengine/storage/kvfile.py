"""Key-value files: the snapshot file and the state machine checkpoint share this codec.

A key-value file is a header, one metadata record, then the keys, in one of two layouts
(docs/formats.md):

* version 1 (snapshots; checkpoints written by older releases): one record per key,
  `u32 key length | key | value`;
* version 2 (checkpoints): blocks of up to ~64 KiB of keys, one record each,
  `u32 n | n x (u32 key length, u32 value length) | key 1 | value 1 | ... | key n | value n`.
  A block is one CRC and a handful of C-level calls to decode (`decode_blocks`), instead of
  a CRC and a Python loop turn per key: a million keys load several times faster.

A snapshot file is self-describing: its metadata record holds `last_included` and the
membership, and its SHA-256 is the checksum stored in `SnapshotMetadata.checksum`,
verified before anything is installed.
"""

from __future__ import annotations

import hashlib
import heapq
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import accumulate, islice

from crc32c import crc32c

from dengine.errors import CorruptionError, StorageError
from dengine.proto import LogId, Membership, SnapshotMetadata
from dengine.storage import records
from dengine.storage.fileio import FileIO

SNAPSHOT_FILE = "snapshot.bin"
_KEY_LEN = struct.Struct("<I")
_SNAPSHOT_META = struct.Struct("<QQQ")  # last included index, term, key count
_CHUNK_BYTES = 1 << 20
_BLOCK_BYTES = 64 * 1024  # keys and values per version 2 block record
_SORT_RUN = 8192


def sorted_keys(state: Mapping[bytes, bytes]) -> Iterator[bytes]:
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


def encode_blocks(items: Iterable[tuple[bytes, bytes]]) -> Iterator[bytes]:
    """Version 2 key-value records (blocks of ~64 KiB), yielded in chunks of about 1 MiB."""
    frame = records.frame
    pack_count = _KEY_LEN.pack
    out: list[bytes] = []
    put = out.append
    out_size = 0
    lengths: list[int] = []
    parts: list[bytes] = []
    block = 0
    for key, value in items:
        lengths += (len(key), len(value))
        parts += (key, value)
        block += len(key) + len(value) + 8
        if block >= _BLOCK_BYTES:
            n = len(lengths) // 2
            put(frame(b"".join((pack_count(n), struct.pack(f"<{2 * n}I", *lengths), *parts))))
            out_size += block
            lengths.clear()
            parts.clear()
            block = 0
            if out_size >= _CHUNK_BYTES:
                yield b"".join(out)
                out.clear()
                out_size = 0
    if parts:
        n = len(lengths) // 2
        put(frame(b"".join((pack_count(n), struct.pack(f"<{2 * n}I", *lengths), *parts))))
    if out:
        yield b"".join(out)


def decode_blocks(
    batch: records.Batch, first: int, state: dict[bytes, bytes], path: str
) -> int:
    """Add the keys of the version 2 block records of `batch` from record `first` on to
    `state`; return how many keys they held."""
    data = batch.data
    unpack_count = _KEY_LEN.unpack_from
    keys = 0
    for n in range(first, len(batch.starts)):
        start = batch.starts[n]
        end = batch.ends[n]
        try:
            (count,) = unpack_count(data, start)
            top = start + 4 + 8 * count
            if top > end:
                raise struct.error(f"{count} keys do not fit in a {end - start}-byte block")
            bounds = list(accumulate(struct.unpack_from(f"<{2 * count}I", data, start + 4),
                                     initial=top))
        except struct.error as e:
            raise CorruptionError(
                path, batch.base + start - records.FRAME_SIZE, f"bad key-value block: {e}"
            ) from None
        if bounds[-1] != end:
            raise CorruptionError(
                path, batch.base + start - records.FRAME_SIZE,
                f"key and value lengths add up to {bounds[-1] - top} bytes, the block "
                f"holds {end - top}",
            )
        # Consecutive bounds delimit key 1, value 1, key 2, ...: slice them all in C.
        pieces = map(data.__getitem__, map(slice, bounds, islice(bounds, 1, None)))
        state.update(zip(pieces, pieces, strict=True))
        keys += count
    return keys


def decode_records(
    batch: records.Batch, first: int, state: dict[bytes, bytes], path: str
) -> int:
    """Version 1: add the one-key records of `batch` from record `first` on to `state`."""
    data = batch.data
    unpack = _KEY_LEN.unpack_from
    starts = batch.starts
    ends = batch.ends
    for n in range(first, len(starts)):
        start = starts[n]
        end = ends[n]
        if end - start < 4:
            raise CorruptionError(
                path, batch.base + start - records.FRAME_SIZE, "key-value record too short"
            )
        split = start + 4 + unpack(data, start)[0]
        if split > end:
            raise CorruptionError(
                path, batch.base + start - records.FRAME_SIZE, "key length runs past the record"
            )
        state[data[start + 4 : split]] = data[split:end]
    return len(starts) - first


@dataclass
class KeyValueFile:
    """A key-value file read whole: its metadata record, its keys, the scan result."""

    meta: bytes
    meta_offset: int
    state: dict[bytes, bytes]
    keys: int  # key records (version 1) or keys in blocks (version 2) read
    scan: records.ScanResult


def load_strict(io: FileIO, path: str, magic: bytes) -> KeyValueFile:
    """Read a key-value file that was written whole (atomically), in chunks: any bad byte
    is corruption, every record's CRC is checked. Version 1 and 2 layouts."""
    scan = records.ScanResult(path)
    state: dict[bytes, bytes] = {}
    meta: bytes | None = None
    meta_offset = 0
    keys = 0
    for batch in records.scan_stream(io, path, magic, scan):
        first = 0
        if meta is None:
            meta = batch.data[batch.starts[0] : batch.ends[0]]
            meta_offset = batch.base + batch.starts[0] - records.FRAME_SIZE
            first = 1
        if scan.version >= 2:
            keys += decode_blocks(batch, first, state, path)
        else:
            keys += decode_records(batch, first, state, path)
    scan.raise_if_corrupt()
    if scan.torn:
        raise CorruptionError(path, scan.valid_end, f"incomplete file: {scan.torn_reason}")
    if meta is None:
        raise CorruptionError(path, records.HEADER_SIZE, "metadata record missing")
    return KeyValueFile(meta, meta_offset, state, keys, scan)


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
    state: Mapping[bytes, bytes],
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
