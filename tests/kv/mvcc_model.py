"""A brute-force model of etcd's KV semantics for the MvccStore tests: the full state at
every revision (a dict per revision), answers computed from it by the plainest code."""

from __future__ import annotations

from dengine.kv.etcd_check import KvError, compacted, future_revision, key_not_found
from dengine.kv.etcd_check import lease_not_found as lease_missing
from dengine.proto.etcd import rpc_pb2 as pb
from dengine.proto.etcd.kv_pb2 import KeyValue

# key -> (create_revision, mod_revision, version, lease, value)
State = dict[bytes, tuple[int, int, int, int, bytes]]


def in_range(k: bytes, key: bytes, range_end: bytes) -> bool:
    if not range_end:
        return k == key
    if range_end == b"\x00":
        return k >= key
    return key <= k < range_end


def kv_of(k: bytes, meta: tuple[int, int, int, int, bytes], keys_only: bool = False
          ) -> KeyValue:
    c, m, v, lease, value = meta
    return KeyValue(key=k, create_revision=c, mod_revision=m, version=v, lease=lease,
                    value=b"" if keys_only else value)


_TARGET = {
    pb.RangeRequest.VERSION: lambda kv: kv[1][2],
    pb.RangeRequest.CREATE: lambda kv: kv[1][0],
    pb.RangeRequest.MOD: lambda kv: kv[1][1],
    pb.RangeRequest.VALUE: lambda kv: kv[1][4],
}


def model_range(state: State, req: pb.RangeRequest, header_rev: int) -> pb.RangeResponse:
    """etcd 3.4's Range (apply.go) over a full state."""
    items = sorted((k, m) for k, m in state.items() if in_range(k, req.key, req.range_end))
    resp = pb.RangeResponse(count=len(items))
    resp.header.revision = header_rev
    if req.count_only:
        return resp
    filtered = (req.min_mod_revision or req.max_mod_revision or req.min_create_revision
                or req.max_create_revision)
    if req.limit > 0 and req.sort_order == pb.RangeRequest.NONE and not filtered:
        items = items[: req.limit + 1]
    if req.max_mod_revision:
        items = [i for i in items if i[1][1] <= req.max_mod_revision]
    if req.min_mod_revision:
        items = [i for i in items if i[1][1] >= req.min_mod_revision]
    if req.max_create_revision:
        items = [i for i in items if i[1][0] <= req.max_create_revision]
    if req.min_create_revision:
        items = [i for i in items if i[1][0] >= req.min_create_revision]
    order = req.sort_order
    if req.sort_target != pb.RangeRequest.KEY and order == pb.RangeRequest.NONE:
        order = pb.RangeRequest.ASCEND
    if order != pb.RangeRequest.NONE:
        target = _TARGET.get(req.sort_target, lambda kv: kv[0])
        items = sorted(items, key=target, reverse=order == pb.RangeRequest.DESCEND)
    if req.limit > 0 and len(items) > req.limit:
        items = items[: req.limit]
        resp.more = True
    resp.kvs.extend(kv_of(k, m, req.keys_only) for k, m in items)
    return resp


def model_compare(state: State, c: pb.Compare) -> bool:
    keys = [k for k in state if in_range(k, c.key, c.range_end)]
    if not keys and c.target == pb.Compare.VALUE:
        return False
    metas = [state[k] for k in keys] or [(0, 0, 0, 0, b"")]
    union = c.WhichOneof("target_union")
    for meta in metas:
        mine, theirs = {
            pb.Compare.VERSION: (meta[2], c.version if union == "version" else 0),
            pb.Compare.CREATE: (meta[0], c.create_revision if union == "create_revision" else 0),
            pb.Compare.MOD: (meta[1], c.mod_revision if union == "mod_revision" else 0),
            pb.Compare.VALUE: (meta[4], c.value if union == "value" else b""),
            pb.Compare.LEASE: (meta[3], c.lease if union == "lease" else 0),
        }[c.target]
        ok = {
            pb.Compare.EQUAL: mine == theirs,
            pb.Compare.NOT_EQUAL: mine != theirs,
            pb.Compare.GREATER: mine > theirs,
            pb.Compare.LESS: mine < theirs,
        }[c.result]
        if not ok:
            return False
    return True


