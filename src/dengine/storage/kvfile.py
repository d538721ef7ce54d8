"""Key-value files: the snapshot file and the state machine checkpoint share this codec.

Both hold an image of the MVCC store (docs/etcd-model.md): its revision, compaction
point and lease table (in the file's metadata record, with the key and change counts:
`u32 n | n x (i64 lease id, i64 granted TTL)` after the counts), then the live keys
as `(key, packed)` in blocks of up to ~64 KiB, one record each, then the changelog in
blocks likewise (docs/formats.md):

    key block    = u32 n | n x (u32 key length, u32 packed length) | key 1 | packed 1 | ...
    change block = u32 n | n x (u64 revision, u32 key length, u32 new length,
                   u32 prev length) | key 1 | new 1 | prev 1 | ...   (length 2^32-1: None)

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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate, islice

from dengine.errors import CorruptionError, StorageError
from dengine.kv.changelog import Changelog, ChangeTuple
from dengine.proto import LogId, Membership, SnapshotMetadata
from dengine.storage import records
from dengine.storage.fileio import FileIO

SNAPSHOT_FILE = "snapshot.bin"
_KEY_LEN = struct.Struct("<I")
_COUNTS = struct.Struct("<QqQ")  # revision, compact revision (-1: never), change count
_LEASE = struct.Struct("<qq")  # lease id, granted TTL
_SNAPSHOT_META = struct.Struct("<QQQ")  # last included index, term, key count
_CHANGE_HEAD = "QIII"  # revision, key length, new length, prev length
_CHANGE_HEAD_SIZE = struct.calcsize("<" + _CHANGE_HEAD)
_ABSENT = 0xFFFFFFFF  # the length of a None `new` / `prev`
_BLOCK_BYTES = 64 * 1024  # keys and values per block record
_CHUNK_BYTES = 1 << 20
_SORT_RUN = 8192

# One changelog entry: (revision, key, new packed version or None, prev or None); the
# changes of an image: such tuples, or a copy of the store's changelog.
Changes = Sequence[ChangeTuple] | Changelog
LeaseTuple = tuple[int, int]  # lease id, granted TTL


@dataclass
class StoreImage:
    """What a checkpoint or snapshot holds of the MVCC store (`MvccStore.restore` takes it
    back): its revision, compaction point, live `key -> packed`, and the changelog."""

    revision: int = 1
    compact_revision: int = -1
    items: Mapping[bytes, bytes] = field(default_factory=dict)
    changes: Changes = ()
    leases: Sequence[LeaseTuple] = field(default_factory=list)
    auth: bytes = b""  # the auth state (kv/auth.py `AuthStore.image`; b"": none)

    def encode_counts(self) -> bytes:
        return encode_counts(self.revision, self.compact_revision, len(self.changes),
                             self.leases, self.auth)


Counts = tuple[int, int, int, list[LeaseTuple], bytes]


def encode_counts(revision: int, compact_revision: int, changes: int,
                  leases: Sequence[LeaseTuple] = (), auth: bytes = b"") -> bytes:
    """The revision, compaction point, change count, lease table and auth state, as the
    metadata records end."""
    return (_COUNTS.pack(revision, compact_revision, changes)
            + _KEY_LEN.pack(len(leases))
            + struct.pack(f"<{2 * len(leases)}q", *(x for lease in leases for x in lease))
            + pack_blob(auth))


def decode_counts(data: bytes, offset: int) -> Counts:
    """(revision, compact revision, change count, leases, auth state) at `offset`;
    struct.error if short. The formats before leases (checkpoint 3, snapshot 2) end after
    the counts, the formats before auth (checkpoint 4, snapshot 3) after the lease table."""
    revision, compact, changes = _COUNTS.unpack_from(data, offset)
    end = offset + _COUNTS.size
    leases: list[LeaseTuple] = []
    if len(data) == end and compact == 0:
        compact = -1  # those formats wrote 0 for "never compacted"
    auth = b""
    if len(data) > end:
        (n,) = _KEY_LEN.unpack_from(data, end)
        end += 4
        flat = struct.unpack_from(f"<{2 * n}q", data, end)
        end += _LEASE.size * n
        leases = list(zip(flat[::2], flat[1::2], strict=True))
    if len(data) > end:
        auth, end = unpack_blob(data, end)
    if len(data) != end:
        raise struct.error(f"{len(data) - end} unexpected bytes at the end")
    return revision, compact, changes, leases, auth


def sorted_keys(state: Iterable[bytes]) -> Iterator[bytes]:
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


def encode_blocks(items: Iterable[tuple[bytes, bytes]]) -> Iterator[bytes]:
    """Key blocks (~64 KiB each, framed), yielded in chunks of about 1 MiB."""
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


def encode_change_blocks(changes: Iterable[ChangeTuple]) -> Iterator[bytes]:
    """Change blocks (~64 KiB each, framed), yielded in chunks of about 1 MiB."""
    frame = records.frame
    pack_count = _KEY_LEN.pack
    out: list[bytes] = []
    heads: list[int] = []
    parts: list[bytes] = []
    block = out_size = 0

    def flush() -> None:
        n = len(heads) // 4
        out.append(frame(b"".join(
            (pack_count(n), struct.pack("<" + _CHANGE_HEAD * n, *heads), *parts)
        )))
        heads.clear()
        parts.clear()

    for revision, key, new, prev in changes:
        heads += (revision, len(key), _ABSENT if new is None else len(new),
                  _ABSENT if prev is None else len(prev))
        parts.append(key)
        block += _CHANGE_HEAD_SIZE + len(key)
        if new is not None:
            parts.append(new)
            block += len(new)
        if prev is not None:
            parts.append(prev)
            block += len(prev)
        if block >= _BLOCK_BYTES:
            flush()
            out_size += block
            block = 0
            if out_size >= _CHUNK_BYTES:
                yield b"".join(out)
                out.clear()
                out_size = 0
    if heads:
        flush()
    if out:
        yield b"".join(out)


def image_chunks(image: StoreImage, items: Iterable[tuple[bytes, bytes]]) -> Iterator[bytes]:
    """The records after a file's metadata record: `items` (the image's, in the order to
    write) in key blocks, then the image's changes in change blocks."""
    yield from encode_blocks(items)
    yield from encode_change_blocks(image.changes)


