"""The whole-node simulator: real Nodes on a simulated clock, disk and network (issue 19).

CI budget: 16 seeds x 3 voters and 6 seeds x 3 voters + 2 learners (3 virtual seconds of
faults each, every fault kind counted over the range), the determinism test, and the teeth
(each stops at its first caught seed). `-m slow` runs 200 more seeds of each.
"""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from dengine.sim.nodesim import NODE_FAULT_KINDS, NodeSimConfig, run

BROKEN = "dengine.sim.nodesim.broken"


@pytest.fixture(autouse=True)
def _quiet() -> None:
    # Power cuts make the nodes log fatal storage errors by design.
    logging.getLogger("dengine").setLevel(logging.CRITICAL + 1)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
    yield
    logging.getLogger("dengine").setLevel(logging.NOTSET)
    logging.getLogger("asyncio").setLevel(logging.NOTSET)


def _run_range(seeds: range, **kw: object) -> dict[str, int]:
    totals: dict[str, int] = {}
    for seed in seeds:
        result = run(NodeSimConfig(seed=seed, **kw))  # type: ignore[arg-type]
        assert result.ok, result.describe()
        for k, v in result.stats.items():
            totals[k] = totals.get(k, 0) + v
    return totals


def test_real_nodes_pass_and_every_fault_kind_is_exercised() -> None:
    totals = _run_range(range(0, 16))
    for kind in NODE_FAULT_KINDS:
        assert totals.get(f"fault_{kind}", 0) > 0, f"no {kind} fault in 16 seeds: {totals}"
    for what in ("power_cuts", "kills", "storage_failures", "strike_ack", "strike_isolate",
                 "net_lost", "net_dup",
                 "net_straggler", "net_blocked", "writes_ok", "writes_unknown", "reads_ok",
                 "lease_reads", "eventual_reads"):
        assert totals.get(what, 0) > 0, f"nothing counted for {what}: {totals}"


def test_real_nodes_with_learners() -> None:
    totals = _run_range(range(100, 106), learners=2)
    assert totals.get("learners_proposed", 0) > 0


def test_a_learner_restarted_before_applying_its_own_addition_is_not_removed() -> None:
    """Found by this simulator: a learner restarted with its addition appended but not
    applied found the applied configuration without it and stopped for good ("removed")."""
    result = run(NodeSimConfig(seed=19, learners=2))
    assert result.ok, result.describe()


def test_same_seed_same_history_byte_for_byte() -> None:
    config = NodeSimConfig(seed=3, seconds=1.5)
    a, b = run(config), run(config)
    assert a.ok and b.ok
    assert len(a.history) > 50
    assert "\n".join(a.history).encode() == "\n".join(b.history).encode()
    assert a.stats == b.stats
    assert a.virtual_seconds == b.virtual_seconds


def _first_caught(seeds: range, **kw: object) -> int:
    for seed in seeds:
        result = run(NodeSimConfig(seed=seed, **kw))  # type: ignore[arg-type]
        if not result.ok:
            assert result.violation is not None
            return seed
    raise AssertionError(f"no seed of {seeds} caught {kw}")


def test_teeth_acknowledging_before_durable() -> None:
    """Followers ack appends and grant votes before their log and hard state are synced:
    first caught at seed 9 (3 of seeds 0-29)."""
    assert _first_caught(range(0, 40), node=f"{BROKEN}:AckBeforeDurableNode") <= 39


def test_teeth_learners_counted_toward_commit() -> None:
    """The commit index over voters and learners: first caught at seed 10 (5 of 0-29)."""
    assert _first_caught(range(0, 40), learners=2, core=f"{BROKEN}:LearnerCommitCore") <= 39


def test_teeth_follower_applies_before_commit() -> None:
    """A follower takes what it holds as committed: first caught at seed 4 (1 of 0-29)."""
    assert _first_caught(range(0, 40), core=f"{BROKEN}:CommitWhatIHoldCore") <= 39


def test_teeth_hard_state_without_fsync() -> None:
    """Term and vote written without fsync (before the vote leaves): every seed of 0-9
    (a torn hard state after a power cut: recovery refuses to start)."""
    assert _first_caught(range(0, 40), disk=f"{BROKEN}:HardStateNoSyncDisk") <= 39


def test_replay_command_reproduces_a_failure() -> None:
    config = NodeSimConfig(seed=9, node=f"{BROKEN}:AckBeforeDurableNode")
    result = run(config)
    assert not result.ok
    cmd = config.replay_command()
    assert cmd.startswith("python -m dengine.sim --whole-node")
    out = subprocess.run([sys.executable, *cmd.split()[1:]], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 1
    assert result.violation is not None
    assert result.violation.invariant in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("learners", [0, 2])
def test_soak_many_seeds(learners: int) -> None:
    _run_range(range(1000, 1200), learners=learners)
