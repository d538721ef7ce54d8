"""Leases on real processes (issue 17's acceptance): the keys of an unrefreshed lease are
gone within TTL + 1 s; a kept-alive lease outlives 5x its TTL; kill -9 of the leader while
a lease is kept alive loses no key (the new leader gives it its full TTL again and the
client's keep-alives find it). Every process is stopped by the cluster fixture."""

from __future__ import annotations

import asyncio
import time

from e2e_support import Cluster


async def wait_gone(client, key: str, timeout: float) -> float:  # type: ignore[no-untyped-def]
    """Seconds until `key` reads as absent (linearizable), polled every 50 ms."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if await client.get(key) is None:
            return time.monotonic() - began
        await asyncio.sleep(0.05)
    raise AssertionError(f"{key} still there after {timeout} s")


def test_expiry_and_keep_alive(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(3)

    async def main() -> None:
        await cluster.wait_leader(timeout=60)  # (a loaded machine starts slowly)
        async with cluster.client(timeout=30) as client:
            # Unrefreshed: TTL 2 s (300 ms election timeout: minimum 1 s).
            grant = await client.lease_grant(2)
            assert grant.ttl == 2
            began = time.monotonic()
            await client.put("unrefreshed/a", "1", lease=grant.id)
            await client.put("unrefreshed/b", "1", lease=grant.id)
            revision = (await client.range("unrefreshed/", prefix=True)).revision
            await wait_gone(client, "unrefreshed/a", 10)
            assert time.monotonic() - began < grant.ttl + 1.0
            after = await client.range("unrefreshed/", prefix=True)
            assert after.kvs == [] and after.revision == revision + 1  # one revision
            assert grant.id not in await client.leases()
            # Kept alive by the client: outlives 5x its TTL (1 s, the minimum).
            async with client.lease(1) as kept:
                await client.put("kept", "1", lease=kept.id)
                for _ in range(10):
                    await asyncio.sleep(0.5)
                    assert await client.get("kept") == b"1"
                assert not kept.lost.is_set() and kept.renewals >= 10
            assert await client.get("kept") is None  # revoked on exit, at once

    asyncio.run(main())


def test_leader_kill_loses_no_kept_alive_key(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(3)

    async def main() -> None:
        leader = await cluster.wait_leader(timeout=60)
        async with cluster.client(timeout=30) as client:
            # TTL 5 s: failover on this loaded 2-core machine took up to ~5 s (e2e record)
            async with client.lease(5) as kept:
                await client.put("svc/1", "addr", lease=kept.id)
                cluster.node(leader.node_id).kill()
                await cluster.wait_leader(timeout=60, exclude={leader.node_id})
                # Two TTLs after the kill: every keep-alive found the new leader.
                for _ in range(20):
                    await asyncio.sleep(0.5)
                    assert await client.get("svc/1") == b"addr", "key lost in failover"
                assert not kept.lost.is_set(), kept.lost_reason
                info = await client.lease_time_to_live(kept.id, keys=True)
                assert info.keys == [b"svc/1"] and info.granted_ttl == 5
            assert await client.get("svc/1") is None

    asyncio.run(main())
