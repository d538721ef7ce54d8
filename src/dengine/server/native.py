"""The native client listener: `ClientService`'s methods over framed TCP, beside gRPC.

Python's gRPC costs ~430 µs per round trip on our test machine, a framed asyncio TCP
exchange ~29 µs; at one request in flight that difference is most of a remote write's
latency. gRPC stays the public, language-neutral API; this listener speaks the frames of
`dengine.proto.native` (docs/formats.md) whose bodies are the same protobuf messages, and
calls the very same handlers, so validation and errors are identical.

One connection carries many requests at once (pipelining): each frame has a request id
and its answer is written when its handler finishes, in completion order. A frame above
`max_request_size` is answered with an error and its body skipped; bytes that are not
frames at all get a connection-level error and the connection is closed. Neither touches
other connections, and a closed connection cancels nothing already handed to the engine.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import Message as ProtoMessage

from dengine.config import parse_address
from dengine.errors import ConfigError
from dengine.netutil import adopt_transport
from dengine.proto.native import (
    LENGTH,
    METHODS,
    REQUEST_HEADER,
    REQUEST_OVERHEAD,
    STATUS_MALFORMED,
    STATUS_OK,
    STATUS_SHUTTING_DOWN,
    STATUS_TOO_LARGE,
    STATUS_UNKNOWN_METHOD,
    response_frame,
)
from dengine.server.service import ClientService

log = logging.getLogger("dengine.server.native")

Handler = Callable[[bytes, Any], Awaitable[ProtoMessage]]

# Requests being handled on one connection before it stops reading (back-pressure on a
# client that sends faster than the node answers).
MAX_INFLIGHT_PER_CONNECTION = 4096


class _Deadline:
    """The `context` handed to ClientService handlers: they only ask for the time left."""

    __slots__ = ("_at",)

    def __init__(self, timeout_ms: int) -> None:
        self._at = time.monotonic() + timeout_ms / 1000 if timeout_ms else None

    def time_remaining(self) -> float | None:
        return None if self._at is None else max(0.0, self._at - time.monotonic())


class NativeServer:
    """Listens on one address; `start` returns the bound HOST:PORT (port 0 picks one)."""

    def __init__(self, service: ClientService, max_request_size: int) -> None:
        table = service.handlers()
        self._handlers: list[Handler | None] = [table.get(name) for name in METHODS]
        self._max_request_size = max_request_size
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.stopping = False

    async def start(self, addr: str) -> str:
        """Bind `addr` (ConfigError when it cannot be) and serve; the bound HOST:PORT."""
        host, port = parse_address(addr, allow_port_zero=True)
        loop = asyncio.get_running_loop()
        try:
            # One socket on the first address `host` resolves to: with port 0, binding each
            # of several addresses would give each its own port.
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                           flags=socket.AI_PASSIVE)
            family, kind, proto, _, sockaddr = infos[0]
            sock = socket.socket(family, kind, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(sockaddr)
            except OSError:
                sock.close()
                raise
        except OSError as e:
            raise ConfigError(f"cannot listen for native clients on {addr}: "
                              f"{e.strerror or e}") from None
        self._server = await loop.create_server(lambda: _Connection(self), sock=sock)
        ip, bound = sock.getsockname()[:2]
        return f"[{ip}]:{bound}" if ":" in ip else f"{ip}:{bound}"

    async def stop(self, grace: float) -> None:
        """Refuse new requests, let in-flight ones finish for up to `grace` s, then close."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        leftover = list(self._tasks)
        for task in leftover:
            task.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)
        for conn in list(self._connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()

    def handler(self, method: int) -> Handler | None:
        return self._handlers[method] if method < len(self._handlers) else None

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def max_request_size(self) -> int:
        return self._max_request_size

    def opened(self, conn: _Connection) -> None:
        self._connections.add(conn)

    def closed(self, conn: _Connection) -> None:
        self._connections.discard(conn)


class _Connection(asyncio.Protocol):
    """One client connection: parses request frames, runs handlers, writes answers."""

    def __init__(self, server: NativeServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._skip = 0          # body bytes of a refused (too large) frame still to discard
        self._inflight = 0
        self._reading_paused = False
        self._writing_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = adopt_transport(transport)
        self._server.opened(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # In-flight handlers keep running (a proposal is never withdrawn); their answers
        # have nowhere to go and are dropped.
        self._server.closed(self)

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                return
            data = data[self._skip:]
            self._skip = 0
        if self._buf:
            self._buf += data
            data = bytes(self._buf)
            self._buf.clear()
        end, pos = len(data), 0
        header = REQUEST_HEADER.size
        max_body = self._server.max_request_size
        while end - pos >= LENGTH.size:
            (length,) = LENGTH.unpack_from(data, pos)
            if length < REQUEST_OVERHEAD:
                self._fail(f"frame length {length} is below the {REQUEST_OVERHEAD}-byte "
                           f"request header")
                return
            if end - pos < header:
                break
            _, method, request_id, timeout_ms = REQUEST_HEADER.unpack_from(data, pos)
            body_len = length - REQUEST_OVERHEAD
            if body_len > max_body:
                self._reply(request_id, STATUS_TOO_LARGE,
                            f"request of {body_len} bytes exceeds max_request_size "
                            f"({max_body} bytes)".encode())
                available = end - pos - header
                if available >= body_len:
                    pos += header + body_len
                    continue
                self._skip = body_len - available
                return
            frame_end = pos + LENGTH.size + length
            if frame_end > end:
                break
            self._dispatch(method, request_id, timeout_ms, data[pos + header:frame_end])
            pos = frame_end
        if pos < end:
            self._buf += data[pos:]

    def _dispatch(self, method: int, request_id: int, timeout_ms: int, body: bytes) -> None:
        handler = self._server.handler(method)
        if handler is None:
            known = ", ".join(f"{code}={name}" for code, name in enumerate(METHODS) if name)
            self._reply(request_id, STATUS_UNKNOWN_METHOD,
                        f"unknown method {method} (known: {known})".encode())
            return
        if self._server.stopping:
            self._reply(request_id, STATUS_SHUTTING_DOWN, b"server shutting down")
            return
        self._inflight += 1
        self._update_reading()
        task = asyncio.get_running_loop().create_task(
            self._serve(handler, request_id, body, _Deadline(timeout_ms)))
        self._server.track(task)

    async def _serve(self, handler: Handler, request_id: int, body: bytes,
                     context: _Deadline) -> None:
        try:
            # ClientService handlers answer every failure with an error field; they do not raise.
            response = await handler(body, context)
        finally:
            self._inflight -= 1
            self._update_reading()
        self._reply(request_id, STATUS_OK, response.SerializeToString())

    def _reply(self, request_id: int, status: int, body: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(response_frame(request_id, status, body))

    def _fail(self, message: str) -> None:
        """The stream is not frames: say why (request id 0) and close the connection."""
        peer = self._transport.get_extra_info("peername") if self._transport else None
        log.warning("native client %s: %s; closing the connection", peer, message)
        self._reply(0, STATUS_MALFORMED, message.encode())
        self._buf.clear()
        self.close()

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        pause = self._writing_paused or self._inflight >= MAX_INFLIGHT_PER_CONNECTION
        if pause and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        elif not pause and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
