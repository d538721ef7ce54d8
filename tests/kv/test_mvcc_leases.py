"""The store's lease table (etcd's lessor, its replicated part): grant, attach, detach,
revoke in one revision, errors, and the table through restore (checkpoints, snapshots)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dengine.errors import KvError
from dengine.kv.codec import (
    OP_DELETE,
    OP_DELETE_RANGE,
    OP_INSERT,
    OP_LEASE_GRANT,
    OP_LEASE_REVOKE,
    OP_PUT,
    OP_TXN,
    decode_any_command,
    encode_request,
)
from dengine.kv.etcd_check import LEASE_EXIST, LEASE_NOT_FOUND
from dengine.kv.mvcc import MvccStore, unpack_meta
from dengine.proto.etcd import rpc_pb2 as pb


def grant(store: MvccStore, lease_id: int, ttl: int = 10):
    return store.apply(OP_LEASE_GRANT, b"", pb.LeaseGrantRequest(
        ID=lease_id, TTL=ttl).SerializeToString())


def revoke(store: MvccStore, lease_id: int):
    return store.apply(OP_LEASE_REVOKE, b"", pb.LeaseRevokeRequest(
        ID=lease_id).SerializeToString())


def put(store: MvccStore, key: bytes, value: bytes = b"v", lease: int = 0, **kw):
    return store.apply(OP_PUT, b"", pb.PutRequest(
        key=key, value=value, lease=lease, **kw).SerializeToString())


def lease_of(store: MvccStore, key: bytes) -> int:
    packed = store.get_packed(key)
    assert packed is not None
    return int(unpack_meta(packed)[3])


def test_grant_answers_id_and_ttl_without_a_revision():
    store = MvccStore()
    revision, resp = grant(store, 7, 30)
    assert (revision, resp.ID, resp.TTL, resp.header.revision) == (1, 7, 30, 1)
    assert store.leases.ttls() == {7: 30}
    assert store.leases.info(7) == (30, [])
    assert store.leases.info(8) is None


def test_grant_of_an_existing_id_fails_as_etcd():
    store = MvccStore()
    grant(store, 7)
    _, err = grant(store, 7, 99)
    assert isinstance(err, KvError) and err.message == LEASE_EXIST
    assert err.grpc_code == "FAILED_PRECONDITION"
    assert store.leases.ttls() == {7: 10}


def test_grant_without_an_id_fails_deterministically():
    _, err = grant(MvccStore(), 0)
    assert isinstance(err, KvError) and err.grpc_code == "INVALID_ARGUMENT"


def test_put_with_unknown_lease_fails():
    store = MvccStore()
    _, err = put(store, b"a", lease=5)
    assert isinstance(err, KvError) and err.message == LEASE_NOT_FOUND
    assert store.revision == 1 and store.get(b"a") is None


def test_revoke_deletes_every_key_in_one_revision_seen_as_changes():
    store = MvccStore()
    grant(store, 7)
    for key in (b"b", b"a", b"c"):
        put(store, key, lease=7)
    put(store, b"other")
    assert store.revision == 5
    assert store.leases.info(7, keys=True) == (10, [b"a", b"b", b"c"])
    revision, resp = revoke(store, 7)
    assert revision == 6 and resp.header.revision == 6
    assert [(c.revision, c.key, c.new) for c in store.changes_since(5)] == [
        (6, b"a", None), (6, b"b", None), (6, b"c", None)]
    assert store.get(b"other") == b"v" and store.get(b"a") is None
    assert store.leases.ttls() == {}


def test_revoke_without_keys_keeps_the_revision_and_unknown_fails():
    store = MvccStore()
    grant(store, 7)
    assert revoke(store, 7)[0] == 1
    _, err = revoke(store, 7)
    assert isinstance(err, KvError) and err.message == LEASE_NOT_FOUND
    assert err.grpc_code == "NOT_FOUND"


def test_reput_delete_and_plain_insert_detach():
    store = MvccStore()
    grant(store, 1)
    grant(store, 2)
    put(store, b"a", lease=1)
    put(store, b"b", lease=1)
    put(store, b"c", lease=1)
    put(store, b"d", lease=1)
    put(store, b"a")  # re-put without the lease
    put(store, b"b", lease=2)  # moved to another lease
    store.apply(OP_DELETE, b"c", b"")  # deleted
    store.apply(OP_INSERT, b"d", b"plain")  # the plain-insert fast path
    assert store.leases.info(1, keys=True) == (10, [])
    assert store.leases.info(2, keys=True) == (10, [b"b"])
    revoke(store, 1)
    assert store.get(b"a") == b"v" and store.get(b"d") == b"plain"
    revoke(store, 2)
    assert store.get(b"b") is None


def test_ignore_lease_keeps_the_lease_and_delete_range_detaches():
    store = MvccStore()
    grant(store, 1)
    put(store, b"a", lease=1)
    put(store, b"a", b"w", ignore_lease=True)
    assert lease_of(store, b"a") == 1
    store.apply(OP_DELETE_RANGE, b"", pb.DeleteRangeRequest(
        key=b"a", range_end=b"b").SerializeToString())
    assert store.leases.info(1, keys=True) == (10, [])


def test_txn_put_with_lease_attaches_and_unknown_lease_fails_whole_txn():
    store = MvccStore()
    grant(store, 3)
    txn = pb.TxnRequest(success=[
        pb.RequestOp(request_put=pb.PutRequest(key=b"x", value=b"1", lease=3)),
        pb.RequestOp(request_put=pb.PutRequest(key=b"y", value=b"2")),
    ])
    store.apply(OP_TXN, b"", txn.SerializeToString())
    assert store.leases.info(3, keys=True) == (10, [b"x"])
    bad = pb.TxnRequest(success=[
        pb.RequestOp(request_put=pb.PutRequest(key=b"z", value=b"1", lease=4))])
    _, err = store.apply(OP_TXN, b"", bad.SerializeToString())
    assert isinstance(err, KvError) and err.message == LEASE_NOT_FOUND
    assert store.get(b"z") is None


def test_lease_commands_round_trip_the_codec():
    data = pb.LeaseGrantRequest(ID=5, TTL=9).SerializeToString()
    assert decode_any_command(encode_request(OP_LEASE_GRANT, data)) == (
        OP_LEASE_GRANT, b"", data)
    data = pb.LeaseRevokeRequest(ID=5).SerializeToString()
    assert decode_any_command(encode_request(OP_LEASE_REVOKE, data)) == (
        OP_LEASE_REVOKE, b"", data)


def restored(store: MvccStore) -> MvccStore:
    return MvccStore.restore(store.revision, store.compact_revision,
                             store.items_packed(), store.changes(), store.leases.packed())


def test_restore_rebuilds_the_attached_keys():
    store = MvccStore()
    grant(store, 1, 5)
    grant(store, 2, 6)
    put(store, b"a", lease=1)
    put(store, b"b", lease=2)
    put(store, b"c")
    copy = restored(store)
    assert copy.leases.ttls() == {1: 5, 2: 6}
    assert copy.leases.info(1, keys=True) == (5, [b"a"])
    revoke(copy, 2)
    assert copy.get(b"b") is None and copy.revision == store.revision + 1


# A random sequence of lease and key operations against a plain model.
ids = st.integers(1, 4)
keys = st.sampled_from([b"a", b"b", b"c", b"d", b"e"])
ops = st.lists(st.one_of(
    st.tuples(st.just("grant"), ids),
    st.tuples(st.just("revoke"), ids),
    st.tuples(st.just("put"), keys, st.integers(0, 4)),
    st.tuples(st.just("insert"), keys),
    st.tuples(st.just("delete"), keys),
    st.tuples(st.just("restore")),
), max_size=40)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_leases_match_a_model(ops):
    store = MvccStore()
    leases: set[int] = set()
    live: dict[bytes, int] = {}  # key -> lease
    revision = 1
    for op in ops:
        kind = op[0]
        if kind == "grant":
            _, resp = grant(store, op[1])
            assert isinstance(resp, KvError) == (op[1] in leases)
            leases.add(op[1])
        elif kind == "revoke":
            _, resp = revoke(store, op[1])
            assert isinstance(resp, KvError) == (op[1] not in leases)
            if op[1] in leases:
                leases.discard(op[1])
                gone = [k for k, lease in live.items() if lease == op[1]]
                if gone:
                    revision += 1
                    for k in gone:
                        del live[k]
                    assert {c.key for c in store.changes_since(revision - 1)} == set(gone)
        elif kind == "put":
            _, resp = put(store, op[1], lease=op[2])
            ok = op[2] == 0 or op[2] in leases
            assert isinstance(resp, KvError) != ok
            if ok:
                revision += 1
                live[op[1]] = op[2]
        elif kind == "insert":
            store.apply(OP_INSERT, op[1], b"i")
            revision += 1
            live[op[1]] = 0
        elif kind == "delete":
            store.apply(OP_DELETE, op[1], b"")
            if op[1] in live:
                revision += 1
                del live[op[1]]
        else:
            store = restored(store)
        assert store.revision == revision
        assert set(store.leases.ttls()) == leases
        assert {k: lease_of(store, k) for k in live} == live
        assert len(store) == len(live)
        for lease_id in leases:
            info = store.leases.info(lease_id, keys=True)
            assert info is not None
            assert info[1] == sorted(k for k, lease in live.items() if lease == lease_id)


def test_lease_table_tells_its_recent_changes():
    from dengine.kv.leases import JOURNAL, LeaseTable
    table = LeaseTable([(1, 5)])
    table.grant(2, 3)
    table.revoke(1)
    table.revoke(7)  # unknown: no change
    assert table.version == 2
    assert table.changes_since(0) == [(2, 3), (1, None)]
    assert table.changes_since(1) == [(1, None)] and table.changes_since(2) == []
    assert table.changes_since(3) is None  # a version it never had
    for lease_id in range(10, 10 + JOURNAL):
        table.grant(lease_id, 1)
    assert table.changes_since(0) is None  # forgotten: copy `ttls` instead
    assert table.changes_since(table.version - 1) == [(9 + JOURNAL, 1)]
