"""WAL format 3: one record per chunk, etcd requests recorded as sent; older formats refused."""

from __future__ import annotations

import pytest
from storage_helpers import (
    cas_request,
    command_entry,
    compaction_request,
    delete,
    delete_range_request,
    insert,
    noop_entry,
    put_request,
    store_state,
)

from dengine.errors import CorruptionError
from dengine.kv.codec import OP_COMPACTION, OP_DELETE_RANGE, OP_PUT, OP_TXN, decode_entry
from dengine.storage import FileStateMachine
from dengine.storage.file_state_machine import WAL_OP, decode_wal_ops, encode_wal_ops, wal_name
from dengine.storage.records import HEADER, MAGIC_WAL, frame, scan
from dengine.storage.state_machine import OP_INSERT, OP_LAST_APPLIED, OP_NOOP


def wal_ops(path: str) -> tuple[int, list[list[tuple]]]:
    with open(path, "rb") as f:
        found = scan(f.read(), path, MAGIC_WAL)
    return found.version, [
        decode_wal_ops(r, path, o) for r, o in zip(found.records, found.offsets, strict=True)
    ]


def test_a_chunk_is_one_record(tmp_path):
    sm = FileStateMachine(tmp_path / "sm")
    sm.apply_chunk([command_entry(i, 2, insert(b"k%d" % i, b"v")) for i in range(1, 51)])
    sm.apply_chunk([noop_entry(51, 2), command_entry(52, 2, delete(b"k1"))])
    sm.close()
    version, ops = wal_ops(str(tmp_path / "sm" / wal_name(0)))
    assert version == 7 and len(ops) == 2
    assert [op[0] for op in ops[0]] == list(range(1, 51))
    assert [(op[0], op[2]) for op in ops[1]] == [(51, OP_NOOP), (52, 2)]


def test_wal_ops_round_trip_and_bad_lengths_are_corruption():
    ops = [(7, 1, OP_INSERT, b"key", b"value"), (8, 1, OP_LAST_APPLIED, b"", b"")]
    payload = encode_wal_ops(ops)
    assert decode_wal_ops(payload, "wal", 8) == ops
    for bad in (payload[:-1], payload + b"x", b""):
        with pytest.raises(CorruptionError):
            decode_wal_ops(bad, "wal", 8)
    assert WAL_OP.size == 25


def test_etcd_requests_are_recorded_as_sent_and_executed_again_on_replay(tmp_path):
    commands = [
        insert(b"a", b"1"), put_request(b"a", b"2", prev_kv=True), cas_request(b"a", 2, b"3"),
        cas_request(b"a", 9, b"lost"), delete_range_request(b"a", b"b", prev_kv=True),
        put_request(b"b", b"", ignore_value=True),  # fails: key not found, changes nothing
        put_request(b"b", b"4"), compaction_request(4), compaction_request(2),
    ]
    entries = [command_entry(i, 1, c) for i, c in enumerate(commands, start=1)]
    sm = FileStateMachine(tmp_path / "sm")
    results = sm.apply_chunk(entries[:4]) + sm.apply_chunk(entries[4:])
    assert [(r.succeeded, r.revision) for r in results] == [
        (True, 2), (True, 3), (True, 4), (True, 4), (True, 5), (False, 5), (True, 6), (True, 6),
        (False, 6),
    ]
    assert results[2].response.succeeded and not results[3].response.succeeded
    assert results[4].response.deleted == 1 and results[4].response.prev_kvs[0].value == b"3"
    before = sm.read(store_state)
    sm.close()
    _, ops = wal_ops(str(tmp_path / "sm" / wal_name(0)))
    recorded = [(op, key, value) for chunk in ops for _, _, op, key, value in chunk]
    assert recorded == [decode_entry(e) for e in entries]
    assert [op for op, _, _ in recorded[1:]] == [
        OP_PUT, OP_TXN, OP_TXN, OP_DELETE_RANGE, OP_PUT, OP_PUT, OP_COMPACTION, OP_COMPACTION
    ]
    again = FileStateMachine(tmp_path / "sm")
    assert again.read(store_state) == before and before[:2] == (6, 4)
    assert again.items() == {b"b": b"4"}


