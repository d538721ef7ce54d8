"""`Client` over the native protocol against fake nodes: same semantics as over gRPC
(redirects, batching, errors, ConnectionLost), fallback to gRPC, transport choice."""

from __future__ import annotations

import asyncio
import time

import pytest
from client_fakes import fake_servers, free_port

from dengine.client import Client, ConnectionLost, SyncClient, delete, insert
from dengine.errors import InvalidRequest, Timeout, Unavailable


def native_connections(client: Client) -> dict[str, object]:
    """gRPC address -> its live native connection (None: served over gRPC)."""
    out: dict[str, object] = {}
    for addr, task in client._router._native.items():
        if task.done() and task.exception() is None:
            conn = task.result()
            out[addr] = None if conn is None or conn.closed else conn
    return out


def test_put_get_delete_status_members_over_native() -> None:
    async def main() -> None:
        async with fake_servers(native=True) as (leader, follower):
            async with Client([leader.address], transport="native") as client:
                await client.put(b"k", b"v")
                # From here on the gRPC listener is not needed: everything goes native.
                await leader.grpc.stop(None)
                assert await client.get(b"k") == b"v"
                assert await client.get_many([b"k", b"nope"], "eventual") == [b"v", None]
                results = await client.write([insert(b"a", b"1"), delete(b"k")])
                assert [r.succeeded for r in results] == [True, True]
                await client.delete(b"a")
                assert await client.get_many([b"a", b"k"], "lease") == [None, None]
                st = await client.status()
                assert (st.node_id, st.role) == (1, "leader")
                assert st.native_address == leader.service.native_address
                assert (await client.leader()).address == leader.address
                assert {m.id for m in await client.members()} == {1, 2}
                assert list(native_connections(client)) == [leader.address]
            assert follower.engine.write_calls == []

    asyncio.run(main())


def test_concurrent_calls_are_batched_over_native() -> None:
    async def main() -> None:
        async with fake_servers(native=True) as (leader, _), Client([leader.address]) as client:
            await asyncio.gather(*(client.put(f"k{i}", f"v{i}") for i in range(256)))
            assert sum(leader.engine.write_calls) == 256
            assert len(leader.engine.write_calls) <= 5  # + the first, alone
            values = await asyncio.gather(*(client.get(f"k{i}") for i in range(256)))
            assert values == [f"v{i}".encode() for i in range(256)]
            assert len(leader.engine.read_calls) <= 4
            assert native_connections(client)[leader.address] is not None

    asyncio.run(main())


def test_many_unbatched_calls_share_one_pipelined_connection() -> None:
    async def main() -> None:
        async with fake_servers(native=True) as (leader, _):
            leader.engine.store.update({f"k{i}".encode(): f"v{i}".encode() for i in range(500)})
            leader.engine.read_delay = lambda keys: (500 - int(keys[0][1:])) * 0.0002
            async with Client([leader.address], max_batch_commands=1,
                              max_inflight=500) as client:
                values = await asyncio.gather(*(client.get(f"k{i}") for i in range(500)))
                assert leader.native is not None and len(leader.native._connections) == 1
            assert values == [f"v{i}".encode() for i in range(500)]
            assert len(leader.engine.read_calls) == 500

    asyncio.run(main())


def test_follower_redirects_to_the_leaders_native_listener() -> None:
    async def main() -> None:
        async with fake_servers(native=True) as (leader, follower):
            follower.engine.redirect_to = leader.address
            async with Client([follower.address], transport="native") as client:
                await client.put(b"k", b"v")
                assert await client.get(b"k") == b"v"
                conns = native_connections(client)
                assert conns[leader.address] is not None  # learned through Status
            assert leader.engine.write_calls == [1]
            assert follower.engine.write_calls == []

    asyncio.run(main())


def test_grpc_transport_never_opens_a_native_connection() -> None:
    async def main() -> None:
        async with fake_servers(native=True) as (leader, _):
            async with Client([leader.address], transport="grpc") as client:
                await client.put(b"k", b"v")
                assert await client.get(b"k") == b"v"
                assert client._router._native == {}
            assert leader.native is not None and leader.native._tasks == set()
            assert leader.engine.write_calls == [1]

    asyncio.run(main())


