"""A deterministic stand-in for dengine's API, for the recipes' simulation tests.

`FakeCluster` holds one real `MvccStore` (etcd's semantics: txn, ranges, revisions,
history), a lease table and the watchers; `FakeCluster.api(name)` is one client of it:
`txn`, `range`, `get_kv`, `delete_range`, `watch` and `lease(ttl)` as the recipes call
them. Every call first yields to the event loop a number of times drawn from the seeded
RNG (`sleep(0)` only: no clock), so the interleavings of many clients are arbitrary yet
the same for the same seed. `expire(lease)` ends a lease as the leader would (its keys
deleted in one revision, its holder told by `lost`); `pause(name)` freezes a client (its
calls wait) without telling it anything.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Sequence
from typing import Any

from dengine.api import KeyValue, TxnResult
from dengine.errors import Compacted, KvError
from dengine.kv import ops as kvops
from dengine.kv.codec import OP_TXN
from dengine.kv.mvcc import META_SIZE, MvccStore, unpack_meta
from dengine.kv.ops import Compare, Op
from dengine.proto.etcd import rpc_pb2

PUT, DELETE = 0, 1


class LeaseStore(MvccStore):
    def __init__(self) -> None:
        super().__init__()
        self.granted: set[int] = set()  # (not MvccStore.leases: this fake keeps its own)

    def _lease_exists(self, lease: int) -> bool:
        return lease == 0 or lease in self.granted


class Event:
    def __init__(self, type: int, kv: KeyValue) -> None:
        self.type = type
        self.kv = kv


class FakeCluster:
    def __init__(self, seed: int, max_yields: int = 5) -> None:
        self.rng = random.Random(seed)
        self.max_yields = max_yields
        self.store = LeaseStore()
        self.changed = asyncio.Event()
        self.next_lease = 0x1000
        self.kept: dict[int, FakeKeptLease] = {}
        self.paused: dict[str, asyncio.Event] = {}

    def api(self, name: str) -> FakeApi:
        return FakeApi(self, name)

    async def step(self, name: str) -> None:
        for _ in range(self.rng.randrange(self.max_yields + 1)):
            await asyncio.sleep(0)
        gate = self.paused.get(name)
        if gate is not None:
            await gate.wait()

    def pause(self, name: str) -> None:
        self.paused[name] = asyncio.Event()

    def resume(self, name: str) -> None:
        gate = self.paused.pop(name, None)
        if gate is not None:
            gate.set()

    def _notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def txn(self, request: rpc_pb2.TxnRequest) -> rpc_pb2.TxnResponse:
        applied = self.store.apply(OP_TXN, b"", request.SerializeToString())
        if isinstance(applied.response, KvError):
            raise applied.response
        self._notify()
        return applied.response  # type: ignore[return-value]

    def grant(self) -> int:
        self.next_lease += self.rng.randrange(1, 100)
        self.store.granted.add(self.next_lease)
        return self.next_lease

    def expire(self, lease: int) -> None:
        """End `lease`: its keys deleted in one revision, its holder told."""
        if lease not in self.store.granted:
            return
        keys = [k for k, packed in self.store.items_packed() if unpack_meta(packed)[3] == lease]
        if keys:
            self.txn(kvops.txn_request((), [Op.delete(k) for k in keys], ()))
        self.store.granted.discard(lease)
        kept = self.kept.pop(lease, None)
        if kept is not None:
            kept.lost.set()

    def holder_leases(self) -> list[int]:
        return sorted(self.store.granted)


class FakeKeptLease:
    def __init__(self, cluster: FakeCluster, name: str, ttl: int) -> None:
        self._cluster = cluster
        self._name = name
        self.ttl = ttl
        self.id = 0
        self.lost = asyncio.Event()

    async def __aenter__(self) -> FakeKeptLease:
        await self._cluster.step(self._name)
        self.id = self._cluster.grant()
        self._cluster.kept[self.id] = self
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._cluster.step(self._name)
        if self.id not in self._cluster.store.granted:
            raise KvError("NOT_FOUND", "etcdserver: requested lease not found")
        self._cluster.kept.pop(self.id, None)
        self._cluster.expire(self.id)


class FakeWatch:
    def __init__(self, api: FakeApi, key: bytes, range_end: bytes, start: int) -> None:
        self._api = api
        self._key, self._end = key, range_end
        self._next = start or api.cluster.store.revision + 1
        self._closed = False
        self._iter = self._events()

    def _match(self, key: bytes) -> bool:
        if not self._end:
            return key == self._key
        return self._key <= key < self._end

    async def _events(self) -> AsyncIterator[Event]:
        cluster = self._api.cluster
        while not self._closed:
            await cluster.step(self._api.name)
            store = cluster.store
            if self._next <= store.compact_revision:
                raise Compacted()
            changed = cluster.changed
            for ch in store.changes_since(self._next - 1):
                self._next = ch.revision + 1
                if not self._match(ch.key):
                    continue
                if ch.new is None:
                    yield Event(DELETE, KeyValue(ch.key, b"", 0, ch.revision, 0, 0))
                else:
                    c, m, v, lease = unpack_meta(ch.new)
                    yield Event(PUT, KeyValue(ch.key, ch.new[META_SIZE:], c, m, v, lease))
            self._next = max(self._next, store.revision + 1)
            await changed.wait()

    def __aiter__(self) -> FakeWatch:
        return self

    async def __anext__(self) -> Event:
        return await self._iter.__anext__()

    async def close(self) -> None:
        self._closed = True
        await self._iter.aclose()


class FakeApi:
    def __init__(self, cluster: FakeCluster, name: str) -> None:
        self.cluster = cluster
        self.name = name

    async def txn(self, compare: Sequence[Compare] = (), success: Sequence[Op] = (),
                  failure: Sequence[Op] = (), *, timeout: float | None = None) -> TxnResult:
        await self.cluster.step(self.name)
        result = kvops.txn_result(self.cluster.txn(kvops.txn_request(compare, success,
                                                                     failure)))
        await self.cluster.step(self.name)
        return result

    async def range(self, key: Any, range_end: Any = None, **kw: Any) -> Any:
        await self.cluster.step(self.name)
        kw.pop("timeout", None)
        kw.pop("consistency", None)
        sort_target = kw.pop("sort_target", "key")
        sort_order = kw.pop("sort_order", None)
        req = kvops.range_request(key, range_end, sort_target_name=sort_target,
                                  sort_order_name=sort_order, **kw)
        return kvops.range_result(self.cluster.store.range(req))

    async def get_kv(self, key: bytes, **kw: Any) -> KeyValue | None:
        result = await self.range(key)
        return result.kvs[0] if result.kvs else None

    async def delete_range(self, key: bytes, **kw: Any) -> Any:
        return await self.txn((), [Op.delete(key)])

    def watch(self, key: bytes, range_end: bytes | None = None, *, prefix: bool = False,
              start_revision: int = 0, **kw: Any) -> FakeWatch:
        k, end = kvops.key_range(key, range_end, prefix=prefix)
        return FakeWatch(self, k, end, start_revision)

    def lease(self, ttl: int) -> FakeKeptLease:
        return FakeKeptLease(self.cluster, self.name, ttl)
