"""MemoryStateMachine and FileStateMachine against a dict model, with restarts and checkpoints."""

from __future__ import annotations

import copy
import random

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from storage_helpers import (
    cas_request,
    command_entry,
    compaction_request,
    config_entry,
    delete,
    delete_range_request,
    insert,
    lease_grant_request,
    lease_revoke_request,
    noop_entry,
    put_request,
    store_state,
)

from dengine.errors import CorruptionError, KvError, StorageError
from dengine.kv.codec import decode_entry
from dengine.kv.mvcc import MvccStore
from dengine.proto import Entry, LogId, SnapshotMetadata
from dengine.storage import ApplyResult, FileStateMachine, MemoryStateMachine
from dengine.storage.fileio import SimulatedDisk
from dengine.storage.state_machine import current_values

KEYS = [b"a", b"b", b"c", b"key-d", b""]


@pytest.fixture(params=["memory", "file"])
def sm(request, tmp_path):
    if request.param == "memory":
        return MemoryStateMachine()
    return FileStateMachine(tmp_path / "sm", background_checkpoint=False)


def test_apply_kinds_and_results(sm):
    results = sm.apply_chunk([
        command_entry(1, 1, insert(b"x", b"1")),
        noop_entry(2, 1),
        config_entry(3, 1, [1, 2, 3]),
        command_entry(4, 1, b"\xff\xff not a command"),
        command_entry(5, 2, delete(b"x")),
        command_entry(6, 2, insert(b"y", b"2")),
        Entry(index=7, term=2),
    ])
    assert [(r.index, r.succeeded, r.revision) for r in results] == [
        (1, True, 2), (2, True, 2), (3, True, 2), (4, False, 2), (5, True, 3), (6, True, 4),
        (7, False, 4),
    ]
    assert [type(r.response) for r in results] == [type(None)] * 3 + [KvError] + [
        type(None)] * 2 + [KvError]
    assert sm.get(b"x") is None and sm.get(b"y") == b"2" and len(sm) == 1
    assert sm.last_applied() == LogId(index=7, term=2)
    assert [m.id for m in sm.membership().voters] == [1, 2, 3]


def test_plain_insert_results_as_the_eager_ones(sm):
    """A chunk of plain inserts answers the results one by one would (the file state
    machine makes them when read): index, revision, succeeded, no response."""
    sm.apply_chunk([command_entry(1, 1, insert(b"a", b"0"))])
    results = sm.apply_chunk([command_entry(i, 1, insert(b"k%d" % (i % 3), b"v"))
                              for i in (3, 4, 7)])
    expected = [ApplyResult(3, revision=3), ApplyResult(4, revision=4),
                ApplyResult(7, revision=5)]
    assert len(results) == 3 and list(results) == expected and results == expected
    assert results[0] == expected[0] and results[-1] == expected[2]
    assert results[1:] == expected[1:] and [] + results == expected + []
    with pytest.raises(IndexError):
        results[3]
    assert [r.response for r in results] == [None] * 3


def test_non_increasing_index_is_refused_before_any_change(sm):
    sm.apply_chunk([command_entry(5, 1, insert(b"a", b"1"))])
    with pytest.raises(StorageError, match="not above"):
        sm.apply_chunk([command_entry(6, 1, insert(b"b", b"1")), command_entry(6, 1, b"")])
    with pytest.raises(StorageError, match="not above"):
        sm.apply_chunk([command_entry(5, 1, insert(b"c", b"1"))])
    assert sm.get(b"b") is None and sm.last_applied().index == 5


def test_snapshot_round_trip_and_checksum(sm, tmp_path):
    sm.apply_chunk([command_entry(i, 1, insert(b"k%d" % i, b"v")) for i in range(1, 50)])
    with pytest.raises(StorageError, match="snapshot requested"):
        sm.generate_snapshot_data(str(tmp_path / "snap"), LogId(index=10, term=1))
    checksum = sm.generate_snapshot_data(str(tmp_path / "snap"), LogId(index=49, term=1))
    assert len(checksum) == 32 and checksum != bytes(32)
    assert sm.snapshot_metadata().checksum == checksum
    target = FileStateMachine(tmp_path / "target")
    bad = SnapshotMetadata(last_included=LogId(index=49, term=1), checksum=bytes(32))
    with pytest.raises(CorruptionError, match="SHA-256"):
        target.apply_snapshot_from_file(bad, str(tmp_path / "snap"))
    assert len(target) == 0
    good = SnapshotMetadata(last_included=LogId(index=49, term=1), checksum=checksum)
    target.apply_snapshot_from_file(good, str(tmp_path / "snap"))
    target.close()
    again = FileStateMachine(tmp_path / "target")
    assert again.items() == sm.items() and again.last_applied() == LogId(index=49, term=1)
    assert again.snapshot_metadata() == good


def test_file_state_machine_checkpoints_and_recovers(tmp_path):
    sm = FileStateMachine(tmp_path, checkpoint_bytes=2000, background_checkpoint=False)
    for i in range(1, 200):
        sm.apply_chunk([command_entry(i, 1, insert(b"k%d" % (i % 37), b"v%d" % i))])
    assert (tmp_path / "checkpoint").exists()
    assert len([p for p in tmp_path.iterdir() if p.name.startswith("wal-")]) == 1
    sm.persist_last_applied(LogId(index=250, term=3))
    sm.close()
    again = FileStateMachine(tmp_path)
    assert again.items() == sm.items()
    assert again.last_applied() == LogId(index=250, term=3)


