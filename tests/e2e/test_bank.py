"""Transactions atomic and isolated on real processes (issue 16): bank_run.py's bank and
compare-and-swap workloads through etcd's gRPC API while the leader is killed, paused and
partitioned. Asserted: every range over the accounts (linearizable or not) sums to the
initial total, none is staler than what completed before it, the final state too; the cas
history is linearizable. The same run against etcd 3.4 proves the workload; the unguarded
variant (no compares) must be caught.

CI: one seed, ~20 s of faults. `-m slow`: `DENGINE_BANK_SEEDS` (default "1,2,3") for
`DENGINE_BANK_SECONDS` (default 150) each. `DENGINE_BANK_SEED` replays a CI run.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aetcd")

from bank_run import PROCESS_KINDS, BankConfig, run_bank, summary

CI_SEED = int(os.environ.get("DENGINE_BANK_SEED", "16"))
CI_SECONDS = float(os.environ.get("DENGINE_BANK_CI_SECONDS", "20"))
SLOW_SEEDS = [int(s) for s in os.environ.get("DENGINE_BANK_SEEDS", "1,2,3").split(",") if s]
SLOW_SECONDS = float(os.environ.get("DENGINE_BANK_SECONDS", "150"))
# The CI run: the leader's faults, each once (a follower's are in the slow runs).
CI_KINDS = ("kill_leader", "pause_leader", "isolate_leader_drop", "isolate_leader_blackhole")

needs_etcd = pytest.mark.skipif(shutil.which("etcd") is None, reason="etcd 3.4 not installed")
# Until dengine serves etcd's gRPC API (server/etcd/, issue 16) its runs cannot start.
needs_etcd_api = pytest.mark.skipif(importlib.util.find_spec("dengine.server.etcd") is None,
                                    reason="dengine does not serve etcd's gRPC API yet")


def run(workdir: Path, cfg: BankConfig) -> dict[str, Any]:
    report = asyncio.run(run_bank(workdir, cfg))
    (workdir / "bank_report.json").write_text(json.dumps(report, indent=2))
    print(summary(report))
    return report


def assert_correct(report: dict[str, Any]) -> None:
    assert report["bank_ok"], report["bank_problem"]
    assert report["cas_linearizable"], report["lincheck"]
    # The run did what it says: transfers and swaps happened, reads were checked.
    assert report["transfers"] > 0 and report["bank_linearizable_reads"] > 0
    assert report["outcomes"].get("bank:txn:failed", 0) > 0, "no compare ever failed"
    assert report["outcomes"].get("cas:cas:ok", 0) > 0


@needs_etcd_api
def test_bank_and_cas_under_leader_faults(tmp_path: Path) -> None:
    report = run(tmp_path, BankConfig(target="dengine", seed=CI_SEED, seconds=CI_SECONDS,
                                      kinds=CI_KINDS))
    assert_correct(report)
    assert {f["kind"] for f in report["faults"]} >= set(CI_KINDS)


@needs_etcd
@pytest.mark.parametrize("target", [
    pytest.param("dengine", marks=[needs_etcd_api, pytest.mark.slow]), "etcd"])
def test_unguarded_transfers_are_caught(tmp_path: Path, target: str) -> None:
    """Teeth, on real processes: transfers and swaps without their compares lose updates,
    and the checks say so."""
    report = run(tmp_path, BankConfig(target=target, seed=CI_SEED, seconds=2,
                                      kinds=("pause_follower",), unguarded=True))
    assert not report["bank_ok"] and not report["cas_linearizable"], summary(report)


@needs_etcd
@pytest.mark.slow
def test_bank_and_cas_on_etcd(tmp_path: Path) -> None:
    """The workload and its checks hold on etcd 3.4 under its process faults."""
    report = run(tmp_path, BankConfig(target="etcd", seed=CI_SEED, seconds=40,
                                      kinds=PROCESS_KINDS))
    assert_correct(report)


@needs_etcd_api
@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW_SEEDS)
def test_bank_and_cas_under_every_fault(tmp_path: Path, seed: int) -> None:
    report = run(tmp_path, BankConfig(target="dengine", seed=seed, seconds=SLOW_SECONDS))
    assert_correct(report)
