"""Hostile or corrupt peer messages: dropped and counted, never a crash, never persisted.

A term of 2**64 - 1 used to be adopted and persisted, and the next campaign's term + 1 no
longer fit the uint64 field ("Value out of range") at every start; an acknowledgement of
entries the leader never had made it read past its log. See dengine.raft.limits.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from raft_network import Network, T

from dengine.errors import InvalidRequest, StorageError
from dengine.proto import Entry, HardState, LogId, Message, SnapshotMetadata
from dengine.raft import MemoryRaftLog, RaftConfig, RaftCore
from dengine.raft.limits import MAX_CONTEXT_BYTES, MAX_INDEX, MAX_TERM, message_problem

U64_MAX = 2**64 - 1  # -1 as a signed 64-bit value
I64_MIN = 2**63  # the most negative signed 64-bit value, read as unsigned


def _entries(first: int, term: int, n: int, step: int = 1) -> list[Entry]:
    out = []
    for k in range(n):
        e = Entry(index=first + k * step, term=term)
        e.payload.command = b"x"
        out.append(e)
    return out


def _shuffled(entries: list[Entry]) -> list[Entry]:
    """First and last in place, the middle ones out of order (a first/last check passes)."""
    entries[1].index += 7
    return entries


# (name, target node, message built from the network). Node 1 leads; 2 and 3 follow.
Forge = Callable[[Network], Message]
HOSTILE: list[tuple[str, int, Forge]] = [
    ("heartbeat with term 2^64-1", 2,
     lambda net: Message(type=T.MSG_HEARTBEAT, from_id=1, to_id=2, term=U64_MAX)),
    ("append with term 2^64-1", 2,
     lambda net: Message(type=T.MSG_APPEND, from_id=3, to_id=2, term=U64_MAX)),
    ("vote request with term, index and log term 2^64-1", 2,
     lambda net: Message(type=T.MSG_VOTE, from_id=3, to_id=2, term=U64_MAX, index=U64_MAX,
                         log_term=U64_MAX)),
    ("pre-vote request with term 2^63", 2,
     lambda net: Message(type=T.MSG_PRE_VOTE, from_id=3, to_id=2, term=I64_MIN)),
    ("append response with term 2^64-1 to the leader", 1,
     lambda net: Message(type=T.MSG_APPEND_RESPONSE, from_id=2, to_id=1, term=U64_MAX)),
    ("heartbeat response with term 2^64-1 to the leader", 1,
     lambda net: Message(type=T.MSG_HEARTBEAT_RESPONSE, from_id=2, to_id=1, term=U64_MAX)),
    ("append response acknowledging entries the leader never had", 1,
     lambda net: Message(type=T.MSG_APPEND_RESPONSE, from_id=2, to_id=1, term=net[1].term,
                         index=net[1].log.last_index() + 1_000_000)),
    ("append response with index 2^64-1", 1,
     lambda net: Message(type=T.MSG_APPEND_RESPONSE, from_id=2, to_id=1, term=net[1].term,
                         index=U64_MAX)),
    ("append with previous index 2^64-1", 2,
     lambda net: Message(type=T.MSG_APPEND, from_id=1, to_id=2, term=net[1].term,
                         index=U64_MAX, log_term=net[1].term)),
    ("append with commit 2^64-1", 2,
     lambda net: Message(type=T.MSG_APPEND, from_id=1, to_id=2, term=net[1].term,
                         index=net[2].log.last_index(), log_term=net[2].log.last_term(),
                         commit=U64_MAX)),
    ("append with entries at non-consecutive indexes", 2,
     lambda net: Message(type=T.MSG_APPEND, from_id=1, to_id=2, term=net[1].term,
                         index=net[2].log.last_index(), log_term=net[2].log.last_term(),
                         entries=_entries(net[2].log.last_index() + 1, net[1].term, 3, 2))),
    ("append with a hole between its first and last entries", 2,
     lambda net: Message(type=T.MSG_APPEND, from_id=1, to_id=2, term=net[1].term,
                         index=net[2].log.last_index(), log_term=net[2].log.last_term(),
                         entries=_shuffled(_entries(net[2].log.last_index() + 1,
                                                    net[1].term, 3)))),
    ("append with entries of a later term than the message", 2,
     lambda net: Message(type=T.MSG_APPEND, from_id=1, to_id=2, term=net[1].term,
                         index=net[2].log.last_index(), log_term=net[2].log.last_term(),
                         entries=_entries(net[2].log.last_index() + 1, U64_MAX, 1))),
    ("append with entries up to index 2^64-1", 2,
     lambda net: Message(type=T.MSG_APPEND, from_id=1, to_id=2, term=net[1].term,
                         index=U64_MAX - 2, log_term=net[1].term,
                         entries=_entries(U64_MAX - 1, net[1].term, 2))),
    ("snapshot at index 2^64-1", 2,
     lambda net: Message(type=T.MSG_SNAPSHOT, from_id=1, to_id=2, term=net[1].term,
                         snapshot=SnapshotMetadata(
                             last_included=LogId(index=U64_MAX, term=net[1].term),
                             membership=net.members))),
    ("read index response at index 2^64-1", 2,
     lambda net: Message(type=T.MSG_READ_INDEX_RESPONSE, from_id=1, to_id=2, term=net[1].term,
                         index=U64_MAX, context=b"r")),
    ("heartbeat with a 1 MiB context", 2,
     lambda net: Message(type=T.MSG_HEARTBEAT, from_id=1, to_id=2, term=net[1].term,
                         context=b"x" * (1 << 20))),
]


@pytest.mark.parametrize(("name", "target", "forge"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_message_is_dropped_and_the_cluster_keeps_working(
    name: str, target: int, forge: Forge
) -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net[1].propose([b"before"])
    net.settle()
    term = net[1].term
    hostile = forge(net)
    # Out of bounds on its own, or absurd only against the receiver's state or in its
    # middle entries (the core checks those where it handles them).
    assert message_problem(hostile) or "acknowledging" in name or "hole" in name, name

    net[target].step(hostile)  # never raises
    net.process_all()

    assert net[target].rejected_messages == 1
    assert net[target].term == term
    assert net[1].is_leader()
    # The cluster goes on: replication, commit, an election after the leader crashes.
    net[1].propose([b"after"])
    net.settle()
    assert all(net.commands(i) == [b"before", b"after"] for i in (1, 2, 3))
    net.crash(1)
    net.tick(ids=[2, 3], n=2 * net[2].cfg.election_tick)
    new = net.leader()
    assert new in (2, 3)
    net[new].propose([b"later"])
    net.settle()
    assert net.commands(2)[-1] == net.commands(3)[-1] == b"later"
    for i in (1, 2, 3):  # nothing out of bounds or out of place was persisted
        log = net.logs[i]
        assert log.hard_state().term <= term + 5
        assert log.last_index() < 100
        stored = log.entries(log.first_index(), log.last_index() + 1)
        assert [e.index for e in stored] == list(range(log.first_index(), log.last_index() + 1))


def test_a_higher_term_within_bounds_deposes_the_leader_as_raft_says() -> None:
    # Raft: any message with a higher term makes the receiver a follower of that term
    # (etcd does the same for responses). Bounded terms keep it harmless: the cluster
    # elects a leader of a later term.
    net = Network([1, 2, 3])
    net.elect(1)
    net[1].step(Message(type=T.MSG_HEARTBEAT_RESPONSE, from_id=2, to_id=1, term=1_000_000))
    assert not net[1].is_leader() and net[1].term == 1_000_000
    net.tick(n=3 * net[1].cfg.election_tick)
    leader = net.leader()
    assert leader and net[leader].term > 1_000_000
    net[leader].propose([b"x"])
    net.settle()
    assert all(net.commands(i) == [b"x"] for i in (1, 2, 3))


def test_the_largest_valid_term_is_accepted_and_never_exceeded() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net[2].step(Message(type=T.MSG_HEARTBEAT, from_id=1, to_id=2, term=MAX_TERM))
    assert net[2].term == MAX_TERM and net[2].rejected_messages == 0
    net.process_all()
    net.tick(n=4 * net[1].cfg.election_tick)  # campaigns at MAX_TERM are not started
    for i in (1, 2, 3):
        assert net[i].term <= MAX_TERM
        assert net.logs[i].hard_state().term <= MAX_TERM
    assert all(m.term <= MAX_TERM for m in net.sent)


def test_a_persisted_term_above_the_maximum_is_a_clear_error_at_start() -> None:
    log = MemoryRaftLog()
    log.set_hard_state(HardState(term=U64_MAX))
    with pytest.raises(StorageError, match="above the maximum"):
        RaftCore(RaftConfig(id=1, peers=[1, 2, 3]), log, random.Random(0))


def test_read_context_is_bounded() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    with pytest.raises(InvalidRequest):
        net[2].read_index(b"x" * (MAX_CONTEXT_BYTES + 1))
    net[2].read_index(b"x" * MAX_CONTEXT_BYTES)  # the largest one is served
    net.settle()
    assert [r.ctx for r in net.reads[2]] == [b"x" * MAX_CONTEXT_BYTES]


def test_messages_of_a_correct_cluster_are_within_bounds() -> None:
    net = Network([1, 2, 3], max_entries_per_msg=2)
    net.elect(1)
    for k in range(5):
        net[1].propose([b"%d" % k] * 3)
        net[2].read_index(b"r%d" % k)
        net.tick(n=1)
    net.crash(1)
    net.tick(ids=[2, 3], n=3 * net[2].cfg.election_tick)
    assert net.sent
    assert [m for m in net.sent if message_problem(m)] == []
    assert MAX_INDEX == MAX_TERM == 2**62
