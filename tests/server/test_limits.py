"""Bounded resources of a server (issue 14, items 5-7): response size and keys of a read,
connections per listener, bytes buffered per connection and in all, idle and slow
connections, and load shedding with OVERLOADED. In-process nodes on 127.0.0.1 (real
Engines, real sockets); every listener and engine is stopped by its test."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from engine_cluster import agreed_leader, start_engines

from dengine import Client, Compare, Engine, Op
from dengine.bench.cluster import free_ports
from dengine.client.routing import error_from_wire
from dengine.config import NodeConfig, parse_address
from dengine.errors import InvalidRequest, KvError, Overloaded, Unavailable
from dengine.node.transport import Transport
from dengine.proto.client_pb2 import (
    Error,
    ReadRequest,
    ReadResponse,
    StatusRequest,
    WriteRequest,
    WriteResponse,
)
from dengine.proto.common_pb2 import WriteCommand
from dengine.proto.native import (
    METHOD_CODES,
    REQUEST_HEADER,
    REQUEST_OVERHEAD,
    RESPONSE_HEADER,
    STATUS_CLOSING,
    STATUS_FRAME_TIMEOUT,
    STATUS_OK,
    STATUS_TOO_LARGE,
    request_frame,
)
from dengine.server import ClientService, NativeServer, start_grpc_server

READ, WRITE, STATUS = METHOD_CODES["Read"], METHOD_CODES["Write"], METHOD_CODES["Status"]
MiB = 1024 * 1024


def free_port() -> int:
    """A port free on 127.0.0.1, outside the ephemeral range (dengine.bench.cluster)."""
    return free_ports(1)[0]


@dataclass
class Served:
    engines: dict[int, Engine]
    leader: Engine
    config: NodeConfig
    service: ClientService
    native: NativeServer
    grpc: grpc.aio.Server

    @property
    def address(self) -> str:
        return self.config.listen_client


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, nodes: int = 1, **settings: Any) -> AsyncIterator[Served]:
    """`nodes` embedded engines (one loop, real TCP between them); the leader answers
    clients on gRPC and native listeners configured with `settings`."""
    engines: dict[int, Engine] = {}
    native: NativeServer | None = None
    server: grpc.aio.Server | None = None
    try:
        await start_engines(engines, tmp_path, nodes, **settings)
        leader = await agreed_leader(engines)
        config = leader.config
        service = ClientService(leader, config)
        native = NativeServer.from_config(service, config)
        service.native_address = await native.start("127.0.0.1:0")
        server = await start_grpc_server(service, config)
        yield Served(engines, leader, config, service, native, server)
    finally:
        if server is not None:
            await server.stop(None)
        if native is not None:
            await native.stop(0)
        await asyncio.gather(*(e.stop() for e in engines.values()))


async def connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = parse_address(address)
    return await asyncio.open_connection(host, port)


async def response(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """(request id, status, body) of the next response frame."""
    length, request_id, status = RESPONSE_HEADER.unpack(
        await reader.readexactly(RESPONSE_HEADER.size))
    return request_id, status, await reader.readexactly(length - 5)


async def closed_with(reader: asyncio.StreamReader) -> tuple[int, str]:
    """The connection-level (request id 0) status and text, then EOF."""
    request_id, status, body = await asyncio.wait_for(response(reader), 10)
    assert request_id == 0
    assert await asyncio.wait_for(reader.read(1), 10) == b""
    return status, body.decode()


async def check_serving(address: str) -> None:
    reader, writer = await connect(address)
    writer.write(request_frame(STATUS, 1, 0, StatusRequest().SerializeToString()))
    assert (await asyncio.wait_for(response(reader), 10))[:2] == (1, STATUS_OK)
    writer.close()


def put(key: bytes, value: bytes) -> WriteCommand:
    cmd = WriteCommand()
    cmd.insert.key, cmd.insert.value = key, value
    return cmd


# -- item 5: reads -----------------------------------------------------------------------


def test_a_read_of_400_copies_of_a_1_MiB_value_is_refused_not_built(tmp_path: Path) -> None:
    async def main() -> None:
        async with serving(tmp_path) as s:
            await s.leader.put(b"big", b"x" * MiB)
            reader, writer = await connect(s.service.native_address)
            body = ReadRequest(keys=[b"big"] * 400).SerializeToString()  # ~2 KB
            writer.write(request_frame(READ, 1, 5000, body))
            request_id, status, answer = await asyncio.wait_for(response(reader), 10)
            assert (request_id, status) == (1, STATUS_OK)
            resp = ReadResponse.FromString(answer)
            assert resp.error.code == "INVALID_REQUEST"
            assert "max_response_bytes" in resp.error.message
            assert not resp.results and len(answer) < 1024  # nothing was truncated or sent
            # The same keys a few at a time are fine, on the same connection.
            writer.write(request_frame(READ, 2, 5000,
                                       ReadRequest(keys=[b"big"] * 3).SerializeToString()))
            resp = ReadResponse.FromString((await asyncio.wait_for(response(reader), 10))[2])
            assert not resp.HasField("error") and [r.value for r in resp.results] == [
                b"x" * MiB] * 3
            writer.close()
            async with Client(s.address, timeout=30) as client:  # a loaded CI machine
                with pytest.raises(InvalidRequest, match="max_response_bytes"):
                    await client.get_many([b"big"] * 400)
                with pytest.raises(InvalidRequest, match="max_read_keys"):
                    await client.get_many([b"k%d" % i for i in range(10_001)])
                assert await client.get(b"big") == b"x" * MiB
            assert s.leader.is_leader

    asyncio.run(main())


def test_a_writing_txn_whose_ranges_would_answer_too_much_is_refused_unapplied(
        tmp_path: Path) -> None:
    """A txn that writes is answered from its apply, on every member, unbounded: its
    ranges are tried with max_response_bytes before it is proposed (Engine.kv_request:
    etcd's gRPC Txn goes there too). 100 ranges of a
    1 MiB value, next to a put, in a nested txn or on the failure branch: refused, and
    the put never applied (the same txn with 3 ranges is fine)."""
    def ranges(n: int) -> list[Op]:
        return [Op.get(b"big")] * n

    async def main() -> None:
        async with serving(tmp_path) as s:
            await s.leader.put(b"big", b"x" * MiB)
            shapes = [
                ([], [Op.put(b"w", b"1"), *ranges(100)], []),
                ([], [Op.put(b"w", b"1")], []),  # (a nested txn holds the ranges)
                ([Compare.value(b"big") == b"no"], [], [Op.put(b"w", b"1"), *ranges(100)]),
            ]
            shapes[1][1].append(Op.txn([], ranges(100)))
            async with Client(s.address, timeout=5) as client:
                for compare, success, failure in shapes:
                    for txn in (client.txn, s.leader.txn):
                        with pytest.raises(KvError, match="max_response_bytes") as err:
                            await txn(compare, success, failure)
                        assert err.value.grpc_code == "RESOURCE_EXHAUSTED"
                assert await client.get_kv(b"w") is None
                result = await client.txn([], [Op.put(b"w", b"1"), *ranges(3)])
                assert [len(r.kvs[0].value) for r in result.responses[1:]] == [MiB] * 3
            assert (await s.leader.get_kv(b"w")).value == b"1"  # type: ignore[union-attr]

    asyncio.run(main())


# -- item 6: connections -------------------------------------------------------------------


def service_only(**settings: Any) -> tuple[ClientService, NodeConfig]:
    config = NodeConfig(**settings).validate()
    return ClientService(object(), config), config  # type: ignore[arg-type]


def test_a_frame_announcing_far_more_than_the_cap_is_refused_and_closes_the_connection(
) -> None:
    async def main() -> None:
        service, config = service_only(max_request_size=MiB)
        server = NativeServer.from_config(service, config)
        address = await server.start("127.0.0.1:0")
        try:
            reader, writer = await connect(address)
            # A header announcing 8 MiB over the cap, then a first piece of its body.
            body_len = config.max_request_size + 8 * MiB
            writer.write(REQUEST_HEADER.pack(body_len + REQUEST_OVERHEAD, READ, 9, 0))
            writer.write(b"\0" * 256 * 1024)
            request_id, status, text = await asyncio.wait_for(response(reader), 10)
            assert (request_id, status) == (9, STATUS_TOO_LARGE)
            assert b"max_request_size" in text
            status, why = await closed_with(reader)
            assert status == STATUS_TOO_LARGE and "far above max_request_size" in why
            assert server.buffered == 0
            writer.close()
            await check_serving(address)
        finally:
            await server.stop(0)

    asyncio.run(main())


def test_partial_frames_are_bounded_in_all_and_slow_ones_are_closed() -> None:
    async def main() -> None:
        service, config = service_only(max_request_size=256 * 1024,
                                       max_client_buffer_bytes=512 * 1024,
                                       client_frame_timeout_s=1.0)
        server = NativeServer.from_config(service, config)
        address = await server.start("127.0.0.1:0")
        chunk, conns = 16 * 1024, 20
        try:
            streams = [await connect(address) for _ in range(conns)]
            for _, writer in streams:  # each announces 200 KiB and sends it slowly
                writer.write(REQUEST_HEADER.pack(200 * 1024 + REQUEST_OVERHEAD, READ, 1, 0))
            peak = 0
            for _ in range(10):
                for _, writer in streams:
                    writer.write(b"\0" * chunk)
                await asyncio.sleep(0.02)
                peak = max(peak, server.buffered)
            # Without the budget: 20 x 160 KiB; with it, the budget plus one read each.
            assert peak <= config.max_client_buffer_bytes + conns * chunk, peak
            for reader, writer in streams:
                status, why = await closed_with(reader)
                assert status == STATUS_FRAME_TIMEOUT and "client_frame_timeout_s" in why
                writer.close()
            assert server.buffered == 0 and server.slow_closed == conns
            await check_serving(address)
        finally:
            await server.stop(0)

    asyncio.run(main())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc/self/fd")
def test_connections_over_the_cap_are_refused_or_evict_idle_ones_and_idle_ones_close(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with serving(tmp_path, max_client_connections=50,
                           client_idle_timeout_s=3.0) as s:
            async with Client(s.address, timeout=5) as client:
                await client.put(b"k", b"v1")  # its native connection is one of the 50
                fds = open_fds()
                streams = [await connect(s.service.native_address) for _ in range(60)]

                async def ends(reader: asyncio.StreamReader, wait: float) -> str:
                    try:
                        status, why = await asyncio.wait_for(closed_with(reader), wait)
                    except TimeoutError:
                        return ""
                    assert status == STATUS_CLOSING
                    return why

                # Nobody is idle yet: the newcomers past the cap are refused.
                whys = await asyncio.gather(*(ends(r, 0.5) for r, _ in streams))
                refused = [w for w in whys if w]
                assert all("max_client_connections" in w for w in refused)
                assert len(refused) == s.native.refused_connections
                assert s.native.refused_connections + s.native.evicted == 11
                # Once connections are idle, newcomers make room by closing the oldest.
                await asyncio.sleep(1.2)
                evicted = s.native.evicted
                streams += [await connect(s.service.native_address) for _ in range(5)]
                await asyncio.sleep(0.3)
                assert s.native.evicted == evicted + 5
                # The rest are closed once idle; the client, quiet as long (or evicted),
                # reconnects by itself (its request is resent, not lost).
                for reader, writer in streams:
                    if not reader.at_eof():
                        why = await ends(reader, 10)
                        assert "idle" in why, why
                    writer.close()
                assert s.native.idle_closed >= 40
                await client.put(b"k", b"v2")
                assert await client.get(b"k") == b"v2"
                await asyncio.sleep(1.5)  # (closed connections linger up to a second)
                assert open_fds() <= fds + 2
            # gRPC: connections past the cap are closed as they arrive.
            host, port = parse_address(s.address)
            raw = [await asyncio.open_connection(host, port) for _ in range(60)]
            await asyncio.sleep(0.5)
            eof = 0
            for reader, writer in raw:
                with contextlib.suppress(TimeoutError, ConnectionError):
                    while await asyncio.wait_for(reader.read(4096), 0.2):
                        pass
                    eof += 1
                writer.close()
            assert eof >= 10

    asyncio.run(main())


def test_peer_listener_refuses_connections_over_its_cap() -> None:
    async def main() -> None:
        port = free_port()
        transport = Transport(node_id=1, cluster_id="c", listen=f"127.0.0.1:{port}",
                              peers={}, on_messages=lambda _i, _m: None,
                              handshake_timeout=1.0, max_inbound=5)
        await transport.start()
        try:
            streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(12)]
            await asyncio.sleep(0.3)
            assert transport.refused_connections == 7
            for reader, writer in streams:  # the others: closed at the handshake timeout
                assert await asyncio.wait_for(reader.read(1), 5) == b""
                writer.close()
        finally:
            await transport.close()

    asyncio.run(main())


# -- item 7: overload ----------------------------------------------------------------------


def test_a_burst_of_writes_past_the_admission_bound_gets_overloaded_and_the_leader_stays(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        # (Slow timings: three nodes share this process's one event loop, and CI machines
        # are shared: a leader change here should come from the burst, not the machine.)
        async with serving(tmp_path, nodes=3, max_pending_writes=16,
                           max_pending_write_bytes=4 * MiB, tick_ms=10,
                           election_timeout_ms=1500, heartbeat_interval_ms=50,
                           clock_drift_ms=30) as s:
            value = b"v" * (64 * 1024)
            bursts = [b"".join(
                request_frame(WRITE, n, 10_000, WriteRequest(
                    commands=[put(b"k%d" % n, value)]).SerializeToString())
                for n in range(100 * c + 1, 100 * c + 101)) for c in range(4)]
            streams = [await connect(s.service.native_address) for _ in range(4)]
            await asyncio.sleep(0.2)
            term = s.leader.status().term
            assert s.leader.is_leader
            for (_, writer), burst in zip(streams, bursts, strict=True):
                writer.write(burst)
            codes: dict[str, int] = {}
            for reader, writer in streams:
                for _ in range(100):
                    _, status, body = await asyncio.wait_for(response(reader), 30)
                    assert status == STATUS_OK
                    resp = WriteResponse.FromString(body)
                    code = resp.error.code if resp.HasField("error") else "OK"
                    codes[code] = codes.get(code, 0) + 1
                    if code == "OVERLOADED":
                        assert "max_pending_writes" in resp.error.message
                writer.close()
            assert set(codes) == {"OK", "OVERLOADED"}, codes
            assert codes["OK"] >= 16 and codes["OVERLOADED"] >= 100, codes
            assert s.leader.is_leader and s.leader.status().term == term
            assert s.service.pending_writes == 0 and s.service.pending_write_bytes == 0
            # The client retries OVERLOADED (not applied) until the deadline: many
            # clients at once all succeed.
            assert isinstance(error_from_wire(Error(code="OVERLOADED")), Overloaded)
            assert issubclass(Overloaded, Unavailable)
            clients = [Client(s.address, timeout=60, max_inflight=8, max_batch_commands=1)
                       for _ in range(4)]
            try:
                before = s.service.overloaded
                await asyncio.gather(*(c.put(b"c%d-%d" % (i, j), value)
                                       for i, c in enumerate(clients) for j in range(16)))
                assert s.service.overloaded > before
                assert await clients[0].get(b"c3-15") == value
            finally:
                await asyncio.gather(*(c.close() for c in clients))

    asyncio.run(main())


def test_grpc_calls_over_max_client_rpcs_are_refused_at_once(tmp_path: Path) -> None:
    """gRPC holds each call's request whole before its handler runs, a stalled sender's
    partial one too (tools/hostile_inputs.py grpc-partial: 200 streams announcing 8 MiB
    took the leader from 49 MB to 1,662 MB): calls in progress are bounded per server
    (max_client_rpcs; beyond: ResourceExhausted at once) and per connection
    (max_client_streams; beyond: they wait in the client)."""
    class Hanging:  # an engine whose writes never return
        async def write_encoded(self, commands: Any, *, timeout: float | None = None
                                ) -> Any:
            await asyncio.sleep(3600)

        def query_local(self, fn: Any) -> Any:  # auth never enabled
            return False

    async def main() -> None:
        config = NodeConfig(listen_client=f"127.0.0.1:{free_port()}", max_client_rpcs=2)
        server = await start_grpc_server(ClientService(Hanging(), config),  # type: ignore[arg-type]
                                         config)
        try:
            body = WriteRequest(commands=[put(b"k", b"v")]).SerializeToString()
            async with grpc.aio.insecure_channel(config.listen_client) as ch:
                write = ch.unary_unary("/dengine.RaftClientService/Write")
                waiting = [asyncio.ensure_future(write(body, timeout=3)) for _ in range(2)]
                await asyncio.sleep(0.5)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await write(body, timeout=3)
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                await asyncio.gather(*waiting, return_exceptions=True)
        finally:
            await server.stop(None)

    asyncio.run(main())


def test_hundreds_of_calls_at_once_on_a_new_connection_are_all_served(tmp_path: Path) -> None:
    """A client that starts 300 calls at once on a new connection (aetcd's gather of 300
    puts) sends them before it hears the server's stream limit: a limit below that
    refused the rest with RST_STREAM (REFUSED_STREAM), where etcd serves them all. The
    per-connection limit is max_client_rpcs' (the node-wide bound) by default."""
    class Slow:  # an engine whose writes take a moment (so that the calls overlap), then fail
        async def write_encoded(self, commands: Any, *, timeout: float | None = None
                                ) -> Any:
            await asyncio.sleep(0.5)
            raise Unavailable("answered: an error in the response, not a refused stream")

        def query_local(self, fn: Any) -> Any:  # auth never enabled
            return False

    async def main() -> None:
        config = NodeConfig(listen_client=f"127.0.0.1:{free_port()}")
        server = await start_grpc_server(ClientService(Slow(), config),  # type: ignore[arg-type]
                                         config)
        try:
            body = WriteRequest(commands=[put(b"k", b"v")]).SerializeToString()
            async with grpc.aio.insecure_channel(config.listen_client) as ch:
                write = ch.unary_unary("/dengine.RaftClientService/Write")
                answers = await asyncio.gather(*(write(body, timeout=30) for _ in range(300)),
                                               return_exceptions=True)
            assert [a for a in answers if isinstance(a, Exception)] == []
        finally:
            await server.stop(None)

    asyncio.run(main())
