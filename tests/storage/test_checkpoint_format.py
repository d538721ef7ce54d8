"""Checkpoint format 3 (the store image: keys and changes in blocks), older formats
refused, and recovery in chunks."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from storage_helpers import (
    ChunksOnlyDisk,
    cas_request,
    command_entry,
    delete,
    insert,
    log_entries,
    store_state,
)

from dengine.errors import CorruptionError
from dengine.proto import LogId
from dengine.storage import FileStateMachine, kvfile, records
from dengine.storage.checkpoints import CHECKPOINT_FILE, CheckpointMeta, encode_checkpoint_meta
from dengine.storage.fileio import SimulatedDisk

DIR = "/data/sm"
PATH = f"{DIR}/{CHECKPOINT_FILE}"


def checkpointed(state: dict[bytes, bytes], disk: SimulatedDisk | None = None) -> SimulatedDisk:
    """A disk holding a state machine whose checkpoint has `state` (applied at its index)."""
    disk = disk or SimulatedDisk()
    sm = FileStateMachine(DIR, fileio=disk, background_checkpoint=False)
    sm.apply_chunk([
        command_entry(i + 1, 1, insert(k, v)) for i, (k, v) in enumerate(state.items())
    ])
    sm.checkpoint()
    sm.close()
    return disk


def test_the_checkpoint_holds_the_whole_store_image():
    """Revision, compaction point, live keys and the changelog (deletes, txns) come back."""
    disk = SimulatedDisk()
    sm = FileStateMachine(DIR, fileio=disk, background_checkpoint=False)
    sm.apply_chunk([
        command_entry(1, 1, insert(b"a", b"1")), command_entry(2, 1, insert(b"b", b"2")),
        command_entry(3, 1, delete(b"a")), command_entry(4, 1, cas_request(b"b", 1, b"3")),
        command_entry(5, 1, cas_request(b"c", 1, b"never")),
    ])
    sm.checkpoint()
    expected = sm.read(store_state)
    sm.close()
    assert expected[0] == 5 and len(expected[3]) == 4
    again = FileStateMachine(DIR, fileio=disk)
    assert again.read(store_state) == expected and again.items() == {b"b": b"3"}


def rewrite(disk: SimulatedDisk, data: bytes) -> None:
    disk.unlink(PATH)
    f = disk.open_append(PATH)
    f.write(data)
    f.close()


def block(pairs: list[tuple[bytes, bytes]], lengths: list[int] | None = None) -> bytes:
    flat = lengths if lengths is not None else [n for k, v in pairs for n in (len(k), len(v))]
    return (
        struct.pack("<I", len(flat) // 2)
        + struct.pack(f"<{len(flat)}I", *flat)
        + b"".join(k + v for k, v in pairs)
    )


states = st.dictionaries(st.binary(max_size=20), st.binary(max_size=3000), max_size=60)


@settings(max_examples=60, deadline=None)
@given(states)
def test_checkpoint_round_trip_in_blocks(state):
    disk = checkpointed(state)
    data = disk.read(PATH)
    assert records.check_header(data, records.MAGIC_CHECKPOINT, PATH) == 5
    scan = records.scan(data, PATH, records.MAGIC_CHECKPOINT)
    # blocks of keys, then of changes (one per put): not a record per key
    assert len(scan.records) - 1 <= 2 * max(1, len(state))
    again = FileStateMachine(DIR, fileio=disk)
    assert again.items() == state
    assert again.last_applied().index == len(state)


def test_keys_span_many_blocks_and_are_read_in_chunks():
    """A checkpoint of several MB: 64 KiB blocks, loaded without reading the file whole."""
    state = {b"k%07d" % i: bytes([i % 251]) * (i % 700) for i in range(20_000)}
    disk = checkpointed(state, ChunksOnlyDisk())
    scan = records.scan(SimulatedDisk.read(disk, PATH), PATH, records.MAGIC_CHECKPOINT)
    assert 50 < len(scan.records) < 1000
    assert FileStateMachine(DIR, fileio=disk).items() == state


@pytest.mark.parametrize("version", [1, 2])
def test_a_checkpoint_written_before_revisions_is_refused(version):
    disk = checkpointed({b"x": b"y"})
    data = SimulatedDisk.read(disk, PATH)
    rewrite(disk, records.encode_header(records.MAGIC_CHECKPOINT, version) + data[8:])
    with pytest.raises(CorruptionError, match=f"unsupported format version {version} "
                                              r"\(this release reads 3, 4, 5\): written before"):
        FileStateMachine(DIR, fileio=disk)


def _v3_file(*payloads: bytes, count: int, changes: int = 0) -> bytes:
    meta = encode_checkpoint_meta(
        CheckpointMeta(LogId(index=1, term=1), 1, count, None, None, 2, 0, changes)
    )
    return records.encode_header(records.MAGIC_CHECKPOINT) + records.frame_all([meta, *payloads])


@pytest.mark.parametrize(("payload", "count", "message"), [
    (block([(b"k", b"v")], lengths=[1, 2]), 1, "add up to 3 bytes, the block holds 2"),
    (struct.pack("<II", 1, 1) + b"kv", 1, "1 keys do not fit in a 10-byte block"),
    (struct.pack("<I", 1000) + b"kv", 1000, "1000 keys do not fit"),
    (b"\x01", 1, "bad key-value block"),
    (block([(b"k", b"v"), (b"l", b"w")]), 3, "3 keys, expected 4"),
])
def test_a_bad_block_with_a_valid_crc_is_a_clear_error(payload, count, message):
    disk = checkpointed({b"x": b"y"})
    rewrite(disk, _v3_file(block([(b"a", b"b")]), payload, count=count + 1))
    with pytest.raises(CorruptionError, match=message) as raised:
        FileStateMachine(DIR, fileio=disk)
    assert raised.value.path == PATH


def change_block(heads: list[tuple[int, int, int, int]], data: bytes) -> bytes:
    return (struct.pack("<I", len(heads)) + b"".join(struct.pack("<QIII", *h) for h in heads)
            + data)


ABSENT = 0xFFFFFFFF


@pytest.mark.parametrize(("changes", "count", "message"), [
    ([change_block([(2, 1, 1, ABSENT)], b"kvx")], 1, "add up to 26 bytes, the block holds 27"),
    ([change_block([(2, 1, 5, ABSENT)], b"kv")], 1, "add up to 30 bytes, the block holds 26"),
    ([struct.pack("<I", 9) + b"xx"], 9, "9 changes do not fit"),
    ([change_block([(2, 1, 1, ABSENT)], b"kv")], 2, "1 changes, expected 2"),
])
def test_a_bad_change_block_with_a_valid_crc_is_a_clear_error(changes, count, message):
    disk = checkpointed({b"x": b"y"})
    rewrite(disk, _v3_file(block([(b"a", b"b")]), *changes, count=1, changes=count))
    with pytest.raises(CorruptionError, match=message) as raised:
        FileStateMachine(DIR, fileio=disk)
    assert raised.value.path == PATH


def test_a_flipped_byte_in_a_block_is_refused():
    disk = checkpointed({b"k%d" % i: b"v" * 100 for i in range(2000)})
    data = bytearray(SimulatedDisk.read(disk, PATH))
    data[len(data) // 2] ^= 1
    rewrite(disk, bytes(data))
    with pytest.raises(CorruptionError, match=r"checksum mismatch|incomplete file"):
        FileStateMachine(DIR, fileio=disk)


def test_wals_are_read_in_chunks():
    """Replay of a big WAL never holds the file whole."""
    disk = ChunksOnlyDisk()
    sm = FileStateMachine(DIR, fileio=disk, background_checkpoint=False)
    for first in range(1, 2001, 100):
        sm.apply_chunk(log_entries(first, 100, term=1, tag=b"v" * 200))
    sm.close()
    assert FileStateMachine(DIR, fileio=disk).items() == sm.items()


def test_never_compacted_is_minus_one_and_format_3_zero_reads_as_never():
    """etcd's compaction point starts at -1 (its first Compact(0) succeeds, the next does
    not): the image keeps -1; format 3 (checkpoint) and 2 (snapshot) wrote 0 for it."""
    current = kvfile.encode_counts(7, -1, 2, [(5, 60)])
    assert kvfile.decode_counts(current, 0) == (7, -1, 2, [(5, 60)], b"")
    assert kvfile.decode_counts(kvfile.encode_counts(7, 0, 2, []), 0)[1] == 0
    before_leases = struct.pack("<QQQ", 7, 0, 2)  # revision, compact revision, changes
    assert kvfile.decode_counts(before_leases, 0) == (7, -1, 2, [], b"")
