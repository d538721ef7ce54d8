"""Leases in the node: the leader's lessor (expiry by its clock, revoked through the log,
promotion on leadership, keep-alives) and the Engine's lease calls."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from node_helpers import FAST, Cluster, run, until

from dengine import Engine
from dengine.api import LeaseGrant
from dengine.errors import InvalidRequest, KvError, LeaseNotFound, NotLeader
from dengine.kv.codec import OP_LEASE_GRANT, OP_LEASE_REVOKE, OP_PUT
from dengine.kv.leases import JOURNAL, LeaseTable
from dengine.kv.mvcc import MvccStore
from dengine.node.lessor import KV_LEASE_REVOKE, Lessor, min_ttl
from dengine.proto.etcd import rpc_pb2 as pb
from dengine.sim.nodesim.broken import UnconfirmedLessor


def test_min_ttl_is_etcds():
    assert min_ttl(1000) == 2  # etcd's default: ceil(1.5 x 1 s)
    assert min_ttl(300) == 1
    assert min_ttl(100) == 1
    assert min_ttl(5000) == 8


class Harness:
    """A lessor over a real store, a fake clock and a log that applies at once."""

    def __init__(self, lessor: type[Lessor] = Lessor) -> None:
        self.store = MvccStore()
        self.now = 100.0
        self.leader = True
        self.term = 1
        self.applied = 10
        self.last = 10
        self.proposed: list[int] = []
        self.confirmations: list[float] = []  # when each ReadIndex round confirmed
        self.deposed = False  # a quorum follows a newer leader: rounds fail
        self.lessor = lessor(
            election_timeout_s=1.0, is_leader=lambda: self.leader, term=lambda: self.term,
            applied_index=lambda: self.applied, last_index=lambda: self.last,
            read_local=lambda fn: fn(self.store), propose=self.propose,
            confirm=self.confirm, clock=lambda: self.now)

    async def confirm(self, timeout: float) -> None:
        """A ReadIndex round: a quorum answers 10 ms later, or a newer term."""
        self.now += 0.01
        if self.deposed:
            self.leader = False
            raise NotLeader("a newer term")
        self.confirmations.append(self.now)

    async def propose(self, field: int, data: bytes) -> Any:
        assert field == KV_LEASE_REVOKE
        self.proposed.append(pb.LeaseRevokeRequest.FromString(data).ID)

        class Result:
            response = self.store.apply(OP_LEASE_REVOKE, b"", data).response
        return Result()

    def grant(self, lease_id: int, ttl: int) -> None:
        self.store.apply(OP_LEASE_GRANT, b"", pb.LeaseGrantRequest(
            ID=lease_id, TTL=ttl).SerializeToString())

    async def step(self, dt: float) -> None:
        self.now += dt
        self.lessor.check()
        for _ in range(3):
            await asyncio.sleep(0)  # the revoke tasks run


def test_leader_expires_by_its_clock_and_revokes_through_the_log():
    async def main() -> None:
        h = Harness()
        h.grant(1, 5)
        h.store.apply(OP_PUT, b"", pb.PutRequest(key=b"k", value=b"v", lease=1)
                      .SerializeToString())
        await h.step(0)  # primary: full TTL + an election timeout
        assert h.lessor.primary_term == 1
        h.grant(2, 3)  # granted while primary: its TTL starts at the next look
        await h.step(0)
        assert h.lessor.remaining(2) == 3
        await h.step(3.01)
        assert h.proposed == [2]
        assert h.lessor.renew(1) == 5  # renewed at 103.01: deadline 108.01
        await h.step(4.9)
        assert h.proposed == [2]
        await h.step(0.2)
        assert h.proposed == [2, 1]
        assert h.store.get(b"k") is None and h.store.leases.ttls() == {}
        assert h.lessor.renew(1) == 0 and h.lessor.remaining(1) == -1
    run(main())


def test_a_keep_alive_renews_only_after_a_quorum_confirmed_the_leadership():
    """A deposed leader that has not noticed yet must not renew (etcd issue 15247; the
    whole-node simulator's seed 2001660: the new leader expired a lease the old one had
    just renewed): the renewal waits for a ReadIndex round, and counts from after it."""
    async def main() -> None:
        h = Harness()
        h.grant(1, 5)
        await h.step(0)  # primary at 100: deadline 106 (TTL + an election timeout)
        h.now = 103.0
        assert await h.lessor.keep_alive(1, 1.0) == 5
        assert h.confirmations == [103.01]
        assert h.lessor.remaining(1) == 5  # renewed after the round: deadline 108.01
        h.deposed = True
        with pytest.raises(NotLeader):
            await h.lessor.keep_alive(1, 1.0)
        assert len(h.confirmations) == 1
        h.deposed, h.leader = False, True  # still leader of term 1 (a round lost)
        await h.step(4.98)  # 108.0 (the refused round took 10 ms): it renewed nothing
        assert h.proposed == []
        await h.step(0.02)
        assert h.proposed == [1]
    run(main())


def test_the_unconfirmed_variant_renews_when_deposed():
    """The test above has teeth: the simulator's broken lessor (no round first) renews."""
    async def main() -> None:
        h = Harness(UnconfirmedLessor)
        h.grant(1, 5)
        await h.step(0)
        h.deposed = True
        assert await h.lessor.keep_alive(1, 1.0) == 5
    run(main())


