"""One pipelined connection to a node's native client listener (`dengine.proto.native`).

Many calls share the connection at once; each frame carries a request id and answers are
matched by it, in whatever order the node finishes them. The caller (`Client`) maps the
exceptions below to dengine errors: which one tells whether a write may have been applied.
"""

from __future__ import annotations

import asyncio
import math

from dengine.config import parse_address
from dengine.netutil import adopt_transport
from dengine.proto.native import (
    LENGTH,
    MAX_REQUEST_ID,
    MAX_TIMEOUT_MS,
    RESPONSE_HEADER,
    RESPONSE_OVERHEAD,
    STATUS_NAMES,
    STATUS_OK,
    request_frame,
)


class NotSent(Exception):
    """The connection was closed before the request was written: it never left."""


class Lost(Exception):
    """The connection broke while the request was outstanding: its outcome is unknown."""


class Refused(Exception):
    """The node answered with a protocol error (not processed): `status`, message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class NativeConnection(asyncio.Protocol):
    """Open with `await NativeConnection.open(address, timeout)`; `call` many times."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.closed = False
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._last_id = 0
        self._buf = bytearray()
        self._why_closed = "connection closed"

    @classmethod
    async def open(cls, address: str, timeout: float) -> NativeConnection:
        """Connect (OSError or TimeoutError when the node cannot be reached)."""
        host, port = parse_address(address)
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(lambda: cls(address), host, port), timeout)
        return conn

    async def call(self, method: int, body: bytes, timeout: float) -> bytes:
        """The response body of one request; TimeoutError after `timeout` seconds (the
        node is told the same deadline)."""
        if self.closed or self._transport is None:
            raise NotSent(self._why_closed)
        request_id = self._new_id()
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bytes] = loop.create_future()
        self._pending[request_id] = fut
        timeout_ms = min(MAX_TIMEOUT_MS, max(1, math.ceil(timeout * 1000)))
        self._transport.write(request_frame(method, request_id, timeout_ms, body))
        timer = loop.call_later(timeout, self._expire, request_id)
        try:
            return await fut
        finally:
            timer.cancel()
            self._pending.pop(request_id, None)

    def close(self) -> None:
        if not self.closed:
            self._why_closed = f"connection to {self.address} closed by this client"
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    # ---- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = adopt_transport(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._why_closed = f"connection to {self.address} lost: {exc}"
        elif not self.closed:
            self._why_closed = f"connection to {self.address} closed by the node"
        self._fail_all(self._why_closed)

    def data_received(self, data: bytes) -> None:
        if self._buf:
            self._buf += data
            data = bytes(self._buf)
            self._buf.clear()
        end, pos = len(data), 0
        header = RESPONSE_HEADER.size
        while end - pos >= header:
            length, request_id, status = RESPONSE_HEADER.unpack_from(data, pos)
            frame_end = pos + LENGTH.size + length
            if length < RESPONSE_OVERHEAD:
                self._broken(f"malformed response frame (length {length}) from {self.address}")
                return
            if frame_end > end:
                break
            body = data[pos + header:frame_end]
            pos = frame_end
            if request_id == 0:  # about the connection itself; the node closes it
                self._broken(f"{self.address} closed the connection: "
                             f"{body.decode('utf-8', 'replace')}")
                return
            fut = self._pending.pop(request_id, None)
            if fut is None or fut.done():  # its caller gave up
                continue
            if status == STATUS_OK:
                fut.set_result(body)
            else:
                name = STATUS_NAMES.get(status, f"status {status}")
                fut.set_exception(Refused(status, f"{name}: {body.decode('utf-8', 'replace')}"))
        if pos < end:
            self._buf += data[pos:]

    # ---- internals ----------------------------------------------------------------------

    def _new_id(self) -> int:
        request_id = self._last_id
        while True:  # 1 .. 2**32-1, skipping ids still outstanding after a wrap-around
            request_id = request_id + 1 if request_id < MAX_REQUEST_ID else 1
            if request_id not in self._pending:
                self._last_id = request_id
                return request_id

    def _expire(self, request_id: int) -> None:
        fut = self._pending.pop(request_id, None)
        if fut is not None and not fut.done():
            fut.set_exception(TimeoutError())

    def _broken(self, reason: str) -> None:
        self._why_closed = reason
        self._fail_all(reason)
        self.close()

    def _fail_all(self, reason: str) -> None:
        self.closed = True
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(Lost(reason))
