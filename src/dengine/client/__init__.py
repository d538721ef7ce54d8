"""Remote access to a dengine cluster over gRPC: `Client` (asyncio) and `SyncClient`."""

from dengine.client.client import (
    Client,
    ConnectionLost,
    Leader,
    MemberInfo,
    NodeStatus,
    WriteResult,
    delete,
    insert,
    parse_endpoints,
)
from dengine.client.sync import SyncClient

__all__ = [
    "Client",
    "ConnectionLost",
    "Leader",
    "MemberInfo",
    "NodeStatus",
    "SyncClient",
    "WriteResult",
    "delete",
    "insert",
    "parse_endpoints",
]
