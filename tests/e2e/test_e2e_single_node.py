"""One real server process: put/get/delete, restarts keep data, bad input, clean shutdown."""

from __future__ import annotations

import asyncio
import signal
import subprocess

import grpc
import pytest
from e2e_support import CLI, Cluster

from dengine.client import insert
from dengine.errors import InvalidRequest
from dengine.proto.client_pb2 import ReadRequest, ReadResponse, WriteResponse


def test_put_get_delete_and_restart_keeps_data(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(1)
    node = cluster.node(1)

    async def write_some() -> None:
        await cluster.wait_leader()
        async with cluster.client() as client:
            await client.put(b"a", b"1")
            await client.put("b", "2")
            await client.put(b"gone", b"x")
            await client.delete(b"gone")
            assert await client.get(b"a") == b"1"
            assert await client.get_many([b"a", b"b", b"gone"], "lease") == [b"1", b"2", None]
            assert await client.get(b"b", "eventual") == b"2"
            await asyncio.gather(*(client.put(f"k{i}", f"v{i}") for i in range(200)))

    async def read_back() -> None:
        await cluster.wait_leader()
        async with cluster.client() as client:
            assert await client.get_many([b"a", b"b", b"gone"]) == [b"1", b"2", None]
            values = await client.get_many([f"k{i}" for i in range(200)])
            assert values == [f"v{i}".encode() for i in range(200)]

    asyncio.run(write_some())
    assert node.stop() == 0, node.log_tail()  # SIGTERM: clean shutdown, exit code 0
    node.start()
    asyncio.run(read_back())
    node.kill()  # kill -9 keeps every acknowledged write too
    node.start()
    asyncio.run(read_back())


def test_bad_input_gets_clear_errors_and_server_keeps_serving(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(1, max_key_size=64, max_value_size=1024,
                                       max_request_size=16 * 1024)

    async def main() -> None:
        await cluster.wait_leader()
        async with cluster.client() as client:
            cases = [
                (client.put(b"", b"v"), "empty key"),
                (client.put(b"k" * 65, b"v"), "max_key_size"),
                (client.put(b"k", b"v" * 1025), "max_value_size"),
                (client.get(b""), "empty key"),
                (client.get(b"k", "strong"), "unknown consistency level"),
                (client.write([insert(f"k{i}", b"v" * 1000) for i in range(20)]),
                 "max_request_size"),
            ]
            for call, message in cases:
                with pytest.raises(InvalidRequest, match=message):
                    await call
            async with grpc.aio.insecure_channel(cluster.node(1).client) as channel:
                write = channel.unary_unary("/dengine.RaftClientService/Write",
                                            response_deserializer=WriteResponse.FromString)
                read = channel.unary_unary("/dengine.RaftClientService/Read",
                                           response_deserializer=ReadResponse.FromString)
                resp = await write(b"\x0a\xff\xff\xff\xff")
                assert resp.error.code == "INVALID_REQUEST"
                assert "malformed" in resp.error.message
                resp2 = await read(ReadRequest(keys=[b"k"], consistency=9).SerializeToString())  # type: ignore[arg-type]
                assert resp2.error.code == "INVALID_REQUEST"
                assert "unknown consistency level 9" in resp2.error.message
            await client.put(b"still", b"serving")
            assert await client.get(b"still") == b"serving"
        assert cluster.node(1).alive

    asyncio.run(main())


def test_data_dir_of_another_node_is_refused(cluster_factory, tmp_path) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(1)
    node = cluster.node(1)
    asyncio.run(cluster.wait_leader())
    assert node.stop() == 0
    result = subprocess.run(
        [*CLI, "serve", "--data-dir", str(node.data_dir), "--id", "2",
         "--listen-client", node.client, "--listen-peer", node.peer,
         "--listen-client-native", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "error [" in result.stderr, result.stderr


def test_sigint_stops_cleanly(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    cluster: Cluster = cluster_factory(1)
    asyncio.run(cluster.wait_leader())
    node = cluster.node(1)
    node.signal(signal.SIGINT)
    assert node.process is not None
    assert node.process.wait(15) == 0, node.log_tail()
    assert "Traceback" not in node.log_tail(200)
