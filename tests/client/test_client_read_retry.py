"""A read that a node answers with Timeout (e.g. it could not confirm a read index in
time) is asked of another node while the caller's deadline allows: reads are retried on
any transient failure (issue 14). A write's Timeout is an unknown outcome: not retried."""

from __future__ import annotations

import asyncio

import pytest
from client_fakes import fake_servers

from dengine.client import Client
from dengine.errors import Timeout


@pytest.mark.parametrize("transport", ["native", "grpc"])
def test_a_read_timed_out_by_one_node_is_asked_of_another(transport: str) -> None:
    async def main() -> None:
        async with fake_servers(native=True) as servers:
            servers[0].engine.store[b"k"] = b"v"  # one store, shared by both nodes
            servers[0].engine.error = Timeout("read did not complete within 1.0s")
            endpoints = [s.address for s in servers]
            async with Client(endpoints, timeout=5, transport=transport) as client:
                for _ in range(3):
                    assert await asyncio.wait_for(client.get("k"), 10) == b"v"
                assert servers[1].engine.read_calls
                # Nothing else answers: the caller gets the Timeout at its deadline.
                servers[1].engine.error = Timeout("read did not complete within 1.0s")
                with pytest.raises(Timeout):
                    await asyncio.wait_for(client.get("k", timeout=0.5), 10)

    asyncio.run(main())


def test_a_write_timed_out_by_its_node_is_not_retried() -> None:
    async def main() -> None:
        async with fake_servers(native=True) as servers:
            servers[0].engine.error = Timeout("write did not complete within 1.0s")
            endpoints = [s.address for s in servers]
            async with Client(endpoints, timeout=5) as client:
                with pytest.raises(Timeout):
                    await asyncio.wait_for(client.put("k", "v"), 10)
            assert not servers[1].engine.write_calls

    asyncio.run(main())
