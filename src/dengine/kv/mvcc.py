"""etcd v3's data model: the MVCC store (revisions, history, ranges, transactions, compaction).

Pure and deterministic: every replica that applies the same commands holds the same
store, revision and history (docs/etcd-model.md). The rules are etcd 3.4's (its
`etcdserver/apply.go` and `mvcc/`), including its quirks; the comments name them.

State: the live keys (`key -> packed`, packed = `<qqqq>` create_revision, mod_revision,
version, lease, then the value), a sorted index of the live keys, and the changelog: one
`(revision, key, new, prev)` per key change, oldest first, `new`/`prev` packed or None
(kv/changelog.py).
A read at a past revision starts from the live keys and undoes the changes above it;
compaction drops the changes at or below its revision.

Leases (etcd's lessor, its replicated part): `lease id -> granted TTL` and the keys
attached to each (a key's lease is in its packed metadata; the key sets are derived from
it). A put with a lease attaches the key, a put with another lease (or none) or a delete
detaches it; a revoke deletes every key of the lease in one revision. When a lease
expires is not the store's business: the leader's lessor (dengine.node.lessor) decides it
by its own clock and proposes a revoke; the store applies grants and revokes as they come
in the log, identically everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from typing import Any, NamedTuple, TypeVar

from google.protobuf.message import DecodeError, Message
from sortedcontainers import SortedList

from dengine.kv.auth import AuthStore
from dengine.kv.changelog import Changelog, ChangeTuple
from dengine.kv.codec import (
    OP_AUTH,
    OP_COMPACTION,
    OP_CONFIG,
    OP_DELETE,
    OP_DELETE_RANGE,
    OP_INSERT,
    OP_LEASE_GRANT,
    OP_LEASE_REVOKE,
    OP_PUT,
    OP_REJECTED,
    OP_STAMPED,
    OP_TXN,
    decode_any_command,
)
from dengine.kv.etcd_check import (
    KvError,
    compacted,
    future_revision,
    is_txn_readonly,
    key_not_found,
    lease_exists,
    lease_not_found,
    response_too_large,
)
from dengine.kv.gosort import go_sort
from dengine.kv.leases import LeaseTable
from dengine.kv.mvcc_txn import run_txn
from dengine.kv.packed import META_SIZE, pack_meta, unpack_meta
from dengine.kv.packed import range_end as _range_end
from dengine.proto import AuthInfo, Membership
from dengine.proto.etcd import rpc_pb2 as pb
from dengine.proto.etcd.kv_pb2 import KeyValue

_Req = TypeVar("_Req", bound=Message)
_T = TypeVar("_T")

Op = tuple[int, int, int, bytes, bytes]  # index, term, op, key, value (kv.store.Op)


def undecodable(what: str) -> KvError:
    return KvError("INVALID_ARGUMENT", f"dengine: the command holds no valid {what}")


class Change(NamedTuple):
    """One key change: `new`/`prev` are packed versions, None = deleted / absent."""

    revision: int
    key: bytes
    new: bytes | None
    prev: bytes | None


class Applied(NamedTuple):
    """The outcome of one command: the store revision after it, and the etcd response
    (header.revision set), a KvError (the command changed nothing), or None (plain
    insert/delete, config, no-op: no etcd response)."""

    revision: int
    response: Message | KvError | None


def make_kv(key: bytes, packed: bytes, keys_only: bool = False) -> KeyValue:
    """The etcd KeyValue of a packed version."""
    c, m, v, lease = unpack_meta(packed)
    return KeyValue(key=key, create_revision=c, mod_revision=m, version=v, lease=lease,
                    value=b"" if keys_only else packed[META_SIZE:])


def add_kvs(kvs: Any, items: Iterable[tuple[bytes, bytes]], keys_only: bool = False) -> None:
    """Append the KeyValues of (key, packed) items to a repeated field, built in place."""
    add = kvs.add
    for key, packed in items:
        c, m, v, lease = unpack_meta(packed)
        add(key=key, create_revision=c, mod_revision=m, version=v, lease=lease,
            value=b"" if keys_only else packed[META_SIZE:])


_NONE = pb.RangeRequest.NONE
_ASCEND = pb.RangeRequest.ASCEND
_DESCEND = pb.RangeRequest.DESCEND
_KEY = pb.RangeRequest.KEY

# RangeRequest.SortTarget -> sort key of a (key, packed) item
_SORT_KEYS: dict[int, Callable[[tuple[bytes, bytes]], Any]] = {
    pb.RangeRequest.VERSION: lambda item: unpack_meta(item[1])[2],
    pb.RangeRequest.CREATE: lambda item: unpack_meta(item[1])[0],
    pb.RangeRequest.MOD: lambda item: unpack_meta(item[1])[1],
    pb.RangeRequest.VALUE: lambda item: item[1][META_SIZE:],
}


# Protobuf bytes of a KeyValue beyond its key and value, about (tags, lengths, varints).
_KV_OVERHEAD = 32


class _OverBudget(Exception):
    """A bounded read passed its bytes (see MvccStore._bounded)."""


class MvccStore:
    """etcd's MVCC key-value store. `get` and `insert_all` are the hot paths."""

    __slots__ = ("_budget", "_changes", "_data", "_index", "auth", "compact_revision",
                 "leases", "revision")

    def __init__(self) -> None:
        self.revision = 1
        self.compact_revision = -1  # never compacted (etcd's compactMainRev starts at -1)
        # bytes a bounded read may still answer (None: unbounded; see `range`)
        self._budget: int | None = None
        self._data: dict[bytes, bytes] = {}
        self._index = SortedList()
        self._changes = Changelog()
        self.leases = LeaseTable()  # (kv/leases.py)
        self.auth = AuthStore()  # users, roles, tokens (kv/auth.py); never moves `revision`

    def __len__(self) -> int:
        return len(self._data)

    # ------------------------------------------------------------------ reads

    def get(self, key: bytes) -> bytes | None:
        """The current value of `key`, None if absent."""
        packed = self._data.get(key)
        return None if packed is None else packed[META_SIZE:]

    def get_packed(self, key: bytes) -> bytes | None:
        """The current packed version of `key`, None if absent."""
        return self._data.get(key)

    def get_kv(self, key: bytes, revision: int = 0) -> KeyValue | None:
        """`key` as of `revision` (<= 0: the current one); raises KvError as a range does."""
        rev = self._read_revision(revision, self.revision)
        packed = self._packed_at(key, rev)
        return None if packed is None else make_kv(key, packed)

    def range(self, req: pb.RangeRequest, max_bytes: int | None = None) -> pb.RangeResponse:
        """etcd's Range (applierV3backend.Range + rangeKeys) at the current revision;
        raises KvError (compacted, future revision; with `max_bytes`, a response whose
        keys and values would pass it, before building more of it)."""
        return self._bounded(max_bytes, self._range, req, self.revision)

    def read_txn(self, req: pb.TxnRequest, max_bytes: int | None = None) -> pb.TxnResponse:
        """A read-only txn (etcd_check.is_txn_readonly) served as a read, as etcd serves
        them (no log entry); raises KvError (with `max_bytes`: as `range`, for all its
        ranges together). Any other txn must go through `apply`."""
        if not is_txn_readonly(req):
            raise ValueError("read_txn: this txn writes (apply it through the log)")
        return self._bounded(max_bytes, self._txn, req)

    def _bounded(self, max_bytes: int | None, fn: Callable[..., _T], *args: Any) -> _T:
        """`fn(*args)` answering at most `max_bytes` of keys and values (a read: what is
        applied never has a bound, so that every replica applies alike)."""
        if max_bytes is None:
            return fn(*args)
        self._budget = max_bytes
        try:
            return fn(*args)
        except _OverBudget:
            raise response_too_large(max_bytes) from None
        finally:
            self._budget = None

    def _add_kvs(self, kvs: Any, items: Iterable[tuple[bytes, bytes]], keys_only: bool
                 ) -> None:
        if self._budget is None:
            add_kvs(kvs, items, keys_only)
            return
        budget = self._budget
        add = kvs.add
        for key, packed in items:  # stops before building past the budget
            budget -= len(key) + (0 if keys_only else len(packed)) + _KV_OVERHEAD
            if budget < 0:
                raise _OverBudget
            c, m, v, lease = unpack_meta(packed)
            add(key=key, create_revision=c, mod_revision=m, version=v, lease=lease,
                value=b"" if keys_only else packed[META_SIZE:])
        self._budget = budget

    def _read_revision(self, revision: int, current: int) -> int:
        if revision > current:
            raise future_revision()
        if revision <= 0:
            revision = current
        if revision < self.compact_revision:
            raise compacted()
        return revision

    def _live_at(self, rev: int) -> bool:
        """Whether the live keys are the state at `rev` (no change above it). In a txn,
        the live keys already hold its writes, at the revision after `self.revision`."""
        return self._changes.last_revision() <= rev

    def _packed_at(self, key: bytes, rev: int) -> bytes | None:
        return self._changes.packed_at(key, rev, self._data.get(key))

    def _items_at(self, key: bytes, end: bytes | None, rev: int) -> list[tuple[bytes, bytes]]:
        """Every (key, packed) of [key, end) at `rev` (end None: no upper bound), by key."""
        data = self._data
        keys = self._index.irange(key, end, (True, False)) if end is not None else (
            self._index.irange(key))
        if self._live_at(rev):
            return [(k, data[k]) for k in keys]
        overlay = self._changes.overlay(key, end, rev)
        items = [(k, data[k]) for k in keys if k not in overlay]
        items.extend((k, p) for k, p in overlay.items() if p is not None)
        items.sort()
        return items

    def _range(self, req: pb.RangeRequest, current: int) -> pb.RangeResponse:
        rev = self._read_revision(req.revision, current)
        resp = pb.RangeResponse()
        resp.header.revision = current
        key = req.key
        limit = req.limit
        sort_order = req.sort_order
        sort_target = req.sort_target
        filtered = bool(req.min_mod_revision or req.max_mod_revision
                        or req.min_create_revision or req.max_create_revision)
        if not req.range_end:
            packed = self._packed_at(key, rev)
            items = [] if packed is None else [(key, packed)]
            total = len(items)
        else:
            end = _range_end(req.range_end)
            if not filtered and sort_target == _KEY and self._live_at(rev):
                # The current revision in key order: no need to look at every key.
                index = self._index
                lo = index.bisect_left(key)
                hi = len(index) if end is None else max(lo, index.bisect_left(end))
                resp.count = total = hi - lo
                if req.count_only:
                    return resp
                reverse = sort_order == _DESCEND
                take = limit if limit > 0 else total
                data = self._data
                self._add_kvs(resp.kvs, ((k, data[k]) for k in
                                         islice(index.islice(lo, hi, reverse=reverse), take)),
                              req.keys_only)
                resp.more = limit > 0 and total > limit
                return resp
            items = self._items_at(key, end, rev)
            total = len(items)
        resp.count = total
        if req.count_only:
            return resp
        if limit > 0 and sort_order == _NONE and not filtered:
            # etcd fetches limit + 1 keys (by key) for `more`, and sorts only those: with
            # a sort target but no order, the first limit + 1 keys sorted by the target.
            items = items[: limit + 1]
        if filtered:
            items = self._filter(req, items)
        if sort_target != _KEY and sort_order == _NONE:
            sort_order = _ASCEND
        if sort_order in (_ASCEND, _DESCEND):
            reverse = sort_order == _DESCEND
            if sort_target == _KEY:
                if reverse:
                    items.reverse()
            elif sort_target in _SORT_KEYS:
                # Go's sort.Sort, as etcd: equal targets end up where it leaves them
                target = _SORT_KEYS[sort_target]
                pairs = [(target(item), item) for item in items]
                go_sort(pairs, reverse)
                items = [item for _, item in pairs]
        if limit > 0 and len(items) > limit:
            items = items[:limit]
            resp.more = True
        self._add_kvs(resp.kvs, items, req.keys_only)
        return resp

    @staticmethod
    def _filter(req: pb.RangeRequest, items: list[tuple[bytes, bytes]]
                ) -> list[tuple[bytes, bytes]]:
        lo_mod, hi_mod = req.min_mod_revision, req.max_mod_revision
        lo_create, hi_create = req.min_create_revision, req.max_create_revision
        out = []
        for item in items:
            c, m, _, _ = unpack_meta(item[1])
            if hi_mod and m > hi_mod:
                continue
            if lo_mod and m < lo_mod:
                continue
            if hi_create and c > hi_create:
                continue
            if lo_create and c < lo_create:
                continue
            out.append(item)
        return out

    # ------------------------------------------------------------------ writes

    def insert_all(self, keys: Iterable[bytes], values: Iterable[bytes]) -> None:
        """Put key[i] = value[i] (lease 0) in order, one revision each (a chunk of plain
        inserts: the apply path's hot loop; new keys join the index once, at the end)."""
        data = self._data
        get = data.get
        first = self.revision + 1
        rev = self.revision
        new: list[bytes] | None = None
        if type(keys) is not list:
            keys = list(keys)
        news: list[bytes] = []
        prevs: list[bytes | None] = []
        log_new = news.append
        log_prev = prevs.append
        for key, value in zip(keys, values, strict=True):
            rev += 1
            old = get(key)
            if old is None:
                data[key] = packed = pack_meta(rev, rev, 1, 0) + value
                if new is None:
                    new = [key]
                else:
                    new.append(key)
            else:
                c, _, v, old_lease = unpack_meta(old)
                data[key] = packed = pack_meta(c, rev, v + 1, 0) + value
                if old_lease:
                    self.leases.detach(key, old_lease)
            log_new(packed)
            log_prev(old)
        self._changes.extend_run(first, keys, news, prevs)
        self.revision = rev
        if new is not None:
            self._index.update(new)

    def apply(self, op: int, key: bytes, value: bytes) -> Applied:
        """Apply one decoded command (any codec op). A command that fails (etcd's
        state-dependent checks, an undecodable request) changes nothing and carries its
        KvError; nothing in the input makes this raise."""
        if op == OP_INSERT:
            self.insert_all((key,), (value,))
            return Applied(self.revision, None)
        if op == OP_DELETE:
            if key in self._data:
                self.revision += 1
                self._delete_keys([key], self.revision)
            return Applied(self.revision, None)
        if op == OP_PUT:  # key: the request's AuthInfo, if stamped (kv.codec.STAMPED_OPS)
            return self._apply_request(pb.PutRequest, value, self._put_request, key)
        if op == OP_DELETE_RANGE:
            return self._apply_request(pb.DeleteRangeRequest, value, self._delete_request,
                                       key)
        if op == OP_TXN:
            return self._apply_request(pb.TxnRequest, value, self._txn, key)
        if op == OP_COMPACTION:
            return self._apply_request(pb.CompactionRequest, value, self._compact)
        if op == OP_LEASE_GRANT:
            return self._apply_request(pb.LeaseGrantRequest, value, self._lease_grant)
        if op == OP_LEASE_REVOKE:
            return self._apply_request(pb.LeaseRevokeRequest, value, self._lease_revoke,
                                       key)
        if op == OP_AUTH:
            response = self.auth.apply(value)
            if not isinstance(response, KvError):
                response.header.revision = self.revision  # type: ignore[attr-defined]
            return Applied(self.revision, response)
        if op == OP_STAMPED:
            return self._apply_stamped(key, value)
        if op == OP_REJECTED:
            return Applied(self.revision, undecodable("command"))
        return Applied(self.revision, None)  # no-op, config, storage bookkeeping

    def apply_ops(self, ops: Iterable[Op]) -> Membership | None:
        """Apply decoded ops in order (replay, chunks); return the last membership among
        them, if any. Results are dropped: use `apply` for them."""
        membership = None
        keys: list[bytes] = []
        values: list[bytes] = []
        for _, _, op, key, value in ops:
            if op == OP_INSERT:  # runs of inserts go through insert_all
                keys.append(key)
                values.append(value)
                continue
            if keys:
                self.insert_all(keys, values)
                keys, values = [], []
            if op == OP_CONFIG:
                membership = Membership.FromString(value)
            else:
                self.apply(op, key, value)
        if keys:
            self.insert_all(keys, values)
        return membership

    def _apply_request(self, cls: type[_Req], data: bytes,
                       run: Callable[[_Req], Message], stamp: bytes = b"") -> Applied:
        try:
            req = cls.FromString(data)
        except DecodeError:
            return Applied(self.revision, undecodable(cls.__name__))
        try:
            if stamp:
                self._check_stamp(stamp, req)
            resp = run(req)
        except KvError as e:
            return Applied(self.revision, e)
        return Applied(self.revision, resp)

    def _check_stamp(self, stamp: bytes, req: Message) -> None:
        """etcd's authApplierV3: a request proposed while auth was on (stamped with its
        user and the auth revision it was checked at) is checked again on the auth state
        it applies to, so a revoke committed before it counts on every replica alike."""
        try:
            info = AuthInfo.FromString(stamp)
        except DecodeError:
            raise undecodable("AuthInfo") from None
        auth = self.auth
        if not auth.enabled:
            return
        user, revision = info.username, info.revision
        if isinstance(req, pb.PutRequest):
            auth.check_put(user, req, self._lease_keys, revision)
        elif isinstance(req, pb.DeleteRangeRequest):
            auth.check_delete_range(user, req, revision)
        elif isinstance(req, pb.TxnRequest):
            auth.check_txn(user, req, self._lease_keys, revision)
        elif isinstance(req, pb.LeaseRevokeRequest):
            auth.check_lease_keys(user, self._lease_keys(req.ID), revision)

    def _apply_stamped(self, stamp: bytes, command: bytes) -> Applied:
        """A plain insert (a put of its key) or delete (a delete of its key) checked as
        `_check_stamp` checks an etcd request, then applied."""
        op, key, value = decode_any_command(command)
        try:
            if op == OP_INSERT:
                self._check_stamp(stamp, pb.PutRequest(key=key))
            elif op == OP_DELETE:
                self._check_stamp(stamp, pb.DeleteRangeRequest(key=key))
            else:
                raise undecodable("command")
        except KvError as e:
            return Applied(self.revision, e)
        return self.apply(op, key, value)

    def _lease_keys(self, lease_id: int) -> list[bytes]:
        info = self.leases.info(lease_id, keys=True)
        return info[1] if info is not None else []

    def _delete_keys(self, keys: list[bytes], rev: int) -> None:
        """Delete `keys` (all live) at revision `rev`."""
        data = self._data
        remove = self._index.remove
        log = self._changes.append
        leases = self.leases
        for k in keys:
            old = data.pop(k)
            log(rev, k, None, old)
            remove(k)
            if leases:
                lease = unpack_meta(old)[3]
                if lease:
                    leases.detach(k, lease)

    def _live_keys(self, key: bytes, range_end: bytes) -> list[bytes]:
        if not range_end:
            return [key] if key in self._data else []
        end = _range_end(range_end)
        index = self._index
        return list(index.irange(key, end, (True, False)) if end is not None
                    else index.irange(key))

    def _lease_exists(self, lease: int) -> bool:
        return lease == 0 or lease in self.leases

    # Leases: the replicated table (etcd's lessor without its clock).

    def _lease_grant(self, req: pb.LeaseGrantRequest) -> pb.LeaseGrantResponse:
        """etcd's Grant as applied: the ID and TTL were chosen at proposal (the leader's
        minimum TTL applied there), so applying needs nothing but the request."""
        lease_id = req.ID
        if lease_id <= 0:
            raise undecodable("lease ID (chosen at proposal, positive)")
        if lease_id in self.leases:
            raise lease_exists()
        self.leases.grant(lease_id, req.TTL)
        return pb.LeaseGrantResponse(
            header=pb.ResponseHeader(revision=self.revision), ID=lease_id, TTL=req.TTL)

    def _lease_revoke(self, req: pb.LeaseRevokeRequest) -> pb.LeaseRevokeResponse:
        """etcd's Revoke: the lease goes, its keys are deleted in one revision (none: the
        revision stays)."""
        lease = self.leases.revoke(req.ID)
        if lease is None:
            raise lease_not_found()
        if lease.keys:
            self.revision += 1
            self._delete_keys(sorted(lease.keys), self.revision)
        return pb.LeaseRevokeResponse(header=pb.ResponseHeader(revision=self.revision))

    # Top-level requests: the store revision moves by one if the request changed a key.

    def _put_request(self, req: pb.PutRequest) -> pb.PutResponse:
        lease = req.lease
        if lease and lease not in self.leases:
            raise lease_not_found()
        if (req.ignore_value or req.ignore_lease) and req.key not in self._data:
            raise key_not_found()
        resp = self._put(req, self.revision + 1)
        self.revision += 1
        return resp

    def _delete_request(self, req: pb.DeleteRangeRequest) -> pb.DeleteRangeResponse:
        resp = self._delete_range(req, self.revision, False)
        if resp.deleted:
            self.revision += 1
        return resp

    def _put(self, req: pb.PutRequest, rev: int) -> pb.PutResponse:
        """etcd's Put inside a write at revision `rev` (checks done by the caller)."""
        key = req.key
        resp = pb.PutResponse()
        resp.header.revision = rev
        data = self._data
        old = data.get(key)
        value = req.value
        lease = req.lease
        if old is None:
            packed = pack_meta(rev, rev, 1, lease) + value
            self._index.add(key)
            old_lease = 0
        else:
            c, _, v, old_lease = unpack_meta(old)
            if req.ignore_value:
                value = old[META_SIZE:]
            if req.ignore_lease:
                lease = old_lease
            if req.prev_kv:
                resp.prev_kv.CopyFrom(make_kv(key, old))
            packed = pack_meta(c, rev, v + 1, lease) + value
        data[key] = packed
        self._changes.append(rev, key, packed, old)
        if old_lease != lease:
            if old_lease:
                self.leases.detach(key, old_lease)
            if lease:
                self.leases.attach(key, lease)  # (checked before: the lease exists)
        return resp

    def _delete_range(self, req: pb.DeleteRangeRequest, begin: int, changed: bool
                      ) -> pb.DeleteRangeResponse:
        """etcd's DeleteRange in a write that began at `begin` (`changed`: earlier ops of
        the same txn changed keys)."""
        keys = self._live_keys(req.key, req.range_end)
        resp = pb.DeleteRangeResponse(deleted=len(keys))
        if req.prev_kv:
            data = self._data
            add_kvs(resp.prev_kvs, [(k, data[k]) for k in keys])
        self._delete_keys(keys, begin + 1)
        resp.header.revision = begin + 1 if keys or changed else begin
        return resp

    def _compact(self, req: pb.CompactionRequest) -> pb.CompactionResponse:
        rev = req.revision
        # As etcd: a never-compacted store is at -1, so only its first Compact(0) succeeds.
        if rev <= self.compact_revision:
            raise compacted()
        if rev > self.revision:
            raise future_revision()
        self._changes.compact(rev)
        self.compact_revision = rev
        resp = pb.CompactionResponse()
        resp.header.revision = self.revision
        return resp

    def _txn(self, req: pb.TxnRequest) -> pb.TxnResponse:
        return run_txn(self, req)  # (kv/mvcc_txn.py)

    # ------------------------------------------------------------------ persistence

    def items_packed(self) -> Iterator[tuple[bytes, bytes]]:
        """The live (key, packed) pairs, in no particular order (hold the state machine's
        lock while iterating)."""
        return iter(self._data.items())

    def copy_packed(self) -> dict[bytes, bytes]:
        """A copy of the live `key -> packed` (a dict's own copy: ~10x faster than
        `dict(items_packed())` at a million keys; checkpoints take it under a lock)."""
        return self._data.copy()

    def copy_changes(self) -> Changelog:
        """A copy of the changelog, iterated as plain `Change`-shaped tuples, oldest first
        (C-level copies of its columns; checkpoints take it under a lock)."""
        return self._changes.copy()

    def changes(self) -> Iterator[Change]:
        """The changelog, oldest first."""
        return map(Change._make, self._changes)

    def changes_since(self, revision: int) -> Iterator[Change]:
        """The changes above `revision`, oldest first (watch catch-up)."""
        return map(Change._make, self._changes.since(revision))

    @classmethod
    def restore(cls, revision: int, compact_revision: int,
                items_packed: Iterable[tuple[bytes, bytes]],
                changes: Iterable[ChangeTuple],
                leases: Iterable[tuple[int, int]] = (), auth: bytes = b"",
                ) -> MvccStore:
        """A store from its persisted image (`items_packed`, `changes`, `leases` as
        `leases.packed()` gives them: the keys attached are found in the keys' metadata;
        `auth` as `auth.image()` gives it)."""
        store = cls()
        store.auth = AuthStore.from_image(auth)
        store.revision = revision
        store.compact_revision = compact_revision
        store._data = dict(items_packed)
        store._index = SortedList(store._data)
        store._changes = Changelog(changes)
        table = store.leases = LeaseTable(leases)
        if table:
            attach = table.attach
            for key, packed in store._data.items():
                lease_id = unpack_meta(packed)[3]
                if lease_id:
                    attach(key, lease_id)
        return store

