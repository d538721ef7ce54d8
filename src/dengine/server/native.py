"""The native client listener: `ClientService`'s methods over framed TCP, beside gRPC.

Python's gRPC costs ~430 µs per round trip on our test machine, a framed asyncio TCP
exchange ~29 µs; at one request in flight that difference is most of a remote write's
latency. gRPC stays the public, language-neutral API; this listener speaks the frames of
`dengine.proto.native` (docs/formats.md) whose bodies are the same protobuf messages, and
calls the very same handlers, so validation and errors are identical.

One connection carries many requests at once (pipelining): each frame has a request id
and its answer is written when its handler finishes, in completion order. A frame above
`max_request_size` is answered with an error and its body skipped (one more than twice
the limit also closes the connection); bytes that are not frames at all get a
connection-level error and the connection is closed. Neither touches other connections,
and a closed connection cancels nothing already handed to the engine.

Resources are bounded (docs/operations.md, "Limits"): at most `max_connections`
connections (at the limit the oldest one idle for a second makes room, else the newcomer is
told so and closed); a frame is buffered only up to its announced length, which is checked
before any body byte is kept, and the partial frames of all connections together hold at
most about `max_buffer_bytes` (a connection that would pass it stops being read until
others finish theirs); a frame must arrive whole within `frame_timeout` s of its first
byte, and a connection with nothing outstanding is closed after `idle_timeout` s
(STATUS_CLOSING: the client reconnects and resends).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from google.protobuf.message import Message as ProtoMessage

from dengine.config import NodeConfig, parse_address
from dengine.errors import ConfigError
from dengine.netutil import adopt_transport
from dengine.proto.native import (
    LENGTH,
    METHODS,
    REQUEST_HEADER,
    REQUEST_OVERHEAD,
    STATUS_CLOSING,
    STATUS_FRAME_TIMEOUT,
    STATUS_MALFORMED,
    STATUS_OK,
    STATUS_SHUTTING_DOWN,
    STATUS_TOO_LARGE,
    STATUS_UNKNOWN_METHOD,
    response_frame,
)
from dengine.server.etcd.gate import TOKEN_METADATA
from dengine.server.service import ClientService
from dengine.tls import ServerTls, accepting

log = logging.getLogger("dengine.server.native")

Handler = Callable[[bytes, Any], Awaitable[ProtoMessage]]

# Requests being handled on one connection before it stops reading (back-pressure on a
# client that sends faster than the node answers).
MAX_INFLIGHT_PER_CONNECTION = 4096
# Bytes the native connections together read in one turn of the event loop; past it, a
# connection that reads pauses until the next turn (other tasks, Raft's ticks and peer
# messages among them, run in between). Small requests never reach it.
TURN_READ_BYTES = 1024 * 1024
# A connection the server ends is half-closed after its last frame and read (discarding)
# until the client closes or this many seconds pass: closing with unread bytes would reset
# the connection and could destroy that last frame before the client reads it.
LINGER_S = 1.0
# At max_connections, a connection idle this long is closed to admit a new one.
EVICT_IDLE_S = 1.0


class _Context:
    """The `context` handed to ClientService handlers: the time left, and the auth token
    of the connection (set by its Authenticate) as gRPC's `token` metadata would carry it."""

    __slots__ = ("_at", "_conn")

    def __init__(self, timeout_ms: int, conn: _Connection) -> None:
        self._at = time.monotonic() + timeout_ms / 1000 if timeout_ms else None
        self._conn = conn

    def time_remaining(self) -> float | None:
        return None if self._at is None else max(0.0, self._at - time.monotonic())

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        token = self._conn.token
        return ((TOKEN_METADATA, token),) if token else ()

    def bind_token(self, token: str) -> None:
        """Every later request on this connection acts for the token's user."""
        self._conn.token = token

    def auth_context(self) -> dict[str, list[bytes]]:
        """The connection's verified client certificate as gRPC's auth context gives it
        (common name, PEM; {} without one): with --client-cert-auth its CN is a user."""
        return self._conn.certificate()


