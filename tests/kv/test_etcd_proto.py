"""dengine's etcd protos: etcd's wire encoding, and no clash with a client library's modules.

The messages are checked against encodings written out by hand from etcd's field numbers
(what etcdctl and the Python clients send), and against aetcd's generated modules when
aetcd is installed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from dengine.proto import WriteCommand
from dengine.proto.etcd import auth_pb2, kv_pb2, rpc_pb2


def test_range_request_decodes_etcd_bytes() -> None:
    # etcdctl get foo --prefix --limit 5 --rev 7 --order DESCEND --sort-by MOD
    # --keys-only --consistency s, field by field (tag = number << 3 | wire type).
    wire = bytes.fromhex(
        "0a03666f6f"  # 1 key "foo"
        "1203666f70"  # 2 range_end "fop"
        "1805"  # 3 limit 5
        "2007"  # 4 revision 7
        "2802"  # 5 sort_order DESCEND
        "3003"  # 6 sort_target MOD
        "3801"  # 7 serializable
        "4001"  # 8 keys_only
        "4801"  # 9 count_only
        "500a"  # 10 min_mod_revision 10
        "5814"  # 11 max_mod_revision 20
        "6002"  # 12 min_create_revision 2
        "6803"  # 13 max_create_revision 3
    )
    req = rpc_pb2.RangeRequest.FromString(wire)
    assert (req.key, req.range_end, req.limit, req.revision) == (b"foo", b"fop", 5, 7)
    assert req.sort_order == rpc_pb2.RangeRequest.DESCEND
    assert req.sort_target == rpc_pb2.RangeRequest.MOD
    assert req.serializable and req.keys_only and req.count_only
    assert (req.min_mod_revision, req.max_mod_revision) == (10, 20)
    assert (req.min_create_revision, req.max_create_revision) == (2, 3)
    assert req.SerializeToString() == wire


def test_txn_request_decodes_etcd_bytes() -> None:
    # compare: mod_revision("k") < 9 over range ["k", "l"); success: put k=v with prev_kv;
    # failure: range "k".
    compare = bytes.fromhex("0802" "1002" "1a016b" "3009" "8204016c")  # range_end is field 64
    put = bytes.fromhex("0a016b" "120176" "2001")
    success = bytes.fromhex("12") + bytes([len(put)]) + put
    rng = bytes.fromhex("0a016b")
    failure = bytes.fromhex("0a") + bytes([len(rng)]) + rng
    wire = (
        b"\x0a" + bytes([len(compare)]) + compare
        + b"\x12" + bytes([len(success)]) + success
        + b"\x1a" + bytes([len(failure)]) + failure
    )
    txn = rpc_pb2.TxnRequest.FromString(wire)
    (cmp,) = txn.compare
    assert cmp.result == rpc_pb2.Compare.LESS
    assert cmp.target == rpc_pb2.Compare.MOD
    assert (cmp.key, cmp.mod_revision, cmp.range_end) == (b"k", 9, b"l")
    assert cmp.WhichOneof("target_union") == "mod_revision"
    assert txn.success[0].request_put.key == b"k"
    assert txn.success[0].request_put.prev_kv
    assert txn.failure[0].WhichOneof("request") == "request_range"
    assert txn.SerializeToString() == wire


def test_responses_encode_as_etcd() -> None:
    kv = kv_pb2.KeyValue(key=b"a", create_revision=2, mod_revision=3, version=2, value=b"x")
    assert kv.SerializeToString() == bytes.fromhex("0a0161" "1002" "1803" "2002" "2a0178")
    resp = rpc_pb2.RangeResponse(more=True, count=2)
    resp.header.revision = 5
    resp.header.cluster_id = 1
    resp.kvs.append(kv)
    wire = resp.SerializeToString()
    assert wire == bytes.fromhex("0a04" "0801" "1805" "120c") + kv.SerializeToString() + (
        bytes.fromhex("1801" "2002")
    )
    watch = rpc_pb2.WatchResponse(watch_id=-1)
    watch.events.add(type=kv_pb2.Event.DELETE).kv.key = b"a"
    assert watch.SerializeToString() == bytes.fromhex(
        "10ffffffffffffffffff01" "5a07" "0801" "1203" "0a0161"
    )
    perm = auth_pb2.Permission(permType=auth_pb2.Permission.READWRITE, key=b"a")
    assert perm.SerializeToString() == bytes.fromhex("0802" "120161")


def test_write_command_carries_request_bytes() -> None:
    put = rpc_pb2.PutRequest(key=b"k", value=b"v").SerializeToString()
    for field, number in (("put", 3), ("delete_range", 4), ("txn", 5), ("compaction", 6)):
        cmd = WriteCommand(**{field: put})
        assert cmd.SerializeToString() == bytes([number << 3 | 2, len(put)]) + put
        assert WriteCommand.FromString(cmd.SerializeToString()).WhichOneof("operation") == field


def test_loads_beside_modules_registering_etcd_packages() -> None:
    """A client library registers `etcdserverpb.*` and `mvccpb.*` in the default pool: ours
    (package dengine.etcd.*) load in the same process, in either order."""
    fake = textwrap.dedent(
        """
        from google.protobuf import descriptor_pb2, descriptor_pool
        for package, name in (("mvccpb", "KeyValue"), ("etcdserverpb", "RangeRequest")):
            fd = descriptor_pb2.FileDescriptorProto(
                name=f"client/{package}.proto", package=package, syntax="proto3")
            fd.message_type.add(name=name).field.add(
                name="key", number=1, type=12, label=1)
            descriptor_pool.Default().Add(fd)
        """
    )
    ours = "from dengine.proto.etcd import rpc_pb2; rpc_pb2.RangeRequest(key=b'k')\n"
    for script in (fake + ours, ours + fake):
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0, proc.stderr


def test_same_bytes_as_aetcd() -> None:
    aetcd_rpc = pytest.importorskip("aetcd.rpc.rpc_pb2")
    theirs = aetcd_rpc.TxnRequest()
    cmp = theirs.compare.add(result=aetcd_rpc.Compare.NOT_EQUAL,
                             target=aetcd_rpc.Compare.VALUE, key=b"k", value=b"v")
    cmp.range_end = b"\x00"
    theirs.success.add().request_range.CopyFrom(aetcd_rpc.RangeRequest(
        key=b"a", range_end=b"b", limit=3, sort_order=aetcd_rpc.RangeRequest.ASCEND,
        sort_target=aetcd_rpc.RangeRequest.VALUE, max_create_revision=4))
    theirs.failure.add().request_delete_range.CopyFrom(
        aetcd_rpc.DeleteRangeRequest(key=b"a", prev_kv=True))
    theirs.failure.add().request_txn.success.add().request_put.CopyFrom(
        aetcd_rpc.PutRequest(key=b"p", value=b"q", lease=7, ignore_lease=True))
    wire = theirs.SerializeToString()
    mine = rpc_pb2.TxnRequest.FromString(wire)
    assert mine.compare[0].value == b"v"
    assert mine.success[0].request_range.max_create_revision == 4
    assert mine.failure[1].request_txn.success[0].request_put.lease == 7
    assert mine.SerializeToString() == wire
    assert aetcd_rpc.TxnRequest.FromString(mine.SerializeToString()) == theirs

    status = rpc_pb2.StatusResponse(version="3.4.23", dbSize=5, leader=2, raftIndex=9,
                                    raftTerm=3, raftAppliedIndex=9, errors=["e"],
                                    dbSizeInUse=4, isLearner=True)
    assert aetcd_rpc.StatusResponse.FromString(status.SerializeToString()).raftAppliedIndex == 9
    members = rpc_pb2.MemberListResponse()
    members.members.add(ID=1, name="n1", peerURLs=["http://a"], clientURLs=["http://b"])
    theirs_members = aetcd_rpc.MemberListResponse.FromString(members.SerializeToString())
    assert theirs_members.members[0].clientURLs == ["http://b"]


def test_lock_and_election_messages_have_etcds_numbers() -> None:
    from dengine.proto.etcd import v3election_pb2, v3lock_pb2

    # v3lockpb.LockRequest{name: "l", lease: 0x694d}: 1 name, 2 lease
    assert v3lock_pb2.LockRequest(name=b"l", lease=0x694D).SerializeToString() == bytes.fromhex(
        "0a016c" "10cdd201")
    assert v3lock_pb2.LockResponse.FromString(bytes.fromhex("1203" "6b6579")).key == b"key"
    assert v3lock_pb2.UnlockRequest(key=b"k").SerializeToString() == bytes.fromhex("0a016b")
    # v3electionpb.CampaignRequest: 1 name, 2 lease, 3 value
    assert v3election_pb2.CampaignRequest(name=b"e", lease=1, value=b"v").SerializeToString() \
        == bytes.fromhex("0a0165" "1001" "1a0176")
    # LeaderKey: 1 name, 2 key, 3 rev, 4 lease; ProclaimRequest: 1 leader, 2 value
    key = v3election_pb2.LeaderKey(name=b"e", key=b"e/1", rev=7, lease=1)
    assert key.SerializeToString() == bytes.fromhex("0a0165" "1203652f31" "1807" "2001")
    proclaim = v3election_pb2.ProclaimRequest(leader=key, value=b"x")
    assert proclaim.SerializeToString() == b"\x0a\x0c" + key.SerializeToString() + b"\x12\x01x"
    # CampaignResponse: 1 header, 2 leader; LeaderResponse: 1 header, 2 kv (mvccpb.KeyValue)
    resp = v3election_pb2.CampaignResponse.FromString(b"\x12\x0c" + key.SerializeToString())
    assert resp.leader == key
    leader = v3election_pb2.LeaderResponse(kv=kv_pb2.KeyValue(key=b"e/1", create_revision=7))
    assert leader.SerializeToString() == bytes.fromhex("1207" "0a03652f31" "1007")
