"""etcd's data model through dengine's one Python API: the embedded Engine, the Client over
native frames and over gRPC, and the SyncClient give the same answers on a real cluster
(three engines, real TCP between them, the leader serving clients)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from engine_cluster import agreed_leader, start_engines

import dengine
from dengine import Client, Compare, Engine, Op, SyncClient
from dengine.api import DeleteResult, KeyValue, PutResult, RangeResult, TxnResult
from dengine.errors import Compacted, FutureRevision, InvalidRequest, KvError, LeaseNotFound
from dengine.server import ClientService, NativeServer, start_grpc_server


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, nodes: int = 3) -> AsyncIterator[tuple[Engine, str]]:
    """`nodes` engines on one loop; the leader answers clients on gRPC and native."""
    engines: dict[int, Engine] = {}
    stops: list[Callable[[], Any]] = []
    try:
        await start_engines(engines, tmp_path, nodes)
        leader = await agreed_leader(engines)
        config = leader.config
        service = ClientService(leader, config)
        native = NativeServer.from_config(service, config)
        service.native_address = await native.start("127.0.0.1:0")
        stops.append(functools.partial(native.stop, 0))
        server = await start_grpc_server(service, config)
        stops.append(functools.partial(server.stop, None))
        yield leader, config.listen_client
    finally:
        for stop in reversed(stops):
            await stop()
        await asyncio.gather(*(e.stop() for e in engines.values()))


class Blocking:
    """A SyncClient's calls, awaitable (run on a thread, as a blocking caller would)."""

    def __init__(self, client: SyncClient) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self._client, name)
        return lambda *a, **kw: asyncio.to_thread(fn, *a, **kw)