class Model:
    def __init__(self) -> None:
        self.states: dict[int, State] = {1: {}}
        self.revision = 1
        self.compact_revision = -1  # never compacted, as etcd

    @property
    def state(self) -> State:
        return self.states[self.revision]

    def read_revision(self, rev: int, current: int) -> int:
        if rev > current:
            raise future_revision()
        if rev <= 0:
            rev = current
        if rev < self.compact_revision:
            raise compacted()
        return rev

    def range(self, req: pb.RangeRequest) -> pb.RangeResponse:
        rev = self.read_revision(req.revision, self.revision)
        return model_range(self.states[rev], req, self.revision)

    # writes: each returns the response or raises KvError (nothing changed)

    def _commit(self, work: State) -> None:
        self.revision += 1
        self.states[self.revision] = work

    @staticmethod
    def _put_into(work: State, req: pb.PutRequest, rev: int) -> pb.PutResponse:
        old = work.get(req.key)
        resp = pb.PutResponse()
        resp.header.revision = rev
        value, lease = req.value, req.lease
        if old is not None:
            if req.ignore_value:
                value = old[4]
            if req.ignore_lease:
                lease = old[3]
            if req.prev_kv:
                resp.prev_kv.CopyFrom(kv_of(req.key, old))
        work[req.key] = (old[0] if old else rev, rev, old[2] + 1 if old else 1, lease, value)
        return resp

    @staticmethod
    def _delete_from(work: State, req: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        keys = sorted(k for k in work if in_range(k, req.key, req.range_end))
        resp = pb.DeleteRangeResponse(deleted=len(keys))
        if req.prev_kv:
            resp.prev_kvs.extend(kv_of(k, work[k]) for k in keys)
        for k in keys:
            del work[k]
        return resp

    def put(self, req: pb.PutRequest) -> pb.PutResponse:
        if req.lease:
            raise lease_missing()
        if (req.ignore_value or req.ignore_lease) and req.key not in self.state:
            raise key_not_found()
        work = dict(self.state)
        resp = self._put_into(work, req, self.revision + 1)
        self._commit(work)
        return resp

    def delete_range(self, req: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        work = dict(self.state)
        resp = self._delete_from(work, req)
        if resp.deleted:
            self._commit(work)
        resp.header.revision = self.revision
        return resp

    def compact(self, rev: int) -> pb.CompactionResponse:
        if rev <= self.compact_revision:
            raise compacted()
        if rev > self.revision:
            raise future_revision()
        self.compact_revision = rev
        resp = pb.CompactionResponse()
        resp.header.revision = self.revision
        return resp

    def txn(self, req: pb.TxnRequest) -> pb.TxnResponse:
        pre = self.state
        begin = self.revision
        self._check(req, pre, begin)
        work = dict(pre)
        resp = pb.TxnResponse()
        changed = self._run(req, pre, work, begin, resp, False)
        if changed:
            self._commit(work)
        resp.header.revision = self.revision
        return resp

    def _branch(self, req: pb.TxnRequest, pre: State) -> tuple[bool, list[pb.RequestOp]]:
        ok = all(model_compare(pre, c) for c in req.compare)
        return ok, list(req.success if ok else req.failure)

    def _check(self, req: pb.TxnRequest, pre: State, begin: int) -> None:
        """Put checks on the whole taken path first, then range checks (etcd's order)."""
        ops = self._path_ops(req, pre)
        first_rev = self.compact_revision
        for op in ops:
            if op.WhichOneof("request") == "request_put":
                put = op.request_put
                if (put.ignore_value or put.ignore_lease) and put.key not in pre:
                    raise key_not_found()
                if put.lease:
                    raise lease_missing()
        for op in ops:
            if op.WhichOneof("request") == "request_range":
                rev = op.request_range.revision
                if rev > begin:
                    raise future_revision()
                if rev != 0 and rev < first_rev:
                    raise compacted()

    def _path_ops(self, req: pb.TxnRequest, pre: State) -> list[pb.RequestOp]:
        out = []
        for op in self._branch(req, pre)[1]:
            if op.WhichOneof("request") == "request_txn":
                out.extend(self._path_ops(op.request_txn, pre))
            else:
                out.append(op)
        return out

    def _run(self, req: pb.TxnRequest, pre: State, work: State, begin: int,
             resp: pb.TxnResponse, changed: bool) -> bool:
        ok, ops = self._branch(req, pre)
        resp.succeeded = ok
        for op in ops:
            which = op.WhichOneof("request")
            out = resp.responses.add()
            if which == "request_range":
                r = op.request_range
                cur = begin + 1 if changed else begin
                rev = self.read_revision(r.revision, cur)
                state = work if rev == cur else self.states[rev]
                out.response_range.CopyFrom(model_range(state, r, cur))
            elif which == "request_put":
                out.response_put.CopyFrom(self._put_into(work, op.request_put, begin + 1))
                changed = True
            elif which == "request_delete_range":
                sub = self._delete_from(work, op.request_delete_range)
                changed = changed or sub.deleted > 0
                sub.header.revision = begin + 1 if changed else begin
                out.response_delete_range.CopyFrom(sub)
            elif which == "request_txn":
                out.response_txn.header.SetInParent()
                changed = self._run(op.request_txn, pre, work, begin, out.response_txn,
                                    changed)
        return changed


def apply_model(model: Model, op: str, req: object) -> object:
    """Run one request on the model: the response, or the KvError it raised."""
    try:
        return getattr(model, op)(req)
    except KvError as e:
        return e
