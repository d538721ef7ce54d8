"""Log replication (Raft §5.3): consistency check, fast back-off, conflicts, batching, commit."""

from __future__ import annotations

import pytest
from raft_network import Network, T, log_terms, make_log

from dengine.errors import DengineError, NotLeader
from dengine.proto import Entry, Message
from dengine.raft import ProgressState, Role, replication

# Figure 7 of the Raft paper: the leader's log for term 8, and six possible followers.
LEADER = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6]
FIGURE_7 = {
    "a": [1, 1, 1, 4, 4, 5, 5, 6, 6],
    "b": [1, 1, 1, 4],
    "c": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
    "d": [1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
    "e": [1, 1, 1, 4, 4, 4, 4],
    "f": [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
}


@pytest.mark.parametrize("name", sorted(FIGURE_7))
def test_figure_7_leader_brings_every_follower_log_in_line(name: str) -> None:
    # Node 1 leads term 8; node 3 holds the leader's log too (so 1 can win even against d).
    logs = {1: make_log(LEADER, term=7, commit=3), 2: make_log(FIGURE_7[name], term=7, commit=3),
            3: make_log(LEADER, term=7, commit=3)}
    net = Network([1, 2, 3], logs=logs, pre_vote=False, check_quorum=False)
    net.cut |= {(1, 2)}  # elect without node 2, then talk to it
    net.elect(1)
    net.heal()
    net.tick(ids=[1], n=net[1].cfg.heartbeat_tick)
    net.settle()
    expected = log_terms(net.logs[1])
    assert expected[: len(LEADER) + 1] == [*LEADER, 8]
    assert log_terms(net.logs[2]) == expected
    assert net[2].commit_index == len(expected)
    # Committed entries 1..3 were never touched: same objects as before, never truncated.
    assert net.logs[2].first_index() == 1
    # Conflict hints let the leader skip whole terms: at most two rejections per follower.
    rejects = [m for m in net.sent_of(T.MSG_APPEND_RESPONSE) if m.from_id == 2 and m.reject]
    assert len(rejects) <= 2


def test_follower_rejects_append_whose_previous_entry_does_not_match() -> None:
    net = Network([1, 2], logs={2: make_log([1, 1, 2, 2], term=2)})
    f = net[2]
    f.step(Message(type=T.MSG_APPEND, from_id=1, to_id=2, term=3, index=4, log_term=3))
    (resp,) = f.ready().messages
    assert resp.reject and resp.index == 4
    assert (resp.hint_term, resp.reject_hint) == (2, 3)  # conflicting term 2 starts at 3
    f.step(Message(type=T.MSG_APPEND, from_id=1, to_id=2, term=3, index=9, log_term=3))
    (resp,) = f.ready().messages
    assert resp.reject and (resp.hint_term, resp.reject_hint) == (0, 4)  # our log ends at 4


def _append(frm: int, term: int, prev: int, prev_term: int, terms: list[int],
            commit: int = 0) -> Message:
    m = Message(type=T.MSG_APPEND, from_id=frm, to_id=2, term=term, index=prev,
                log_term=prev_term, commit=commit)
    for i, t in enumerate(terms, prev + 1):
        e = Entry(index=i, term=t)
        e.payload.noop.SetInParent()
        m.entries.append(e)
    return m


def test_follower_never_wipes_its_log_on_prev_zero_and_keeps_matching_entries() -> None:
    net = Network([1, 2], logs={2: make_log([1, 1, 1, 1, 1], term=1)})
    net[2].step(_append(1, 1, 0, 0, [1, 1]))  # stale, reordered: prev = (0, 0)
    net.process(2)
    assert log_terms(net.logs[2]) == [1, 1, 1, 1, 1]
    resp = net.sent_of(T.MSG_APPEND_RESPONSE)[-1]
    assert not resp.reject and resp.index == 2  # acknowledges only what the message held


def test_follower_truncates_only_from_the_first_conflicting_entry() -> None:
    net = Network([1, 2], logs={2: make_log([1, 1, 2, 2, 2], term=2, commit=2)})
    net[2].step(_append(1, 3, 2, 1, [1, 3]))
    net.process(2)
    assert log_terms(net.logs[2]) == [1, 1, 1, 3]


def test_follower_never_touches_committed_entries_on_a_stale_append() -> None:
    net = Network([1, 2], logs={2: make_log([1, 1, 2], term=2, commit=3)})
    net[2].step(_append(1, 3, 1, 1, [3, 3]))  # claims to replace committed entries 2, 3
    net.process(2)
    assert log_terms(net.logs[2]) == [1, 1, 2]
    resp = net.sent_of(T.MSG_APPEND_RESPONSE)[-1]
    assert not resp.reject and resp.index == 3  # "I hold everything up to my commit"


def test_raft_log_refuses_to_overwrite_a_committed_entry() -> None:
    net = Network([1, 2], logs={2: make_log([1, 1, 2], term=2, commit=3)})
    with pytest.raises(DengineError, match="committed"):
        net[2].log.truncate_and_append(_append(1, 3, 2, 1, [3]).entries[:])


def test_follower_commit_is_bounded_by_what_the_append_proved() -> None:
    net = Network([1, 2], logs={2: make_log([1, 1, 1, 9, 9], term=9)})
    # The leader's commit is 10, but this append only proves entries up to 3 match.
    net[2].step(_append(1, 10, 2, 1, [1], commit=10))
    assert net[2].commit_index == 3


def test_proposals_replicate_commit_and_apply_everywhere() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    ids = net[1].propose([b"a", b"b", b"c"])
    assert [i.index for i in ids] == [3, 4, 5]
    assert {i.term for i in ids} == {1}
    net.tick(ids=[1])  # a heartbeat carries the final commit index to followers
    for i in (1, 2, 3):
        assert net.commands(i) == [b"a", b"b", b"c"]
        assert net[i].commit_index == 5


def test_propose_batch_returns_the_term_and_first_index_of_consecutive_entries() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    assert net[1].propose_batch([b"a", b"b"]) == (1, 3)
    assert net[1].propose_batch([b"c"]) == (1, 5)
    net.tick(ids=[1])
    for i in (1, 2, 3):
        assert net.commands(i) == [b"a", b"b", b"c"]
        assert net[i].commit_index == 5


def test_propose_on_a_follower_raises_not_leader_with_the_leader_id() -> None:
    net = Network([1, 2, 3])
    with pytest.raises(NotLeader) as none_known:
        net[2].propose([b"x"])
    assert none_known.value.leader_id == 0
    net.elect(1)
    with pytest.raises(NotLeader) as known:
        net[2].propose([b"x"])
    assert known.value.leader_id == 1
    assert known.value.leader_address == ""


def test_leader_counts_its_own_entries_only_once_durable() -> None:
    net = Network([1])
    net.tick(n=30)
    leader = net[1]
    leader.propose([b"x"])
    rd = leader.ready()
    assert rd.entries and not rd.committed_entries
    assert leader.commit_index < rd.entries[-1].index  # not yet persisted
    net.logs[1].append(list(rd.entries))
    leader.advance(rd)
    assert leader.commit_index == rd.entries[-1].index
    assert [e.payload.command for e in leader.ready().committed_entries] == [b"x"]


def test_commit_needs_a_majority_of_durable_voters() -> None:
    net = Network([1, 2, 3, 4, 5])
    net.elect(1)
    net.cut |= {(1, 3), (1, 4), (1, 5)}
    net[1].propose([b"x"])
    net.settle()
    assert net[1].commit_index == 2  # only leader + node 2 hold index 3
    net.cut.discard((1, 3))
    net.tick(ids=[1], n=3)  # heartbeats reveal that node 3 misses index 3
    assert net[1].commit_index == 3


def _appends_replicating(net: Network, count: int) -> list[Message]:
    """The appends node 1, elected, sends to replicate `count` 60-byte commands to node 2."""
    net.elect(1)
    since = len(net.sent)
    net[1].propose([b"v" * 60 for _ in range(count)])
    net.settle()
    assert net.commands(2) == [b"v" * 60] * count
    appends = [m for m in net.sent_of(T.MSG_APPEND, since) if m.entries]
    assert sum(len(m.entries) for m in appends) == count
    return appends


def test_batching_limits_entries_and_bytes_per_message() -> None:
    net = Network([1, 2], max_entries_per_msg=3, max_bytes_per_msg=200, max_inflight_msgs=1000)
    appends = _appends_replicating(net, 10)
    assert all(1 <= len(m.entries) <= 3 for m in appends)
    assert all(m.ByteSize() <= 200 + 100 or len(m.entries) == 1 for m in appends)
    assert max(len(m.entries) for m in appends) < 3  # 3 x 60-byte entries exceed 200 bytes


def test_a_proposed_batch_over_the_byte_limit_is_split() -> None:
    """The append made from a proposal's shared encoding is measured too when that
    encoding may not fit (its size bound is skipped only below the limit)."""
    net = Network([1, 2], max_bytes_per_msg=200, max_inflight_msgs=1000)
    appends = _appends_replicating(net, 3)
    assert max(len(m.entries) for m in appends) < 3  # 3 x 60-byte entries exceed 200 bytes


def test_a_backlog_goes_out_a_few_messages_per_trigger() -> None:
    """A follower far behind is not sent its whole backlog in one loop turn: each step of
    the leader (an acknowledgement, a heartbeat response) sends a few messages at most."""
    net = Network([1, 2, 3], max_entries_per_msg=2, max_inflight_msgs=1000)
    net.elect(1)
    net.isolate(3)
    for i in range(40):
        net[1].propose([b"x%d" % i])
        net.settle()
    net.heal()
    net[1].report_unreachable(3)  # as the transport does when the connection drops
    per_step: list[int] = []
    process = net.process

    def counting_process(i: int) -> None:
        before = len(net.sent)
        process(i)
        if i == 1:
            per_step.append(sum(1 for m in net.sent[before:]
                                if m.type == T.MSG_APPEND and m.to_id == 3 and m.entries))

    net.process = counting_process  # type: ignore[method-assign]
    net.tick(ids=[1], n=net[1].cfg.heartbeat_tick)
    assert net.commands(3) == net.commands(1)
    assert sum(per_step) >= 40 // 2  # the backlog went out ...
    assert max(per_step) <= replication.CATCH_UP_MSGS_PER_CALL  # ... a few messages a step


def test_heartbeat_responses_resend_at_most_once_per_interval() -> None:
    """Read rounds multiply heartbeat responses; a lagging follower must not be re-sent its
    backlog once per response."""
    net = Network([1, 2, 3], max_entries_per_msg=4)
    net.elect(1)
    net.isolate(3)
    for i in range(10):
        net[1].propose([b"x%d" % i])
        net.settle()
    net.heal()
    net.tick(ids=[1], n=net[1].cfg.heartbeat_tick, settle=False)
    net.deliver(keep=lambda m: m.type != T.MSG_APPEND)  # node 3's appends are lost
    since = len(net.sent)
    for i in range(20):  # many read rounds within one heartbeat interval, no tick
        net[1].read_index(b"r%d" % i)
        net.deliver(keep=lambda m: m.type != T.MSG_APPEND)
    resent = [m for m in net.sent_of(T.MSG_APPEND, since) if m.to_id == 3 and m.entries]
    assert len(resent) <= 1


def test_pipelining_is_bounded_by_the_inflight_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replication, "CATCH_UP_MSGS_PER_CALL", 100)
    net = Network([1, 2, 3], max_entries_per_msg=1, max_inflight_msgs=4)
    net.elect(1)
    for n in range(10):
        net[1].propose([b"%d" % n])
    net.process(1)
    to_2 = [m for m in net.pending if m.type == T.MSG_APPEND and m.to_id == 2]
    assert len(to_2) == 4  # four in flight without waiting for an answer
    assert net[1].prs[2].state is ProgressState.REPLICATE
    net.settle()
    net.tick(ids=[1])
    assert net.commands(2) == [b"%d" % n for n in range(10)]


def test_lost_appends_are_resent_after_heartbeats_show_no_progress() -> None:
    net = Network([1, 2, 3])
    net.elect(1)
    net[1].propose([b"lost"])
    net.deliver(keep=lambda m: m.type != T.MSG_APPEND)  # every append is lost
    assert net[1].commit_index == 2
    for _ in range(4):
        net.tick(ids=[1])
    assert net[1].commit_index == 3
    assert net.commands(2) == [b"lost"]


def test_leader_never_counts_learners_toward_commit() -> None:
    net = Network([1, 2, 3], learners=[4])
    net.elect(1)
    net.cut |= {(1, 2), (1, 3)}
    net[1].propose([b"x"])
    net.settle()
    assert net[1].prs[4].match == 3  # the learner holds it ...
    assert net[1].commit_index == 2  # ... but only the leader among voters does
    assert net[4].role is Role.LEARNER


def test_a_follower_learns_a_commit_from_the_leaders_answer_before_the_next_append() -> None:
    # The follower holds entries 1..3 of term 2; the leader of term 2 says it applied 3.
    net = Network([1, 2], logs={2: make_log([1, 2, 2], term=2, commit=1)})
    f = net[2]
    assert f.learn_commit(3, 2)
    assert f.commit_index == 3
    rd = f.ready()
    assert [e.index for e in rd.committed_entries] == [1, 2, 3]
    assert not f.learn_commit(2, 2)  # already committed: nothing moves


def test_learn_commit_ignores_an_index_it_cannot_prove_matches_the_leaders() -> None:
    # Entry 3 here is a stale term-2 entry; the leader (term 3) committed its own entry 3.
    net = Network([1, 2], logs={2: make_log([1, 2, 2], term=3, commit=1)})
    f = net[2]
    assert not f.learn_commit(3, 3)  # our entry 3 is of term 2, not the leader's
    assert not f.learn_commit(5, 3)  # not here yet
    assert f.commit_index == 1
    f.step(_append(1, 3, 2, 2, [3], commit=3))  # the append replaces entry 3, commits it
    net.process(2)
    assert log_terms(net.logs[2]) == [1, 2, 3] and f.commit_index == 3


def test_a_leader_commits_only_through_its_quorum() -> None:
    net = Network([1, 2, 3])
    leader = net.elect(1)
    net.cut |= {(1, 2), (1, 3)}
    leader.propose_batch([b"x"])
    net.process(1)
    last = leader.log.last_index()
    assert leader.commit_index < last
    assert not leader.learn_commit(last, leader.term)
    assert leader.commit_index < last
