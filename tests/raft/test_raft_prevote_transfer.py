"""Pre-vote and check-quorum (Ongaro thesis §9.6) and leadership transfer (§3.10)."""

from __future__ import annotations

import pytest
from raft_network import Network, T

from dengine.errors import InvalidRequest, Unavailable
from dengine.proto import Message
from dengine.raft import Role


def _partition_and_rejoin(net: Network) -> int:
    net.elect(1)
    term = net[1].term
    net.isolate(3)
    net.tick(ids=[3], n=10 * net[3].cfg.election_tick)  # 3 times out over and over, alone
    net.tick(ids=[1, 2], n=3)
    net.heal()
    net.tick(n=3)
    return term


def test_rejoining_partitioned_node_cannot_depose_a_healthy_leader() -> None:
    net = Network([1, 2, 3])
    term = _partition_and_rejoin(net)
    assert net[1].role is Role.LEADER
    assert net[1].term == net[3].term == term  # pre-votes failed: no term inflation
    assert net[3].leader_id == 1


def test_without_pre_vote_and_check_quorum_the_rejoining_node_disrupts() -> None:
    net = Network([1, 2, 3], pre_vote=False, check_quorum=False)
    term = _partition_and_rejoin(net)
    assert net[3].term > term + 5  # it kept incrementing its term while alone
    assert max(c.term for c in net.cores.values()) > term  # and dragged the others along


def test_followers_ignore_vote_requests_while_they_hear_from_a_leader() -> None:
    net = Network([1, 2, 3], pre_vote=False)
    net.elect(1)
    before = net[2].term
    for t in (T.MSG_VOTE, T.MSG_PRE_VOTE):
        net[2].step(Message(type=t, from_id=3, to_id=2, term=before + 5, index=99,
                            log_term=before + 5))
    assert net[2].term == before
    assert not net[2].has_ready()  # not even a rejection: the request is ignored


def test_restarted_node_refuses_votes_for_one_election_timeout() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.crash(2)
    net.restart(2)
    vote = Message(type=T.MSG_PRE_VOTE, from_id=3, to_id=2, term=100, index=99, log_term=99)
    net[2].step(vote)
    assert not net[2].has_ready()  # it may have acknowledged a lease just before the crash
    for _ in range(net[2].cfg.election_tick):
        net[2].tick()
    net.pending.clear()
    net[2].step(vote)
    granted = [m for m in net[2].ready().messages if m.type == T.MSG_PRE_VOTE_RESPONSE]
    assert granted and not granted[0].reject


def test_leader_that_loses_its_quorum_steps_down() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.isolate(1)
    net.tick(ids=[1], n=2 * net[1].cfg.election_tick)
    assert net[1].role is Role.FOLLOWER
    assert net[1].leader_id == 0


def test_leader_with_a_quorum_stays_even_without_one_follower() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.isolate(3)
    net.tick(ids=[1, 2], n=5 * net[1].cfg.election_tick)
    assert net[1].role is Role.LEADER


def test_stale_leader_learns_the_new_term_from_any_follower_reply() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.isolate(1)
    for _ in range(100):
        net.tick(ids=[2, 3])
        if net[2].is_leader() or net[3].is_leader():
            break
    new = 2 if net[2].is_leader() else 3
    assert net[1].is_leader()  # has not noticed yet
    net.heal()
    net.tick(ids=[1])  # its heartbeat gets answered with the higher term
    assert net[1].role is Role.FOLLOWER
    assert net.leader() == new


# ---- leadership transfer ------------------------------------------------------------


def test_transfer_to_an_up_to_date_follower_makes_it_leader() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.tick(ids=[1])
    term = net[1].term
    net[1].transfer_leadership(2)
    net.settle()
    assert net[2].role is Role.LEADER and net[2].term == term + 1
    assert net[1].role is Role.FOLLOWER and net[1].leader_id == 2
    assert len(net.sent_of(T.MSG_TIMEOUT_NOW)) == 1


def test_transfer_catches_a_lagging_target_up_before_timeout_now() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.cut |= {(1, 3)}
    net[1].propose([b"a", b"b"])
    net.settle()
    assert net[1].prs[3].match < net[1].log.last_index()
    net.heal()
    mark = len(net.sent)
    net[1].transfer_leadership(3)
    with pytest.raises(Unavailable, match="transfer"):
        net[1].propose([b"refused while transferring"])
    net.tick(ids=[1], n=3)  # heartbeats reveal the lost appends; they are resent
    kinds = [m.type for m in net.sent[mark:] if m.from_id == 1 and m.to_id == 3]
    assert kinds.index(T.MSG_APPEND) < kinds.index(T.MSG_TIMEOUT_NOW)
    assert net.leader() == 3
    assert net.logs[3].last_index() >= 5


def test_transfer_is_abandoned_after_an_election_timeout() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net.isolate(3)
    net[1].transfer_leadership(3)
    with pytest.raises(Unavailable):
        net[1].propose([b"x"])
    net.tick(ids=[1, 2], n=net[1].cfg.election_tick)
    assert net[1].is_leader()
    assert net[1].propose([b"x"])  # accepting proposals again


def test_transfer_requests_are_checked_and_forwarded() -> None:
    net = Network([1, 2, 3], learners=[4])
    net.elect(1)
    with pytest.raises(InvalidRequest, match="not a voter"):
        net[1].transfer_leadership(4)
    net[3].transfer_leadership(2)  # a follower forwards the request to the leader
    net.settle()
    assert net.leader() == 2
    with pytest.raises(Unavailable):
        Network([1, 2, 3])[1].transfer_leadership(2)  # nobody known to ask
