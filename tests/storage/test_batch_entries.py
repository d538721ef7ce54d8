"""Batch entries (WriteCommand.batch, WAL format 7, log segment format 2): one entry whose
commands apply in order, each its own revision and result, the same on replay."""

from __future__ import annotations

import os

import pytest
from storage_helpers import (
    cas_request,
    command_entry,
    compaction_request,
    delete,
    insert,
    put_request,
    store_state,
)
from test_wal_format import wal_ops

from dengine.errors import CorruptionError
from dengine.kv.codec import (
    OP_BATCH,
    OP_INSERT,
    OP_PUT,
    OP_REJECTED,
    decode_any_command,
    encode_batch,
)
from dengine.proto import Entry, WriteBatch, WriteCommand
from dengine.storage import FileRaftLog, FileStateMachine
from dengine.storage.file_state_machine import wal_name
from dengine.storage.records import HEADER, MAGIC_SEGMENT
from dengine.storage.state_machine import MemoryStateMachine

COMMANDS = [
    insert(b"a", b"1"),
    put_request(b"b", b"", ignore_value=True),  # fails: key not found, changes nothing
    cas_request(b"a", 1, b"2"),  # its compare holds (a's version is 1): a put
    delete(b"a"),
    compaction_request(1),  # not a batch's: applies as rejected
    encode_batch([insert(b"x", b"1"), insert(b"y", b"1")]),  # nor a nested batch
    put_request(b"c", b"3"),
]


def test_the_encoding_is_protobufs_and_decodes_to_op_30() -> None:
    message = WriteCommand(batch=WriteBatch(commands=COMMANDS).SerializeToString())
    assert encode_batch(COMMANDS) == message.SerializeToString()
    op, key, value = decode_any_command(encode_batch(COMMANDS))
    assert (op, key) == (OP_BATCH, b"") and WriteBatch.FromString(value).commands == COMMANDS


@pytest.mark.parametrize("sm_kind", ["file", "memory"])
def test_each_command_is_its_own_revision_and_result(tmp_path, sm_kind: str) -> None:
    sm = FileStateMachine(tmp_path / "sm") if sm_kind == "file" else MemoryStateMachine()
    entries = [command_entry(1, 1, insert(b"z", b"0")),
               command_entry(2, 1, encode_batch(COMMANDS)),
               command_entry(3, 1, insert(b"z", b"1"))]
    results = list(sm.apply_chunk(entries))
    assert [r.index for r in results] == [1] + [2] * len(COMMANDS) + [3]
    assert [(r.succeeded, r.revision) for r in results] == [
        (True, 2), (True, 3), (False, 3), (True, 4), (True, 5), (False, 5), (False, 5),
        (True, 6), (True, 7)]
    assert results[3].response.succeeded  # the txn's own response
    assert sm.items() == {b"c": b"3", b"z": b"1"}
    if sm_kind == "file":
        before = sm.read(store_state)
        sm.close()
        _, ops = wal_ops(str(tmp_path / "sm" / wal_name(0)))
        assert [(index, op) for index, _, op, _, _ in ops[0]][:4] == [
            (1, OP_INSERT), (2, OP_INSERT), (2, OP_PUT), (2, 9)]
        assert [op for _, _, op, _, _ in ops[0]][5:7] == [OP_REJECTED, OP_REJECTED]
        again = FileStateMachine(tmp_path / "sm")
        assert again.read(store_state) == before
        assert again.last_applied().index == 3


def test_a_batch_that_does_not_decode_applies_as_one_rejected_command(tmp_path) -> None:
    sm = FileStateMachine(tmp_path / "sm")
    bad = b"\xa2\x01\x03\x0a\x05x"  # a WriteBatch whose command runs past its end
    results = list(sm.apply_chunk([command_entry(1, 1, bad)]))
    assert [(r.index, r.succeeded) for r in results] == [(1, False)]


def _segment_version(path: str) -> int:
    with open(path, "rb") as f:
        return HEADER.unpack(f.read(HEADER.size))[1]


def _entries(first: int, n: int) -> list[Entry]:
    out = []
    for i in range(first, first + n):
        e = Entry(index=i, term=1)
        e.payload.command = insert(b"k%d" % i, b"v")
        out.append(e)
    return out


def test_an_older_releases_segment_is_never_appended_to(tmp_path) -> None:
    """An older release would read a batch entry as a rejected command: after an upgrade
    the next append starts a segment of format 2, which that release refuses."""
    log = FileRaftLog(tmp_path / "raft")
    log.append(_entries(1, 3))
    log.close()
    [old] = [n for n in os.listdir(tmp_path / "raft") if n.startswith("seg-")]
    path = str(tmp_path / "raft" / old)
    assert _segment_version(path) == 2
    with open(path, "r+b") as f:  # as the release before batches wrote it
        f.write(HEADER.pack(MAGIC_SEGMENT, 1, 0))
    log = FileRaftLog(tmp_path / "raft")
    log.append(_entries(4, 2))
    assert [e.index for e in log.entries(1, 6)] == [1, 2, 3, 4, 5]
    log.close()
    segments = sorted(n for n in os.listdir(tmp_path / "raft") if n.startswith("seg-"))
    assert len(segments) == 2 and segments[0] == old
    assert [_segment_version(str(tmp_path / "raft" / n)) for n in segments] == [1, 2]
    with open(str(tmp_path / "raft" / segments[1]), "r+b") as f:  # a later release's
        f.write(HEADER.pack(MAGIC_SEGMENT, 3, 0))
    with pytest.raises(CorruptionError, match=r"unsupported format version 3 \(this release "
                                              r"reads 1, 2\)"):
        FileRaftLog(tmp_path / "raft")


def test_batches_of_one_shape_apply_as_the_generic_path_does(tmp_path, monkeypatch) -> None:
    """apply_chunk takes a batch of same-shape inserts by columns (kv.codec.batch_inserts):
    the same WAL bytes, store and results as each command decoded alone."""
    value = bytes(range(200))
    same = [insert(b"k%03d" % (i % 7), value) for i in range(20)]  # keys repeat in a batch
    chunks = [
        [command_entry(1, 1, encode_batch(same)), command_entry(2, 1, insert(b"x", b"1"))],
        [command_entry(3, 2, encode_batch(same[:3])),
         command_entry(4, 2, encode_batch([*same[:2], insert(b"longer-key", value)])),
         command_entry(5, 2, encode_batch([*same[:2], put_request(b"k000", b"2")])),
         command_entry(6, 2, encode_batch([insert(b"k%03d" % i, b"v%d" % i) for i in range(9)]))],
    ]

    def run(path, columns: bool):
        if not columns:
            monkeypatch.setattr("dengine.storage.file_state_machine.batch_inserts",
                                lambda cmd: None)
        sm = FileStateMachine(path)
        results = [[(r.index, r.succeeded, r.revision) for r in sm.apply_chunk(c)]
                   for c in chunks]
        state = sm.read(store_state)
        sm.close()
        monkeypatch.undo()
        with open(os.path.join(path, wal_name(0)), "rb") as f:
            return results, state, f.read()

    assert run(str(tmp_path / "columns"), True) == run(str(tmp_path / "generic"), False)
    again = FileStateMachine(tmp_path / "columns")
    assert again.read(store_state) == run(str(tmp_path / "generic2"), False)[1]
