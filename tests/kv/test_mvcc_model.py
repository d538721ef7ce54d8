"""MvccStore against a brute-force model (tests/kv/mvcc_model.py): every write, then every
range at every revision with every option; determinism; restore.

Writes go through `apply` as the encoded commands a server proposes (codec ops 1, 2, 7-10)
on one store, and as `insert_all`/`apply_ops` on a twin fed the same commands: both must
hold the same image.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from mvcc_model import Model, apply_model

from dengine.kv.codec import (
    OP_COMPACTION,
    OP_DELETE,
    OP_DELETE_RANGE,
    OP_INSERT,
    OP_PUT,
    OP_TXN,
)
from dengine.kv.etcd_check import KvError
from dengine.kv.mvcc import MvccStore
from dengine.proto.etcd import rpc_pb2 as pb

KEYS = [b"a", b"a\x00", b"ab", b"b", b"ba", b"c", b"\xff"]
keys = st.sampled_from(KEYS)
values = st.binary(max_size=3)
range_ends = st.one_of(st.just(b""), st.just(b"\x00"), keys)
small_revs = st.integers(min_value=-1, max_value=40)


@st.composite
def range_requests(draw: st.DrawFn, revision: st.SearchStrategy[int] = small_revs
                   ) -> pb.RangeRequest:
    req = pb.RangeRequest(key=draw(keys), range_end=draw(range_ends))
    req.limit = draw(st.sampled_from([0, 0, 1, 2, 3, -1]))
    req.revision = draw(st.sampled_from([0, 0, 0])) if draw(st.booleans()) else draw(revision)
    req.sort_order = draw(st.sampled_from([0, 0, 1, 2]))
    req.sort_target = draw(st.sampled_from([0, 0, 1, 2, 3, 4]))
    req.keys_only = draw(st.booleans())
    req.count_only = draw(st.integers(0, 4)) == 0
    if draw(st.booleans()):
        req.min_mod_revision = draw(st.integers(0, 12))
        req.max_mod_revision = draw(st.integers(0, 30))
        req.min_create_revision = draw(st.integers(0, 12))
        req.max_create_revision = draw(st.integers(0, 30))
    return req


put_requests = st.builds(
    lambda k, v, prev, iv, il, lease: pb.PutRequest(
        key=k, value=b"" if iv else v, prev_kv=prev, ignore_value=iv, ignore_lease=il,
        lease=lease),
    keys, values, st.booleans(), st.integers(0, 5).map(lambda n: n == 0),
    st.integers(0, 5).map(lambda n: n == 0), st.sampled_from([0] * 9 + [7]))
delete_requests = st.builds(
    lambda k, e, prev: pb.DeleteRangeRequest(key=k, range_end=e, prev_kv=prev),
    keys, range_ends, st.booleans())


@st.composite
def compares(draw: st.DrawFn) -> pb.Compare:
    c = pb.Compare(key=draw(keys), result=draw(st.integers(0, 3)),
                   target=draw(st.integers(0, 4)))
    if draw(st.integers(0, 3)) == 0:
        c.range_end = draw(range_ends)
    union = draw(st.sampled_from(["version", "create_revision", "mod_revision", "value",
                                  "lease", None]))
    if union == "value":
        c.value = draw(values)
    elif union is not None:
        setattr(c, union, draw(st.integers(0, 8)))
    return c


def txn_requests(depth: int = 2) -> st.SearchStrategy[pb.TxnRequest]:
    ops = [range_requests().map(lambda r: pb.RequestOp(request_range=r)),
           put_requests.map(lambda r: pb.RequestOp(request_put=r)),
           delete_requests.map(lambda r: pb.RequestOp(request_delete_range=r))]
    if depth:
        ops.append(txn_requests(depth - 1).map(lambda t: pb.RequestOp(request_txn=t)))
    op = st.one_of(*ops)
    return st.builds(
        lambda c, s, f: pb.TxnRequest(compare=c, success=s, failure=f),
        st.lists(compares(), max_size=2), st.lists(op, max_size=3),
        st.lists(op, max_size=2))


def response_of(store: MvccStore, op: int, req: bytes) -> object:
    return store.apply(op, b"", req).response


# Ranges checked at every revision after every step (the options' interplay: limit+1
# fetch, `more`, sort defaults, filters after the fetch).
_ALL = {"key": b"a", "range_end": b"\x00"}
SHAPES: list[dict[str, object]] = [
    {**_ALL, "limit": 1},
    {**_ALL, "limit": 2},
    {**_ALL, "limit": 2, "sort_target": pb.RangeRequest.VERSION},
    {**_ALL, "limit": 2, "sort_order": pb.RangeRequest.DESCEND},
    {**_ALL, "limit": 1, "sort_order": pb.RangeRequest.DESCEND,
     "sort_target": pb.RangeRequest.MOD},
    {**_ALL, "limit": 2, "min_mod_revision": 3, "keys_only": True},
    {**_ALL, "limit": 1, "count_only": True},
    {"key": b"a", "range_end": b"b", "limit": 1, "sort_order": pb.RangeRequest.ASCEND,
     "sort_target": pb.RangeRequest.VALUE},
    {"key": b"b", "range_end": b"", "max_create_revision": 4},
]


class MvccMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.store = MvccStore()
        self.twin = MvccStore()  # fed through insert_all / apply_ops
        self.model = Model()

    def _check(self, applied_rev: int, got: object, want: object) -> None:
        assert got == want
        assert applied_rev == self.model.revision == self.store.revision

    @rule(key=keys, value=values)
    def insert(self, key: bytes, value: bytes) -> None:
        applied = self.store.apply(OP_INSERT, key, value)
        self.twin.apply_ops([(0, 0, OP_INSERT, key, value)])
        self.model.put(pb.PutRequest(key=key, value=value))
        self._check(applied.revision, applied.response, None)

    @rule(key=keys)
    def delete(self, key: bytes) -> None:
        applied = self.store.apply(OP_DELETE, key, b"")
        self.twin.apply_ops([(0, 0, OP_DELETE, key, b"")])
        self.model.delete_range(pb.DeleteRangeRequest(key=key))
        self._check(applied.revision, applied.response, None)

    def _request(self, op: int, name: str, req: pb.Message) -> None:
        data = req.SerializeToString()
        applied = self.store.apply(op, b"", data)
        self.twin.apply_ops([(0, 0, op, b"", data)])
        want = apply_model(self.model, name, req)
        self._check(applied.revision, applied.response, want)

    @rule(req=put_requests)
    def put(self, req: pb.PutRequest) -> None:
        self._request(OP_PUT, "put", req)

    @rule(req=delete_requests)
    def delete_range(self, req: pb.DeleteRangeRequest) -> None:
        self._request(OP_DELETE_RANGE, "delete_range", req)

    @rule(req=txn_requests())
    def txn(self, req: pb.TxnRequest) -> None:
        self._request(OP_TXN, "txn", req)

    @rule(back=st.integers(-2, 6))
    def compact(self, back: int) -> None:
        rev = self.model.revision - back
        req = pb.CompactionRequest(revision=rev)
        data = req.SerializeToString()
        applied = self.store.apply(OP_COMPACTION, b"", data)
        self.twin.apply_ops([(0, 0, OP_COMPACTION, b"", data)])
        want = apply_model(self.model, "compact", rev)
        self._check(applied.revision, applied.response, want)
        assert all(c.revision > self.store.compact_revision for c in self.store.changes())

    @rule(reqs=st.lists(range_requests(), min_size=4, max_size=12))
    def ranges(self, reqs: list[pb.RangeRequest]) -> None:
        for req in reqs:
            assert _answer(self.store, req) == _answer(self.model, req)

    @invariant()
    def same_image(self) -> None:
        assert sorted(self.store.items_packed()) == sorted(self.twin.items_packed())
        assert list(self.store.changes()) == list(self.twin.changes())
        assert (self.twin.revision, self.twin.compact_revision) == (
            self.store.revision, self.store.compact_revision)
        assert self.store.compact_revision == self.model.compact_revision

    @invariant()
    def every_revision_reads_as_the_model(self) -> None:
        model, store = self.model, self.store
        restored = MvccStore.restore(store.revision, store.compact_revision,
                                     list(store.items_packed()), list(store.changes()))
        for rev in range(max(model.compact_revision - 1, 0), model.revision + 2):
            for shape in SHAPES:
                req = pb.RangeRequest(revision=rev, **shape)  # type: ignore[arg-type]
                assert _answer(store, req) == _answer(model, req)
            req = pb.RangeRequest(key=b"\x00", range_end=b"\x00", revision=rev)
            want = _answer(model, req)
            assert _answer(store, req) == want
            assert _answer(restored, req) == want
            if not isinstance(want, KvError):
                for k in KEYS[:3]:
                    got = store.get_kv(k, rev)
                    kvs = [kv for kv in want.kvs if kv.key == k]
                    assert got == (kvs[0] if kvs else None)
        for k in KEYS:
            packed = model.state.get(k)
            assert store.get(k) == (None if packed is None else packed[4])

    @invariant()
    def pages_cover_the_range(self) -> None:
        """Pagination by key (start after the last key, limit 2) at a fixed revision:
        every key once, in order."""
        model = self.model
        rev = model.revision
        full = model.range(pb.RangeRequest(key=b"a", range_end=b"\x00", revision=rev))
        seen: list[bytes] = []
        start = b"a"
        while True:
            page = self.store.range(pb.RangeRequest(key=start, range_end=b"\x00", limit=2,
                                                    revision=rev))
            seen.extend(kv.key for kv in page.kvs)
            if not page.more:
                break
            start = page.kvs[-1].key + b"\x00"
        assert seen == [kv.key for kv in full.kvs]


def _answer(store: object, req: pb.RangeRequest) -> object:
    try:
        return store.range(req)  # type: ignore[attr-defined]
    except KvError as e:
        return e


_QUIET = [HealthCheck.too_slow, HealthCheck.data_too_large]
MvccMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30,
                                         deadline=None, suppress_health_check=_QUIET)
TestMvccModel = MvccMachine.TestCase


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_mvcc_model_long() -> None:
    run_state_machine_as_test(MvccMachine, settings=settings(
        max_examples=300, stateful_step_count=50, deadline=None, suppress_health_check=_QUIET))
