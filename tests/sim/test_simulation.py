"""Seeded whole-cluster simulations of the real RaftCore: every invariant, every seed."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from dengine.proto import Message, MessageType
from dengine.raft import RaftCore
from dengine.sim import SimConfig, Simulator
from dengine.sim.__main__ import main as sim_main
from dengine.sim.broken import DoubleVoteCore

STEPS = 3000
CHUNK = 50


def _failures(nodes: int, seeds: range, steps: int = STEPS) -> list[str]:
    out = []
    for seed in seeds:
        result = Simulator(SimConfig(nodes=nodes, seed=seed, steps=steps)).run()
        if not result.ok:
            out.append(result.describe())
    return out


# 250 seeds of 3 nodes and 250 of 5, in chunks so that pytest-xdist can spread them.
@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("start", range(0, 250, CHUNK))
def test_every_seed_holds_every_invariant(nodes: int, start: int) -> None:
    failures = _failures(nodes, range(start, start + CHUNK))
    assert not failures, "\n".join(failures)


def test_single_node_cluster() -> None:
    failures = _failures(1, range(30))
    assert not failures, "\n".join(failures)


def test_long_runs() -> None:
    failures = _failures(3, range(1000, 1004), steps=20_000)
    failures += _failures(5, range(1000, 1004), steps=20_000)
    assert not failures, "\n".join(failures)


def test_a_run_is_reproducible_from_its_seed() -> None:
    a = Simulator(SimConfig(nodes=3, seed=42, steps=2000)).run()
    b = Simulator(SimConfig(nodes=3, seed=42, steps=2000)).run()
    assert a.history == b.history and a.stats == b.stats
    c = Simulator(SimConfig(nodes=3, seed=43, steps=2000)).run()
    assert c.history != a.history


def test_runs_exercise_the_faults_and_the_clients() -> None:
    """Guard against a simulator that silently stops injecting faults or serving clients."""
    totals: dict[str, int] = {}
    for seed in range(20):
        result = Simulator(SimConfig(nodes=3, seed=seed, steps=STEPS)).run()
        assert result.ok, result.describe()
        for name, value in result.stats.items():
            totals[name] = totals.get(name, 0) + value
        gets = [op for op in result.history if op.kind == "get"]
        writes = [op for op in result.history if op.kind != "get" and op.client_id >= 0]
        assert gets and writes
    for name in ("dropped", "crashes", "partitions", "writes", "reads", "lease_reads",
                 "failed_writes"):
        assert totals[name] > 0, (name, totals)
    assert totals["elections"] > 20 * 2, totals


def test_liveness_every_pending_op_completes_after_healing() -> None:
    for seed in range(10):
        result = Simulator(SimConfig(nodes=5, seed=seed, steps=STEPS)).run()
        assert result.ok, result.describe()
        writes = [op for op in result.history if op.kind != "get" and op.client_id >= 0]
        assert all(op.ret is not None for op in writes), "a write stayed pending"
        assert result.stats["unknown_writes"] == 0


class _NeverCampaignsCore(RaftCore):
    """Never starts an election: the liveness check must notice."""

    def campaign(self) -> None:
        return


def test_liveness_check_catches_a_cluster_without_a_leader() -> None:
    result = Simulator(SimConfig(nodes=3, seed=1, steps=300), _NeverCampaignsCore).run()
    assert result.violation is not None
    assert result.violation.invariant == "liveness"
    assert "no leader" in result.violation.detail


class _DeafCore(RaftCore):
    """Drops every ReadIndex request: reads never complete, so liveness must fail."""

    def step(self, m: Message) -> None:
        if m.type != MessageType.MSG_READ_INDEX:
            super().step(m)


def test_liveness_check_catches_reads_that_never_complete() -> None:
    result = Simulator(SimConfig(nodes=3, seed=2, steps=1000), _DeafCore).run()
    assert result.violation is not None and result.violation.invariant == "liveness"


def test_failing_seed_prints_the_command_that_replays_it() -> None:
    spec = "dengine.sim.broken:DoubleVoteCore"
    configs = (SimConfig(nodes=3, seed=s, steps=STEPS, core=spec) for s in range(200))
    config = next(c for c in configs if not Simulator(c, DoubleVoteCore).run().ok)
    result = Simulator(config, DoubleVoteCore).run()
    command = config.replay_command()
    assert f"--seeds {config.seed}:{config.seed + 1}" in command
    assert command in result.describe()
    # The printed command reproduces the same violation.
    args = command.split()[3:]
    out = CliRunner().invoke(sim_main, args)
    assert out.exit_code == 1
    assert result.describe().splitlines()[0] in out.output
    assert "violations=1" in out.output


def test_cli_summary_line_and_exit_code() -> None:
    out = CliRunner().invoke(sim_main, ["--nodes", "3", "--seeds", "5:8", "--steps", "500"])
    assert out.exit_code == 0, out.output
    assert out.output.count("\n") == 1
    assert "runs=3" in out.output and "violations=0" in out.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--seeds", "9:3"], "empty seed range"),
        (["--seeds", "a:b"], "expected START:STOP"),
        (["--faults", "loss,meteor"], "unknown fault kinds"),
        (["--core", "nosuchmodule:X"], "cannot load core"),
        (["--nodes", "0"], "0"),
    ],
)
def test_cli_bad_input_is_a_clear_error(args: list[str], message: str) -> None:
    out = CliRunner().invoke(sim_main, args)
    assert out.exit_code == 2
    assert message in out.output
    assert "Traceback" not in out.output


def test_no_faults_run_is_clean() -> None:
    result = Simulator(SimConfig(nodes=3, seed=3, steps=STEPS, faults=frozenset())).run()
    assert result.ok, result.describe()
    assert result.stats["crashes"] == 0 and result.stats["partitions"] == 0


@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("membership", [False, True])
def test_snapshots_compaction_and_membership_changes(nodes: int, membership: bool) -> None:
    """Logs compacted every few entries (lagging followers catch up by snapshot), and
    voters removed, demoted to learners and added back."""
    totals = {"snapshots_installed": 0, "membership_changes": 0}
    for seed in range(30):
        config = SimConfig(nodes=nodes, seed=seed, steps=STEPS, snapshot_every=10,
                           membership=membership)
        result = Simulator(config).run()
        assert result.ok, result.describe()
        for name in totals:
            totals[name] += result.stats[name]
    assert totals["snapshots_installed"] > 5, totals
    assert (totals["membership_changes"] > 5) == membership, totals


@pytest.mark.slow
@pytest.mark.parametrize("nodes", [3, 5])
@pytest.mark.parametrize("extras", [{}, {"snapshot_every": 10, "membership": True}])
def test_soak(nodes: int, extras: dict[str, int | bool]) -> None:
    """1000 seeds of 5000 steps (run with -m slow)."""
    failures = []
    for seed in range(10_000, 11_000):
        config = SimConfig(nodes=nodes, seed=seed, steps=5000, **extras)  # type: ignore[arg-type]
        result = Simulator(config).run()
        if not result.ok:
            failures.append(result.describe())
    assert not failures, "\n".join(failures)
