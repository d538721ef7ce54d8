"""Client <-> gRPC service against a fake engine: redirects, batching, errors, bad input."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from client_fakes import fake_servers, free_port
from hypothesis import given, settings
from hypothesis import strategies as st

from dengine.api import PutResult
from dengine.client import Client, SyncClient, delete, insert
from dengine.errors import InvalidRequest, Timeout, Unavailable
from dengine.proto.client_pb2 import ReadRequest, ReadResponse, WriteRequest, WriteResponse
from dengine.proto.common_pb2 import WriteCommand


def test_put_get_delete_roundtrip() -> None:
    async def main() -> None:
        async with fake_servers() as (leader, _), Client([leader.address]) as client:
            await client.put(b"k", b"v")
            await client.put("text", "ünicode")
            assert await client.get(b"k") == b"v"
            assert await client.get("text", "lease") == "ünicode".encode()
            assert await client.get_many([b"k", b"nope"], "eventual") == [b"v", None]
            await client.delete(b"k")
            assert await client.get(b"k") is None
            results = await client.write([insert(b"a", b"1"), insert(b"b", b"2"), delete(b"a")])
            assert [r.succeeded for r in results] == [True, True, True]
            assert results[0].index < results[1].index < results[2].index
            assert await client.get_many([b"a", b"b"]) == [None, b"2"]
            st_ = await client.status()
            assert (st_.node_id, st_.role, st_.leader_id) == (1, "leader", 1)
            assert st_.leader_address == leader.address
            assert (await client.leader()).address == leader.address

    asyncio.run(main())


def test_follows_not_leader_redirect_and_skips_dead_endpoints() -> None:
    async def main() -> None:
        async with fake_servers() as (leader, follower):
            follower.engine.redirect_to = leader.address
            dead = f"127.0.0.1:{free_port()}"
            async with Client([dead, follower.address], timeout=5) as client:
                await client.put(b"k", b"v")
                assert await client.get(b"k") == b"v"
            assert leader.engine.write_calls == [1]
            assert follower.engine.write_calls == []

    asyncio.run(main())


def test_concurrent_calls_are_batched() -> None:
    async def main() -> None:
        async with fake_servers() as (leader, _), Client([leader.address]) as client:
            await asyncio.gather(*(client.put(f"k{i}", f"v{i}") for i in range(256)))
            assert sum(leader.engine.write_calls) == 256
            assert len(leader.engine.write_calls) <= 4
            values = await asyncio.gather(*(client.get(f"k{i}") for i in range(256)))
            assert values == [f"v{i}".encode() for i in range(256)]
            assert sum(n for n, _ in leader.engine.read_calls) == 256
            assert len(leader.engine.read_calls) <= 4

    asyncio.run(main())


def test_batches_respect_their_bounds() -> None:
    async def main() -> None:
        async with fake_servers() as (leader, _), Client(
            [leader.address], max_batch_commands=10, max_batch_bytes=400, max_inflight=2
        ) as client:
            await asyncio.gather(*(client.put(f"k{i}", b"v" * 5) for i in range(100)))
            await asyncio.gather(*(client.put(f"b{i}", b"v" * 100) for i in range(20)))
            calls = leader.engine.write_calls
            assert sum(calls) == 120
            assert max(calls[:10]) <= 10 and len(calls) >= 10
            assert max(calls[10:]) <= 4  # 4 commands of ~106 bytes fit in 400 bytes
            # A single call larger than max_batch_bytes still goes out (alone).
            await client.put(b"big", b"v" * 1000)
            assert leader.engine.write_calls[-1] == 1

    asyncio.run(main())


def test_one_bad_command_does_not_fail_its_batch() -> None:
    async def main() -> None:
        async with fake_servers() as (leader, _), Client([leader.address]) as client:
            outcomes = await asyncio.gather(
                client.put(b"good1", b"x"), client.put(b"", b"x"), client.put(b"good2", b"y"),
                return_exceptions=True,
            )
            assert isinstance(outcomes[0], PutResult) and isinstance(outcomes[2], PutResult)
            assert isinstance(outcomes[1], InvalidRequest)
            assert "empty key" in outcomes[1].message
            assert await client.get_many([b"good1", b"good2"]) == [b"x", b"y"]

    asyncio.run(main())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.put(b"", b"v"), "empty key"),
        (lambda c: c.put(b"k" * 65, b"v"), "exceeds max_key_size"),
        (lambda c: c.put(b"k", b"v" * 1025), "exceeds max_value_size"),
        (lambda c: c.get(b""), "empty key"),
        (lambda c: c.get(b"k" * 65), "exceeds max_key_size"),
        (lambda c: c.get(b"k", "strong"), "unknown consistency level"),
        (lambda c: c.write([insert(f"k{i}", b"v" * 1000) for i in range(100)]),
         "max_request_size"),
        (lambda c: c.write([WriteCommand()]), "no operation"),
        (lambda c: c.write([]), "at least one command"),
    ],
)
def test_bad_input_is_rejected_and_server_keeps_serving(call, message) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        async with fake_servers() as (leader, _), Client([leader.address]) as client:
            with pytest.raises(InvalidRequest, match=message):
                await call(client)
            await client.put(b"after", b"ok")
            assert await client.get(b"after") == b"ok"

    asyncio.run(main())


def test_malformed_and_unknown_wire_requests_get_invalid_request() -> None:
    async def main() -> None:
        async with fake_servers() as (leader, _):
            async with grpc.aio.insecure_channel(leader.address) as channel:
                write = channel.unary_unary("/dengine.RaftClientService/Write",
                                            response_deserializer=WriteResponse.FromString)
                read = channel.unary_unary("/dengine.RaftClientService/Read",
                                           response_deserializer=ReadResponse.FromString)
                resp = await write(b"\xff\xff\xff garbage")
                assert resp.error.code == "INVALID_REQUEST"
                assert "malformed WriteRequest" in resp.error.message
                bad_level = ReadRequest(keys=[b"k"], consistency=7).SerializeToString()  # type: ignore[arg-type]
                resp2 = await read(bad_level)
                assert resp2.error.code == "INVALID_REQUEST"
                assert "unknown consistency level 7" in resp2.error.message
                ok = await write(WriteRequest(commands=[insert(b"k", b"v")]).SerializeToString())
                assert not ok.HasField("error") and len(ok.results) == 1
            assert leader.engine.store == {b"k": b"v"}

    asyncio.run(main())


@settings(max_examples=30, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_break_the_service(data: bytes) -> None:
    async def main() -> None:
        async with fake_servers() as (leader, _), grpc.aio.insecure_channel(
            leader.address
        ) as channel:
            write = channel.unary_unary("/dengine.RaftClientService/Write",
                                        response_deserializer=WriteResponse.FromString)
            resp = await write(data)
            if resp.HasField("error"):
                assert resp.error.code == "INVALID_REQUEST", resp.error
            else:
                assert len(resp.results) == len(WriteRequest.FromString(data).commands)

    asyncio.run(main())


def test_hung_engine_gives_timeout() -> None:
    async def main() -> None:
        async with fake_servers() as (leader, _), Client([leader.address]) as client:
            leader.engine.hang = True
            with pytest.raises(Timeout):
                await client.put(b"k", b"v", timeout=0.3)
            with pytest.raises(Timeout):
                await client.get(b"k", timeout=0.3)

    asyncio.run(main())


def test_unreachable_cluster_is_unavailable() -> None:
    async def main() -> None:
        async with Client([f"127.0.0.1:{free_port()}"], timeout=0.5) as client:
            # Never sent: a definite failure (Unavailable), not an unknown outcome (Timeout).
            with pytest.raises(Unavailable, match="cannot connect"):
                await client.put(b"k", b"v")

    asyncio.run(main())


def test_unavailable_is_retried_on_another_node() -> None:
    async def main() -> None:
        async with fake_servers() as (a, b), Client([a.address, b.address]) as client:
            await client.put(b"k", b"v")
            a.engine.unavailable = True
            # UNAVAILABLE means "not applied": safe to retry, reads and writes alike.
            assert await client.get(b"k") == b"v"
            await client.put(b"k", b"v2")
            assert b.engine.read_calls and b.engine.write_calls == [1]
            b.engine.unavailable = True
            with pytest.raises(Unavailable, match="no quorum"):
                await client.put(b"k", b"v3", timeout=0.3)

    asyncio.run(main())


def test_sync_client_from_threads() -> None:
    errors: list[BaseException] = []
    started = threading.Event()
    done = threading.Event()
    address: list[str] = []

    async def serve() -> None:
        async with fake_servers() as (leader, _):
            address.append(leader.address)
            started.set()
            while not done.is_set():
                await asyncio.sleep(0.01)

    server_thread = threading.Thread(target=lambda: asyncio.run(serve()))
    server_thread.start()
    try:
        assert started.wait(10)
        with SyncClient(address[0]) as client:

            def worker(n: int) -> None:
                try:
                    for i in range(20):
                        client.put(f"{n}-{i}", str(i))
                        assert client.get(f"{n}-{i}") == str(i).encode()
                except BaseException as e:
                    errors.append(e)

            threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert client.status().node_id == 1
        with pytest.raises(Unavailable, match="closed"):
            client.put(b"k", b"v")
    finally:
        done.set()
        server_thread.join()
    assert not errors, errors


def test_a_batch_that_never_completes_fails_its_callers_at_the_deadline() -> None:
    """The outer bound of every call: even a send that ignores its deadline (a paused
    server) ends the caller's wait with Timeout shortly after the deadline."""
    from dengine.client.batcher import Batcher

    async def main() -> None:
        client = Client("127.0.0.1:1")

        async def never(batch: object) -> None:
            await asyncio.sleep(3600)

        batcher: Batcher[str, str] = Batcher(never, 16, 1 << 20, 1)
        try:
            with pytest.raises(Timeout):
                await asyncio.wait_for(client._submit(batcher, "x", 1, 0.05), 5)
            with pytest.raises(Timeout):  # a later call is not stuck behind it
                await asyncio.wait_for(client._submit(batcher, "y", 1, 0.05), 5)
        finally:
            await batcher.close()
            await client.close()

    asyncio.run(main())
