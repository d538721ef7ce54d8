"""The one API of dengine, whichever way it is reached, and its result types.

`Engine` (embedded, asyncio), `Client` (remote, asyncio) and `SyncClient` (remote,
blocking) offer the same key-value calls with the same signatures and results: the
`ClientApi` protocol (the async two) and `SyncClientApi` (the same, blocking). `mypy src`
checks that each class conforms (see `dengine/__init__.py`); so does a test.

The result types are shared by the node (which produces them), the server and the
clients (which carry them over the wire), so that `engine.status()` and
`await client.status()` return the same `NodeStatus`. This module imports nothing of
dengine: every layer may use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from dengine.proto.common_pb2 import WriteCommand

Key = bytes | str
"""A key or value: bytes, or a str taken as UTF-8."""


@dataclass(frozen=True)
class WriteResult:
    """The outcome of one applied command: its log index, whether it succeeded, and the
    value some commands return (b"" for put and delete)."""

    index: int
    succeeded: bool = True
    value: bytes = b""


@dataclass(frozen=True)
class Leader:
    """The leader as a node knows it: id 0 means no leader known; `address` is its client
    address ("" when not known yet)."""

    id: int
    address: str
    term: int


@dataclass(frozen=True)
class NodeStatus:
    """One node's view of itself and the cluster (`Engine.status()`, the Status RPC)."""

    node_id: int
    cluster_id: str
    role: str  # "leader" | "follower" | "candidate" | "learner" | "removed" ...
    term: int
    leader_id: int  # 0: no leader known
    commit_index: int
    applied_index: int
    first_log_index: int
    last_log_index: int
    voters: dict[int, str] = field(default_factory=dict)  # id -> peer address
    learners: dict[int, str] = field(default_factory=dict)
    snapshot_index: int = 0  # the log starts after this index (0: never compacted)
    leader_address: str = ""  # the leader's client address ("" = not known)
    endpoint: str = ""  # the address the client asked ("" for the embedded engine)
    native_address: str = ""  # its native client listener ("" = none)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MemberInfo:
    """One member of the cluster configuration, as the leader (or the asked node) sees it."""

    id: int
    address: str  # peer address (Raft traffic)
    client_address: str  # "" when not known yet
    role: str  # "voter" | "learner"
    match_index: int  # highest log index known replicated on it (0 = unknown)
    is_leader: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ClientApi(Protocol):
    """The key-value API of `Engine` and `Client` (d-engine's `ClientApi` trait).

    Keys and values are bytes (a str is encoded as UTF-8). `consistency` is
    "linearizable" (default), "lease" or "eventual". `timeout` is the call's deadline in
    seconds (None: the default of the engine or client). Errors are `dengine.errors`
    exceptions; a write that raises `Timeout` may still be applied, any other error means
    it was not.
    """

    async def put(self, key: Key, value: Key, *, timeout: float | None = None) -> None: ...

    async def delete(self, key: Key, *, timeout: float | None = None) -> None: ...

    async def write(
        self, commands: Sequence[WriteCommand], *, timeout: float | None = None
    ) -> list[WriteResult]: ...

    async def get(
        self, key: Key, consistency: str = "linearizable", *, timeout: float | None = None
    ) -> bytes | None: ...

    async def get_many(
        self, keys: Sequence[Key], consistency: str = "linearizable", *,
        timeout: float | None = None,
    ) -> list[bytes | None]: ...

    async def leader(self, *, timeout: float | None = None) -> Leader: ...


class SyncClientApi(Protocol):
    """`ClientApi`, blocking (`SyncClient`)."""

    def put(self, key: Key, value: Key, *, timeout: float | None = None) -> None: ...

    def delete(self, key: Key, *, timeout: float | None = None) -> None: ...

    def write(
        self, commands: Sequence[WriteCommand], *, timeout: float | None = None
    ) -> list[WriteResult]: ...

    def get(
        self, key: Key, consistency: str = "linearizable", *, timeout: float | None = None
    ) -> bytes | None: ...

    def get_many(
        self, keys: Sequence[Key], consistency: str = "linearizable", *,
        timeout: float | None = None,
    ) -> list[bytes | None]: ...

    def leader(self, *, timeout: float | None = None) -> Leader: ...
