"""The standalone server: a node plus its gRPC and native client listeners (`dengine serve`)."""

from dengine.server.native import NativeServer
from dengine.server.process import run_server, serve, start_grpc_server
from dengine.server.service import SERVICE_NAME, ClientService

__all__ = ["SERVICE_NAME", "ClientService", "NativeServer", "run_server", "serve",
           "start_grpc_server"]
