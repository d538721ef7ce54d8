"""A long-lived client through faults of real processes: a paused leader (SIGSTOP, not
killed) and a node restarted with another native listener. The client must move on by
itself, promptly, with its callers bounding every call with asyncio.wait_for."""

from __future__ import annotations

import asyncio
import signal
import time

from e2e_support import TEST_SETTINGS, Cluster

from dengine.client import Client
from dengine.client.native import NativeConnection
from dengine.errors import DengineError

ELECTION_TIMEOUT_S = TEST_SETTINGS["election_timeout_ms"] / 1000


def _native(client: Client, addr: str) -> NativeConnection | None:
    task = client._router._native.get(addr)
    if task is None or not task.done() or task.cancelled() or task.exception() is not None:
        return None
    conn = task.result()
    return conn if conn is not None and not conn.closed else None


def test_client_moves_off_a_paused_leader(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    """The leader is SIGSTOPped: its TCP connections stay open and nothing answers. The
    client's puts (30 in flight, each cut by wait_for after 1 s; the client's own deadline
    is 30 s) succeed on the new leader within an election timeout and ~2 s (before: every
    put timed out until the paused node was resumed — the leader guess and all in-flight
    batches stayed on it)."""
    cluster: Cluster = cluster_factory(3)

    async def main() -> None:
        leader = await cluster.wait_leader()
        paused = cluster.node(leader.node_id)
        async with Client(cluster.endpoints, timeout=30) as client:
            for i in range(10):
                await client.put("k", f"warm{i}")
            assert _native(client, paused.client) is not None
            paused.signal(signal.SIGSTOP)
            start = time.monotonic()
            try:
                async def writer(i: int) -> float:
                    n = 0
                    while time.monotonic() - start < 20:
                        n += 1
                        try:
                            await asyncio.wait_for(client.put("k", f"w{i}-{n}"), 1.0)
                            return time.monotonic() - start
                        except (TimeoutError, DengineError):
                            await asyncio.sleep(0.01)
                    raise AssertionError("no put succeeded within 20 s of the pause")

                firsts = await asyncio.gather(*(writer(i) for i in range(30)))
                new = await cluster.wait_leader(exclude={paused.node_id})
                assert max(firsts) < ELECTION_TIMEOUT_S + 2.5, sorted(firsts)
                # ... and later calls go straight to the new leader.
                before = time.monotonic()
                await asyncio.wait_for(client.put("k", "after"), 2)
                assert await client.get("k") == b"after"
                assert time.monotonic() - before < 2
                assert (await client.leader()).id == new.node_id
            finally:
                paused.signal(signal.SIGCONT)

    asyncio.run(main())


def test_client_follows_a_restarted_node_to_its_new_native_port(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    """A node restarts on a new native port (chosen at start): the client asks it again.
    Then it restarts without a native listener (served over gRPC), and again with one,
    while the client does not call it: the client finds the new listener within
    _NATIVE_RETRY_S (before: it stayed on gRPC for good, as its gRPC calls kept working)."""
    cluster: Cluster = cluster_factory(3)

    async def main() -> None:
        leader = await cluster.wait_leader()
        node = next(n for n in cluster.nodes if n.node_id != leader.node_id)
        async with Client(cluster.endpoints, timeout=10) as client:
            first = await client.status(node.client)
            conn = _native(client, node.client)
            assert conn is not None and conn.address == first.native_address

            async def restart(**settings: object) -> None:
                node.kill()
                node.settings.pop("listen_client_native", None)
                node.settings.update(settings)
                node.start()
                async with Client([node.client], timeout=10) as other:  # until it answers
                    await other.status(node.client)

            await restart()
            second = await asyncio.wait_for(client.status(node.client), 10)
            assert second.native_address not in ("", first.native_address)
            conn = _native(client, node.client)
            assert conn is not None and conn.address == second.native_address

            await restart(listen_client_native="")
            assert (await asyncio.wait_for(client.status(node.client), 10)).native_address == ""
            assert _native(client, node.client) is None  # served over gRPC

            await restart()
            deadline = time.monotonic() + 10
            while (conn := _native(client, node.client)) is None:
                assert time.monotonic() < deadline, "the new native listener was not found"
                await asyncio.wait_for(client.status(node.client), 5)
                await asyncio.sleep(0.2)
            third = await client.status(node.client)
            assert third.native_address and conn.address == third.native_address

    asyncio.run(main())
