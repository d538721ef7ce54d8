"""Cancellation safety and liveness of the client: a call its caller gives up on leaves
nothing behind that delays later calls, and a connection to a node that stopped answering
is given up within about two probe intervals."""

from __future__ import annotations

import asyncio
import time

import pytest
from client_fakes import fake_servers

from dengine.client import Client, insert
from dengine.client.native import Lost, NativeConnection
from dengine.client.routing import Router
from dengine.errors import InvalidRequest, Timeout, Unavailable
from dengine.proto.client_pb2 import WriteRequest, WriteResponse
from dengine.proto.native import METHOD_CODES


@pytest.mark.parametrize("transport", ["native", "grpc"])
def test_puts_cut_by_wait_for_leave_no_batch_in_flight(transport: str) -> None:
    """Rounds of 30 puts on a key whose writes never return, each cut by wait_for (one
    batch per round): then a
    put on another key succeeds at once (before: it waited behind the abandoned batches,
    which held every in-flight slot until the client's own 30 s deadline)."""

    async def main() -> None:
        async with fake_servers(native=True) as servers:
            servers[0].engine.hang_keys.add(b"stuck")
            async with Client([servers[0].address], timeout=30, transport=transport) as client:
                await client.put("warm", "up")
                for _ in range(6):  # more rounds than the client has batches in flight (4)
                    outcomes = await asyncio.gather(
                        *(asyncio.wait_for(client.put("stuck", str(i)), 0.2) for i in range(30)),
                        return_exceptions=True)
                    assert all(isinstance(o, TimeoutError) for o in outcomes), outcomes
                await asyncio.wait_for(client.put("free", "v"), 5)
                assert await asyncio.wait_for(client.get("free"), 5) == b"v"
                # The client's own deadline (shorter than the stuck batches') frees them too.
                with pytest.raises(Timeout):
                    await asyncio.wait_for(client.put("stuck", "x", timeout=0.2), 5)
                await asyncio.wait_for(client.put("free", "w"), 5)
            assert servers[0].engine.store[b"free"] == b"w"

    asyncio.run(main())


async def _silent_server() -> tuple[asyncio.AbstractServer, str, list[asyncio.Transport]]:
    """Accepts connections and never answers (a paused or cut-off node)."""
    transports: list[asyncio.Transport] = []

    class Silent(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transports.append(transport)  # type: ignore[arg-type]

    server = await asyncio.get_running_loop().create_server(Silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"127.0.0.1:{port}", transports


def test_a_connection_that_never_answers_is_declared_dead() -> None:
    async def main() -> None:
        server, addr, transports = await _silent_server()
        try:
            conn = await NativeConnection.open(addr, 1.0, probe_interval=0.1)
            lost: list[NativeConnection] = []
            conn.on_lost = lost.append
            start = time.monotonic()
            with pytest.raises(Lost) as info:
                await conn.call(METHOD_CODES["Write"], b"", 30.0)
            assert info.value.silent and conn.closed and conn.silent and lost == [conn]
            assert time.monotonic() - start < 5  # ~0.2-0.3 s; the request's deadline: 30 s
        finally:
            for t in transports:
                t.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_a_request_cut_by_its_caller_still_counts_for_liveness() -> None:
    """The caller gave up (cancelled) but the node never answered: the connection is still
    found dead, so that the next caller does not wait behind it."""

    async def main() -> None:
        server, addr, transports = await _silent_server()
        try:
            conn = await NativeConnection.open(addr, 1.0, probe_interval=0.1)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(conn.call(METHOD_CODES["Write"], b"", 30.0), 0.05)
            for _ in range(100):
                if conn.closed:
                    break
                await asyncio.sleep(0.05)
            assert conn.closed and conn.silent
        finally:
            for t in transports:
                t.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_a_live_node_slow_to_answer_is_not_declared_dead() -> None:
    """A write waiting (here: forever) on a live node: its probes are answered, so the
    request runs to its deadline and the connection stays open."""

    async def main() -> None:
        async with fake_servers(native=True) as servers:
            servers[0].engine.hang = True
            native = servers[0].service.native_address
            conn = await NativeConnection.open(native, 1.0, probe_interval=0.1)
            try:
                body = WriteRequest(commands=[insert("k", "v")]).SerializeToString()
                with pytest.raises(TimeoutError):
                    await conn.call(METHOD_CODES["Write"], body, 0.8)
                assert not conn.closed
            finally:
                conn.close()

    asyncio.run(main())


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "0", "soon"])
@pytest.mark.parametrize("command", [["put", "k", "v"], ["get", "k"], ["status"],
                                     ["bench", "put"]])
def test_cli_refuses_a_timeout_that_is_not_a_finite_positive_number(
        command: list[str], value: str) -> None:
    """Before: `--timeout inf` hung forever on the native transport, `--timeout nan` said
    "no answer within nan s"."""
    from click.testing import CliRunner

    from dengine.cli import cli

    result = CliRunner().invoke(cli, [*command, "--endpoints", "127.0.0.1:1",
                                      "--timeout", value])
    assert result.exit_code == 2, result.output
    assert "--timeout" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0, -1.0, True])
def test_client_refuses_a_timeout_that_is_not_a_finite_positive_number(value: float) -> None:
    async def main() -> None:
        with pytest.raises(InvalidRequest, match="timeout"):
            Client("127.0.0.1:1", timeout=value)
        async with Client("127.0.0.1:1") as client:
            with pytest.raises(InvalidRequest, match="timeout"):
                await client.put("k", "v", timeout=value)

    asyncio.run(main())


def test_a_write_whose_deadline_passed_before_it_was_sent_says_it_was_not_applied() -> None:
    """Before: "deadline passed before Write could be sent (a write may still be
    applied)", a Timeout, which contradicted itself."""

    async def main() -> None:
        router = Router("127.0.0.1:1", "grpc")
        try:
            with pytest.raises(Unavailable, match=r"could be sent .* it was not applied"):
                await router.call_leader("Write", WriteRequest(), WriteResponse,
                                         time.monotonic() - 1, write=True)
            with pytest.raises(Timeout, match="deadline passed before Read could be sent"):
                await router.call_leader("Read", WriteRequest(), WriteResponse,
                                         time.monotonic() - 1, write=False)
            assert router._leader is None and router._suspects == {}  # nothing learnt
        finally:
            await router.close()

    asyncio.run(main())
