"""etcd's errors, and the checks etcd makes on a request before proposing it.

Servers (gRPC, native, the embedded engine) call these before a request goes to the log;
they raise KvError (dengine.errors, re-exported here) with etcd's gRPC code and message
(etcd 3.4's v3rpc/key.go and rpctypes). Checks that depend on the state (compacted or
future revisions, a missing key for ignore_value, an unknown lease) are the store's, at
apply (kv/mvcc.py).

Where etcd accepts a request that makes no sense and then crashes or answers nonsense
(a sort target or order, a compare target or result outside its enums), dengine refuses
it here with a clear InvalidArgument instead. Other odd input etcd answers without error
is answered as etcd does: a negative limit is no limit, a range_end below the key is an
empty range.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.protobuf.message import DecodeError

from dengine.errors import Compacted, FutureRevision, LeaseNotFound
from dengine.errors import KvError as KvError  # re-exported: the one etcd error class
from dengine.kv.codec import (
    OP_COMPACTION,
    OP_DELETE_RANGE,
    OP_LEASE_GRANT,
    OP_LEASE_REVOKE,
    OP_PUT,
    OP_TXN,
)
from dengine.proto.etcd import rpc_pb2 as pb

DEFAULT_MAX_TXN_OPS = 128  # etcd's --max-txn-ops
DEFAULT_MAX_REQUEST_BYTES = 1536 * 1024  # etcd's --max-request-bytes (1.5 MiB)


# etcd's messages (rpctypes), the ones the KV API can give.
EMPTY_KEY = "etcdserver: key is not provided"
KEY_NOT_FOUND = "etcdserver: key not found"
VALUE_PROVIDED = "etcdserver: value is provided"
LEASE_PROVIDED = "etcdserver: lease is provided"
TOO_MANY_OPS = "etcdserver: too many operations in txn request"
DUPLICATE_KEY = "etcdserver: duplicate key given in txn request"
COMPACTED = "etcdserver: mvcc: required revision has been compacted"
FUTURE_REV = "etcdserver: mvcc: required revision is a future revision"
LEASE_NOT_FOUND = "etcdserver: requested lease not found"
REQUEST_TOO_LARGE = "etcdserver: request is too large"
LEASE_EXIST = "etcdserver: lease already exists"
LEASE_TTL_TOO_LARGE = "etcdserver: too large lease TTL"
MAX_LEASE_TTL = 9_000_000_000  # etcd's lease.MaxLeaseTTL (seconds)
TOO_MANY_REQUESTS = "etcdserver: too many requests"


def invalid(message: str) -> KvError:
    return KvError("INVALID_ARGUMENT", message)


def response_too_large(max_bytes: int) -> KvError:
    """A read whose answer would pass the node's max_response_bytes (etcd has no such
    bound below gRPC's 2 GiB; an unbounded answer built on the node's event loop held
    it for tens of seconds and cost it the lead)."""
    return KvError("RESOURCE_EXHAUSTED",
                   f"dengine: the response would pass max_response_bytes ({max_bytes} "
                   "bytes); read fewer keys at a time (limit, keys_only, count_only)")


def compacted() -> KvError:
    return Compacted("OUT_OF_RANGE", COMPACTED)


def future_revision() -> KvError:
    return FutureRevision("OUT_OF_RANGE", FUTURE_REV)


def key_not_found() -> KvError:
    return invalid(KEY_NOT_FOUND)


def lease_not_found() -> KvError:
    return LeaseNotFound("NOT_FOUND", LEASE_NOT_FOUND)


def lease_exists() -> KvError:
    return KvError("FAILED_PRECONDITION", LEASE_EXIST)


def check_lease_grant(req: pb.LeaseGrantRequest) -> None:
    """etcd's lessor.Grant check that does not depend on the state."""
    if req.TTL > MAX_LEASE_TTL:
        raise KvError("OUT_OF_RANGE", LEASE_TTL_TOO_LARGE)


