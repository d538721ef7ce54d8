"""The hand-framed gRPC front end (dengine.server.grpcwire) against grpcio's aio client:
unary calls, statuses, metadata, the size limit, flow control, and protocol errors."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from dengine.bench.cluster import free_ports

# A dependency since session 16: a venv installed before it lacks it (pip install -e .).
pytest.importorskip("hpack")

from dengine.server.grpcwire import GrpcWireServer
from dengine.server.grpcwire import frames as f

LIMIT = 64 * 1024


async def _echo(request: bytes, context: Any) -> bytes:
    return b"echo:" + request


async def _fail(request: bytes, context: Any) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, request.decode())
    raise AssertionError("abort returned")


async def _metadata(request: bytes, context: Any) -> bytes:
    context.set_trailing_metadata((("dengine-index", "42"),))
    found = dict(context.invocation_metadata())
    remaining = context.time_remaining()
    return repr((found.get("token"), found.get("blob-bin"),
                 remaining is not None and 0 < remaining <= 31)).encode()  # the client rounds up


async def _crash(request: bytes, context: Any) -> bytes:
    raise ValueError("boom")


async def _stream(request: bytes, context: Any) -> Any:
    """Answers `request` (a count) messages of 100 KiB, past every window."""
    for i in range(int(request)):
        yield bytes([i]) * 100_000


async def _written(request: bytes, context: Any) -> None:
    """context.write, then an abort after the messages."""
    for i in range(int(request)):
        await context.write(b"%d" % i)
    await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "after the messages")


async def _bidi(requests: Any, context: Any) -> Any:
    """Each request echoed (with its size), then "end" after the client's half-close."""
    async for request in requests:
        yield b"%d:%s" % (len(request), request[:4])
    yield b"end"


def _handlers() -> grpc.GenericRpcHandler:
    unary = grpc.unary_unary_rpc_method_handler
    return grpc.method_handlers_generic_handler("test.Svc", {
        "Echo": unary(_echo), "Fail": unary(_fail), "Meta": unary(_metadata),
        "Crash": unary(_crash), "Stream": grpc.unary_stream_rpc_method_handler(_stream),
        "Written": grpc.unary_stream_rpc_method_handler(_written),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi),
    })


def _serve(body: Callable[[str, GrpcWireServer], Awaitable[None]]) -> None:
    async def main() -> None:
        server = GrpcWireServer(max_receive_message_length=LIMIT)
        server.add_generic_rpc_handlers((_handlers(),))
        port = await server.start("127.0.0.1", free_ports(1)[0])
        try:
            await body(f"127.0.0.1:{port}", server)
        finally:
            await server.stop()
    asyncio.run(main())


def _call(address: str, method: str, request: bytes, **kwargs: Any) -> Awaitable[Any]:
    async def run() -> Any:
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.unary_unary(f"/test.Svc/{method}")(request, **kwargs)
            response = await call
            return response, await call.trailing_metadata()
    return run()


def test_unary_calls_answer_small_and_large_messages() -> None:
    async def body(address: str, server: GrpcWireServer) -> None:
        assert (await _call(address, "Echo", b"hi"))[0] == b"echo:hi"
        # Larger than the client's 64 KiB windows (answer) and the server's (request).
        big = bytes(range(256)) * 240
        assert (await _call(address, "Echo", big))[0] == b"echo:" + big
        async with grpc.aio.insecure_channel(address) as channel:
            echo = channel.unary_unary("/test.Svc/Echo")
            answers = await asyncio.gather(*(echo(b"%d" % i) for i in range(200)))
        assert answers == [b"echo:%d" % i for i in range(200)]
    _serve(body)


def test_abort_gives_its_code_and_percent_encoded_message() -> None:
    async def body(address: str, server: GrpcWireServer) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _call(address, "Fail", "no such key: ké%y\n".encode())
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert info.value.details() == "no such key: ké%y\n"
    _serve(body)


def test_metadata_in_trailing_metadata_out_and_deadline() -> None:
    async def body(address: str, server: GrpcWireServer) -> None:
        response, trailing = await _call(
            address, "Meta", b"", timeout=30,
            metadata=(("token", "abc"), ("blob-bin", b"\x00\xff")))
        assert response == repr(("abc", b"\x00\xff", True)).encode()
        assert ("dengine-index", "42") in tuple(trailing)
    _serve(body)


@pytest.mark.parametrize(("method", "code"), [
    ("Nope", grpc.StatusCode.UNIMPLEMENTED), ("Crash", grpc.StatusCode.UNKNOWN)])
