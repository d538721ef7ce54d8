"""Background checkpoints: the state as of their start, written by a paced thread."""

from __future__ import annotations

import logging
import sys
import threading
from collections import Counter

from storage_helpers import command_entry, insert, store_state

from dengine.storage import FileStateMachine
from dengine.storage import file_state_machine as fsm_module
from dengine.storage.checkpoints import Checkpointer, paced
from dengine.storage.fileio import RealDisk
from dengine.storage.state_machine import store_of


def test_the_checkpoint_holds_the_state_as_of_its_start(tmp_path, monkeypatch):
    """Applies go on while it is written; they are in the new WAL only."""
    release = threading.Event()
    real = fsm_module.checkpoint_chunks

    def held_back(head, items, changes):
        release.wait(10)  # the checkpoint thread waits until the late applies are done
        yield from real(head, items, changes)

    monkeypatch.setattr(fsm_module, "checkpoint_chunks", held_back)
    sm = FileStateMachine(tmp_path, checkpoint_bytes=3000)
    index = 1
    while sm.checkpoint_progress() == (0, False):
        at_start = sm.read(store_state)
        sm.apply_chunk([command_entry(index, 1, insert(b"k%d" % (index % 40), b"v%d" % index))])
        index += 1
    at_start = sm.read(store_state)
    for i in range(index, index + 5):
        sm.apply_chunk([command_entry(i, 1, insert(b"k%d" % (i % 40), b"late"))])
    release.set()
    sm.stop()
    assert sm.checkpoint_progress() == (1, False)
    head, image = Checkpointer(RealDisk(), str(tmp_path), 3000, background=False).load()
    assert store_state(store_of(image)) == at_start and head.last_applied.index == index - 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("wal-")) == [
        "wal-0000000001"
    ]
    expected = sm.read(store_state)
    sm.close()
    assert FileStateMachine(tmp_path).read(store_state) == expected


def test_a_failed_background_checkpoint_is_logged_and_loses_nothing(
    tmp_path, monkeypatch, caplog
):
    def chunks(head, items, changes):
        yield b"\0" * 100
        raise OSError(28, "No space left on device (test)")

    monkeypatch.setattr(fsm_module, "checkpoint_chunks", chunks)
    sm = FileStateMachine(tmp_path, checkpoint_bytes=3000)
    with caplog.at_level(logging.ERROR, logger="dengine.storage"):
        index = 1
        while not any("background checkpoint failed" in r.getMessage() for r in caplog.records):
            sm.apply_chunk([command_entry(index, 1, insert(b"k%d" % index, b"v" * 50))])
            index += 1
            sm.stop()  # wait for a checkpoint started by this apply
    assert "No space left" in str(caplog.records[-1].exc_info[1])
    assert sm.checkpoint_progress() == (0, False) and not (tmp_path / "checkpoint").exists()
    expected = sm.read(store_state)
    sm.close()
    monkeypatch.undo()
    assert FileStateMachine(tmp_path).read(store_state) == expected  # every WAL kept


def test_the_writer_holds_the_gil_a_quarter_of_the_time_at_most():
    """After a chunk that took t of CPU to make, the writer sleeps 3t."""
    now = [0.0]
    slept: list[float] = []

    def make():
        for cost in (0.004, 0.010, 0.0):
            now[0] += cost
            yield b"x"

    out = list(paced(make(), clock=lambda: now[0], sleep=slept.append))
    assert out == [b"x"] * 3
    assert [round(s, 6) for s in slept] == [0.012, 0.030, 0.0]


class _WatchedLock:
    """A state machine's lock that records the Python functions called while it is held."""

    def __init__(self, lock) -> None:
        self._lock = lock
        self._depth = 0
        self.calls: Counter[str] = Counter()

    def __enter__(self):
        self._lock.__enter__()
        self._depth += 1
        if self._depth == 1:
            sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0:
            sys.setprofile(None)
        return self._lock.__exit__(*exc)

    def _profile(self, frame, event, arg) -> None:
        if event == "call":
            self.calls[frame.f_code.co_name] += 1


def _calls_under_the_lock_at_checkpoint_start(directory, changes: int) -> Counter[str]:
    sm = FileStateMachine(directory, checkpoint_bytes=1 << 30, sync_apply=False)
    index = 0
    for start in range(0, changes, 1000):
        chunk = [command_entry(index + 1 + i, 1, insert(b"k%d" % ((start + i) % 500), b"v"))
                 for i in range(min(1000, changes - start))]
        sm.apply_chunk(chunk)
        index += len(chunk)
    watched = sm._lock = _WatchedLock(sm._lock)
    sm._checkpoints.threshold = 0  # due now
    assert sm.maybe_checkpoint()
    sm.stop()
    sm.close()
    return watched.calls


def test_a_checkpoint_start_holds_the_lock_for_work_independent_of_the_store(tmp_path):
    """Readers take the state machine's lock, the node's event loop among them: the start
    of a checkpoint holds it only to switch WALs and copy the store at C speed, with no
    Python work per change and no fsync (at 1,000,000 keys and 1,280,000 changes, copying
    the changelog as namedtuples held it ~2 s and the leader's loop, waiting on a read,
    lost the lead)."""
    small = _calls_under_the_lock_at_checkpoint_start(tmp_path / "small", 100)
    big = _calls_under_the_lock_at_checkpoint_start(tmp_path / "big", 20_000)
    assert big == small
    assert not {"sync", "fsync_dir", "_create_wal"} & set(big)
