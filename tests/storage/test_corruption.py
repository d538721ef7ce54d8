"""Damaged files: a torn tail is truncated and logged; anything else refuses to start."""

from __future__ import annotations

import hashlib
import logging
import os

import pytest
from storage_helpers import encoded, log_entries

from dengine.errors import CorruptionError
from dengine.proto import HardState, LogId, SnapshotMetadata
from dengine.storage import FileRaftLog, FileStateMachine
from dengine.storage.records import (
    MAGIC_HARD_STATE,
    MAGIC_SEGMENT,
    MAGIC_WAL,
    encode_header,
    frame_all,
    scan,
)

WAL_CHUNKS = [(11, 4), (15, 3), (18, 1), (19, 1), (20, 1)]  # (first index, entries)


def build(root) -> dict[str, str]:
    """A data dir with every file kind; returns kind -> path."""
    log = FileRaftLog(root / "raft", segment_bytes=1 << 20)
    log.append(log_entries(1, 20, term=1))
    log.set_hard_state(HardState(term=1, voted_for=1, commit=3))
    log.set_hard_state(HardState(term=1, voted_for=1, commit=9))
    log.compact_prefix(2)
    log.close()
    sm = FileStateMachine(root / "sm", background_checkpoint=False)
    sm.apply_chunk(log_entries(1, 10, term=1))
    sm.checkpoint()
    for first, count in WAL_CHUNKS:  # one WAL record per chunk
        sm.apply_chunk(log_entries(first, count, term=1))
    sm.generate_snapshot_data(str(root / "snapshots" / "s1"), LogId(index=20, term=1))
    sm.close()
    return {
        "segment": str(root / "raft" / "seg-000000-00000000000000000001"),
        "hardstate": str(root / "raft" / "hardstate"),
        "meta": str(root / "raft" / "meta"),
        "wal": str(root / "sm" / "wal-0000000001"),
        "checkpoint": str(root / "sm" / "checkpoint"),
    }


def open_all(root) -> tuple[FileRaftLog, FileStateMachine]:
    return FileRaftLog(root / "raft"), FileStateMachine(root / "sm")


def flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


MAGIC = {"segment": MAGIC_SEGMENT, "wal": MAGIC_WAL}


@pytest.mark.parametrize("kind", ["segment", "hardstate", "meta", "wal", "checkpoint"])
@pytest.mark.parametrize("where", ["header", "first record", "middle of first record"])
def test_damage_before_valid_data_refuses_to_start(tmp_path, kind, where):
    paths = build(tmp_path)
    offset = {"header": 1, "first record": 9, "middle of first record": 14}[where]
    flip(paths[kind], offset)
    with pytest.raises(CorruptionError) as info:
        open_all(tmp_path)
    assert info.value.path == paths[kind]
    assert info.value.offset == (0 if where == "header" else 8)


@pytest.mark.parametrize("kind", ["segment", "wal"])
def test_damaged_last_record_is_a_torn_tail(tmp_path, kind, caplog):
    paths = build(tmp_path)
    log, sm = open_all(tmp_path)
    expected_log = encoded(log.entries(3, 21))
    expected_sm = sm.items()
    log.close()
    sm.close()
    with open(paths[kind], "rb") as f:
        found = scan(f.read(), paths[kind], MAGIC[kind])
    last = found.offsets[-1]
    flip(paths[kind], found.valid_end - 1)  # the last byte of the last record
    with caplog.at_level(logging.WARNING, logger="dengine.storage"):
        log, sm = open_all(tmp_path)
    assert "torn tail" in caplog.text and paths[kind] in caplog.text
    assert os.path.getsize(paths[kind]) == last
    if kind == "segment":
        assert encoded(log.entries(3, 20)) == expected_log[:-1] and log.last_index() == 19
    else:
        assert sm.last_applied().index == 19 and sm.get(b"k20") is None
        assert {k: v for k, v in sm.items().items() if k != b"k20"} == {
            k: v for k, v in expected_sm.items() if k != b"k20"}


