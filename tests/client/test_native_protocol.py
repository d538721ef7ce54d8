"""The native client listener at the frame level (docs/formats.md): pipelining, deadlines,
bad frames. Real sockets on 127.0.0.1 against the service over a fake engine."""

from __future__ import annotations

import asyncio
import struct

from client_fakes import FakeServer, fake_servers

from dengine.client.native import NativeConnection
from dengine.config import parse_address
from dengine.proto.client_pb2 import (
    ReadRequest,
    ReadResponse,
    StatusRequest,
    StatusResponse,
    WriteResponse,
)
from dengine.proto.native import (
    METHOD_CODES,
    RESPONSE_HEADER,
    STATUS_MALFORMED,
    STATUS_OK,
    STATUS_TOO_LARGE,
    STATUS_UNKNOWN_METHOD,
    request_frame,
)

READ = METHOD_CODES["Read"]
STATUS = METHOD_CODES["Status"]


async def raw(server: FakeServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = parse_address(server.service.native_address)
    return await asyncio.open_connection(host, port)


async def response(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """(request id, status, body) of the next response frame."""
    length, request_id, status = RESPONSE_HEADER.unpack(
        await reader.readexactly(RESPONSE_HEADER.size))
    return request_id, status, await reader.readexactly(length - 5)


async def check_serving(server: FakeServer) -> None:
    """A fresh connection still gets answers."""
    reader, writer = await raw(server)
    writer.write(request_frame(STATUS, 7, 0, StatusRequest().SerializeToString()))
    request_id, status, body = await asyncio.wait_for(response(reader), 5)
    assert (request_id, status) == (7, STATUS_OK)
    assert StatusResponse.FromString(body).native_address == server.service.native_address
    writer.close()


def test_500_pipelined_requests_are_answered_in_completion_order() -> None:
    async def main() -> None:
        async with fake_servers(native=True) as (leader, _):
            leader.engine.store.update({f"k{i}".encode(): f"v{i}".encode() for i in range(500)})
            # Later requests finish first, so answers come back out of request order.
            leader.engine.read_delay = lambda keys: (500 - int(keys[0][1:])) * 0.0004
            conn = await NativeConnection.open(leader.service.native_address, 5)
            finished: list[int] = []

            async def get(i: int) -> bytes:
                body = await conn.call(READ, ReadRequest(keys=[f"k{i}".encode()])
                                       .SerializeToString(), 10)
                finished.append(i)
                return ReadResponse.FromString(body).results[0].value

            values = await asyncio.gather(*(get(i) for i in range(500)))
            conn.close()
            assert values == [f"v{i}".encode() for i in range(500)]
            assert finished != sorted(finished)  # completion order, not request order
            assert len(leader.engine.read_calls) == 500  # one request each, one connection
            assert len(leader.native._connections) <= 1  # type: ignore[union-attr]

    asyncio.run(main())


def test_frame_deadline_reaches_the_handler() -> None:
    async def main() -> None:
        async with fake_servers(native=True) as (leader, _):
            reader, writer = await raw(leader)
            body = ReadRequest(keys=[b"k"]).SerializeToString()
            writer.write(request_frame(READ, 1, 2000, body) + request_frame(READ, 2, 0, body))
            answers = {(await response(reader))[0] for _ in range(2)}
            assert answers == {1, 2}
            with_deadline, without = leader.engine.timeouts
            assert with_deadline is not None and 1.5 < with_deadline <= 2.0
            assert without is None
            writer.close()

    asyncio.run(main())


def test_frames_split_and_joined_arbitrarily_are_parsed() -> None:
    async def main() -> None:
        async with fake_servers(native=True) as (leader, _):
            reader, writer = await raw(leader)
            stream = b"".join(request_frame(STATUS, i, 0, b"") for i in range(1, 6))
            for i in range(0, len(stream), 3):  # 3 bytes at a time
                writer.write(stream[i:i + 3])
                await writer.drain()
                await asyncio.sleep(0)
            ids = sorted([(await response(reader))[0] for _ in range(5)])
            assert ids == [1, 2, 3, 4, 5]
            writer.close()

    asyncio.run(main())


def test_unknown_method_and_bad_body_get_clear_errors_on_a_usable_connection() -> None:
    async def main() -> None:
        async with fake_servers(native=True) as (leader, _):
            reader, writer = await raw(leader)
            writer.write(request_frame(200, 5, 0, b""))
            request_id, status, body = await response(reader)
            assert (request_id, status) == (5, STATUS_UNKNOWN_METHOD)
            assert "unknown method 200" in body.decode()
            writer.write(request_frame(METHOD_CODES["Write"], 6, 0, b"\xff\xff\xff"))
            request_id, status, body = await response(reader)
            assert (request_id, status) == (6, STATUS_OK)
            error = WriteResponse.FromString(body).error
            assert error.code == "INVALID_REQUEST" and "malformed WriteRequest" in error.message
            writer.write(request_frame(STATUS, 8, 0, b""))  # same connection: still served
            assert (await response(reader))[:2] == (8, STATUS_OK)
            writer.close()

    asyncio.run(main())


def test_oversized_frame_is_refused_and_its_body_skipped() -> None:
    async def main() -> None:
        async with fake_servers(native=True) as (leader, _):
            limit = leader.config.max_request_size
            reader, writer = await raw(leader)
            frame = request_frame(READ, 3, 0, b"x" * (limit + 1))
            writer.write(frame[:100])
            # Refused as soon as the header is in, before the body has arrived ...
            request_id, status, body = await asyncio.wait_for(response(reader), 5)
            assert (request_id, status) == (3, STATUS_TOO_LARGE)
            assert f"exceeds max_request_size ({limit} bytes)" in body.decode()
            # ... whose bytes, arriving later in pieces, are skipped, not read as frames.
            for i in range(100, len(frame), 10_000):
                writer.write(frame[i:i + 10_000])
                await writer.drain()
                await asyncio.sleep(0.001)
            writer.write(request_frame(STATUS, 4, 0, b""))
            assert (await response(reader))[:2] == (4, STATUS_OK)  # the next frame is served
            # A length announcing 4 GiB is refused at once, without waiting for the body.
            writer.write(struct.pack("<IBII", 0xFFFFFFFF, READ, 9, 0))
            assert (await response(reader))[:2] == (9, STATUS_TOO_LARGE)
            writer.close()
            await check_serving(leader)

    asyncio.run(main())


def test_malformed_frame_closes_only_that_connection() -> None:
    async def main() -> None:
        async with fake_servers(native=True) as (leader, _):
            other = await NativeConnection.open(leader.service.native_address, 5)
            reader, writer = await raw(leader)
            writer.write(struct.pack("<I", 3) + b"abc")  # shorter than a request header
            request_id, status, body = await response(reader)
            assert (request_id, status) == (0, STATUS_MALFORMED)
            assert "below the 9-byte request header" in body.decode()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
            writer.close()
            # Other connections, old and new, are untouched.
            assert StatusResponse.FromString(await other.call(STATUS, b"", 5)).node_id == 1
            other.close()
            await check_serving(leader)

    asyncio.run(main())


def test_stop_finishes_in_flight_requests_and_refuses_new_ones() -> None:
    async def main() -> None:
        async with fake_servers(native=True) as (leader, _):
            leader.engine.read_delay = lambda keys: 0.3
            conn = await NativeConnection.open(leader.service.native_address, 5)
            slow = asyncio.ensure_future(conn.call(READ, ReadRequest(keys=[b"k"])
                                                   .SerializeToString(), 5))
            await asyncio.sleep(0.05)
            assert leader.native is not None
            stopping = asyncio.ensure_future(leader.native.stop(5))
            await asyncio.sleep(0.05)
            refused = await asyncio.gather(conn.call(STATUS, b"", 5), return_exceptions=True)
            assert "server shutting down" in str(refused[0])
            assert not ReadResponse.FromString(await slow).HasField("error")
            await stopping

    asyncio.run(main())
