"""Background checkpoints on a real disk are written by a forked child (copy-on-write)."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket

import pytest
from storage_helpers import command_entry, insert, store_state

from dengine.storage import FileStateMachine
from dengine.storage import checkpoints as checkpoints_module
from dengine.storage import file_state_machine as fsm_module
from dengine.storage.checkpoints import Checkpointer
from dengine.storage.fileio import RealDisk, SimulatedDisk
from dengine.storage.state_machine import store_of


@pytest.fixture
def forks(monkeypatch) -> list[int]:
    """The pids of the checkpoint children forked during the test."""
    pids: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            pids.append(pid)
        return pid

    monkeypatch.setattr(checkpoints_module.os, "fork", fork)
    return pids


def fill_until_checkpoint(sm: FileStateMachine, forks: list[int], first: int = 1) -> int:
    """Apply single-insert chunks until a background checkpoint starts; the next index."""
    index = first
    while not forks:
        sm.apply_chunk([command_entry(index, 1, insert(b"k%d" % (index % 40), b"v%d" % index))])
        index += 1
    return index


def test_fork_only_on_a_real_disk(tmp_path):
    assert Checkpointer(RealDisk(), str(tmp_path), 1024, background=True).fork
    assert not Checkpointer(RealDisk(), str(tmp_path), 1024, background=False).fork
    assert not Checkpointer(SimulatedDisk(), "/d", 1024, background=True).fork


def test_the_child_writes_the_state_as_of_the_fork(tmp_path, forks):
    sm = FileStateMachine(tmp_path, checkpoint_bytes=3000)
    index = fill_until_checkpoint(sm, forks)
    at_fork = sm.read(store_state)
    for i in range(index, index + 5):  # while the child writes: only in the new WAL
        sm.apply_chunk([command_entry(i, 1, insert(b"k%d" % (i % 40), b"late"))])
    sm.stop()
    assert len(forks) == 1 and sm.checkpoint_progress() == (1, False)
    with pytest.raises(ChildProcessError):
        os.waitpid(forks[0], os.WNOHANG)  # reaped
    head, image = Checkpointer(RealDisk(), str(tmp_path), 3000, background=False).load()
    assert store_state(store_of(image)) == at_fork and head.last_applied.index == index - 1
    assert not (tmp_path / "checkpoint.tmp").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("wal-")) == [
        "wal-0000000001"
    ]
    expected = sm.items()
    sm.close()
    assert FileStateMachine(tmp_path).items() == expected


@pytest.mark.parametrize("how", ["exception", "signal"])
def test_a_failed_child_is_logged_and_loses_nothing(tmp_path, monkeypatch, caplog, how, forks):
    def chunks(head, items, changes):
        yield b"\0" * 100
        if how == "signal":
            os.kill(os.getpid(), signal.SIGKILL)
        raise OSError(28, "No space left on device (test)")

    monkeypatch.setattr(fsm_module, "checkpoint_chunks", chunks)
    sm = FileStateMachine(tmp_path, checkpoint_bytes=3000)
    with caplog.at_level(logging.ERROR, logger="dengine.storage"):
        fill_until_checkpoint(sm, forks)
        sm.stop()
    failures = [r for r in caplog.records if "background checkpoint failed" in r.getMessage()]
    assert len(failures) == 1
    text = str(failures[0].exc_info[1])
    assert "checkpoint writer process" in text
    assert ("signal 9" in text) if how == "signal" else ("No space left" in text)
    assert sm.checkpoint_progress() == (0, False)
    assert not (tmp_path / "checkpoint").exists() and not (tmp_path / "checkpoint.tmp").exists()
    expected = sm.items()
    sm.close()
    monkeypatch.undo()
    assert FileStateMachine(tmp_path).items() == expected  # every WAL kept


def test_the_child_holds_none_of_the_parents_descriptors(
    tmp_path, monkeypatch, caplog, forks
):
    listener = socket.create_server(("127.0.0.1", 0))
    inherited = listener.fileno()

    def chunks(head, items, changes):
        raise RuntimeError(f"fds {','.join(os.listdir('/proc/self/fd'))}")
        yield b""

    monkeypatch.setattr(fsm_module, "checkpoint_chunks", chunks)
    sm = FileStateMachine(tmp_path, checkpoint_bytes=3000)
    try:
        with caplog.at_level(logging.ERROR, logger="dengine.storage"):
            fill_until_checkpoint(sm, forks)
            sm.stop()
    finally:
        listener.close()
        sm.close()
    (failure,) = [r for r in caplog.records if "background checkpoint failed" in r.getMessage()]
    listed = re.search(r"fds ([\d,]+)", str(failure.exc_info[1]))
    assert listed is not None
    fds = {int(fd) for fd in listed.group(1).split(",")}
    # stdin/out/err, the report pipe, the file being written, listdir's own descriptor
    assert inherited not in fds and len(fds) <= 6, fds
