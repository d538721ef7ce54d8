"""RaftLog against its reference model MemoryRaftLog: scripted cases and a stateful test."""

from __future__ import annotations

import os
import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from storage_helpers import encoded, log_entries

from dengine.errors import StorageError
from dengine.proto import HardState, LogId, SnapshotMetadata
from dengine.storage import LogCompacted, LogUnavailable, MemoryRaftLog, RaftLog
from dengine.storage.fileio import SimulatedDisk


def same(log: RaftLog, model: MemoryRaftLog) -> None:
    assert log.first_index() == model.first_index()
    assert log.last_index() == model.last_index()
    assert log.hard_state() == model.hard_state()
    assert log.snapshot_metadata() == model.snapshot_metadata()
    lo, hi = model.first_index(), model.last_index() + 1
    assert encoded(log.entries(lo, hi)) == encoded(model.entries(lo, hi))
    assert log.term(lo - 1) == model.term(lo - 1)


def test_restart_recovers_appends_truncation_compaction_and_hard_state(tmp_path):
    log = RaftLog(tmp_path, segment_bytes=600)
    log.append(log_entries(1, 30, term=1))
    log.truncate_suffix(25)
    log.append(log_entries(25, 10, term=2, tag=b"w"))
    log.compact_prefix(12)
    log.set_hard_state(HardState(term=2, voted_for=3, commit=20))
    log.close()
    again = RaftLog(tmp_path, segment_bytes=600)
    assert (again.first_index(), again.last_index()) == (13, 34)
    assert again.term(12) == 1 and again.term(25) == 2
    assert encoded(again.entries(13, 35)) == encoded(log.entries(13, 35))
    assert again.hard_state() == HardState(term=2, voted_for=3, commit=20)
    with pytest.raises(LogCompacted):
        again.entries(12, 14)
    with pytest.raises(LogUnavailable):
        again.term(35)


def test_compaction_deletes_whole_segments_only(tmp_path):
    log = RaftLog(tmp_path, segment_bytes=500)
    for first in range(1, 101, 10):
        log.append(log_entries(first, 10, term=1))
    segments = [n for n in os.listdir(tmp_path) if n.startswith("seg-")]
    assert len(segments) > 3
    log.compact_prefix(95)
    left = [n for n in os.listdir(tmp_path) if n.startswith("seg-")]
    assert len(left) == 1
    assert encoded(RaftLog(tmp_path).entries(96, 101)) == encoded(log.entries(96, 101))


def test_install_snapshot_discards_the_log_durably(tmp_path):
    log = RaftLog(tmp_path)
    log.append(log_entries(1, 20, term=1))
    meta = SnapshotMetadata(last_included=LogId(index=50, term=4), checksum=b"x" * 32)
    log.install_snapshot(meta)
    log.append(log_entries(51, 3, term=4))
    log.close()
    again = RaftLog(tmp_path)
    assert (again.first_index(), again.last_index(), again.term(50)) == (51, 53, 4)
    assert again.snapshot_metadata() == meta


def test_bad_appends_are_refused(tmp_path):
    log = RaftLog(tmp_path)
    log.append(log_entries(1, 3, term=1))
    with pytest.raises(StorageError, match="expected 4"):
        log.append(log_entries(6, 1, term=1))
    with pytest.raises(StorageError, match="non-consecutive"):
        log.append([*log_entries(4, 1, term=1), *log_entries(6, 1, term=1)])
    log.compact_prefix(2)
    with pytest.raises(StorageError, match="compacted"):
        log.truncate_suffix(2)
    assert log.last_index() == 3


class LogModel(RuleBasedStateMachine):
    """Every operation on RaftLog and MemoryRaftLog alike; restart = reopen from disk."""

    @initialize(preallocate=st.sampled_from([0, 256, 4096]))
    def setup(self, preallocate: int) -> None:
        self.disk = SimulatedDisk()
        self.preallocate = preallocate
        self.log = self._open()
        self.model = MemoryRaftLog()
        self.term = 1
        self.tag = 0

    def _open(self) -> RaftLog:
        return RaftLog(
            "/data/raft", segment_bytes=700, fileio=self.disk, preallocate=self.preallocate
        )

    @rule(count=st.integers(1, 12), bump=st.booleans())
    def append(self, count: int, bump: bool) -> None:
        self.term += bump
        self.tag += 1
        batch = log_entries(self.model.last_index() + 1, count, self.term, b"t%d-" % self.tag)
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
