"""WAL format 2 (one record per chunk), reading format 1, and the command shape cache."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from storage_helpers import command_entry, delete, insert, noop_entry

from dengine.errors import CorruptionError
from dengine.storage import FileStateMachine
from dengine.storage import state_machine as sm_module
from dengine.storage.file_state_machine import (
    WAL_OP,
    WAL_RECORD,
    decode_wal_ops,
    encode_wal_ops,
    wal_name,
)
from dengine.storage.records import (
    HEADER,
    MAGIC_WAL,
    check_header,
    encode_header,
    frame,
    frame_all,
    scan,
)
from dengine.storage.state_machine import (
    OP_INSERT,
    OP_LAST_APPLIED,
    OP_NOOP,
    SHAPES,
    decode_command,
    decode_payload,
)


def protobuf_decode(command: bytes):
    return decode_payload(command_entry(1, 1, command))


@st.composite
def canonical_commands(draw):
    key = draw(st.binary(min_size=0, max_size=140))
    if draw(st.booleans()):
        return delete(key)
    return insert(key, draw(st.binary(max_size=draw(st.sampled_from([100, 300, 20000])))))


@st.composite
def damaged(draw, command: bytes):
    """`command` with one byte changed, cut short or extended."""
    data = bytearray(command)
    how = draw(st.sampled_from(["flip", "cut", "extend"]))
    if how == "flip" and data:
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    elif how == "cut":
        del data[draw(st.integers(0, len(data))):]
    else:
        data += draw(st.binary(min_size=1, max_size=4))
    return bytes(data)


@settings(max_examples=300)
@given(st.data(), canonical_commands())
def test_known_shapes_decode_like_protobuf_even_when_damaged(data, command):
    """A shape learnt from a valid command never misreads a damaged one of the same head."""
    first = decode_command(command)  # learns the shape
    assert first is None or first == protobuf_decode(command)
    again = decode_command(command)  # decoded through the learnt shape, if any
    assert again == first
    other = data.draw(damaged(command))
    decoded = decode_command(other)
    if decoded is not None:
        assert decoded == protobuf_decode(other)


def test_typical_commands_are_learnt_and_the_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(sm_module, "_SHAPES_MAX", 8)
    SHAPES.clear()
    for size in (0, 10, 200, 5000):
        command = insert(b"k" * 16, b"v" * size)
        assert decode_command(command) == (OP_INSERT, b"k" * 16, b"v" * size)
    assert len(SHAPES) == 4
    assert decode_command(insert(b"x" * 16, b"w" * 200)) == (OP_INSERT, b"x" * 16, b"w" * 200)
    assert len(SHAPES) == 4  # the same shape as the 200-byte value above
    for size in range(20, 30):
        decode_command(insert(b"k", b"v" * size))
    assert 0 < len(SHAPES) <= 8


def test_a_chunk_is_one_record(tmp_path):
    sm = FileStateMachine(tmp_path / "sm")
    sm.apply_chunk([command_entry(i, 2, insert(b"k%d" % i, b"v")) for i in range(1, 51)])
    sm.apply_chunk([noop_entry(51, 2), command_entry(52, 2, delete(b"k1"))])
    sm.close()
    path = str(tmp_path / "sm" / wal_name(0))
    with open(path, "rb") as f:
        found = scan(f.read(), path, MAGIC_WAL)
    assert found.version == 2 and len(found.records) == 2
    ops = [decode_wal_ops(r, path, o, 2) for r, o in zip(found.records, found.offsets, strict=True)]
    assert [op[0] for op in ops[0]] == list(range(1, 51))
    assert [(op[0], op[2]) for op in ops[1]] == [(51, OP_NOOP), (52, 2)]


def test_wal_ops_round_trip_and_bad_lengths_are_corruption():
    ops = [(7, 1, OP_INSERT, b"key", b"value"), (8, 1, OP_LAST_APPLIED, b"", b"")]
    payload = encode_wal_ops(ops)
    assert decode_wal_ops(payload, "wal", 8, 2) == ops
    for bad in (payload[:-1], payload + b"x", b""):
        with pytest.raises(CorruptionError):
            decode_wal_ops(bad, "wal", 8, 2)
    assert WAL_OP.size == 25


def write_v1_wal(path, ops) -> None:
    """A WAL as release 1 wrote it: format version 1, one record per op."""
    payloads = [WAL_RECORD.pack(i, t, op, len(k)) + k + v for i, t, op, k, v in ops]
    with open(path, "wb") as f:
        f.write(encode_header(MAGIC_WAL, 1) + frame_all(payloads) + bytes(100))


def test_format_1_wal_is_read_and_continued_in_a_new_format_2_wal(tmp_path):
    directory = tmp_path / "sm"
    directory.mkdir()
    write_v1_wal(directory / wal_name(0), [
        (1, 1, OP_INSERT, b"a", b"1"), (2, 1, OP_INSERT, b"b", b"2"), (3, 1, 2, b"a", b""),
    ])
    sm = FileStateMachine(directory)
    assert sm.items() == {b"b": b"2"} and sm.last_applied().index == 3
    sm.apply_chunk([command_entry(4, 1, insert(b"c", b"3"))])
    sm.close()
    with open(directory / wal_name(0), "rb") as f:
        assert HEADER.unpack_from(f.read(), 0)[1] == 1  # never appended to in format 2
    with open(directory / wal_name(1), "rb") as f:
        assert check_header(f.read(), MAGIC_WAL, "wal") == 2
    sm = FileStateMachine(directory)
    assert sm.items() == {b"b": b"2", b"c": b"3"} and sm.last_applied().index == 4
    sm.close()


def test_unknown_wal_version_is_refused(tmp_path):
    directory = tmp_path / "sm"
    directory.mkdir()
    (directory / wal_name(0)).write_bytes(
        HEADER.pack(MAGIC_WAL, 3, 0) + frame(encode_wal_ops([(1, 1, OP_NOOP, b"", b"")]))
    )
    with pytest.raises(CorruptionError, match="unsupported format version 3"):
        FileStateMachine(directory)

