"""Exceptions raised by dengine, each with a stable string code (also used on the wire)."""

from __future__ import annotations


class DengineError(Exception):
    """Base class of every dengine error. `code` is stable and machine-readable."""

    code = "INTERNAL"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.__class__.__doc__ or self.code)
        self.message = message or (self.__class__.__doc__ or self.code).strip()


class InvalidRequest(DengineError):
    """The request is malformed or breaks a limit (empty key, oversized value, ...)."""

    code = "INVALID_REQUEST"


class NotLeader(DengineError):
    """This node is not the leader; `leader_id`/`leader_address` name the known leader, if any."""

    code = "NOT_LEADER"

    def __init__(
        self, message: str = "", leader_id: int = 0, leader_address: str = ""
    ) -> None:
        super().__init__(message or f"not the leader (known leader: {leader_id or 'none'})")
        self.leader_id = leader_id
        self.leader_address = leader_address


class Unavailable(DengineError):
    """The cluster cannot serve the request now (no leader, no quorum, node stopping)."""

    code = "UNAVAILABLE"


class Overloaded(Unavailable):
    """The node is over one of its load limits and refused the request without processing
    it (nothing was proposed or applied): retry later, with backoff."""

    code = "OVERLOADED"


class Timeout(DengineError):
    """The deadline passed. For a write, the outcome is unknown: it may still be applied."""

    code = "TIMEOUT"


class LeadershipLost(Timeout):
    """The leader lost its leadership and no leader committed or overwrote the write
    within an election timeout: its outcome is unknown (it may still be committed, or
    overwritten). Not retried."""

    code = "LEADERSHIP_LOST"


class StorageError(DengineError):
    """A storage operation failed (I/O error, unexpected state)."""

    code = "STORAGE"


class CorruptionError(StorageError):
    """On-disk data is corrupt before valid data; the node refuses to start rather than lose it."""

    code = "CORRUPTION"

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"{path}: corrupt at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class ClusterMismatch(DengineError):
    """The data dir, or a peer, belongs to another cluster or node id."""

    code = "CLUSTER_MISMATCH"


class ConfigError(DengineError):
    """The configuration (flags or TOML file) is invalid."""

    code = "CONFIG"


class KvError(DengineError):
    """An error of etcd's key-value API: `grpc_code` is the grpc.StatusCode name etcd
    answers it with (`OUT_OF_RANGE`, ...), `message` etcd's own text (clients match on
    both). The request changed nothing."""

    code = "KV_ERROR"

    def __init__(self, grpc_code: str, message: str) -> None:
        super().__init__(message)
        self.grpc_code = grpc_code

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KvError) and (self.grpc_code, self.message) == (
            other.grpc_code, other.message)

    def __hash__(self) -> int:
        return hash((self.grpc_code, self.message))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.grpc_code!r}, {self.message!r})"


COMPACTED_MESSAGE = "etcdserver: mvcc: required revision has been compacted"
FUTURE_REVISION_MESSAGE = "etcdserver: mvcc: required revision is a future revision"


class Compacted(KvError):
    """A read (or a compaction, or a watch) at a revision the history no longer holds.
    `compact_revision`: the store's compaction point when known (a watch's: etcd's
    WatchResponse.compact_revision; a watch may start there again, not below), else 0."""

    code = "COMPACTED"

    def __init__(self, grpc_code: str = "OUT_OF_RANGE",
                 message: str = COMPACTED_MESSAGE, compact_revision: int = 0) -> None:
        super().__init__(grpc_code, message)
        self.compact_revision = compact_revision


class FutureRevision(KvError):
    """A read (or a compaction) at a revision above the store's current one."""

    code = "FUTURE_REVISION"

    def __init__(self, grpc_code: str = "OUT_OF_RANGE",
                 message: str = FUTURE_REVISION_MESSAGE) -> None:
        super().__init__(grpc_code, message)


LEASE_NOT_FOUND_MESSAGE = "etcdserver: requested lease not found"


class LeaseNotFound(KvError):
    """The lease is unknown: never granted, revoked, or expired."""

    code = "LEASE_NOT_FOUND"

    def __init__(self, grpc_code: str = "NOT_FOUND",
                 message: str = LEASE_NOT_FOUND_MESSAGE) -> None:
        super().__init__(grpc_code, message)


def kv_error(grpc_code: str, message: str) -> KvError:
    """The KvError for etcd's `message` (its subclass when it has one)."""
    if message == COMPACTED_MESSAGE:
        return Compacted(grpc_code, message)
    if message == FUTURE_REVISION_MESSAGE:
        return FutureRevision(grpc_code, message)
    if message == LEASE_NOT_FOUND_MESSAGE:
        return LeaseNotFound(grpc_code, message)
    return KvError(grpc_code, message)


ERRORS_BY_CODE: dict[str, type[DengineError]] = {
    cls.code: cls
    for cls in (
        DengineError,
        InvalidRequest,
        NotLeader,
        Unavailable,
        Overloaded,
        Timeout,
        LeadershipLost,
        StorageError,
        CorruptionError,
        ClusterMismatch,
        ConfigError,
    )
}
