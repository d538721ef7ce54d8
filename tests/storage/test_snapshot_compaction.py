"""Compaction that records the snapshot it relies on; snapshot key order without one big sort."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from storage_helpers import log_entries

from dengine.errors import StorageError
from dengine.proto import LogId, Member, Membership, SnapshotMetadata
from dengine.raft import MemoryRaftLog
from dengine.storage import FileRaftLog
from dengine.storage.fileio import RealDisk
from dengine.storage.kvfile import StoreImage, read_snapshot, sorted_keys, write_snapshot


def _meta(index: int, term: int = 1) -> SnapshotMetadata:
    return SnapshotMetadata(
        last_included=LogId(index=index, term=term), checksum=bytes([index % 256]) * 32,
        membership=Membership(voters=[Member(id=1, address="127.0.0.1:1")]),
    )


@pytest.mark.parametrize("make", [MemoryRaftLog, None])
def test_compact_prefix_records_the_snapshot_atomically(tmp_path, make):
    log = make() if make else FileRaftLog(tmp_path, segment_bytes=400)
    log.append(log_entries(1, 40, term=1))
    log.compact_prefix(10, _meta(15))  # a margin of entries kept below the snapshot
    assert log.first_index() == 11 and log.snapshot_metadata() == _meta(15)
    log.compact_prefix(5, _meta(30))  # already compacted further: nothing changes
    assert log.snapshot_metadata() == _meta(15)
    log.compact_prefix(20)  # without a snapshot the recorded one stays
    assert log.snapshot_metadata() == _meta(15)
    with pytest.raises(StorageError, match="snapshot at 21"):
        log.compact_prefix(25, _meta(21).__class__(last_included=LogId(index=21, term=1)))
    if make is None:
        log.close()
        again = FileRaftLog(tmp_path, segment_bytes=400)
        assert (again.first_index(), again.last_index()) == (21, 40)
        assert again.snapshot_metadata() == _meta(15)


@given(st.lists(st.binary(max_size=12), unique=True, max_size=30_000))
def test_sorted_keys_is_sorted(keys):
    state = dict.fromkeys(keys, b"")
    assert list(sorted_keys(state)) == sorted(keys)


def test_snapshot_file_is_the_same_whatever_the_insertion_order(tmp_path):
    items = [(b"k%06d" % i, b"v%d" % i) for i in range(20_000)]
    shuffled = items[:]
    random.Random(7).shuffle(shuffled)
    last = LogId(index=9, term=2)
    changes = [(3, b"k000001", b"new", None), (4, b"k000002", None, b"old")]
    a = write_snapshot(RealDisk(), str(tmp_path / "a"), StoreImage(5, 2, dict(items), changes),
                       last, None)
    b = write_snapshot(RealDisk(), str(tmp_path / "b"),
                       StoreImage(5, 2, dict(shuffled), changes), last, None)
    assert a == b
    data = read_snapshot(RealDisk(), str(tmp_path / "b"), SnapshotMetadata(last_included=last,
                                                                          checksum=b))
    assert data.image == StoreImage(5, 2, dict(items), changes)
