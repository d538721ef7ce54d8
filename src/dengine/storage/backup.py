"""Backup files: what `Maintenance.Snapshot` streams and `dengine snapshot save` writes.

    header   64 bytes: magic "DENGINE BACKUP" + u16 version (1), u64 body length,
             u64 last included index, u64 its term, u64 store revision, u64 key count,
             u64 0 (all little-endian)
    body     a dengine snapshot file (docs/formats.md, "Snapshot file"): the store's
             revision, compaction point, keys and history, as a node's snapshot.bin
    padding  zero bytes up to a multiple of 512 bytes (header, body and padding)
    sha256   32 bytes: the SHA-256 of everything before it

The size and trailer are etcd's rule for its snapshot stream (a bbolt file in 512-byte
pages, then its SHA-256): `etcdctl snapshot save` accepts a file whose size modulo 512 is
32. The content is dengine's own: `etcdctl snapshot status|restore` (which open a bbolt
database) cannot read it; `dengine snapshot status|restore` can.

`read_backup` refuses a truncated or damaged file before anything is written: the size
rule, the trailing SHA-256, the magic and version, the body length, then every record's
CRC as the body is decoded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dengine.errors import CorruptionError, StorageError
from dengine.proto import LogId, Membership, SnapshotMetadata
from dengine.storage.fileio import RealDisk
from dengine.storage.kvfile import (
    SNAPSHOT_FILE,
    SnapshotData,
    StoreImage,
    read_snapshot,
    write_snapshot,
)

MAGIC = b"DENGINE BACKUP"
VERSION = 1
_HEADER = struct.Struct("<14sHQQQQQQ")
HEADER_SIZE = _HEADER.size  # 64
PAGE = 512
SHA_SIZE = 32
_CHUNK = 1 << 20


@dataclass(frozen=True)
class BackupInfo:
    """What a backup file's header says (checked against its body by `read_backup`)."""

    size: int  # bytes of the whole file
    sha256: str  # hex of the trailing SHA-256
    last_included: LogId
    revision: int
    keys: int
    body_size: int


class BackupBody:
    """A snapshot file of a store, written to a temporary directory, streamed as a backup
    (`chunks`); `close` deletes it. Blocking: build it in a worker thread."""

    def __init__(self, directory: Path, image: StoreImage, last: LogId,
                 membership: Membership | None) -> None:
        self.directory = directory
        shutil.rmtree(directory, ignore_errors=True)
        write_snapshot(RealDisk(), str(directory), image, last, membership)
        self.path = directory / SNAPSHOT_FILE
        body_size = self.path.stat().st_size
        self.header = _HEADER.pack(MAGIC, VERSION, body_size, last.index, last.term,
                                   image.revision, len(image.items), 0)
        self.body_size = body_size
        self.padding = -(HEADER_SIZE + body_size) % PAGE
        self.size = HEADER_SIZE + body_size + self.padding + SHA_SIZE
        self.revision = image.revision

    def chunks(self, size: int = 64 * 1024) -> Iterator[bytes]:
        """The backup file's bytes in chunks of `size` (the last one: the SHA-256)."""
        digest = hashlib.sha256(self.header)
        pending = self.header
        with open(self.path, "rb") as f:
            while block := f.read(size):
                digest.update(block)
                pending += block
                while len(pending) >= size:
                    yield pending[:size]
                    pending = pending[size:]
        pad = bytes(self.padding)
        digest.update(pad)
        pending += pad
        while pending:
            yield pending[:size]
            pending = pending[size:]
        yield digest.digest()

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def _refuse(path: str, reason: str) -> StorageError:
    return StorageError(f"{path}: {reason}; refused (nothing was written)")


def backup_info(path: str) -> BackupInfo:
    """Check a backup file's size rule, trailing SHA-256 and header; StorageError when it
    is truncated, damaged or not a dengine backup. Reads the file once."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(HEADER_SIZE)
            if size < HEADER_SIZE + SHA_SIZE or size % PAGE != SHA_SIZE:
                if head[:len(MAGIC)] == MAGIC:
                    raise _refuse(path, f"truncated: {size} bytes, not a whole backup (its size "
                                        f"is a multiple of {PAGE} plus {SHA_SIZE})")
                raise _refuse(path, f"not a dengine snapshot ({size} bytes, no SHA-256 "
                                    "trailer)")
            digest = hashlib.sha256(head)
            remaining = size - SHA_SIZE - len(head)
            while remaining > 0:
                block = f.read(min(_CHUNK, remaining))
                if not block:
                    raise _refuse(path, "the file shrank while it was read")
                digest.update(block)
                remaining -= len(block)
            trailer = f.read(SHA_SIZE)
    except OSError as e:
        raise StorageError(f"cannot read {path}: {e.strerror or e}") from None
    if head[:len(MAGIC)] != MAGIC:
        raise _refuse(path, "not a dengine snapshot (an etcd snapshot? `etcdctl snapshot "
                            "restore` reads those)")
    if digest.digest() != trailer:
        raise _refuse(path, f"corrupt: SHA-256 {digest.hexdigest()} does not match the "
                            f"{trailer.hex()} it ends with")
    _, version, body_size, index, term, revision, keys, _ = _HEADER.unpack(head)
    if version != VERSION:
        raise _refuse(path, f"backup format {version}, this release reads format {VERSION}")
    if HEADER_SIZE + body_size + SHA_SIZE > size or (
        size - SHA_SIZE - HEADER_SIZE - body_size >= PAGE
    ):
        raise _refuse(path, f"corrupt: body of {body_size} bytes does not fit a file of "
                            f"{size}")
    return BackupInfo(size, trailer.hex(), LogId(index=index, term=term), revision, keys,
                      body_size)


def read_backup(path: str, work_dir: Path) -> tuple[BackupInfo, SnapshotData, Path]:
    """Verify `path` whole and decode it: (its info, the snapshot it holds, the snapshot
    file extracted to `work_dir`). StorageError / CorruptionError before any change."""
    info = backup_info(path)
    work_dir.mkdir(parents=True, exist_ok=True)
    body = work_dir / SNAPSHOT_FILE
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as src, open(body, "wb") as dst:
            src.seek(HEADER_SIZE)
            remaining = info.body_size
            while remaining > 0:
                block = src.read(min(_CHUNK, remaining))
                digest.update(block)
                dst.write(block)
                remaining -= len(block)
    except OSError as e:
        raise StorageError(f"cannot extract {path} to {work_dir}: {e.strerror or e}") from None
    metadata = SnapshotMetadata(last_included=info.last_included, checksum=digest.digest())
    try:
        data = read_snapshot(RealDisk(), str(work_dir), metadata)
    except CorruptionError as e:
        raise _refuse(path, f"corrupt snapshot inside: {e.reason}") from None
    except StorageError as e:
        raise _refuse(path, e.message) from None
    if data.image.revision != info.revision or len(data.image.items) != info.keys:
        raise _refuse(path, f"corrupt: the header says revision {info.revision} and "
                            f"{info.keys} keys, the snapshot holds revision "
                            f"{data.image.revision} and {len(data.image.items)} keys")
    return info, data, body