async def scenario(api: Any, p: bytes) -> None:
    """The same calls and answers whichever front door `api` is; keys under prefix `p`."""
    base = (await api.range(p + b"none")).revision
    r = await api.put(p + b"a", b"1")
    assert isinstance(r, PutResult) and r.revision == base + 1 and r.prev_kv is None
    r = await api.put(p + b"b", b"2")
    r = await api.put(p + b"b", b"3", prev_kv=True)
    assert r.revision == base + 3
    assert r.prev_kv == KeyValue(p + b"b", b"2", base + 2, base + 2, 1, 0)
    await api.put(p + b"c", b"4")
    await api.put(p + b"d\xff", b"5")
    rev = base + 5

    kv = await api.get_kv(p + b"b")
    assert kv == KeyValue(p + b"b", b"3", base + 2, base + 3, 2, 0)
    assert await api.get_kv(p + b"nope") is None
    assert await api.get(p + b"b") == b"3"  # the plain get is unchanged
    old = await api.get_kv(p + b"b", revision=base + 2)
    assert old is not None and (old.value, old.version) == (b"2", 1)
    assert await api.get_kv(p + b"c", revision=base + 2) is None

    every = await api.range(p, prefix=True)
    assert isinstance(every, RangeResult)
    assert [kv.key for kv in every.kvs] == [p + b"a", p + b"b", p + b"c", p + b"d\xff"]
    assert (every.count, every.more, every.revision) == (4, False, rev)
    page = await api.range(p, prefix=True, limit=2)
    assert ([kv.key for kv in page.kvs], page.more, page.count) == ([p + b"a", p + b"b"],
                                                                     True, 4)
    rest = await api.range(page.kvs[-1].key + b"\0", p + b"\xff")
    assert [kv.key for kv in rest.kvs] == [p + b"c", p + b"d\xff"]
    newest = await api.range(p, prefix=True, sort_target="mod", sort_order="descend",
                             limit=1)
    assert [kv.key for kv in newest.kvs] == [p + b"d\xff"]
    keys = await api.range(p + b"a", p + b"c", keys_only=True)
    assert [(kv.key, kv.value) for kv in keys.kvs] == [(p + b"a", b""), (p + b"b", b"")]
    counted = await api.range(p, prefix=True, count_only=True)
    assert (counted.kvs, counted.count) == ([], 4)
    tail = await api.range(p + b"c", from_key=True, consistency="eventual")
    assert [kv.key for kv in tail.kvs][:2] == [p + b"c", p + b"d\xff"]
    at_old = await api.range(p, prefix=True, revision=base + 2)
    assert [kv.value for kv in at_old.kvs] == [b"1", b"2"]
    assert at_old.revision == rev  # the current revision, as etcd

    # transactions: compares on the state before, one revision, reads see earlier writes
    t = await api.txn(
        compare=[Compare.value(p + b"a") == b"1", Compare.version(p + b"b") > 1,
                 Compare.mod_revision(p + b"c") < rev, Compare.create(p + b"zz") == 0],
        success=[Op.put(p + b"a", b"10", prev_kv=True), Op.get(p + b"a"),
                 Op.delete(p + b"c", prev_kv=True),
                 Op.txn([Compare.version(p + b"a") == 0], [], [Op.get(p, prefix=True,
                                                                      count_only=True)])],
        failure=[Op.get(p + b"a")],
    )
    assert isinstance(t, TxnResult) and t.succeeded and t.revision == rev + 1
    put_r, get_r, del_r, nested = t.responses
    assert isinstance(put_r, PutResult) and put_r.prev_kv is not None
    assert put_r.prev_kv.value == b"1"
    assert isinstance(get_r, RangeResult) and get_r.kvs[0].value == b"10"
    assert get_r.kvs[0].mod_revision == rev + 1
    assert isinstance(del_r, DeleteResult) and del_r.deleted == 1
    assert isinstance(nested, TxnResult) and not nested.succeeded
    assert isinstance(nested.responses[0], RangeResult) and nested.responses[0].count == 3
    failed = await api.txn([Compare.value(p + b"a") == b"1"], [Op.put(p + b"a", b"x")],
                           [Op.get(p + b"a")])
    assert not failed.succeeded and failed.revision == rev + 1  # read-only: no new revision
    assert failed.responses[0].kvs[0].value == b"10"

    # compare_and_swap: expected None = must be absent
    assert await api.compare_and_swap(p + b"lock", None, b"me") is True
    assert await api.compare_and_swap(p + b"lock", None, b"you") is False
    assert await api.compare_and_swap(p + b"lock", b"you", b"x") is False
    assert await api.compare_and_swap(p + b"lock", b"me", b"you") is True
    assert await api.get(p + b"lock") == b"you"

    gone = await api.delete_range(p + b"a", p + b"c", prev_kv=True)
    assert gone.deleted == 2 and [kv.key for kv in gone.prev_kvs] == [p + b"a", p + b"b"]
    none = await api.delete_range(p + b"nothing")
    assert (none.deleted, none.revision) == (0, gone.revision)
    await api.delete(p + b"lock")  # the plain delete is unchanged
    assert await api.get_kv(p + b"lock") is None

    with pytest.raises(FutureRevision, match="etcdserver: mvcc: required revision is a "
                                              "future revision"):
        await api.range(p, prefix=True, revision=gone.revision + 100)
    with pytest.raises(InvalidRequest):
        await api.range(p, limit=-1)
    # etcd's checks before proposing: its errors, nothing applied
    before = (await api.range(p + b"none")).revision
    for call, message in [
        (api.txn([], [Op.put(p + b"x", b"1"), Op.put(p + b"x", b"2")]),
         "etcdserver: duplicate key given in txn request"),
        (api.txn([], [Op.put(p + f"{i}".encode(), b"v") for i in range(129)]),
         "etcdserver: too many operations in txn request"),
        (api.put(b"", b"v", prev_kv=True), "etcdserver: key is not provided"),
        (api.put(p + b"x", b"v", lease=7), "etcdserver: requested lease not found"),
    ]:
        with pytest.raises(KvError, match=message):
            await call
    assert (await api.range(p + b"none")).revision == before


