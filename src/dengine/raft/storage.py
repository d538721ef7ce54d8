"""The Raft log contract the consensus core reads through, and an in-memory implementation.

The core owns this contract (as etcd's raft owns its `Storage` interface): storage
implements it. `dengine.storage.FileRaftLog` (file-backed) and `MemoryRaftLog` (tests,
simulator) both satisfy `LogStorage`. `MemoryRaftLog` holds every entry; `FileRaftLog`
holds the terms, the last few thousand entries appended, and reads older ones back from
its segments (a lagging follower, restart recovery).
"""

from __future__ import annotations

from typing import Protocol

from dengine.errors import StorageError
from dengine.proto import Entry, HardState, SnapshotMetadata


class LogCompacted(StorageError):
    """The requested index is below the first index: it was compacted into a snapshot."""

    code = "LOG_COMPACTED"


class LogUnavailable(StorageError):
    """The requested index is above the last index."""

    code = "LOG_UNAVAILABLE"


def position(index: int, offset: int, last: int) -> int:
    """Where entry `index` is in a log holding (offset, last] after a snapshot at `offset`:
    0 for offset + 1, ..., -1 for the snapshot index itself (whose term the log keeps);
    LogCompacted below `offset`, LogUnavailable above `last`."""
    if index < offset:
        raise LogCompacted(f"index {index} is compacted (first index {offset + 1})")
    if index > last:
        raise LogUnavailable(f"index {index} is beyond the last index {last}")
    return index - offset - 1


def check_range(lo: int, hi: int, offset: int, last: int) -> None:
    """The entries [lo, hi) are in a log holding (offset, last]: LogCompacted if `lo` is
    at or below the snapshot index `offset`, LogUnavailable if `hi - 1` is above `last`."""
    if lo <= offset:
        raise LogCompacted(f"index {lo} is compacted (first index {offset + 1})")
    if hi > last + 1:
        raise LogUnavailable(f"index {hi - 1} is beyond the last index {last}")


def compaction_needed(index: int, snapshot: SnapshotMetadata | None, offset: int,
                      last: int) -> bool:
    """Whether `compact_prefix(index, snapshot)` of a log holding (offset, last] has work
    to do: not at or below `offset`; LogUnavailable above `last`, StorageError when
    `snapshot` does not cover `index`."""
    if index <= offset:
        return False
    if index > last:
        raise LogUnavailable(f"cannot compact to {index}: last index {last}")
    if snapshot is not None and snapshot.last_included.index < index:
        raise StorageError(
            f"cannot compact to {index} with a snapshot at {snapshot.last_included.index}"
        )
    return True


def limit_size(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """The longest prefix of `entries` within `max_bytes` (encoded sizes), but at least
    one entry: the contract of `LogStorage.entries`."""
    if max_bytes is None or len(entries) <= 1:
        return entries
    size = 0
    for n, entry in enumerate(entries):
        size += entry.ByteSize()
        if size > max_bytes and n > 0:
            return entries[:n]
    return entries


class LogStorage(Protocol):
    """What the consensus core reads (all in memory) and the driver writes (durably)."""

    def first_index(self) -> int: ...
    def last_index(self) -> int: ...
    def term(self, index: int) -> int: ...
    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]: ...
    def hard_state(self) -> HardState: ...
    def snapshot_metadata(self) -> SnapshotMetadata | None: ...
    def config_indexes(self) -> list[int]:
        """Indexes of the config (membership) entries in the log, ascending."""
        ...

    def append(self, entries: list[Entry]) -> None: ...
    def truncate_suffix(self, index: int) -> None: ...
    def compact_prefix(self, index: int, snapshot: SnapshotMetadata | None = None) -> None: ...
    def set_hard_state(self, hs: HardState) -> None: ...
    def install_snapshot(self, metadata: SnapshotMetadata) -> None: ...


class MemoryRaftLog:
    """A `LogStorage` kept in memory only: for the simulator and unit tests."""

    def __init__(self) -> None:
        self._entries: list[Entry] = []  # _entries[i].index == self._offset + 1 + i
        self._offset = 0  # index of the last compacted entry (snapshot index)
        self._offset_term = 0
        self._hard_state = HardState()
        self._snapshot: SnapshotMetadata | None = None

    def first_index(self) -> int:
        return self._offset + 1

    def last_index(self) -> int:
        return self._offset + len(self._entries)

    def term(self, index: int) -> int:
        n = position(index, self._offset, self.last_index())
        return int(self._entries[n].term) if n >= 0 else self._offset_term

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        check_range(lo, hi, self._offset, self.last_index())
        return limit_size(self._entries[lo - self._offset - 1 : hi - self._offset - 1], max_bytes)

    def config_indexes(self) -> list[int]:
        return [int(e.index) for e in self._entries if e.payload.HasField("config")]

    def hard_state(self) -> HardState:
        hs = HardState()
        hs.CopyFrom(self._hard_state)
        return hs

    def snapshot_metadata(self) -> SnapshotMetadata | None:
        return self._snapshot

    def append(self, entries: list[Entry]) -> None:
        if not entries:
            return
        if entries[0].index != self.last_index() + 1:
            raise StorageError(
                f"append at index {entries[0].index}, expected {self.last_index() + 1}"
            )
        self._entries.extend(entries)

    def truncate_suffix(self, index: int) -> None:
        if index <= self._offset:
            raise StorageError(f"cannot truncate at {index}: compacted up to {self._offset}")
        del self._entries[index - self._offset - 1 :]

    def compact_prefix(self, index: int, snapshot: SnapshotMetadata | None = None) -> None:
        """Drop entries <= index; `snapshot` (covering at least `index`) becomes the
        snapshot the log starts from, the one sent to followers that need compacted entries."""
        if not compaction_needed(index, snapshot, self._offset, self.last_index()):
            return
        self._offset_term = self.term(index)
        del self._entries[: index - self._offset]
        self._offset = index
        if snapshot is not None:
            self._snapshot = snapshot

    def set_hard_state(self, hs: HardState) -> None:
        self._hard_state = HardState()
        self._hard_state.CopyFrom(hs)

    def install_snapshot(self, metadata: SnapshotMetadata) -> None:
        self._entries = []
        self._offset = metadata.last_included.index
        self._offset_term = metadata.last_included.term
        self._snapshot = metadata
