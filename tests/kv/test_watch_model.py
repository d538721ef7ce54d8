"""kv.watch.collect against the brute-force model (tests/kv/mvcc_model.py): after random
writes and compactions, a watch from any start, of any range, in batches of any size,
replayed onto the model's state at its start gives the model's state at every later
revision (nothing missed, nothing repeated, prev_kv right); a revision is never split
between batches; filters drop exactly their kind; a start below the history is Compacted
with etcd's compact_revision."""

from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mvcc_model import Model, in_range
from test_mvcc_model import delete_requests, put_requests, txn_requests

from dengine.errors import Compacted, KvError
from dengine.kv.codec import OP_COMPACTION, OP_DELETE_RANGE, OP_PUT, OP_TXN
from dengine.kv.mvcc import META_SIZE, MvccStore, unpack_meta
from dengine.kv.watch import WatchRange, collect

KEYS = [b"a", b"a\x00", b"ab", b"b", b"ba", b"c", b"\xff"]
ranges = st.sampled_from([(b"a", b""), (b"a", b"b"), (b"a", b"\x00"), (b"b", b"\x00"),
                          (b"\x00", b"\x00"), (b"ab", b"c"), (b"c", b"")])

ops = st.one_of(
    put_requests.map(lambda r: ("put", r)),
    put_requests.map(lambda r: ("put", r)),
    delete_requests.map(lambda r: ("delete", r)),
    txn_requests(1).map(lambda r: ("txn", r)),
    st.integers(0, 3).map(lambda n: ("compact", n)),
)


def run_ops(script: list[tuple[str, object]]) -> tuple[MvccStore, Model]:
    store, model = MvccStore(), Model()
    for kind, req in script:
        if kind == "compact":
            rev = max(1, store.revision - int(req))  # type: ignore[call-overload]
            from dengine.proto.etcd import rpc_pb2 as pb
            request = pb.CompactionRequest(revision=rev)
            store.apply(OP_COMPACTION, b"", request.SerializeToString())
            with contextlib.suppress(KvError):
                model.compact(rev)
            continue
        op = {"put": OP_PUT, "delete": OP_DELETE_RANGE, "txn": OP_TXN}[kind]
        store.apply(op, b"", req.SerializeToString())  # type: ignore[attr-defined]
        with contextlib.suppress(KvError):
            getattr(model, {"put": "put", "delete": "delete_range", "txn": "txn"}[kind])(req)
        assert store.revision == model.revision
    return store, model


def pull_all(store: MvccStore, after: int, rng: WatchRange, max_events: int,
             **filters: bool) -> list[list[tuple[int, bytes, bytes | None, bytes | None]]]:
    batches = []
    while True:
        batch = collect(store, after, rng, max_events=max_events, **filters)
        assert batch.revision >= after
        if batch.changes:
            assert batch.changes[0][0] > after - (after == store.compact_revision - 1)
            assert batch.changes[-1][0] <= batch.revision
        batches.append(list(batch.changes))
        if batch.revision == after and not batch.changes:
            break
        after = batch.revision
        if after >= store.revision and not batch.changes:
            break
    return batches


def restricted(state: dict[bytes, tuple[int, int, int, int, bytes]], rng: WatchRange
               ) -> dict[bytes, tuple[int, int, int, int, bytes]]:
    return {k: v for k, v in state.items() if in_range(k, rng.key, rng.range_end)}


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(script=st.lists(ops, max_size=30), rng=ranges, start=st.integers(0, 60),
       max_events=st.sampled_from([1, 2, 3, 1000]))
def test_watch_replays_the_model(script: list[tuple[str, object]], rng: tuple[bytes, bytes],
                                 start: int, max_events: int) -> None:
    store, model = run_ops(script)
    wr = WatchRange(*rng)
    start = 1 + start % (store.revision + 1)
    after = max(0, start - 1)
    compact = store.compact_revision
    if after < compact - 1:
        with pytest.raises(Compacted) as info:
            collect(store, after, wr)
        assert info.value.compact_revision == compact
        return
    batches = pull_all(store, after, wr, max_events)
    # whole revisions per batch, in order
    flat = [c for b in batches for c in b]
    revs = [c[0] for c in flat]
    assert revs == sorted(revs)
    for one, two in itertools.pairwise(batches):
        if one and two:
            assert one[-1][0] < two[0][0]
    assert all(in_range(c[1], wr.key, wr.range_end) for c in flat)
    base = max(after, compact)
    state = dict(restricted(model.states.get(base, {}), wr))
    if after < compact:  # start == compact: the puts of that revision, from its state
        at = [c for c in flat if c[0] == compact]
        want = {k for k, v in restricted(model.states[compact], wr).items() if v[1] == compact}
        assert {c[1] for c in at} == want
        flat = [c for c in flat if c[0] > compact]
    by_rev: dict[int, list[tuple[int, bytes, bytes | None, bytes | None]]] = {}
    for c in flat:
        by_rev.setdefault(c[0], []).append(c)
    for rev in range(base + 1, store.revision + 1):
        for _, key, new, prev in by_rev.get(rev, []):
            before = state.get(key)
            assert (prev is None) == (before is None)
            if prev is not None and before is not None:
                assert unpack_meta(prev)[:3] == before[:3] and prev[META_SIZE:] == before[4]
            if new is None:
                state.pop(key, None)
            else:
                c, m, v, lease = unpack_meta(new)
                assert m == rev
                state[key] = (c, m, v, lease, new[META_SIZE:])
        assert state == restricted(model.states[rev], wr), rev
    # filters drop exactly their kind
    for noput, nodelete in ((True, False), (False, True)):
        got = [c for b in pull_all(store, after, wr, max_events, noput=noput,
                                   nodelete=nodelete) for c in b]
        want = [c for b in batches for c in b
                if not (noput and c[2] is not None) and not (nodelete and c[2] is None)]
        assert got == want
