"""The standalone server: a node plus the gRPC client service (`dengine serve`)."""

from dengine.server.process import run_server, serve, start_grpc_server
from dengine.server.service import SERVICE_NAME, ClientService

__all__ = ["SERVICE_NAME", "ClientService", "run_server", "serve", "start_grpc_server"]
