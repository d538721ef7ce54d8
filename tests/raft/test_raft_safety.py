"""Safety (Raft §5.4.2, Figure 8): an old-term entry is never committed by counting replicas."""

from __future__ import annotations

from raft_network import Network, T, log_terms, make_log


def _figure_8_cluster() -> Network:
    """Figure 8 (c): S1 leads term 4; index 2 (term 2) sits on S1, S2; S5 holds 2 of term 3."""
    logs = {
        1: make_log([1, 2], term=3),
        2: make_log([1, 2], term=3),
        3: make_log([1], term=3),
        4: make_log([1], term=3),
        5: make_log([1, 3], term=3),
    }
    # One entry per append so that index 2 can reach S3 without the term-4 entry.
    net = Network([1, 2, 3, 4, 5], logs=logs, pre_vote=False, check_quorum=False,
                  max_entries_per_msg=1, max_inflight_msgs=1)
    net.cut |= {(1, 5), (5, 1)}
    net[1].campaign()  # votes from S2, S3, S4 (term 4); nothing delivered to S5
    net.settle(keep=lambda m: m.type in (T.MSG_VOTE, T.MSG_VOTE_RESPONSE))
    assert net[1].is_leader() and net[1].term == 4
    return net


def test_figure_8_old_term_entry_on_a_majority_is_not_committed() -> None:
    net = _figure_8_cluster()
    # S1's no-op of term 4 is at index 3. Let index 2 reach S3, but no term-4 entry anywhere.
    net.cut |= {(1, 4)}

    # The network carries S1's appends but every term-4 entry is cut off them: S2 and S3
    # learn (and acknowledge) index 2 of term 2, nobody receives an entry of term 4.
    for _ in range(5):
        net.tick(ids=[1], settle=False)
        for _ in range(20):
            batch, net.pending = net.pending, []
            for m in batch:
                if (m.from_id, m.to_id) in net.cut or m.to_id in net.down:
                    continue
                if m.type == T.MSG_APPEND:
                    del m.entries[len([e for e in m.entries if e.term != 4]) :]
                net[m.to_id].step(m)
                net.process(m.to_id)
            net.process_all()
    assert net[1].prs[2].match == net[1].prs[3].match == 2
    assert [net.logs[i].term(2) for i in (1, 2, 3)] == [2, 2, 2]  # a majority holds (2, 2)
    assert net[1].commit_index < 2  # ... and still it is not committed

    # (d): S1 crashes; S5 (last term 3) can win with S2, S3, S4 and overwrite index 2,
    # which is why counting replicas of an old term's entry would have been unsafe.
    net.crash(1)
    net.heal()
    net[5].campaign()  # term 4: everyone already voted for S1 in term 4
    net.settle()
    net.elect(5)  # term 5: S5's last term 3 beats S2, S3, S4's last term 2
    net.tick(ids=[5], n=3)
    assert [net.logs[i].term(2) for i in (2, 3, 4, 5)] == [3, 3, 3, 3]


def test_figure_8_entry_of_the_current_term_commits_everything_before_it() -> None:
    net = _figure_8_cluster()
    net.cut |= {(1, 4)}
    net.tick(ids=[1], n=5)
    # (e): S1 replicated its term-4 entry to a majority (S1, S2, S3): 1..3 commit together.
    assert net[1].commit_index >= 3
    assert [log_terms(net.logs[i])[:3] for i in (1, 2, 3)] == [[1, 2, 4]] * 3
    # S5 can no longer win: S1, S2, S3 all have a more up-to-date log (term 4).
    net.crash(1)
    net.heal()
    for _ in range(3):
        net[5].campaign()
        net.settle()
    assert not net[5].is_leader()
    assert [log_terms(net.logs[i])[:3] for i in (2, 3)] == [[1, 2, 4]] * 2
