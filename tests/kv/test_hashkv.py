"""`dengine.kv.hashkv`: etcd's HashKV values, and the hash at a past revision equal to the
hash of the store that stopped there (the roll back through the changelog)."""

from __future__ import annotations

import crc32c
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine.kv.codec import OP_COMPACTION, OP_DELETE_RANGE, OP_PUT, OP_TXN
from dengine.kv.hashkv import hash_kv
from dengine.kv.mvcc import MvccStore
from dengine.proto.etcd import rpc_pb2 as pb


def hashed(store: MvccStore, revision: int = 0) -> int:
    return hash_kv(store.copy_packed(), store.copy_changes(), store.compact_revision,
                   revision or store.revision)


def test_etcds_values() -> None:
    """Measured on etcd 3.4.23: an empty store, then `put a 1`."""
    store = MvccStore()
    assert hashed(store) == crc32c.crc32c(b"key") == 1084519789
    store.apply(OP_PUT, b"", pb.PutRequest(key=b"a", value=b"1").SerializeToString())
    assert hashed(store) == 2587454935
    assert hashed(store, 1) == 1084519789
    assert hash_kv(store.copy_packed(), store.copy_changes(), -1, -5) == 1084519789


KEYS = st.sampled_from([b"a", b"b", b"c", b"d"])
COMMAND = st.one_of(
    st.tuples(st.just("put"), KEYS, st.binary(max_size=3)),
    st.tuples(st.just("del"), KEYS, KEYS),
    st.tuples(st.just("txn"), st.lists(KEYS, min_size=1, max_size=3, unique=True),
              st.binary(max_size=2)),
    st.tuples(st.just("compact"), st.integers(0, 3), st.none()),
)


def apply(store: MvccStore, command: tuple) -> None:
    kind, a, b = command
    if kind == "put":
        store.apply(OP_PUT, b"", pb.PutRequest(key=a, value=b).SerializeToString())
    elif kind == "del":
        lo, hi = sorted((a, b))
        store.apply(OP_DELETE_RANGE, b"", pb.DeleteRangeRequest(
            key=lo, range_end=hi + b"\0").SerializeToString())
    elif kind == "txn":
        req = pb.TxnRequest(success=[pb.RequestOp(request_put=pb.PutRequest(key=k, value=b))
                                     for k in a])
        store.apply(OP_TXN, b"", req.SerializeToString())
    else:
        store.apply(OP_COMPACTION, b"", pb.CompactionRequest(
            revision=max(0, store.revision - a)).SerializeToString())


@settings(max_examples=150, deadline=None)
@given(st.lists(COMMAND, max_size=25), st.lists(COMMAND, max_size=10))
def test_a_past_revision_hashes_as_the_store_that_stopped_there(
        before: list[tuple], after: list[tuple]) -> None:
    """The hash at revision R of a store that went on equals the hash of the same
    commands stopped at R, while R is above the compacted revision (the history above
    it is what HashKV reads); and the members of a cluster, fed the same commands, agree."""
    stopped, went_on = MvccStore(), MvccStore()
    for command in before:
        apply(stopped, command)
        apply(went_on, command)
    for command in after:
        if command[0] != "compact":
            apply(went_on, command)
    assert hashed(went_on, stopped.revision) == hashed(stopped)
    replica = MvccStore()
    for command in before:
        apply(replica, command)
    assert hashed(replica) == hashed(stopped)