def check_request_size(size: int, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
    """etcd refuses a request whose encoding is over --max-request-bytes."""
    if size > max_request_bytes:
        raise invalid(REQUEST_TOO_LARGE)


_SORT_ORDERS = frozenset(pb.RangeRequest.SortOrder.values())
_SORT_TARGETS = frozenset(pb.RangeRequest.SortTarget.values())
_COMPARE_RESULTS = frozenset(pb.Compare.CompareResult.values())
_COMPARE_TARGETS = frozenset(pb.Compare.CompareTarget.values())


def check_range(req: pb.RangeRequest) -> None:
    if not req.key:
        raise invalid(EMPTY_KEY)
    if req.sort_order not in _SORT_ORDERS:
        raise invalid(f"dengine: unknown sort order {req.sort_order}")
    if req.sort_target not in _SORT_TARGETS:
        raise invalid(f"dengine: unknown sort target {req.sort_target}")


def check_put(req: pb.PutRequest) -> None:
    if not req.key:
        raise invalid(EMPTY_KEY)
    if req.ignore_value and req.value:
        raise invalid(VALUE_PROVIDED)
    if req.ignore_lease and req.lease:
        raise invalid(LEASE_PROVIDED)


def check_delete_range(req: pb.DeleteRangeRequest) -> None:
    if not req.key:
        raise invalid(EMPTY_KEY)


def check_txn(req: pb.TxnRequest, max_txn_ops: int = DEFAULT_MAX_TXN_OPS) -> None:
    """etcd's checkTxnRequest then checkIntervals (success, then failure)."""
    _check_txn_ops(req, max_txn_ops)
    _check_intervals(req.success)
    _check_intervals(req.failure)


def _check_txn_ops(req: pb.TxnRequest, max_txn_ops: int) -> None:
    ops = max(len(req.compare), len(req.success), len(req.failure))
    if ops > max_txn_ops:
        raise invalid(TOO_MANY_OPS)
    for c in req.compare:
        if not c.key:
            raise invalid(EMPTY_KEY)
        if c.result not in _COMPARE_RESULTS:
            raise invalid(f"dengine: unknown compare result {c.result}")
        if c.target not in _COMPARE_TARGETS:
            raise invalid(f"dengine: unknown compare target {c.target}")
    for branch in (req.success, req.failure):
        for op in branch:
            which = op.WhichOneof("request")
            if which == "request_range":
                check_range(op.request_range)
            elif which == "request_put":
                check_put(op.request_put)
            elif which == "request_delete_range":
                check_delete_range(op.request_delete_range)
            elif which == "request_txn":
                # etcd gives a nested txn what its parent leaves of the limit
                _check_txn_ops(op.request_txn, max_txn_ops - ops)
            else:
                raise invalid(KEY_NOT_FOUND)  # an empty RequestOp (etcd's answer)


class _Dels:
    """etcd's interval tree of deleted ranges, for its point queries: a delete of one
    key is the point [key, key + "\\0"); of a range, [key, range_end) compared as strings
    (so a range_end of "\\0" covers nothing, as in etcd)."""

    def __init__(self) -> None:
        self.points: set[bytes] = set()
        self.ranges: list[tuple[bytes, bytes]] = []

    def covers(self, key: bytes) -> bool:
        return key in self.points or any(lo <= key < hi for lo, hi in self.ranges)

    def union(self, other: _Dels) -> None:
        self.points |= other.points
        self.ranges.extend(other.ranges)


def _check_intervals(ops: Iterable[pb.RequestOp]) -> tuple[set[bytes], _Dels]:
    """etcd's checkIntervals: no key put twice, nor put and deleted, in one branch
    (nested txns included; a key put in both branches of a nested txn is fine)."""
    dels = _Dels()
    for op in ops:
        if op.WhichOneof("request") == "request_delete_range":
            d = op.request_delete_range
            if d.range_end:
                dels.ranges.append((d.key, d.range_end))
            else:
                dels.points.add(d.key)
    puts: set[bytes] = set()
    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        puts_then, dels_then = _check_intervals(op.request_txn.success)
        puts_else, dels_else = _check_intervals(op.request_txn.failure)
        for k in puts_then:
            if k in puts or dels.covers(k):
                raise invalid(DUPLICATE_KEY)
            puts.add(k)
        for k in puts_else:
            if (k in puts and k not in puts_then) or dels.covers(k):
                raise invalid(DUPLICATE_KEY)
            puts.add(k)
        dels.union(dels_then)
        dels.union(dels_else)
    for op in ops:
        if op.WhichOneof("request") != "request_put":
            continue
        k = op.request_put.key
        if k in puts or dels.covers(k):
            raise invalid(DUPLICATE_KEY)
        puts.add(k)
    return puts, dels


_ENCODED: dict[int, Any] = {
    OP_PUT: pb.PutRequest, OP_DELETE_RANGE: pb.DeleteRangeRequest, OP_TXN: pb.TxnRequest,
    OP_COMPACTION: pb.CompactionRequest, OP_LEASE_GRANT: pb.LeaseGrantRequest,
    OP_LEASE_REVOKE: pb.LeaseRevokeRequest,
}


def check_encoded(op: int, data: bytes, max_txn_ops: int = DEFAULT_MAX_TXN_OPS,
                  max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES) -> None:
    """An etcd request as a WriteCommand carries it (codec ops OP_PUT..OP_LEASE_REVOKE,
    its bytes as the client sent them): decodable, and passing etcd's checks."""
    check_request_size(len(data), max_request_bytes)
    cls = _ENCODED[op]
    try:
        req = cls.FromString(data)
    except DecodeError as e:
        raise invalid(f"dengine: malformed {cls.__name__}: {e}") from None
    if op == OP_PUT:
        check_put(req)
    elif op == OP_DELETE_RANGE:
        check_delete_range(req)
    elif op == OP_TXN:
        check_txn(req, max_txn_ops)
    elif op == OP_LEASE_GRANT:
        check_lease_grant(req)


def is_txn_readonly(req: pb.TxnRequest) -> bool:
    """etcd serves a txn whose ops (both branches) are all ranges as a read, without a
    log entry: `MvccStore.read_txn`."""
    return all(op.WhichOneof("request") == "request_range"
               for branch in (req.success, req.failure) for op in branch)


def txn_ranges(req: pb.TxnRequest) -> pb.TxnRequest | None:
    """The ranges of a txn that writes, of both branches and nested txns, as one
    read-only txn (None when it has none). Its answer is built where it applies, on every
    member, where no bound may apply (replicas apply alike): this probe, read with the
    node's bound before proposing, refuses a txn whose ranges would answer too much."""
    probe = pb.TxnRequest()
    pending = [req]
    while pending:
        txn = pending.pop()
        for branch in (txn.success, txn.failure):
            for op in branch:
                kind = op.WhichOneof("request")
                if kind == "request_range":
                    probe.success.add().request_range.CopyFrom(op.request_range)
                elif kind == "request_txn":
                    pending.append(op.request_txn)
    return probe if probe.success else None


def is_txn_serializable(req: pb.TxnRequest) -> bool:
    """A read-only txn whose ranges are all serializable is served from the member's own
    state (etcd's isTxnSerializable)."""
    return all(op.request_range.serializable
               for branch in (req.success, req.failure) for op in branch
               if op.WhichOneof("request") == "request_range")