@pytest.mark.parametrize("where", ["last byte", "cut in half", "zeros appended"])
def test_damaged_hard_state_refuses_to_start(tmp_path, where):
    """hardstate is replaced atomically: it is never torn, so any damage is corruption
    (truncating it as a torn tail forgot the term and vote: a second vote in one term)."""
    paths = build(tmp_path)
    size = os.path.getsize(paths["hardstate"])
    if where == "last byte":
        flip(paths["hardstate"], size - 1)
    elif where == "cut in half":
        os.truncate(paths["hardstate"], size // 2)
    else:
        with open(paths["hardstate"], "ab") as f:
            f.write(bytes(64))
    with open(paths["hardstate"], "rb") as f:
        damaged = f.read()
    with pytest.raises(CorruptionError, match="not a torn write"):
        FileRaftLog(tmp_path / "raft")
    with open(paths["hardstate"], "rb") as f:
        assert f.read() == damaged  # nothing cut


def test_hard_state_of_format_1_is_read_and_replaced(tmp_path, caplog):
    """Earlier releases appended records (the last valid one wins, a torn one is cut):
    still read, and the next save writes format 2 (one record)."""
    path = tmp_path / "raft" / "hardstate"
    path.parent.mkdir()
    records = [HardState(term=t, voted_for=2, commit=t).SerializeToString() for t in (1, 2)]
    path.write_bytes(encode_header(MAGIC_HARD_STATE, 1) + frame_all(records) + b"\x09\x00torn")
    with caplog.at_level(logging.WARNING, logger="dengine.storage"):
        log = FileRaftLog(tmp_path / "raft")
    assert "torn tail" in caplog.text
    assert log.hard_state() == HardState(term=2, voted_for=2, commit=2)
    log.set_hard_state(HardState(term=3, voted_for=1, commit=2))
    log.close()
    found = scan(path.read_bytes(), str(path), MAGIC_HARD_STATE)
    assert found.version == 2 and len(found.records) == 1
    assert FileRaftLog(tmp_path / "raft").hard_state() == HardState(term=3, voted_for=1, commit=2)


@pytest.mark.parametrize("kind", ["segment", "wal"])
def test_truncation_at_and_between_record_boundaries(tmp_path, kind, caplog):
    paths = build(tmp_path)
    with open(paths[kind], "rb") as f:
        data = f.read()
    found = scan(data, paths[kind], MAGIC[kind])
    offsets, data = found.offsets, data[: found.valid_end]  # without the preallocated zeros
    cuts = sorted({*offsets, *(o + 3 for o in offsets), *(o + 11 for o in offsets), len(data)})
    for cut in cuts:
        with open(paths[kind], "wb") as f:
            f.write(data[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="dengine.storage"):
            log, sm = open_all(tmp_path)
        ends = [*offsets[1:], len(data)]
        whole = sum(1 for end in ends if end <= cut)
        # A chunk's record is applied whole or not at all.
        applied = [10] + [first + count - 1 for first, count in WAL_CHUNKS]
        at_boundary = cut in offsets or cut == len(data)
        assert ("torn tail" in caplog.text) == (not at_boundary), cut
        if kind == "segment":
            assert log.last_index() == max(2, whole), cut  # compacted through 2
        else:
            assert sm.last_applied().index == applied[whole], cut
            assert sm.get(b"k%d" % (applied[whole] + 1)) is None, cut
        log.close()
        sm.close()


def test_snapshot_with_a_flipped_byte_is_refused(tmp_path):
    build(tmp_path)
    snap_file = tmp_path / "snapshots" / "s1" / "snapshot.bin"
    meta = SnapshotMetadata(
        last_included=LogId(index=20, term=1),
        checksum=hashlib.sha256(snap_file.read_bytes()).digest(),
    )
    flip(str(snap_file), 30)
    target = FileStateMachine(tmp_path / "target")
    with pytest.raises(CorruptionError, match="SHA-256"):
        target.apply_snapshot_from_file(meta, str(snap_file.parent))
    assert len(target) == 0 and target.last_applied() == LogId()
