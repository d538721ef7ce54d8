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
import enum
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, Union

if TYPE_CHECKING:  # pragma: no cover
    from dengine.kv.ops import Compare, Op
    from dengine.proto.common_pb2 import WriteCommand

Key = bytes | str
"""A key or value: bytes, or a str taken as UTF-8."""


@dataclass(frozen=True)
class WriteResult:
    """The outcome of one applied command: its log index (the entry's that carried it:
    the commands of a batch entry share one), whether it succeeded, the
    value some commands return (b"" for put and delete), the store revision after it, and
    for an etcd request (put, delete_range, txn, compaction) etcd's response message, or
    the `KvError` it failed with (`succeeded` False)."""

    index: int
    succeeded: bool = True
    value: bytes = b""
    revision: int = 0
    response: Any = None


@dataclass(frozen=True)
class Leader:
    """The leader as a node knows it: id 0 means no leader known; `address` is its client
    address ("" when not known yet)."""

    id: int
    address: str
    term: int


@dataclass(frozen=True)
class MemberSet:
    """The cluster configuration a node has applied: voters and learners, each id -> peer
    address (`engine.membership_changes()`, `client.membership_changes()`)."""

    voters: dict[int, str]
    learners: dict[int, str] = field(default_factory=dict)


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


# ---- etcd's data model (docs/etcd-model.md) ------------------------------------------------


@dataclass(frozen=True)
class ResponseHeader:
    """What every etcd answer carries: the answering member, its Raft term and the store
    revision as of the answer (the current one, also for a read at an older revision).
    Inside a txn's responses only `revision` is set, as etcd does."""

    cluster_id: int = 0
    member_id: int = 0
    revision: int = 0
    raft_term: int = 0


@dataclass(frozen=True)
class KeyValue:
    """One key as stored at some revision: `create_revision` (the revision that created
    it since its last delete), `mod_revision` (its last change), `version` (1 on create,
    +1 per put) and `lease` (0: none). With `keys_only`, `value` is b""."""

    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int = 0


@dataclass(frozen=True)
class RangeResult:
    """A range read: the keys found (in the order asked), whether more keys are in the
    range than `limit` let through, how many keys the range holds (at that revision), and
    the store's current revision."""

    kvs: list[KeyValue]
    more: bool
    count: int
    revision: int
    header: ResponseHeader = field(default_factory=ResponseHeader, compare=False)


@dataclass(frozen=True)
class PutResult:
    """A put: the revision it made, and the key before it (with `prev_kv=True`; None when
    the key was absent or not asked for)."""

    revision: int
    prev_kv: KeyValue | None = None
    header: ResponseHeader = field(default_factory=ResponseHeader, compare=False)

    @classmethod
    def of_revision(cls, revision: int) -> PutResult:
        """`PutResult(revision)`, made without the frozen dataclass's `__init__` and its
        new empty header (~1.5 us per put, a plain put's hot path; headers are frozen)."""
        return cls._fast(revision, _NO_HEADER)

    @classmethod
    def with_header(cls, revision: int, cluster_id: int, member_id: int, raft_term: int
                    ) -> PutResult:
        """`PutResult(revision, header=ResponseHeader(cluster_id, member_id, revision,
        raft_term))`, made as `with_ids` makes it."""
        return cls.with_ids(revision, (cluster_id, member_id, raft_term))

    @classmethod
    def with_ids(cls, revision: int, ids: tuple[int, int, int]) -> PutResult:
        """`with_header(revision, *ids)` without the frozen dataclasses' `__init__`, its
        header made when first read (`__getattr__`): the embedded put's hot path, whose
        callers mostly read the revision only (~0.5 -> 0.2 us per put)."""
        result = object.__new__(cls)
        fields = result.__dict__
        fields["revision"] = revision
        fields["prev_kv"] = None
        fields["_header_ids"] = ids
        return result

    if not TYPE_CHECKING:  # (typed, it would give every unknown attribute a type)
        def __getattr__(self, name: str) -> ResponseHeader:
            """The header of a result made by `with_ids`, made on its first read."""
            fields = self.__dict__
            if name != "header" or "_header_ids" not in fields:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            cluster_id, member_id, raft_term = fields["_header_ids"]
            header = object.__new__(ResponseHeader)
            hfields = header.__dict__
            hfields["cluster_id"] = cluster_id
            hfields["member_id"] = member_id
            hfields["revision"] = fields["revision"]
            hfields["raft_term"] = raft_term
            fields["header"] = header
            return header

    @classmethod
    def _fast(cls, revision: int, header: ResponseHeader) -> PutResult:
        """A PutResult without prev_kv, its fields set without the frozen `__init__`."""
        result = object.__new__(cls)
        fields = result.__dict__
        fields["revision"] = revision
        fields["prev_kv"] = None
        fields["header"] = header
        return result