def _bad_block(batch: records.Batch, start: int, reason: str, path: str) -> CorruptionError:
    return CorruptionError(path, batch.base + start - records.FRAME_SIZE, reason)


def decode_blocks(
    batch: records.Batch, first: int, last: int, state: dict[bytes, bytes], path: str
) -> int:
    """Add the keys of the key block records `first`..`last - 1` of `batch` to `state`;
    return how many keys they held."""
    data = batch.data
    unpack_count = _KEY_LEN.unpack_from
    keys = 0
    for n in range(first, last):
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
            raise _bad_block(batch, start, f"bad key-value block: {e}", path) from None
        if bounds[-1] != end:
            raise _bad_block(
                batch, start, f"key and value lengths add up to {bounds[-1] - top} bytes, "
                f"the block holds {end - top}", path,
            )
        # Consecutive bounds delimit key 1, value 1, key 2, ...: slice them all in C.
        pieces = map(data.__getitem__, map(slice, bounds, islice(bounds, 1, None)))
        state.update(zip(pieces, pieces, strict=True))
        keys += count
    return keys


def decode_change_blocks(
    batch: records.Batch, first: int, changes: list[ChangeTuple], path: str
) -> None:
    """Append the changes of the change block records of `batch` from `first` on."""
    data = batch.data
    unpack_count = _KEY_LEN.unpack_from
    for n in range(first, len(batch.starts)):
        start = batch.starts[n]
        end = batch.ends[n]
        try:
            (count,) = unpack_count(data, start)
            pos = start + 4 + _CHANGE_HEAD_SIZE * count
            if pos > end:
                raise struct.error(f"{count} changes do not fit in a {end - start}-byte block")
            heads = struct.unpack_from("<" + _CHANGE_HEAD * count, data, start + 4)
        except struct.error as e:
            raise _bad_block(batch, start, f"bad change block: {e}", path) from None
        for i in range(0, 4 * count, 4):
            revision, klen, nlen, plen = heads[i : i + 4]
            key = data[pos : pos + klen]
            pos += klen
            new = prev = None
            if nlen != _ABSENT:
                new = data[pos : pos + nlen]
                pos += nlen
            if plen != _ABSENT:
                prev = data[pos : pos + plen]
                pos += plen
            changes.append((revision, key, new, prev))
        if pos != end:
            raise _bad_block(
                batch, start, f"change lengths add up to {pos - start} bytes, the block "
                f"holds {end - start}", path,
            )


@dataclass
class KeyValueFile:
    """A key-value file read whole: its metadata record, keys, changes, the scan result."""

    meta: bytes
    meta_offset: int
    state: dict[bytes, bytes]
    keys: int  # keys in the key blocks read
    changes: list[ChangeTuple]
    scan: records.ScanResult


