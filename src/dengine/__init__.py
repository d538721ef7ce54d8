"""dengine: a strongly consistent, Raft-replicated key-value engine for coordination data.

Public API: `Engine` (embedded, asyncio), `Client` / `SyncClient` (remote), `Consistency`,
the errors in `dengine.errors`, the transaction builders `Compare` and `Op`, and in
`dengine.api` the API they share (`ClientApi`, `SyncClientApi`) and its result types
(`KeyValue`, `RangeResult`, `PutResult`, `DeleteResult`, `TxnResult`, `WriteResult`,
`NodeStatus`, `MemberInfo`, `MemberSet`, `Leader`, `LeaseGrant`, `LeaseInfo`, `WatchEvent` and
its `EventType`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dengine.api import (
    ClientApi,
    DeleteResult,
    EventType,
    KeyValue,
    Leader,
    LeaseGrant,
    LeaseInfo,
    MemberInfo,
    MemberSet,
    NodeStatus,
    PutResult,
    RangeResult,
    ResponseHeader,
    SyncClientApi,
    TxnResult,
    WatchEvent,
    WriteResult,
)
from dengine.errors import (
    ClusterMismatch,
    Compacted,
    ConfigError,
    CorruptionError,
    DengineError,
    FutureRevision,
    InvalidRequest,
    KvError,
    LeadershipLost,
    LeaseNotFound,
    NotLeader,
    StorageError,
    Timeout,
    Unavailable,
)

__version__ = "0.1.0"

# Engine and clients pull in asyncio/gRPC machinery; load them on first use.
_LAZY = {
    "Engine": "dengine.node.engine",
    "Consistency": "dengine.kv",
    "Compare": "dengine.kv.ops",
    "Op": "dengine.kv.ops",
    "Client": "dengine.client",
    "SyncClient": "dengine.client",
}

if TYPE_CHECKING:  # pragma: no cover
    from dengine.client import Client, SyncClient
    from dengine.kv import Consistency
    from dengine.kv.ops import Compare, Op
    from dengine.node.engine import Engine

    # mypy checks that the three front doors offer the one API (dengine.api).
    def _engine_conforms(engine: Engine) -> ClientApi:
        return engine

    def _client_conforms(client: Client) -> ClientApi:
        return client

    def _sync_client_conforms(client: SyncClient) -> SyncClientApi:
        return client


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dengine' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "Client",
    "ClientApi",
    "ClusterMismatch",
    "Compacted",
    "Compare",
    "ConfigError",
    "Consistency",
    "CorruptionError",
    "DeleteResult",
    "DengineError",
    "Engine",
    "EventType",
    "FutureRevision",
    "InvalidRequest",
    "KeyValue",
    "KvError",
    "Leader",
    "LeadershipLost",
    "LeaseGrant",
    "LeaseInfo",
    "LeaseNotFound",
    "MemberInfo",
    "MemberSet",
    "NodeStatus",
    "NotLeader",
    "Op",
    "PutResult",
    "RangeResult",
    "ResponseHeader",
    "StorageError",
    "SyncClient",
    "SyncClientApi",
    "Timeout",
    "TxnResult",
    "Unavailable",
    "WatchEvent",
    "WriteResult",
]
