"""MvccStore: etcd 3.4's rules one by one (the model test and the test against etcd cover
their combinations)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine.kv.codec import (
    OP_COMPACTION,
    OP_CONFIG,
    OP_DELETE,
    OP_DELETE_RANGE,
    OP_INSERT,
    OP_NOOP,
    OP_PUT,
    OP_REJECTED,
    OP_TXN,
)
from dengine.kv.etcd_check import KvError
from dengine.kv.mvcc import Change, MvccStore
from dengine.proto import Membership
from dengine.proto.etcd import rpc_pb2 as pb

COMPACTED = KvError("OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted")
FUTURE = KvError("OUT_OF_RANGE", "etcdserver: mvcc: required revision is a future revision")


def put(store: MvccStore, key: bytes, value: bytes = b"v", **kw: object) -> object:
    req = pb.PutRequest(key=key, value=value, **kw)  # type: ignore[arg-type]
    return store.apply(OP_PUT, b"", req.SerializeToString()).response


def delete(store: MvccStore, key: bytes, end: bytes = b"", prev_kv: bool = False) -> object:
    req = pb.DeleteRangeRequest(key=key, range_end=end, prev_kv=prev_kv)
    return store.apply(OP_DELETE_RANGE, b"", req.SerializeToString()).response


def txn(store: MvccStore, req: pb.TxnRequest) -> object:
    return store.apply(OP_TXN, b"", req.SerializeToString()).response


def compact(store: MvccStore, rev: int) -> object:
    return store.apply(OP_COMPACTION, b"",
                       pb.CompactionRequest(revision=rev).SerializeToString()).response


def keys(resp: pb.RangeResponse) -> list[bytes]:
    return [kv.key for kv in resp.kvs]


def test_revisions_versions_and_recreation() -> None:
    s = MvccStore()
    assert s.revision == 1
    assert put(s, b"k").header.revision == 2  # type: ignore[attr-defined]
    put(s, b"k", b"w")
    kv = s.get_kv(b"k")
    assert (kv.create_revision, kv.mod_revision, kv.version, kv.value) == (2, 3, 2, b"w")
    assert delete(s, b"k").deleted == 1 and s.revision == 4  # type: ignore[attr-defined]
    resp = delete(s, b"k")
    assert (resp.deleted, resp.header.revision, s.revision) == (0, 4, 4)  # type: ignore[attr-defined]
    put(s, b"k")
    kv = s.get_kv(b"k")
    assert (kv.create_revision, kv.mod_revision, kv.version) == (5, 5, 1)
    assert s.get_kv(b"k", 3).version == 2 and s.get_kv(b"k", 4) is None
    assert s.get(b"k") == b"v" and s.get(b"nope") is None


def test_plain_commands() -> None:
    s = MvccStore()
    assert s.apply(OP_INSERT, b"a", b"1") == (2, None)
    assert s.apply(OP_DELETE, b"zz", b"") == (2, None)  # nothing deleted: same revision
    assert s.apply(OP_DELETE, b"a", b"") == (3, None)
    for op, value in ((OP_NOOP, b""), (OP_CONFIG, Membership().SerializeToString()),
                      (5, b"x"), (6, b"x")):
        assert s.apply(op, b"", value) == (3, None)
    applied = s.apply(OP_REJECTED, b"", b"")
    assert applied.revision == 3 and isinstance(applied.response, KvError)
    membership = Membership()
    membership.voters.add(id=1, address="a:1")
    assert s.apply_ops([(1, 1, OP_INSERT, b"b", b"2"),
                        (2, 1, OP_CONFIG, b"", membership.SerializeToString()),
                        (3, 1, OP_DELETE, b"b", b"")]) == membership
    assert s.revision == 5


def test_put_options() -> None:
    s = MvccStore()
    assert put(s, b"k", ignore_value=True) == KvError(
        "INVALID_ARGUMENT", "etcdserver: key not found")
    assert put(s, b"k", lease=5) == KvError("NOT_FOUND", "etcdserver: requested lease not found")
    assert s.revision == 1
    put(s, b"k", b"old")
    resp = put(s, b"k", b"", ignore_value=True, prev_kv=True)
    assert resp.prev_kv.value == b"old" and s.get(b"k") == b"old"  # type: ignore[attr-defined]
    assert s.get_kv(b"k").version == 2
    assert not put(s, b"new", prev_kv=True).HasField("prev_kv")  # type: ignore[attr-defined]


def test_range_rules() -> None:
    s = MvccStore()
    for k in (b"a", b"b", b"c", b"d"):
        put(s, k, k * 3)
    put(s, b"b", b"zz")  # b: version 2, mod 6
    everything = pb.RangeRequest(key=b"\x00", range_end=b"\x00")
    assert keys(s.range(everything)) == [b"a", b"b", b"c", b"d"]
    assert keys(s.range(pb.RangeRequest(key=b"c", range_end=b"a"))) == []  # end below key
    assert keys(s.range(pb.RangeRequest(key=b"b", range_end=b"\x00"))) == [b"b", b"c", b"d"]
    # a sort target without an order sorts ascending; with a limit, etcd sorts only the
    # first limit + 1 keys
    r = s.range(pb.RangeRequest(key=b"a", range_end=b"z", limit=2,
                                sort_target=pb.RangeRequest.VERSION))
    assert (keys(r), r.more, r.count) == ([b"a", b"c"], True, 4)
    r = s.range(pb.RangeRequest(key=b"a", range_end=b"z", limit=2,
                                sort_order=pb.RangeRequest.DESCEND,
                                sort_target=pb.RangeRequest.VERSION))
    assert keys(r) == [b"b", b"a"]  # ties keep key order
    # filters apply after counting
    r = s.range(pb.RangeRequest(key=b"a", range_end=b"z", min_mod_revision=5))
    assert (keys(r), r.count) == ([b"b", b"d"], 4)
    r = s.range(pb.RangeRequest(key=b"a", range_end=b"z", count_only=True, limit=1))
    assert (list(r.kvs), r.count, r.more) == ([], 4, False)
    r = s.range(pb.RangeRequest(key=b"a", range_end=b"z", keys_only=True, limit=-1))
    assert [kv.value for kv in r.kvs] == [b""] * 4 and not r.more
    # past revisions: the header says the current one
    r = s.range(pb.RangeRequest(key=b"b", revision=3))
    assert (r.kvs[0].value, r.header.revision) == (b"bbb", 6)
    with pytest.raises(KvError) as info:
        s.range(pb.RangeRequest(key=b"b", revision=7))
    assert info.value == FUTURE


def test_compaction() -> None:
    s = MvccStore()
    assert compact(s, 0).header.revision == 1  # type: ignore[attr-defined]  # as etcd's first
    assert compact(s, 0) == COMPACTED  # etcd: only the first Compact(0) succeeds
    for i in range(5):
        put(s, b"k", b"%d" % i)
    assert compact(s, 7) == FUTURE
    assert compact(s, 4).header.revision == 6  # type: ignore[attr-defined]
    assert (compact(s, 4), compact(s, 3)) == (COMPACTED, COMPACTED)
    assert [c.revision for c in s.changes()] == [5, 6]
    assert s.get_kv(b"k", 4).value == b"2"  # the compacted revision itself stays readable
    with pytest.raises(KvError) as info:
        s.get_kv(b"k", 3)
    assert info.value == COMPACTED
    assert s.range(pb.RangeRequest(key=b"k", revision=-3)).kvs[0].value == b"4"


def test_txn_semantics() -> None:
    s = MvccStore()
    put(s, b"a", b"1")
    t = pb.TxnRequest()
    t.compare.add(key=b"a", target=pb.Compare.VALUE, result=pb.Compare.EQUAL, value=b"1")
    t.compare.add(key=b"missing", target=pb.Compare.VERSION, result=pb.Compare.EQUAL, version=0)
    t.success.add().request_put.CopyFrom(pb.PutRequest(key=b"b", value=b"2"))
    t.success.add().request_range.CopyFrom(pb.RangeRequest(key=b"a", range_end=b"\x00"))
    t.success.add().request_delete_range.CopyFrom(pb.DeleteRangeRequest(key=b"a"))
    nested = t.success.add().request_txn
    # compared on the state before the txn: "a" still exists for the nested txn
    nested.compare.add(key=b"a", target=pb.Compare.CREATE, result=pb.Compare.GREATER)
    nested.success.add().request_range.CopyFrom(pb.RangeRequest(key=b"a"))
    resp = txn(s, t)
    assert resp.succeeded and resp.header.revision == 3 == s.revision  # type: ignore[attr-defined]
    r = resp.responses  # type: ignore[attr-defined]
    assert keys(r[1].response_range) == [b"a", b"b"]  # sees the txn's own put
    assert r[2].response_delete_range.deleted == 1
    assert r[3].response_txn.succeeded and list(r[3].response_txn.responses[0]
                                                 .response_range.kvs) == []
    assert r[3].response_txn.HasField("header") and r[3].response_txn.header.revision == 0
    assert [c.revision for c in s.changes()] == [2, 3, 3]
    # read-only txn: no revision; a failed compare on a missing key's value
    t = pb.TxnRequest()
    t.compare.add(key=b"zz", target=pb.Compare.VALUE, result=pb.Compare.NOT_EQUAL, value=b"")
    t.failure.add().request_range.CopyFrom(pb.RangeRequest(key=b"b"))
    resp = txn(s, t)
    assert not resp.succeeded and resp.header.revision == 3 == s.revision  # type: ignore[attr-defined]
    assert s.read_txn(t) == resp
    with pytest.raises(ValueError):
        s.read_txn(pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=b"x"))]))


def test_txn_checks_fail_the_whole_txn() -> None:
    s = MvccStore()
    t = pb.TxnRequest()
    t.success.add().request_put.CopyFrom(pb.PutRequest(key=b"k", value=b"v"))
    # the key is absent before the txn, so ignore_value fails even after the put above
    t.success.add().request_put.CopyFrom(pb.PutRequest(key=b"k", ignore_value=True))
    assert txn(s, t) == KvError("INVALID_ARGUMENT", "etcdserver: key not found")
    t = pb.TxnRequest()
    t.success.add().request_range.CopyFrom(pb.RangeRequest(key=b"k", revision=9))
    t.success.add().request_put.CopyFrom(pb.PutRequest(key=b"k", lease=3))
    assert txn(s, t) == KvError("NOT_FOUND", "etcdserver: requested lease not found")
    del t.success[1]
    assert txn(s, t) == FUTURE
    assert s.revision == 1 and list(s.changes()) == []


@settings(deadline=None)
@given(st.sampled_from([OP_PUT, OP_DELETE_RANGE, OP_TXN, OP_COMPACTION, OP_REJECTED]),
       st.binary(max_size=60))
def test_apply_never_raises(op: int, data: bytes) -> None:
    s = MvccStore()
    s.apply(OP_INSERT, b"a", b"1")
    applied = s.apply(op, b"", data)
    assert applied.revision == s.revision


_ops = st.one_of(
    st.tuples(st.just(OP_INSERT), st.sampled_from([b"a", b"b", b"c"]), st.binary(max_size=2)),
    st.tuples(st.just(OP_DELETE), st.sampled_from([b"a", b"b", b"c"]), st.just(b"")),
    st.tuples(st.just(OP_CONFIG), st.just(b""), st.just(b"")),
    st.tuples(st.just(OP_DELETE_RANGE), st.just(b""),
              st.just(pb.DeleteRangeRequest(key=b"a", range_end=b"c").SerializeToString())),
)


@given(st.lists(_ops, max_size=30))
def test_apply_ops_is_apply_op_by_op(ops: list[tuple[int, bytes, bytes]]) -> None:
    one, chunk = MvccStore(), MvccStore()
    for op, key, value in ops:
        one.apply(op, key, value)
    chunk.apply_ops([(i, 1, op, key, value) for i, (op, key, value) in enumerate(ops)])
    assert sorted(one.items_packed()) == sorted(chunk.items_packed())
    assert list(one.changes()) == list(chunk.changes()) and one.revision == chunk.revision


def test_persistence_image() -> None:
    s = MvccStore()
    for i in range(6):
        put(s, b"k%d" % (i % 3), b"%d" % i)
    delete(s, b"k1")
    compact(s, 4)
    assert [c.revision for c in s.changes_since(6)] == [7, 8]
    assert list(s.changes_since(7)) == [Change(8, b"k1", None, s_k1_before(s))]
    restored = MvccStore.restore(s.revision, s.compact_revision, s.items_packed(), s.changes())
    assert (restored.revision, restored.compact_revision) == (8, 4)
    for rev in range(4, 9):
        req = pb.RangeRequest(key=b"k", range_end=b"l", revision=rev)
        assert restored.range(req) == s.range(req)


def s_k1_before(s: MvccStore) -> bytes:
    """The packed version of k1 just before its delete at revision 8."""
    return next(c.new for c in s.changes() if c.key == b"k1" and c.revision == 6)


def test_bounded_reads_stop_before_passing_their_bytes() -> None:
    s = MvccStore()
    for i in range(4):
        put(s, b"k%d" % i, b"v" * 1000)
    every = pb.RangeRequest(key=b"k", range_end=b"l")
    assert len(s.range(every, 4 * 1100).kvs) == 4
    with pytest.raises(KvError) as info:
        s.range(every, 3 * 1100)
    assert info.value.grpc_code == "RESOURCE_EXHAUSTED"
    assert len(s.range(pb.RangeRequest(key=b"k", range_end=b"l", keys_only=True), 300).kvs) == 4
    one = pb.RequestOp(request_range=pb.RangeRequest(key=b"k0"))
    assert len(s.read_txn(pb.TxnRequest(success=[one] * 3), 3 * 1100).responses) == 3
    with pytest.raises(KvError):
        s.read_txn(pb.TxnRequest(success=[one] * 4), 3 * 1100)
    assert len(s.range(every).kvs) == 4  # unbounded again afterwards
