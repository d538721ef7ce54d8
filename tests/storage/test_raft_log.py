"""FileRaftLog against its reference model MemoryRaftLog: scripted cases and a stateful test."""

from __future__ import annotations

import os
import random
import tracemalloc

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from storage_helpers import ChunksOnlyDisk, config_entry, encoded, log_entries, noop_entry

from dengine.errors import CorruptionError, StorageError
from dengine.proto import Entry, HardState, LogId, SnapshotMetadata
from dengine.raft import LogCompacted, LogUnavailable, MemoryRaftLog
from dengine.storage import FileRaftLog
from dengine.storage import raft_log as raft_log_module
from dengine.storage.fileio import SimulatedDisk


def same(log: FileRaftLog, model: MemoryRaftLog) -> None:
    assert log.first_index() == model.first_index()
    assert log.last_index() == model.last_index()
    assert log.hard_state() == model.hard_state()
    assert log.snapshot_metadata() == model.snapshot_metadata()
    lo, hi = model.first_index(), model.last_index() + 1
    assert encoded(log.entries(lo, hi)) == encoded(model.entries(lo, hi))
    assert log.term(lo - 1) == model.term(lo - 1)
    assert [log.term(i) for i in range(lo, hi)] == [model.term(i) for i in range(lo, hi)]
    assert log.config_indexes() == model.config_indexes()
    for start in range(lo, hi, 3):
        for max_bytes in (0, 60, 500):
            assert encoded(log.entries(start, hi, max_bytes)) == encoded(
                model.entries(start, hi, max_bytes)
            )


def test_restart_recovers_appends_truncation_compaction_and_hard_state(tmp_path):
    log = FileRaftLog(tmp_path, segment_bytes=600)
    log.append(log_entries(1, 30, term=1))
    log.truncate_suffix(25)
    log.append(log_entries(25, 10, term=2, tag=b"w"))
    log.compact_prefix(12)
    log.set_hard_state(HardState(term=2, voted_for=3, commit=20))
    log.close()
    again = FileRaftLog(tmp_path, segment_bytes=600)
    assert (again.first_index(), again.last_index()) == (13, 34)
    assert again.term(12) == 1 and again.term(25) == 2
    assert encoded(again.entries(13, 35)) == encoded(log.entries(13, 35))
    assert again.hard_state() == HardState(term=2, voted_for=3, commit=20)
    with pytest.raises(LogCompacted):
        again.entries(12, 14)
    with pytest.raises(LogUnavailable):
        again.term(35)


def test_compaction_deletes_whole_segments_only(tmp_path):
    log = FileRaftLog(tmp_path, segment_bytes=500)
    for first in range(1, 101, 10):
        log.append(log_entries(first, 10, term=1))
    segments = [n for n in os.listdir(tmp_path) if n.startswith("seg-")]
    assert len(segments) > 3
    log.compact_prefix(95)
    left = [n for n in os.listdir(tmp_path) if n.startswith("seg-")]
    assert len(left) == 1
    assert encoded(FileRaftLog(tmp_path).entries(96, 101)) == encoded(log.entries(96, 101))


def test_install_snapshot_discards_the_log_durably(tmp_path):
    log = FileRaftLog(tmp_path)
    log.append(log_entries(1, 20, term=1))
    meta = SnapshotMetadata(last_included=LogId(index=50, term=4), checksum=b"x" * 32)
    log.install_snapshot(meta)
    log.append(log_entries(51, 3, term=4))
    log.close()
    again = FileRaftLog(tmp_path)
    assert (again.first_index(), again.last_index(), again.term(50)) == (51, 53, 4)
    assert again.snapshot_metadata() == meta


