"""The checks etcd makes before proposing a request (kv/etcd_check.py): etcd's codes and
messages (etcd 3.4's v3rpc/key.go; tests/kv/test_mvcc_vs_etcd.py compares with etcd)."""

from __future__ import annotations

import pytest

from dengine.kv import etcd_check as ec
from dengine.kv.etcd_check import KvError
from dengine.proto.etcd import rpc_pb2 as pb


def _put(key: bytes, **kw: object) -> pb.RequestOp:
    return pb.RequestOp(request_put=pb.PutRequest(key=key, **kw))  # type: ignore[arg-type]


def _del(key: bytes, end: bytes = b"") -> pb.RequestOp:
    return pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key, range_end=end))


def _rng(key: bytes, **kw: object) -> pb.RequestOp:
    return pb.RequestOp(request_range=pb.RangeRequest(key=key, **kw))  # type: ignore[arg-type]


def _txn(success=(), failure=(), compare=()) -> pb.TxnRequest:  # type: ignore[no-untyped-def]
    return pb.TxnRequest(success=list(success), failure=list(failure), compare=list(compare))


def _error(fn, *args) -> KvError:  # type: ignore[no-untyped-def]
    with pytest.raises(KvError) as info:
        fn(*args)
    return info.value


def test_empty_keys_are_refused_everywhere() -> None:
    want = KvError("INVALID_ARGUMENT", "etcdserver: key is not provided")
    assert _error(ec.check_range, pb.RangeRequest()) == want
    assert _error(ec.check_put, pb.PutRequest(value=b"v")) == want
    assert _error(ec.check_delete_range, pb.DeleteRangeRequest(range_end=b"z")) == want
    assert _error(ec.check_txn, _txn(compare=[pb.Compare()])) == want
    assert _error(ec.check_txn, _txn(failure=[_rng(b"")])) == want
    assert _error(ec.check_txn, _txn([pb.RequestOp(request_txn=_txn([_put(b"")]))])) == want


def test_put_flags() -> None:
    assert _error(ec.check_put, pb.PutRequest(key=b"k", value=b"v", ignore_value=True)) == (
        KvError("INVALID_ARGUMENT", "etcdserver: value is provided"))
    assert _error(ec.check_put, pb.PutRequest(key=b"k", lease=1, ignore_lease=True)) == (
        KvError("INVALID_ARGUMENT", "etcdserver: lease is provided"))
    ec.check_put(pb.PutRequest(key=b"k", ignore_value=True, ignore_lease=True))


def test_txn_op_count_limit() -> None:
    too_many = KvError("INVALID_ARGUMENT", "etcdserver: too many operations in txn request")
    ec.check_txn(_txn([_put(b"k%d" % i) for i in range(128)]))
    assert _error(ec.check_txn, _txn([_put(b"k%d" % i) for i in range(129)])) == too_many
    assert _error(ec.check_txn, _txn(compare=[pb.Compare(key=b"k")] * 129)) == too_many
    assert _error(ec.check_txn, _txn(failure=[_rng(b"k")] * 3), 2) == too_many
    # a nested txn gets what its parent leaves: 128 - 100
    nested = pb.RequestOp(request_txn=_txn([_put(b"n%d" % i) for i in range(29)]))
    assert _error(ec.check_txn, _txn([_put(b"k%d" % i) for i in range(99)] + [nested])) == (
        too_many)
    nested = pb.RequestOp(request_txn=_txn([_put(b"n%d" % i) for i in range(28)]))
    ec.check_txn(_txn([_put(b"k%d" % i) for i in range(99)] + [nested]))


@pytest.mark.parametrize("ops", [
    [_put(b"k"), _put(b"k")],
    [_put(b"k"), _del(b"k")],
    [_del(b"a", b"z"), _put(b"k")],
    [_put(b"k"), pb.RequestOp(request_txn=_txn([_put(b"k")]))],
    [_del(b"k"), pb.RequestOp(request_txn=_txn(failure=[_put(b"k")]))],
    [pb.RequestOp(request_txn=_txn([_put(b"k")])),
     pb.RequestOp(request_txn=_txn(failure=[_put(b"k")]))],
])
def test_duplicate_keys(ops: list[pb.RequestOp]) -> None:
    dup = KvError("INVALID_ARGUMENT", "etcdserver: duplicate key given in txn request")
    assert _error(ec.check_txn, _txn(ops)) == dup
    assert _error(ec.check_txn, _txn(failure=ops)) == dup


@pytest.mark.parametrize("ops", [
    [_put(b"k"), _put(b"l"), _del(b"a", b"k"), _del(b"l\x00", b"z")],
    [_del(b"k"), _del(b"k")],
    [_put(b"k"), _del(b"a", b"\x00")],  # etcd compares "\0" as a string: covers nothing
    [_put(b"k"), _rng(b"k"), _rng(b"k")],
    [pb.RequestOp(request_txn=_txn([_put(b"k")], [_put(b"k")]))],  # one branch runs
])
def test_not_duplicates(ops: list[pb.RequestOp]) -> None:
    ec.check_txn(_txn(ops, ops))


def test_empty_request_op_is_etcds_key_not_found() -> None:
    assert _error(ec.check_txn, _txn([pb.RequestOp()])) == KvError(
        "INVALID_ARGUMENT", "etcdserver: key not found")


def test_enums_outside_etcds_are_refused_clearly() -> None:
    for req in (pb.RangeRequest(key=b"k", sort_order=7),
                pb.RangeRequest(key=b"k", sort_target=9)):
        assert _error(ec.check_range, req).grpc_code == "INVALID_ARGUMENT"
        assert _error(ec.check_txn, _txn([pb.RequestOp(request_range=req)])).message.startswith(
            "dengine: unknown sort")
    for c in (pb.Compare(key=b"k", target=5), pb.Compare(key=b"k", result=4)):
        assert _error(ec.check_txn, _txn(compare=[c])).message.startswith(
            "dengine: unknown compare")


def test_request_size() -> None:
    ec.check_request_size(1536 * 1024)
    assert _error(ec.check_request_size, 1536 * 1024 + 1) == KvError(
        "INVALID_ARGUMENT", "etcdserver: request is too large")
    assert _error(ec.check_request_size, 11, 10).message == "etcdserver: request is too large"


def test_read_only_and_serializable_txns() -> None:
    assert ec.is_txn_readonly(_txn([_rng(b"a")], [_rng(b"b")]))
    assert ec.is_txn_readonly(_txn())
    assert not ec.is_txn_readonly(_txn([_rng(b"a")], [_put(b"b")]))
    assert not ec.is_txn_readonly(_txn([pb.RequestOp(request_txn=_txn())]))
    assert ec.is_txn_serializable(_txn([_rng(b"a", serializable=True)]))
    assert not ec.is_txn_serializable(_txn([_rng(b"a", serializable=True)], [_rng(b"b")]))