def test_unknown_method_and_crash(method: str, code: grpc.StatusCode) -> None:
    async def body(address: str, server: GrpcWireServer) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _call(address, method, b"x")
        assert info.value.code() == code
    _serve(body)


def test_message_over_the_limit_is_resource_exhausted_and_the_connection_serves_on() -> None:
    async def body(address: str, server: GrpcWireServer) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            echo = channel.unary_unary("/test.Svc/Echo")
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await echo(b"x" * (LIMIT + 1))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert f"larger than max ({LIMIT + 1} vs. {LIMIT})" in (info.value.details() or "")
            assert await echo(b"x" * LIMIT) == b"echo:" + b"x" * LIMIT
    _serve(body)


@pytest.mark.parametrize("compression", [grpc.Compression.Gzip, grpc.Compression.Deflate])
def test_compressed_requests_are_inflated_within_the_limit(
        compression: grpc.Compression) -> None:
    """As grpc.aio: a client configured to compress is served (it was refused with
    UNIMPLEMENTED), and the limit applies to the inflated message (a small compressed
    message may inflate to gigabytes)."""
    async def body(address: str, server: GrpcWireServer) -> None:
        async with grpc.aio.insecure_channel(address, compression=compression) as channel:
            echo = channel.unary_unary("/test.Svc/Echo")
            assert await echo(b"x" * 1000) == b"echo:" + b"x" * 1000
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await echo(b"x" * (LIMIT + 1))  # compresses to far less than LIMIT
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert info.value.details() == "Decompressed message larger than max"
            assert await echo(b"x" * LIMIT) == b"echo:" + b"x" * LIMIT
    _serve(body)


async def _raw_exchange(address: str, data: bytes) -> list[tuple[int, int, int, bytes]]:
    """Sends `data` on a fresh connection; the frames received until the server closes."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    received = await asyncio.wait_for(reader.read(-1), 30)
    writer.close()
    out, pos = [], 0
    while len(received) - pos >= 9:
        hi, lo, ftype, flags, sid = f.FRAME_HEADER.unpack_from(received, pos)
        end = pos + 9 + (hi << 16 | lo)
        out.append((ftype, flags, sid, received[pos + 9:end]))
        pos = end
    return out


@pytest.mark.parametrize(("frames", "code"), [
    (f.frame(f.PING, 0, 0, b"1234567"), f.FRAME_SIZE_ERROR),
    (f.frame(f.SETTINGS, 0, 1), f.PROTOCOL_ERROR),
    (f.frame(f.DATA, 0, 7, b"x"), f.PROTOCOL_ERROR),
    (f.frame(f.CONTINUATION, f.END_HEADERS, 1, b""), f.PROTOCOL_ERROR),
    (f.frame(f.HEADERS, f.END_HEADERS, 1, b"\xff\xff\xff\xff\xff\xff"), f.COMPRESSION_ERROR),
    (f.frame(f.WINDOW_UPDATE, 0, 0, struct.pack(">I", 0)), f.PROTOCOL_ERROR),
    (f.frame(f.DATA, 0, 1, b"x" * (f.MIN_FRAME_SIZE + 1)), f.FRAME_SIZE_ERROR),
])
def test_malformed_frames_close_the_connection_with_goaway(frames: bytes, code: int) -> None:
    async def body(address: str, server: GrpcWireServer) -> None:
        received = await _raw_exchange(address, f.PREFACE + f.settings() + frames)
        goaways = [payload for ftype, _, _, payload in received if ftype == f.GOAWAY]
        assert len(goaways) == 1
        assert struct.unpack_from(">I", goaways[0], 4)[0] == code
    _serve(body)


def test_a_peer_that_is_not_http2_is_closed() -> None:
    async def body(address: str, server: GrpcWireServer) -> None:
        received = await _raw_exchange(address, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert [ftype for ftype, *_ in received] == [f.SETTINGS, f.WINDOW_UPDATE, f.GOAWAY]
    _serve(body)


def test_ping_is_acked() -> None:
    async def body(address: str, server: GrpcWireServer) -> None:
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(f.PREFACE + f.settings() + f.frame(f.PING, 0, 0, b"8 bytes!")
                         + f.goaway(0, f.NO_ERROR))
            received = b""
            while chunk := await asyncio.to_thread(sock.recv, 65536):
                received += chunk
        assert f.frame(f.PING, f.ACK, 0, b"8 bytes!") in received
    _serve(body)


def test_ping_is_acked_on_a_connection_left_open() -> None:
    """Held (ACK_HOLD_S), then sent by the server's timer."""
    async def body(address: str, server: GrpcWireServer) -> None:
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(f.PREFACE + f.settings() + f.frame(f.PING, 0, 0, b"8 bytes!"))
            received = b""
            ack = f.frame(f.PING, f.ACK, 0, b"8 bytes!")
            while ack not in received:
                chunk = await asyncio.to_thread(sock.recv, 65536)
                assert chunk, "closed without the ack"
                received += chunk
    _serve(body)