async def compaction(api: Any, p: bytes) -> None:
    first = await api.put(p + b"k", b"1")
    await api.put(p + b"k", b"2")
    await api.compact(first.revision + 1)
    with pytest.raises(Compacted) as info:
        await api.get_kv(p + b"k", revision=first.revision)
    assert isinstance(info.value, KvError)
    assert info.value.message == "etcdserver: mvcc: required revision has been compacted"
    assert info.value.grpc_code == "OUT_OF_RANGE"
    kv = await api.get_kv(p + b"k", revision=first.revision + 1)
    assert kv is not None and kv.value == b"2"
    with pytest.raises(Compacted):
        await api.compact(first.revision)


def test_engine_client_and_sync_client_give_the_same_answers(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path) as (engine, address):
            await scenario(engine, b"/engine/")
            async with Client(address) as native:
                await scenario(native, b"/native/")
            async with Client(address, transport="grpc") as over_grpc:
                await scenario(over_grpc, b"/grpc/")
            with SyncClient(address) as sync:
                await scenario(Blocking(sync), b"/sync/")
            await compaction(engine, b"/c1/")
            async with Client(address) as native:
                await compaction(native, b"/c2/")

    asyncio.run(main())


async def leases(api: Any, p: bytes) -> None:
    """The lease calls: the same answers whichever front door `api` is."""
    grant = await api.lease_grant(30)
    assert grant.ttl == 30 and grant.id > 0
    small = await api.lease_grant(0)
    assert small.ttl == 2  # the cluster's minimum (1.5 x its 1 s election timeout, rounded up)
    await api.put(p + b"a", b"1", lease=grant.id)
    await api.txn([], [Op.put(p + b"b", b"2", lease=grant.id)])
    await api.put(p + b"c", b"3", lease=grant.id)
    await api.put(p + b"c", b"3")  # re-put without the lease: detached
    info = await api.lease_time_to_live(grant.id, keys=True)
    assert (info.id, info.granted_ttl, info.keys) == (grant.id, 30, [p + b"a", p + b"b"])
    assert 28 <= info.ttl <= 30
    assert {grant.id, small.id} <= set(await api.leases())
    assert await api.lease_keepalive_once(grant.id) == 30
    before = (await api.range(p, prefix=True)).revision
    await api.lease_revoke(grant.id)
    after = await api.range(p, prefix=True)
    assert [kv.key for kv in after.kvs] == [p + b"c"] and after.revision == before + 1
    with pytest.raises(LeaseNotFound, match="etcdserver: requested lease not found"):
        await api.lease_keepalive_once(grant.id)
    with pytest.raises(LeaseNotFound):
        await api.lease_revoke(grant.id)
    assert (await api.lease_time_to_live(grant.id)).ttl == -1
    await api.lease_revoke(small.id)


def test_leases_through_every_front_door(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path) as (engine, address):
            await leases(engine, b"/engine/")
            async with Client(address) as native:
                await leases(native, b"/native/")
                async with native.lease(1) as kept:  # kept alive past 2 x its TTL (2 s)
                    await native.put(b"/kept", b"x", lease=kept.id)
                    await asyncio.sleep(4.5)
                    assert await native.get(b"/kept") == b"x" and not kept.lost.is_set()
                assert await native.get(b"/kept") is None  # revoked on exit
            async with Client(address, transport="grpc") as over_grpc:
                await leases(over_grpc, b"/grpc/")
            with SyncClient(address) as sync:
                await leases(Blocking(sync), b"/sync/")

                def hold() -> bool:
                    with sync.lease(5) as kept:
                        sync.put(b"/sync-kept", b"x", lease=kept.id)
                        return sync.get(b"/sync-kept") == b"x" and not kept.lost.is_set()
                assert await asyncio.to_thread(hold)
                assert await asyncio.to_thread(sync.get, b"/sync-kept") is None

    asyncio.run(main())


