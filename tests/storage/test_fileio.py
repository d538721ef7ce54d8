"""The file-I/O layer: real disk primitives really sync; the simulated disk loses what it should."""

from __future__ import annotations

import os
import random

import pytest

from dengine.storage.fileio import RealDisk, SimulatedCrash, SimulatedDisk


@pytest.fixture
def synced(monkeypatch):
    """Record the descriptors' targets passed to os.fsync / os.fdatasync."""
    calls: list[tuple[str, str]] = []
    real_fsync, real_fdatasync = os.fsync, os.fdatasync

    def spy(name, real):
        def call(fd):
            calls.append((name, os.readlink(f"/proc/self/fd/{fd}")))
            real(fd)
        return call

    monkeypatch.setattr(os, "fsync", spy("fsync", real_fsync))
    monkeypatch.setattr(os, "fdatasync", spy("fdatasync", real_fdatasync))
    return calls


def test_real_disk_syncs_files_and_directories(tmp_path, synced):
    disk = RealDisk()
    path = str(tmp_path / "f")
    f = disk.open_append(path)
    f.write(b"abc")
    f.sync()
    f.close()
    assert synced == [("fdatasync", path)]
    disk.truncate(path, 1)
    disk.fsync(path)
    disk.fsync_dir(str(tmp_path))
    assert synced[1:] == [("fsync", path), ("fsync", str(tmp_path))]
    assert disk.read(path) == b"a"


def test_real_disk_atomic_write_and_makedirs(tmp_path, synced):
    disk = RealDisk()
    disk.makedirs(str(tmp_path / "a" / "b"))
    assert ("fsync", str(tmp_path)) in synced and ("fsync", str(tmp_path / "a")) in synced
    target = str(tmp_path / "a" / "b" / "file")
    disk.atomic_write(target, [b"one", b"two"])
    assert disk.read(target) == b"onetwo" and disk.listdir(str(tmp_path / "a" / "b")) == ["file"]
    assert synced[-2:] == [("fdatasync", target + ".tmp"), ("fsync", str(tmp_path / "a" / "b"))]


def test_simulated_disk_loses_unsynced_data_and_entries():
    disk = SimulatedDisk()
    disk.makedirs("/d")
    f = disk.open_append("/d/kept")
    f.write(b"durable")
    f.sync()
    disk.fsync_dir("/d")
    f.write(b"-volatile")
    g = disk.open_append("/d/new")
    g.write(b"x")
    g.sync()  # data synced, but its directory entry was not
    disk.rename("/d/kept", "/d/renamed")
    disk.power_cut(random.Random(1), lose_all=True)
    assert disk.listdir("/d") == ["kept"] and disk.read("/d/kept") == b"durable"
    with pytest.raises(Exception, match="before a power cut"):
        f.write(b"stale handle")


def test_simulated_disk_tears_to_a_prefix_of_unsynced_writes():
    seen = set()
    for seed in range(200):
        disk = SimulatedDisk()
        disk.makedirs("/d")
        f = disk.open_append("/d/f")
        f.write(b"sync")
        f.sync()
        disk.fsync_dir("/d")
        f.write(b"ABCDEFGH")
        disk.power_cut(random.Random(seed))
        data = disk.read("/d/f")
        assert data.startswith(b"sync")
        kept = data[4:]
        prefix = next(n for n in range(8, -1, -1) if kept.startswith(b"ABCDEFGH"[:n]))
        seen.add(prefix)
    assert seen == set(range(9))  # every cut point happens


def test_crash_after_stops_the_nth_operation():
    disk = SimulatedDisk()
    disk.makedirs("/d")
    disk.crash_after(2)
    f = disk.open_append("/d/f")
    with pytest.raises(SimulatedCrash):
        f.write(b"x")
    assert disk.read("/d/f") == b""
