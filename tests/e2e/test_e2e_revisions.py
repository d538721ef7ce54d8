"""etcd's revision semantics on real `dengine serve` processes (issue 16's acceptance): they
hold across kill -9 of each node in turn, a full-cluster kill -9 and restart, and a node
joining through a snapshot, with puts, deletes and txns running throughout; then a
compaction. At the end every member (the joined one included) is asked with serializable
reads, each on its own applied state: every key's get_kv, the whole key space at past
revisions (the history), the store revision and the compaction point must be the same
everywhere, and so must etcd's HashKV at the revisions kept; every acknowledged write must
be found at the revision it was given.

Snapshots are forced small (a low entry threshold) and the WAL checkpoints often, so the
restarts recover from checkpoint + WAL replay and the joiner from a snapshot (checked: its
log says so and its status shows a snapshot index).
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import grpc
from e2e_support import Cluster, wait_compacted

from dengine import Client, Compare, Op
from dengine.api import KeyValue
from dengine.errors import Compacted, DengineError
from dengine.proto.etcd import rpc_pb2

KEYS = [f"k{i:02d}".encode() for i in range(24)] + [f"p/{i}".encode() for i in range(8)]
EVERY_KEY = b"\x00"  # with from_key: the whole key space


@dataclass
class Acked:
    """One acknowledged call: the revision it was given and what it left at that revision
    (key -> value, None for a key it deleted)."""

    revision: int
    effects: dict[bytes, bytes | None]


@dataclass
class Workload:
    """Puts (plain and prev_kv), single-key and prefix deletes, txns (a guarded put and
    delete, read-only ones), from `workers` tasks on one Client with every endpoint."""

    seed: int = 16
    workers: int = 4
    acked: list[Acked] = field(default_factory=list)
    errors: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self, client: Client) -> None:
        self._stop.clear()
        self._tasks = [asyncio.create_task(self._run(client, random.Random(self.seed * 100 + i)))
                       for i in range(self.workers)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        self._tasks = []

    async def _run(self, client: Client, rnd: random.Random) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                await asyncio.wait_for(self._one(client, rnd, n), 5)
            except (DengineError, TimeoutError):
                self.errors += 1  # outcome unknown or refused: not counted either way
                await asyncio.sleep(0.05)

    async def _one(self, client: Client, rnd: random.Random, n: int) -> None:
        key = rnd.choice(KEYS)
        value = f"{key.decode()}-{rnd.random():.6f}".encode()
        kind = rnd.random()
        if kind < 0.35:
            r = await client.put(key, value)
            self.acked.append(Acked(r.revision, {key: value}))
        elif kind < 0.5:
            r = await client.put(key, value, prev_kv=True)
            self.acked.append(Acked(r.revision, {key: value}))
        elif kind < 0.6:
            d = await client.delete_range(key, prev_kv=True)
            if d.deleted:
                self.acked.append(Acked(d.revision, {key: None}))
        elif kind < 0.65:
            d = await client.delete_range(b"p/", prefix=True, prev_kv=True)
            if d.deleted:
                self.acked.append(Acked(d.revision, {kv.key: None for kv in d.prev_kvs}))
        elif kind < 0.9:
            other = rnd.choice([k for k in KEYS if k != key])
            current = await client.get_kv(key)
            guard = Compare.mod_revision(key) == (current.mod_revision if current else 0)
            t = await client.txn([guard], [Op.put(key, value), Op.delete(other)],
                                 [Op.get(key)])
            if t.succeeded:
                effects: dict[bytes, bytes | None] = {key: value}
                if t.responses[1].deleted:  # type: ignore[union-attr]
                    effects[other] = None
                self.acked.append(Acked(t.revision, effects))
        else:  # read-only: no revision of its own
            t = await client.txn([Compare.version(key) > 0], [Op.get(key)], [Op.get(b"p/",
                                                                                 prefix=True)])
            assert t.revision >= 1


async def wait_leader_applied(cluster: Cluster, timeout: float = 30.0) -> int:
    """Until every live node has applied the leader's commit index; returns it."""
    leader = await cluster.wait_leader(timeout=timeout)
    for node in cluster.nodes:
        if node.alive:
            await cluster.wait_caught_up(node.node_id, leader.commit_index, timeout=timeout)
    return leader.commit_index


async def hash_kv(endpoint: str, revision: int) -> int:
    """etcd's HashKV of the member at `endpoint` (its own applied state)."""
    async with grpc.aio.insecure_channel(endpoint) as channel:
        call = channel.unary_unary(
            "/etcdserverpb.Maintenance/HashKV",
            request_serializer=rpc_pb2.HashKVRequest.SerializeToString,
            response_deserializer=rpc_pb2.HashKVResponse.FromString)
        return int((await call(rpc_pb2.HashKVRequest(revision=revision), timeout=30)).hash)


async def member_view(endpoint: str, revisions: list[int], compacted_at: int
                      ) -> dict[str, Any]:
    """What one member answers from its own applied state (serializable reads)."""
    async with Client([endpoint], timeout=10) as c:
        now = await c.range(EVERY_KEY, from_key=True, consistency="eventual")
        history = {}
        for rev in revisions:
            r = await c.range(EVERY_KEY, from_key=True, revision=rev, consistency="eventual")
            history[rev] = (r.kvs, r.count)
        get_kv: dict[bytes, KeyValue | None] = {}
        for key in KEYS:
            get_kv[key] = await c.get_kv(key, consistency="eventual")
        below: str = "readable"
        try:
            await c.range(EVERY_KEY, from_key=True, revision=compacted_at - 1,
                          consistency="eventual")
        except Compacted as e:
            below = e.message
        return {"revision": now.revision, "kvs": now.kvs, "history": history,
                "get_kv": get_kv, "below_compaction": below}


