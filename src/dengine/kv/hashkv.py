"""etcd's HashKV of an MVCC store at a revision (`etcdctl endpoint hashkv`): members of a
cluster compare it to find one whose state diverged.

etcd 3.4 hashes its backend's key bucket with CRC-32C: the bucket's name `key`, then,
in the bucket's byte order, every record's key (`main(8, big-endian) _ sub(8)`, `t`
appended for a deletion's tombstone) and value (the `mvccpb.KeyValue` marshalled; a
tombstone holds only the key). It takes the records of revisions up to the one asked
and above the compacted one, and of the records at or below the compacted revision the
ones that are still each key's latest version at the revision asked (all those left when
no key is live then). The records are made here from the store's changelog (its
history above the compacted revision, in apply order: a revision's `sub` is its
position among the changes of that revision) and the keys' packed versions, so a store
never compacted hashes to etcd's own value for the same history. Below the compacted
revision the changelog is gone and a kept version's `sub` is not known: it counts as 0
(equal to etcd's unless one revision wrote several keys), so the hash is then the same
on every dengine member, not necessarily etcd's.

Pure: `hash_kv` works on copies taken under the state machine's lock, and may run in a
thread (it is O(live keys + history)).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import crc32c

from dengine.kv.changelog import Changelog
from dengine.kv.packed import META_SIZE, unpack_meta
from dengine.proto.etcd.kv_pb2 import KeyValue

KEY_BUCKET = b"key"
_REVISION = struct.Struct(">Q")


def record_key(main: int, sub: int, tombstone: bool = False) -> bytes:
    """etcd's backend key of a revision."""
    return _REVISION.pack(main) + b"_" + _REVISION.pack(sub) + (b"t" if tombstone else b"")


def record_value(key: bytes, packed: bytes | None) -> bytes:
    """etcd's backend value: the KeyValue of a version, or a tombstone's (key only)."""
    if packed is None:
        return KeyValue(key=key).SerializeToString()
    c, m, v, lease = unpack_meta(packed)
    return KeyValue(key=key, create_revision=c, mod_revision=m, version=v, lease=lease,
                    value=packed[META_SIZE:]).SerializeToString()


def hash_kv(data: dict[bytes, bytes], changes: Changelog, compact_revision: int,
            revision: int) -> int:
    """The hash at `revision` (> the compacted revision, <= the store's: the caller
    checks) of a store whose live versions are `data` (a copy: it is changed here) and
    whose history is `changes`. A negative revision hashes no record, as etcd's does."""
    if revision < 1:
        return int(crc32c.crc32c(KEY_BUCKET))
    _undo(data, list(changes.since(revision)))  # the store as it was at `revision`
    history = [c for c in changes.since(compact_revision) if c[0] <= revision]
    kept = [(key, packed) for key, packed in data.items()
            if unpack_meta(packed)[1] <= compact_revision]
    if not data:  # no key live at `revision`: every version left by the compaction
        _undo(data, history)
        kept = list(data.items())
    h = crc32c.crc32c(KEY_BUCKET)
    kept.sort(key=lambda item: (unpack_meta(item[1])[1], item[0]))
    for key, packed in kept:
        h = crc32c.crc32c(record_key(unpack_meta(packed)[1], 0) + record_value(key, packed), h)
    for record in _records(history):
        h = crc32c.crc32c(record, h)
    return h


def _undo(data: dict[bytes, bytes],
          changes: list[tuple[int, bytes, bytes | None, bytes | None]]) -> None:
    """Take `changes` (the latest ones of the store `data`) back, newest first."""
    for _, key, _, prev in reversed(changes):
        if prev is None:
            data.pop(key, None)
        else:
            data[key] = prev


def _records(history: Iterable[tuple[int, bytes, bytes | None, bytes | None]]
             ) -> Iterable[bytes]:
    main, sub = 0, 0
    for rev, key, new, _ in history:
        sub = sub + 1 if rev == main else 0
        main = rev
        yield record_key(rev, sub, new is None) + record_value(key, new)
