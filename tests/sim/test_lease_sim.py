"""Lease expiry in the deterministic simulator (issue 17): the leader's clock (each node's
own, up to 10 % off), keep-alives, failovers, partitions, crashes, snapshots and
membership changes; no lease expires before its last keep-alive + TTL. The long run is
`python -m dengine.sim --workload lease --seeds 0:300`."""

from __future__ import annotations

import pytest
from sim_helpers import failures_of, half_ttl_keepalives, variants

from dengine.sim import SimConfig

SLOW_SEEDS = 300


STATS = ("lease_grants", "lease_renewals", "lease_expiry_revokes")


def test_no_lease_expires_early_under_faults() -> None:
    failures, stats = variants("lease", 8, STATS)
    assert not failures, "\n".join(failures)
    # the workload does what it says: grants, renewals, and expiries of abandoned leases
    assert stats["lease_grants"] > 100 and stats["lease_renewals"] > 200
    assert stats["lease_expiry_revokes"] > 20


@pytest.mark.slow
def test_many_seeds_no_lease_expires_early() -> None:
    failures, _ = variants("lease", SLOW_SEEDS)
    assert not failures, "\n".join(failures)


def test_the_check_has_teeth(monkeypatch: pytest.MonkeyPatch) -> None:
    """A clock whose keep-alive gives only half the TTL is caught."""
    half_ttl_keepalives(monkeypatch)
    failures = failures_of(SimConfig(nodes=3, workload="lease"), range(6))
    assert failures and "lease expiry violated" in failures[0]