def first_difference(a: Any, b: Any) -> str:
    """Where two views first differ (short)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=repr):
            if a.get(k) != b.get(k):
                return f"at {k!r}: {first_difference(a.get(k), b.get(k))}"
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        for x, y in zip(a, b, strict=False):
            if x != y:
                return first_difference(x, y)
        return f"{len(a)} items vs {len(b)}"
    return f"{a!r} vs {b!r}"


async def check_acknowledged(endpoint: str, acked: list[Acked], compacted_at: int) -> None:
    """Every acknowledged write is at its revision, as it left its keys (the history)."""
    async with Client([endpoint], timeout=10) as c:
        for a in acked:
            if a.revision < compacted_at:
                continue
            for key, value in a.effects.items():
                kv = await c.get_kv(key, revision=a.revision, consistency="eventual")
                if value is None:
                    assert kv is None, (endpoint, a, kv)
                else:
                    assert kv is not None and (kv.value, kv.mod_revision) == (
                        value, a.revision), (endpoint, a, kv)


def test_revisions_hold_across_kills_a_full_restart_and_a_snapshot_join(
    cluster_factory: Any,
) -> None:
    cluster: Cluster = cluster_factory(3, snapshot_threshold_entries=150,
                                       wal_checkpoint_bytes=64 * 1024)
    asyncio.run(scenario(cluster))


async def scenario(cluster: Cluster) -> None:
    await cluster.wait_leader()
    work = Workload()
    async with cluster.client(timeout=5) as client:
        work.start(client)
        await asyncio.sleep(1.5)
        # kill -9 of each node in turn, writes continuing
        for node in list(cluster.nodes):
            node.kill()
            await asyncio.sleep(1.0)
            node.start()
            await wait_leader_applied(cluster)
        await asyncio.sleep(0.5)
        await work.stop()
    # the whole cluster at once
    for node in cluster.nodes:
        node.kill()
    cluster.start()
    await wait_leader_applied(cluster)
    async with cluster.client(timeout=5) as client:
        work.start(client)
        await asyncio.sleep(1.0)
        # a new node that can only catch up through a snapshot: the leader's log no
        # longer starts at 1
        leader = await cluster.wait_leader()
        await wait_compacted(cluster, leader.node_id)
        joiner = cluster.add_joiner()
        joiner.start()
        await cluster.wait_members({1, 2, 3, joiner.node_id})
        await asyncio.sleep(0.5)
        await work.stop()
        await wait_leader_applied(cluster)
        async with Client([joiner.client], timeout=10) as c:
            st = await c.status()
        assert st.snapshot_index > 0, f"node {joiner.node_id} installed no snapshot: {st}"
        assert "installed the snapshot" in joiner.log_tail(100_000), joiner.log_tail()

        # compact at a revision in the middle of the history
        acked = sorted(work.acked, key=lambda a: a.revision)
        assert len(acked) > 50 and work.errors < len(acked), (len(acked), work.errors)
        revisions = sorted({a.revision for a in acked})
        compact_at = revisions[len(revisions) // 2]
        await client.compact(compact_at)
    current = await wait_leader_applied(cluster)
    assert current

    # Acknowledged calls were given distinct revisions, growing with time per worker.
    assert len({a.revision for a in acked}) == len(acked), "two calls, one revision"

    kept = [r for r in revisions if r >= compact_at]
    sample = sorted({compact_at, *random.Random(1).sample(kept, min(6, len(kept))),
                     kept[-1]})
    views = {n.node_id: await member_view(n.client, sample, compact_at)
             for n in cluster.nodes}
    first = views[1]
    assert first["below_compaction"] == ("etcdserver: mvcc: required revision has been "
                                         "compacted")
    assert first["revision"] >= revisions[-1]
    for node_id, view in views.items():
        for what in ("revision", "kvs", "get_kv", "below_compaction", "history"):
            assert view[what] == first[what], (
                f"node {node_id}'s {what} differs from node 1's: "
                f"{first_difference(view[what], first[what])}")
    for node in cluster.nodes:
        await check_acknowledged(node.client, acked, compact_at)
    # etcd's HashKV (the history as etcd's backend records: tombstones, the writes of one
    # revision in their order) is the same on every member at every revision kept
    for rev in sample[1:]:
        hashes = {n.node_id: await hash_kv(n.client, rev) for n in cluster.nodes}
        assert len(set(hashes.values())) == 1, (rev, hashes)
    # and the current state is what the last acknowledged write of each key left (or a
    # later write whose answer was lost: then the key's mod revision is newer)
    last: dict[bytes, tuple[int, bytes | None]] = {}
    for a in acked:
        for key, value in a.effects.items():
            last[key] = (a.revision, value)
    for key, (rev, value) in last.items():
        kv = first["get_kv"][key]
        if kv is not None:  # (None: maybe a later delete whose answer was lost)
            assert kv.mod_revision > rev or (kv.mod_revision, kv.value) == (rev, value), (
                key, rev, value, kv)
    print(f"\n{len(acked)} acknowledged writes, {work.errors} failed or unknown, revision "
          f"{first['revision']}, compacted at {compact_at}, joiner snapshot index "
          f"{st.snapshot_index}")
