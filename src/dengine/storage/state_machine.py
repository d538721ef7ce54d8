"""The `StateMachine` contract (what the node calls to apply, read and snapshot) and an
in-memory implementation.

Methods are plain and synchronous; the node decides which thread calls them. Applying a
committed entry is deterministic and never fails for input reasons: a command that does
not decode is recorded as a failed `ApplyResult`, the same on every replica.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from itertools import count
from typing import Protocol, TypeVar, overload

from dengine.errors import KvError, StorageError
from dengine.kv.codec import (
    OP_BATCH,
    OP_CONFIG,
    OP_DELETE,
    OP_INSERT,
    OP_NOOP,
    OP_REJECTED,
    SHAPES,
    batch_ops,
    decode_entry,
)
from dengine.kv.mvcc import META_SIZE, MvccStore
from dengine.kv.store import ApplyResult, Op
from dengine.proto import Entry, LogId, Membership, SnapshotMetadata
from dengine.storage import kvfile
from dengine.storage.fileio import FileIO, RealDisk

__all__ = [
    "OP_CONFIG",
    "OP_DELETE",
    "OP_INSERT",
    "OP_LAST_APPLIED",
    "OP_NOOP",
    "OP_REJECTED",
    "OP_SNAPSHOT_META",
    "ApplyResult",
    "InsertResults",
    "MemoryStateMachine",
    "Op",
    "StateMachine",
    "apply_to_store",
    "check_snapshot_point",
    "copy_log_id",
    "current_values",
    "image_of",
    "plan_chunk",
    "store_of",
]

T = TypeVar("T")


class StateMachine(Protocol):
    """What the node runtime calls (`dengine.node`), and nothing else.

    Applies need not be durable when `apply_chunk` returns: the Raft log holds what the
    state machine has not synced, and the node keeps the log above `durable_index()`.
    """

    def get(self, key: bytes) -> bytes | None: ...
    def read(self, fn: Callable[[MvccStore], T]) -> T: ...
    def items(self) -> dict[bytes, bytes]: ...
    def image(self) -> kvfile.StoreImage: ...
    def apply_chunk(self, entries: Sequence[Entry]) -> Sequence[ApplyResult]: ...
    def last_applied(self) -> LogId: ...
    def durable_index(self) -> int: ...
    def sync(self) -> None: ...
    def checkpoint_headroom(self) -> int: ...
    def membership(self) -> Membership | None: ...
    def snapshot_metadata(self) -> SnapshotMetadata | None: ...
    def apply_snapshot_from_file(self, metadata: SnapshotMetadata, directory: str) -> None: ...
    def close(self) -> None: ...


# What applying an entry did, as recorded in the file state machine's WAL: the kv ops
# (OP_NOOP..OP_REJECTED and the etcd requests 7-12, dengine.kv.codec) and the state
# machine's own bookkeeping.
OP_LAST_APPLIED = 5  # persist_last_applied: (index, term) only
OP_SNAPSHOT_META = 6  # persist_last_snapshot_metadata: value = encoded SnapshotMetadata

_new = object.__new__


def _result(index: int, revision: int) -> ApplyResult:
    """A succeeded result without a response. A frozen dataclass's __init__ costs ~1 us
    per entry: set the two fields only, the others keep the class defaults."""
    result = _new(ApplyResult)
    fields = result.__dict__
    fields["index"] = index
    fields["revision"] = revision
    return result


class InsertResults(Sequence[ApplyResult]):
    """The results of a chunk of plain inserts, made when read: entry i has log index
    `indexes[i]` and made revision `first_revision + i`. Only a node with writes waiting
    on the chunk reads them (the leader that proposed them): a follower's apply then
    makes no object per entry (~0.3 us per entry and replica on the put's path)."""

    __slots__ = ("_first", "_indexes", "_items")
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, indexes: list[int], first_revision: int) -> None:
        self._indexes = indexes
        self._first = first_revision
        self._items: list[ApplyResult] | None = None  # made on the first indexed read

    def __len__(self) -> int:
        return len(self._indexes)

    def __iter__(self) -> Iterator[ApplyResult]:
        return map(_result, self._indexes, count(self._first))

    @overload
    def __getitem__(self, i: int) -> ApplyResult: ...
    @overload
    def __getitem__(self, i: slice) -> list[ApplyResult]: ...

    def __getitem__(self, i: int | slice) -> ApplyResult | list[ApplyResult]:
        """As a list's: the results are made once, on the first indexed read (the leader
        resolving its batches reads each result two or three times)."""
        items = self._items
        if items is None:
            items = self._items = list(self)
        return items[i]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return repr(list(self))

    def __add__(self, other: Sequence[ApplyResult]) -> list[ApplyResult]:
        return [*self, *other]

    def __radd__(self, other: Sequence[ApplyResult]) -> list[ApplyResult]:
        return [*other, *self]


