"""Seed loops of the simulator tests, and the broken lessor their teeth tests install."""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterable

import pytest

from dengine.kv.lease_clock import LeaseClock
from dengine.sim import SimConfig, Simulator


def run_seeds(config: SimConfig, seeds: Iterable[int], stats: Iterable[str] = ()
              ) -> tuple[list[str], dict[str, int]]:
    """`config` at each seed: the failures described, and the `stats` summed."""
    failures, totals = [], dict.fromkeys(stats, 0)
    for seed in seeds:
        result = Simulator(dataclasses.replace(config, seed=seed)).run()
        if not result.ok:
            failures.append(result.describe())
        for key in totals:
            totals[key] += result.stats.get(key, 0)
    return failures, totals


def failures_of(config: SimConfig, seeds: Iterable[int]) -> list[str]:
    return run_seeds(config, seeds)[0]


def variants(workload: str, seeds: int, stats: Iterable[str] = ()
             ) -> tuple[list[str], dict[str, int]]:
    """`workload` on 3 nodes (seeds 0..), then a third as many seeds (at least one) on 5
    nodes (1000..), with snapshots every 20 entries (2000..) and with membership changes
    (3000..): every failure, and the `stats` of the 3-node runs."""
    failures, totals = run_seeds(SimConfig(nodes=3, workload=workload), range(seeds), stats)
    for config, base in ((SimConfig(nodes=5, workload=workload), 1000),
                         (SimConfig(nodes=3, workload=workload, snapshot_every=20), 2000),
                         (SimConfig(nodes=3, workload=workload, membership=True), 3000)):
        failures += failures_of(config, range(base, base + max(1, seeds // 3)))
    return failures, totals


def half_ttl_keepalives(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lessor whose keep-alives give only half the TTL: kept-alive leases expire early."""
    renew = LeaseClock.renew

    def half(self: LeaseClock, lease_id: int, now: float) -> int:
        ttl = renew(self, lease_id, now)
        if ttl:
            self._deadlines[lease_id] = now + ttl / 2
            heapq.heappush(self._heap, (now + ttl / 2, lease_id))
        return ttl

    monkeypatch.setattr(LeaseClock, "renew", half)