_NO_HEADER = ResponseHeader()


@dataclass(frozen=True)
class DeleteResult:
    """A delete_range: how many keys it deleted, those keys as they were (with
    `prev_kv=True`), and the store revision after it (unchanged when nothing was deleted)."""

    deleted: int
    prev_kvs: list[KeyValue]
    revision: int
    header: ResponseHeader = field(default_factory=ResponseHeader, compare=False)


@dataclass(frozen=True)
class TxnResult:
    """A transaction: whether its compares held (the success branch ran), the responses
    of the branch that ran (one per op, in order: RangeResult, PutResult, DeleteResult or
    a nested TxnResult) and the store revision after it (one for the whole txn)."""

    succeeded: bool
    responses: list[OpResult]
    revision: int
    header: ResponseHeader = field(default_factory=ResponseHeader, compare=False)


@dataclass(frozen=True)
class LeaseGrant:
    """A granted lease: its id and the TTL granted (seconds; at least the cluster's
    minimum TTL, which may be above the one asked)."""

    id: int
    ttl: int


@dataclass(frozen=True)
class LeaseInfo:
    """A lease as the leader sees it: `ttl` the seconds left (-1: unknown lease, expired
    or revoked), `granted_ttl` the TTL it was granted with, `keys` the keys attached to it
    (asked with keys=True)."""

    id: int
    ttl: int
    granted_ttl: int = 0
    keys: list[bytes] = field(default_factory=list)


OpResult = Union[RangeResult, PutResult, DeleteResult, TxnResult]  # noqa: UP007
"""The response of one op of a transaction."""


class EventType(enum.IntEnum):
    """The kind of a watch event (etcd's mvccpb.Event.EventType)."""

    PUT = 0
    DELETE = 1


@dataclass(frozen=True)
class WatchEvent:
    """One change a watch delivers: a PUT (`kv`: the key's new version) or a DELETE
    (`kv`: the key, `mod_revision` the delete's revision, the rest zero), with the version
    before the change in `prev_kv` when the watch asked for it (None when the key did not
    exist or that version was compacted away)."""

    type: EventType
    kv: KeyValue
    prev_kv: KeyValue | None = None

    @property
    def revision(self) -> int:
        """The revision of the change (`kv.mod_revision`)."""
        return self.kv.mod_revision


WatchFilter = str
"""A watch filter: "noput" (no PUT events) or "nodelete" (no DELETE events)."""


