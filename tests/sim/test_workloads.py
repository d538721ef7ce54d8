"""The simulator's transaction workloads (issue 16): bank transfers guarded by
mod_revision compares and compare-and-swap histories, on the MVCC store, under every
fault; and their teeth (a store with stale compares, a leader serving stale lease reads).

The long runs are `python -m dengine.sim --workload bank|cas --seeds 0:300` (docs)."""

from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner
from sim_helpers import variants

from dengine.errors import DengineError
from dengine.sim import SimConfig, SimResult, Simulator
from dengine.sim.__main__ import main as sim_main
from dengine.sim.broken import LeaseWithoutCheckQuorumCore, StaleCompareStore
from dengine.sim.config import CoreFactory

SLOW_SEEDS = 300


@pytest.mark.parametrize("workload", ["bank", "cas"])
def test_every_seed_keeps_the_workload_correct(workload: str) -> None:
    failures, _ = variants(workload, 12)
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@pytest.mark.parametrize("workload", ["bank", "cas"])
def test_many_seeds_keep_the_workload_correct(workload: str) -> None:
    failures, _ = variants(workload, SLOW_SEEDS)
    assert not failures, "\n".join(failures)


def test_the_workloads_do_what_they_say() -> None:
    """Guard against workloads that silently stop transferring or swapping."""
    transfers = linear_reads = swapped = refused = 0
    for seed in range(6):
        bank = Simulator(SimConfig(nodes=3, seed=seed, workload="bank")).run()
        cas = Simulator(SimConfig(nodes=3, seed=seed, workload="cas")).run()
        assert bank.ok and cas.ok, bank.describe() + cas.describe()
        transfers += bank.stats.get("bank_transfers", 0)
        linear_reads += bank.stats.get("bank_linearizable_reads", 0)
        swapped += sum(1 for op in cas.history if op.kind == "cas" and op.output is True)
        refused += sum(1 for op in cas.history if op.kind == "cas" and op.output is False)
    assert transfers > 60 and linear_reads > 120
    assert swapped > 30 and refused > 30


def test_a_workload_run_is_reproducible_from_its_seed() -> None:
    for workload in ("bank", "cas"):
        a = Simulator(SimConfig(nodes=3, seed=5, steps=2000, workload=workload)).run()
        b = Simulator(SimConfig(nodes=3, seed=5, steps=2000, workload=workload)).run()
        assert a.history == b.history and a.stats == b.stats


def _first_violation(config: SimConfig, core: CoreFactory | None,
                     store: type[StaleCompareStore] | None, seeds: range) -> SimResult | None:
    for seed in seeds:
        result = Simulator(dataclasses.replace(config, seed=seed), core, store).run()
        if not result.ok:
            return result
    return None


def test_stale_txn_compares_lose_money() -> None:
    config = SimConfig(nodes=3, workload="bank", store="dengine.sim.broken:StaleCompareStore")
    result = _first_violation(config, None, StaleCompareStore, range(100))
    assert result is not None, "stale compares not caught by the bank in 100 seeds"
    assert result.violation is not None and result.violation.invariant == "bank total"
    assert "--workload bank --store dengine.sim.broken:StaleCompareStore" in result.describe()


def test_stale_txn_compares_make_cas_non_linearizable() -> None:
    config = SimConfig(nodes=3, workload="cas")
    result = _first_violation(config, None, StaleCompareStore, range(100))
    assert result is not None, "stale compares not caught by the cas history in 100 seeds"
    assert result.violation is not None
    assert result.violation.invariant == "linearizability", result.describe()
    assert "cas(" in result.violation.detail


@pytest.mark.parametrize("workload", ["bank", "cas"])
def test_stale_lease_reads_are_caught(workload: str) -> None:
    config = SimConfig(nodes=3, workload=workload)
    result = _first_violation(config, LeaseWithoutCheckQuorumCore, None, range(200))
    assert result is not None, f"stale lease reads not caught by {workload} in 200 seeds"
    assert result.violation is not None
    assert result.violation.invariant in ("bank total", "linearizability"), result.describe()


def test_unknown_workload_is_a_clear_error() -> None:
    with pytest.raises(DengineError, match="unknown workload 'ledger'"):
        Simulator(SimConfig(workload="ledger"))


def test_cli_runs_a_workload_and_rejects_a_bad_store() -> None:
    out = CliRunner().invoke(sim_main, ["--seeds", "0:2", "--workload", "bank"])
    assert out.exit_code == 0, out.output
    assert "workload=bank" in out.output and "violations=0" in out.output
    out = CliRunner().invoke(sim_main, ["--seeds", "0:1", "--store", "dengine.sim.broken:X"])
    assert out.exit_code != 0 and "cannot load store" in out.output
    assert "Traceback" not in out.output