class NativeServer:
    """Listens on one address; `start` returns the bound HOST:PORT (port 0 picks one).

    The limits default to NodeConfig's defaults (`from_config` takes them all from one).
    """

    def __init__(
        self, service: ClientService, max_request_size: int, *,
        max_connections: int = 1024, idle_timeout: float = 600.0,
        frame_timeout: float = 30.0, max_buffer_bytes: int = 64 * 1024 * 1024,
        tls: ServerTls | None = None,
    ) -> None:
        table = service.handlers()
        self._handlers: list[Handler | None] = [table.get(name) for name in METHODS]
        self._max_request_size = max_request_size
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self.max_buffer_bytes = max(max_buffer_bytes, max_request_size + REQUEST_HEADER.size)
        self._server: asyncio.AbstractServer | None = None
        # Open connections, oldest first (a dict keeps insertion order); those being closed
        # (their last frame sent, see LINGER_S) are in _ending instead.
        self._connections: dict[_Connection, None] = {}
        self._ending: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self.tls = tls  # TLS on every connection (None: plaintext)
        # (protocol, method, seconds) of each answered request (metrics), when set
        self.observe: Callable[[str, str, float], None] | None = None
        self.stopping = False
        self.buffered = 0  # bytes of partial frames held, all connections
        self._starved: set[_Connection] = set()  # not read until `buffered` falls
        self._turn_bytes = 0  # read by all connections in this loop turn (`took`)
        self._turn_waiting: set[_Connection] = set()  # paused until the next turn
        # Connections closed by a limit (counters for tests and operators).
        self.refused_connections = 0
        self.evicted = 0
        self.idle_closed = 0
        self.slow_closed = 0
        self.tls_refused = 0  # TLS handshakes that failed

    @classmethod
    def from_config(cls, service: ClientService, config: NodeConfig) -> NativeServer:
        return cls(service, config.max_request_size,
                   max_connections=config.max_client_connections,
                   idle_timeout=config.client_idle_timeout_s,
                   frame_timeout=config.client_frame_timeout_s,
                   max_buffer_bytes=config.max_client_buffer_bytes,
                   tls=config.client_tls())

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
        def connection() -> asyncio.BaseProtocol:
            return _Connection(self)

        factory = connection if self.tls is None else accepting(
            connection, self.tls.context, self._tls_refused)
        self._server = await loop.create_server(factory, sock=sock)
        self._sweeper = loop.create_task(self._sweep())
        ip, bound = sock.getsockname()[:2]
        return f"[{ip}]:{bound}" if ":" in ip else f"{ip}:{bound}"

    async def stop(self, grace: float) -> None:
        """Refuse new requests, let in-flight ones finish for up to `grace` s, then close."""
        self.stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        leftover = list(self._tasks)
        for task in leftover:
            task.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)
        for conn in [*self._connections, *self._ending]:
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()

    def handler(self, method: int) -> Handler | None:
        return self._handlers[method] if method < len(self._handlers) else None

    def _tls_refused(self, peer: Any, problem: str) -> None:
        self.tls_refused += 1
        log.warning("native client %s: TLS handshake failed: %s", peer, problem)

    def track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def max_request_size(self) -> int:
        return self._max_request_size

    def opened(self, conn: _Connection) -> bool:
        """Admit a new connection. At max_connections the oldest connection idle for
        EVICT_IDLE_S makes room (it is told so: its client reconnects when it needs to);
        without one the newcomer is refused (False)."""
        if len(self._connections) >= self.max_connections:
            now = time.monotonic()
            victim = next((c for c in self._connections if c.idle_for(now) >= EVICT_IDLE_S),
                          None)
            if victim is None:
                self.refused_connections += 1
                if self.refused_connections % 1000 == 1:
                    log.warning("native listener: %d connections open and busy "
                                "(max_client_connections); refusing more (%d so far)",
                                len(self._connections), self.refused_connections)
                return False
            self.evicted += 1
            victim.end(STATUS_CLOSING, f"idle connection closed to make room for a new one "
                                       f"(max_client_connections {self.max_connections})")
        self._connections[conn] = None
        return True

    def ending(self, conn: _Connection) -> bool:
        """`conn` sent its last frame; True when it may linger (see LINGER_S)."""
        self._connections.pop(conn, None)
        self._starved.discard(conn)
        if len(self._ending) >= self.max_connections:
            return False  # under a flood of connections: no descriptors held for lingering
        self._ending.add(conn)
        return True

    def closed(self, conn: _Connection) -> None:
        self._connections.pop(conn, None)
        self._ending.discard(conn)
        self._starved.discard(conn)
        self._turn_waiting.discard(conn)

    def hold(self, delta: int) -> bool:
        """Account `delta` more bytes of partial frames; False when over the budget."""
        self.buffered += delta
        if delta < 0 and self._starved and self.buffered < self.max_buffer_bytes:
            starved, self._starved = self._starved, set()
            for conn in starved:
                conn.fed()
        return self.buffered <= self.max_buffer_bytes

    def starve(self, conn: _Connection) -> None:
        self._starved.add(conn)

    def took(self, n: int, conn: _Connection) -> bool:
        """Count `n` bytes `conn` read in this loop turn; True when the turn's share
        (TURN_READ_BYTES, over all connections) is used up: `conn` then pauses until the
        next turn."""
        if not self._turn_bytes:
            asyncio.get_running_loop().call_soon(self._next_turn)
        self._turn_bytes += n
        if self._turn_bytes < TURN_READ_BYTES:
            return False
        self._turn_waiting.add(conn)
        return True

    def _next_turn(self) -> None:
        self._turn_bytes = 0
        waiting, self._turn_waiting = self._turn_waiting, set()
        for conn in waiting:
            conn.next_turn()

    async def _sweep(self) -> None:
        """Close connections that are idle too long or send a frame too slowly."""
        timeouts = [t for t in (self.idle_timeout, self.frame_timeout) if t > 0]
        if not timeouts:
            return
        period = min(1.0, max(0.02, min(timeouts) / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for conn in list(self._connections):
                conn.check_timeouts(now)


class _Connection(asyncio.Protocol):
    """One client connection: parses request frames, runs handlers, writes answers."""

    def __init__(self, server: NativeServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._need = 0          # bytes _buf must hold before the next frame can be parsed
        self._skip = 0          # body bytes of a refused (too large) frame still to discard
        self._inflight = 0
        self._reading_paused = False
        self._writing_paused = False
        self._starved = False   # waiting for the server's buffer budget
        self._turn_paused = False   # read its share of this loop turn (NativeServer.took)
        self._ending = False    # the last frame is sent: discard input until EOF (linger)
        self._active_at = time.monotonic()   # the last byte received or answer sent
        self._partial_since = 0.0   # the first byte of the frame still incomplete (0: none)
        self.token = ""  # etcd auth token of the connection (its last Authenticate)
        self._certificate: dict[str, list[bytes]] | None = None  # certificate(), once read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = adopt_transport(transport)
        if not self._server.opened(self):
            self.end(STATUS_CLOSING, f"too many connections (max_client_connections "
                                             f"{self._server.max_connections}); retry later")

    def certificate(self) -> dict[str, list[bytes]]:
        if self._certificate is None:
            self._certificate = {}
            ssl_object = (self._transport.get_extra_info("ssl_object")
                          if self._transport is not None else None)
            if ssl_object is None:
                return self._certificate
            der = ssl_object.getpeercert(binary_form=True)
            verified = ssl_object.getpeercert() if der else None  # {} when not verified
            if der and verified:
                names = [value for rdn in verified.get("subject", ()) for key, value in rdn
                         if key == "commonName"]
                self._certificate = {"x509_pem_cert": [ssl.DER_cert_to_PEM_cert(der).encode()]}
                if names:
                    self._certificate["x509_common_name"] = [names[0].encode()]
        return self._certificate

    def connection_lost(self, exc: Exception | None) -> None:
        # In-flight handlers keep running (a proposal is never withdrawn); their answers
        # have nowhere to go and are dropped.
        self._server.closed(self)
        self._release_buffer()
        self._skip = 0

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
        if transport is None or transport.is_closing() or self._ending:
            return
        now = self._active_at = time.monotonic()
        if self._server.took(len(data), self):
            # This loop turn has read its share: the rest waits for the next turn, so
            # that a burst of big requests cannot hold the loop (and Raft's ticks) for
            # hundreds of ms in one turn.
            self._turn_paused = True
            self._update_reading()
        if self._skip:
            if len(data) <= self._skip:
                self._skip -= len(data)
                if not self._skip:
                    self._partial_since = 0.0
                return
            data = data[self._skip:]
            self._skip = 0
            self._partial_since = 0.0
        chunk: bytes | bytearray = data
        if self._buf:
            held = len(self._buf)
            self._buf += data
            if len(self._buf) < self._need:  # the frame is still incomplete: keep it
                self._hold(len(data))
                return
            # Parsed in place, detached (no copy of the whole buffer): each body is
            # copied once, the unfinished rest goes to a fresh buffer.
            chunk, self._buf = self._buf, bytearray()
            self._server.hold(-held)
        pos = self._parse(chunk, now)
        if pos < 0:
            return
        end = len(chunk)
        if pos < end:
            # The start of a frame: kept until it is whole (its length is known and below
            # max_request_size once its header is here).
            if pos or not self._partial_since:
                self._partial_since = now
            with memoryview(chunk) as view:
                self._buf += view[pos:]
            self._need = (LENGTH.size + LENGTH.unpack_from(chunk, pos)[0]
                          if end - pos >= REQUEST_HEADER.size else REQUEST_HEADER.size)
            self._hold(end - pos)
        else:
            self._partial_since = 0.0

    def _parse(self, data: bytes | bytearray, now: float) -> int:
        """Dispatch the whole frames at the start of `data`: the offset of the first byte
        not used, or -1 when nothing is left to keep (the connection is ending, or the
        rest of a refused body is to be skipped)."""
        end, pos = len(data), 0
        header = REQUEST_HEADER.size
        max_body = self._server.max_request_size
        while end - pos >= LENGTH.size:
            (length,) = LENGTH.unpack_from(data, pos)
            if length < REQUEST_OVERHEAD:
                self._fail(f"frame length {length} is below the {REQUEST_OVERHEAD}-byte "
                           f"request header")
                return -1
            if end - pos < header:
                break
            _, method, request_id, timeout_ms = REQUEST_HEADER.unpack_from(data, pos)
            body_len = length - REQUEST_OVERHEAD
            if body_len > max_body:
                self._reply(request_id, STATUS_TOO_LARGE,
                            f"request of {body_len} bytes exceeds max_request_size "
                            f"({max_body} bytes)".encode())
                if body_len > 2 * max_body:
                    # Not a request that is a little too big: do not read it at all.
                    self.end(STATUS_TOO_LARGE, f"frame of {body_len} bytes is far "
                                     f"above max_request_size ({max_body} bytes)")
                    return -1
                available = end - pos - header
                if available >= body_len:
                    pos += header + body_len
                    continue
                self._skip = body_len - available
                self._partial_since = now
                return -1
            frame_end = pos + LENGTH.size + length
            if frame_end > end:
                break
            if isinstance(data, bytes):
                body = data[pos + header:frame_end]
            else:
                with memoryview(data) as view:
                    body = bytes(view[pos + header:frame_end])
            self._dispatch(method, request_id, timeout_ms, body)
            pos = frame_end
        return pos

    def _hold(self, added: int) -> None:
        """Count `added` buffered bytes; over the server's budget, stop reading for now."""
        if not self._server.hold(added) and not self._starved:
            self._starved = True
            self._server.starve(self)
            self._update_reading()

    def _release_buffer(self) -> None:
        held = len(self._buf)
        self._buf.clear()
        if held:
            self._server.hold(-held)

    def fed(self) -> None:
        """The server's buffer budget has room again."""
        self._starved = False
        self._update_reading()

    def next_turn(self) -> None:
        """A new loop turn: read again."""
        self._turn_paused = False
        self._update_reading()

    def check_timeouts(self, now: float) -> None:
        server = self._server
        if self._partial_since and server.frame_timeout > 0 and not (
            self._writing_paused or self._inflight >= MAX_INFLIGHT_PER_CONNECTION
        ) and now - self._partial_since > server.frame_timeout:
            server.slow_closed += 1
            self.end(STATUS_FRAME_TIMEOUT, f"a request frame did not arrive whole "
                             f"within client_frame_timeout_s ({server.frame_timeout:g} s)")
        elif server.idle_timeout > 0 and self.idle_for(now) > server.idle_timeout:
            server.idle_closed += 1
            self.end(STATUS_CLOSING, f"idle for more than client_idle_timeout_s "
                             f"({server.idle_timeout:g} s)")

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
            self._serve(handler, request_id, body, _Context(timeout_ms, self), method))
        self._server.track(task)

    async def _serve(self, handler: Handler, request_id: int, body: bytes,
                     context: _Context, method: int) -> None:
        observe = self._server.observe
        started = time.perf_counter() if observe is not None else 0.0
        try:
            # ClientService handlers answer every failure with an error field; they do not raise.
            response = await handler(body, context)
        finally:
            self._inflight -= 1
            self._update_reading()
        self._reply(request_id, STATUS_OK, response.SerializeToString())
        if observe is not None:
            observe("native", METHODS[method], time.perf_counter() - started)

    def _reply(self, request_id: int, status: int, body: bytes) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing() and not self._ending:
            self._active_at = time.monotonic()
            transport.write(response_frame(request_id, status, body))

    def _fail(self, message: str) -> None:
        """The stream is not frames: say why (request id 0) and close the connection."""
        peer = self._transport.get_extra_info("peername") if self._transport else None
        log.warning("native client %s: %s; closing the connection", peer, message)
        self.end(STATUS_MALFORMED, message)

    def idle_for(self, now: float) -> float:
        """Seconds without input or answers, with nothing outstanding (0: not idle)."""
        if self._inflight or self._partial_since or self._ending:
            return 0.0
        return now - self._active_at

    def end(self, status: int, message: str) -> None:
        """Tell the client why (request id 0) and close the connection (see LINGER_S)."""
        transport = self._transport
        if transport is None or transport.is_closing() or self._ending:
            return
        log.debug("native client connection closed: %s", message)
        self._reply(0, status, message.encode())
        self._ending = True
        self._release_buffer()
        self._skip = 0
        self._partial_since = 0.0
        if not self._server.ending(self):
            self.close()
            return
        try:
            transport.write_eof()
        except (NotImplementedError, RuntimeError, OSError):
            self.close()
            return
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        asyncio.get_running_loop().call_later(LINGER_S, self.close)

    def _update_reading(self) -> None:
        transport = self._transport
        if transport is None or transport.is_closing() or self._ending:
            return
        pause = (self._writing_paused or self._starved or self._turn_paused
                 or self._inflight >= MAX_INFLIGHT_PER_CONNECTION)
        if pause and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        elif not pause and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
