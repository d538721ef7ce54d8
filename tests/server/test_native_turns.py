"""The native listener reads a bounded share of bytes per event-loop turn (issue 14, the
write burst: 2,000 x 64 KiB writes made the leader's loop go 180-370 ms between turns,
most of it reading and copying request frames in one turn, and it lost its lead)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from dengine.config import NodeConfig
from dengine.proto.client_pb2 import StatusResponse
from dengine.proto.native import METHOD_CODES, RESPONSE_HEADER, request_frame
from dengine.server import ClientService, NativeServer
from dengine.server import native as native_mod

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
    uvloop = None

LOOPS = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(
    uvloop is None, reason="uvloop not installed"))]


@pytest.mark.parametrize("loop", LOOPS)
def test_a_burst_of_big_frames_is_read_over_many_turns_and_all_answered(loop: str) -> None:
    async def main() -> None:
        server = NativeServer(ClientService(object(), NodeConfig()),  # type: ignore[arg-type]
                              1024 * 1024)
        bodies: list[int] = []

        async def handler(body: bytes, context: Any) -> StatusResponse:
            bodies.append(len(body))
            return StatusResponse(node_id=len(body))

        server._handlers = [handler] * len(server._handlers)  # type: ignore[misc]
        # bytes read per loop turn, over all connections (taken when a turn ends)
        per_turn: list[int] = []
        next_turn = server._next_turn

        def record() -> None:
            per_turn.append(server._turn_bytes)
            next_turn()

        server._next_turn = record  # type: ignore[method-assign]
        address = await server.start("127.0.0.1:0")
        host, _, port = address.rpartition(":")
        streams = [await asyncio.open_connection(host, int(port), limit=1 << 26)
                   for _ in range(4)]
        n, size = 64, 64 * 1024
        try:
            for _, writer in streams:
                writer.write(b"".join(
                    request_frame(METHOD_CODES["Status"], i + 1, 10_000, bytes([i % 251]) * size)
                    for i in range(n)))
            for reader, _ in streams:
                for _ in range(n):
                    length, _, status = RESPONSE_HEADER.unpack(
                        await reader.readexactly(RESPONSE_HEADER.size))
                    assert status == 0
                    await reader.readexactly(length - 5)
        finally:
            for _, writer in streams:
                writer.close()
            await server.stop(0)
        assert bodies == [size] * (4 * n)
        # 16 MiB in all, read in turns of about TURN_READ_BYTES (one read may pass it)
        assert sum(per_turn) >= 4 * n * size
        assert max(per_turn) <= native_mod.TURN_READ_BYTES + 1024 * 1024, per_turn

    factory = uvloop.new_event_loop if loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(asyncio.wait_for(main(), 60))
