"""etcd's transactions on the MVCC store (its `applyTxn`, `compareToPath`,
`checkRequests` and `compareKV`), as functions of the `MvccStore` they run on.

A txn's compares (its own and its nested txns') are evaluated on the state before the
txn, then the checks of the taken path, then its ops in order; one revision for all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dengine.kv.etcd_check import compacted, future_revision, key_not_found, lease_not_found
from dengine.kv.packed import META_SIZE, unpack_meta
from dengine.kv.packed import range_end as _range_end
from dengine.proto.etcd import rpc_pb2 as pb

if TYPE_CHECKING:
    from dengine.kv.mvcc import MvccStore


def run_txn(store: MvccStore, req: pb.TxnRequest) -> pb.TxnResponse:
    """etcd's Txn: compares (this and nested txns') on the state before the txn, the
    checks of the taken path, then its ops in order; one revision for all."""
    path = _compare_path(store, req)
    first_rev = store.compact_revision
    begin = store.revision
    _check_path(store, req, path, begin, first_rev, "request_put")
    _check_path(store, req, path, begin, first_rev, "request_range")
    resp = pb.TxnResponse()
    changed = _run_txn(store, req, path, begin, resp, False)[1]
    store.revision = begin + 1 if changed else begin
    resp.header.revision = store.revision
    return resp


def _compare_path(store: MvccStore, req: pb.TxnRequest) -> list[bool]:
    """etcd's compareToPath: the branch taken by this txn, then by each nested txn of
    that branch (depth first), all compared on the current state."""
    ok = all(_compare(store, c) for c in req.compare)
    path = [ok]
    for op in req.success if ok else req.failure:
        if op.WhichOneof("request") == "request_txn":
            path.extend(_compare_path(store, op.request_txn))
    return path


def _compare(store: MvccStore, c: pb.Compare) -> bool:
    if c.range_end:
        items = store._items_at(c.key, _range_end(c.range_end), store.revision)
    else:
        packed = store._data.get(c.key)
        items = [] if packed is None else [(c.key, packed)]
    target = c.target
    if not items:
        if target == pb.Compare.VALUE:
            return False  # a missing value compares with nothing
        return _compare_kv(c, None)
    return all(_compare_kv(c, packed) for _, packed in items)


def _check_path(store: MvccStore, req: pb.TxnRequest, path: list[bool], begin: int,
                first_rev: int, kind: str) -> int:
    """etcd's checkRequests with checkRequestPut (kind "request_put") or
    checkRequestRange ("request_range") on the taken path, on the state before the
    txn. Returns the nested txns walked."""
    walked = 0
    for op in req.success if path[0] else req.failure:
        which = op.WhichOneof("request")
        if which == "request_txn":
            n = _check_path(store, op.request_txn, path[1:], begin, first_rev, kind)
            walked += n + 1
            path = path[n + 1:]
        elif which != kind:
            continue
        elif which == "request_put":
            put = op.request_put
            if (put.ignore_value or put.ignore_lease) and put.key not in store._data:
                raise key_not_found()
            if not store._lease_exists(put.lease):
                raise lease_not_found()
        elif which == "request_range":
            rev = op.request_range.revision
            if rev > begin:
                raise future_revision()
            if rev != 0 and rev < first_rev:
                raise compacted()
    return walked


def _run_txn(store: MvccStore, req: pb.TxnRequest, path: list[bool], begin: int,
             resp: pb.TxnResponse, changed: bool) -> tuple[int, bool]:
    """etcd's applyTxn: run the taken branch into `resp`; returns (nested txns
    walked, whether any key changed so far)."""
    succeeded = path[0]
    resp.succeeded = succeeded
    walked = 0
    responses = resp.responses
    for op in req.success if succeeded else req.failure:
        which = op.WhichOneof("request")
        out = responses.add()
        if which == "request_range":
            out.response_range.CopyFrom(
                store._range(op.request_range, begin + 1 if changed else begin))
        elif which == "request_put":
            out.response_put.CopyFrom(store._put(op.request_put, begin + 1))
            changed = True
        elif which == "request_delete_range":
            sub = store._delete_range(op.request_delete_range, begin, changed)
            out.response_delete_range.CopyFrom(sub)
            changed = changed or sub.deleted > 0
        elif which == "request_txn":
            nested = out.response_txn
            nested.header.SetInParent()  # etcd leaves a nested txn's header empty
            n, changed = _run_txn(store, op.request_txn, path[1:], begin, nested, changed)
            walked += n + 1
            path = path[n + 1:]
    return walked, changed


def _compare_kv(c: pb.Compare, packed: bytes | None) -> bool:
    """etcd's compareKV; `packed` None is etcd's zero KeyValue (a missing key)."""
    target = c.target
    union = c.WhichOneof("target_union")
    result: int
    if target == pb.Compare.VALUE:
        mine = b"" if packed is None else packed[META_SIZE:]
        theirs = c.value if union == "value" else b""
        result = (mine > theirs) - (mine < theirs)
    else:
        meta = (0, 0, 0, 0) if packed is None else unpack_meta(packed)
        if target == pb.Compare.CREATE:
            mine_i, theirs_i = meta[0], c.create_revision if union == "create_revision" else 0
        elif target == pb.Compare.MOD:
            mine_i, theirs_i = meta[1], c.mod_revision if union == "mod_revision" else 0
        elif target == pb.Compare.VERSION:
            mine_i, theirs_i = meta[2], c.version if union == "version" else 0
        elif target == pb.Compare.LEASE:
            mine_i, theirs_i = meta[3], c.lease if union == "lease" else 0
        else:
            mine_i = theirs_i = 0  # an unknown target compares equal (etcd)
        result = (mine_i > theirs_i) - (mine_i < theirs_i)
    cmp = c.result
    if cmp == pb.Compare.EQUAL:
        return result == 0
    if cmp == pb.Compare.NOT_EQUAL:
        return result != 0
    if cmp == pb.Compare.GREATER:
        return result > 0
    if cmp == pb.Compare.LESS:
        return result < 0
    return True  # an unknown result holds (etcd)
