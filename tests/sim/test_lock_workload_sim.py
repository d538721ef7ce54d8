"""Lock safety in the deterministic simulator (issue 17): etcd's lock recipe on the
simulated cluster's store and leases, under crashes, partitions, clock skew, lease
expiry, holders that die and holders paused past their TTL; no two critical sections
overlap, fencing tokens increase. The long run is
`python -m dengine.sim --workload lock --seeds 0:500` (docs/simulation.md)."""

from __future__ import annotations

import pytest
from sim_helpers import failures_of, half_ttl_keepalives, variants

import dengine.sim.locks as locks
from dengine.kv.mvcc import Change
from dengine.kv.packed import pack_meta
from dengine.sim import SimConfig
from dengine.sim.broken import LocalLeaderLock, SkipWaitLock
from dengine.sim.invariants import InvariantViolation
from dengine.sim.locks import CS_KEY, PREFIX, Observation, check_lock_history, check_observations

SLOW_SEEDS = 300
STATS = ("lock_sections", "lock_waits", "lock_lost", "lock_walked_away",
         "lease_expiry_revokes", "leader_observations")


def test_lock_sections_never_overlap_under_faults() -> None:
    failures, stats = variants("lock", 10, STATS)
    assert not failures, "\n".join(failures)
    # the workload does what it says: sections, waiting, handovers by lease expiry
    assert stats["lock_sections"] > 20 and stats["lock_waits"] > 100, stats
    assert stats["lock_walked_away"] > 3 and stats["lease_expiry_revokes"] > 3, stats
    assert stats["leader_observations"] > 100, stats


@pytest.mark.slow
def test_many_seeds_lock_sections_never_overlap() -> None:
    failures, _ = variants("lock", SLOW_SEEDS)
    assert not failures, "\n".join(failures)


def test_a_lock_that_does_not_wait_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locks, "LockWorkload", SkipWaitLock)
    failures = failures_of(SimConfig(nodes=3, workload="lock"), range(4))
    assert failures and all("lock safety violated" in f for f in failures), failures


def test_leaders_read_from_a_nodes_own_state_are_caught(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(locks, "LockWorkload", LocalLeaderLock)
    failures = failures_of(SimConfig(nodes=3, workload="lock"), range(5))
    assert failures and "election order violated" in failures[0], failures


def test_a_lessor_that_expires_early_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep-alives that give only half the TTL: a kept-alive holder loses its lock."""
    half_ttl_keepalives(monkeypatch)
    failures = failures_of(SimConfig(nodes=3, workload="lock"), range(8))
    assert failures and "lease expiry violated" in failures[0], failures


# ---- the history check itself, on hand-made changelogs


def _put(rev: int, key: bytes, value: bytes = b"", created: int = 0) -> Change:
    return Change(rev, key, pack_meta(created or rev, rev, 1, 0) + value, None)


def _delete(rev: int, key: bytes) -> Change:
    return Change(rev, key, None, b"")


def _violation(changes: list[Change]) -> str:
    with pytest.raises(InvariantViolation) as e:
        check_lock_history(changes)
    return e.value.detail


def test_the_history_check() -> None:
    a, b = PREFIX + b"a", PREFIX + b"b"
    handover = [_put(2, a), _put(3, b), _put(4, CS_KEY, b"in 2"), _put(5, CS_KEY, b"out 2"),
                _delete(6, a), _put(7, CS_KEY, b"in 3"), _put(8, CS_KEY, b"in 3"),
                _put(9, CS_KEY, b"out 3")]
    check_lock_history(handover)
    # a record sent again (its outcome unknown) lands after the holder's `out`
    check_lock_history([_put(2, a), _put(3, CS_KEY, b"in 2"), _put(4, CS_KEY, b"out 2"),
                        _put(5, CS_KEY, b"in 2")])
    # a holder whose lease ended mid-section: the next one may enter
    check_lock_history([_put(2, a), _put(3, b), _put(4, CS_KEY, b"in 2"), _delete(5, a),
                        _put(6, CS_KEY, b"in 3")])
    assert "first lock key was created at 2" in _violation(
        [_put(2, a), _put(3, b), _put(4, CS_KEY, b"in 3")])
    # (impossible revisions, to reach each check alone)
    assert "critical section was open" in _violation(
        [_put(3, b), _put(4, CS_KEY, b"in 3"), _put(5, a, created=2),
         _put(6, CS_KEY, b"in 2")])
    assert "fencing token 2 after 5" in _violation(
        [_put(5, b), _put(6, CS_KEY, b"in 5"), _put(7, CS_KEY, b"out 5"), _delete(8, b),
         _put(9, a, created=2), _put(10, CS_KEY, b"in 2")])


def test_the_observation_check() -> None:
    def seen(call: int, ret: int, revision: int, lease: int) -> Observation:
        return Observation(call, ret, revision, PREFIX + b"%x" % lease,
                           b"c%d" % (lease // 1_000_000))

    ok = [seen(0, 5, 2, 1_000_001), seen(1, 9, 2, 1_000_001), seen(3, 4, 7, 2_000_001),
          seen(6, 8, 7, 2_000_001)]  # overlapping reads may see either
    check_observations(ok)
    with pytest.raises(InvariantViolation, match="saw the leader created at 2 after"):
        check_observations([*ok, seen(10, 11, 2, 1_000_001)])
    with pytest.raises(InvariantViolation, match="proclaims"):
        check_observations([Observation(0, 1, 2, PREFIX + b"%x" % 1_000_001, b"c2")])