def test_deadline_exceeded_cancels_the_handler() -> None:
    cancelled = asyncio.Event()

    async def wait(request: bytes, context: Any) -> bytes:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        raise AssertionError("unblocked")

    async def body(address: str, server: GrpcWireServer) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "test.Wait", {"Wait": grpc.unary_unary_rpc_method_handler(wait)}),))
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await channel.unary_unary("/test.Wait/Wait")(b"", timeout=0.2)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(cancelled.wait(), 30)
    _serve(body)


def test_server_streams_past_the_windows_and_end_with_their_status() -> None:
    async def body(address: str, server: GrpcWireServer) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            got = [m async for m in channel.unary_stream("/test.Svc/Stream")(b"30")]
            assert got == [bytes([i]) * 100_000 for i in range(30)]
            call = channel.unary_stream("/test.Svc/Written")(b"3")
            got = []
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for message in call:
                    got.append(message)
            assert got == [b"0", b"1", b"2"]
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert info.value.details() == "after the messages"
    _serve(body)


def test_bidi_stream_with_half_close_and_requests_past_the_window() -> None:
    async def body(address: str, server: GrpcWireServer) -> None:
        async with grpc.aio.insecure_channel(address) as channel:
            requests = [bytes([i]) * 60_000 for i in range(40)]  # 2.4 MB, past 1 MiB
            call = channel.stream_stream("/test.Svc/Bidi")(iter(requests))
            got = [m async for m in call]
            assert got == [b"60000:" + r[:4] for r in requests] + [b"end"]
            assert await call.code() == grpc.StatusCode.OK
    _serve(body)


def test_a_cancelled_stream_cancels_its_handler() -> None:
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def forever(requests: Any, context: Any) -> Any:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        yield b""

    async def body(address: str, server: GrpcWireServer) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "test.Forever", {"F": grpc.stream_stream_rpc_method_handler(forever)}),))
        async with grpc.aio.insecure_channel(address) as channel:
            call = channel.stream_stream("/test.Forever/F")()
            await asyncio.wait_for(started.wait(), 30)
            call.cancel()
            await asyncio.wait_for(cancelled.wait(), 30)
    _serve(body)


def test_tls_with_alpn_h2_and_the_client_certificate_in_auth_context(certs: Any) -> None:
    from pathlib import Path

    from dengine.tls import ServerFiles, ServerTls

    async def whoami(request: bytes, context: Any) -> bytes:
        found = context.auth_context()
        return b"%s %d" % (found["x509_common_name"][0], len(found["x509_pem_cert"]))

    async def main() -> None:
        node = certs.node()
        tls = ServerTls(ServerFiles(node["cert_file"], node["key_file"],
                                    node["trusted_ca_file"]), client_cert_auth=True, what="t")
        server = GrpcWireServer(tls=tls)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "test.Tls", {"Who": grpc.unary_unary_rpc_method_handler(whoami)}),))
        port = await server.start("127.0.0.1", free_ports(1)[0])
        client = certs.client()
        credentials = grpc.ssl_channel_credentials(
            Path(client["cacert"]).read_bytes(), Path(client["key"]).read_bytes(),
            Path(client["cert"]).read_bytes())
        try:
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
                assert await channel.unary_unary("/test.Tls/Who")(b"") == b"client 1"
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await channel.unary_unary("/test.Tls/Who")(b"", timeout=10)
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            await server.stop()

    asyncio.run(main())


def _alert_without_a_certificate(port: int, cacert: str) -> str:
    """What a TLS client without a certificate reads after its handshake (TLS 1.3: the
    server's verdict comes after the client's Finished)."""
    import ssl

    context = ssl.create_default_context(cafile=cacert)
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
        try:
            conn.sendall(f.PREFACE + f.settings())
            return f"read {conn.recv(100)!r}"
        except ssl.SSLError as e:
            return f"alert {e.reason}"
        except OSError as e:
            return f"error {e!r}"