def test_bad_appends_are_refused(tmp_path):
    log = FileRaftLog(tmp_path)
    log.append(log_entries(1, 3, term=1))
    with pytest.raises(StorageError, match="expected 4"):
        log.append(log_entries(6, 1, term=1))
    with pytest.raises(StorageError, match="non-consecutive"):
        log.append([*log_entries(4, 1, term=1), *log_entries(6, 1, term=1)])
    log.compact_prefix(2)
    with pytest.raises(StorageError, match="compacted"):
        log.truncate_suffix(2)
    assert log.last_index() == 3


def test_entries_are_held_as_records_and_recent_ones_as_the_objects_appended(
    tmp_path, monkeypatch
):
    """Memory: an Entry object costs ~4x its record, so only the last `recent_entries`
    are kept as objects (read back as is: no decode on the replication path); older ones,
    and all of them after a restart, are decoded from their records when read."""
    log = FileRaftLog(tmp_path, recent_entries=10)
    batches = [log_entries(first, 10, term=1) for first in range(1, 51, 10)]
    for batch in batches:
        log.append(batch)
    assert all(a is b for a, b in zip(log.entries(41, 51), batches[-1], strict=True))
    old = log.entries(1, 41)
    assert encoded(old) == encoded([e for batch in batches[:4] for e in batch])
    assert not any(a is b for a, b in zip(old, [e for b in batches[:4] for e in b], strict=True))
    mixed = log.entries(39, 51)  # decoded, then the objects
    assert encoded(mixed) == encoded(old[-2:] + batches[-1]) and mixed[-1] is batches[-1][-1]
    log.close()
    expected = encoded(log.entries(5, 51))
    decoded = []
    real = Entry.FromString
    monkeypatch.setattr(Entry, "FromString", lambda data: decoded.append(1) or real(data))
    again = FileRaftLog(tmp_path)
    assert decoded == []  # recovery reads index and term from the records' first bytes
    assert [again.term(i) for i in (1, 50)] == [1, 1]
    assert encoded(again.entries(5, 51)) == expected
    assert len(decoded) == 46


def test_recovery_finds_config_entries_without_decoding(tmp_path, monkeypatch):
    log = FileRaftLog(tmp_path, segment_bytes=2000)
    log.append(log_entries(1, 30, term=1))
    log.append([config_entry(31, 2, [1, 2, 3]), noop_entry(32, 2), *log_entries(33, 40, term=2)])
    log.append([config_entry(73, 3, [1, 2])])
    log.compact_prefix(10)
    log.close()
    monkeypatch.setattr(raft_log_module, "_header", lambda data, pos, end: None)
    slow = FileRaftLog(tmp_path)  # every record decoded whole: the same findings
    assert slow.config_indexes() == [31, 73]
    monkeypatch.undo()
    decoded = []
    real = Entry.FromString
    monkeypatch.setattr(Entry, "FromString", lambda data: decoded.append(1) or real(data))
    again = FileRaftLog(tmp_path)
    assert again.config_indexes() == [31, 73] and decoded == []
    again.truncate_suffix(73)
    again.append([config_entry(73, 4, [1]), *log_entries(74, 3, term=4)])
    assert again.config_indexes() == [31, 73]
    assert again.entries(73, 74)[0].payload.config.voters[0].id == 1
    again.compact_prefix(40)
    assert again.config_indexes() == [73]


def test_a_reopened_log_holds_terms_and_offsets_not_entries(tmp_path):
    """Memory: 16 bytes per uncompacted entry after a restart (it held each as a ~1.2 KB
    object); an entry is read back from its segment when asked for, its CRC checked."""
    log = FileRaftLog(tmp_path, segment_bytes=200_000)
    for first in range(1, 3001, 500):
        log.append(log_entries(first, 500, term=1, tag=b"v" * 300))
    log.close()
    tracemalloc.start()
    try:
        again = FileRaftLog(tmp_path)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 200_000  # the records are ~1 MB
    assert encoded(again.entries(1, 3001)) == encoded(log.entries(1, 3001))
    assert encoded(again.entries(400, 3001, max_bytes=5000)) == encoded(
        log.entries(400, 3001, max_bytes=5000)
    )
    segment = os.path.join(tmp_path, sorted(os.listdir(tmp_path))[2])
    with open(segment, "r+b") as f:  # damage a record after it was loaded
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(CorruptionError, match="changed on disk"):
        again.entries(again.first_index(), again.last_index() + 1)


