"""The native client protocol between real processes: redirects, kill -9 with writes
outstanding, a restarted node's new native port, a node with the listener turned off."""

from __future__ import annotations

import asyncio
import signal

import pytest
from e2e_support import Cluster

from dengine.client import Client, ConnectionLost
from dengine.errors import Unavailable


def test_native_redirect_kill_restart_and_grpc_only_node(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(3)

    async def main() -> None:
        leader = await cluster.wait_leader()
        follower = next(n for n in cluster.nodes if n.node_id != leader.node_id)
        others = [n for n in cluster.nodes if n.node_id not in (leader.node_id,)]
        async with Client([follower.client], transport="native", timeout=10) as client:
            # NOT_LEADER names the leader's gRPC address; the client finds its native port.
            await client.put("k", "v")
            assert await client.get("k") == b"v"
            st = await client.status(cluster.node(leader.node_id).client)
            assert st.native_address and st.native_address != st.endpoint
            leader_conn = client._router._native[cluster.node(leader.node_id).client].result()
            assert leader_conn is not None and not leader_conn.closed

            # Followers paused: the leader cannot commit, so these writes stay outstanding
            # until it is killed.
            for node in others:
                node.signal(signal.SIGSTOP)
            try:
                puts = [asyncio.ensure_future(client.put(f"p{i}", "x")) for i in range(20)]
                await asyncio.sleep(0.3)
                cluster.node(leader.node_id).kill()
                outcomes = await asyncio.gather(*puts, return_exceptions=True)
            finally:
                for node in others:
                    node.signal(signal.SIGCONT)
            assert all(isinstance(o, ConnectionLost) for o in outcomes), outcomes

            # The killed node restarts on a new native port; the client learns it again.
            killed = cluster.node(leader.node_id)
            killed.start()
            await cluster.wait_leader()
            restarted = await client.status(killed.client)
            assert restarted.native_address not in ("", st.native_address)
            await client.put("after", "restart")

    asyncio.run(main())


def test_node_without_native_listener(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(1, listen_client_native="")

    async def main() -> None:
        await cluster.wait_leader()
        async with Client(cluster.endpoints) as client:  # auto: gRPC for this node
            await client.put("k", "v")
            assert await client.get("k") == b"v"
            assert (await client.status()).native_address == ""
        async with Client(cluster.endpoints, transport="native", timeout=1) as client:
            with pytest.raises(Unavailable, match="no native client listener"):
                await client.get("k")

    asyncio.run(main())
