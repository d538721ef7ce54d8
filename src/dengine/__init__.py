"""dengine: a strongly consistent, Raft-replicated key-value engine for coordination data.

Public API: `Engine` (embedded, asyncio), `Client` / `SyncClient` (remote, gRPC),
`Consistency`, and the errors in `dengine.errors`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dengine.errors import (
    ClusterMismatch,
    ConfigError,
    CorruptionError,
    DengineError,
    InvalidRequest,
    NotLeader,
    StorageError,
    Timeout,
    Unavailable,
)

__version__ = "0.1.0"

# Engine and clients pull in asyncio/gRPC machinery; load them on first use.
_LAZY = {
    "Engine": "dengine.node.engine",
    "Consistency": "dengine.node.engine",
    "Client": "dengine.client",
    "SyncClient": "dengine.client",
}

if TYPE_CHECKING:  # pragma: no cover
    from dengine.client import Client, SyncClient
    from dengine.node.engine import Consistency, Engine


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dengine' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = [
    "Client",
    "ClusterMismatch",
    "ConfigError",
    "Consistency",
    "CorruptionError",
    "DengineError",
    "Engine",
    "InvalidRequest",
    "NotLeader",
    "StorageError",
    "SyncClient",
    "Timeout",
    "Unavailable",
]
