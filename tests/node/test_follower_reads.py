"""A follower that cannot reach its leader answers its linearizable reads with a retryable
error within about an election timeout, not at their deadline (issue 14: the old leader of
a `leader_out_blackhole` fault follows the new leader -- it hears it -- but the ReadIndex
requests it forwards never arrive; clients waited out each read's whole timeout there)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from node_helpers import Cluster, run, until

from dengine import Engine
from dengine.errors import NotLeader

TIMINGS = {"election_timeout_ms": 300, "heartbeat_interval_ms": 50}
DEADLINE = 10.0  # the reads' timeout: what the old code answered them at (Timeout)


def _node(engine: Engine) -> Any:
    return engine._node


async def _old_leader_following(cluster: Cluster) -> tuple[Engine, Engine]:
    """Black-hole the leader's outbound peer messages (it still hears the others) until
    another node leads and the old leader follows it: (old leader, new leader)."""
    old = await cluster.leader()
    await old.put(b"k", b"v0")
    _node(old)._transport.send = lambda messages: None

    def following() -> bool:
        new = [e for e in cluster.engines.values() if e.is_leader and e is not old]
        return bool(new) and not old.is_leader and old.leader_id == new[0].node_id

    await until(following, timeout=DEADLINE)
    new = next(e for e in cluster.engines.values() if e.is_leader)
    return old, new


def test_a_follower_cut_off_from_the_leader_fails_its_reads_retryably(tmp_path: Path) -> None:
    async def main() -> None:
        cluster = Cluster(tmp_path, **TIMINGS)
        await cluster.start_all()
        try:
            old, new = await _old_leader_following(cluster)
            reads = [asyncio.ensure_future(old.get(b"k", "linearizable", timeout=DEADLINE))
                     for _ in range(3)]
            done, _ = await asyncio.wait(reads, timeout=DEADLINE - 1)
            assert len(done) == 3, "reads still waiting on a leader they cannot reach"
            for r in reads:
                err = r.exception()
                assert isinstance(err, NotLeader), err  # retried by clients, at the hint
                assert err.leader_id == new.node_id
                assert err.leader_address == cluster.client(new.node_id)
            assert not _node(old)._reads.rounds
            # The hint is right: the leader serves the read.
            assert await new.get(b"k", "linearizable", timeout=DEADLINE) == b"v0"
            # Writes are not forwarded: NotLeader with the hint at once.
            with pytest.raises(NotLeader) as info:
                await old.put(b"k", b"v1", timeout=DEADLINE)
            assert info.value.leader_id == new.node_id
        finally:
            await cluster.stop_all()

    run(main())


def test_a_follower_whose_leader_answers_serves_its_reads(tmp_path: Path) -> None:
    """The bound is per round: a follower keeps serving linearizable reads for longer than
    an election timeout when the leader answers."""
    async def main() -> None:
        cluster = Cluster(tmp_path, **TIMINGS)
        await cluster.start_all()
        try:
            leader = await cluster.leader()
            await leader.put(b"k", b"v0")
            follower = cluster.followers()[0]
            loop = asyncio.get_running_loop()
            end = loop.time() + 1.0  # > 3 election timeouts
            n = 0
            while loop.time() < end:
                assert await follower.get(b"k", "linearizable", timeout=DEADLINE) == b"v0"
                n += 1
            assert n > 3
        finally:
            await cluster.stop_all()

    run(main())
