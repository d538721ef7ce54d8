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
        if index == self._offset:
            return self._offset_term
        if index < self._offset:
            raise LogCompacted(f"index {index} is compacted (first index {self._offset + 1})")
        if index > self.last_index():
            raise LogUnavailable(f"index {index} is beyond the last index {self.last_index()}")
        return int(self._entries[index - self._offset - 1].term)

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        if lo <= self._offset:
            raise LogCompacted(f"index {lo} is compacted (first index {self._offset + 1})")
        if hi > self.last_index() + 1:
            raise LogUnavailable(f"index {hi - 1} is beyond the last index {self.last_index()}")
        out = self._entries[lo - self._offset - 1 : hi - self._offset - 1]
        if max_bytes is None or len(out) <= 1:
            return list(out)
        size = 0
        for n, entry in enumerate(out):
            size += entry.ByteSize()
            if size > max_bytes and n > 0:
                return out[:n]
        return list(out)

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
        if index <= self._offset:
            return
        if index > self.last_index():
            raise LogUnavailable(f"cannot compact to {index}: last index {self.last_index()}")
        if snapshot is not None and snapshot.last_included.index < index:
            raise StorageError(
                f"cannot compact to {index} with a snapshot at {snapshot.last_included.index}"
            )
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
