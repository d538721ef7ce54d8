"""FileStateMachine with `sync_apply=False`: applies are not fsynced, `sync()` is.

What a power cut may then lose is exactly the applied-but-unsynced tail, and recovery
(with `replayable_from`, the first index the Raft log can re-apply) treats damage there
as a torn tail; everything up to `durable_index()` survives.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from storage_helpers import command_entry, insert

from dengine.errors import CorruptionError
from dengine.storage import FileStateMachine
from dengine.storage.fileio import SimulatedDisk

DIR = "/n/sm"


class CountingDisk(SimulatedDisk):
    """Counts fdatasyncs of append files."""

    def __init__(self) -> None:
        super().__init__()
        self.syncs = 0

    def open_append(self, path, *, position=None, preallocate=0):
        f = super().open_append(path, position=position, preallocate=preallocate)
        disk = self
        inner_sync = f.sync

        def sync() -> None:
            disk.syncs += 1
            inner_sync()

        f.sync = sync  # type: ignore[method-assign]
        return f


def lazy(disk: SimulatedDisk, replayable_from: int | None = 1, **kw) -> FileStateMachine:
    return FileStateMachine(DIR, fileio=disk, background_checkpoint=False, sync_apply=False,
                            replayable_from=replayable_from, **kw)


def put(sm: FileStateMachine, index: int, value: bytes = b"v") -> None:
    sm.apply_chunk([command_entry(index, 1, insert(b"k%d" % index, value))])


def test_apply_does_not_sync_and_sync_does():
    disk = CountingDisk()
    sm = lazy(disk)
    before = disk.syncs
    for i in range(1, 11):
        put(sm, i)
    assert disk.syncs == before
    assert sm.durable_index() == 0 and sm.last_applied().index == 10
    sm.sync()
    assert disk.syncs == before + 1 and sm.durable_index() == 10
    sm.sync()  # nothing new: no fdatasync
    assert disk.syncs == before + 1


def test_default_mode_syncs_every_apply():
    disk = CountingDisk()
    sm = FileStateMachine(DIR, fileio=disk, background_checkpoint=False)
    before = disk.syncs
    put(sm, 1)
    put(sm, 2)
    assert disk.syncs == before + 2 and sm.durable_index() == 2


def test_close_makes_everything_durable():
    disk = SimulatedDisk()
    sm = lazy(disk)
    for i in range(1, 6):
        put(sm, i)
    sm.close()
    disk.power_cut(random.Random(1), lose_all=True)
    assert lazy(disk).last_applied().index == 5


def test_checkpoint_rollover_syncs_the_old_wal():
    """Only the last WAL may end unsynced: a cut after a rollover keeps the older one whole."""
    disk = SimulatedDisk()
    sm = lazy(disk)
    for i in range(1, 6):
        put(sm, i)
        sm.checkpoint()  # a rollover to a new WAL after every apply
    assert sm.durable_index() >= 4
    disk.power_cut(random.Random(2), lose_all=True)
    assert lazy(disk).last_applied().index >= 4


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), synced=st.integers(0, 30), extra=st.integers(0, 30),
       garbage=st.binary(min_size=1, max_size=40), hole=st.booleans())
def test_power_cut_keeps_the_synced_prefix(seed, synced, extra, garbage, hole):
    disk = SimulatedDisk()
    sm = lazy(disk)
    for i in range(1, synced + 1):
        put(sm, i, b"s%d" % i)
    sm.sync()
    synced_end = sm._wal_size
    for i in range(synced + 1, synced + extra + 1):
        put(sm, i, b"u%d" % i)
    rng = random.Random(seed)
    disk.power_cut(rng)
    if hole:
        # A hole in the unsynced tail (pages written back out of order), valid records
        # after it: still only the unsynced tail is affected.
        path = f"{DIR}/wal-0000000000"
        data = bytearray(disk.read(path))
        at = synced_end + rng.randint(0, 30)
        data[at : at + len(garbage)] = garbage
        _rewrite(disk, path, bytes(data))
    recovered = lazy(disk, replayable_from=synced + 1)
    applied = recovered.last_applied().index
    assert synced <= applied <= synced + extra
    for i in range(1, applied + 1):
        assert recovered.get(b"k%d" % i) == (b"s%d" % i if i <= synced else b"u%d" % i)


def _rewrite(disk: SimulatedDisk, path: str, data: bytes) -> None:
    disk.truncate(path, 0)
    f = disk.open_append(path)
    f.write(data)
    f.sync()
    f.close()


def _damage_before_a_valid_record(disk: SimulatedDisk) -> None:
    path = f"{DIR}/wal-0000000000"
    data = bytearray(disk.read(path))
    data[20] ^= 0xFF  # inside the first record; later records stay valid
    _rewrite(disk, path, bytes(data))


def test_damage_the_log_cannot_replay_is_corruption():
    disk = SimulatedDisk()
    sm = lazy(disk)
    for i in range(1, 11):
        put(sm, i)
    sm.close()
    _damage_before_a_valid_record(disk)
    # The Raft log starts at 11: the damaged first record (index 1) is not re-appliable.
    with pytest.raises(CorruptionError):
        lazy(disk, replayable_from=11)
    # Without a Raft log to fall back on, the same damage is corruption too.
    with pytest.raises(CorruptionError):
        lazy(disk, replayable_from=None)


def test_damage_the_log_can_replay_is_dropped():
    disk = SimulatedDisk()
    sm = lazy(disk)
    for i in range(1, 11):
        put(sm, i)
    sm.close()
    _damage_before_a_valid_record(disk)
    recovered = lazy(disk, replayable_from=1)  # the log holds every entry: re-applies them
    assert recovered.last_applied().index == 0
    put(recovered, 1)
    recovered.close()
    assert lazy(disk, replayable_from=1).last_applied().index == 1
