"""Membership changes in embedded clusters: grow from one node by joining (snapshot catch-up,
auto-promotion), promote by hand, remove a follower, remove the leader, refused changes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from node_helpers import Cluster, run, until

from dengine import Engine
from dengine.errors import InvalidRequest, NotLeader, Unavailable


def roles(engine: Engine) -> dict[int, str]:
    return {m.id: m.role for m in engine.members()}


async def write(engine: Engine, lo: int, hi: int) -> None:
    """One log entry per put (the snapshot thresholds here count entries)."""
    for i in range(lo, hi):
        await engine.put(b"k%05d" % i, b"v%05d" % i)


async def has_keys(engine: Engine, hi: int) -> bool:
    values = await engine.get_many([b"k%05d" % i for i in range(hi)], "eventual")
    return values == [b"v%05d" % i for i in range(hi)]


def test_grow_from_one_node_to_three_through_snapshots(tmp_path: Path) -> None:
    async def main() -> None:
        nodes = Cluster(tmp_path, 0, snapshot_threshold_entries=100, snapshot_chunk_bytes=2048)
        try:
            one = await nodes.start(1)
            await one.wait_ready()
            await write(one, 0, 400)
            await until(lambda: one.status().first_log_index > 100)  # compacted
            two = await nodes.start(2, join=True)
            assert list(two.status().voters) == [] and list(two.status().learners) == []
            await asyncio.sleep(0.3)
            assert two.status().role != "leader" and two.status().term == 0  # never campaigns
            await nodes.change("add_learner", 2, nodes.peer(2), promote_when_caught_up=True)
            await until(lambda: roles(one).get(2) == "voter", timeout=20)
            assert two._node._snaps.installed == 1  # caught up through a snapshot
            assert await has_keys(two, 400)
            await until(lambda: list(two.status().voters) == [1, 2])  # node 2 learns it too
            info = {m.id: m for m in one.members()}
            assert info[1].is_leader and info[2].match_index > 0
            assert info[2].address == nodes.peer(2)
            assert one.peer_client_address(2) == two.config.listen_client

            three = await nodes.start(3, join=True)
            await nodes.change("add_learner", 3, nodes.peer(3))
            assert roles(one)[3] == "learner"
            await until(lambda: three.status().applied_index >= one.status().commit_index)
            assert three.status().role == "learner"
            await nodes.change("promote", 3)
            await until(lambda: sorted(three.status().voters) == [1, 2, 3])
            leader = await nodes.leader(all_know=False)
            await write(leader, 400, 450)
            # the first node can now fail: the two others elect a leader and keep the data
            await nodes.stop(1)
            leader = await nodes.leader(all_know=False)
            assert leader.node_id in (2, 3)
            await write(leader, 450, 460)
            assert await has_keys(leader, 460)
            # membership survives a restart (it is in the log / snapshot)
            other = 5 - leader.node_id
            await nodes.stop(other)
            again = await nodes.start(other, join=True)
            assert list(again.status().voters) == [1, 2, 3]
            await until(lambda: again.status().applied_index >= leader.status().commit_index)
        finally:
            await nodes.stop_all()

    run(main(), timeout=90)


async def three_voters(nodes: Cluster) -> Engine:
    one = await nodes.start(1)
    await one.wait_ready()
    for i in (2, 3):
        await nodes.start(i, join=True)
        await nodes.change("add_learner", i, nodes.peer(i), promote_when_caught_up=True)
        await until(lambda i=i: roles(one).get(i) == "voter", timeout=20)
    return one


def test_remove_a_follower_then_the_leader(tmp_path: Path) -> None:
    async def main() -> None:
        nodes = Cluster(tmp_path, 0)
        try:
            await three_voters(nodes)
            leader = await nodes.leader(all_know=False)
            await write(leader, 0, 50)
            follower = next(i for i in nodes.engines if i != leader.node_id)
            leader = await nodes.change("remove_member", follower)
            assert sorted(roles(leader)) == sorted(set(nodes.engines) - {follower})
            await nodes.stop(follower)
            await write(leader, 50, 60)  # two voters of two: still a quorum

            old = leader.node_id
            with pytest.raises(NotLeader) as caught:
                await leader.remove_member(old)
            new = caught.value.leader_id
            assert new not in (0, old) and not leader.is_leader  # handed over first
            successor = nodes.engines[new]
            await until(lambda: successor.is_leader)
            await nodes.change("remove_member", old)
            assert [m.id for m in successor.members()] == [new]
            await write(successor, 60, 70)  # alone: a quorum of one
            assert await has_keys(successor, 70)
        finally:
            await nodes.stop_all()

    run(main(), timeout=90)


def test_refused_membership_changes(tmp_path: Path) -> None:
    async def main() -> None:
        nodes = Cluster(tmp_path, 0, promote_lag=5)
        try:
            one = await nodes.start(1)
            await one.wait_ready()
            with pytest.raises(InvalidRequest, match="already a voter"):
                await one.add_learner(1, nodes.peer(1))
            with pytest.raises(InvalidRequest, match="not a member"):
                await one.remove_member(7)
            with pytest.raises(InvalidRequest, match="only voter"):
                await one.remove_member(1)
            with pytest.raises(InvalidRequest, match="HOST:PORT"):
                await one.add_learner(2, "nowhere")
            with pytest.raises(InvalidRequest, match="positive integer"):
                await one.add_learner(0, nodes.peer(2))
            # node 9 never runs: it stays a learner that has not caught up
            await nodes.change("add_learner", 9, nodes.peer(9))
            with pytest.raises(InvalidRequest, match="has not caught up"):
                await one.promote(9)
            with pytest.raises(InvalidRequest, match="not a learner"):
                await one.promote(1)
            # one change at a time: a second one while the first is uncommitted is refused
            await nodes.start(2, join=True)
            first = asyncio.ensure_future(one.add_learner(2, nodes.peer(2)))
            await asyncio.sleep(0)  # it appends its config entry, then waits for the commit
            with pytest.raises(Unavailable, match="one change at a time"):
                await one.remove_member(9)
            await first
            await until(lambda: list(nodes.engines[2].status().learners) == [2, 9])
            with pytest.raises(NotLeader) as caught:
                await nodes.engines[2].add_learner(3, nodes.peer(3))
            assert caught.value.leader_id == 1
            assert nodes.engines[2].members()[0].is_leader  # node 1, seen from node 2
        finally:
            await nodes.stop_all()

    run(main(), timeout=60)