def apply_to_store(
    store: MvccStore, ops: Sequence[Op]
) -> tuple[list[ApplyResult], Membership | None]:
    """Apply decoded ops in order: one result per op, and the last membership among them.
    Deterministic, never raises for input: what `MvccStore.apply_ops` does on replay."""
    results: list[ApplyResult] = []
    put = results.append
    membership = None
    apply = store.apply
    for index, _, op, key, value in ops:
        if op == OP_INSERT:
            store.insert_all((key,), (value,))
            put(_result(index, store.revision))
            continue
        if op == OP_CONFIG:
            membership = Membership.FromString(value)
        revision, response = apply(op, key, value)
        if response is None:
            put(_result(index, revision))
        else:
            put(_response_result(index, revision, response))
    return results, membership


def _response_result(index: int, revision: int, response: object) -> ApplyResult:
    """`ApplyResult(index, succeeded, revision=revision, response=response)`, succeeded
    unless `response` is a KvError, its fields set as `_result` sets them (~1.3 -> 0.2 us
    per etcd request and replica)."""
    result = _new(ApplyResult)
    fields = result.__dict__
    fields["index"] = index
    fields["revision"] = revision
    fields["response"] = response
    if isinstance(response, KvError):
        fields["succeeded"] = False
    return result


def image_of(store: MvccStore) -> kvfile.StoreImage:
    """A copy of the store's persistent image (under the lock that keeps it still: C-level
    copies only, no Python work per key or change)."""
    return kvfile.StoreImage(store.revision, store.compact_revision, store.copy_packed(),
                             store.copy_changes(), store.leases.packed(),
                             store.auth.image())


def store_of(image: kvfile.StoreImage) -> MvccStore:
    return MvccStore.restore(image.revision, image.compact_revision, image.items.items(),
                             image.changes, image.leases, image.auth)


def current_values(store: MvccStore) -> dict[bytes, bytes]:
    """key -> current value of every live key (tests and tools)."""
    return {key: packed[META_SIZE:] for key, packed in store.items_packed()}


def plan_chunk(entries: Sequence[Entry], last_applied: int) -> list[Op]:
    """Decode a chunk into ops. Raises StorageError before any change on a bad index order."""
    ops: list[Op] = []
    put = ops.append
    prev = last_applied
    get_shape = SHAPES.get
    for entry in entries:
        index = entry.index
        if index <= prev:
            raise StorageError(
                f"apply_chunk: entry index {index} is not above {prev} "
                f"({'last applied' if prev == last_applied else 'the previous entry'})"
            )
        prev = index
        cmd = entry.payload.command
        n = len(cmd)
        shape = get_shape(cmd[:5] if n > 129 else cmd[:4])
        if shape is None or shape[0] != n or (parts := shape[1](cmd))[1] != shape[2]:
            op, key, value = decode_entry(entry)
            if op == OP_BATCH:  # each of its commands is an op at this index
                ops.extend((index, entry.term, *item) for item in batch_ops(value))
            else:
                put((index, entry.term, op, key, value))
        else:
            put((index, entry.term, shape[3], parts[0], parts[2]))
    return ops