def test_concurrent_etcd_calls_are_batched_and_each_gets_its_answer(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path, nodes=1) as (_, address), Client(address) as client:
            puts = await asyncio.gather(*(
                client.put(f"/k/{i:03}", str(i), prev_kv=bool(i % 2)) for i in range(200)))
            assert sorted(r.revision for r in puts) == sorted({r.revision for r in puts})
            ranges = await asyncio.gather(*(
                client.range(f"/k/{i:03}") for i in range(200)))
            assert [r.kvs[0].value for r in ranges] == [str(i).encode() for i in range(200)]
            # one caller's etcd error does not fail the others of its batch
            outcomes = await asyncio.gather(
                client.range("/k/", prefix=True, revision=10**9),
                client.range("/k/", prefix=True, count_only=True),
                return_exceptions=True)
            assert isinstance(outcomes[0], FutureRevision)
            assert isinstance(outcomes[1], RangeResult) and outcomes[1].count == 200
            swaps = await asyncio.gather(*(
                client.compare_and_swap("/lock", None, str(i)) for i in range(20)))
            assert swaps.count(True) == 1

    asyncio.run(main())


def test_public_names() -> None:
    assert dengine.Compare is Compare and dengine.Op is Op
    assert dengine.KeyValue is KeyValue and dengine.Compacted is Compacted


def test_plain_put_results_carry_the_whole_header(tmp_path: Path) -> None:
    """etcdctl's `put -w json` shows cluster_id, member_id, revision and raft_term: a plain
    put (the insert fast path, no etcd response) carries them too, on every front door."""
    async def main() -> None:
        async with serving(tmp_path, nodes=1) as (engine, address):
            ids = engine.header_ids()
            assert ids.cluster_id and ids.member_id and ids.raft_term
            async with Client(address) as native, \
                    Client(address, transport="grpc") as over_grpc:
                for api in (engine, native, over_grpc):
                    r = await api.put(b"/h/k", b"v")
                    assert (r.header.cluster_id, r.header.member_id, r.header.revision,
                            r.header.raft_term) == (*ids[:2], r.revision, ids.raft_term)

    asyncio.run(main())


def test_a_read_only_txn_is_served_as_a_read_by_the_client(tmp_path: Path,
                                                            monkeypatch: Any) -> None:
    """A remote txn of ranges only appends nothing to the log (KvRead's txns, as etcd
    serves it); its errors are etcd's; a server before KvRead's txns still answers it
    (through the log)."""
    async def main() -> None:
        async with serving(tmp_path, nodes=1) as (engine, address), \
                Client(address) as client, Client(address, transport="grpc") as over_grpc:
            await client.put(b"/r/a", b"1")
            for api in (client, over_grpc):
                last = engine.status().last_log_index
                t = await api.txn([Compare.version(b"/r/a") > 0],
                                  [Op.get(b"/r/", prefix=True)], [Op.get(b"/r/b")])
                assert t.succeeded and t.responses[0].kvs[0].key == b"/r/a"
                assert t.header.member_id == engine.node_id
                assert engine.status().last_log_index == last  # nothing proposed
                with pytest.raises(KvError, match="too many operations in txn request"):
                    await api.txn([], [Op.get(b"/r/%d" % i) for i in range(129)])
                with pytest.raises(Compacted):
                    await api.compact((await api.put(b"/r/a", b"2")).revision)
                    await api.txn([], [Op.get(b"/r/a", revision=1)])

            # A server that ignores KvRead's txns (before them): the txn goes through the log
            from dengine.proto.client_pb2 import KvReadRequest
            from dengine.server import service

            class OldKvReadRequest:
                @staticmethod
                def FromString(data: bytes) -> KvReadRequest:  # noqa: N802
                    req = KvReadRequest.FromString(data)
                    del req.txns[:]
                    return req

            monkeypatch.setattr(service, "KvReadRequest", OldKvReadRequest)
            async with Client(address) as old:
                last = engine.status().last_log_index
                t = await old.txn([], [Op.get(b"/r/a")])
                assert t.responses[0].kvs[0].value == b"2"
                assert engine.status().last_log_index == last + 1

    asyncio.run(main())
