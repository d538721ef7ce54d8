"""Checkpoint format 2 (keys in blocks), reading format 1, and recovery in chunks."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from storage_helpers import ChunksOnlyDisk, command_entry, insert, log_entries

from dengine.errors import CorruptionError
from dengine.proto import LogId
from dengine.storage import FileStateMachine, kvfile, records
from dengine.storage.checkpoints import CHECKPOINT_FILE, encode_checkpoint_meta
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
    assert records.check_header(data, records.MAGIC_CHECKPOINT, PATH) == 2
    scan = records.scan(data, PATH, records.MAGIC_CHECKPOINT)
    assert len(scan.records) - 1 <= max(1, len(state))  # blocks, not a record per key
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


def test_a_version_1_checkpoint_is_still_read():
    """Older releases wrote one record per key under format version 1."""
    state = {b"a": b"1", b"": b"empty key", b"c" * 300: b""}
    disk = checkpointed({b"x": b"y"})
    meta = encode_checkpoint_meta(LogId(index=7, term=2), 1, len(state), None, None)
    rewrite(disk, b"".join([
        records.encode_header(records.MAGIC_CHECKPOINT, 1), records.frame(meta),
        *kvfile.encode_items(state.items()),
    ]))
    sm = FileStateMachine(DIR, fileio=disk)
    assert sm.items() == state and sm.last_applied() == LogId(index=7, term=2)


def _v2_file(*payloads: bytes, count: int) -> bytes:
    meta = encode_checkpoint_meta(LogId(index=1, term=1), 1, count, None, None)
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
    rewrite(disk, _v2_file(block([(b"a", b"b")]), payload, count=count + 1))
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