def write_wal(path, version: int) -> None:
    with open(path, "wb") as f:
        f.write(HEADER.pack(MAGIC_WAL, version, 0)
                + frame(encode_wal_ops([(1, 1, OP_NOOP, b"", b"")])))


def test_a_wal_written_before_revisions_is_refused_naming_both_formats(tmp_path):
    directory = tmp_path / "sm"
    directory.mkdir()
    write_wal(directory / wal_name(0), 2)
    with pytest.raises(CorruptionError, match=r"unsupported format version 2 \(this release "
                                              r"reads 3, 4, 5, 6, 7\): written before revisions"):
        FileStateMachine(directory)


def test_unknown_wal_version_is_refused(tmp_path):
    directory = tmp_path / "sm"
    directory.mkdir()
    write_wal(directory / wal_name(0), 8)
    with pytest.raises(CorruptionError, match="unsupported format version 8") as raised:
        FileStateMachine(directory)
    assert "before revisions" not in str(raised.value)


def test_stamped_requests_are_recorded_with_their_auth_info_and_judged_again_on_replay(
        tmp_path):
    """WAL format 6: an etcd request stamped with its user and auth revision (key = the
    encoded AuthInfo) replays to the same answer: refused at an old auth revision."""
    from dengine.kv.auth import hash_password
    from dengine.kv.codec import OP_AUTH, encode_request, stamp_request
    from dengine.proto import AuthInfo
    from dengine.proto.auth_pb2 import AuthCommand
    from dengine.proto.etcd import rpc_pb2 as pb

    def auth(user: str = "", **request: object) -> bytes:
        return encode_request(OP_AUTH, AuthCommand(user=user, **request).SerializeToString())

    def stamped_put(key: bytes, revision: int) -> bytes:
        return stamp_request(
            encode_request(OP_PUT, pb.PutRequest(key=key, value=b"v").SerializeToString()),
            AuthInfo(username="root", revision=revision).SerializeToString())

    password = hash_password("pw", b"salt-salt-salt-1")
    commands = [
        auth(user_add=pb.AuthUserAddRequest(name="root", password=password)),
        auth(user_grant_role=pb.AuthUserGrantRoleRequest(user="root", role="root")),
        auth(auth_enable=pb.AuthEnableRequest()),  # auth revision 3
        stamped_put(b"a", 3),
        auth("root", role_add=pb.AuthRoleAddRequest(name="r")),  # 4
        stamped_put(b"b", 3),  # checked before the role add: refused
        stamped_put(b"c", 4),
    ]
    entries = [command_entry(i, 1, c) for i, c in enumerate(commands, start=1)]
    sm = FileStateMachine(tmp_path / "sm")
    results = sm.apply_chunk(entries[:4]) + sm.apply_chunk(entries[4:])
    assert [r.succeeded for r in results[3:]] == [True, True, False, True]
    assert results[5].response.message == "etcdserver: revision of auth store is old"
    before = sm.read(store_state)
    sm.close()
    _, ops = wal_ops(str(tmp_path / "sm" / wal_name(0)))
    recorded = [(op, key, value) for chunk in ops for _, _, op, key, value in chunk]
    assert recorded[5][1] == AuthInfo(username="root", revision=3).SerializeToString()
    again = FileStateMachine(tmp_path / "sm")
    assert again.read(store_state) == before
    assert sorted(again.items()) == [b"a", b"c"]


def test_a_wal_of_format_5_is_still_read(tmp_path):
    directory = tmp_path / "sm"
    directory.mkdir()
    write_wal(directory / wal_name(0), 5)
    FileStateMachine(directory).close()