def test_segments_are_read_in_chunks():
    """Recovery never holds a whole segment (64 MiB by default) in memory at once."""
    disk = ChunksOnlyDisk()
    log = FileRaftLog("/data/raft", fileio=disk)
    for first in range(1, 2001, 100):
        log.append(log_entries(first, 100, term=1, tag=b"v" * 200))
    log.close()
    again = FileRaftLog("/data/raft", fileio=disk)
    assert encoded(again.entries(1, 2001)) == encoded(log.entries(1, 2001))


class LogModel(RuleBasedStateMachine):
    """Every operation on FileRaftLog and MemoryRaftLog alike; restart = reopen from disk."""

    @initialize(preallocate=st.sampled_from([0, 256, 4096]), recent=st.sampled_from([1, 5, 4096]))
    def setup(self, preallocate: int, recent: int) -> None:
        self.disk = SimulatedDisk()
        self.preallocate = preallocate
        self.recent = recent
        self.log = self._open()
        self.model = MemoryRaftLog()
        self.term = 1
        self.tag = 0

    def _open(self) -> FileRaftLog:
        return FileRaftLog(
            "/data/raft", segment_bytes=700, fileio=self.disk, preallocate=self.preallocate,
            recent_entries=self.recent,
        )

    @rule(count=st.integers(1, 12), bump=st.booleans(), kind=st.sampled_from(["", "c", "n"]))
    def append(self, count: int, bump: bool, kind: str) -> None:
        """`count` commands, the last one a config or noop entry for `kind` c or n."""
        self.term += bump
        self.tag += 1
        first = self.model.last_index() + 1
        batch = log_entries(first, count, self.term, b"t%d-" % self.tag)
        if kind == "c":
            batch[-1] = config_entry(first + count - 1, self.term, [1, 2, self.tag % 7 + 3])
        elif kind == "n":
            batch[-1] = noop_entry(first + count - 1, self.term)
        self.log.append(batch)
        self.model.append(batch)

    @precondition(lambda self: self.model.last_index() >= self.model.first_index())
    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(self.model.first_index(), self.model.last_index()))
        self.log.truncate_suffix(index)
        self.model.truncate_suffix(index)

    @precondition(lambda self: self.model.last_index() >= self.model.first_index())
    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(self.model.first_index(), self.model.last_index()))
        self.log.compact_prefix(index)
        self.model.compact_prefix(index)

    @rule(skip=st.integers(0, 5))
    def install_snapshot(self, skip: int) -> None:
        self.term += 1
        meta = SnapshotMetadata(
            last_included=LogId(index=self.model.last_index() + skip, term=self.term),
            checksum=bytes(32),
        )
        self.log.install_snapshot(meta)
        self.model.install_snapshot(meta)

    @rule(vote=st.integers(0, 5), commit=st.integers(0, 50))
    def hard_state(self, vote: int, commit: int) -> None:
        hs = HardState(term=self.term, voted_for=vote, commit=commit)
        self.log.set_hard_state(hs)
        self.model.set_hard_state(hs)

    @rule()
    def restart(self) -> None:
        self.log.close()
        self.log = self._open()

    @rule(seed=st.integers(0, 2**32), lose_all=st.booleans())
    def power_cut(self, seed: int, lose_all: bool) -> None:
        """Everything acknowledged survives: the recovered log equals the model exactly."""
        self.disk.power_cut(random.Random(seed), lose_all=lose_all)
        self.log = self._open()

    @invariant()
    def matches_model(self) -> None:
        same(self.log, self.model)


TestLogModel = LogModel.TestCase
TestLogModel.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