def check_snapshot_point(last_applied: LogId, last_included: LogId) -> None:
    """A snapshot must describe exactly the applied state: refuse any other point."""
    if (last_included.index, last_included.term) != (last_applied.index, last_applied.term):
        raise StorageError(
            f"snapshot requested at ({last_included.term}, {last_included.index}) but the state "
            f"machine is at ({last_applied.term}, {last_applied.index})"
        )


def copy_log_id(log_id: LogId) -> LogId:
    return LogId(index=log_id.index, term=log_id.term)


class MemoryStateMachine:
    """A `StateMachine` kept in memory (tests, simulator). Snapshots go through `fileio`."""

    def __init__(self, *, fileio: FileIO | None = None) -> None:
        self._io = fileio or RealDisk()
        self._lock = threading.RLock()
        self._store = MvccStore()
        self._last_applied = LogId()
        self._membership: Membership | None = None
        self._snapshot: SnapshotMetadata | None = None

    def get(self, key: bytes) -> bytes | None:
        return self._store.get(key)

    def read(self, fn: Callable[[MvccStore], T]) -> T:
        """`fn(store)` under the lock (applies wait)."""
        with self._lock:
            return fn(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def items(self) -> dict[bytes, bytes]:
        """key -> current value, a copy (tests and tools)."""
        with self._lock:
            return current_values(self._store)

    def image(self) -> kvfile.StoreImage:
        """A copy of the store's image (snapshots)."""
        with self._lock:
            return image_of(self._store)

    def apply_chunk(self, entries: Sequence[Entry]) -> list[ApplyResult]:
        with self._lock:
            ops = plan_chunk(entries, self._last_applied.index)
            if not ops:
                return []
            results, membership = apply_to_store(self._store, ops)
            if membership is not None:
                self._membership = membership
            self._last_applied = LogId(index=ops[-1][0], term=ops[-1][1])
            return results

    def last_applied(self) -> LogId:
        return copy_log_id(self._last_applied)

    def persist_last_applied(self, log_id: LogId) -> None:
        self._last_applied = copy_log_id(log_id)

    def membership(self) -> Membership | None:
        return self._membership

    def snapshot_metadata(self) -> SnapshotMetadata | None:
        return self._snapshot

    def persist_last_snapshot_metadata(self, metadata: SnapshotMetadata) -> None:
        self._snapshot = metadata

    def generate_snapshot_data(self, directory: str, last_included: LogId) -> bytes:
        with self._lock:
            check_snapshot_point(self._last_applied, last_included)
            image = image_of(self._store)
        checksum = kvfile.write_snapshot(
            self._io, directory, image, last_included, self._membership
        )
        self._snapshot = SnapshotMetadata(
            last_included=copy_log_id(last_included), checksum=checksum,
            membership=self._membership,
        )
        return checksum

    def apply_snapshot_from_file(self, metadata: SnapshotMetadata, directory: str) -> None:
        data = kvfile.read_snapshot(self._io, directory, metadata)
        store = store_of(data.image)
        with self._lock:
            self._store = store
            self._last_applied = data.last_included
            self._membership = data.membership
            self._snapshot = metadata

    def durable_index(self) -> int:
        """In memory, what is applied is as durable as it will get."""
        return self._last_applied.index

    def sync(self) -> None:
        """Nothing to persist in memory."""

    def checkpoint_headroom(self) -> int:
        """No WAL to checkpoint: unbounded."""
        return 1 << 62

    def close(self) -> None:
        """Nothing to release in memory."""

    def reset(self) -> None:
        with self._lock:
            self._store = MvccStore()
            self._last_applied = LogId()
            self._membership = None
            self._snapshot = None