def test_unreachable_native_port_falls_back_to_grpc() -> None:
    async def main() -> None:
        async with fake_servers(native=True) as (leader, _):
            leader.service.native_address = f"127.0.0.1:{free_port()}"  # nothing listens
            async with Client([leader.address], timeout=3) as client:
                await client.put(b"k", b"v")
                assert await client.get(b"k") == b"v"
                assert native_connections(client) == {leader.address: None}
            async with Client([leader.address], transport="native", timeout=0.5) as client:
                with pytest.raises(Unavailable, match="native listener"):
                    await client.put(b"k", b"v2")
            assert leader.engine.write_calls == [1]

    asyncio.run(main())


def test_node_without_native_listener_is_served_over_grpc() -> None:
    async def main() -> None:
        async with fake_servers(native=False) as (leader, _):
            async with Client([leader.address]) as client:
                await client.put(b"k", b"v")
                assert await client.get(b"k") == b"v"
                assert native_connections(client) == {leader.address: None}
            async with Client([leader.address], transport="native", timeout=5) as client:
                with pytest.raises(Unavailable, match="no native client listener"):
                    await client.get(b"k")

    asyncio.run(main())


def test_connection_killed_with_a_write_outstanding_is_connection_lost() -> None:
    async def main() -> None:
        async with fake_servers(native=True) as (leader, _), Client(
            [leader.address], timeout=5) as client:
            await client.put(b"warm", b"up")  # the native connection is open
            leader.engine.hang = True
            put = asyncio.ensure_future(client.put(b"k", b"v"))
            assert leader.native is not None
            while not leader.native._tasks:
                await asyncio.sleep(0.01)
            handler = next(iter(leader.native._tasks))
            for conn in list(leader.native._connections):
                conn.close()  # the node's side of the connection goes away
            with pytest.raises(ConnectionLost, match="may still be applied"):
                await put
            # The write was handed to the engine and stays there: nothing cancels it.
            await asyncio.sleep(0.05)
            assert not handler.done()
            leader.engine.hang = False
            # The next call reconnects (asking Status again) and works.
            await client.put(b"k2", b"v2")
            assert native_connections(client)[leader.address] is not None

    asyncio.run(main())


def test_client_deadline_and_frame_deadline() -> None:
    async def main() -> None:
        async with fake_servers(native=True) as (leader, _), Client(
            [leader.address], timeout=5) as client:
            await client.get(b"k")
            leader.engine.hang = True
            start = time.monotonic()
            with pytest.raises(Timeout):
                await client.put(b"k", b"v", timeout=0.3)
            assert time.monotonic() - start < 1.5
            # The node was told the deadline (minus its answer margin).
            assert leader.engine.timeouts[-1] is not None
            assert 0.1 < leader.engine.timeouts[-1] <= 0.3

    asyncio.run(main())


def test_request_above_the_frame_limit_is_invalid_and_not_applied() -> None:
    async def main() -> None:
        async with fake_servers(native=True) as (leader, _), Client([leader.address]) as client:
            keys = [f"{i:060d}" for i in range(1200)]  # ~74 KiB of keys > 64 KiB
            with pytest.raises(InvalidRequest, match="max_request_size"):
                await client.get_many(keys)
            assert leader.engine.read_calls == []
            assert await client.get(b"k") is None  # the connection is still good

    asyncio.run(main())


def test_bad_transport_is_a_clear_error() -> None:
    with pytest.raises(InvalidRequest, match="unknown transport 'http'"):
        Client("127.0.0.1:1", transport="http")


def test_sync_client_uses_native_by_default() -> None:
    async def serve(ready: asyncio.Event, stop: asyncio.Event, out: list[str]) -> None:
        async with fake_servers(native=True) as (leader, _):
            out.append(leader.address)
            ready.set()
            await stop.wait()

    loop = asyncio.new_event_loop()
    ready, stop, out = asyncio.Event(), asyncio.Event(), []
    import threading

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(ready, stop, out),))
    thread.start()
    try:
        while not out:
            time.sleep(0.01)
        with SyncClient(out[0]) as client:
            client.put("k", "v")
            assert client.get("k") == b"v"
            assert native_connections(client._client)[out[0]] is not None
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join()
        loop.close()