def test_a_refused_tls_client_gets_the_alert_and_keeps_no_connection_slot(certs: Any) -> None:
    """A client without a certificate reads TLS's alert (not an EOF, nor a reset: the
    client's next bytes arriving after an abrupt close made the kernel answer RST), and
    the refused connections do not count against max_connections."""
    from pathlib import Path

    from dengine.tls import ServerFiles, ServerTls

    async def main() -> None:
        node = certs.node()
        tls = ServerTls(ServerFiles(node["cert_file"], node["key_file"],
                                    node["trusted_ca_file"]), client_cert_auth=True, what="t")
        server = GrpcWireServer(tls=tls, max_connections=1)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "test.Tls", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}),))
        port = await server.start("127.0.0.1", free_ports(1)[0])
        client = certs.client()
        try:
            for _ in range(3):
                seen = await asyncio.to_thread(_alert_without_a_certificate, port,
                                               client["cacert"])
                assert seen == "alert TLSV13_ALERT_CERTIFICATE_REQUIRED"
            assert server.tls_refused == 3
            credentials = grpc.ssl_channel_credentials(
                Path(client["cacert"]).read_bytes(), Path(client["key"]).read_bytes(),
                Path(client["cert"]).read_bytes())
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
                assert await channel.unary_unary("/test.Tls/Echo")(b"x", timeout=30) == b"echo:x"
        finally:
            await server.stop()

    asyncio.run(main())


class SlowService:
    """/test.Slow/S: answers b"done" once `release` is set; `started` once it was called."""

    def __init__(self) -> None:
        self.started, self.release = asyncio.Event(), asyncio.Event()

    async def slow(self, request: bytes, context: Any) -> bytes:
        self.started.set()
        await self.release.wait()
        return b"done"

    def on(self, server: GrpcWireServer) -> None:
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "test.Slow", {"S": grpc.unary_unary_rpc_method_handler(self.slow)}),))


def test_stop_lets_a_call_in_progress_finish_within_the_grace() -> None:
    slow = SlowService()
    started, release = slow.started, slow.release

    async def main() -> None:
        server = GrpcWireServer()
        slow.on(server)
        port = await server.start("127.0.0.1", free_ports(1)[0])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/test.Slow/S")(b"")
            await asyncio.wait_for(started.wait(), 30)
            stopping = asyncio.ensure_future(server.stop(grace=60))
            await asyncio.sleep(0.1)
            release.set()
            assert await call == b"done"
            await asyncio.wait_for(stopping, 30)

    asyncio.run(main())


def test_a_generated_servicer_with_serializers_unary_and_streaming() -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_health.v1.health import aio as health_aio

    async def body(address: str, server: GrpcWireServer) -> None:
        servicer = health_aio.HealthServicer()
        await servicer.set("svc", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            answer = await stub.Check(health_pb2.HealthCheckRequest(service="svc"))
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
            watch = stub.Watch(health_pb2.HealthCheckRequest(service="svc"))
            first = await watch.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            await servicer.set("svc", health_pb2.HealthCheckResponse.NOT_SERVING)
            second = await watch.read()
            assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
            watch.cancel()
    _serve(body)


def test_connections_beyond_the_limit_are_closed_and_idle_ones_sent_away() -> None:
    async def main() -> None:
        server = GrpcWireServer(max_connections=1, idle_timeout=0.2)
        port = await server.start("127.0.0.1", free_ports(1)[0])
        try:
            first = await asyncio.open_connection("127.0.0.1", port)
            assert (await first[0].readexactly(9))[3] == f.SETTINGS  # admitted
            second = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(second[0].read(-1), 30) == b""  # closed at once
            second[1].close()
            # The first, idle, gets GOAWAY "max_idle", then is closed.
            first[1].write(f.PREFACE + f.settings())
            rest = await asyncio.wait_for(first[0].read(-1), 30)
            assert f.goaway(0, f.NO_ERROR, b"max_idle") in rest
            first[1].close()
        finally:
            await server.stop()

    asyncio.run(main())


def test_calls_beyond_max_rpcs_are_resource_exhausted() -> None:
    slow = SlowService()
    started, release = slow.started, slow.release

    async def main() -> None:
        server = GrpcWireServer(max_rpcs=1)
        slow.on(server)
        port = await server.start("127.0.0.1", free_ports(1)[0])
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = channel.unary_unary("/test.Slow/S")
                first = asyncio.ensure_future(call(b""))
                await asyncio.wait_for(started.wait(), 30)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await call(b"")
                assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                release.set()
                assert await first == b"done"
                assert await call(b"") == b"done"  # the slot is free again
        finally:
            await server.stop()

    asyncio.run(main())