def test_a_follower_expires_nothing_and_a_new_leader_restarts_every_ttl():
    async def main() -> None:
        h = Harness()
        h.grant(1, 2)
        h.leader = False
        await h.step(50)
        assert h.proposed == [] and h.lessor.primary_term == 0
        with pytest.raises(NotLeader):
            h.lessor.renew(1)
        h.leader, h.term, h.last = True, 2, 12  # elected; its first entry is 12
        await h.step(0)
        assert h.lessor.primary_term == 0  # not before it applied its predecessors' entries
        h.applied = 12
        await h.step(0)
        assert h.lessor.primary_term == 2
        await h.step(2.9)  # TTL + election timeout = 3 s from the promotion
        assert h.proposed == []
        await h.step(0.2)
        assert h.proposed == [1]
    run(main())


def test_a_failed_revoke_is_tried_again():
    async def main() -> None:
        h = Harness()
        h.grant(1, 1)
        await h.step(0)
        failures = [NotLeader("lost it")]
        propose = h.propose

        async def flaky(field: int, data: bytes) -> Any:
            if failures:
                raise failures.pop()
            return await propose(field, data)
        h.lessor._propose = flaky
        await h.step(2.1)
        assert h.store.leases.ttls() == {1: 1}
        await h.step(0.1)
        assert h.store.leases.ttls() == {}
    run(main())


def test_the_lessor_follows_grants_and_revokes_without_copying_the_table(monkeypatch):
    async def main() -> None:
        h = Harness()
        h.grant(1, 5)
        await h.step(0)  # primary: read the whole table once
        copies = []
        table = h.store.leases
        whole = LeaseTable.ttls
        monkeypatch.setattr(LeaseTable, "ttls", lambda t: copies.append(1) or whole(t))
        h.grant(2, 3)
        h.grant(3, 4)
        h.store.apply(OP_LEASE_REVOKE, b"", pb.LeaseRevokeRequest(ID=1).SerializeToString())
        await h.step(1)
        assert copies == []
        assert (h.lessor.remaining(1), h.lessor.remaining(2), h.lessor.remaining(3)) == (
            -1, 3, 4)
        for lease_id in range(10, 10 + JOURNAL + 1):  # more than the table remembers
            h.grant(lease_id, 7)
        await h.step(1)
        assert copies == [1]
        assert h.lessor.remaining(10 + JOURNAL) == 7 and h.lessor.remaining(2) == 2
        await h.step(2.01)
        assert sorted(h.proposed) == [2]
        # a restore replaces the table (its versions count anew): read whole
        packed = [(i, t) for i, t in table.packed() if i != 3] + [(90_099, 9)]
        h.store.leases = LeaseTable(packed)
        h.store.leases.grant(90_098, 8)
        await h.step(0)
        assert (h.lessor.remaining(3), h.lessor.remaining(90_098)) == (-1, 8)
        assert h.lessor.remaining(90_099) == 9
    run(main())


async def single(tmp_path: Path) -> Engine:
    engine = await Engine.start(str(tmp_path / "n1"), node_id=1, **FAST)
    await engine.wait_ready()
    return engine


