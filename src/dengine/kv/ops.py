"""etcd requests from Python calls, and etcd responses back into dengine's result types.

Pure: the embedded `Engine`, the clients and the CLI build the same etcd request messages
(`dengine/proto/etcd/rpc.proto`) here, and read the answers the same way.

    from dengine import Compare, Op
    await client.txn(
        compare=[Compare.version(b"lock") == 0],
        success=[Op.put(b"lock", b"me")],
        failure=[Op.get(b"lock")],
    )

`Compare.<target>(key) <op> operand` builds one condition (python-etcd3's style): targets
`version`, `create_revision` (`create`), `mod_revision` (`mod`), `value`, `lease`;
operators `==`, `!=`, `<`, `>`. `Op.put`, `Op.get`, `Op.delete` and `Op.txn` build the
operations of a branch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dengine.api import (
    DeleteResult,
    Key,
    KeyValue,
    OpResult,
    PutResult,
    RangeResult,
    ResponseHeader,
    TxnResult,
)
from dengine.errors import InvalidRequest
from dengine.proto.etcd import kv_pb2, rpc_pb2

FROM_KEY_END = b"\0"
"""The range_end meaning "every key >= key" (etcd's `--from-key`)."""

SORT_TARGETS = {
    "key": rpc_pb2.RangeRequest.KEY,
    "version": rpc_pb2.RangeRequest.VERSION,
    "create": rpc_pb2.RangeRequest.CREATE,
    "mod": rpc_pb2.RangeRequest.MOD,
    "value": rpc_pb2.RangeRequest.VALUE,
}
SORT_ORDERS = {
    "none": rpc_pb2.RangeRequest.NONE,
    "ascend": rpc_pb2.RangeRequest.ASCEND,
    "descend": rpc_pb2.RangeRequest.DESCEND,
}
_SORT_ALIASES = {"create_revision": "create", "mod_revision": "mod", "modify": "mod"}


def to_bytes(data: Key | bytearray | memoryview, what: str = "key") -> bytes:
    """`data` as bytes (a str is taken as UTF-8); InvalidRequest for anything else."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8", "surrogateescape")
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise InvalidRequest(f"{what} must be bytes or str, got {type(data).__name__}")


def prefix_range_end(prefix: bytes) -> bytes:
    """The range_end covering every key that starts with `prefix`, as etcd computes it:
    the last byte below 0xff incremented, the 0xff bytes after it dropped; b"\\0" (every
    key from `prefix` on) when there is none (an empty or all-0xff prefix)."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[:i + 1])
    return FROM_KEY_END


def key_range(key: Key, range_end: Key | None = None, *, prefix: bool = False,
              from_key: bool = False) -> tuple[bytes, bytes]:
    """(key, range_end) of a request, as etcd's clients compute them.

    range_end None: `key` alone; `prefix`: every key starting with `key`; `from_key`:
    every key >= `key`. An empty key with `prefix` or `from_key` means every key (sent as
    key b"\\0", as etcd's Go client does)."""
    k = to_bytes(key)
    if prefix and from_key:
        raise InvalidRequest("prefix and from_key cannot both be set")
    if (prefix or from_key) and range_end is not None:
        raise InvalidRequest(
            f"range_end cannot be given with {'prefix' if prefix else 'from_key'}")
    if prefix:
        if not k:
            return FROM_KEY_END, FROM_KEY_END
        return k, prefix_range_end(k)
    if from_key:
        return (k or FROM_KEY_END), FROM_KEY_END
    return k, (b"" if range_end is None else to_bytes(range_end, "range_end"))


def _int(value: Any, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{what} must be an integer, got {value!r}")
    if value < minimum:
        raise InvalidRequest(f"{what} must be >= {minimum}, got {value}")
    if value >= 1 << 63:
        raise InvalidRequest(f"{what} must be below 2**63, got {value}")
    return value


def sort_target(name: str | None) -> int:
    key = (name or "key").lower()
    key = _SORT_ALIASES.get(key, key)
    if key not in SORT_TARGETS:
        raise InvalidRequest(f"unknown sort target {name!r} (expected one of: "
                             + ", ".join(SORT_TARGETS) + ")")
    return SORT_TARGETS[key]


def sort_order(name: str | None) -> int:
    key = (name or "none").lower()
    if key not in SORT_ORDERS:
        raise InvalidRequest(f"unknown sort order {name!r} (expected None, 'ascend' or "
                             "'descend')")
    return SORT_ORDERS[key]


def range_request(
    key: Key, range_end: Key | None = None, *, prefix: bool = False, from_key: bool = False,
    limit: int = 0, revision: int = 0, sort_target_name: str | None = "key",
    sort_order_name: str | None = None, keys_only: bool = False, count_only: bool = False,
    serializable: bool = False, min_mod_revision: int = 0, max_mod_revision: int = 0,
    min_create_revision: int = 0, max_create_revision: int = 0,
) -> rpc_pb2.RangeRequest:
    """An etcd RangeRequest (see `key_range` for key, range_end, prefix and from_key)."""
    k, end = key_range(key, range_end, prefix=prefix, from_key=from_key)
    return rpc_pb2.RangeRequest(
        key=k, range_end=end, limit=_int(limit, "limit"), revision=_int(revision, "revision"),
        sort_target=sort_target(sort_target_name),  # type: ignore[arg-type]
        sort_order=sort_order(sort_order_name),  # type: ignore[arg-type]
        serializable=bool(serializable), keys_only=bool(keys_only),
        count_only=bool(count_only),
        min_mod_revision=_int(min_mod_revision, "min_mod_revision"),
        max_mod_revision=_int(max_mod_revision, "max_mod_revision"),
        min_create_revision=_int(min_create_revision, "min_create_revision"),
        max_create_revision=_int(max_create_revision, "max_create_revision"),
    )


def put_request(key: Key, value: Key, *, lease: int = 0, prev_kv: bool = False,
                ignore_value: bool = False, ignore_lease: bool = False) -> rpc_pb2.PutRequest:
    return rpc_pb2.PutRequest(
        key=to_bytes(key), value=to_bytes(value, "value"), lease=_int(lease, "lease"),
        prev_kv=bool(prev_kv), ignore_value=bool(ignore_value),
        ignore_lease=bool(ignore_lease),
    )


def delete_request(key: Key, range_end: Key | None = None, *, prefix: bool = False,
                   from_key: bool = False, prev_kv: bool = False
                   ) -> rpc_pb2.DeleteRangeRequest:
    k, end = key_range(key, range_end, prefix=prefix, from_key=from_key)
    return rpc_pb2.DeleteRangeRequest(key=k, range_end=end, prev_kv=bool(prev_kv))


def txn_request(compare: Sequence[Compare] = (), success: Sequence[Op] = (),
                failure: Sequence[Op] = ()) -> rpc_pb2.TxnRequest:
    for what, items, cls in (("compare", compare, Compare), ("success", success, Op),
                             ("failure", failure, Op)):
        if isinstance(items, Compare | Op | str | bytes):
            raise InvalidRequest(f"{what} must be a list of {cls.__name__}s")
        for item in items:
            if not isinstance(item, cls):
                raise InvalidRequest(
                    f"{what} must hold {cls.__name__}s (dengine.{cls.__name__}), got "
                    f"{type(item).__name__}"
                    + (": write Compare.value(k) == v, not a bool"
                       if isinstance(item, bool) else ""))
    return rpc_pb2.TxnRequest(
        compare=[c.to_pb() for c in compare],
        success=[o.to_pb() for o in success],
        failure=[o.to_pb() for o in failure],
    )


def compaction_request(revision: int, *, physical: bool = False
                       ) -> rpc_pb2.CompactionRequest:
    return rpc_pb2.CompactionRequest(revision=_int(revision, "revision"),
                                     physical=bool(physical))


def cas_request(key: Key, expected: Key | None, new: Key) -> rpc_pb2.TxnRequest:
    """compare_and_swap as a txn: `key` holds `expected` (None: `key` is absent), then put
    `new`."""
    cond = (Compare.version(key) == 0 if expected is None
            else Compare.value(key) == expected)
    return txn_request([cond], [Op.put(key, new)])


# ---- builders ----------------------------------------------------------------------------

_RESULTS = {
    "==": rpc_pb2.Compare.EQUAL, "!=": rpc_pb2.Compare.NOT_EQUAL,
    ">": rpc_pb2.Compare.GREATER, "<": rpc_pb2.Compare.LESS,
}
_TARGETS = {
    "version": rpc_pb2.Compare.VERSION, "create_revision": rpc_pb2.Compare.CREATE,
    "mod_revision": rpc_pb2.Compare.MOD, "value": rpc_pb2.Compare.VALUE,
    "lease": rpc_pb2.Compare.LEASE,
}


class CompareTarget:
    """One side of a compare: a target of a key (or of every key of a range). Compare it
    with `==`, `!=`, `<` or `>` to make a `Compare`."""

    __slots__ = ("key", "range_end", "target")

    def __init__(self, target: str, key: Key, range_end: Key | None, prefix: bool) -> None:
        self.target = target
        self.key, self.range_end = key_range(key, range_end, prefix=prefix)

    def _cmp(self, op: str, operand: Any) -> Compare:
        if self.target == "value":
            if not isinstance(operand, bytes | str | bytearray):
                raise InvalidRequest(f"a value compare takes bytes or str, got {operand!r}")
            operand = to_bytes(operand, "value")
        else:
            operand = _int(operand, self.target, minimum=-(1 << 63))
        return Compare(self, op, operand)

    def __eq__(self, other: object) -> Compare:  # type: ignore[override]
        return self._cmp("==", other)

    def __ne__(self, other: object) -> Compare:  # type: ignore[override]
        return self._cmp("!=", other)

    def __lt__(self, other: object) -> Compare:
        return self._cmp("<", other)

    def __gt__(self, other: object) -> Compare:
        return self._cmp(">", other)

    def __le__(self, other: object) -> Compare:
        raise InvalidRequest("etcd compares take ==, !=, < or >, not <=")

    def __ge__(self, other: object) -> Compare:
        raise InvalidRequest("etcd compares take ==, !=, < or >, not >=")

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Compare.{self.target}({self.key!r})"


class Compare:
    """A condition of a transaction: `Compare.version(b"k") == 0`, `Compare.value(b"k")
    != b"x"`, `Compare.mod_revision(b"k") < 5`, `Compare.create_revision(b"k") > 0`,
    `Compare.lease(b"k") == 0`. A missing key compares as version 0, revisions 0, lease 0,
    and fails every value compare (etcd's rules). `range_end` or `prefix=True` compares
    every key of the range (all must hold)."""

    __slots__ = ("op", "operand", "target")

    def __init__(self, target: CompareTarget, op: str, operand: int | bytes) -> None:
        self.target = target
        self.op = op
        self.operand = operand

    @staticmethod
    def version(key: Key, range_end: Key | None = None, *, prefix: bool = False
                ) -> CompareTarget:
        return CompareTarget("version", key, range_end, prefix)

    @staticmethod
    def create_revision(key: Key, range_end: Key | None = None, *, prefix: bool = False
                        ) -> CompareTarget:
        return CompareTarget("create_revision", key, range_end, prefix)

    @staticmethod
    def mod_revision(key: Key, range_end: Key | None = None, *, prefix: bool = False
                     ) -> CompareTarget:
        return CompareTarget("mod_revision", key, range_end, prefix)

    @staticmethod
    def value(key: Key, range_end: Key | None = None, *, prefix: bool = False
              ) -> CompareTarget:
        return CompareTarget("value", key, range_end, prefix)

    @staticmethod
    def lease(key: Key, range_end: Key | None = None, *, prefix: bool = False
              ) -> CompareTarget:
        return CompareTarget("lease", key, range_end, prefix)

    create = create_revision
    mod = mod_revision

    def to_pb(self) -> rpc_pb2.Compare:
        t = self.target
        pb = rpc_pb2.Compare(result=_RESULTS[self.op], target=_TARGETS[t.target],
                             key=t.key, range_end=t.range_end)
        setattr(pb, t.target, self.operand)
        return pb

    def __bool__(self) -> bool:
        raise InvalidRequest("a Compare is a condition for txn(), not a bool")

    def __repr__(self) -> str:
        return f"{self.target!r} {self.op} {self.operand!r}"


class Op:
    """An operation of a transaction branch: `Op.put(k, v)`, `Op.get(k)`,
    `Op.delete(k)`, `Op.txn(compare, success, failure)` (a nested txn)."""

    __slots__ = ("kind", "request")

    def __init__(self, kind: str, request: Any) -> None:
        self.kind = kind  # request_range | request_put | request_delete_range | request_txn
        self.request = request

    @staticmethod
    def put(key: Key, value: Key, *, lease: int = 0, prev_kv: bool = False,
            ignore_value: bool = False, ignore_lease: bool = False) -> Op:
        return Op("request_put", put_request(key, value, lease=lease, prev_kv=prev_kv,
                                             ignore_value=ignore_value,
                                             ignore_lease=ignore_lease))

    @staticmethod
    def get(key: Key, range_end: Key | None = None, *, prefix: bool = False,
            from_key: bool = False, limit: int = 0, revision: int = 0,
            sort_target: str = "key", sort_order: str | None = None,
            keys_only: bool = False, count_only: bool = False) -> Op:
        return Op("request_range", range_request(
            key, range_end, prefix=prefix, from_key=from_key, limit=limit,
            revision=revision, sort_target_name=sort_target, sort_order_name=sort_order,
            keys_only=keys_only, count_only=count_only))

    @staticmethod
    def delete(key: Key, range_end: Key | None = None, *, prefix: bool = False,
               from_key: bool = False, prev_kv: bool = False) -> Op:
        return Op("request_delete_range", delete_request(
            key, range_end, prefix=prefix, from_key=from_key, prev_kv=prev_kv))

    @staticmethod
    def txn(compare: Sequence[Compare] = (), success: Sequence[Op] = (),
            failure: Sequence[Op] = ()) -> Op:
        return Op("request_txn", txn_request(compare, success, failure))

    def to_pb(self) -> rpc_pb2.RequestOp:
        return rpc_pb2.RequestOp(**{self.kind: self.request})

    def __repr__(self) -> str:
        return f"Op({self.kind[8:]}: {str(self.request).strip()!r})"


# ---- responses ---------------------------------------------------------------------------


def header(pb: rpc_pb2.ResponseHeader) -> ResponseHeader:
    return ResponseHeader(pb.cluster_id, pb.member_id, pb.revision, pb.raft_term)


def key_value(pb: kv_pb2.KeyValue) -> KeyValue:
    return KeyValue(pb.key, pb.value, pb.create_revision, pb.mod_revision, pb.version,
                    pb.lease)


def range_result(pb: rpc_pb2.RangeResponse) -> RangeResult:
    return RangeResult([key_value(kv) for kv in pb.kvs], pb.more, pb.count,
                       pb.header.revision, header(pb.header))


def put_result(pb: rpc_pb2.PutResponse) -> PutResult:
    prev = key_value(pb.prev_kv) if pb.HasField("prev_kv") else None
    return PutResult(pb.header.revision, prev, header(pb.header))


def delete_result(pb: rpc_pb2.DeleteRangeResponse) -> DeleteResult:
    return DeleteResult(pb.deleted, [key_value(kv) for kv in pb.prev_kvs],
                        pb.header.revision, header(pb.header))


def txn_result(pb: rpc_pb2.TxnResponse) -> TxnResult:
    return TxnResult(pb.succeeded, [op_result(r) for r in pb.responses],
                     pb.header.revision, header(pb.header))


def op_result(pb: rpc_pb2.ResponseOp) -> OpResult:
    kind = pb.WhichOneof("response")
    if kind == "response_range":
        return range_result(pb.response_range)
    if kind == "response_put":
        return put_result(pb.response_put)
    if kind == "response_delete_range":
        return delete_result(pb.response_delete_range)
    if kind == "response_txn":
        return txn_result(pb.response_txn)
    raise InvalidRequest(f"unknown txn response kind {kind!r}")
