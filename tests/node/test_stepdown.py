"""A leader that loses its leadership answers what it holds at once (issue 14, finding 2):
its reads not yet confirmed with `NotLeader` (retryable) at once, its writes that no
leader settles (commit or overwrite) within a grace with `LeadershipLost` (a `Timeout`:
outcome unknown) -- not at their deadline."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from node_helpers import Cluster, run, until

from dengine import Engine
from dengine.errors import LeadershipLost, NotLeader, Timeout
from dengine.node.pending import LOST_GRACE_SHARE
from dengine.proto import Message, MessageType

# Long enough that the writes are proposed before check-quorum deposes the leader, and
# far from the requests' deadline (DEADLINE) that the old code answered them at.
SLOW = {"election_timeout_ms": 1000, "heartbeat_interval_ms": 100}
DEADLINE = 12.0  # a grace of 3 s (LOST_GRACE_SHARE)


def _node(engine: Engine) -> Any:
    return engine._node


def _waiting(node: Any) -> int:
    """Commands proposed and waiting for their apply (a batch entry's each)."""
    pending = node._pending
    return len(pending.waiters) + sum(len(slots) for _, slots in pending.batches.values())


def _cut_off(engine: Engine, *, inbound: bool = True) -> None:
    """The node's peer messages go nowhere (and, if `inbound`, none reach it)."""
    node = _node(engine)
    node._transport.send = lambda messages: None
    if inbound:
        node._on_peer_messages = lambda from_id, messages: None
        node._transport._on_messages = lambda from_id, messages: None


def test_a_deposed_leader_answers_its_writes_and_reads_before_their_deadline(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        cluster = Cluster(tmp_path, **SLOW)
        await cluster.start_all()
        try:
            leader = await cluster.leader()
            await leader.put(b"k", b"v0")
            _cut_off(leader)
            node = _node(leader)
            writes = [asyncio.ensure_future(leader.put(b"k%d" % i, b"v", timeout=DEADLINE))
                      for i in range(5)]
            reads = [asyncio.ensure_future(leader.get(b"k", "linearizable", timeout=DEADLINE))
                     for _ in range(3)]
            await until(lambda: _waiting(node) == 5 and node._reads.rounds)
            assert leader.is_leader  # proposed while still the leader
            # check-quorum deposes it after an election timeout, its reads fail then, its
            # writes a grace later: before DEADLINE (their deadline's error is a plain
            # Timeout)
            done, _ = await asyncio.wait(writes + reads, timeout=DEADLINE - 1)
            assert len(done) == 8
            assert not leader.is_leader
            for w in writes:
                assert isinstance(w.exception(), LeadershipLost), w.exception()
                assert isinstance(w.exception(), Timeout)  # outcome unknown
            for r in reads:
                assert isinstance(r.exception(), NotLeader), r.exception()
            assert not _waiting(node) and not node._reads.rounds
        finally:
            await cluster.stop_all()

    run(main())


def test_a_write_committed_before_the_step_down_gets_its_result(tmp_path: Path) -> None:
    """Only the writes past the commit index are unknown: a committed one is applied here
    whatever the role, so it still gets its result (even past the grace of a step-down
    by a higher term)."""
    async def main() -> None:
        cluster = Cluster(tmp_path, **SLOW)
        await cluster.start_all()
        try:
            leader = await cluster.leader()
            node = _node(leader)
            core = node._core
            held: list[Any] = []
            start_apply = node._start_apply
            node._start_apply = held.append  # committed, not applied yet
            write = asyncio.ensure_future(leader.put(b"a", b"1", timeout=DEADLINE))
            await until(lambda: node._pending.waiters)
            index = next(iter(node._pending.waiters))
            await until(lambda: core.commit_index >= index and held)
            # depose it before the write's entry is applied: a higher term from a peer;
            # cut off, so that it is not elected again during the grace
            deliver = node._on_peer_messages
            _cut_off(leader)
            peer = next(f.node_id for f in cluster.followers())
            deliver(peer, [Message(
                type=MessageType.MSG_HEARTBEAT, from_id=peer, to_id=node.node_id,
                term=core.term + 1)])
            await until(lambda: not leader.is_leader)
            await asyncio.sleep(DEADLINE * LOST_GRACE_SHARE + 0.5)  # past the grace
            assert not write.done()
            node._start_apply = start_apply
            for entries in held:
                start_apply(entries)
            await asyncio.wait_for(write, DEADLINE - 1)  # its result, not LeadershipLost
        finally:
            await cluster.stop_all()

    run(main())


def test_deposed_by_a_higher_term_its_uncommitted_writes_fail_after_a_grace(
    tmp_path: Path,
) -> None:
    """A new leader usually settles the old one's entries (commit or overwrite) within a
    few heartbeats; when it does not, the writes get LeadershipLost after a grace (a
    quarter of their timeout), not at their deadline."""
    async def main() -> None:
        cluster = Cluster(tmp_path, **SLOW)
        await cluster.start_all()
        try:
            leader = await cluster.leader()
            node = _node(leader)
            deliver = node._on_peer_messages
            _cut_off(leader)
            writes = [asyncio.ensure_future(leader.put(b"k%d" % i, b"v", timeout=DEADLINE))
                      for i in range(3)]
            await until(lambda: _waiting(node) == 3)
            peer = next(f.node_id for f in cluster.followers())
            deliver(peer, [Message(type=MessageType.MSG_HEARTBEAT, from_id=peer,
                                   to_id=node.node_id, term=node._core.term + 1)])
            await until(lambda: not leader.is_leader)
            assert node.leader_id == peer and not any(w.done() for w in writes)
            done, _ = await asyncio.wait(writes, timeout=DEADLINE - 1)
            assert len(done) == 3
            for w in writes:
                assert isinstance(w.exception(), LeadershipLost), w.exception()
        finally:
            await cluster.stop_all()

    run(main())


def test_leadership_lost_crosses_the_wire_as_itself() -> None:
    """The server's error field names it; the client makes the same Timeout subclass of it
    (an unknown outcome: Router.call_leader raises it without retrying the write)."""
    from dengine.client.routing import error_from_wire
    from dengine.server.service import error_message

    err = error_from_wire(error_message(LeadershipLost("node 1 lost its leadership")))
    assert isinstance(err, LeadershipLost) and isinstance(err, Timeout)
    assert err.code == LeadershipLost.code and "lost its leadership" in err.message
