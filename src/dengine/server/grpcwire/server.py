"""The listener of the hand-framed gRPC front end: the method table (grpc's generic
handlers and aio interceptors, as grpc.aio's server takes them) and its connections."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

from dengine.server.grpcwire.connection import Connection
from dengine.server.grpcwire.state import ACK_HOLD_S
from dengine.tls import ServerTls, accepting, peer_certificate

log = logging.getLogger(__name__)


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str, metadata: Any) -> None:
        self.method = method
        self.invocation_metadata = metadata


class GrpcWireServer:
    """Serves gRPC calls on one address, over TLS with `tls` (ALPN `h2`); `start` returns
    the bound port."""

    def __init__(self, *, max_receive_message_length: int = 4 * 1024 * 1024,
                 max_concurrent_streams: int = 1024,
                 interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
                 tls: ServerTls | None = None, max_connections: int = 1024,
                 idle_timeout: float = 0.0, max_rpcs: int | None = None) -> None:
        self.max_rpcs = max_rpcs  # calls in progress on all connections; beyond: refused
        self.rpcs = 0
        self.max_connections = max_connections  # beyond: closed as they arrive
        self.idle_timeout = idle_timeout  # a connection without calls this long: GOAWAY
        self._sweeper: asyncio.Task[None] | None = None
        self._tls = tls
        self._alpn_set: ssl.SSLContext | None = None
        self.tls_refused = 0  # TLS handshakes that failed
        self.max_receive_message_length = max_receive_message_length
        self.max_concurrent_streams = max_concurrent_streams
        self._interceptors = tuple(interceptors)
        self._generic: list[grpc.GenericRpcHandler] = []
        self._registered: dict[str, grpc.RpcMethodHandler] = {}  # "/service/method" ->
        # path -> its handler, once resolved (`handler`)
        self.methods: dict[bytes, grpc.RpcMethodHandler | None] = {}
        self._connections: set[Connection] = set()
        self._server: asyncio.AbstractServer | None = None
        # Connections holding PING acks, with when to send them, oldest first.
        self._acking: deque[tuple[float, Connection]] = deque()
        self._ack_timer: asyncio.TimerHandle | None = None

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)
        self.methods.clear()

    def add_registered_method_handlers(
            self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        """As grpc.aio's server (generated `add_..._to_server` functions call it); these
        take precedence over generic handlers."""
        self._registered.update({f"/{service}/{name}": h for name, h in handlers.items()})
        self.methods.clear()

    async def handler(self, path: bytes, ctx: Any) -> grpc.RpcMethodHandler | None:
        """The handler of `path`, through the interceptors; resolved once per path."""
        if path in self.methods:
            return self.methods[path]
        details = _Details(path.decode(errors="replace"), ctx.invocation_metadata())

        async def lookup(d: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            registered = self._registered.get(d.method)
            if registered is not None:
                return registered
            for generic in self._generic:
                found = generic.service(d)
                if found is not None:
                    return found
            return None

        resolve: Callable[[grpc.HandlerCallDetails], Awaitable[Any]] = lookup
        for interceptor in reversed(self._interceptors):
            resolve = _chain(interceptor, resolve)
        found = await resolve(details)
        self.methods[path] = found
        return found

    def certificate(self, transport: Any) -> dict[str, list[bytes]]:
        """The verified client certificate of a connection ({} without one)."""
        return peer_certificate(transport) if self._tls is not None else {}

    def _context(self) -> ssl.SSLContext:
        """The TLS context current for a new connection, offering `h2` by ALPN (gRPC
        clients require it)."""
        assert self._tls is not None
        context = self._tls.context()
        if context is not self._alpn_set:
            context.set_alpn_protocols(["h2"])
            self._alpn_set = context
        return context

    def _refused(self, peer: Any, problem: str) -> None:
        self.tls_refused += 1
        log.warning("gRPC client %s: TLS handshake failed: %s", peer, problem)

    def hold_acks(self, conn: Any) -> None:
        """`conn` holds PING acks: they leave ACK_HOLD_S from now (one timer for the
        server, not one per ping)."""
        loop = asyncio.get_running_loop()
        self._acking.append((loop.time() + ACK_HOLD_S, conn))
        if self._ack_timer is None:
            self._ack_timer = loop.call_later(ACK_HOLD_S, self._release_acks)

    def _release_acks(self, everything: bool = False) -> None:
        """Sends the acks held long enough (`everything`: all of them)."""
        self._ack_timer = None
        loop = asyncio.get_running_loop()
        now, acking = loop.time(), self._acking
        while acking and (everything or acking[0][0] <= now):
            acking.popleft()[1].release_acks()
        if acking:
            self._ack_timer = loop.call_at(acking[0][0], self._release_acks)

    def closed(self, conn: Connection) -> None:
        self._connections.discard(conn)

    def admit(self, conn: Connection) -> bool:
        """Whether `conn` is within max_connections (then it is counted until closed).
        Counted from here, not from the protocol's creation: a TLS connection whose
        handshake fails never gets here, nor to `closed`."""
        if len(self._connections) >= self.max_connections:
            return False
        self._connections.add(conn)
        return True

    async def _sweep(self) -> None:
        """GOAWAY "max_idle" to connections without calls for idle_timeout (clients
        reconnect at their next call, as after grpc's max_connection_idle)."""
        while True:
            await asyncio.sleep(min(1.0, self.idle_timeout / 2))
            limit = time.monotonic() - self.idle_timeout
            for conn in list(self._connections):
                if conn.idle() and conn.idle_since < limit:
                    conn.go_away("max_idle")

    def _new_connection(self) -> Connection:
        return Connection(self)

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        factory: Callable[[], asyncio.BaseProtocol] = self._new_connection
        if self._tls is not None:
            factory = accepting(self._new_connection, self._context, self._refused)
        self._server = await loop.create_server(factory, host, port, backlog=1024)
        if self.idle_timeout > 0:
            self._sweeper = loop.create_task(self._sweep())
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self, grace: float | None = None) -> None:
        """Stops listening, sends every connection a GOAWAY, gives the calls open `grace`
        seconds to end (None: none, as grpc.aio's), then closes what is left (its calls
        cancelled)."""
        grace = grace or 0.0
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._release_acks(everything=True)
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.go_away()
        until = asyncio.get_running_loop().time() + grace
        while self._connections and asyncio.get_running_loop().time() < until:
            await asyncio.sleep(0.05)
        for conn in list(self._connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()


def _chain(interceptor: grpc.aio.ServerInterceptor,
           inner: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
           ) -> Callable[[grpc.HandlerCallDetails], Awaitable[Any]]:
    async def resolve(details: grpc.HandlerCallDetails) -> Any:
        return await interceptor.intercept_service(inner, details)
    return resolve
