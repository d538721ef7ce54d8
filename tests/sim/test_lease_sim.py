"""Lease expiry in the deterministic simulator (issue 17): the leader's clock (each node's
own, up to 10 % off), keep-alives, failovers, partitions, crashes, snapshots and
membership changes; no lease expires before its last keep-alive + TTL. The long run is
`python -m dengine.sim --workload lease --seeds 0:300`."""

from __future__ import annotations

import dataclasses
import heapq

import pytest

from dengine.kv.lease_clock import LeaseClock
from dengine.sim import SimConfig, Simulator

SLOW_SEEDS = 300


def _run(config: SimConfig, seeds: range) -> tuple[list[str], dict[str, int]]:
    failures, stats = [], {}
    for seed in seeds:
        result = Simulator(dataclasses.replace(config, seed=seed)).run()
        if not result.ok:
            failures.append(result.describe())
        for key in ("lease_grants", "lease_renewals", "lease_expiry_revokes"):
            stats[key] = stats.get(key, 0) + result.stats.get(key, 0)
    return failures, stats


def _variants(seeds: int) -> tuple[list[str], dict[str, int]]:
    failures, stats = _run(SimConfig(nodes=3, workload="lease"), range(seeds))
    for config, base in ((SimConfig(nodes=5, workload="lease"), 1000),
                         (SimConfig(nodes=3, workload="lease", snapshot_every=20), 2000),
                         (SimConfig(nodes=3, workload="lease", membership=True), 3000)):
        more, _ = _run(config, range(base, base + max(1, seeds // 3)))
        failures += more
    return failures, stats


def test_no_lease_expires_early_under_faults() -> None:
    failures, stats = _variants(8)
    assert not failures, "\n".join(failures)
    # the workload does what it says: grants, renewals, and expiries of abandoned leases
    assert stats["lease_grants"] > 100 and stats["lease_renewals"] > 200
    assert stats["lease_expiry_revokes"] > 20


@pytest.mark.slow
def test_many_seeds_no_lease_expires_early() -> None:
    failures, _ = _variants(SLOW_SEEDS)
    assert not failures, "\n".join(failures)


def test_the_check_has_teeth(monkeypatch: pytest.MonkeyPatch) -> None:
    """A clock whose keep-alive gives only half the TTL is caught."""
    renew = LeaseClock.renew

    def half(self: LeaseClock, lease_id: int, now: float) -> int:
        ttl = renew(self, lease_id, now)
        if ttl:
            self._deadlines[lease_id] = now + ttl / 2
            heapq.heappush(self._heap, (now + ttl / 2, lease_id))
        return ttl

    monkeypatch.setattr(LeaseClock, "renew", half)
    failures, _ = _run(SimConfig(nodes=3, workload="lease"), range(6))
    assert failures and "lease expiry violated" in failures[0]
