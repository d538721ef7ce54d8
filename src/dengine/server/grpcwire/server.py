"""The listener of the hand-framed gRPC front end: the method table (grpc's generic
handlers and aio interceptors, as grpc.aio's server takes them) and its connections."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc

from dengine.server.grpcwire.connection import Connection


class _Details(grpc.HandlerCallDetails):
    def __init__(self, method: str, metadata: Any) -> None:
        self.method = method
        self.invocation_metadata = metadata


class GrpcWireServer:
    """Serves unary gRPC calls on one address; `start` returns the bound port."""

    def __init__(self, *, max_receive_message_length: int = 4 * 1024 * 1024,
                 max_concurrent_streams: int = 1024,
                 interceptors: Iterable[grpc.aio.ServerInterceptor] = ()) -> None:
        self.max_receive_message_length = max_receive_message_length
        self.max_concurrent_streams = max_concurrent_streams
        self._interceptors = tuple(interceptors)
        self._generic: list[grpc.GenericRpcHandler] = []
        self._methods: dict[bytes, grpc.RpcMethodHandler | None] = {}
        self._connections: set[Connection] = set()
        self._server: asyncio.AbstractServer | None = None

    def add_generic_rpc_handlers(self, handlers: Iterable[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)
        self._methods.clear()

    async def handler(self, path: bytes, ctx: Any) -> grpc.RpcMethodHandler | None:
        """The handler of `path`, through the interceptors; resolved once per path."""
        if path in self._methods:
            return self._methods[path]
        details = _Details(path.decode(errors="replace"), ctx.invocation_metadata())

        async def lookup(d: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
            for generic in self._generic:
                found = generic.service(d)
                if found is not None:
                    return found
            return None

        resolve: Callable[[grpc.HandlerCallDetails], Awaitable[Any]] = lookup
        for interceptor in reversed(self._interceptors):
            resolve = _chain(interceptor, resolve)
        found = await resolve(details)
        self._methods[path] = found
        return found

    def certificate(self, conn: Connection) -> dict[str, list[bytes]]:
        """The client certificate of `conn` (plain TCP only so far: none)."""
        return {}

    def closed(self, conn: Connection) -> None:
        self._connections.discard(conn)

    def _connection(self) -> Connection:
        conn = Connection(self)
        self._connections.add(conn)
        return conn

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._connection, host, port, backlog=1024)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stops listening and closes every connection with GOAWAY."""
        if self._server is not None:
            self._server.close()
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
