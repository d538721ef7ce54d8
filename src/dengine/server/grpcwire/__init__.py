"""A gRPC server framed by hand on asyncio, to replace grpc.aio's on the client port
(docs/grpc-frontend.md). Unary calls over plain TCP so far; not wired in yet."""

from dengine.server.grpcwire.server import GrpcWireServer

__all__ = ["GrpcWireServer"]
