"""A gRPC server framed by hand on asyncio: the client port's default (`client_frontend`;
grpc.aio's server is the fallback) (docs/grpc-frontend.md)."""

from dengine.server.grpcwire.server import GrpcWireServer

__all__ = ["GrpcWireServer"]
