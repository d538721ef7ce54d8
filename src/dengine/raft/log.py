"""The core's view of the Raft log: durable storage plus the tail not yet persisted.

Entries the core has accepted (proposals on the leader, appends on a follower) live in
an *unstable* tail until the driver reports them durable through `advance`. Reads of an
index at or above the tail's offset come from the tail: a conflicting suffix that is still
in storage is logically gone the moment a follower accepts the leader's entries, and the
driver truncates it physically before appending the new tail (driver contract, step 1).
"""

from __future__ import annotations

from dengine.errors import DengineError
from dengine.proto import Entry, SnapshotMetadata
from dengine.raft.storage import LogCompacted, LogStorage, LogUnavailable


class LogView:
    """Stable storage + unstable tail + an optional snapshot received but not yet installed."""

    def __init__(self, storage: LogStorage) -> None:
        self.storage = storage
        self.unstable: list[Entry] = []
        self.offset = storage.last_index() + 1  # index of unstable[0]
        # Entries unstable[:in_progress] were handed to the driver and are being persisted.
        self.in_progress = 0
        self.pending_snapshot: SnapshotMetadata | None = None
        self.snapshot_in_progress = False
        hs = storage.hard_state()
        self.committed = max(int(hs.commit), storage.first_index() - 1)
        self.applied = storage.first_index() - 1

    # ---- reads -------------------------------------------------------------------------

    def first_index(self) -> int:
        if self.pending_snapshot is not None:
            return int(self.pending_snapshot.last_included.index) + 1
        return self.storage.first_index()

    def last_index(self) -> int:
        if self.unstable:
            return self.offset + len(self.unstable) - 1
        if self.pending_snapshot is not None:
            return int(self.pending_snapshot.last_included.index)
        return self.storage.last_index()

    def last_term(self) -> int:
        return self.term(self.last_index())

    def stable_last_index(self) -> int:
        """Last index known durable (reported by `advance`)."""
        if self.pending_snapshot is not None:
            return int(self.pending_snapshot.last_included.index)
        return self.offset - 1

    def term(self, index: int) -> int:
        """Term of entry `index`; raises LogCompacted below the log, LogUnavailable above it."""
        if index >= self.offset:
            k = index - self.offset
            if k < len(self.unstable):
                return int(self.unstable[k].term)
            raise LogUnavailable(f"index {index} is beyond the last index {self.last_index()}")
        snap = self.pending_snapshot
        if snap is not None:
            if index == snap.last_included.index:
                return int(snap.last_included.term)
            raise LogCompacted(f"index {index} is covered by the snapshot being installed")
        return self.storage.term(index)

    def match_term(self, index: int, term: int) -> bool:
        """Whether our entry at `index` has `term` (False when we do not hold it)."""
        try:
            return self.term(index) == term
        except (LogCompacted, LogUnavailable):
            return False

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft §5.4.1: whether a log ending at (last_term, last_index) is as up to date as ours."""
        our_term = self.last_term()
        return last_term > our_term or (last_term == our_term and last_index >= self.last_index())

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi), at least one if lo < hi, at most `max_bytes` beyond the first."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise LogCompacted(f"index {lo} is compacted (first index {self.first_index()})")
        if hi > self.last_index() + 1:
            raise LogUnavailable(f"index {hi - 1} is beyond the last index {self.last_index()}")
        out: list[Entry] = []
        if lo < self.offset:
            out = self.storage.entries(lo, min(hi, self.offset), max_bytes)
            if hi <= self.offset or len(out) < min(hi, self.offset) - lo:
                return out
        tail = self.unstable[max(lo, self.offset) - self.offset : hi - self.offset]
        if max_bytes is None:
            out.extend(tail)
            return out
        size = sum(e.ByteSize() for e in out)
        for e in tail:
            size += e.ByteSize()
            if size > max_bytes and out:
                break
            out.append(e)
        return out

    def find_conflict_hint(self, index: int) -> tuple[int, int]:
        """(reject_hint, hint_term) for a rejected append whose previous entry is `index`.

        Our log too short: (last index, 0). Otherwise the term we hold at `index` and the
        first index we hold with that term (never below commit + 1: committed entries agree
        with every leader), so the leader can skip the whole conflicting term at once.
        """
        last = self.last_index()
        if index > last:
            return last, 0
        conflict_term = self.term(index)
        floor = max(self.committed + 1, self.first_index())
        first = index
        while first > floor and self.term(first - 1) == conflict_term:
            first -= 1
        return first, conflict_term

    def last_index_of_term(self, term: int, below: int) -> int:
        """Largest index <= `below` whose term is `term`, or 0 if we hold none."""
        i = min(below, self.last_index())
        first = self.first_index() - 1
        while i >= first and i > 0:
            try:
                t = self.term(i)
            except LogCompacted:
                return 0
            if t == term:
                return i
            if t < term:
                return 0
            i -= 1
        return 0

    # ---- writes (by the core) ----------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        """Leader path: entries continue the log."""
        self.unstable.extend(entries)

    def truncate_and_append(self, entries: list[Entry]) -> None:
        """Follower path: entries replace our log from entries[0].index (> committed)."""
        after = int(entries[0].index)
        if after <= self.committed:
            raise DengineError(
                f"raft safety violation: would overwrite committed entry {after} "
                f"(commit {self.committed})"
            )
        end = self.offset + len(self.unstable)
        if after == end:
            self.unstable.extend(entries)
        elif after <= self.offset:
            self.unstable = list(entries)
            self.offset = after
            self.in_progress = 0
        else:
            del self.unstable[after - self.offset :]
            self.unstable.extend(entries)
            self.in_progress = min(self.in_progress, after - self.offset)

    def commit_to(self, index: int) -> bool:
        if index > self.committed:
            self.committed = index
            return True
        return False

    def restore(self, snapshot: SnapshotMetadata) -> None:
        """Replace the whole log by a snapshot received from the leader."""
        self.pending_snapshot = snapshot
        self.snapshot_in_progress = False
        self.unstable = []
        self.in_progress = 0
        self.offset = int(snapshot.last_included.index) + 1
        self.committed = int(snapshot.last_included.index)

    # ---- driver hand-off ---------------------------------------------------------------

    def has_unsent_entries(self) -> bool:
        return len(self.unstable) > self.in_progress

    def take_unstable(self) -> list[Entry]:
        """The entries to persist in this Ready (not handed out before)."""
        out = self.unstable[self.in_progress :]
        self.in_progress = len(self.unstable)
        return out

    def stable_to(self, index: int, term: int) -> bool:
        """The driver persisted entries up to (index, term); False if they were replaced since."""
        k = index - self.offset
        if k < 0 or k >= len(self.unstable) or self.unstable[k].term != term:
            return False
        del self.unstable[: k + 1]
        self.offset = index + 1
        self.in_progress = max(0, self.in_progress - (k + 1))
        return True

    def snapshot_stable(self, snapshot: SnapshotMetadata) -> None:
        if self.pending_snapshot is snapshot:
            self.pending_snapshot = None
            self.snapshot_in_progress = False
            self.applied = max(self.applied, int(snapshot.last_included.index))
