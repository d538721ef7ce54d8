"""Remote access to a dengine cluster: `Client` (asyncio) and `SyncClient` (blocking).

`client.py` is the API, `routing.py` the connections and endpoint routing, `batcher.py`
the batching of concurrent calls, `native.py` the native protocol's connection. The
result types live in `dengine.api`, shared with the embedded `Engine`.
"""

from dengine.api import Leader, MemberInfo, NodeStatus, WriteResult
from dengine.client.client import Client
from dengine.client.commands import delete, insert
from dengine.client.routing import ConnectionLost, parse_endpoints
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