class WatchStream(AsyncIterator[WatchEvent]):
    """What `watch` returns: an async iterator of `WatchEvent`s in revision order, exactly
    once each. `revision`: the revision it is current to (every change up to it has been
    delivered or did not match). `close()` (or `async with`) ends it."""

    revision: int

    async def close(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    async def __aenter__(self) -> WatchStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class SyncWatchStream(Iterator[WatchEvent]):
    """`WatchStream`, blocking (`SyncClient.watch`)."""

    revision: int

    def close(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def __enter__(self) -> SyncWatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

SortTarget = str
"""A range's sort target: "key", "version", "create", "mod" or "value"."""
SortOrder = str | None
"""A range's sort order: None (etcd's NONE: by key), "ascend" or "descend"."""


class ClientApi(Protocol):
    """The key-value API of `Engine` and `Client` (d-engine's `ClientApi` trait).

    Keys and values are bytes (a str is encoded as UTF-8). `consistency` is
    "linearizable" (default), "lease" or "eventual". `timeout` is the call's deadline in
    seconds (None: the default of the engine or client). Errors are `dengine.errors`
    exceptions; a write that raises `Timeout` may still be applied, any other error means
    it was not.

    The data model is etcd v3's (docs/etcd-model.md): `put` returns the revision it made,
    `get_kv` and `range` read keys with their revisions (at the current revision or an
    older one, until compacted), `delete_range` deletes a range, `txn` runs compares then
    one branch of ops (`dengine.Compare`, `dengine.Op`) as one revision, `compact` drops
    the history below a revision. etcd's own errors are `dengine.errors.KvError`s
    (`Compacted`, `FutureRevision`, ...) with etcd's message. `watch` streams the
    changes of a key or range from a revision (0: from now) in revision order, exactly
    once each (a client's watch resumes by itself across failures); a start below the
    history raises `Compacted` (its `compact_revision`) when iterated.
    """

    async def put(
        self, key: Key, value: Key, *, prev_kv: bool = False, lease: int = 0,
        timeout: float | None = None,
    ) -> PutResult: ...

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

    async def get_kv(
        self, key: Key, *, revision: int = 0, consistency: str = "linearizable",
        timeout: float | None = None,
    ) -> KeyValue | None: ...

    async def range(
        self, key: Key, range_end: Key | None = None, *, prefix: bool = False,
        from_key: bool = False, limit: int = 0, revision: int = 0,
        sort_target: SortTarget = "key", sort_order: SortOrder = None,
        keys_only: bool = False, count_only: bool = False,
        consistency: str = "linearizable", timeout: float | None = None,
    ) -> RangeResult: ...

    async def delete_range(
        self, key: Key, range_end: Key | None = None, *, prefix: bool = False,
        from_key: bool = False, prev_kv: bool = False, timeout: float | None = None,
    ) -> DeleteResult: ...

    async def txn(
        self, compare: Sequence[Compare] = (), success: Sequence[Op] = (),
        failure: Sequence[Op] = (), *, timeout: float | None = None,
    ) -> TxnResult: ...

    async def compare_and_swap(
        self, key: Key, expected: Key | None, new: Key, *, timeout: float | None = None
    ) -> bool: ...

    async def compact(
        self, revision: int, *, physical: bool = False, timeout: float | None = None
    ) -> None: ...

    # The Raft group's own events: the current value, then each change.
    def leader_changes(self) -> AsyncIterator[Leader]: ...

    def membership_changes(self) -> AsyncIterator[MemberSet]: ...

    def watch(
        self, key: Key, range_end: Key | None = None, *, prefix: bool = False,
        start_revision: int = 0, prev_kv: bool = False, filters: Sequence[WatchFilter] = (),
        progress_notify: bool = False,
    ) -> WatchStream: ...

    async def lease_grant(self, ttl: int, *, lease_id: int = 0,
                          timeout: float | None = None) -> LeaseGrant: ...

    async def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> None: ...

    async def lease_keepalive_once(self, lease_id: int, *,
                                   timeout: float | None = None) -> int: ...

    async def lease_time_to_live(self, lease_id: int, *, keys: bool = False,
                                 timeout: float | None = None) -> LeaseInfo: ...

    async def leases(self, *, timeout: float | None = None) -> list[int]: ...


class SyncClientApi(Protocol):
    """`ClientApi`, blocking (`SyncClient`)."""

    def put(
        self, key: Key, value: Key, *, prev_kv: bool = False, lease: int = 0,
        timeout: float | None = None,
    ) -> PutResult: ...

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

    def get_kv(
        self, key: Key, *, revision: int = 0, consistency: str = "linearizable",
        timeout: float | None = None,
    ) -> KeyValue | None: ...

    def range(
        self, key: Key, range_end: Key | None = None, *, prefix: bool = False,
        from_key: bool = False, limit: int = 0, revision: int = 0,
        sort_target: SortTarget = "key", sort_order: SortOrder = None,
        keys_only: bool = False, count_only: bool = False,
        consistency: str = "linearizable", timeout: float | None = None,
    ) -> RangeResult: ...

    def delete_range(
        self, key: Key, range_end: Key | None = None, *, prefix: bool = False,
        from_key: bool = False, prev_kv: bool = False, timeout: float | None = None,
    ) -> DeleteResult: ...

    def txn(
        self, compare: Sequence[Compare] = (), success: Sequence[Op] = (),
        failure: Sequence[Op] = (), *, timeout: float | None = None,
    ) -> TxnResult: ...

    def compare_and_swap(
        self, key: Key, expected: Key | None, new: Key, *, timeout: float | None = None
    ) -> bool: ...

    def compact(
        self, revision: int, *, physical: bool = False, timeout: float | None = None
    ) -> None: ...

    def leader_changes(self) -> Iterator[Leader]: ...

    def membership_changes(self) -> Iterator[MemberSet]: ...

    def watch(
        self, key: Key, range_end: Key | None = None, *, prefix: bool = False,
        start_revision: int = 0, prev_kv: bool = False, filters: Sequence[WatchFilter] = (),
        progress_notify: bool = False,
    ) -> SyncWatchStream: ...

    def lease_grant(self, ttl: int, *, lease_id: int = 0,
                    timeout: float | None = None) -> LeaseGrant: ...

    def lease_revoke(self, lease_id: int, *, timeout: float | None = None) -> None: ...

    def lease_keepalive_once(self, lease_id: int, *, timeout: float | None = None) -> int: ...

    def lease_time_to_live(self, lease_id: int, *, keys: bool = False,
                           timeout: float | None = None) -> LeaseInfo: ...

    def leases(self, *, timeout: float | None = None) -> list[int]: ...