def load_strict(
    io: FileIO, path: str, magic: bytes, key_count: Callable[[bytes, int], int]
) -> KeyValueFile:
    """Read a key-value file that was written whole (atomically), in chunks: any bad byte
    is corruption, every record's CRC is checked. `key_count(meta, meta_offset)` says how
    many keys the metadata record announces: the key blocks holding them come first, the
    change blocks after."""
    scan = records.ScanResult(path)
    state: dict[bytes, bytes] = {}
    changes: list[ChangeTuple] = []
    meta: bytes | None = None
    meta_offset = 0
    expected = keys = 0
    for batch in records.scan_stream(io, path, magic, scan):
        first = 0
        if meta is None:
            meta = batch.data[batch.starts[0] : batch.ends[0]]
            meta_offset = batch.base + batch.starts[0] - records.FRAME_SIZE
            expected = key_count(meta, meta_offset)
            first = 1
        last = first
        while keys < expected and last < len(batch.starts):
            keys += decode_blocks(batch, last, last + 1, state, path)
            last += 1
        if keys > expected:
            raise CorruptionError(path, batch.base + batch.ends[last - 1],
                                  f"{keys} keys, expected {expected}")
        decode_change_blocks(batch, last, changes, path)
    scan.raise_if_corrupt()
    if scan.torn:
        raise CorruptionError(path, scan.valid_end, f"incomplete file: {scan.torn_reason}")
    if meta is None:
        raise CorruptionError(path, records.HEADER_SIZE, "metadata record missing")
    if keys != expected:
        raise CorruptionError(path, scan.valid_end, f"{keys} keys, expected {expected}")
    return KeyValueFile(meta, meta_offset, state, keys, changes, scan)


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
    image: StoreImage
    last_included: LogId
    membership: Membership | None


def encode_snapshot_meta(
    image: StoreImage, last_included: LogId, membership: Membership | None
) -> bytes:
    return (
        _SNAPSHOT_META.pack(last_included.index, last_included.term, len(image.items))
        + pack_blob(membership.SerializeToString() if membership is not None else b"")
        + bytes([membership is not None])
        + image.encode_counts()
    )


def decode_snapshot_meta(
    payload: bytes, path: str, offset: int
) -> tuple[LogId, int, Membership | None, Counts]:
    """(last included, key count, membership, (revision, compact revision, changes,
    leases, auth state))."""
    try:
        index, term, count = _SNAPSHOT_META.unpack_from(payload, 0)
        blob, end = unpack_blob(payload, _SNAPSHOT_META.size)
        has_membership = payload[end]
        membership = Membership.FromString(blob) if has_membership == 1 else None
        counts = decode_counts(payload, end + 1)
    except Exception as e:
        raise CorruptionError(path, offset, f"undecodable snapshot metadata: {e}") from None
    return LogId(index=index, term=term), count, membership, counts


def write_snapshot(
    io: FileIO,
    directory: str,
    image: StoreImage,
    last_included: LogId,
    membership: Membership | None,
) -> bytes:
    """Write `directory/snapshot.bin` atomically (keys in order: the same state gives the
    same bytes on every node) and return its SHA-256."""
    io.makedirs(directory)
    meta = encode_snapshot_meta(image, last_included, membership)
    digest = hashlib.sha256()
    items = image.items

    def chunks() -> Iterator[bytes]:
        for chunk in (
            records.encode_header(records.MAGIC_SNAPSHOT) + records.frame(meta),
            *image_chunks(image, ((k, items[k]) for k in sorted_keys(items))),
        ):
            digest.update(chunk)
            yield chunk

    io.atomic_write(os.path.join(directory, SNAPSHOT_FILE), chunks())
    return digest.digest()


def read_snapshot(io: FileIO, directory: str, metadata: SnapshotMetadata) -> SnapshotData:
    """Verify the SHA-256 against `metadata.checksum`, then decode. Raises before any change.
    The file is read in chunks twice (hash, then decode), never held whole."""
    path = os.path.join(directory, SNAPSHOT_FILE)
    if not io.exists(path):
        raise StorageError(f"{path}: snapshot file missing")
    digest = hashlib.sha256()
    for chunk in io.read_chunks(path, _CHUNK_BYTES):
        digest.update(chunk)
    if digest.digest() != metadata.checksum:
        expected = metadata.checksum.hex() or "(none)"
        raise CorruptionError(
            path, 0, f"SHA-256 {digest.hexdigest()} does not match the expected {expected}"
        )
    decoded: list[tuple[LogId, Membership | None, Counts]] = []

    def key_count(meta: bytes, offset: int) -> int:
        last, count, membership, counts = decode_snapshot_meta(meta, path, offset)
        decoded.append((last, membership, counts))
        return count

    loaded = load_strict(io, path, records.MAGIC_SNAPSHOT, key_count)
    last, membership, (revision, compact, change_count, leases, auth) = decoded[0]
    if (last.index, last.term) != (metadata.last_included.index, metadata.last_included.term):
        raise StorageError(
            f"{path}: snapshot is at ({last.term}, {last.index}), metadata says "
            f"({metadata.last_included.term}, {metadata.last_included.index})"
        )
    if len(loaded.changes) != change_count:
        raise CorruptionError(
            path, loaded.scan.valid_end, f"{len(loaded.changes)} changes, expected {change_count}"
        )
    image = StoreImage(revision, compact, loaded.state, loaded.changes, leases, auth)
    return SnapshotData(image, last, membership)
