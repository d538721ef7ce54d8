"""Linearizable reads without log writes: ReadIndex (thesis §6.4) and leases (§6.4.1)."""

from __future__ import annotations

import pytest
from raft_network import Network, T

from dengine.errors import NotLeader, Unavailable
from dengine.proto import Message
from dengine.raft import ReadState, Role


def _leader(**cfg: object) -> Network:
    net = Network([1, 2, 3], **cfg)
    net.elect(1)
    net[1].propose([b"x"])
    net.settle()
    return net


def test_concurrent_reads_share_one_heartbeat_round() -> None:
    net = _leader()
    commit = net[1].commit_index
    mark = len(net.sent)
    for ctx in (b"r1", b"r2", b"r3"):
        net[1].read_index(ctx)
    net.settle()
    assert net.reads[1] == [ReadState(b"r1", commit), ReadState(b"r2", commit),
                            ReadState(b"r3", commit)]
    assert len(net.sent_of(T.MSG_HEARTBEAT, mark)) == 2  # one round: one per follower


def test_read_needs_a_quorum_to_confirm_leadership() -> None:
    net = _leader()
    net.isolate(1)
    net[1].read_index(b"r")
    net.settle()
    assert net.reads[1] == []  # cannot know it is still the leader
    net.heal()
    net.tick(ids=[1])  # the next heartbeat round confirms it
    assert [r.ctx for r in net.reads[1]] == [b"r"]


def test_one_ack_is_enough_in_a_three_node_cluster() -> None:
    net = _leader()
    net.cut |= {(1, 3)}
    net[1].read_index(b"r")
    net.settle()
    assert [r.ctx for r in net.reads[1]] == [b"r"]


def test_new_leader_defers_reads_until_an_entry_of_its_term_commits() -> None:
    net = Network([1, 2, 3])
    net[1].campaign()
    net.settle(keep=lambda m: m.type in (T.MSG_PRE_VOTE, T.MSG_PRE_VOTE_RESPONSE,
                                          T.MSG_VOTE, T.MSG_VOTE_RESPONSE))
    assert net[1].is_leader() and net[1].commit_index == 0
    net[1].read_index(b"early")
    net.process(1)
    assert net.reads[1] == []
    assert not [m for m in net.pending if m.type == T.MSG_HEARTBEAT]  # no round yet
    net.tick(ids=[1], n=2)  # its no-op commits, then the read is confirmed
    assert net[1].term_committed
    assert net.reads[1] == [ReadState(b"early", net.reads[1][0].index)]
    assert net.reads[1][0].index >= 1


def test_single_voter_answers_at_once_after_its_first_commit() -> None:
    net = Network([1])
    net.tick(n=30)
    net[1].read_index(b"solo")
    rd = net[1].ready()
    assert rd.read_states == [ReadState(b"solo", net[1].commit_index)]
    assert not rd.messages


def test_follower_read_goes_through_the_leader() -> None:
    net = _leader()
    commit = net[1].commit_index
    net[3].read_index(b"f")
    net.settle()
    assert net.reads[3] == [ReadState(b"f", commit)]
    assert net.sent_of(T.MSG_READ_INDEX)[-1].to_id == 1
    assert net.reads[1] == []


def test_read_without_a_known_leader_is_unavailable() -> None:
    net = Network([1, 2, 3])
    with pytest.raises(Unavailable, match="no leader"):
        net[2].read_index(b"r")


def test_deposed_leader_never_answers_its_pending_reads() -> None:
    net = _leader()
    net.isolate(1)
    net[1].read_index(b"r")
    net.process(1)
    net[1].step(Message(type=T.MSG_APPEND_RESPONSE, from_id=2, to_id=1, term=99))
    net.heal()
    net.settle()
    assert net.reads[1] == []


# ---- leases ----------------------------------------------------------------------


def _lease_leader(**cfg: object) -> Network:
    net = _leader(election_tick=10, lease_ticks=7, **cfg)
    net.tick(ids=[1])  # a heartbeat round acknowledged by a quorum starts the lease
    return net


def test_lease_read_is_served_locally_within_the_lease() -> None:
    net = _lease_leader()
    commit = net[1].commit_index
    net[1].read_index(b"lease", lease=True)
    rd = net[1].ready()
    assert rd.read_states == [ReadState(b"lease", commit)]
    assert not [m for m in rd.messages if m.type == T.MSG_HEARTBEAT]


def test_lease_is_measured_from_the_heartbeat_send_tick_and_expires() -> None:
    net = _lease_leader()
    net.isolate(1)
    for _ in range(6):
        net[1].tick()
    # Acks of later heartbeats never came: the lease still runs from the last acked send.
    assert net[1]._lease_valid()
    net[1].tick()
    assert not net[1]._lease_valid()
    net[1].read_index(b"late", lease=True)
    rd = net[1].ready()
    assert rd.read_states == []  # fell back to a ReadIndex round
    assert any(m.type == T.MSG_HEARTBEAT for m in rd.messages)


def test_passed_time_ends_the_lease_but_starts_no_election() -> None:
    """`pass_time` (the driver's loop stalled): the lease counts that time; elections and
    check-quorum do not (the replies that came meanwhile are not stepped yet)."""
    net = _lease_leader()
    assert net[1]._lease_valid()
    for i in (1, 2, 3):
        net[i].pass_time(1000)
    assert not net[1]._lease_valid()
    assert net[1].state is Role.LEADER
    assert [net[i].state for i in (2, 3)] == [Role.FOLLOWER] * 2
    assert all(not net[i].ready().messages for i in (2, 3))  # nobody campaigns


def test_late_ack_does_not_extend_the_lease_beyond_its_send_tick() -> None:
    net = _lease_leader()
    net.process_all()
    net[1].tick()  # round sent at this tick; its acks are held back
    net.process(1)
    held, net.pending = net.pending, []
    for _ in range(6):
        net[1].tick()
    net.process(1)
    net.pending.clear()
    for m in held:  # acknowledged only now
        net[m.to_id].step(m)
        net.process(m.to_id)
    for m in [m for m in net.pending if m.type == T.MSG_HEARTBEAT_RESPONSE]:
        net[1].step(m)
    assert net[1]._lease_valid()  # sent 6 ticks ago: 1 tick of lease left
    net[1].tick()
    assert not net[1]._lease_valid()


def test_lease_ends_when_the_leader_steps_down() -> None:
    net = _lease_leader()
    net[1].step(Message(type=T.MSG_APPEND_RESPONSE, from_id=2, to_id=1, term=50))
    assert net[1].role is Role.FOLLOWER
    assert not net[1]._lease_valid()
    with pytest.raises(NotLeader):
        net[1].propose([b"x"])
    with pytest.raises(Unavailable):
        net[1].read_index(b"r", lease=True)  # no lease, and no known leader to ask


def test_no_lease_without_check_quorum() -> None:
    net = _lease_leader(check_quorum=False)
    net[1].read_index(b"r", lease=True)
    assert net[1].ready().read_states == []


def test_no_lease_after_starting_a_leadership_transfer() -> None:
    net = _lease_leader()
    net[1].transfer_leadership(2)  # TimeoutNow lets 2 win without waiting out our lease
    assert not net[1]._lease_valid()
