"""dengine.kv.ops: the etcd requests the Python API builds, and the results it reads back."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from dataclasses import FrozenInstanceError

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dengine import Compare, Op
from dengine.api import (
    DeleteResult,
    KeyValue,
    PutResult,
    RangeResult,
    ResponseHeader,
    TxnResult,
)
from dengine.errors import InvalidRequest
from dengine.kv import ops
from dengine.proto.etcd import kv_pb2, rpc_pb2


@pytest.mark.parametrize(("prefix", "end"), [
    (b"a", b"b"), (b"abc", b"abd"), (b"a\xff", b"b"), (b"a\xff\xff", b"b"),
    (b"\x01\xff", b"\x02"), (b"\xff", b"\0"), (b"\xff\xff", b"\0"), (b"", b"\0"),
])
def test_prefix_range_end_is_etcds(prefix: bytes, end: bytes) -> None:
    assert ops.prefix_range_end(prefix) == end


def test_key_range_forms() -> None:
    assert ops.key_range(b"k") == (b"k", b"")
    assert ops.key_range("k", "m") == (b"k", b"m")
    assert ops.key_range(b"k", prefix=True) == (b"k", b"l")
    assert ops.key_range(b"k", from_key=True) == (b"k", b"\0")
    # an empty key with prefix or from_key: every key (etcd's Go client sends "\0")
    assert ops.key_range(b"", prefix=True) == (b"\0", b"\0")
    assert ops.key_range(b"", from_key=True) == (b"\0", b"\0")
    for kwargs in ({"prefix": True, "from_key": True}, {"prefix": True, "range_end": b"z"},
                   {"from_key": True, "range_end": b"z"}):
        with pytest.raises(InvalidRequest):
            ops.key_range(b"k", **kwargs)  # type: ignore[arg-type]


def test_range_request_fields_and_bad_input() -> None:
    req = ops.range_request(b"a", b"z", limit=3, revision=7, sort_target_name="mod",
                            sort_order_name="descend", keys_only=True, count_only=True,
                            serializable=True)
    assert (req.key, req.range_end, req.limit, req.revision) == (b"a", b"z", 3, 7)
    assert req.sort_target == rpc_pb2.RangeRequest.MOD
    assert req.sort_order == rpc_pb2.RangeRequest.DESCEND
    assert req.keys_only and req.count_only and req.serializable
    for kwargs in ({"limit": -1}, {"revision": -2}, {"limit": 1.5}, {"limit": True},
                   {"sort_target_name": "size"}, {"sort_order_name": "up"}):
        with pytest.raises(InvalidRequest):
            ops.range_request(b"a", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="bytes or str"):
        ops.range_request(5)  # type: ignore[arg-type]


def test_compare_builders_make_etcd_compares() -> None:
    c = (Compare.version(b"k") == 0).to_pb()
    assert (c.target, c.result, c.key, c.WhichOneof("target_union"), c.version) == (
        rpc_pb2.Compare.VERSION, rpc_pb2.Compare.EQUAL, b"k", "version", 0)
    c = (Compare.value("k") != "x").to_pb()
    assert (c.target, c.result, c.value) == (rpc_pb2.Compare.VALUE,
                                             rpc_pb2.Compare.NOT_EQUAL, b"x")
    c = (Compare.mod_revision(b"k") < 5).to_pb()
    assert (c.target, c.result, c.mod_revision) == (rpc_pb2.Compare.MOD,
                                                   rpc_pb2.Compare.LESS, 5)
    c = (Compare.create(b"k", prefix=True) > 1).to_pb()
    assert (c.target, c.result, c.create_revision, c.range_end) == (
        rpc_pb2.Compare.CREATE, rpc_pb2.Compare.GREATER, 1, b"l")
    c = (Compare.lease(b"a", b"c") == 0).to_pb()
    assert (c.target, c.range_end, c.WhichOneof("target_union")) == (
        rpc_pb2.Compare.LEASE, b"c", "lease")


def test_compare_misuse_is_a_clear_error() -> None:
    with pytest.raises(InvalidRequest, match="bytes or str"):
        _ = Compare.value(b"k") == 5
    with pytest.raises(InvalidRequest, match="integer"):
        _ = Compare.version(b"k") == b"1"
    with pytest.raises(InvalidRequest, match="not <="):
        _ = Compare.version(b"k") <= 1
    with pytest.raises(InvalidRequest, match="not a bool"):
        bool(Compare.version(b"k") == 1)
    with pytest.raises(InvalidRequest, match="Compare"):
        ops.txn_request([True], [])  # type: ignore[list-item]
    with pytest.raises(InvalidRequest, match="Op"):
        ops.txn_request([], [b"put"])  # type: ignore[list-item]


def test_op_builders_and_nested_txn() -> None:
    req = ops.txn_request(
        [Compare.version(b"k") == 0],
        [Op.put(b"k", b"v", prev_kv=True), Op.get(b"p", prefix=True, limit=2),
         Op.delete(b"a", b"c", prev_kv=True)],
        [Op.txn([Compare.value(b"k") == b"v"], [Op.delete(b"k")], [])],
    )
    assert [op.WhichOneof("request") for op in req.success] == [
        "request_put", "request_range", "request_delete_range"]
    assert req.success[0].request_put.prev_kv
    assert (req.success[1].request_range.range_end, req.success[1].request_range.limit) == (
        b"q", 2)
    nested = req.failure[0].request_txn
    assert nested.success[0].request_delete_range.key == b"k"
    assert rpc_pb2.TxnRequest.FromString(req.SerializeToString()) == req


def test_cas_request() -> None:
    absent = ops.cas_request(b"k", None, b"v")
    assert absent.compare[0].target == rpc_pb2.Compare.VERSION
    assert absent.compare[0].version == 0
    held = ops.cas_request(b"k", b"old", b"new")
    assert (held.compare[0].target, held.compare[0].value) == (rpc_pb2.Compare.VALUE, b"old")
    assert held.success[0].request_put.value == b"new" and not held.failure


def _kv(key: bytes, rev: int) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(key=key, value=b"v" + key, create_revision=rev, mod_revision=rev,
                           version=1)


def test_responses_become_results() -> None:
    header = rpc_pb2.ResponseHeader(cluster_id=7, member_id=1, revision=9, raft_term=2)
    rng = rpc_pb2.RangeResponse(header=header, kvs=[_kv(b"a", 2)], more=True, count=3)
    result = ops.range_result(rng)
    assert result == RangeResult([KeyValue(b"a", b"va", 2, 2, 1, 0)], True, 3, 9)
    assert result.header.cluster_id == 7 and result.header.raft_term == 2
    put = ops.put_result(rpc_pb2.PutResponse(header=header))
    assert put == PutResult(9, None)
    put = ops.put_result(rpc_pb2.PutResponse(header=header, prev_kv=_kv(b"a", 2)))
    assert put.prev_kv == KeyValue(b"a", b"va", 2, 2, 1, 0)
    dele = ops.delete_result(rpc_pb2.DeleteRangeResponse(header=header, deleted=1,
                                                         prev_kvs=[_kv(b"a", 2)]))
    assert dele == DeleteResult(1, [KeyValue(b"a", b"va", 2, 2, 1, 0)], 9)
    txn = ops.txn_result(rpc_pb2.TxnResponse(header=header, succeeded=True, responses=[
        rpc_pb2.ResponseOp(response_put=rpc_pb2.PutResponse(
            header=rpc_pb2.ResponseHeader(revision=9))),
        rpc_pb2.ResponseOp(response_range=rng),
        rpc_pb2.ResponseOp(response_txn=rpc_pb2.TxnResponse(succeeded=False)),
    ]))
    assert txn.succeeded and txn.revision == 9
    assert [type(r) for r in txn.responses] == [PutResult, RangeResult, TxnResult]


@given(st.binary(max_size=6), st.binary(max_size=8))
def test_prefix_range_covers_exactly_the_keys_with_the_prefix(prefix: bytes,
                                                              key: bytes) -> None:
    start, end = ops.key_range(prefix, prefix=True)
    inside = start <= key and (end == b"\0" or key < end)
    assert inside == key.startswith(prefix) or (not prefix and key == b"")


def test_etcds_revision_errors_are_their_subclasses() -> None:
    from dengine.errors import Compacted, FutureRevision, KvError, kv_error
    from dengine.kv import etcd_check

    c, f = etcd_check.compacted(), etcd_check.future_revision()
    assert isinstance(c, Compacted) and isinstance(f, FutureRevision)
    assert c == KvError("OUT_OF_RANGE", etcd_check.COMPACTED) == Compacted()
    assert f.message == "etcdserver: mvcc: required revision is a future revision"
    assert isinstance(kv_error("OUT_OF_RANGE", c.message), Compacted)
    assert type(kv_error("INVALID_ARGUMENT", "etcdserver: key not found")) is KvError


@given(st.integers(0, 2**63 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
       st.integers(0, 2**64 - 1))
def test_put_results_made_on_the_hot_path_equal_the_dataclass_ones(
        revision: int, cluster_id: int, member_id: int, term: int) -> None:
    """PutResult.with_header / of_revision skip the frozen dataclasses' __init__: what they
    make must be indistinguishable from the plain construction (fields, equality, repr,
    hash, frozenness)."""
    slow = PutResult(revision, header=ResponseHeader(cluster_id, member_id, revision, term))
    fast = PutResult.with_header(revision, cluster_id, member_id, term)
    assert fast == slow and repr(fast) == repr(slow) and hash(fast) == hash(slow)
    assert fast.header == slow.header and repr(fast.header) == repr(slow.header)
    assert hash(fast.header) == hash(slow.header)
    assert PutResult.of_revision(revision) == PutResult(revision)
    with pytest.raises(FrozenInstanceError):
        fast.header.revision = 0  # type: ignore[misc]
    # with_ids makes the header on its first read: copies and pickles made before it
    def unread() -> PutResult:
        return PutResult.with_ids(revision, (cluster_id, member_id, term))
    assert copy.deepcopy(unread()).header == slow.header
    assert pickle.loads(pickle.dumps(unread())).header == slow.header
    assert dataclasses.asdict(unread()) == dataclasses.asdict(slow)
    assert not hasattr(unread(), "heder")