def test_engine_lease_calls(tmp_path):
    async def main() -> None:
        engine = await single(tmp_path)
        try:
            grant = await engine.lease_grant(0)  # raised to the minimum TTL
            assert grant == LeaseGrant(grant.id, 1) and grant.id > 0
            mine = await engine.lease_grant(60, lease_id=0x1234)
            assert mine == LeaseGrant(0x1234, 60)
            with pytest.raises(KvError, match="etcdserver: lease already exists"):
                await engine.lease_grant(60, lease_id=0x1234)
            await engine.put(b"a", b"1", lease=0x1234)
            await engine.put(b"b", b"2", lease=0x1234)
            with pytest.raises(LeaseNotFound):
                await engine.put(b"c", b"3", lease=0x999)
            info = await engine.lease_time_to_live(0x1234, keys=True)
            assert (info.id, info.granted_ttl, info.keys) == (0x1234, 60, [b"a", b"b"])
            assert 58 <= info.ttl <= 60
            assert (await engine.lease_time_to_live(0x999)).ttl == -1
            assert sorted(await engine.leases()) == sorted([grant.id, 0x1234])
            assert await engine.lease_keepalive_once(0x1234) == 60
            with pytest.raises(LeaseNotFound):
                await engine.lease_keepalive_once(0x999)
            revision = (await engine.range(b"a", b"c")).revision
            await engine.lease_revoke(0x1234)
            after = await engine.range(b"a", b"c")
            assert after.kvs == [] and after.revision == revision + 1
            with pytest.raises(LeaseNotFound):
                await engine.lease_revoke(0x1234)
            with pytest.raises(InvalidRequest):
                await engine.lease_grant("10")  # type: ignore[arg-type]
        finally:
            await engine.stop()
    run(main())


def test_unrefreshed_lease_expires_and_kept_lease_lives(tmp_path):
    async def main() -> None:
        engine = await single(tmp_path)
        try:
            lost: list[bool] = []
            async with engine.lease(1, on_lost=lambda: lost.append(True)) as kept:
                grant = await engine.lease_grant(1)
                await engine.put(b"gone", b"x", lease=grant.id)
                await engine.put(b"kept", b"x", lease=kept.id)
                loop = asyncio.get_running_loop()
                began = loop.time()
                await until(lambda: engine._node.query_local(lambda s: s.get(b"gone")) is None,
                            timeout=5)
                # within TTL (+ the election timeout given at promotion) + 1 s
                assert loop.time() - began < 1 + 0.1 + 1
                await asyncio.sleep(3)  # 3 x its TTL
                assert await engine.get(b"kept") == b"x"
                assert not kept.lost.is_set() and kept.renewals >= 3
            assert await engine.get(b"kept") is None  # revoked on exit
            assert lost == [] and await engine.leases() == []
        finally:
            await engine.stop()
    run(main())


def test_kept_lease_learns_it_was_revoked(tmp_path):
    async def main() -> None:
        engine = await single(tmp_path)
        try:
            lost: list[bool] = []
            async with engine.lease(1, on_lost=lambda: lost.append(True)) as kept:
                await engine.lease_revoke(kept.id)
                await asyncio.wait_for(kept.lost.wait(), 2)
                assert "revoked" in kept.lost_reason and lost == [True]
        finally:
            await engine.stop()
    run(main())


async def at_leader(nodes: Cluster, call: Any) -> Any:
    """`call(leader)` on the current leader, again if leadership moved meanwhile (the
    FAST timings elect again under load)."""
    for _ in range(50):
        leader = await nodes.leader()
        try:
            return await call(leader)
        except NotLeader:
            await asyncio.sleep(0.05)
    raise AssertionError("no stable leader")


def test_leases_survive_restart_and_failover(tmp_path):
    async def main() -> None:
        nodes = Cluster(tmp_path, 3, snapshot_threshold_entries=20)
        await nodes.start_all()
        try:
            grant = await at_leader(nodes, lambda e: e.lease_grant(2))
            await at_leader(nodes, lambda e: e.put(b"k", b"v", lease=grant.id))
            for i in range(30):  # past the snapshot threshold: leases in a snapshot
                await at_leader(nodes, lambda e, i=i: e.put(b"x%d" % i, b"v"))
            await at_leader(nodes, lambda e: e.lease_keepalive_once(grant.id))
            old = (await nodes.leader()).node_id
            await nodes.stop(old)
            # The new leader gives the lease its full TTL again.
            assert await at_leader(nodes, lambda e: e.lease_keepalive_once(grant.id)) == 2
            leader = await nodes.leader()
            assert leader.lessor.primary_term > 0
            for follower in nodes.followers():
                with pytest.raises(NotLeader):
                    await follower.lease_keepalive_once(grant.id)
            await nodes.start(old)
            leader = await nodes.leader()
            await until(lambda: nodes.engines[old].status().applied_index
                        >= leader.status().commit_index, timeout=5)
            assert nodes.engines[old]._node.query_local(
                lambda s: s.leases.info(grant.id, True)) == (2, [b"k"])
        finally:
            await nodes.stop_all()
    run(main(), 60)