def test_background_checkpoint(tmp_path):
    sm = FileStateMachine(tmp_path, checkpoint_bytes=5000)
    for i in range(1, 400):
        sm.apply_chunk([command_entry(i, 1, insert(b"k%d" % (i % 50), b"v%d" % i))])
    sm.stop()
    assert (tmp_path / "checkpoint").exists()
    sm.close()
    assert FileStateMachine(tmp_path).items() == sm.items()


def test_reset_removes_everything(tmp_path):
    sm = FileStateMachine(tmp_path / "sm")
    sm.apply_chunk([command_entry(1, 1, insert(b"a", b"1"))])
    sm.reset()
    assert len(sm) == 0 and sm.last_applied() == LogId()
    sm.close()
    assert len(FileStateMachine(tmp_path / "sm")) == 0


COMMANDS = ["put", "del", "noop", "junk", "put_request", "delete_range", "cas", "compact",
            "grant", "revoke", "put_lease"]


def make_entry(index: int, op: str, key: bytes, value: bytes, n: int,
               store: MvccStore) -> Entry:
    """An entry of command kind `op` (`n` picks its options)."""
    if op == "noop":
        return noop_entry(index, 1)
    if op == "put":
        command = insert(key, value)
    elif op == "del":
        command = delete(key)
    elif op == "junk":
        command = b"\x0a\xff"
    elif op == "put_request":
        command = put_request(key, value, prev_kv=n % 2 == 1, ignore_value=n == 3)
    elif op == "delete_range":
        command = delete_range_request(key, key + b"\xff" if n >= 2 else b"", prev_kv=n % 2 == 1)
    elif op == "cas":
        command = cas_request(key, n, value)
    elif op == "grant":
        command = lease_grant_request(n + 1, 10 + n)
    elif op == "revoke":
        command = lease_revoke_request(n + 1)
    elif op == "put_lease":
        command = put_request(key, value, lease=n + 1)
    else:  # compact: below, at and above the compaction point and the revision
        command = compaction_request(max(0, store.revision - 2 + n))
    return command_entry(index, 1, command)


def expected_result(store: MvccStore, entry: Entry) -> ApplyResult:
    """What applying `entry` to `store` gives (and applies it)."""
    revision, response = store.apply(*decode_entry(entry))
    return ApplyResult(entry.index, succeeded=not isinstance(response, KvError),
                       revision=revision, response=response)



class StateMachineModel(RuleBasedStateMachine):
    """FileStateMachine on a simulated disk vs a dict; restart reopens from disk."""

    @initialize(threshold=st.sampled_from([300, 5000, 1 << 30]),
                preallocate=st.sampled_from([0, 256, 4096]))
    def setup(self, threshold: int, preallocate: int) -> None:
        self.disk = SimulatedDisk()
        self.threshold = threshold
        self.preallocate = preallocate
        self.sm = self._open()
        self.model = MvccStore()  # the twin: applies every command the state machine does
        self.index = 0
        self.snapshots: list[tuple[SnapshotMetadata, str, MvccStore]] = []

    def _open(self) -> FileStateMachine:
        return FileStateMachine(
            "/d/sm", checkpoint_bytes=self.threshold, fileio=self.disk,
            background_checkpoint=False, preallocate=self.preallocate,
        )

    @rule(ops=st.lists(
        st.tuples(st.sampled_from(COMMANDS), st.sampled_from(KEYS), st.binary(max_size=20),
                  st.integers(0, 3)),
        min_size=1, max_size=8,
    ), gap=st.integers(1, 3))
    def apply(self, ops, gap: int) -> None:
        """A chunk of plain and etcd commands; the results are the twin store's."""
        entries, expected = [], []
        for op, key, value, n in ops:
            self.index += gap
            entry = make_entry(self.index, op, key, value, n, self.model)
            entries.append(entry)
            expected.append(expected_result(self.model, entry))
        assert self.sm.apply_chunk(entries) == expected

    @rule()
    def restart(self) -> None:
        self.sm.close()
        self.sm = self._open()

    @rule(seed=st.integers(0, 2**32), lose_all=st.booleans())
    def power_cut(self, seed: int, lose_all: bool) -> None:
        """Every applied chunk, checkpoint and install survives a power cut exactly."""
        self.disk.power_cut(random.Random(seed), lose_all=lose_all)
        self.sm = self._open()

    @rule()
    def checkpoint(self) -> None:
        self.sm.checkpoint()

    @rule()
    def snapshot(self) -> None:
        path = f"/d/snapshots/{len(self.snapshots)}"
        last = self.sm.last_applied()
        checksum = self.sm.generate_snapshot_data(path, last)
        meta = SnapshotMetadata(last_included=last, checksum=checksum)
        self.snapshots.append((meta, path, copy.deepcopy(self.model)))

    @rule(data=st.data())
    def install(self, data: st.DataObject) -> None:
        if not self.snapshots:
            return
        meta, path, state = data.draw(st.sampled_from(self.snapshots))
        self.sm.apply_snapshot_from_file(meta, path)
        self.model = copy.deepcopy(state)
        self.index = meta.last_included.index

    @invariant()
    def matches_model(self) -> None:
        assert self.sm.read(store_state) == store_state(self.model)
        assert self.sm.items() == current_values(self.model)
        assert self.sm.last_applied().index == self.index


TestStateMachineModel = StateMachineModel.TestCase
TestStateMachineModel.settings = settings(max_examples=150, stateful_step_count=25, deadline=None)
