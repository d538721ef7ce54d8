"""Teeth: the simulator must catch deliberately broken Raft cores.

Each test searches a seed range and stops at the first violation; a broken core that
survives the whole range means the simulator (or its fault schedule) lost its teeth.
"""

from __future__ import annotations

import dataclasses

from dengine.proto import HardState
from dengine.sim import InvariantChecker, SimConfig, SimResult, Simulator
from dengine.sim.broken import (
    BlindLearnCommitCore,
    CommitOldTermCore,
    DoubleVoteCore,
    LeaseWithoutCheckQuorumCore,
)
from dengine.sim.config import CoreFactory


def _first_violation(
    config: SimConfig, core: CoreFactory | None, seeds: range
) -> SimResult | None:
    for seed in seeds:
        result = Simulator(dataclasses.replace(config, seed=seed), core).run()
        if not result.ok:
            return result
    return None


def test_real_core_survives_the_figure_8_configuration() -> None:
    """The schedule and seeds that catch the Figure 8 bug are clean for the real core
    (the default configurations are covered by test_simulation)."""
    config = SimConfig(nodes=3, max_entries_per_msg=1, max_inflight=1)
    result = _first_violation(config, None, range(40))
    assert result is None, result.describe()


def test_commit_by_counting_old_term_entries_is_caught() -> None:
    """Raft paper Figure 8: an old term's entry 'committed' by counting replicas is lost."""
    config = SimConfig(nodes=3, max_entries_per_msg=1, max_inflight=1,
                       core="dengine.sim.broken:CommitOldTermCore")
    result = _first_violation(config, CommitOldTermCore, range(300))
    assert result is not None, "Figure 8 commit bug not caught in 300 seeds"
    assert result.violation is not None
    assert result.violation.invariant in (
        "leader completeness", "state machine safety", "commit safety", "linearizability"
    ), result.describe()


def test_a_commit_learnt_without_checking_the_entry_term_is_caught() -> None:
    """A follower that commits up to a forwarded write's index without checking that its
    entry there has the leader's term applies a stale entry."""
    config = SimConfig(nodes=3, core="dengine.sim.broken:BlindLearnCommitCore")
    result = _first_violation(config, BlindLearnCommitCore, range(100))
    assert result is not None, "blind learn_commit not caught in 100 seeds"
    assert result.violation is not None
    assert result.violation.invariant in (
        "state machine safety", "commit safety", "linearizability"), result.describe()


def test_two_votes_in_one_term_are_caught() -> None:
    for nodes in (3, 5):
        config = SimConfig(nodes=nodes, core="dengine.sim.broken:DoubleVoteCore")
        result = _first_violation(config, DoubleVoteCore, range(100))
        assert result is not None, f"double vote not caught with {nodes} nodes"
        assert result.violation is not None
        assert result.violation.invariant in ("vote safety", "election safety"), (
            result.describe()
        )


class _NoVoteCheck(InvariantChecker):
    """Skips the durable-vote check, to see that election safety alone still bites."""

    def on_persist_hard_state(self, node: int, hs: HardState) -> None:
        return


def test_two_votes_in_one_term_make_two_leaders() -> None:
    for seed in range(100):
        sim = Simulator(SimConfig(nodes=3, seed=seed), DoubleVoteCore)
        sim.checker = _NoVoteCheck()
        result = sim.run()
        if result.violation is not None:
            assert result.violation.invariant in ("election safety", "log matching"), (
                result.describe()
            )
            return
    raise AssertionError("double vote never made two leaders of one term in 100 seeds")


def test_lease_reads_without_check_quorum_are_caught() -> None:
    for nodes in (3, 5):
        config = SimConfig(nodes=nodes, core="dengine.sim.broken:LeaseWithoutCheckQuorumCore")
        result = _first_violation(config, LeaseWithoutCheckQuorumCore, range(200))
        assert result is not None, f"stale lease reads not caught with {nodes} nodes"
        assert result.violation is not None
        assert result.violation.invariant == "linearizability", result.describe()
        assert "get(" in result.violation.detail
