"""Leader election (Raft §5.2, §5.4.1): one vote per term, split votes, up-to-date logs."""

from __future__ import annotations

import random

import pytest
from raft_network import Network, T, make_log, membership

from dengine.errors import ConfigError, StorageError
from dengine.proto import Message
from dengine.raft import MemoryRaftLog, RaftConfig, RaftCore, Role


def test_single_node_elects_itself_at_its_first_tick() -> None:
    """The only voter has no one to wait for or disrupt: it campaigns at once, without an
    election timeout, when started and when restarted (one-node clusters serve sooner)."""
    net = Network([1])
    core = net[1]
    assert core.role is Role.FOLLOWER
    net.tick(n=1)
    assert core.role is Role.LEADER
    assert core.term == 1
    # The new leader's no-op (plus the bootstrap membership) is committed and applied.
    assert [e.term for e in net.applied[1]] == [1, 1]
    assert net.applied[1][0].payload.HasField("noop")
    assert net.applied[1][1].payload.HasField("config")
    net.crash(1)
    again = net.restart(1)
    net.tick(n=1)
    assert again.role is Role.LEADER and again.term == 2


def test_one_of_several_voters_waits_for_the_election_timeout() -> None:
    core = RaftCore(RaftConfig(id=1, election_tick=50), MemoryRaftLog(), random.Random(0),
                    bootstrap=membership([1, 2, 3]))
    for _ in range(49):
        core.tick()
    assert core.role is Role.FOLLOWER and not core.has_ready()


def test_election_timeout_is_randomized_within_one_to_two_timeouts() -> None:
    seen = set()
    for seed in range(50):
        core = RaftCore(RaftConfig(id=1, election_tick=10, peers=[1, 2, 3]), MemoryRaftLog(),
                        random.Random(seed))
        seen.add(core.randomized_election_timeout)
    assert seen <= set(range(10, 20))
    assert len(seen) > 5


def test_three_nodes_elect_exactly_one_leader_by_timeout() -> None:
    net = Network([1, 2, 3])
    for _ in range(100):
        net.tick()
        if net.leader():
            break
    leader = net.leader()
    assert leader
    assert sum(c.role is Role.LEADER for c in net.cores.values()) == 1
    for i in (1, 2, 3):
        assert net[i].leader_id == leader
        assert net[i].term == net[leader].term


def test_candidate_wins_with_a_majority_and_followers_learn_the_leader() -> None:
    net = Network([1, 2, 3, 4, 5])
    net.elect(1)
    assert net[1].term == 1
    assert all(net[i].leader_id == 1 for i in net.ids)
    assert all(net.logs[i].hard_state().term == 1 for i in net.ids)
    # A granted vote is durable: every voter persisted voted_for = 1 in term 1.
    assert sum(net.logs[i].hard_state().voted_for == 1 for i in net.ids) >= 3


def test_candidate_without_majority_does_not_become_leader() -> None:
    net = Network([1, 2, 3, 4, 5], pre_vote=False)
    net.cut |= {(1, 3), (1, 4), (1, 5)}
    net[1].campaign()
    net.settle()
    assert net[1].role is Role.CANDIDATE  # only 1 and 2 voted
    assert net[1].term == 1


def test_split_vote_no_leader_in_that_term_then_a_later_term_elects_one() -> None:
    net = Network([1, 2, 3, 4], pre_vote=False, check_quorum=False)
    # 1 and 2 campaign in the same term; 3 hears 1 first, 4 hears 2 first.
    net[1].campaign()
    net[2].campaign()
    net.process_all()
    first = {(m.from_id, m.to_id): m for m in net.pending}
    net.pending = []
    for frm, to in [(1, 3), (2, 4), (2, 3), (1, 4), (1, 2), (2, 1)]:
        net[to].step(first[(frm, to)])
        net.process(to)
    net.settle()
    # Each got 2 of 4 votes: both know they lost the term, nobody leads it.
    assert net[1].role is not Role.LEADER and net[2].role is not Role.LEADER
    assert net[1].term == net[2].term == 1
    assert not net.leader()
    assert sorted(m.from_id for m in net.sent_of(T.MSG_VOTE_RESPONSE) if not m.reject) == [3, 4]
    # Randomized timeouts break the tie in a later term.
    for _ in range(200):
        net.tick()
        if net.leader():
            break
    assert net.leader()
    assert net[net.leader()].term >= 2


def test_one_vote_per_term_even_across_a_restart() -> None:
    net = Network([1, 2, 3], pre_vote=False, check_quorum=False)
    vote = Message(type=T.MSG_VOTE, from_id=2, to_id=1, term=5, index=0, log_term=0)
    net[1].step(vote)
    net.process(1)
    assert net.logs[1].hard_state().voted_for == 2
    net.crash(1)
    net.restart(1)
    net[1].step(Message(type=T.MSG_VOTE, from_id=3, to_id=1, term=5, index=0, log_term=0))
    net.process(1)
    responses = [m for m in net.sent_of(T.MSG_VOTE_RESPONSE) if m.from_id == 1]
    assert [(m.to_id, m.reject) for m in responses] == [(2, False), (3, True)]
    # Asking again (a retransmission) gets the same answer.
    net[1].step(vote)
    net.process(1)
    assert net.sent_of(T.MSG_VOTE_RESPONSE)[-1].reject is False


