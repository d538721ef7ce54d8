"""WAL format 2 (one record per chunk) and reading format 1."""

from __future__ import annotations

import pytest
from storage_helpers import command_entry, delete, insert, noop_entry

from dengine.errors import CorruptionError
from dengine.storage import FileStateMachine
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
from dengine.storage.state_machine import OP_INSERT, OP_LAST_APPLIED, OP_NOOP


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

