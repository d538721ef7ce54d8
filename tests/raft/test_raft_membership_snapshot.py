"""Single-server membership changes (thesis ch. 4), learners, and snapshot catch-up."""

from __future__ import annotations

import random

import pytest
from raft_network import Network, T, compact, log_terms, make_log, membership

from dengine.errors import InvalidRequest, NotLeader, Unavailable
from dengine.proto import Entry
from dengine.raft import ProgressState, RaftConfig, RaftCore, Role


def _cluster(voters: list[int], learners: tuple[int, ...] = (), **cfg: object) -> Network:
    net = Network(voters, learners=learners, **cfg)
    net.elect(voters[0])
    net.tick(ids=[voters[0]])
    return net


def test_first_leader_writes_the_bootstrap_membership_to_the_log() -> None:
    net = _cluster([1, 2, 3])
    conf = [e for e in net.applied[2] if e.payload.HasField("config")]
    assert len(conf) == 1
    assert sorted(m.id for m in conf[0].payload.config.voters) == [1, 2, 3]
    # A restart without any bootstrap recovers the membership from the log.
    restarted = RaftCore(RaftConfig(id=2), net.logs[2], random.Random(0))
    assert restarted.voters == {1, 2, 3}


def test_a_restart_reads_only_the_config_entries_of_its_log() -> None:
    """Recovering the membership reads the config entries back to the last committed
    one, not the whole log (a restart with 100,000+ uncompacted entries decoded them all)."""
    log = make_log([1] * 3000, commit=2500)

    def config_at(index: int, voters: list[int]) -> None:
        log._entries[index - 1].payload.config.CopyFrom(membership(voters))

    config_at(10, [1, 2, 3])
    config_at(1000, [1, 2, 3, 4])
    config_at(2800, [1, 2])
    read: list[tuple[int, int]] = []
    entries = log.entries

    def counted(lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        read.append((lo, hi))
        return entries(lo, hi, max_bytes)

    log.entries = counted  # type: ignore[method-assign]
    core = RaftCore(RaftConfig(id=1), log, random.Random(0))
    assert core.voters == {1, 2}
    assert read == [(2800, 2801), (1000, 1001)]


def test_add_learner_then_promote_it_one_change_at_a_time() -> None:
    net = _cluster([1, 2, 3])
    net.add_node(4)  # empty, no bootstrap: it waits to be told the membership
    net.tick(ids=[4], n=50)
    assert not net[4].has_ready()  # not a member: never campaigns
    net[1].propose_membership(membership([1, 2, 3], learners=[4]))
    net.tick(ids=[1], n=2)
    assert net[4].role is Role.LEARNER
    assert net[1].prs[4].match == net[1].log.last_index()
    net[1].propose_membership(membership([1, 2, 3, 4]))
    net.tick(ids=[1], n=2)
    assert net[4].voters == {1, 2, 3, 4}
    assert net[4].role is Role.FOLLOWER
    assert net[1].commit_index == net[4].commit_index


def test_membership_change_rules() -> None:
    net = _cluster([1, 2, 3])
    with pytest.raises(NotLeader):
        net[2].propose_membership(membership([1, 2]))
    with pytest.raises(InvalidRequest, match="more than one voter"):
        net[1].propose_membership(membership([1, 2, 3, 4, 5]))
    with pytest.raises(InvalidRequest, match="more than one voter"):
        net[1].propose_membership(membership([1, 4, 5]))
    with pytest.raises(InvalidRequest, match="twice"):
        net[1].propose_membership(membership([1, 2, 3], learners=[3]))
    with pytest.raises(InvalidRequest, match="at least one voter"):
        net[1].propose_membership(membership([], learners=[1]))
    net.cut |= {(1, 2), (1, 3)}  # the next change cannot commit
    net[1].propose_membership(membership([1, 2, 3, 4]))
    assert net[1].voters == {1, 2, 3, 4}  # effective as soon as appended
    with pytest.raises(Unavailable, match="not committed"):
        net[1].propose_membership(membership([1, 2, 3]))


def test_membership_change_waits_for_the_leaders_first_commit() -> None:
    net = Network([1, 2, 3])
    net[1].campaign()
    net.settle(keep=lambda m: m.type in (T.MSG_PRE_VOTE, T.MSG_PRE_VOTE_RESPONSE,
                                          T.MSG_VOTE, T.MSG_VOTE_RESPONSE))
    assert net[1].is_leader()
    with pytest.raises(Unavailable, match="term"):
        net[1].propose_membership(membership([1, 2]))


def test_uncommitted_config_reverts_when_truncated() -> None:
    net = _cluster([1, 2, 3, 4, 5])
    net.cut |= {(1, 3), (1, 4), (1, 5)}
    net[1].propose_membership(membership([1, 2, 3, 4, 5], learners=[6]))
    net.settle()
    assert 6 in net[2].learners  # effective on 2 as soon as appended, though uncommitted
    net.crash(1)
    net.heal()
    net.isolate(2)
    for _ in range(200):  # 3, 4, 5 elect a leader without the config entry
        net.tick(ids=[3, 4, 5])
        if net.leader():
            break
    new = net.leader()
    assert new in (3, 4, 5)
    assert 6 not in net[new].learners
    net.heal()
    net.tick(ids=[new], n=3)
    assert net[2].leader_id == new
    assert 6 not in net[2].learners  # truncated: back to the previous membership
    assert net[2].voters == {1, 2, 3, 4, 5}
    assert log_terms(net.logs[2]) == log_terms(net.logs[new])


def test_removed_leader_steps_down_once_the_change_commits() -> None:
    net = _cluster([1, 2, 3])
    net[1].propose_membership(membership([2, 3]))
    assert net[1].is_leader()  # still leading until the change commits
    net.settle()
    assert net[1].role is Role.FOLLOWER
    assert net[2].voters == {2, 3} and net[3].voters == {2, 3}
    for _ in range(100):
        net.tick(ids=[2, 3])
        if net.leader():
            break
    assert net.leader() in (2, 3)
    net.tick(ids=[1], n=50)  # the removed node never campaigns
    assert not net[1].is_leader()


def test_snapshot_catches_up_a_follower_whose_entries_were_compacted() -> None:
    net = _cluster([1, 2, 3])
    net.isolate(3)
    for n in range(20):
        net[1].propose([b"%d" % n])
        net.settle()
    net.tick(ids=[1, 2])
    meta = compact(net.logs[1], net[1].commit_index - 2, net[1].membership_at(net[1].commit_index))
    net.heal()
    net.tick(ids=[1], n=3)
    assert net.snapshots[3] == [meta]
    assert net[3].commit_index == net[1].commit_index
    assert log_terms(net.logs[3]) == log_terms(net.logs[1])
    assert net.logs[3].first_index() == meta.last_included.index + 1
    assert net[3].voters == {1, 2, 3}  # membership comes from the snapshot
    assert net[1].prs[3].state is ProgressState.REPLICATE
    # Entries after the snapshot are applied normally; the snapshot part is not re-applied.
    after = [e.index for e in net.applied[3] if e.index > 2]  # 1, 2 applied before isolation
    assert after[0] == meta.last_included.index + 1
    net[1].propose([b"after"])
    net.tick(ids=[1])
    assert net.commands(3)[-1] == b"after"


def test_failed_snapshot_is_sent_again() -> None:
    net = _cluster([1, 2, 3])
    net.isolate(3)
    for n in range(5):
        net[1].propose([b"%d" % n])
    net.tick(ids=[1, 2])
    compact(net.logs[1], net[1].commit_index, net[1].membership)
    net.heal()
    for _ in range(3):  # heartbeats show 3 is behind; the snapshot it needs is lost
        net.tick(ids=[1], settle=False)
        net.settle(keep=lambda m: m.type != T.MSG_SNAPSHOT)
    assert net[1].prs[3].state is ProgressState.SNAPSHOT
    net[1].report_snapshot(3, ok=False)
    assert net[1].prs[3].state is ProgressState.PROBE
    net.tick(ids=[1], n=3)
    assert len(net.snapshots[3]) == 1
    assert net[3].commit_index == net[1].commit_index


def test_lost_snapshot_of_the_last_index_is_followed_by_a_probe() -> None:
    """After the snapshot stall timeout the peer's next index is past the leader's log; a
    heartbeat answer must still produce a probe, or the follower is never caught up."""
    net = _cluster([1, 2, 3])
    net.isolate(3)
    for n in range(5):
        net[1].propose([b"%d" % n])
    net.tick(ids=[1, 2])
    compact(net.logs[1], net[1].commit_index, net[1].membership)
    net.heal()
    stall = 4 * net[1].cfg.election_tick  # SNAPSHOT_STALL_TIMEOUTS election timeouts
    for _ in range(stall + 10):  # every snapshot is lost until the leader gives up on it
        net.tick(ids=[1], settle=False)
        net.settle(keep=lambda m: m.type != T.MSG_SNAPSHOT)
    net.tick(ids=[1], n=2 * stall)
    assert net[3].commit_index == net[1].commit_index