@pytest.mark.parametrize(
    ("candidate_terms", "voter_terms", "granted"),
    [
        ([1, 1, 2], [1, 1, 2], True),  # same last term, same length
        ([1, 1, 2, 2], [1, 1, 2], True),  # same last term, longer
        ([1, 1, 2], [1, 1, 2, 2], False),  # same last term, shorter
        ([1, 3], [1, 2, 2, 2, 2], True),  # higher last term wins over length
        ([1, 2, 2, 2, 2], [1, 3], False),  # lower last term loses despite length
        ([], [1], False),
    ],
)
def test_vote_only_for_a_log_at_least_as_up_to_date(
    candidate_terms: list[int], voter_terms: list[int], granted: bool
) -> None:
    voter = RaftCore(RaftConfig(id=1, pre_vote=False, check_quorum=False, peers=[1, 2, 3]),
                     make_log(voter_terms, term=3), random.Random(1))
    last_term = candidate_terms[-1] if candidate_terms else 0
    voter.step(Message(type=T.MSG_VOTE, from_id=2, to_id=1, term=4,
                       index=len(candidate_terms), log_term=last_term))
    (resp,) = voter.ready().messages
    assert resp.type == T.MSG_VOTE_RESPONSE
    assert resp.reject is (not granted)
    assert voter.vote == (2 if granted else 0)


def test_node_with_stale_log_cannot_win_but_an_up_to_date_one_can() -> None:
    logs = {1: make_log([1, 1], term=2), 2: make_log([1, 1, 2], term=2),
            3: make_log([1, 1, 2], term=2)}
    net = Network([1, 2, 3], logs=logs, pre_vote=False, check_quorum=False)
    net[1].campaign()
    net.settle()
    assert net[1].role is not Role.LEADER
    net.elect(2)
    assert net.logs[1].last_index() == net.logs[2].last_index()


def test_candidate_steps_down_on_append_from_leader_of_its_term() -> None:
    net = Network([1, 2, 3], pre_vote=False, check_quorum=False)
    net[2].campaign()
    net.process(2)
    assert net[2].role is Role.CANDIDATE
    term = net[2].term
    net.pending = []
    net[2].step(Message(type=T.MSG_APPEND, from_id=3, to_id=2, term=term, index=0, log_term=0))
    assert net[2].role is Role.FOLLOWER
    assert net[2].leader_id == 3


def test_higher_term_message_turns_a_leader_into_a_follower() -> None:
    net = Network([1, 2, 3], check_quorum=False)
    net.elect(1)
    net[1].step(Message(type=T.MSG_APPEND_RESPONSE, from_id=2, to_id=1, term=9))
    assert net[1].role is Role.FOLLOWER
    assert net[1].term == 9
    net.process(1)
    assert net.logs[1].hard_state().term == 9


def test_pre_vote_does_not_change_terms() -> None:
    net = Network([1, 2, 3])
    net.cut |= {(2, 1), (3, 1)}  # the pre-vote grants never come back
    net[1].campaign()
    net.settle()
    assert net[1].role is Role.PRE_CANDIDATE
    assert [net[i].term for i in (1, 2, 3)] == [0, 0, 0]


def test_learner_and_non_member_never_campaign() -> None:
    net = Network([1, 2], learners=[3])
    net.elect(1)
    net.isolate(1)
    net.tick(ids=[3], n=100)
    assert net[3].role is Role.LEARNER
    assert not [m for m in net.sent if m.from_id == 3 and m.type in (T.MSG_VOTE, T.MSG_PRE_VOTE)]
    orphan = RaftCore(RaftConfig(id=9), MemoryRaftLog(), random.Random(0))
    for _ in range(100):
        orphan.tick()
    assert orphan.role is Role.FOLLOWER and not orphan.has_ready()


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        RaftConfig(id=0).validate()
    with pytest.raises(ConfigError, match="lease_ticks"):
        RaftConfig(id=1, election_tick=10, lease_ticks=10).validate()
    with pytest.raises(ConfigError):
        RaftConfig(id=1, election_tick=3, heartbeat_tick=3).validate()
    with pytest.raises(ConfigError, match="twice"):
        RaftCore(RaftConfig(id=1), MemoryRaftLog(), random.Random(0),
                 bootstrap=membership([1, 2], learners=[2]))
    with pytest.raises(StorageError, match="applied index 5"):
        RaftCore(RaftConfig(id=1, applied=5), make_log([1, 1]), random.Random(0))
